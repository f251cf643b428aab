"""Per-peer lifetime traffic, kept across worker and daemon restarts (issue 18.5).

Contract: a :class:`CounterStore` maps tunnel -> peer -> totals of :data:`FIELDS` (ints
>= 0) of every worker that has ended: what a tunnel's runner adds its live worker's
counters to for ``lifetime`` in status. It lives in memory and in ``counters.json`` in the
state directory (``$STATE_DIRECTORY``, ``/var/lib/tund`` under the unit's
``StateDirectory=tund``), written atomically (mode 0600) at most every
:data:`SAVE_EVERY` seconds unless forced (a worker ended, the daemon stops).

The file is trusted for numbers only: :func:`load` opens it without following links,
ignores a file not owned by this uid, and keeps only well-formed entries; a missing or
corrupt file is a warning and an empty store, never a failed start.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tund.daemon import statefile

log = logging.getLogger("tund.daemon.counterstore")

FIELDS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
MAX_FILE = 16 << 20
SAVE_EVERY = 10.0

Totals = dict[str, dict[str, int]]  # peer -> field -> count


def _totals(obj: Any) -> Totals:
    out: Totals = {}
    if not isinstance(obj, dict):
        return out
    for peer, counts in obj.items():
        if isinstance(peer, str) and isinstance(counts, dict):
            out[peer] = {f: v for f in FIELDS if isinstance(v := counts.get(f, 0), int)
                         and not isinstance(v, bool) and 0 <= v < 1 << 63}
    return out


def load(path: Path) -> dict[str, Totals]:
    """The well-formed entries of ``path``; {} (with a warning) when missing or corrupt."""
    data = statefile.read_json(path, "peer counters", MAX_FILE,
                               missing="lifetime counters start from zero")
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("tunnels"), dict):
        log.warning("peer counters: %s is corrupt (not the JSON tund writes); starting "
                    "from zero", path)
        return {}
    return {t: _totals(v) for t, v in data["tunnels"].items() if isinstance(t, str)}


class CounterStore:
    """Tunnel -> peer -> lifetime totals of ended workers; saved to ``path`` if given."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Totals] = load(path) if path is not None else {}
        self._saved_at = 0.0

    def base(self, tunnel: str) -> Totals:
        """The (mutable) totals of ``tunnel``: the runner folds ended workers into it."""
        return self._data.setdefault(tunnel, {})

    def keep_only(self, tunnels: set[str]) -> None:
        for name in set(self._data) - tunnels:
            del self._data[name]

    def save(self, lifetimes: Mapping[str, Totals], force: bool = False) -> None:
        """Write ``lifetimes`` (tunnel -> peer -> totals, the live workers' counts
        included) with the ended totals of tunnels not in it; throttled unless ``force``."""
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY:
            return
        self._saved_at = now
        data = {t: dict(v) for t, v in self._data.items()}
        data.update(lifetimes)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            log.warning("peer counters: cannot create %s: %s", self.path.parent, e)
            return
        statefile.write_json(self.path, {"version": 1, "tunnels": data}, "peer counters")


def state_dir(socket_path: str, default_socket: str) -> Path:
    """Where state outlives reboots: ``$STATE_DIRECTORY`` (set by systemd), else
    /var/lib/tund for the default control socket, else the control socket's directory
    (a daemon run by hand or by tests keeps its state beside its socket)."""
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if env:
        return Path(env)
    if socket_path == default_socket:
        return Path("/var/lib/tund")
    return Path(socket_path).parent
