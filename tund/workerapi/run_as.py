"""Who a relay worker runs as: ``[daemon] worker_user`` -> :class:`RunAs` (daemon side).

:func:`resolve_worker_user` gives a :class:`RunAs` (uid, gid), or None when there is
nothing to switch to (the daemon is not root, or the configured user is root). A user
that does not exist falls back to ``nobody``, with a warning. The worker switches to it
itself before its first packet (:mod:`tund.relay.process.privileges`).
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass

log = logging.getLogger("tund.workerapi.run_as")

FALLBACK_USER = "nobody"


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
    falls back to :data:`FALLBACK_USER` with a warning; if that is missing too, to
    65534:65534 (the kernel's overflow ids).
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        log.info("daemon runs as uid %d, not root: workers run as uid %d too", euid, euid)
        return None
    entry = _lookup(user)
    if entry is None:
        log.warning("worker_user %r does not exist on this system; workers run as %r "
                    "instead (create the user, e.g. with the Debian package, to silence this)",
                    user, FALLBACK_USER)
        entry = _lookup(FALLBACK_USER)
        if entry is None:
            log.warning("user %r does not exist either; workers run as 65534:65534",
                        FALLBACK_USER)
            return RunAs(65534, 65534, "65534")
    if entry.pw_uid == 0:
        log.warning("worker_user %r is root: workers keep root and its capabilities "
                    "(not advised)", user)
        return None
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)
