"""Who gets a control connection slot (issue 15.10: root is never locked out).

Pure bookkeeping, keyed by any hashable connection id, with the peer's uid from
``SO_PEERCRED``:

* **reserved** uids (root and the daemon's own uid; the caller may add others, e.g. the
  members of ``admin_group``) have a pool of their own,
  ``reserve`` slots (default: as many as ``max_clients``), that nobody else can fill;
* every other uid shares ``max_clients`` slots, and one uid holds at most ``per_uid`` of
  them (so one user's flood cannot fill the pool for the others);
* when a newcomer finds its limit reached (its uid's share, the shared pool, or the
  reserve), the **oldest idle** connection in that limit is evicted to make room: idle
  means not handling a request right now (waiting for a line, or trickling one). Only if
  every connection in the limit is busy is the newcomer refused.

So a flood of idle or trickling connections from one uid only ever replaces that uid's
own connections; root's request always gets a slot within one eviction.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from dataclasses import dataclass


def default_per_uid(max_clients: int) -> int:
    """One uid's share of the shared slots: a quarter of them, at least 1."""
    return max(1, max_clients // 4)


@dataclass
class _Slot:
    uid: int
    reserved: bool
    order: int
    idle: bool = True


@dataclass(frozen=True)
class Admission:
    """The outcome of :meth:`Slots.admit`: ``admitted``, and who was evicted for it."""

    admitted: bool
    evicted: Hashable | None = None
    limit: str = ""  # which limit was reached: "uid", "shared", "reserve" (or "")


class Slots:
    """Connection slots per the module docstring."""

    def __init__(self, max_clients: int, *, per_uid: int | None = None,
                 reserve: int | None = None, reserved_uids: Collection[int] = (0,)) -> None:
        self.max_clients = max_clients
        self.per_uid = min(max_clients, per_uid or default_per_uid(max_clients))
        self.reserve = max_clients if reserve is None else reserve
        self.reserved_uids = frozenset(reserved_uids)
        self._slots: dict[Hashable, _Slot] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._slots)

    def count(self, *, uid: int | None = None, reserved: bool | None = None) -> int:
        return sum(1 for s in self._slots.values()
                   if (uid is None or s.uid == uid)
                   and (reserved is None or s.reserved == reserved))

    def _oldest_idle(self, uid: int | None, reserved: bool) -> Hashable | None:
        found = [(s.order, key) for key, s in self._slots.items()
                 if s.idle and s.reserved == reserved and (uid is None or s.uid == uid)]
        return min(found, key=lambda f: f[0])[1] if found else None

    def admit(self, key: Hashable, uid: int, reserved: bool = False) -> Admission:
        """Give ``key`` (a new connection of ``uid``) a slot, evicting if need be;
        ``reserved`` True puts it in the reserve whatever its uid (an admin, say)."""
        reserved = reserved or uid in self.reserved_uids
        limit, victim_uid = "", None
        if reserved:
            if self.count(reserved=True) >= self.reserve:
                limit = "reserve"
        elif self.count(uid=uid, reserved=False) >= self.per_uid:
            limit, victim_uid = "uid", uid
        elif self.count(reserved=False) >= self.max_clients:
            limit = "shared"
        evicted = None
        if limit:
            evicted = self._oldest_idle(victim_uid, reserved)
            if evicted is None:
                return Admission(False, None, limit)
            del self._slots[evicted]
        self._order += 1
        self._slots[key] = _Slot(uid, reserved, self._order)
        return Admission(True, evicted, limit)

    def set_idle(self, key: Hashable, idle: bool) -> None:
        """Mark ``key`` as handling a request (False) or waiting for one (True)."""
        slot = self._slots.get(key)
        if slot is not None:
            slot.idle = idle

    def release(self, key: Hashable) -> None:
        """``key`` has closed (a no-op if it was evicted)."""
        self._slots.pop(key, None)
