"""Control connection slots (tund.control.slots): root is never locked out, one uid's
flood only replaces its own connections (issue 15.10)."""

from __future__ import annotations

from tund.control.slots import Slots, default_per_uid

ROOT, ALICE, BOB = 0, 1000, 1001


def test_defaults() -> None:
    s = Slots(32)
    assert (s.max_clients, s.per_uid, s.reserve) == (32, 8, 32)
    assert default_per_uid(1) == 1 and default_per_uid(3) == 1


def test_a_uid_at_its_share_replaces_its_own_oldest_idle_connection() -> None:
    s = Slots(8, per_uid=2, reserved_uids=(ROOT,))
    assert s.admit("a1", ALICE).admitted and s.admit("a2", ALICE).admitted
    assert s.admit("b1", BOB).admitted
    got = s.admit("a3", ALICE)
    assert (got.admitted, got.evicted, got.limit) == (True, "a1", "uid")
    # 500 more from alice: each replaces alice's oldest; bob's connection stays
    for i in range(500):
        assert s.admit(f"x{i}", ALICE).evicted not in ("b1",)
    assert s.count(uid=ALICE) == 2 and s.count(uid=BOB) == 1 and len(s) == 3


def test_busy_connections_are_never_evicted_then_the_newcomer_is_refused() -> None:
    s = Slots(8, per_uid=2)
    s.admit("a1", ALICE)
    s.admit("a2", ALICE)
    s.set_idle("a1", False)
    assert s.admit("a3", ALICE).evicted == "a2"
    s.set_idle("a3", False)
    got = s.admit("a4", ALICE)
    assert (got.admitted, got.evicted, got.limit) == (False, None, "uid")
    s.release("a1")
    assert s.admit("a4", ALICE).admitted


def test_the_shared_pool_evicts_the_oldest_idle_of_any_ordinary_uid() -> None:
    s = Slots(3, per_uid=3)
    for key, uid in (("a1", ALICE), ("b1", BOB), ("a2", ALICE)):
        s.admit(key, uid)
    got = s.admit("c1", 1002)
    assert (got.evicted, got.limit) == ("a1", "shared")


def test_root_has_its_own_pool_nobody_else_can_fill() -> None:
    s = Slots(4, per_uid=4, reserve=2, reserved_uids=(ROOT, 999))
    for i in range(4):
        assert s.admit(f"a{i}", ALICE).admitted
        s.set_idle(f"a{i}", False)
    assert not s.admit("a9", ALICE).admitted  # the shared pool is full of busy ones
    for key in ("r1", "r2"):
        got = s.admit(key, ROOT)
        assert got.admitted and got.evicted is None
    assert s.admit("d1", 999).evicted == "r1"  # the daemon's uid shares the reserve
    s.set_idle("r2", False)
    s.set_idle("d1", False)
    assert s.admit("r3", ROOT).limit == "reserve" and not s.admit("r3", ROOT).admitted


def test_the_caller_may_put_a_peer_in_the_reserve() -> None:
    """An admin_group member (told by the daemon) gets root's pool, whatever its uid."""
    s = Slots(1, per_uid=1, reserved_uids=(ROOT,))
    assert s.admit("a1", ALICE).admitted
    s.set_idle("a1", False)
    assert not s.admit("a2", ALICE).admitted
    got = s.admit("admin", BOB, reserved=True)
    assert got.admitted and got.evicted is None and s.count(reserved=True) == 1
