"""The cryptokey-routing prefix table (issue 17.1): longest match equals a brute-force
reference for random prefixes and addresses, IPv4 and IPv6, including removal."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tund.relay.wireguard.prefixes import PrefixTable, format_prefix, parse_prefix


def masked(size: int, raw: int, length: int) -> bytes:
    bits = size * 8
    value = raw & (((1 << length) - 1) << (bits - length)) if length else 0
    return value.to_bytes(size, "big")


def reference(prefixes: dict[tuple[bytes, int], int], address: bytes) -> int | None:
    """The brute force: every prefix of the address's family that holds it, longest."""
    best: tuple[int, int] | None = None
    bits = len(address) * 8
    a = int.from_bytes(address, "big")
    for (net, length), value in prefixes.items():
        if len(net) != len(address):
            continue
        if a >> (bits - length) == int.from_bytes(net, "big") >> (bits - length) and (
                best is None or length > best[0]):
            best = (length, value)
    return None if best is None else best[1]


def prefix_strategy(size: int) -> st.SearchStrategy[tuple[bytes, int]]:
    bits = size * 8
    # few distinct high bits so that prefixes nest and addresses hit them
    raw = st.integers(0, 7).map(lambda h: h << (bits - 3)) | st.integers(0, 2**bits - 1)
    return st.tuples(raw, st.integers(0, bits)).map(lambda t: (masked(size, *t), t[1]))


prefixes_any = prefix_strategy(4) | prefix_strategy(16)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(prefixes_any, st.integers(0, 50)), max_size=40),
       st.lists(st.integers(0, 39), max_size=15),
       st.lists(prefixes_any, max_size=30))
def test_longest_match_equals_brute_force(inserts: list[tuple[tuple[bytes, int], int]],
                                          removals: list[int],
                                          probes: list[tuple[bytes, int]]) -> None:
    table: PrefixTable[int] = PrefixTable()
    ref: dict[tuple[bytes, int], int] = {}
    for (net, length), value in inserts:
        table.insert(net, length, value)
        ref[(net, length)] = value
    keys = [p for p, _ in inserts]
    for i in removals:
        if i < len(keys):
            net, length = keys[i]
            assert table.remove(net, length) == ref.pop((net, length), None)
    assert len(table) == len(ref)
    assert {(n, ln): v for n, ln, v in table.items()} == ref
    for (net, length), value in ref.items():
        assert table.lookup_exact(net, length) == value
    # probe addresses inside and around every prefix, and random ones
    addresses = [net for (net, _), _ in inserts] + [net for net, _ in probes]
    addresses += [bytes(b ^ 0xFF for b in a) for a in addresses]
    addresses += [(int.from_bytes(a, "big") | 1).to_bytes(len(a), "big") for a in addresses]
    for a in addresses:
        assert table.lookup(a) == reference(ref, a), a.hex()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(prefixes_any, st.integers(0, 3)), max_size=30), st.integers(0, 3))
def test_remove_value(inserts: list[tuple[tuple[bytes, int], int]], gone: int) -> None:
    table: PrefixTable[int] = PrefixTable()
    ref: dict[tuple[bytes, int], int] = {}
    for (net, length), value in inserts:
        table.insert(net, length, value)
        ref[(net, length)] = value
    n = table.remove_value(gone)
    assert n == sum(1 for v in ref.values() if v == gone)
    ref = {k: v for k, v in ref.items() if v != gone}
    for (net, _length), _ in inserts:
        assert table.lookup(net) == reference(ref, net)


def test_families_are_separate_and_default_routes() -> None:
    table: PrefixTable[str] = PrefixTable()
    table.insert(*parse_prefix("0.0.0.0/0"), "v4-default")
    table.insert(*parse_prefix("10.8.0.2/32"), "alice")
    table.insert(*parse_prefix("fd08::/64"), "net6")
    assert table.lookup(bytes([10, 8, 0, 2])) == "alice"
    assert table.lookup(bytes([10, 8, 0, 3])) == "v4-default"
    assert table.lookup(bytes(16)) is None  # ::, no IPv6 default
    assert table.lookup(bytes.fromhex("fd080000000000000000000000000001")) == "net6"
    assert table.lookup(b"\x01\x02") is None  # neither family
    assert table.insert(*parse_prefix("10.8.0.2/32"), "bob") == "alice"
    assert table.remove(*parse_prefix("10.8.0.2/32")) == "bob"
    assert table.remove(*parse_prefix("10.8.0.2/32")) is None
    assert format_prefix(*parse_prefix("fd08::/64")) == "fd08::/64"


def test_bad_prefixes_are_located() -> None:
    table: PrefixTable[str] = PrefixTable()
    with pytest.raises(ValueError, match=re.escape("10.8.0.1/24 has host bits set")):
        table.insert(bytes([10, 8, 0, 1]), 24, "x")
    with pytest.raises(ValueError, match="bad prefix"):
        table.insert(bytes(4), 33, "x")
    with pytest.raises(ValueError, match=re.escape("'10.8.0.1/24'")):
        parse_prefix("10.8.0.1/24")
