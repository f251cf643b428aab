"""Who a relay worker runs as (daemon side): a uid of its own per tunnel (:class:`WorkerIds`,
``[daemon] worker_uid_base`` / ``worker_uid_count``), else ``worker_user`` -> :class:`RunAs`.

:func:`resolve_worker_user` gives a :class:`RunAs` (uid, gid), or None when there is
nothing to switch to (the daemon is not root, or the configured user is root). A user
that does not exist raises :class:`WorkerUserError` (there is no fallback: ``nobody`` is
shared with other services); an explicit ``nobody`` is allowed, with a warning. The worker
switches to it itself before its first packet (:mod:`tund.relay.process.privileges`).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
from dataclasses import dataclass

from tund import logs
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


#: ``[daemon] worker_uid_base`` / ``worker_uid_count`` defaults: uids (and gids of the same
#: number) that no user database names, above the ranges distributions and systemd use
#: (systemd's container range ends at 1879048191, its foreign-userns range starts at
#: 2147352576).
DEFAULT_UID_BASE = 2_100_000_000
DEFAULT_UID_COUNT = 65536


def _mapped(path: str, first: int, count: int) -> bool:
    """Whether ids ``first .. first+count-1`` are mapped in this user namespace
    (``/proc/self/uid_map`` or ``gid_map``); True when the file cannot be read."""
    try:
        lines = open(path).read().split("\n")  # noqa: SIM115 (one small read)
    except OSError:
        return True
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            start, length = int(parts[0]), int(parts[2])
            if start <= first and first + count <= start + length:
                return True
    return False


def _named(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except (KeyError, OverflowError):
            pass
    return False


def group_ids(*groups: str | None) -> frozenset[int]:
    """The gids of ``groups`` (names or numbers; unknown names and None left out)."""
    out = set()
    for g in groups:
        if g is None:
            continue
        if g.isascii() and g.isdigit():
            out.add(int(g))
            continue
        with contextlib.suppress(KeyError):
            out.add(grp.getgrnam(g).gr_gid)
    return frozenset(out)


class WorkerIds:
    """One identity per tunnel: uid = gid = a free number of ``[base, base + count)``.

    A number is free when no live tunnel holds it and neither the user nor the group
    database names it (so no file, service or login shares it), and it is none of
    ``avoid_gids`` (the control and admin groups). A tunnel keeps its number across
    restarts of its worker until :meth:`release`. No supplementary groups: workers call
    ``setgroups([])``. ``count`` 0 (or a daemon that is not root, or a range that this
    user namespace does not map) turns it off: :meth:`for_tunnel` then gives ``fallback``
    (``worker_user``'s identity), logged once.
    """

    def __init__(self, base: int, count: int, fallback: RunAs | None,
                 avoid_gids: frozenset[int] = frozenset(), euid: int | None = None) -> None:
        self.base, self.count, self.fallback = base, count, fallback
        self.avoid = avoid_gids
        self.held: dict[str, RunAs] = {}
        euid = os.geteuid() if euid is None else euid
        self.enabled = count > 0 and euid == 0 and fallback is not None
        if self.enabled and not (_mapped("/proc/self/uid_map", base, count)
                                 and _mapped("/proc/self/gid_map", base, count)):
            log.warning("worker uids %d..%d are not mapped in this user namespace: every "
                        "worker runs as worker_user (%s) instead", base, base + count - 1,
                        fallback)
            self.enabled = False

    def for_tunnel(self, name: str) -> RunAs | None:
        """The identity of tunnel ``name``'s workers; raises OSError when the range is full."""
        if not self.enabled:
            return self.fallback
        held = self.held.get(name)
        if held is not None:
            return held
        taken = {r.uid for r in self.held.values()}
        for uid in range(self.base, self.base + self.count):
            if uid in taken or uid in self.avoid or _named(uid):
                continue
            run_as = RunAs(uid, uid, f"tunnel {name}")
            self.held[name] = run_as
            log.info("tunnel %s: workers run as uid %d, gid %d (no groups)", name, uid, uid,
                     extra=logs.fields(tunnel=name))
            return run_as
        raise OSError(f"no free worker uid in {self.base}..{self.base + self.count - 1} "
                      f"(worker_uid_base, worker_uid_count) for tunnel {name!r}")

    def release(self, name: str) -> None:
        """Tunnel ``name`` is gone: its number may be given to another."""
        self.held.pop(name, None)
