"""A prefix table for cryptokey routing: IPv4/IPv6 prefix -> value, longest-prefix match.

Per family, one dict per prefix length present, from the masked network (an int) to the
value; :meth:`PrefixTable.lookup` tries the lengths present, longest first, one dict
lookup each: O(prefix length) in the worst case, one lookup when all prefixes share a
length (1,000 peers of /32 each). Measured against a binary trie in CPython: 0.37 µs a
hit on a /32 among 1,000 (the trie walks 32 nodes: 2.9 µs); see bench/peers_core.py.

Addresses are packed bytes (4 for IPv4, 16 for IPv6), as they sit in a packet header.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

_BITS = {4: 32, 16: 128}


def parse_prefix(text: str) -> tuple[bytes, int]:
    """``"10.8.0.0/24"`` or ``"fd08::2/128"`` (a bare address: a host prefix) as
    (packed network, length); ValueError naming ``text`` if it is not one or has host
    bits set."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"prefix {text!r}: {e}") from None
    return net.network_address.packed, net.prefixlen


@functools.lru_cache(maxsize=4096)
def format_prefix(network: bytes, length: int) -> str:
    """The text form of (packed network, length), e.g. ``"10.8.0.0/24"`` (remembered:
    every status report names each peer's prefixes)."""
    return f"{ipaddress.ip_address(network)}/{length}"


class _Family(Generic[V]):
    """One address family: length -> {network >> (bits - length): value}."""

    __slots__ = ("bits", "by_length", "order")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_length: dict[int, dict[int, V]] = {}
        #: (shift, dict) for each length present, longest first: what lookup walks
        self.order: list[tuple[int, dict[int, V]]] = []

    def reorder(self) -> None:
        self.order[:] = [(self.bits - n, self.by_length[n])
                         for n in sorted(self.by_length, reverse=True)]


class PrefixTable(Generic[V]):
    """prefix -> value for IPv4 and IPv6 with longest-prefix match (module docstring).

    A prefix is (packed network, length); inserting one that is present replaces its
    value. Values must not be None (None means "no match")."""

    __slots__ = ("_families",)

    def __init__(self) -> None:
        self._families: dict[int, _Family[V]] = {4: _Family(32), 16: _Family(128)}

    def _key(self, network: bytes, length: int) -> tuple[_Family[V], int]:
        family = self._families.get(len(network))
        if family is None or not 0 <= length <= family.bits:
            raise ValueError(f"prefix table: bad prefix {network.hex()}/{length} "
                             "(need 4 or 16 bytes and a length within the family's bits)")
        shift = family.bits - length
        value = int.from_bytes(network, "big")
        key = value >> shift
        if key << shift != value:
            raise ValueError(f"prefix table: {format_prefix(network, length)} has host "
                             "bits set")
        return family, key

    def insert(self, network: bytes, length: int, value: V) -> V | None:
        """Map the prefix to ``value``; returns the value it replaced, or None."""
        family, key = self._key(network, length)
        bucket = family.by_length.get(length)
        if bucket is None:
            bucket = family.by_length[length] = {}
            family.reorder()
        old = bucket.get(key)
        bucket[key] = value
        return old

    def remove(self, network: bytes, length: int) -> V | None:
        """Forget the prefix; returns its value, or None when it was not there."""
        family, key = self._key(network, length)
        bucket = family.by_length.get(length)
        if bucket is None:
            return None
        old = bucket.pop(key, None)
        if not bucket:
            del family.by_length[length]
            family.reorder()
        return old

    def lookup_exact(self, network: bytes, length: int) -> V | None:
        """The value of exactly this prefix, or None."""
        family, key = self._key(network, length)
        bucket = family.by_length.get(length)
        return None if bucket is None else bucket.get(key)

    def remove_value(self, value: V) -> int:
        """Forget every prefix mapped to ``value`` (compared by identity or equality);
        returns how many. O(prefixes): for removing a peer, not per packet."""
        gone = 0
        for family in self._families.values():
            for length in list(family.by_length):
                bucket = family.by_length[length]
                for key in [k for k, v in bucket.items() if v is value or v == value]:
                    del bucket[key]
                    gone += 1
                if not bucket:
                    del family.by_length[length]
            family.reorder()
        return gone

    def lookup(self, address: bytes) -> V | None:
        """The value of the longest prefix holding ``address`` (4 or 16 bytes), or None
        (also for any other length)."""
        family = self._families.get(len(address))
        if family is None:
            return None
        x = int.from_bytes(address, "big")
        for shift, bucket in family.order:
            v = bucket.get(x >> shift)
            if v is not None:
                return v
        return None

    def orders(self) -> tuple[list[tuple[int, dict[int, V]]], list[tuple[int, dict[int, V]]]]:
        """The IPv4 and IPv6 lists :meth:`lookup` walks: (shift, {address >> shift:
        value}) per length present, longest first. They are the table's own and change
        in place, so a per-packet caller may hold them and inline the lookup."""
        return self._families[4].order, self._families[16].order

    def items(self) -> Iterator[tuple[bytes, int, V]]:
        """Every (packed network, length, value), IPv4 first, longest first."""
        for size, family in self._families.items():
            for shift, bucket in family.order:
                length = family.bits - shift
                for key, v in bucket.items():
                    yield (key << shift).to_bytes(size, "big"), length, v

    def __len__(self) -> int:
        return sum(len(b) for f in self._families.values() for b in f.by_length.values())
