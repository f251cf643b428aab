"""TUN offloads: ``virtio_net_hdr`` framing and the tund-to-tund extension (the ioctl:
:mod:`tund.relay.device.offload`).

:class:`OffloadCodec` wraps the tunnel's codec: it negotiates vnet frames with the peer in
band (hellos, ack 0/1: :mod:`tund.relay.codec.hello`; a new path forgets the peer's
capability), turns the device's offloads on once the peer takes frames, sends frames raw
(or as a bare IP packet when they need nothing from their header; in an envelope for
codecs that carry IP packets only), and drops frames it may not send as
``"offload_stale"``. Over a lossy UDP path super-packets travel as chunks
(:mod:`tund.relay.codec.chunks`), in trains with parity. Only tun mode without
packet info uses it (``WorkerSpec.vnet_hdr``). A super-packet sent whole over UDP goes
as a train (:mod:`tund.relay.transport.segments`: one GSO send, not IP fragments). Why,
and the wire format: docs/design.md, "TUN offloads between tund peers".

Size: one class, the wrapper of every codec call of a vnet device (seal, open, trains,
timers): split, each call would cross one more layer per packet.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from tund.relay.codec import chunks
from tund.relay.codec.base import Address, Codec, Opened
from tund.relay.codec.chunks import F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6
from tund.relay.codec.hello import hello, mode_advice, parse_hello, parse_mode_advice
from tund.relay.transport.segments import parity_train, train

log = logging.getLogger("tund.relay.codec.offload")

VNET_HDR_LEN = chunks.VNET_LEN
ZERO_HDR = bytes(VNET_HDR_LEN)
MAX_FRAME = VNET_HDR_LEN + 0xFFFF  # header + the largest IP packet

# <linux/virtio_net.h>
F_DATA_VALID = 2
GSO_UDP, GSO_UDP_L4 = 3, 5  # (F_NEEDS_CSUM and the TCP types: tund.relay.codec.chunks)
_GSO_OK = frozenset({GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
                     GSO_TCPV4 | GSO_ECN, GSO_TCPV6 | GSO_ECN})

#: TCP segments per chunk on a lossy path: a chunk of 8 travels as a train of ~8 datagrams
#: (one AEAD, one Python trip for 8 segments; a lost datagram costs 8 segments)
CHUNK_SEGMENTS = 8
#: a sealed message this much longer than the MTU goes as a train (a full-sized packet
#: with WireGuard's 32 bytes and padding travels as one datagram, as it always did)
TRAIN_ABOVE = 48
HELLO_RETRY = 1.0
SENDERS = 64  # many: senders whose super-packets are followed at once
HELLO_TRIES = 10
_ENV = struct.Struct("!IHBB16s16s")
ENVELOPE_LEN = _ENV.size


_NUMBERED = 0x80000  # flow label bit: the low 15 bits are the super-packet's frame id


_ZERO_ADDR = bytes(16)
_ZERO_ADDRS = bytes(32)


def envelope(frame: bytes, frame_id: int | None = None) -> bytes:
    """``frame`` inside an IPv6 header that says "253, from :: to ::" (see above); a
    super-packet's frame id goes in the flow label."""
    label = 0 if frame_id is None else _NUMBERED | frame_id & 0x7FFF
    return _ENV.pack(0x60000000 | label, len(frame), 253, 0, _ZERO_ADDR, _ZERO_ADDR) + frame


def envelope_frame_id(packet: bytes) -> int | None:
    """The frame id an envelope carries, or None."""
    label = (packet[1] & 0x0F) << 16 | packet[2] << 8 | packet[3]
    return label & 0x7FFF if label & _NUMBERED else None


def is_envelope(packet: bytes) -> bool:
    return (len(packet) > ENVELOPE_LEN and packet[0] == 0x60 and packet[6] == 253
            and packet[8:40] == _ZERO_ADDRS)


def plain_ip(buf: bytes, at: int, max_packet: int) -> bool:
    """True if ``buf[at:]`` is what a receiver takes as a plain packet, not a message of
    this extension: an IPv4/IPv6 packet of at most ``max_packet`` bytes, not protocol 253
    (a hello, advice, chunk or envelope). A sender may send such a frame bare."""
    n = len(buf) - at
    if n <= 0 or n > max_packet:
        return False
    v = buf[at] >> 4
    if v == 4:
        return n >= 20 and buf[at + 9] != 253
    return v == 6 and n >= 40 and buf[at + 6] != 253


def frame_ok(frame: bytes) -> bool:
    """A vnet frame we are willing to hand to the kernel: known flags and GSO type, and
    an IPv4/IPv6 packet after the header. The kernel checks the rest."""
    return (len(frame) > VNET_HDR_LEN and frame[0] & ~(F_NEEDS_CSUM | F_DATA_VALID) == 0
            and frame[1] in _GSO_OK and frame[VNET_HDR_LEN] >> 4 in (4, 6))


class OffloadCodec:
    """Wraps a :class:`~tund.relay.codec.base.Codec` for a vnet-header device.

    Device side: ``seal`` takes vnet frames (header + packet, as read), ``open`` returns
    vnet frames (to write as they are). Wire side: what ``inner`` makes of IP packets,
    or of whole vnet frames once the peer said hello. ``set_offload(on)`` switches the
    device's offloads (returns False if it could not). ``max_packet`` is the largest
    plain IP packet (the MTU); larger plain ones are dropped as ``"oversize"``.
    ``negotiate`` False: never say hello nor answer one (offloads stay off).
    ``enveloped``: frames travel in envelopes (for a codec that needs IP packets).
    ``drops`` is the worker's cause -> count dict (for drops on the sealing side).
    ``chunked`` (a datagram transport): TCP super-packets travel as MTU-sized chunks
    (:mod:`tund.relay.codec.chunks`); :meth:`expired` then returns the frames rebuilt from
    chunks that waited too long for a lost companion (the pump calls it at
    :meth:`next_deadline`).
    ``inner`` must pass vnet frames through (e.g. a PlainCodec without ``ip_check``):
    this codec checks what reaches the device (IPv4/IPv6 packets, :func:`frame_ok`).
    ``many`` (``inner`` has many peers, which answer tund peers' hellos themselves:
    :class:`~tund.relay.wireguard.peers.PeerCore` ``frames``): chunks are joined and
    their path judged per sender, the advice sealed for that sender (``inner.seal_to``);
    this codec sends no frames (``negotiate`` is False).
    """

    def __init__(self, inner: Codec, set_offload: Callable[[bool], bool], *,
                 max_packet: int, drops: dict[str, int], negotiate: bool = True,
                 enveloped: bool = False, chunked: bool = False, many: bool = False) -> None:
        self.inner = inner
        self._inner_train = getattr(inner, "open_train", None)
        self.handshake_types: frozenset[int] = getattr(inner, "handshake_types", frozenset())
        self.enveloped = enveloped
        self.chunked = chunked
        # WireGuard over UDP adapts: super-packets go in chunks while the peer's LossMeter
        # sees many incomplete ones (and at first), whole while it sees few; plain UDP
        # always chunks
        self.adaptive = chunked and enveloped
        self.send_chunks = chunked  # the safe start; a clean path soon says "whole"
        self._frame_id = 0
        self._train_id = 0
        self.recovered = 0  # datagrams of our peer's trains rebuilt from their parity
        self._meter = chunks.LossMeter(chunks=True)
        self._reasm = chunks.Reassembler(self._meter)
        self.many = many
        #: many: sender -> its LossMeter and Reassembler (at most SENDERS, oldest out)
        self._senders: dict[Address | None, tuple[chunks.LossMeter, chunks.Reassembler]] = {}
        self.set_offload = set_offload
        self.max_packet = max_packet
        self.drops = drops
        self.negotiate = negotiate
        self.peer_vnet = False
        self._device_off = False  # known to be off (we turned it off ourselves)
        self._hello_at: float | None = None
        self._hello_tries = 0

    def _drop(self, cause: str) -> None:
        self.drops[cause] = self.drops.get(cause, 0) + 1

    def _forget_peer(self) -> None:
        if self.peer_vnet or not self._device_off:
            # also on a worker's first path: a worker before it (killed, restarted) may
            # have left the device's offloads on, and the kernel would keep handing over
            # super-packets and partial checksums that no plain peer can take
            self.set_offload(False)
            self._device_off = True
            log.info("offloads off until the peer says hello again")
        self.peer_vnet = False
        self.send_chunks = self.chunked
        self._hello_at = None
        self._hello_tries = 0

    def seal_one(self, frame: bytes, now: float) -> bytes | None:
        """:meth:`seal` for a frame that becomes one message: not a super-packet that
        travels numbered or in chunks, no hello due (else None, nothing changed)."""
        if self.peer_vnet:
            if frame[1] != GSO_NONE:
                if self.chunked:
                    return None
            elif not frame[0] & F_NEEDS_CSUM and plain_ip(frame, VNET_HDR_LEN,
                                                          self.max_packet):
                # a whole packet needs nothing from its header: it goes bare, as to a peer
                # without offloads, and the peer's open_one takes it back as such
                return self.inner.seal_one(frame[VNET_HDR_LEN:], now)
            return self.inner.seal_one(envelope(frame) if self.enveloped else frame, now)
        if (frame[1] != GSO_NONE or frame[0] & F_NEEDS_CSUM
                or len(frame) - VNET_HDR_LEN > self.max_packet
                or (self.negotiate and self._hello_tries < HELLO_TRIES
                    and (self._hello_at is None or now - self._hello_at >= HELLO_RETRY))):
            return None
        return self.inner.seal_one(frame[VNET_HDR_LEN:], now)

    def seal(self, frame: bytes, now: float) -> list[bytes]:
        message = self.seal_one(frame, now)
        if message is not None:
            return [message] if message else []  # b"": the inner codec sent it
        if self.peer_vnet:
            fid = None
            if self.chunked and frame[1] != GSO_NONE:
                self._frame_id = fid = (self._frame_id + 1) & 0x7FFF
                if self.send_chunks:
                    cut = chunks.split(frame, self.max_packet, fid, CHUNK_SEGMENTS)
                    if cut is not None:
                        seal = self.inner.seal
                        # (parity only on a path judged lossy: plain UDP always chunks)
                        return self._as_trains([m for c in cut for m in seal(c, now)],
                                               parity=self.adaptive)
            sealed = self.inner.seal(envelope(frame, fid) if self.enveloped else frame, now)
            return self._as_trains(sealed) if self.chunked else sealed
        out: list[bytes] = []
        if (self.negotiate and self._hello_tries < HELLO_TRIES
                and (self._hello_at is None or now - self._hello_at >= HELLO_RETRY)):
            self._hello_at = now  # with any frame, even one dropped below
            self._hello_tries += 1
            out += self.inner.seal(hello(False), now)
        if frame[1] != GSO_NONE or frame[0] & F_NEEDS_CSUM:
            self._drop("offload_stale")
        elif len(frame) - VNET_HDR_LEN > self.max_packet:
            self._drop("oversize")
        else:
            out += self.inner.seal(frame[VNET_HDR_LEN:], now)
        return out

    def _as_trains(self, sealed: list[bytes], parity: bool = False) -> list[bytes]:
        """``sealed`` for a datagram path: a message longer than a full-sized packet (a
        super-packet sent whole, a chunk of several segments) as a train of datagrams of
        about ``max_packet`` bytes (the UDP transport sends it with one UDP_SEGMENT send,
        :mod:`tund.relay.transport.segments`); ``parity`` (chunks on a lossy path): with
        a parity datagram, so that the receiver rebuilds one lost datagram of each."""
        size, sole = self.max_packet, self.enveloped
        limit = size + TRAIN_ABOVE  # (a full-sized packet, sealed, is one datagram)
        if parity:
            out = []
            for m in sealed:
                if len(m) > limit:
                    self._train_id = tid = (self._train_id + 1) & 0xFFFF
                    m = parity_train(m, size, tid) or m
                out.append(m)
            return out
        if sole:  # WireGuard: sealed data is 32 + a multiple of 16 (or the MTU) long
            size -= (size - 15) % 16  # S is neither (segments.MAGIC_SOLE)
        return [(len(m) > limit and train(m, size, sole)) or m for m in sealed]

    def open_one(self, message: bytes, source: Address | None, now: float) -> bytes | Opened:
        """:meth:`open`; a message that yields one frame and no reply comes back as the
        frame alone: a valid frame, bare or in an unnumbered envelope, or a plain IPv4/IPv6
        packet that is not protocol 253 (not a hello, advice, chunk or envelope)."""
        p = self.inner.open_one(message, source, now)
        if not isinstance(p, bytes):
            return self._opened(p, now, source)
        if 20 <= len(p) <= self.max_packet and p[0] == 0x45 and p[9] != 253:
            return ZERO_HDR + p  # plain_ip, inline for the common case: IPv4, no options
        if p and p[0] < 0x10:  # a vnet frame (a peer that takes them, without envelopes)
            if frame_ok(p):
                return p
        elif plain_ip(p, 0, self.max_packet):
            return ZERO_HDR + p
        elif self.enveloped and is_envelope(p) and not (p[1] & 0x0F | p[2] | p[3]):
            frame = p[ENVELOPE_LEN:]  # an unnumbered envelope: no LossMeter news
            if frame_ok(frame):
                return frame
        return self._opened(Opened([p], [], True), now, source)

    def open(self, message: bytes, source: Address | None, now: float) -> Opened:
        return self._opened(self.inner.open(message, source, now), now, source)

    def open_train(self, data: bytes, size: int, now: float) -> tuple[list[bytes], int]:
        """The frames of a train's leading plain packets (the inner codec's
        ``open_train``) from a peer that sends no vnet frames, and the offset of the first
        message left for :meth:`open_one`; ``([], 0)`` when the inner codec has no
        ``open_train`` or the peer takes frames (its trains are marked, not plain)."""
        inner = self._inner_train
        if inner is None or self.peer_vnet:
            return [], 0
        packets, off = inner(data, size, now, self.max_packet)
        return [ZERO_HDR + p for p in packets], off

    def _sender(self, source: Address | None
                ) -> tuple[chunks.LossMeter, chunks.Reassembler]:
        """``many``: the LossMeter and Reassembler of ``source``'s super-packets."""
        got = self._senders.get(source)
        if got is None:
            if len(self._senders) >= SENDERS:
                del self._senders[next(iter(self._senders))]
            meter = chunks.LossMeter(chunks=True)
            got = self._senders[source] = (meter, chunks.Reassembler(meter))
        return got

    # Size: long on purpose: the receive side of every frame kind (chunk, envelope, vnet frame,
    # hello, advice) in one pass over the packets, on the per-packet path.
    def _opened(self, op: Opened, now: float, source: Address | None = None) -> Opened:
        """What :meth:`open` makes of the inner codec's result ``op`` (from ``source``)."""
        if op.drop is not None or not op.packets:
            return op
        meter, reasm = self._sender(source) if self.many else (self._meter, self._reasm)
        meter.now = now
        if self.chunked and len(op.packets) == 1:  # the bulk of a transfer: one chunk
            p = op.packets[0]
            if chunks.is_chunk(p) and not (self.enveloped and p[0] == 0x60 and is_envelope(p)):
                frames: list[bytes] = []
                cause = reasm.add(p, now, frames)
                if cause is not None:
                    return Opened([], op.replies, op.authenticated, cause)
                op.packets = frames
                if meter.pending is not None:
                    op.replies = op.replies + self._advise(now, meter, source)
                return op
        frames = []
        replies = op.replies
        drop: str | None = None
        for p in op.packets:
            if self.enveloped and p[0] == 0x60 and is_envelope(p):
                if self.adaptive and (fid := envelope_frame_id(p)) is not None:
                    meter.frame(fid, True)
                p = p[ENVELOPE_LEN:]
            elif self.chunked and chunks.is_chunk(p):  # (a hello is shorter than any chunk)
                drop = reasm.add(p, now, frames) or drop
                continue
            if p[0] < 0x10:
                if frame_ok(p):
                    frames.append(p)
                else:
                    drop = "malformed"
            elif (ack := parse_hello(p)) is not None:
                if self.negotiate:
                    replies = replies + self._on_hello(ack, now)
            elif (advice := parse_mode_advice(p)) is not None:
                if self.adaptive and advice != self.send_chunks:
                    log.info("the peer sees %s of our super-packets incomplete: sending them %s",
                             "many" if advice else "few", "in chunks" if advice else "whole")
                    self.send_chunks = advice
            elif p[0] >> 4 not in (4, 6):
                drop = "malformed"
            elif len(p) > self.max_packet:
                drop = "oversize"
            else:
                frames.append(ZERO_HDR + p)
        if meter.pending is not None and self.adaptive:
            replies = replies + self._advise(now, meter, source)
        if drop is not None:
            if not frames:
                return Opened([], replies, op.authenticated, drop)
            self._drop(drop)  # the pump counts only a whole message's drop
        return Opened(frames, replies, op.authenticated, None)

    def on_recovered(self, n: int, source: Address | None = None) -> None:
        """The transport rebuilt ``n`` lost datagrams of a train with parity (from
        ``source``): counted, and the LossMeter still hears of the loss (it judges the
        path, not the parity)."""
        self.recovered += n
        (self._sender(source)[0] if self.many else self._meter).lossy += n

    def _advise(self, now: float, meter: chunks.LossMeter,
                source: Address | None) -> list[bytes]:
        advice, meter.pending = meter.pending, None
        if not self.adaptive or advice is None:
            return []
        if self.many:  # sealed for the sender, sent by the inner codec itself
            seal_to = getattr(self.inner, "seal_to", None)
            if seal_to is not None and source is not None:
                seal_to(source, mode_advice(advice), now)
            return []
        return self.inner.seal(mode_advice(advice), now)

    def _on_hello(self, ack: bool, now: float) -> list[bytes]:
        if not self.peer_vnet and self.set_offload(True):
            log.info("the peer takes vnet frames: offloads on")
            self.peer_vnet = True
            self._device_off = False
        return [] if ack else self.inner.seal(hello(True), now)

    def tick(self, now: float) -> list[bytes]:
        return self.inner.tick(now)

    def next_deadline(self) -> float | None:
        inner, mine = self.inner.next_deadline(), self._reasm.deadline
        for _, reasm in self._senders.values():
            if reasm.deadline is not None and (mine is None or reasm.deadline < mine):
                mine = reasm.deadline
        if mine is None or (inner is not None and inner < mine):
            return inner
        return mine

    def expired(self, now: float) -> list[bytes]:
        """Frames rebuilt from an incomplete chunked frame whose wait is over."""
        out = self._reasm.expire(now)
        for _, reasm in self._senders.values():
            if reasm.deadline is not None:
                out += reasm.expire(now)
        return out

    def mtu_changed(self, old: int, new: int) -> None:
        """Plain packets obey the new MTU; frames stay up to 64 KB (the pump's limit)."""
        self.max_packet += new - old

    def apply_peers(self, entries: Any, now: float) -> Any:
        """A codec with many peers underneath: its peers change (see the pump)."""
        apply = getattr(self.inner, "apply_peers", None)
        if apply is None:
            raise ValueError("this tunnel has no peers")
        return apply(entries, now)

    def set_keepalive(self, seconds: float, now: float) -> None:
        self.inner.set_keepalive(seconds, now)

    def on_connected(self, now: float) -> list[bytes]:
        self._forget_peer()
        return self.inner.on_connected(now)

    def health(self, now: float) -> Any:
        """The inner codec's ``health`` (WireGuard), or None (see the Codec contract)."""
        inner = getattr(self.inner, "health", None)
        return inner(now) if inner is not None else None

    def stats(self) -> dict[str, Any]:
        mode = "off" if not self.peer_vnet else "chunks" if self.send_chunks else "frames"
        return {**self.inner.stats(), "offload": mode, "recovered": self.recovered}
