"""Who a relay worker runs as: ``[daemon] worker_user`` -> :class:`RunAs` (daemon side).

:func:`resolve_worker_user` gives a :class:`RunAs` (uid, gid), or None when there is
nothing to switch to (the daemon is not root, or the configured user is root). A user
that does not exist raises :class:`WorkerUserError` (there is no fallback: ``nobody`` is
shared with other services); an explicit ``nobody`` is allowed, with a warning. The worker
switches to it itself before its first packet (:mod:`tund.relay.process.privileges`).
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass

from tund.errors import ErrorCode, TundError

log = logging.getLogger("tund.workerapi.run_as")

#: Shared with other services: allowed when configured explicitly, never a fallback.
SHARED_USER = "nobody"
#: How to create the default worker user (in every "does not exist" message).
USERADD_HINT = "useradd --system --no-create-home --shell /usr/sbin/nologin tund"


class WorkerUserError(TundError):
    """``worker_user`` names no user on this system (the message says how to create one)."""

    code = ErrorCode.INVALID_CONFIG


@dataclass(frozen=True)
class RunAs:
    """The identity a worker switches to: ``uid``, primary ``gid``, and no other group."""

    uid: int
    gid: int
    name: str = ""

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"

    @classmethod
    def parse(cls, text: str) -> RunAs:
        """``"UID:GID"`` (as put on the worker's command line); raises ValueError."""
        uid_s, sep, gid_s = text.partition(":")
        if not sep or not (uid_s.isdigit() and gid_s.isdigit()):
            raise ValueError(f"--run-as must be UID:GID (got {text!r})")
        return cls(int(uid_s), int(gid_s))


def _lookup(user: str) -> pwd.struct_passwd | None:
    try:
        if user.isascii() and user.isdigit():
            return pwd.getpwuid(int(user))
        return pwd.getpwnam(user)
    except (KeyError, ValueError, OverflowError):
        return None


def resolve_worker_user(user: str, euid: int | None = None) -> RunAs | None:
    """Who workers run as for ``[daemon] worker_user = user`` under a daemon of ``euid``.

    None when workers keep the daemon's identity: the daemon is not root (it cannot switch),
    or ``user`` is root (logged as a warning). A ``user`` unknown to the user database
    raises WorkerUserError (no fallback); :data:`SHARED_USER` is allowed with a warning.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        log.info("daemon runs as uid %d, not root: workers run as uid %d too", euid, euid)
        return None
    entry = _lookup(user)
    if entry is None:
        raise WorkerUserError(
            f"user {user!r} does not exist on this system; workers "
            f"never fall back to {SHARED_USER!r} (shared with other services). Create it: "
            f"`{USERADD_HINT}`" + ("" if user == "tund" else f" (with {user!r} for 'tund')")
            + ", or set worker_user to an existing user")
    if entry.pw_name == SHARED_USER or entry.pw_uid == 65534:
        log.warning("worker_user %r: workers share uid %d with other services that run as "
                    "%r; a dedicated user is advised (`%s`)", user, entry.pw_uid,
                    entry.pw_name, USERADD_HINT)
    if entry.pw_uid == 0:
        log.warning("worker_user %r is root: workers keep root and its capabilities "
                    "(not advised)", user)
        return None
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)
