"""Trains: a message larger than a datagram sent as equal-sized datagrams, joined again."""

from __future__ import annotations

import os

import pytest

from tund.relay.transport import xor
from tund.relay.transport.gso import GSO_BYTES, GSO_SEGMENTS
from tund.relay.transport.segments import (
    HEAD_LEN,
    MAGIC_PARITY,
    MARK,
    PARITY_HEAD,
    Reassembler,
    parity_train,
    sends,
    train,
    train_size,
)

SIZE = 1420
PEER = ("10.0.0.2", 5000)


def _reassembler() -> tuple[Reassembler, list[str]]:
    drops: list[str] = []
    return Reassembler(drops.append), drops


def _train(message: bytes) -> bytes:
    t = train(message, SIZE)
    assert t is not None
    return t


def _datagrams(t: bytes) -> list[bytes]:
    """``t`` as the network carries it without GRO: one datagram each."""
    size = train_size(t)
    return [t[off:off + size] for off in range(0, len(t), size)]


def _one_by_one(r: Reassembler, datagrams: list[bytes], source: object = PEER) -> list[bytes]:
    out: list[bytes] = []
    for d in datagrams:
        if r.need or d[0] == MARK:
            out += r.add(d, len(d), len(d), source)
        else:
            out.append(d)  # what the transport delivers without asking
    return out


def test_a_64k_message_is_one_send_of_equal_datagrams_with_a_short_last_one() -> None:
    message = os.urandom(64_430)  # a 47-MSS TCP super-packet, enveloped and sealed
    t = _train(message)
    assert t[0] == MARK and train_size(t) == SIZE and t[HEAD_LEN:] == message
    assert sends(t) == [(0, len(t))] and len(t) <= GSO_BYTES
    parts = _datagrams(t)
    assert len(parts) == 46 and all(len(p) == SIZE for p in parts[:-1])


def test_the_largest_message_takes_two_sends_cut_at_a_datagram() -> None:
    t = _train(os.urandom(65_617))  # vnet header, a 64 KB packet, envelope, AEAD
    (a, cut), (cut2, b) = sends(t)
    assert a == 0 and cut == cut2 and b == len(t) and cut % SIZE == 0
    assert cut <= GSO_BYTES and cut // SIZE <= GSO_SEGMENTS


def test_what_fits_one_datagram_or_needs_too_many_is_not_a_train() -> None:
    assert train(bytes(SIZE), SIZE) is None
    assert train(bytes(SIZE + 1), SIZE) is not None
    assert train(bytes(100_000), 300) is None  # more than MAX_DATAGRAMS


def test_a_train_read_whole_is_the_message() -> None:
    message = os.urandom(60_000)
    t = _train(message)
    r, drops = _reassembler()
    assert r.add(t, len(t), SIZE, PEER) == [message]
    assert r.add(memoryview(bytearray(t)), len(t), SIZE, PEER) == [message]  # as read
    assert drops == [] and r.need == 0


def test_datagrams_one_by_one_or_in_runs_join_to_the_message() -> None:
    message = os.urandom(50_000)
    parts = _datagrams(_train(message))
    r, drops = _reassembler()
    assert _one_by_one(r, parts) == [message]
    first, rest = b"".join(parts[:20]), b"".join(parts[20:])  # two GRO runs
    assert r.add(first, len(first), SIZE, PEER) == [] and r.need == len(parts) - 20
    assert r.add(rest, len(rest), SIZE, PEER) == [message]
    assert drops == []


def test_a_run_may_hold_a_train_and_plain_datagrams_after_it() -> None:
    message = os.urandom(SIZE * 3 - HEAD_LEN)  # three full datagrams: no short last one
    plain = b"\x04" + os.urandom(SIZE - 1)  # a WireGuard message of the same size
    run = _train(message) + plain
    r, drops = _reassembler()
    assert r.add(run, len(run), SIZE, PEER) == [message, plain] and drops == []


def test_a_lost_datagram_gives_up_only_its_message() -> None:
    a, b = _datagrams(_train(os.urandom(20_000))), os.urandom(20_000)
    r, drops = _reassembler()
    # the short last one is not the continuation due: the message is given up there,
    # and that datagram with it
    assert _one_by_one(r, a[:3] + a[4:]) == []
    assert drops == ["segments_incomplete"]
    assert _one_by_one(r, _datagrams(_train(b))) == [b]
    lost_last = a[:-1]  # now the next one's header ends it
    assert _one_by_one(r, lost_last + _datagrams(_train(b))) == [b]
    assert drops == ["segments_incomplete"] * 2


def test_a_datagram_of_another_size_or_sender_ends_the_message_and_passes() -> None:
    message = os.urandom(10_000)
    parts = _datagrams(_train(message))
    ack = b"\x04" + os.urandom(99)  # a small message of the peer's: not a continuation
    r, drops = _reassembler()
    assert _one_by_one(r, [*parts[:3], ack]) == [ack]
    assert drops == ["segments_incomplete"] and r.need == 0
    assert _one_by_one(r, parts[:3]) == [] and r.need
    stranger = ("10.9.9.9", 1)
    assert r.add(parts[3], SIZE, SIZE, stranger) == [parts[3]]  # not its continuation
    assert drops == ["segments_incomplete"] * 2


def test_without_its_first_datagram_the_rest_of_a_train_passes_as_it_is() -> None:
    parts = _datagrams(_train(os.urandom(10_000)))
    r, drops = _reassembler()
    rest = [p for p in parts[1:] if p[0] != MARK]  # (one may start with MARK by chance)
    assert _one_by_one(r, rest) == rest and drops == []  # the codec drops them


def test_a_header_that_makes_no_sense_is_dropped_and_counted() -> None:
    r, drops = _reassembler()
    good = _train(os.urandom(5_000))
    short = good[:SIZE - 1]  # the first datagram must be the train's datagram size
    too_long = bytearray(good[:SIZE])
    too_long[4:8] = (1 << 20).to_bytes(4, "big")  # a message length beyond the limit
    for d in (short, bytes(too_long), good[:HEAD_LEN]):
        assert r.add(d, len(d), len(d), PEER) == []
    assert drops == ["segment_malformed"] * 3 and r.need == 0


def test_the_rest_of_a_sole_sized_train_without_its_first_datagram_is_dropped() -> None:
    size = 1407  # what tund's WireGuard trains use for a 1420 MTU: 15 modulo 16
    t = train(os.urandom(10_000), size, sole=True)
    assert t is not None
    parts = [t[o:o + size] for o in range(0, len(t), size)]
    r, drops = _reassembler()
    assert _one_by_one(r, parts) != []  # a whole one first: the sender's promise is known
    keepalive, data, init = bytes(32), b"\x04" + bytes(32 + 16 * 20 - 1), b"\x01" + bytes(147)
    out = []
    for d in [*parts[1:], keepalive, data, init]:
        out += r.add(d, len(d), len(d), PEER)  # (the transport hands it all, see sole)
    assert out == [keepalive, data, init]  # its other datagrams pass
    assert drops == ["segment_orphaned"] * (len(parts) - 1)
    assert r.add(parts[1], size, size, ("10.9.9.9", 1)) == [parts[1]]  # not that sender's
    assert all(len(p) % 16 == 15 and len(p) > 148 for p in parts)  # the last one padded


def test_a_sole_train_is_padded_on_the_wire_and_the_message_comes_back_exact() -> None:
    r, drops = _reassembler()
    for n in (1_500, 2_800, 10_000, 64_430):
        message = os.urandom(n)
        t = train(message, 1407, sole=True)
        assert t is not None
        parts = [t[o:o + 1407] for o in range(0, len(t), 1407)]
        assert _one_by_one(r, parts) == [message]
        assert r.add(t, len(t), 1407, PEER) == [message]
    assert drops == []


# -- trains with parity (chunks on a lossy path) --------------------------------------


def _parity(message: bytes, tid: int = 1) -> list[bytes]:
    t = parity_train(message, SIZE, tid)
    assert t is not None
    return _datagrams(t)


def _recovering() -> tuple[Reassembler, list[str], list[int]]:
    drops: list[str] = []
    rebuilt: list[int] = []
    return Reassembler(drops.append, rebuilt.append), drops, rebuilt


def test_a_train_with_parity_is_equal_headed_datagrams_and_one_xor() -> None:
    message = os.urandom(11_000)  # a chunk of eight segments, sealed
    parts = _parity(message)
    assert len(parts) == 9 and len({len(p) for p in parts}) == 1 and len(parts[0]) <= SIZE
    assert all(p[0] == MARK and p[1] == MAGIC_PARITY for p in parts)
    assert [PARITY_HEAD.unpack_from(p)[4] for p in parts] == list(range(9))
    xor = 0
    for p in parts:
        xor ^= int.from_bytes(p[HEAD_LEN:], "little")
    assert xor == 0  # the last is the XOR of the others
    assert sends(b"".join(parts)) == [(0, 9 * len(parts[0]))]
    assert parity_train(os.urandom(SIZE - HEAD_LEN), SIZE, 1) is None  # one datagram


def test_any_one_lost_datagram_of_a_train_with_parity_is_rebuilt() -> None:
    message = os.urandom(11_000)
    parts = _parity(message)
    for lost in range(len(parts)):
        r, drops, rebuilt = _recovering()
        out = _one_by_one(r, [p for i, p in enumerate(parts) if i != lost])
        assert out == [message] and drops == []
        assert rebuilt == ([] if lost == len(parts) - 1 else [1])  # (the parity: no need)


def test_two_lost_datagrams_give_the_message_up_when_the_next_train_comes() -> None:
    first, second = os.urandom(9_000), os.urandom(9_000)
    a, b = _parity(first, 1), _parity(second, 2)
    r, drops, rebuilt = _recovering()
    assert _one_by_one(r, a[:2] + a[4:]) == [] and drops == []
    assert _one_by_one(r, b) == [second]
    assert drops == ["segments_incomplete"] and rebuilt == []


def test_a_gro_run_of_a_train_with_parity_is_one_message_and_duplicates_are_ignored() -> None:
    message = os.urandom(11_000)
    parts = _parity(message)
    run = b"".join(parts)
    r, drops, rebuilt = _recovering()
    assert r.add(run, len(run), len(parts[0]), PEER) == [message]
    assert r.add(parts[3], len(parts[3]), len(parts[3]), PEER) == []  # a duplicate
    assert drops == [] and rebuilt == []


def test_a_plain_datagram_between_parity_datagrams_passes_and_the_train_completes() -> None:
    message, keepalive = os.urandom(11_000), os.urandom(32)
    parts = _parity(message)
    r, drops, _ = _recovering()
    out = _one_by_one(r, [*parts[:4], keepalive, *parts[4:]])
    assert out == [keepalive, message] and drops == []


def test_a_parity_datagram_whose_header_disagrees_with_its_length_is_malformed() -> None:
    parts = _parity(os.urandom(11_000))
    r, drops, _ = _recovering()
    bad = parts[0][:-1]  # one byte short of the size its header implies
    assert r.add(bad, len(bad), len(bad), PEER) == []
    forged = bytearray(parts[1])
    forged[7] = 200  # count 200 of 11,000 bytes: pieces of 55, not this length
    assert r.add(forged, len(forged), len(forged), PEER) == []
    assert drops == ["segment_malformed"] * 2


def test_the_parity_is_the_same_with_numpy_and_with_python_integers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    buf = os.urandom(9 * 1376)
    pieces = [int.from_bytes(buf[i * 1376:(i + 1) * 1376], "little") for i in range(9)]
    want = 0
    for p in pieces:
        want ^= p
    assert xor._with_ints(buf, 9) == want.to_bytes(1376, "little") == xor.xor_of(buf, 9)
    monkeypatch.setattr(xor, "_impl", xor._with_ints)  # no numpy: the same trains
    message = os.urandom(11_000)
    parts = _parity(message)
    r, drops, rebuilt = _recovering()
    assert _one_by_one(r, parts[:2] + parts[3:]) == [message] and rebuilt == [1] and not drops


def test_a_late_datagram_of_the_train_before_leaves_the_one_being_joined_alone() -> None:
    first, second = os.urandom(9_000), os.urandom(9_000)
    a, b = _parity(first, 1), _parity(second, 2)
    r, drops, _ = _recovering()
    assert _one_by_one(r, a[:3] + a[4:]) == [first]  # (rebuilt)
    assert _one_by_one(r, [*b[:2], a[3], *b[2:]]) == [second]  # a[3] came late
    assert drops == ["segment_late"]
    # a sender that starts again (ids from 1 once more) is not taken for late
    r, drops, _ = _recovering()
    assert _one_by_one(r, _parity(first, 500)) == [first]
    assert _one_by_one(r, _parity(second, 1)) == [second] and drops == []
