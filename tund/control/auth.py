"""Who may run which control command: rights from the peer's uid and groups.

Two rights (the second column of :data:`tund.daemon.commands.COMMANDS`):

* ``read``  (``status``): root, the daemon's own user, members of ``control_group`` and
  members of ``admin_group``;
* ``admin`` (``reload``, ``up``, ``down``, ``restart``): root, the daemon's own user and
  members of ``admin_group`` (when one is configured).

Membership is decided from the peer's uid as read with ``SO_PEERCRED``: its primary gid
(from the credentials) and every group the user database lists for that user
(``os.getgrouplist``). Groups are looked up on every request, so adding someone to a group
takes effect without a restart. A group that no longer exists grants nothing.

:func:`authorize` raises :class:`Denied` (code ``denied``) with a message naming the
missing right and who has it, e.g. ``reload needs admin rights: root or a member of group
'tundadm'``. The caller logs refusals (uid and pid); this module does no I/O but lookups
in the user database.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from typing import Literal

from tund.errors import ErrorCode, TundError

Right = Literal["read", "admin"]
RIGHTS: tuple[Right, ...] = ("read", "admin")


class Denied(TundError):
    """The peer lacks the right a command needs."""

    code = ErrorCode.DENIED


@dataclass(frozen=True)
class Policy:
    """Group names (or numeric gids, as strings) that grant rights; None: not configured."""

    control_group: str | None = None
    admin_group: str | None = None
    daemon_uid: int = 0

    @classmethod
    def current(cls, control_group: str | None, admin_group: str | None) -> Policy:
        """The policy for a daemon running as the current effective user."""
        return cls(control_group, admin_group, os.geteuid())


def group_id(group: str) -> int | None:
    """The gid of ``group`` (a name or digits), or None when there is no such group."""
    if group.isascii() and group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):  # ValueError: embedded NUL
        return None


def groups_of(uid: int, gid: int) -> frozenset[int]:
    """Every gid ``uid`` belongs to: ``gid`` plus the user database's list for that user.

    A uid with no passwd entry belongs to ``gid`` only.
    """
    try:
        name = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return frozenset({gid})
    try:
        return frozenset({gid, *os.getgrouplist(name, gid)})
    except OSError:
        return frozenset({gid})


def _superuser(uid: int, policy: Policy) -> bool:
    return uid == 0 or uid == policy.daemon_uid


def _member(group: str | None, groups: frozenset[int]) -> bool:
    if group is None:
        return False
    gid = group_id(group)
    return gid is not None and gid in groups


def has_right(right: Right, uid: int, gid: int, policy: Policy) -> bool:
    """True if the peer ``uid``/``gid`` holds ``right`` under ``policy``."""
    if _superuser(uid, policy):
        return True
    groups = groups_of(uid, gid)
    if _member(policy.admin_group, groups):
        return True
    return right == "read" and _member(policy.control_group, groups)


def who_has(right: Right, policy: Policy) -> str:
    """A phrase naming who holds ``right``: ``root or a member of group 'tundadm'``."""
    groups = [policy.admin_group] if right == "admin" else [policy.control_group,
                                                              policy.admin_group]
    names = [repr(g) for g in dict.fromkeys(groups) if g is not None]
    if not names:
        return "root only (no [daemon] admin_group is set)" if right == "admin" else (
            "root only (no [daemon] control_group or admin_group is set)")
    return "root or a member of group " + " or ".join(names)


def authorize(cmd: str, right: Right, uid: int, gid: int, policy: Policy) -> None:
    """Raise :class:`Denied` unless the peer ``uid``/``gid`` may run ``cmd`` needing ``right``."""
    if not has_right(right, uid, gid, policy):
        raise Denied(f"{cmd} needs {right} rights: {who_has(right, policy)}")
