"""A message larger than a datagram, sent as one train of equal-sized segments.

Why: a 64 KB message in one UDP datagram is cut by IP fragmentation: the sender's kernel
makes ~45 fragments one by one, the receiver's queues and joins them and checksums the
result in software. Segments of one size instead go out as one ``UDP_SEGMENT`` train
(one trip through the stack) and come in, with ``UDP_GRO``, as one read: a quarter of
the kernel's CPU per byte on this machine's veth (docs/design.md, "Segments"). Only tund
peers that said so (the offload hello) are sent segments.

Every segment of a message starts with the same :data:`HEAD` (marker :data:`MARK`,
segment count, datagram size, message id) followed by the next slice of the message;
all are ``size`` bytes but the last, which may be shorter. A train is built with one
``join`` of slices and taken apart with another (~10 us each for 64 KB here, against
~38 us for its AEAD). :data:`MARK` (0x0F) starts no WireGuard message (types 1-4),
no IP packet and no vnet frame a receiver takes (flags above 3 are refused).

:class:`Reassembler` keeps one message at a time and takes its segments in the order
they come (a train, or datagrams one by one without GRO). Segments carry no index: a
message whose segments were reordered joins wrong and fails authentication, as a lost one
would have lost it. The integrity of the result is not this module's business: what it
joins is decrypted and authenticated after it. Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from tund.relay.transport.gso import GSO_BYTES, GSO_SEGMENTS

HEAD = struct.Struct("!BBHI")  # marker, segment count, datagram size, message id
HEAD_LEN = HEAD.size
MARK = 0x0F
MAX_SEGMENTS = 255
MIN_SIZE = HEAD_LEN + 256  # a smaller datagram size is not worth segments


def trains(message: bytes, size: int, mid: int) -> list[bytes] | None:
    """``message`` as trains: buffers of segments of ``size`` bytes (the last of the
    message may be shorter), each to go out in one ``UDP_SEGMENT`` send (usually one
    train: a 64 KB message cut to a 1,420-byte MTU is 46 segments). None when it fits
    one datagram of ``size`` bytes or would need more than :data:`MAX_SEGMENTS`."""
    n = len(message)
    if n <= size or size < MIN_SIZE:
        return None
    step = size - HEAD_LEN
    count = -(-n // step)
    if count > MAX_SEGMENTS:
        return None
    head = HEAD.pack(MARK, count, size, mid & 0xFFFFFFFF)
    view = memoryview(message)
    slices = [view[off:off + step] for off in range(0, n, step)]
    if count <= GSO_SEGMENTS and n + count * HEAD_LEN <= GSO_BYTES:
        return [head + head.join(slices)]
    per = min(GSO_SEGMENTS, GSO_BYTES // size)
    return [head + head.join(slices[i:i + per]) for i in range(0, count, per)]


def train_size(buf: bytes) -> int:
    """The datagram size of a train :func:`trains` built."""
    return int(HEAD.unpack_from(buf, 0)[2])


class Reassembler:
    """Joins the segments of one message at a time (see the module docstring).

    :meth:`add` takes ``buf[:n]``, a run of segments of ``size`` bytes each (the last of
    the run may be shorter): one datagram (``size == n``) or a GRO train. It returns the
    whole message when this run completes it, else None. ``drop(cause)`` is told of a
    message given up with segments missing (``"segments_incomplete"``: another message
    started) and of a run dropped (``"segment_malformed"``: not segments of one message,
    more segments than the count, or a length that does not add up).
    """

    def __init__(self, drop: Callable[[str], object]) -> None:
        self.drop = drop
        self._head = b""  # the header of the message being collected
        self._count = 0
        self._got = 0  # segments held
        self._parts: list[bytes] = []

    def add(self, buf: bytes | bytearray | memoryview, n: int, size: int) -> bytes | None:
        if n <= HEAD_LEN or size <= HEAD_LEN:
            self.drop("segment_malformed")
            return None
        mark, count, seg_size, _mid = HEAD.unpack_from(buf, 0)
        k = -(-n // size)  # segments in this run
        last = (k - 1) * size
        view = memoryview(buf)
        head = bytes(view[:HEAD_LEN])
        # the first and the last segment of the run are of one message, and the last has
        # something after its header (what is between is the AEAD's to judge)
        if (mark != MARK or count < 2 or k > count or seg_size < size
                or (k > 1 and seg_size != size) or n - last <= HEAD_LEN
                or view[last:last + HEAD_LEN] != head):
            self.drop("segment_malformed")
            return None
        data = b"".join([view[off + HEAD_LEN:off + size] for off in range(0, last, size)]
                        + [view[last + HEAD_LEN:n]])
        if head != self._head:
            if self._parts:
                self.drop("segments_incomplete")
            if k == count:  # the whole message in one train: the common case
                self._reset()
                return self._checked(data, count, seg_size)
            self._head, self._count, self._got, self._parts = head, count, 0, []
        self._got += k
        self._parts.append(data)
        if self._got < self._count:
            return None
        parts = self._parts
        self._reset()
        return self._checked(b"".join(parts), count, seg_size)

    def _checked(self, message: bytes, count: int, seg_size: int) -> bytes | None:
        """``message`` if its length fits ``count`` segments of ``seg_size`` bytes."""
        step = seg_size - HEAD_LEN
        if (count - 1) * step < len(message) <= count * step:
            return message
        self.drop("segment_malformed")
        return None

    def _reset(self) -> None:
        self._head, self._count, self._got, self._parts = b"", 0, 0, []
