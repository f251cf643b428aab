"""Segments: a message larger than a datagram sent as one train and joined again."""

from __future__ import annotations

import os

from tund.relay.transport.gso import GSO_BYTES
from tund.relay.transport.segments import HEAD_LEN, MARK, Reassembler, train_size, trains

SIZE = 1420


def _reassembler() -> tuple[Reassembler, list[str]]:
    drops: list[str] = []
    return Reassembler(drops.append), drops


def _datagrams(train: bytes) -> list[bytes]:
    """``train`` as the network carries it: one datagram per segment."""
    size = train_size(train)
    return [train[off:off + size] for off in range(0, len(train), size)]


def test_a_64k_message_is_one_train_of_equal_segments_with_a_short_last_one() -> None:
    message = os.urandom(64_430)  # a 47-MSS TCP super-packet, enveloped and sealed
    out = trains(message, SIZE, 7)
    assert out is not None and len(out) == 1
    (train,) = out
    assert len(train) <= GSO_BYTES and train_size(train) == SIZE
    parts = _datagrams(train)
    assert len(parts) == -(-len(message) // (SIZE - HEAD_LEN)) == 46
    assert all(len(p) == SIZE for p in parts[:-1]) and 0 < len(parts[-1]) <= SIZE
    assert all(p[0] == MARK and p[:HEAD_LEN] == parts[0][:HEAD_LEN] for p in parts)
    assert b"".join(p[HEAD_LEN:] for p in parts) == message


def test_a_message_larger_than_one_send_takes_two_trains() -> None:
    message = os.urandom(65_617)  # the largest: vnet header, 64 KB packet, envelope, AEAD
    out = trains(message, SIZE, 1)
    assert out is not None and len(out) == 2 and all(len(t) <= GSO_BYTES for t in out)
    r, drops = _reassembler()
    got = [r.add(t, len(t), SIZE) for t in out]
    assert got == [None, message] and drops == []


def test_what_fits_one_datagram_or_needs_too_many_segments_is_not_cut() -> None:
    assert trains(bytes(SIZE), SIZE, 1) is None
    assert trains(bytes(SIZE + 1), SIZE, 1) is not None
    assert trains(bytes(100_000), 300, 1) is None  # more than MAX_SEGMENTS


def test_a_whole_gro_train_is_one_message() -> None:
    message = os.urandom(60_000)
    (train,) = trains(message, SIZE, 3) or [b""]
    r, drops = _reassembler()
    assert r.add(train, len(train), SIZE) == message
    assert r.add(memoryview(bytearray(train)), len(train), SIZE) == message  # as read
    assert drops == []


def test_segments_one_by_one_or_in_runs_join_to_the_message() -> None:
    message = os.urandom(50_000)
    (train,) = trains(message, SIZE, 9) or [b""]
    parts = _datagrams(train)
    r, drops = _reassembler()
    got = [r.add(p, len(p), len(p)) for p in parts]
    assert got[-1] == message and got[:-1] == [None] * (len(parts) - 1)
    first, rest = b"".join(parts[:20]), b"".join(parts[20:])  # two GRO runs
    assert r.add(first, len(first), SIZE) is None
    assert r.add(rest, len(rest), SIZE) == message
    assert drops == []


def test_a_message_with_a_segment_lost_is_given_up_when_the_next_one_comes() -> None:
    a = _datagrams((trains(os.urandom(20_000), SIZE, 1) or [b""])[0])
    second = os.urandom(20_000)
    (b,) = trains(second, SIZE, 2) or [b""]
    r, drops = _reassembler()
    assert [r.add(p, len(p), len(p)) for p in a[:3] + a[4:]] == [None] * (len(a) - 1)
    assert r.add(b, len(b), SIZE) == second and drops == ["segments_incomplete"]


def test_malformed_runs_are_dropped_and_counted_and_what_was_held_survives() -> None:
    message = os.urandom(10_000)
    parts = _datagrams((trains(message, SIZE, 5) or [b""])[0])
    other = _datagrams((trains(message, SIZE, 6) or [b""])[0])
    r, drops = _reassembler()
    assert r.add(parts[0], SIZE, SIZE) is None
    bad_mark = b"\x0e" + parts[1][1:]
    inside = parts[1] + parts[1][:HEAD_LEN]  # a header where a slice should be
    mixed = parts[1] + other[2]  # two messages in one run
    wrong_size = parts[1]  # a run whose datagram size is not the header's
    for run, size in ((bad_mark, SIZE), (inside, SIZE), (mixed, SIZE),
                      (wrong_size, SIZE - 100), (b"\x0f", 1)):
        assert r.add(run, len(run), size) is None
    assert drops == ["segment_malformed"] * 5
    got = [r.add(p, len(p), len(p)) for p in parts[1:]]
    assert got[-1] == message


def test_a_run_of_more_segments_than_its_count_is_refused() -> None:
    message = os.urandom(5_000)
    parts = _datagrams((trains(message, SIZE, 4) or [b""])[0])
    run = b"".join(parts[:-1] + parts[:1] + parts[-1:])  # one segment too many
    r, drops = _reassembler()
    assert r.add(run, len(run), SIZE) is None and drops == ["segment_malformed"]
