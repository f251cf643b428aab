"""Tunnel states and the transitions the supervisor may make. Imports nothing from tund.

::

    STARTING --worker reports--> CONNECTING <--> UP
       ^                              |          |
       |         (worker exits / hangs)          |
    BACKOFF <-----------------------------------+
       |  too many crashes within the window
       v
    FAILED  (until reload or `tundctl restart`)

    any --stop--> STOPPED
"""

from __future__ import annotations

from enum import StrEnum


class TunnelState(StrEnum):
    STARTING = "starting"      # worker process spawned, not yet reporting
    CONNECTING = "connecting"  # worker running, no peer yet
    UP = "up"                  # worker has a peer (TCP connected / UDP peer heard)
    BACKOFF = "backoff"        # worker died; restart scheduled
    FAILED = "failed"          # crash loop or unrecoverable error; not restarted
    STOPPED = "stopped"        # stopped on purpose (down, reload removal, shutdown)


ALLOWED: dict[TunnelState, frozenset[TunnelState]] = {
    TunnelState.STARTING: frozenset({TunnelState.CONNECTING, TunnelState.UP,
                                     TunnelState.BACKOFF, TunnelState.FAILED,
                                     TunnelState.STOPPED}),
    TunnelState.CONNECTING: frozenset({TunnelState.UP, TunnelState.BACKOFF,
                                       TunnelState.FAILED, TunnelState.STOPPED}),
    TunnelState.UP: frozenset({TunnelState.CONNECTING, TunnelState.BACKOFF,
                               TunnelState.FAILED, TunnelState.STOPPED}),
    TunnelState.BACKOFF: frozenset({TunnelState.STARTING, TunnelState.FAILED,
                                    TunnelState.STOPPED}),
    TunnelState.FAILED: frozenset({TunnelState.STARTING, TunnelState.STOPPED}),
    TunnelState.STOPPED: frozenset({TunnelState.STARTING}),
}


def can_move(old: TunnelState, new: TunnelState) -> bool:
    """True when the supervisor may move a tunnel from ``old`` to ``new``."""
    return old == new or new in ALLOWED[old]
