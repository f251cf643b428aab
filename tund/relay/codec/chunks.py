"""TSO super-packets cut into chunks for a lossy datagram path, and put back.

A chunk is the frame's IP + TCP header (protocol 253), one slice of its payload and an
8-byte trailer (frame id, index, count, chunk size, gso_size); with ``per`` = 1 no chunk
is larger than a full-sized packet of the tunnel, with more it holds ``per`` times that
payload (the offload codec sends 8, each as a train). :class:`Reassembler` keeps one
frame at a time and rebuilds it bit for bit when every chunk came; a frame with a
missing chunk (a newer frame arrived, or :data:`WAIT` passed) is written as one valid
frame per run of chunks, so TCP sees an ordinary loss. Pure functions and a small
class: no I/O, no clock (``now`` is passed in). Why, and every header field restored:
docs/design.md, "Chunks".
"""

from __future__ import annotations

import struct

VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET.size
TRAILER = struct.Struct("!HBBHH")
TRAILER_LEN = TRAILER.size
PROTO = 253
MIN_CHUNK = 256  # a smaller payload slice: the frame is not worth cutting (sent whole)
MAX_CHUNKS = 255
WAIT = 0.001  # seconds an incomplete frame waits for its missing chunks (the TCP
# inside learns of the hole only once the runs after it are written)

F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_ECN = 0, 1, 4, 0x80
_ECN_BIT = 0x8000
_TCP = 6
_CWR, _PSH, _FIN = 0x80, 0x08, 0x01


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4_header_checksum(header: bytes | bytearray) -> int:
    """The checksum to store in an IPv4 header whose checksum field is zero."""
    return ~_fold(sum(struct.unpack(f"!{len(header) // 2}H", header))) & 0xFFFF


def _headers(packet: bytes | bytearray | memoryview, ip: int) -> tuple[int, int] | None:
    """``(ip header length, ip + tcp header length)`` of the TCP packet at ``ip``, or None
    (not IPv4/IPv6 + TCP without extension headers, or truncated)."""
    if len(packet) < ip + 40:
        return None
    version = packet[ip] >> 4
    if version == 4:
        iphl = (packet[ip] & 0x0F) * 4
        if iphl < 20:
            return None
    elif version == 6:
        iphl = 40
    else:
        return None
    if len(packet) < ip + iphl + 20:
        return None
    doff = (packet[ip + iphl + 12] >> 4) * 4
    if doff < 20 or len(packet) < ip + iphl + doff:
        return None
    return iphl, iphl + doff


def split(frame: bytes, mtu: int, frame_id: int, per: int = 1) -> list[bytes] | None:
    """The chunks of a TSO ``frame`` (vnet header + packet): each at most ``mtu`` bytes,
    or with ``per`` > 1 the payload of ``per`` such chunks under one header (larger than a
    datagram, it travels as a train: :mod:`tund.relay.transport.segments`); None when the
    frame is not a TCP super-packet worth cutting (send it whole)."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET.unpack_from(frame)
    kind = gso_type & ~GSO_ECN
    if kind not in (GSO_TCPV4, GSO_TCPV6) or not flags & F_NEEDS_CSUM or csum_offset != 16:
        return None
    h = _headers(frame, VNET_LEN)
    if h is None:
        return None
    iphl, hlen = h
    version = frame[VNET_LEN] >> 4
    if (version != (4 if kind == GSO_TCPV4 else 6) or csum_start != iphl
            or frame[VNET_LEN + (9 if version == 4 else 6)] != _TCP):
        return None
    start = VNET_LEN + hlen
    plen = len(frame) - start
    size = min(gso_size, mtu - hlen - TRAILER_LEN) * per
    if size < MIN_CHUNK * per or plen <= size:
        return None
    n = -(-plen // size)
    if n > MAX_CHUNKS:
        return None
    fid = (frame_id & 0x7FFF) | (_ECN_BIT if gso_type & GSO_ECN else 0)
    view = memoryview(frame)

    def header(payload: int) -> bytes:
        hdr = bytearray(view[VNET_LEN:start])
        total = hlen + payload + TRAILER_LEN
        if version == 4:
            struct.pack_into("!H", hdr, 2, total)
            hdr[9] = PROTO
        else:
            struct.pack_into("!H", hdr, 4, total - 40)
            hdr[6] = PROTO
        return bytes(hdr)

    full = header(size)
    last = plen - (n - 1) * size
    pack = TRAILER.pack
    join = b"".join
    out = [join((full, view[start + i * size:start + (i + 1) * size],
                 pack(fid, i, n, size, gso_size))) for i in range(n - 1)]
    out.append(join((header(last), view[start + (n - 1) * size:],
                     pack(fid, n - 1, n, size, gso_size))))
    return out


def is_chunk(packet: bytes) -> bool:
    """A chunk, by its IP header: protocol / next header 253 and long enough. (The
    offload hello and envelope also use 253; the caller tells those apart first.)"""
    version = packet[0] >> 4
    if version == 4:
        return len(packet) >= 20 + 20 + TRAILER_LEN and packet[9] == PROTO
    return version == 6 and len(packet) >= 40 + 20 + TRAILER_LEN and packet[6] == PROTO


class Reassembler:
    """Collects the chunks of one frame at a time; see the module docstring.

    :meth:`add` takes a chunk and appends the frames (vnet header + packet) now ready to
    write: the whole frame when its last missing chunk arrives, or the runs of an older
    incomplete frame that a newer frame pushed out. :meth:`expire` returns the runs of a
    frame that waited longer than :data:`WAIT`; :attr:`deadline` says when that is.
    ``malformed`` counts chunks that were not well-formed, ``stray`` chunks that repeat
    one already held (both are dropped), ``partial`` frames given up incomplete.
    """

    def __init__(self, meter: LossMeter | None = None) -> None:
        self.meter = meter  # told of every frame completed or given up
        self.malformed = 0
        self.partial = 0
        self.stray = 0
        self.deadline: float | None = None
        self._fid = -1
        self._parts: list[bytes | None] = []
        self._missing = 0
        self._header = b""
        self._iphl = 0
        self._size = 0
        self._gso = 0

    def add(self, chunk: bytes, now: float, out: list[bytes]) -> str | None:
        """Take ``chunk``; append the frames now ready to ``out``. Returns None, or why the
        chunk was dropped: ``"malformed"`` or ``"duplicate"`` (also counted here)."""
        end = len(chunk) - TRAILER_LEN
        parts = self._parts
        if end > 40 and parts:  # the common case: the next chunk of the frame being built
            fid, i, n, size, _ = TRAILER.unpack_from(chunk, end)
            if fid == self._fid and n == len(parts) and size == self._size and i < n:
                hlen = len(self._header)
                body = end - hlen
                if body == size or (i == n - 1 and 0 < body < size):
                    if parts[i] is not None:
                        self.stray += 1
                        return "duplicate"
                    parts[i] = chunk[hlen:end]
                    self._missing -= 1
                    if not self._missing:
                        out.append(self._run(0, n))
                        if self.meter is not None:
                            self.meter.frame(fid, True)
                        self._reset()
                    return None
        return self._add_first(chunk, now, out)

    def _add_first(self, chunk: bytes, now: float, out: list[bytes]) -> str | None:
        """A chunk that does not continue the current frame: check it all; it starts a new
        frame (giving up the current one) unless it is malformed."""
        h = _headers(chunk, 0)
        if h is None or len(chunk) < h[1] + TRAILER_LEN + 1:
            self.malformed += 1
            return "malformed"
        iphl, hlen = h
        fid, i, n, size, gso = TRAILER.unpack_from(chunk, len(chunk) - TRAILER_LEN)
        body = len(chunk) - hlen - TRAILER_LEN
        if not (n > 1 and i < n and size > 0 and gso > 0
                and (body == size if i < n - 1 else body <= size)):
            self.malformed += 1
            return "malformed"
        if fid == self._fid and n == len(self._parts) and size == self._size:
            self.malformed += 1  # same frame, other header length
            return "malformed"
        out += self._give_up()
        self._fid, self._parts, self._missing = fid, [None] * n, n - 1
        self._header, self._iphl, self._size, self._gso = chunk[:hlen], iphl, size, gso
        self._parts[i] = chunk[hlen:len(chunk) - TRAILER_LEN]
        self.deadline = now + WAIT
        return None

    def expire(self, now: float) -> list[bytes]:
        if self.deadline is None or now < self.deadline:
            return []
        return self._give_up()

    def _reset(self) -> None:
        self._fid, self._parts, self._missing, self.deadline = -1, [], 0, None

    def _give_up(self) -> list[bytes]:
        if not self._parts:
            return []
        self.partial += 1
        if self.meter is not None:
            self.meter.frame(self._fid, False)
        parts, out, start = self._parts, [], None
        for i in range(len(parts) + 1):
            if i < len(parts) and parts[i] is not None:
                if start is None:
                    start = i
            elif start is not None:
                out.append(self._run(start, i))
                start = None
        self._reset()
        return out

    def _run(self, a: int, b: int) -> bytes:
        """Chunks ``a .. b-1`` as one frame with a vnet header (see the module docstring)."""
        parts, n = self._parts, len(self._parts)
        payload = b"".join(p for p in parts[a:b] if p is not None)
        hdr = bytearray(self._header)
        iphl, hlen = self._iphl, len(hdr)
        v4 = hdr[0] >> 4 == 4
        whole = a == 0 and b == n
        if v4:
            struct.pack_into("!H", hdr, 2, hlen + len(payload))
            hdr[9] = _TCP
            if not whole:  # the original header (and checksum) is only right for the whole
                ident = (struct.unpack_from("!H", hdr, 4)[0] + a) & 0xFFFF
                struct.pack_into("!H", hdr, 4, ident)
                struct.pack_into("!H", hdr, 10, 0)
                struct.pack_into("!H", hdr, 10, ipv4_header_checksum(hdr[:iphl]))
        else:
            struct.pack_into("!H", hdr, 4, hlen - 40 + len(payload))
            hdr[6] = _TCP
        if not whole:
            tcp = iphl
            seq = (struct.unpack_from("!I", hdr, tcp + 4)[0] + a * self._size) & 0xFFFFFFFF
            struct.pack_into("!I", hdr, tcp + 4, seq)
            if a > 0:
                hdr[tcp + 13] &= ~_CWR & 0xFF
            if b < n:
                hdr[tcp + 13] &= ~(_FIN | _PSH) & 0xFF
            # a fresh pseudo-header sum for the run's TCP length (the kernel adds the rest)
            struct.pack_into("!H", hdr, tcp + 16,
                             pseudo_header_sum(hdr, hlen - iphl + len(payload)))
        gso_type = (GSO_TCPV4 if v4 else GSO_TCPV6) | (GSO_ECN if self._fid & _ECN_BIT else 0)
        # a run is cut as the chunks were (each at most a segment: their size), or, when a
        # chunk holds more, at the frame's own segment size
        gso_size = self._gso if whole else min(self._size, self._gso)
        if not whole and len(payload) <= gso_size:
            gso_type, gso_size = GSO_NONE, 0
        return VNET.pack(F_NEEDS_CSUM, gso_type, hlen, gso_size, iphl, 16) + bytes(hdr) + payload


def pseudo_header_sum(hdr: bytes | bytearray, tcp_len: int) -> int:
    """The folded (not complemented) TCP pseudo-header sum Linux keeps in ``th->check``
    of a CHECKSUM_PARTIAL packet: addresses, protocol 6 and ``tcp_len``."""
    addrs = bytes(hdr[12:20]) if hdr[0] >> 4 == 4 else bytes(hdr[8:40])
    total = sum(struct.unpack(f"!{len(addrs) // 2}H", addrs)) + _TCP
    return _fold(total + (tcp_len >> 16) + (tcp_len & 0xFFFF))


class LossMeter:
    """The share of super-packets that arrive incomplete, and the mode it calls for.

    The sender numbers every super-packet (frame id, 15 bits), sent whole or in chunks.
    :meth:`frame` is told of each one that arrived, complete or not; frame ids skipped
    count as lost. Over each window of ``WINDOW`` frames the share that was incomplete or
    lost is ``q``. With a fragment loss rate ``p`` on the path, a 64 KB frame of ~45
    fragments (whole) or ~48 chunks is incomplete with probability ``1 - (1 - p)**45``
    in both modes, so ``q`` says how lossy the path is whichever mode is in use: above
    ``CHUNK_ABOVE`` the sender should cut frames into chunks (a lost datagram then costs
    one chunk, not 64 KB), below ``WHOLE_BELOW`` it may send them whole again (one AEAD
    and one datagram per frame: much cheaper).

    While the advice is "whole", ``EARLY_BAD`` incomplete frames end the window early: a
    lossy path loses a third of the frames and the TCP inside may slow to a crawl before a
    full window has passed.

    :meth:`frame` sets :attr:`pending` to the advice (True: chunks, False: whole) when it
    changed or is due again (every ``REPEAT`` s of :attr:`now`, as the advice itself may
    be lost); the owner sends it and clears :attr:`pending`.
    """

    WINDOW = 64
    EARLY_BAD = 6  # this many bad ones while frames go whole: judge at once (TCP may stall)
    CHUNK_ABOVE = 0.08
    WHOLE_BELOW = 0.03
    REPEAT = 1.0

    def __init__(self, chunks: bool = False) -> None:
        self.chunks = chunks  # the current advice
        self.q: float | None = None  # the last window's share
        self._last: int | None = None
        self._seen = 0
        self._bad = 0
        self._said_at: float | None = None
        self.now = 0.0  # set by the owner (sans-IO)
        self.pending: bool | None = None
        #: datagrams lost and rebuilt from parity since the last frame: the next frame
        #: counts as incomplete, as it would have been without the parity
        self.lossy = 0

    def frame(self, fid: int, complete: bool) -> None:
        fid &= 0x7FFF
        if self._last is not None:
            gap = (fid - self._last - 1) & 0x7FFF
            if gap < 1024:  # more is a restart of the numbering, not loss
                self._seen += gap
                self._bad += gap
        self._last = fid
        self._seen += 1
        if not complete or self.lossy:
            self._bad += 1
            self.lossy = 0
        if self._seen < self.WINDOW and (self.chunks or self._bad < self.EARLY_BAD):
            return
        self.q = self._bad / self._seen
        self._seen = self._bad = 0
        before = self.chunks
        if self.q > self.CHUNK_ABOVE:
            self.chunks = True
        elif self.q < self.WHOLE_BELOW:
            self.chunks = False
        now = self.now
        if (self.chunks != before or self._said_at is None
                or now - self._said_at >= self.REPEAT):
            self._said_at = now
            self.pending = self.chunks
