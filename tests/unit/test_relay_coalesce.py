"""coalesce(): runs of plain TCP segments become one valid GSO super-frame, nothing else moves.

A merged frame is checked as the kernel would complete it (tests.unit.test_relay_chunks:
kernel_checksum_ok, ip_ok) and its payload against the segments' payloads in order.
"""

from __future__ import annotations

import random
import struct

import pytest

from tests.unit.test_relay_chunks import DST4, DST6, SRC4, SRC6, ip_ok, kernel_checksum_ok
from tund.relay.codec.chunks import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    VNET,
    VNET_LEN,
    ipv4_header_checksum,
)
from tund.relay.device.coalesce import MAX_SEGMENTS, coalesce, may_lead

ACK, PSH, FIN, SYN = 0x10, 0x08, 0x01, 0x02
ZERO = bytes(VNET.size)


def segment(seq: int, payload: bytes, flags: int = ACK, v6: bool = False, ident: int = 7,
            ack: int = 99, sport: int = 40000, window: int = 512) -> bytes:
    """A plain frame (zero vnet header) with a valid TCP segment (timestamps option)."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, 8 << 4, flags, window,
                                0, 0)) + b"\x01\x01\x08\x0a" + bytes(8)
    tcp_len = len(tcp) + len(payload)
    if v6:
        ip = bytearray(struct.pack("!IHBB", 0x60000000, tcp_len, 6, 64)) + SRC6 + DST6
        addrs = SRC6 + DST6
    else:
        ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, ident, 0x4000, 64, 6,
                                   0)) + SRC4 + DST4
        struct.pack_into("!H", ip, 10, ipv4_header_checksum(ip))
        addrs = SRC4 + DST4
    data = addrs + struct.pack("!IxxxB", tcp_len, 6) + bytes(tcp) + payload
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", tcp, 16, ~total & 0xFFFF)
    return ZERO + bytes(ip) + bytes(tcp) + payload


def stream(n: int, size: int = 1368, seq: int = 1000, v6: bool = False, last_psh: bool = True
           ) -> tuple[list[bytes], bytes]:
    rnd = random.Random(n)
    payloads = [rnd.randbytes(size) for _ in range(n)]
    frames = []
    for i, p in enumerate(payloads):
        flags = ACK | (PSH if last_psh and i == n - 1 else 0)
        frames.append(segment((seq + i * size) % 2**32, p, flags, v6, ident=7 + i))
    return frames, b"".join(payloads)


@pytest.mark.parametrize("v6", [False, True])
def test_a_run_of_segments_becomes_one_valid_super_frame(v6: bool) -> None:
    frames, payload = stream(20, v6=v6, seq=2**32 - 5000)  # the sequence wraps inside
    (merged,) = coalesce(frames)
    flags, kind, hdr_len, gso, start, offset = VNET.unpack_from(merged)
    hlen = (40 if v6 else 20) + 32
    assert (flags, kind, hdr_len, gso, start, offset) == (
        F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, hlen, 1368, hlen - 32, 16)
    assert ip_ok(merged) and kernel_checksum_ok(merged)
    assert merged[VNET.size + hlen:] == payload
    assert merged[VNET.size + hlen - 32 + 13] == ACK | PSH  # PSH from the last segment


def test_everything_else_passes_unchanged_and_in_order() -> None:
    frames, _ = stream(3)
    syn = segment(5, b"", SYN)
    ack_only = segment(4100, b"", ACK)
    other_flow = segment(1000 + 3 * 1368, b"x" * 1368, sport=40001)
    udp = bytearray(frames[0])
    udp[VNET.size + 9] = 17
    vnet_frame = VNET.pack(F_NEEDS_CSUM, GSO_TCPV4, 52, 1368, 20, 16) + frames[0][10:]
    fin = segment(1000 + 3 * 1368, b"y" * 100, ACK | FIN)
    batch = [syn, *frames[:2], ack_only, frames[2], bytes(udp), vnet_frame, other_flow, fin]
    out = coalesce(batch)
    assert out[0] == syn and out[2] == ack_only and out[3] == frames[2]
    assert out[4:] == [bytes(udp), vnet_frame, other_flow, fin]
    assert len(out) == 8 and kernel_checksum_ok(out[1])  # only frames[0:2] merged


@pytest.mark.parametrize("breaker", ["gap", "ack", "window", "ttl", "longer", "psh", "ident",
                                     "fin", "iplen", "fragment", "empty", "vnet", "v6"])
def test_a_segment_that_does_not_continue_the_run_starts_a_new_one(breaker: str) -> None:
    frames, _ = stream(4, last_psh=False)
    seq3 = 1000 + 3 * 1368
    third = {
        "gap": segment(seq3 + 1, b"z" * 1368),
        "ack": segment(seq3, b"z" * 1368, ack=100),
        "window": segment(seq3, b"z" * 1368, window=1024),
        "ttl": frames[3][:VNET.size + 8] + b"\x3f" + frames[3][VNET.size + 9:],
        "longer": segment(seq3, b"z" * 1400),
        "psh": frames[3],
        "ident": segment(seq3, b"z" * 1368, ident=500),
        "fin": segment(seq3, b"z" * 1368, ACK | FIN),
        "iplen": _patched(segment(seq3, b"z" * 1368), VNET.size + 3, 1),  # length + 1
        "fragment": _patched(segment(seq3, b"z" * 1368), VNET.size + 6, 0x20),  # MF
        "empty": segment(seq3, b"", ACK),
        "vnet": bytes([F_NEEDS_CSUM]) + segment(seq3, b"z" * 1368)[1:],
        "v6": segment(seq3, b"z" * 1368, v6=True),
    }[breaker]
    batch = [*frames[:3], third]
    if breaker == "psh":  # PSH on a middle segment ends the run after it
        batch = [frames[0], segment(1000 + 1368, frames[1][-1368:], ACK | PSH), frames[2]]
        out = coalesce(batch)
        assert len(out) == 2 and out[1] == frames[2]
        return
    out = coalesce(batch)
    if breaker == "ident":  # the IPv4 identification may change: still one run
        assert len(out) == 1
        return
    assert len(out) == 2 and out[1] == third and kernel_checksum_ok(out[0])


def _patched(frame: bytes, at: int, add: int) -> bytes:
    b = bytearray(frame)
    b[at] = (b[at] + add) & 0xFF
    return bytes(b)


def test_runs_are_capped() -> None:
    frames, payload = stream(MAX_SEGMENTS + 5, size=500)
    out = coalesce(frames)
    assert len(out) == 2
    assert b"".join(f[VNET.size + 52:] for f in out) == payload
    big, payload = stream(60, size=1400)  # 60 x 1400 > 64 KB: split by length
    out = coalesce(big)
    assert len(out) == 2 and all(len(f) - VNET.size <= 0xFFFF for f in out)
    assert b"".join(f[VNET.size + 52:] for f in out) == payload
    assert all(kernel_checksum_ok(f) for f in out)


@pytest.mark.parametrize("v6", [False, True])
def test_may_lead_says_which_frames_must_wait_for_a_run(v6: bool) -> None:
    """Only a data segment without PSH may start a run; anything else can be written at
    once (the pump's latency path relies on "False" being right)."""
    assert may_lead(segment(1, b"x" * 1000, v6=v6))
    assert not may_lead(segment(1, b"x" * 1000, ACK | PSH, v6=v6))
    assert not may_lead(segment(1, b"", v6=v6))  # a bare ACK
    assert not may_lead(segment(1, b"x" * 10, ACK | SYN, v6=v6))
    udp = bytearray(segment(1, b"x" * 1000, v6=v6))
    udp[len(ZERO) + (6 if v6 else 9)] = 17
    assert not may_lead(bytes(udp)) and not may_lead(ZERO + b"\x45")


def _same_flow_by_slices(a: bytes, b: bytes, iphl: int, hlen: int) -> bool:
    """The rule spelled out field by field (what coalesce compared before flow_mask)."""
    s, t = VNET_LEN, VNET_LEN + iphl
    if iphl == 20:
        ip_same = (a[s:s + 2] == b[s:s + 2] and a[s + 6:s + 10] == b[s + 6:s + 10]
                   and a[s + 12:t] == b[s + 12:t])
    else:
        ip_same = a[s:s + 4] == b[s:s + 4] and a[s + 6:t] == b[s + 6:t]
    end = VNET_LEN + hlen
    return ip_same and (a[t:t + 4] == b[t:t + 4] and a[t + 8:t + 13] == b[t + 8:t + 13]
                        and a[t + 14:t + 16] == b[t + 14:t + 16] and a[t + 18:end] == b[t + 18:end])


@pytest.mark.parametrize("iphl,hlen", [(20, 40), (20, 52), (40, 60), (40, 72)])
def test_the_flow_mask_compares_exactly_the_shared_fields(iphl: int, hlen: int) -> None:
    """Changing any one header byte breaks the flow exactly when the field-by-field rule
    says so (the mask neither ignores a shared byte nor compares a varying one)."""
    from tund.relay.device.coalesce import flow_mask
    rnd = random.Random(iphl * 1000 + hlen)
    mask = flow_mask(iphl, hlen)
    for _ in range(20):
        a = bytes(VNET_LEN) + bytes(rnd.randrange(256) for _ in range(hlen))
        for i in range(hlen):
            b = bytearray(a)
            b[VNET_LEN + i] ^= 1 << rnd.randrange(8)
            masked_same = not (int.from_bytes(a[VNET_LEN:], "big")
                               ^ int.from_bytes(b[VNET_LEN:], "big")) & mask
            assert masked_same == _same_flow_by_slices(a, bytes(b), iphl, hlen), (iphl, i)
