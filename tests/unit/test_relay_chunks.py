"""chunks.py: TSO super-packets cut into MTU-sized chunks, rebuilt whole or in valid runs.

The runs' checksums are checked the way the kernel completes a CHECKSUM_PARTIAL packet
(sum from csum_start with the pseudo-header sum in the field, complemented) against a
checksum computed from scratch, so a wrong pseudo-header or length would fail here.
"""

from __future__ import annotations

import random
import struct

import pytest

from tund.relay.codec import chunks
from tund.relay.codec.chunks import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    VNET,
    WAIT,
    LossMeter,
    Reassembler,
    ipv4_header_checksum,
    is_chunk,
    pseudo_header_sum,
    split,
)

SRC4, DST4 = bytes([10, 1, 0, 1]), bytes([10, 1, 0, 2])
SRC6, DST6 = bytes.fromhex("fd00000000000000" + "0000000000000001"), bytes.fromhex(
    "fd00000000000000" + "0000000000000002")
SEQ = 0xFFFFF000  # wraps inside the frame: sequence arithmetic is mod 2**32
ACK, PSH, FIN, CWR = 0x10, 0x08, 0x01, 0x80


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def add(r: Reassembler, chunk: bytes, now: float) -> list[bytes]:
    out: list[bytes] = []
    assert r.add(chunk, now, out) is None
    return out


def tso_frame(v6: bool = False, payload_len: int = 20000, gso: int = 1448,
              flags: int = ACK | PSH | FIN | CWR, ecn: bool = False) -> bytes:
    payload = random.Random(payload_len).randbytes(payload_len)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, SEQ, 77, 8 << 4, flags, 512, 0, 0))
    tcp += b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP timestamps: a 32-byte header
    tcp_len = len(tcp) + payload_len
    if v6:
        ip = bytearray(struct.pack("!IHBB", 0x60000000, tcp_len, 6, 64)) + SRC6 + DST6
    else:
        ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, 0x1234, 0x4000, 64, 6,
                                   0) + SRC4 + DST4)
        struct.pack_into("!H", ip, 10, ipv4_header_checksum(ip))
    struct.pack_into("!H", tcp, 16, pseudo_header_sum(ip, tcp_len))
    kind = (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if ecn else 0)
    return VNET.pack(F_NEEDS_CSUM, kind, len(ip) + len(tcp), gso, len(ip), 16) + ip + tcp + payload


def kernel_checksum_ok(frame: bytes) -> bool:
    """Complete the partial checksum as the kernel would and compare with one computed
    from scratch over the pseudo-header and the segment with a zero checksum field."""
    flags, _, _, _, start, offset = VNET.unpack_from(frame)
    assert flags & F_NEEDS_CSUM
    pkt = frame[VNET.size:]
    completed = ~_sum16(pkt[start:]) & 0xFFFF
    seg = bytearray(pkt[start:])
    struct.pack_into("!H", seg, offset, 0)
    addrs = pkt[12:20] if pkt[0] >> 4 == 4 else pkt[8:40]
    pseudo = addrs + struct.pack("!IxxxB", len(seg), 6)
    fresh = ~_sum16(pseudo + bytes(seg)) & 0xFFFF
    return completed == fresh


def ip_ok(frame: bytes) -> bool:
    pkt = frame[VNET.size:]
    if pkt[0] >> 4 == 4:
        return bool(struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
                    and _sum16(pkt[:20]) == 0xFFFF)
    return bool(struct.unpack_from("!H", pkt, 4)[0] == len(pkt) - 40)


@pytest.mark.parametrize("v6", [False, True])
def test_chunks_fit_the_mtu_and_rebuild_the_frame_bit_for_bit_in_any_order(v6: bool) -> None:
    frame = tso_frame(v6)
    cut = split(frame, 1400, 7)
    assert cut is not None and len(cut) > 10
    assert all(len(c) <= 1400 and is_chunk(c) for c in cut)
    assert all(struct.unpack_from("!H", c, 2 if not v6 else 4)[0] + (40 if v6 else 0)
               == len(c) for c in cut)  # the IP length says the chunk's length
    r = Reassembler()
    out = [f for c in cut for f in add(r, c, 0.0)]
    assert out == [frame] and r.deadline is None
    shuffled = list(cut)
    random.Random(1).shuffle(shuffled)
    out = [f for c in shuffled for f in add(r, c, 0.0)]
    assert out == [frame] and (r.malformed, r.stray, r.partial) == (0, 0, 0)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("lost", [[0], [5], [-1], [2, 3, 9], [1, 4]])
def test_lost_chunks_leave_valid_runs_that_carry_exactly_the_bytes_that_arrived(
        v6: bool, lost: list[int]) -> None:
    frame = tso_frame(v6, ecn=True)
    hlen = 72 if v6 else 52
    payload = frame[VNET.size + hlen:]
    cut = split(frame, 1400, 9)
    assert cut is not None
    n = len(cut)
    gone = {i % n for i in lost}
    r = Reassembler()
    out: list[bytes] = []
    for i, c in enumerate(cut):
        if i not in gone:
            out += add(r, c, 10.0)
    assert out == [] and r.deadline == pytest.approx(10.0 + WAIT)
    assert r.expire(10.0) == []  # not yet
    out = r.expire(10.0 + WAIT)
    assert r.partial == 1 and r.deadline is None
    size = len(cut[0]) - hlen - chunks.TRAILER_LEN
    runs = []
    i = 0
    while i < n:
        if i in gone:
            i += 1
            continue
        j = i
        while j < n and j not in gone:
            j += 1
        runs.append((i, j))
        i = j
    assert len(out) == len(runs)
    for (a, b), f in zip(runs, out, strict=True):
        assert ip_ok(f) and kernel_checksum_ok(f)
        vflags, kind, hdr_len, gso, start, offset = VNET.unpack_from(f)
        assert vflags == F_NEEDS_CSUM
        assert (hdr_len, start, offset) == (hlen, hlen - 32, 16)
        if b - a > 1:
            assert kind == (GSO_TCPV6 if v6 else GSO_TCPV4) | GSO_ECN and gso == size
        else:
            assert (kind, gso) == (GSO_NONE, 0)
        pkt = f[VNET.size:]
        tcp = hlen - 32
        assert pkt[hlen:] == payload[a * size:b * size]
        assert struct.unpack_from("!I", pkt, tcp + 4)[0] == (SEQ + a * size) % 2**32
        tflags = pkt[tcp + 13]
        assert bool(tflags & CWR) == (a == 0)
        assert bool(tflags & (FIN | PSH)) == (b == n)
        assert tflags & ACK
        if not v6:
            assert struct.unpack_from("!H", pkt, 4)[0] == 0x1234 + a


def test_a_newer_frame_pushes_out_an_incomplete_one() -> None:
    one, two = split(tso_frame(), 1400, 1), split(tso_frame(payload_len=9000), 1400, 2)
    assert one is not None and two is not None
    r = Reassembler()
    out = [f for c in one[1:] for f in add(r, c, 0.0)]  # the first chunk is lost
    assert out == []
    out = add(r, two[0], 0.0)
    assert len(out) == 1 and kernel_checksum_ok(out[0]) and r.partial == 1
    out = [f for c in two[1:] for f in add(r, c, 0.0)]
    assert out == [tso_frame(payload_len=9000)]


def test_malformed_and_repeated_chunks_are_counted_and_dropped() -> None:
    cut = split(tso_frame(), 1400, 3)
    assert cut is not None
    r = Reassembler()
    assert add(r, cut[0], 0.0) == []
    out: list[bytes] = []
    assert r.add(cut[0], 0.0, out) == "duplicate" and out == [] and r.stray == 1
    bad = bytearray(cut[1])
    bad[-6] = 200  # index beyond the count
    assert r.add(bytes(bad), 0.0, out) == "malformed"
    assert r.add(cut[1][:30], 0.0, out) == "malformed"  # truncated
    short = bytearray(cut[1])
    del short[100:110]  # a middle chunk shorter than the chunk size
    struct.pack_into("!H", short, 2, len(short))
    assert r.add(bytes(short), 0.0, out) == "malformed"
    assert r.malformed == 3 and out == []


def test_frames_not_worth_cutting_travel_whole() -> None:
    assert split(tso_frame(payload_len=1000), 1400, 1) is None  # fits one chunk
    assert split(tso_frame(gso=200), 1400, 1) is None  # tiny segments: too many chunks
    plain = bytearray(tso_frame())
    plain[1] = GSO_NONE
    assert split(bytes(plain), 1400, 1) is None
    assert split(tso_frame(payload_len=60000), 1400, 1) is not None


def test_loss_meter_counts_gaps_and_partial_frames_and_advises_with_hysteresis() -> None:
    fid = 0x7FF0  # frame ids wrap

    def feed(m: LossMeter, n: int, bad_every: int = 0, skip: bool = False) -> None:
        nonlocal fid
        for i in range(n):
            bad = bad_every and i % bad_every == 0
            if bad and skip:
                fid = (fid + 1) & 0x7FFF  # this one never arrived
            m.frame(fid, not (bad and not skip))
            fid = (fid + 1) & 0x7FFF

    m = LossMeter(chunks=False)
    feed(m, LossMeter.WINDOW)
    assert m.q == 0.0 and m.pending is False  # the first advice: whole
    m = LossMeter(chunks=False)
    feed(m, LossMeter.EARLY_BAD - 1, bad_every=1)  # fewer bad ones than the early verdict
    assert m.pending is None
    m = LossMeter(chunks=False)
    feed(m, 20, bad_every=3, skip=True)  # frames lost entirely (gaps): an early verdict
    assert m.pending is True and m.chunks and m.q is not None and m.q > 0.2
    m = LossMeter(chunks=True)
    feed(m, LossMeter.WINDOW, bad_every=20)  # 5%: between the thresholds: keep chunks
    assert m.chunks and m.pending is True  # said once
    m.pending = None
    m.now = 0.5
    feed(m, LossMeter.WINDOW, bad_every=20)
    assert m.chunks and m.pending is None  # no change, not due again yet
    m.now = 1.6
    feed(m, LossMeter.WINDOW)  # clean: whole again
    assert m.pending is False and not m.chunks
    m.frame((fid + 5000) & 0x7FFF, True)  # a jump: numbering restarted, not 5000 lost
    assert m._bad == 0
