"""Tunnel states, the transitions the supervisor may make, and the rule for what a live
worker reports (:func:`link_state`). Imports nothing from tund.

::

    STARTING --worker reports--> CONNECTING / HANDSHAKING / UNVERIFIED / FAILING / UP
       ^                          (any of these to any other, as the worker sees it)
       |         (worker exits / hangs)          |
    BACKOFF <-----------------------------------+
       |  too many crashes within the window
       v
    FAILED  (until reload or `tundctl restart`)

    any --stop--> STOPPED

``UP`` means packets pass: with WireGuard a session from a handshake completed within
:data:`SESSION_FRESH` seconds; plaintext UDP once a message came back from the peer;
plaintext TCP once connected.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TunnelState(StrEnum):
    STARTING = "starting"        # worker process spawned, not yet reporting
    CONNECTING = "connecting"    # worker running, no path to a peer (TCP not connected,
    #                              UDP listener without a peer, endpoint unresolvable)
    HANDSHAKING = "handshaking"  # WireGuard: a path, no session yet (or it expired)
    UNVERIFIED = "unverified"    # plaintext UDP: sending, nothing has come back yet
    FAILING = "failing"          # WireGuard: handshakes fail; last_error says why
    UP = "up"                    # packets pass (see the module docstring)
    BACKOFF = "backoff"          # worker died; restart scheduled
    FAILED = "failed"            # crash loop or unrecoverable error; not restarted
    STOPPED = "stopped"          # stopped on purpose (down, reload removal, shutdown)


#: The states a live worker reports (``state`` messages), see :func:`link_state`.
LIVE: frozenset[TunnelState] = frozenset({
    TunnelState.CONNECTING, TunnelState.HANDSHAKING, TunnelState.UNVERIFIED,
    TunnelState.FAILING, TunnelState.UP})

_ENDS = frozenset({TunnelState.BACKOFF, TunnelState.FAILED, TunnelState.STOPPED})

ALLOWED: dict[TunnelState, frozenset[TunnelState]] = {
    TunnelState.STARTING: LIVE | _ENDS,
    **{s: LIVE - {s} | _ENDS for s in LIVE},
    TunnelState.BACKOFF: frozenset({TunnelState.STARTING, TunnelState.FAILED,
                                    TunnelState.STOPPED}),
    TunnelState.FAILED: frozenset({TunnelState.STARTING, TunnelState.STOPPED}),
    TunnelState.STOPPED: frozenset({TunnelState.STARTING}),
}


def can_move(old: TunnelState, new: TunnelState) -> bool:
    """True when the supervisor may move a tunnel from ``old`` to ``new``."""
    return old == new or new in ALLOWED[old]


# --------------------------------------------------------------------------- the rule

SESSION_FRESH = 180.0  # s: WireGuard's REJECT_AFTER_TIME; an older session carries nothing
FAIL_AFTER = 3  # unanswered handshake initiations before FAILING


@dataclass(frozen=True, slots=True)
class Handshakes:
    """What a WireGuard codec knows (all times ``time.monotonic()``-like seconds).

    ``session``: when the session in use was made by a completed handshake (None: no
    session); ``unanswered``: initiations whose reply did not come within the retry time,
    since the latest completed handshake; ``refused``: why the latest handshake message
    from the network was refused since then (None: none was)."""

    session: float | None = None
    unanswered: int = 0
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """What a worker knows about its path: ``kind`` ``"udp"``/``"tcp"``; ``path``: the
    transport has somewhere to send (TCP connected, UDP peer known); ``heard``: a
    message came from the peer on this path (plaintext); ``handshakes``: None without
    encryption; ``endpoint``: the peer's address as text, for messages; ``problem``:
    why the transport has no path (resolution, connect errors), if it said."""

    kind: str
    path: bool
    heard: bool = False
    handshakes: Handshakes | None = None
    endpoint: str | None = None
    problem: str | None = None


def link_state(link: Link, now: float) -> tuple[TunnelState, str | None]:
    """The state a live worker reports, and the error that explains a state short of UP
    (None when there is nothing to explain). Pure.

    WireGuard: UP while the session is younger than SESSION_FRESH; else FAILING when a
    handshake was refused or FAIL_AFTER initiations went unanswered; else CONNECTING
    without a path, HANDSHAKING with one. Plaintext: CONNECTING without a path; TCP UP
    with one; UDP UP once the peer was heard, UNVERIFIED before. Many peers
    (``udp-peers``): UP while listening; each peer's own state is in its status.
    """
    hs = link.handshakes
    if hs is not None:
        if hs.session is not None and now - hs.session < SESSION_FRESH:
            return TunnelState.UP, None
        if hs.refused is not None:
            return TunnelState.FAILING, hs.refused
        if not link.path:
            return TunnelState.CONNECTING, link.problem
        if hs.unanswered >= FAIL_AFTER:
            return TunnelState.FAILING, (f"no reply from {link.endpoint or 'the peer'} to "
                                         f"{hs.unanswered} handshake initiations")
        return TunnelState.HANDSHAKING, None
    if not link.path:
        return TunnelState.CONNECTING, link.problem
    if link.kind in ("tcp", "udp-peers") or link.heard:  # with peers: up while it listens
        return TunnelState.UP, None
    return TunnelState.UNVERIFIED, None
