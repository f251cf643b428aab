"""WireGuard's protocol constants (whitepaper section 6), overridable for tests.

Production uses the defaults. ``WorkerSpec.timers`` (test-only) may override any field
by name, e.g. ``{"rekey_after_time": 5}``; an unknown name is a ValueError naming it.

Beyond the whitepaper:

* ``handshake_initiation_rate`` (0.05 s): an initiation consumed sooner than this after
  the previous one is dropped as ``"flood"`` (wireguard-go's HandshakeInitationRate).
* ``under_load_handshakes`` (8) / ``under_load_window`` (1 s): the responder is *under
  load* while more than 8 handshake messages arrived within the last second, and stays
  so for ``under_load_window`` after that (wireguard-go's UnderLoadAfterTime). One peer
  needs at most a few per second (retries are REKEY_TIMEOUT apart), so this only trips
  on floods. Under load a handshake message needs a valid mac2 (a cookie) or it is
  answered with a cookie reply and dropped as ``"cookie"``.
* ``handshake_rate`` (20/s) / ``handshake_burst`` (5): under load, per source address
  (IPv4, or IPv6 /64), cookie replies and handshake messages processed with a valid mac2
  each have a token bucket of this rate and burst (wireguard-go's ratelimiter); beyond
  it a message is dropped silently as ``"handshake_ratelimited"``.
* ``cookie_refresh_time`` (120 s): the cookie secret's lifetime, and a cookie's.
* ``rekey_jitter`` (0.333 s): the retry timers' random extra delay, up to this much.
* ``staged_packets`` (128): packets queued while no session exists; older ones are
  dropped (counted as ``"no_session"``) when more arrive.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timers:
    rekey_after_messages: int = 2**60
    reject_after_messages: int = 2**64 - 2**13 - 1
    rekey_after_time: float = 120.0
    reject_after_time: float = 180.0
    rekey_attempt_time: float = 90.0
    rekey_timeout: float = 5.0
    rekey_jitter: float = 0.333
    keepalive_timeout: float = 10.0
    cookie_refresh_time: float = 120.0
    handshake_initiation_rate: float = 0.05
    under_load_handshakes: int = 8
    under_load_window: float = 1.0
    handshake_rate: float = 20.0
    handshake_burst: int = 5
    staged_packets: int = 128

    @property
    def max_handshake_attempts(self) -> int:
        """Retries before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT (18)."""
        return int(self.rekey_attempt_time / self.rekey_timeout)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> Timers:
        """Defaults with ``overrides`` applied; unknown names or bad values raise ValueError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(f"wireguard timers: unknown names {unknown} "
                             f"(known: {', '.join(sorted(fields))})")
        values: dict[str, Any] = {}
        for name, value in overrides.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"wireguard timers: {name} must be a number >= 0 (got {value!r})")
            default = getattr(cls, name)
            values[name] = int(value) if isinstance(default, int) else float(value)
        return cls(**values)
