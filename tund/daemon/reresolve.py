"""Re-resolving peers' endpoint names (issue 18.6), what wireguard-tools'
``reresolve-dns.sh`` does from cron, inside the daemon.

Contract: every :data:`CHECK_EVERY` seconds, for each running tunnel with ``peers``, an
enabled peer whose configured ``endpoint`` is a host name (not an address) and which has
had no handshake for :data:`STALE_AFTER` seconds (or none since its worker has run that
long) is looked up again, at most once per ``STALE_AFTER`` per peer. The lookup runs in
the event loop's executor (``loop.getaddrinfo``), so neither the daemon's loop nor any
worker's packet loop waits for DNS. When the address differs from the one the worker
uses, the worker is told its peers again (one ``Peers`` message) with that peer's endpoint
as the new literal address; sessions and the other peers stay. A reload or a new worker
resolves the names afresh (and forgets these overrides).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tund.config import Config

log = logging.getLogger("tund.daemon.reresolve")

STALE_AFTER = 120.0
CHECK_EVERY = 15.0
#: test-only overrides of the two (``tund --test-timers``), the daemon's own: never
#: passed to workers
TEST_TIMERS = {"reresolve_stale": STALE_AFTER, "reresolve_every": CHECK_EVERY}

Lookup = Callable[[str, int], Awaitable[str | None]]  # host, port -> "ADDR:PORT" or None


def host_name(endpoint: str | None) -> tuple[str, int] | None:
    """``(host, port)`` when ``endpoint`` names a host, None for an address or none."""
    if endpoint is None or endpoint.startswith("["):
        return None
    host, _, port = endpoint.rpartition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return (host, int(port)) if port.isdigit() else None
    return None


async def lookup(host: str, port: int) -> str | None:
    """``host`` looked up in the loop's executor: ``"ADDR:PORT"`` of the first answer."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_DGRAM)
    except OSError as e:
        log.warning("peer endpoint %s:%d does not resolve (%s)", host, port, e)
        return None
    addr = infos[0][4]
    ip, got_port = str(addr[0]), int(addr[1])
    return f"[{ip}]:{got_port}" if ":" in ip else f"{ip}:{got_port}"


class Reresolver:
    """Remembers when each peer was last looked up and what it resolved to."""

    def __init__(self, look: Lookup = lookup, clock: Callable[[], float] = time.time,
                 stale_after: float = STALE_AFTER, every: float = CHECK_EVERY) -> None:
        self._lookup = look
        self._clock = clock
        self.stale_after = stale_after
        self.every = every
        self._tried: dict[tuple[str, str], float] = {}
        self.overrides: dict[str, dict[str, str]] = {}  # tunnel -> peer -> "ADDR:PORT"

    def forget(self, tunnel: str) -> None:
        """A reload or a new worker resolves names itself: drop ``tunnel``'s overrides."""
        self.overrides.pop(tunnel, None)

    def due(self, cfg: Config, tunnel: str, live: Mapping[str, Any],
            worker_since: float) -> list[tuple[str, str, int]]:
        """``(peer, host, port)`` of the peers of ``tunnel`` to look up now."""
        now = self._clock()
        t = cfg.tunnels.get(tunnel)
        out = []
        for name, p in (t.enabled_peers if t is not None else {}).items():
            hp = host_name(p.endpoint)
            if hp is None:
                continue
            seen = live.get(name) if isinstance(live.get(name), Mapping) else None
            hs = seen.get("latest_handshake") if seen else None
            since = hs if isinstance(hs, int | float) and hs > 0 else worker_since
            if now - since < self.stale_after:
                continue
            if now - self._tried.get((tunnel, name), 0.0) < self.stale_after:
                continue
            self._tried[(tunnel, name)] = now
            out.append((name, *hp))
        return out

    async def check(self, cfg: Config, tunnel: str, live: Mapping[str, Any],
                    worker_since: float) -> bool:
        """Look up the due peers of ``tunnel``; True when an address changed (the caller
        then sends the worker its peers with :attr:`overrides` applied)."""
        changed = False
        for name, host, port in self.due(cfg, tunnel, live, worker_since):
            found = await self._lookup(host, port)
            seen = live.get(name) if isinstance(live.get(name), Mapping) else None
            current = seen.get("endpoint") if seen else None
            if found is None or found == current:
                continue
            log.info("tunnel %s: peer %s: no handshake for %.0fs; %s:%d now resolves to %s "
                     "(was %s)", tunnel, name, self.stale_after, host, port, found, current)
            self.overrides.setdefault(tunnel, {})[name] = found
            changed = True
        return changed


def apply_overrides(entries: list[dict[str, Any]], overrides: Mapping[str, str]
                    ) -> list[dict[str, Any]]:
    """The worker's peer entries with re-resolved endpoints put in."""
    return [{**e, "endpoint": overrides.get(e["name"], e["endpoint"])} for e in entries]
