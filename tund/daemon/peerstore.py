"""The last authenticated peer endpoint of each listening tunnel, kept across restarts.

Contract: a :class:`PeerStore` maps tunnel name -> ``"ADDR:PORT"`` (``"[V6]:PORT"``), the
peer a UDP listener's worker last heard from (with WireGuard: authenticated traffic only).
A replacement worker gets it in its spec and contacts the peer at once instead of waiting
for the peer's rekey (issue 15.8). It lives in memory and, when a path is given, in a JSON
file beside the control socket (``/run/tund/peers.json``; the unit keeps the runtime
directory across ``systemctl restart``), so a daemon restart recovers as fast.

The file is only a hint: :func:`load` opens it without following links, ignores a file not
owned by this uid, and keeps only entries that are well-formed addresses; :meth:`save`
replaces it atomically (mode 0600). Errors are logged, never raised. Inside a running event
loop a change is written at once unless a write happened within :data:`SAVE_GAP`; then one
write follows at the end of the gap with everything changed meanwhile (256 tunnels coming
up rewrote the file 256 times: a third of the daemon's start-up time); :meth:`flush` writes
what waits (the daemon's stop).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from pathlib import Path

from tund.daemon import statefile

log = logging.getLogger("tund.daemon.peerstore")

MAX_FILE = 1 << 20  # a peers file larger than this is not ours
SAVE_GAP = 0.5  # s: in a running loop, the file is rewritten at most this often


def valid_endpoint(text: object) -> bool:
    """``"IPv4:PORT"`` or ``"[IPv6]:PORT"`` with a literal address and a port 1..65535."""
    if not isinstance(text, str) or ":" not in text:
        return False
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        want = 6
    else:
        want = 4
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.version == want and port.isdigit() and 0 < int(port) < 65536


def load(path: Path) -> dict[str, str]:
    """The entries of ``path`` that are well-formed; {} when absent, foreign or corrupt."""
    data = statefile.read_json(path, "peer endpoints", MAX_FILE)
    if data is None:
        return {}
    if not isinstance(data, dict):
        log.warning("peer endpoints: %s is not a JSON object of endpoints; ignored", path)
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and valid_endpoint(v)}


class PeerStore:
    """Tunnel name -> last peer endpoint; written through to ``path`` when it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._peers: dict[str, str] = load(path) if path is not None else {}
        self._saved_at = float("-inf")  # time.monotonic() of the latest write
        self._pending: asyncio.TimerHandle | None = None  # the write that waits, if any

    def get(self, tunnel: str) -> str | None:
        return self._peers.get(tunnel)

    def remember(self, tunnel: str, endpoint: str | None) -> None:
        """Remember ``endpoint`` (None or malformed: forget the tunnel's entry)."""
        if endpoint is not None and not valid_endpoint(endpoint):
            endpoint = None
        if self._peers.get(tunnel) == endpoint:
            return
        if endpoint is None:
            self._peers.pop(tunnel, None)
        else:
            self._peers[tunnel] = endpoint
        self._changed()

    def keep_only(self, tunnels: set[str]) -> None:
        """Forget the tunnels that are no longer configured."""
        gone = set(self._peers) - tunnels
        for name in gone:
            del self._peers[name]
        if gone:
            self._changed()

    def _changed(self) -> None:
        """Write now, or (a write within SAVE_GAP, in a running loop) once the gap ends."""
        if self.path is None or self._pending is not None:
            return  # nothing to write to, or the write that waits will take this too
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        wait = self._saved_at + SAVE_GAP - time.monotonic()
        if wait <= 0:
            self.save()
        else:
            self._pending = loop.call_later(wait, self.save)

    def flush(self) -> None:
        """Write what waits for the end of a gap now (nothing if nothing waits)."""
        if self._pending is not None:
            self.save()

    def save(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.path is None:
            return
        self._saved_at = time.monotonic()
        statefile.write_json(self.path, self._peers, "peer endpoints")
