"""Per-source token buckets for handshake work under load (after wireguard-go's ratelimiter).

Each source address (an IPv4 address, or an IPv6 /64: one host usually holds a whole
/64) has a bucket of ``burst`` tokens refilled at ``rate`` per second; :meth:`allow`
takes one token or says no. The table is bounded: at ``max_entries`` the buckets that
are full again (idle for ``burst / rate`` s) are forgotten, at most once per second;
a new source that still finds no room is refused (so a spray of spoofed addresses costs
memory only up to the bound). Sans-IO: ``now`` is passed in.
"""

from __future__ import annotations

import ipaddress


def source_key(host: str) -> str:
    """The bucket a source address belongs to: the IPv4 address, or its IPv6 /64."""
    if ":" not in host:
        return host
    try:
        packed = ipaddress.IPv6Address(host.split("%", 1)[0]).packed
    except ValueError:
        return host
    return packed[:8].hex()


class RateLimiter:
    """Token buckets by source key; see the module docstring.

    ``rate`` tokens per second, at most ``burst`` held; ``rate`` > 0, ``burst`` >= 1."""

    def __init__(self, rate: float = 20.0, burst: int = 5, max_entries: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_entries < 1:
            raise ValueError(f"ratelimit: rate must be > 0, burst and max_entries >= 1 "
                             f"(got rate={rate!r}, burst={burst!r}, "
                             f"max_entries={max_entries!r})")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_entries = max_entries
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill]
        self._last_gc = float("-inf")

    def allow(self, key: str, now: float) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty (or no room)."""
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_entries and not self._collect(now):
                return False
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = b[0] + (now - b[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            return False
        b[0] = tokens - 1.0
        return True

    def has_token(self, key: str, now: float) -> bool:
        """Whether :meth:`allow` would say yes now (nothing is taken or stored)."""
        b = self._buckets.get(key)
        if b is None:
            return len(self._buckets) < self.max_entries or now - self._last_gc >= 1.0
        return b[0] + (now - b[1]) * self.rate >= 1.0

    def _collect(self, now: float) -> bool:
        """Forget buckets full again; True when there is room for one more."""
        if now - self._last_gc >= 1.0:
            self._last_gc = now
            idle = self.burst / self.rate
            for key in [k for k, (_, t) in self._buckets.items() if now - t >= idle]:
                del self._buckets[key]
        return len(self._buckets) < self.max_entries

    def __len__(self) -> int:
        return len(self._buckets)
