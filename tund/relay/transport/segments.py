"""A message larger than a datagram, sent as one train of equal-sized datagrams.

Why: a 64 KB message in one UDP datagram is cut by IP fragmentation: the sender's kernel
makes ~45 fragments one by one, the receiver's queues and joins them and checksums the
result in software. A ``UDP_SEGMENT`` train of equal-sized datagrams instead makes one
trip through each stack and comes in, with ``UDP_GRO``, as one read (docs/design.md,
"Trains"). Only tund peers that said so (the offload hello) are sent trains.

A train is :data:`HEAD` (marker :data:`MARK`, :data:`MAGIC`, datagram size ``S``,
message length ``L``) followed by the message, cut into datagrams of ``S`` bytes (the
last shorter): the kernel does the cutting, Python only prepends 8 bytes, and a train
read whole is the message after one slice. :data:`MARK` (0x0F) starts no WireGuard
message (types 1-4), no IP packet and no vnet frame a receiver takes (flags above 3
are refused). The datagrams after the first carry no header: they are known by their
place (right after the first, from the same sender, each exactly ``S`` bytes but the
last, whose length ``L`` fixes). One sender's train leaves as one burst on one flow, so
they come in order; a datagram that is not the expected continuation (another size,
another sender, or a new header) gives the message up and is then taken as a datagram of
its own (but for the train's own last one, dropped with it); a message joined wrong fails
authentication after this module (the AEAD judges integrity, not this module). The rest of a train
whose first datagram was lost is known by its length when the sender promised so
(:data:`MAGIC_SOLE`: tund's WireGuard) and dropped as ``"segment_orphaned"``; else it
cannot be told from datagrams of their own and reaches the codec, which drops it.

A train with parity (:func:`parity_train`, for a lossy path) is another form: every
datagram carries :data:`PARITY_HEAD` (train id, index, count), the message is cut into
equal pieces, and a last datagram holds their XOR, so one datagram lost of a train costs
nothing but the parity's bytes (11% more on a chunk of eight MTUs); the receiver rebuilds
it (``recovered``) and the message arrives whole. A late datagram of an earlier train
(reordered behind the next one) is dropped as ``"segment_late"`` and leaves the train
being joined alone.

:class:`Reassembler` follows one message at a time. Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable

from tund.relay.transport.gso import GSO_BYTES, GSO_SEGMENTS
from tund.relay.transport.xor import xor_of

HEAD = struct.Struct("!BBHI")  # MARK, MAGIC, datagram size, message length
HEAD_LEN = HEAD.size
MARK, MAGIC = 0x0F, 0xA7
#: the header of a *sole-sized* train: every datagram of it is longer than 148 bytes and
#: 15 modulo 16 long (S is, and the last is padded to such a length, the header's message
#: length says where the message ends), and its sender sends no other datagram like that
#: (tund's WireGuard over tun: data is 32 + a multiple of 16 or 32 + the MTU bytes long,
#: handshakes 148 and 92)
MAGIC_SOLE = 0xA8
SOLE_SHORT = 148
MAX_DATAGRAMS = 255
MAX_MESSAGE = 1 << 17
MIN_SIZE = HEAD_LEN + 256  # a smaller datagram size is not worth a train
#: the header of each datagram of a train with parity (:func:`parity_train`): MARK,
#: MAGIC_PARITY, train id, message length, the datagram's index (the parity's is the
#: count), the count of data datagrams
PARITY_HEAD = struct.Struct("!BBHHBB")
MAGIC_PARITY = 0xA9
PARITY_DATAGRAMS = 32
#: a datagram of one of this many trains before the one being joined is late, not the
#: start of a new one (ids grow by one a train; a restarted sender starts again at 1)
LATE_TRAINS = 8


def wire_length(length: int, size: int, sole: bool) -> int:
    """The bytes a train of a ``length``-byte message puts on the wire (header included):
    a sole-sized train pads its last datagram to a length of its kind (see
    :data:`MAGIC_SOLE`)."""
    total = HEAD_LEN + length
    if sole:
        last = total - (-(-total // size) - 1) * size
        want = min(size, max(last, SOLE_SHORT + 1) | 15)
        total += want - last
    return total


def train(message: bytes, size: int, sole: bool = False) -> bytes | None:
    """``message`` as a train of ``size``-byte datagrams (the header prepended), or None
    when it fits one datagram of ``size`` bytes, or would need more than
    :data:`MAX_DATAGRAMS`. ``sole``: the sender keeps :data:`MAGIC_SOLE`'s promise (so
    the receiver knows the rest of a train whose first datagram was lost)."""
    n = len(message)
    if n <= size or size < MIN_SIZE or n > MAX_MESSAGE:
        return None
    if -(-(n + HEAD_LEN) // size) > MAX_DATAGRAMS:
        return None
    head = HEAD.pack(MARK, MAGIC_SOLE if sole else MAGIC, size, n)
    pad = wire_length(n, size, sole) - HEAD_LEN - n
    return head + message + bytes(pad) if pad else head + message


def parity_piece(length: int, count: int) -> int:
    """The bytes of message in each datagram of a train with parity: equal pieces, a
    multiple of 8 (:func:`tund.relay.transport.xor.xor_of` takes them as 64-bit words)."""
    return (-(-length // count) + 7) & ~7


def parity_train(message: bytes, size: int, train_id: int) -> bytes | None:
    """``message`` as a train with parity: each datagram of at most ``size`` bytes starts
    with its own :data:`PARITY_HEAD` (so each is known wherever it lands), the message is
    cut into equal pieces (:func:`parity_piece`; the last padded) and one more datagram
    carries their XOR: a receiver rebuilds any one lost datagram of the train. None when
    the message fits one datagram, or would need more than :data:`PARITY_DATAGRAMS`
    pieces. ``train_id`` tells a sender's trains apart (16 bits)."""
    n, room = len(message), size - HEAD_LEN
    count = -(-n // room) if room >= MIN_SIZE - HEAD_LEN else 0
    if count < 2 or n > 0xFFFF:
        return None
    if parity_piece(n, count) > room:
        count += 1
    if count > PARITY_DATAGRAMS:
        return None
    piece = parity_piece(n, count)
    whole = message + bytes(count * piece - n)
    view, pack, tid = memoryview(whole), PARITY_HEAD.pack, train_id & 0xFFFF
    parts: list[bytes | memoryview] = []
    for i in range(count):
        parts += (pack(MARK, MAGIC_PARITY, tid, n, i, count), view[i * piece:(i + 1) * piece])
    parts += (pack(MARK, MAGIC_PARITY, tid, n, count, count), xor_of(whole, count))
    return b"".join(parts)


def train_size(buf: bytes) -> int:
    """The datagram size of a train :func:`train` or :func:`parity_train` built."""
    if buf[1] == MAGIC_PARITY:
        _, _, _, n, _, count = PARITY_HEAD.unpack_from(buf, 0)
        return HEAD_LEN + parity_piece(n, count)
    return int(HEAD.unpack_from(buf, 0)[2])


def sends(buf: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of each ``UDP_SEGMENT`` send of the train ``buf``: one unless it
    is larger than one send may be (:data:`GSO_BYTES`, :data:`GSO_SEGMENTS`), then cut
    at datagram boundaries."""
    size, n = train_size(buf), len(buf)
    if n <= GSO_BYTES and -(-n // size) <= GSO_SEGMENTS:
        return [(0, n)]
    step = min(GSO_SEGMENTS, GSO_BYTES // size) * size
    return [(off, min(off + step, n)) for off in range(0, n, step)]


class Reassembler:
    """Joins trains; see the module docstring.

    :attr:`need` is the number of datagrams still due for the message being joined; the
    transport hands a run of datagrams here when it is not 0 or the run starts with
    :data:`MARK`. :meth:`add` takes ``buf[:n]``, a run of datagrams of ``size`` bytes
    each (the last may be shorter: one datagram, ``size == n``, or a GRO train) from
    ``source``, and returns what to deliver, in order: joined messages, and the
    datagrams of the run that are no part of a train, as they are. ``drop(cause)`` is
    told of a message given up unfinished (``"segments_incomplete"``) and of a header
    that makes no sense (``"segment_malformed"``; its datagram is dropped);
    ``recovered(1)`` of a datagram of a train with parity rebuilt from the others. One
    train with parity is followed at a time, beside one plain train: a datagram of the
    next gives up the last if it is still short of more than one datagram.
    """

    def __init__(self, drop: Callable[[str], object],
                 recovered: Callable[[int], object] = lambda n: None) -> None:
        self.drop = drop
        self.recovered = recovered
        self.need = 0
        #: (sender, S) of the latest sole-sized train: its orphans are known (see add)
        self.sole: tuple[Hashable, int] | None = None
        self._size = 0
        self._last = 0  # the length of the message's last datagram
        self._length = 0  # the message's
        self._source: Hashable = None
        self._parts: list[bytes] = []
        # the train with parity being joined: its sender and id, its datagrams (the
        # parity last; the last data piece without its padding), how many data
        # datagrams are still due, its message length, count and datagram size
        self._psrc: Hashable = None
        self._ptid = -1
        self._pparts: list[bytes | None] = []
        self._pmissing = 0
        self._plength = self._pcount = self._psize = 0

    # Size: one pass over a run that may hold the end of one train, whole trains and
    # plain datagrams; every check of a datagram's place is here.
    def add(self, buf: bytes | bytearray | memoryview, n: int, size: int,
            source: Hashable) -> list[bytes]:
        view = memoryview(buf)
        out: list[bytes] = []
        pos = 0
        while pos < n:
            end = min(pos + size, n)
            if self.need:
                # the expected continuation: right size, same sender, not a new header
                want = self._last if self.need == 1 else self._size
                if (source == self._source and end - pos == want
                        and not self._header_at(view, pos, end)
                        and not (view[pos] == MARK and view[pos + 1] == MAGIC_PARITY)):
                    take = min(self.need, -(-(n - pos) // size)) if size == want else 1
                    stop = min(pos + take * size, n)
                    if take > 1 and stop - (pos + (take - 1) * size) != (
                            self._last if take == self.need else size):
                        take, stop = 1, end  # the run ends otherwise: one at a time
                    self._parts.append(bytes(view[pos:stop]))
                    self.need -= take
                    pos = stop
                    if not self.need:
                        joined = b"".join(self._parts)
                        out.append(joined if len(joined) == self._length
                                   else joined[:self._length])  # (a sole train's padding)
                        self._parts = []
                    continue
                self.drop("segments_incomplete")
                self.need, self._parts = 0, []
                if source == self._source and end - pos == self._last:
                    pos = end  # the train's last datagram, early: one went missing
                    continue
            if view[pos] != MARK:  # a datagram of its own, or what is left of a train
                sole, length = self.sole, end - pos
                if (sole is not None and source == sole[0] and length <= sole[1]
                        and length > SOLE_SHORT and length & 15 == 15):
                    self.drop("segment_orphaned")  # its first datagram was lost
                else:
                    out.append(bytes(view[pos:end]))
                pos = end
                continue
            if end - pos > HEAD_LEN and view[pos + 1] == MAGIC_PARITY:
                if (m := self.parity(view, pos, end, source)) is not None:
                    out.append(m)
                pos = end
                continue
            head = self._header_at(view, pos, end)
            if head is None:
                self.drop("segment_malformed")
                pos = end
                continue
            seg, length = head
            is_sole = view[pos + 1] == MAGIC_SOLE
            self.sole = (source, seg) if is_sole else None
            total = wire_length(length, seg, is_sole)
            count = -(-total // seg)
            stop = pos + total
            if stop <= n and (size == seg or count == 1):  # the whole train in this run
                out.append(bytes(view[pos + HEAD_LEN:pos + HEAD_LEN + length]))
                pos = stop
                continue
            # the start of a train whose rest comes later (one datagram now)
            self._size, self._last, self._length = seg, total - (count - 1) * seg, length
            self._source, self.need = source, count - 1
            self._parts = [bytes(view[pos + HEAD_LEN:end])]
            pos = end
        return out

    # Size: the per-datagram path of a lossy link: a new train's checks, the common case
    # (a datagram of the train being joined) and the rebuilding of a lost one, in one call.
    def parity(self, view: memoryview, pos: int, end: int, source: Hashable) -> bytes | None:
        """One datagram (``view[pos:end]``, ``view[pos + 1]`` is :data:`MAGIC_PARITY`) of a
        train with parity (:func:`parity_train`): kept; the message once its data
        datagrams came, or all but one and the parity (the transport calls this directly
        for a datagram read alone)."""
        _, _, tid, length, index, count = PARITY_HEAD.unpack_from(view, pos)
        if tid != self._ptid or source != self._psrc:
            if source == self._psrc and (self._ptid - tid) & 0xFFFF <= LATE_TRAINS:
                self.drop("segment_late")  # of one of the trains just before
                return None
            if (count < 2 or count > PARITY_DATAGRAMS or index > count
                    or end - pos != HEAD_LEN + parity_piece(length, count)):
                self.drop("segment_malformed")
                return None
            if self._pmissing:
                self.drop("segments_incomplete")
            self._ptid, self._psrc, self._pparts = tid, source, [None] * (count + 1)
            self._plength, self._pcount, self._psize = length, count, end - pos
            self._pmissing = count
        elif (length != self._plength or count != self._pcount or index > count
              or end - pos != self._psize):
            self.drop("segment_malformed")
            return None
        parts = self._pparts
        if not self._pmissing or parts[index] is not None:
            return None  # the parity of a train complete without it, or a duplicate
        start = pos + HEAD_LEN
        if index == count - 1:  # the last piece, without its padding
            parts[index] = bytes(view[start:start + length - index * (end - start)])
        else:
            parts[index] = bytes(view[start:end])
        if index < count:
            self._pmissing -= 1
            if not self._pmissing:
                return b"".join(parts[:count])  # type: ignore[arg-type]
        if self._pmissing != 1 or parts[count] is None:
            return None
        lost, piece = parts.index(None), end - start
        last = parts[count - 1]
        if last is not None:  # padded again for the XOR
            parts[count - 1] = last + bytes(piece - len(last))
        parts[lost] = bytes(piece)  # (a zero piece: XORs to nothing)
        parts[lost] = xor_of(b"".join(parts), count + 1)  # type: ignore[arg-type]
        self._pmissing = 0
        self.recovered(1)
        return b"".join(parts[:count])[:length]  # type: ignore[arg-type]

    @staticmethod
    def _header_at(view: memoryview, pos: int, end: int) -> tuple[int, int] | None:
        """``(datagram size, message length)`` if a train's first datagram starts at
        ``pos`` (its datagram ends at ``end``), else None."""
        if (end - pos <= HEAD_LEN or view[pos] != MARK
                or view[pos + 1] not in (MAGIC, MAGIC_SOLE)):
            return None
        _, magic, seg, length = HEAD.unpack_from(view, pos)
        total = wire_length(length, seg, magic == MAGIC_SOLE) if seg >= MIN_SIZE else 0
        count = -(-total // seg) if seg >= MIN_SIZE else 0
        if not (1 < count <= MAX_DATAGRAMS and length <= MAX_MESSAGE
                and end - pos == min(seg, total)):
            return None
        return seg, length
