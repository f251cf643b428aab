"""framing: any split of the stream decodes to the same packets; oversize keeps sync."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tund.relay.transport.framing import FrameDecoder, encode, encode_into

packets = st.lists(st.binary(min_size=1, max_size=300), max_size=30)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@settings(max_examples=300, deadline=None)
@given(packets, st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
       st.sampled_from(["bytes", "bytearray", "memoryview"]))
def test_any_split_decodes_to_the_same_packets(pkts: list[bytes], cuts: list[int],
                                               kind: str) -> None:
    stream = b"".join(encode(p) for p in pkts)
    dec = FrameDecoder(300)
    got: list[bytes] = []
    for chunk in chunked(stream, cuts):
        data: bytes | bytearray | memoryview = (
            chunk if kind == "bytes" else bytearray(chunk) if kind == "bytearray"
            else memoryview(bytearray(chunk)))
        got += dec.feed(data)
    assert got == pkts
    assert dec.pending == 0
    assert dec.drops == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=0, max_size=200), st.booleans()), max_size=20),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_oversize_and_empty_frames_are_dropped_and_the_stream_stays_in_sync(
        items: list[tuple[bytes, bool]], cuts: list[int]) -> None:
    limit = 100
    stream = bytearray()
    want: list[bytes] = []
    oversize = empty = 0
    for body, big in items:
        if big:
            body = body + b"O" * (limit + 1)  # always above the limit
        stream += struct.pack("!H", len(body)) + body
        if not body:
            empty += 1
        elif len(body) > limit:
            oversize += 1
        else:
            want.append(body)
    dec = FrameDecoder(limit)
    got: list[bytes] = []
    for chunk in chunked(bytes(stream), cuts):
        got += dec.feed(chunk)
    assert got == want
    assert dec.drops.get("oversize", 0) == oversize
    assert dec.drops.get("malformed", 0) == empty


def test_a_maximal_frame_split_byte_by_byte() -> None:
    pkt = bytes(range(256)) * 255 + b"x" * 255  # 65535 bytes
    stream = encode(pkt) + encode(b"after")
    dec = FrameDecoder(65535)
    got = []
    for i in range(len(stream)):
        got += dec.feed(stream[i:i + 1])
    assert got == [pkt, b"after"]


def test_oversize_skipped_across_many_feeds() -> None:
    drops: dict[str, int] = {}
    dec = FrameDecoder(10, drops)
    stream = encode(b"a" * 5000) + encode(b"ok")
    got = []
    for i in range(0, len(stream), 7):
        got += dec.feed(stream[i:i + 7])
    assert got == [b"ok"]
    assert drops == {"oversize": 1}


def test_partial_header_is_kept() -> None:
    dec = FrameDecoder(100)
    assert dec.feed(b"\x00") == []
    assert dec.pending == 1
    assert dec.feed(b"\x03ab") == []
    assert dec.feed(b"c\x00") == [b"abc"]
    assert dec.pending == 1


def test_reset_forgets_a_partial_frame() -> None:
    dec = FrameDecoder(100)
    dec.feed(b"\x00\x05ab")
    dec.reset()
    assert dec.feed(encode(b"new")) == [b"new"]


def test_encode_is_one_buffer_and_checks_length() -> None:
    assert encode(b"abc") == b"\x00\x03abc"
    out = bytearray()
    encode_into(out, b"abc")
    encode_into(out, b"d")
    assert out == b"\x00\x03abc\x00\x01d"
    with pytest.raises(ValueError, match="got 0"):
        encode(b"")
    with pytest.raises(ValueError, match="got 65536"):
        encode(b"x" * 65536)
    with pytest.raises(ValueError, match="max_size"):
        FrameDecoder(0)
