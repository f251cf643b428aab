"""Receive coalescing: consecutive TCP segments of one flow become one GSO super-frame.

:func:`coalesce` takes one receive batch of frames (vnet header + packet, in order) and
returns the frames to write, in the same order: runs of plain TCP segments that exactly
continue each other (at most ``MAX_SEGMENTS`` and 64 KB) become one ``NEEDS_CSUM`` frame
with ``gso_size`` set, as the kernel's GRO would make; everything else passes unchanged.
Pure function: no I/O. Which segments join a run, and why their checksums are not
re-verified: docs/design.md, "Receive coalescing".
"""

from __future__ import annotations

import struct

from tund.relay.codec.chunks import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    VNET,
    ipv4_header_checksum,
    pseudo_header_sum,
)

MAX_SEGMENTS = 64
_MAX_LEN = 0xFFFF
_ZERO = bytes(VNET.size)
_V = VNET.size
_ACK, _PSH = 0x10, 0x08
_SEQ = struct.Struct("!I")


def _segment(f: bytes) -> tuple[int, int, int, int] | None:
    """``(ip header length, ip + tcp header length, sequence number, tcp flags)`` of a
    candidate frame, or None."""
    if len(f) < _V + 60 or f[:_V] != _ZERO:
        return None
    b0 = f[_V]
    if b0 == 0x45:
        if f[_V + 9] != 6 or f[_V + 6] & 0x3F or f[_V + 7]:  # TCP; not a fragment
            return None
        iphl = 20
        if (f[_V + 2] << 8 | f[_V + 3]) != len(f) - _V:
            return None
    elif b0 >> 4 == 6:
        if f[_V + 6] != 6 or 40 + (f[_V + 4] << 8 | f[_V + 5]) != len(f) - _V:
            return None
        iphl = 40
    else:
        return None
    tcp = _V + iphl
    hlen = iphl + (f[tcp + 12] >> 4) * 4
    flags = f[tcp + 13]
    if hlen < iphl + 20 or len(f) - _V <= hlen or flags & ~(_ACK | _PSH) or not flags & _ACK:
        return None
    return iphl, hlen, _SEQ.unpack_from(f, tcp + 4)[0], flags


def may_lead(frame: bytes) -> bool:
    """True if ``frame`` could start a run that later frames join (a candidate segment
    without PSH); a frame for which this is False may be written at once."""
    if len(frame) < _V + 60 or 6 not in (frame[_V + 9], frame[_V + 6]):
        return False  # not TCP (IPv4 protocol, IPv6 next header): the common quick answer
    seg = _segment(frame)
    return seg is not None and not seg[3] & _PSH


def flow_mask(iphl: int, hlen: int) -> int:
    """The bits of an ``hlen``-byte IP + TCP header (as a big-endian int) that every
    segment of a run shares: all but the lengths, IPv4 id and checksum, seq, TCP flags
    byte (PSH may differ; the flags were checked by :func:`_segment`) and TCP checksum.
    One masked compare per segment instead of a dozen slices."""
    mask = _MASKS.get((iphl, hlen))
    if mask is None:
        varying = [2, 3, 4, 5, 10, 11] if iphl == 20 else [4, 5]
        varying += [iphl + i for i in (4, 5, 6, 7, 13, 16, 17)]
        keep = bytearray(b"\xff" * hlen)
        for i in varying:
            keep[i] = 0
        mask = _MASKS[(iphl, hlen)] = int.from_bytes(keep, "big")
    return mask


_MASKS: dict[tuple[int, int], int] = {}


def coalesce(frames: list[bytes]) -> list[bytes]:
    """See the module docstring."""
    out: list[bytes] = []
    run: list[bytes] = []
    key = mask = 0  # the run's first header (an int) and its flow_mask
    iphl = hlen = size = total = 0
    next_seq = 0
    closed = False
    from_bytes = int.from_bytes
    for f in frames:
        if (run and not closed and len(f) > _V + hlen and f[:_V] == _ZERO
                and not (from_bytes(f[_V:_V + hlen], "big") ^ key) & mask):
            # f continues the run if it has the run's flow and header shape (the mask
            # covers version, protocol, fragment bits, addresses, ports, data offset...:
            # what _segment checked of the run's first) and the fields the mask leaves
            # out fit: IP length, flags, sequence number, payload size, the caps.
            size_field = (f[_V + 2] << 8 | f[_V + 3]) if iphl == 20 else \
                40 + (f[_V + 4] << 8 | f[_V + 5])
            flags = f[_V + iphl + 13]
            payload = len(f) - _V - hlen
            if (size_field == len(f) - _V and flags & _ACK and not flags & ~(_ACK | _PSH)
                    and _SEQ.unpack_from(f, _V + iphl + 4)[0] == next_seq
                    and payload <= size and len(run) < MAX_SEGMENTS
                    and total + payload <= _MAX_LEN - hlen):
                run.append(f)
                total += payload
                next_seq = (next_seq + payload) & 0xFFFFFFFF
                closed = payload < size or bool(flags & _PSH)
                continue
        if run:  # f does not continue the run (the check above is the only one)
            out.append(_merge(run, iphl, hlen, size, total))
            run = []
        seg = _segment(f)  # may f start one?
        if seg is None:
            out.append(f)
            continue
        iphl, hlen, seq, flags = seg
        size = total = len(f) - _V - hlen
        run = [f]
        key, mask = from_bytes(f[_V:_V + hlen], "big"), flow_mask(iphl, hlen)
        next_seq = (seq + size) & 0xFFFFFFFF
        closed = bool(flags & _PSH)
    if run:
        out.append(_merge(run, iphl, hlen, size, total))
    return out


def _merge(run: list[bytes], iphl: int, hlen: int, size: int, total: int) -> bytes:
    first = run[0]
    if len(run) == 1:
        return first
    hdr = bytearray(first[_V:_V + hlen])
    if iphl == 20:
        struct.pack_into("!H", hdr, 2, hlen + total)
        struct.pack_into("!H", hdr, 10, 0)
        struct.pack_into("!H", hdr, 10, ipv4_header_checksum(hdr[:20]))
        kind = GSO_TCPV4
    else:
        struct.pack_into("!H", hdr, 4, hlen - 40 + total)
        kind = GSO_TCPV6
    hdr[iphl + 13] |= run[-1][_V + iphl + 13] & _PSH
    struct.pack_into("!H", hdr, iphl + 16, pseudo_header_sum(hdr, hlen - iphl + total))
    head = VNET.pack(F_NEEDS_CSUM, kind, hlen, size, iphl, 16) + bytes(hdr)
    start = _V + hlen
    return b"".join([head, *(f[start:] for f in run)])
