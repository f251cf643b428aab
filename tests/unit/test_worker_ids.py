"""tund.workerapi.run_as.WorkerIds: one uid of its own per tunnel (issue 16.4)."""

from __future__ import annotations

import os
import pwd

import pytest

from tund.workerapi import run_as
from tund.workerapi.run_as import RunAs, WorkerIds, group_ids

FALLBACK = RunAs(65534, 65534, "nobody")


def test_each_tunnel_gets_its_own_and_keeps_it() -> None:
    ids = WorkerIds(2_100_000_000, 10, FALLBACK, euid=0)
    a, b = ids.for_tunnel("a"), ids.for_tunnel("b")
    assert a is not None and b is not None and a.uid != b.uid
    assert (a.uid, a.gid) == (2_100_000_000, 2_100_000_000)  # gid: the same number
    assert ids.for_tunnel("a") == a  # restarts keep it
    ids.release("a")
    assert ids.for_tunnel("c") == RunAs(a.uid, a.gid, "tunnel c")  # freed, reused


def test_named_ids_and_the_control_groups_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_as, "_named", lambda uid: uid == 500)
    ids = WorkerIds(500, 4, FALLBACK, avoid_gids=frozenset({501}), euid=0)
    assert [ids.for_tunnel(n).uid for n in "xy"] == [502, 503]  # type: ignore[union-attr]
    with pytest.raises(OSError, match=r"no free worker uid in 500\.\.503 .* tunnel 'z'"):
        ids.for_tunnel("z")


def test_off_gives_worker_user() -> None:
    assert WorkerIds(2_100_000_000, 0, FALLBACK, euid=0).for_tunnel("a") == FALLBACK
    assert WorkerIds(2_100_000_000, 9, FALLBACK, euid=1000).for_tunnel("a") == FALLBACK
    assert WorkerIds(2_100_000_000, 9, None, euid=0).for_tunnel("a") is None  # root


def test_an_unmapped_range_falls_back(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_as, "_mapped", lambda path, first, count: False)
    assert WorkerIds(2_100_000_000, 9, FALLBACK, euid=0).for_tunnel("a") == FALLBACK


def test_mapped_reads_the_namespace_map(tmp_path: os.PathLike[str]) -> None:
    m = os.path.join(tmp_path, "uid_map")
    with open(m, "w") as f:
        f.write("         0     100000      65536\n")
    assert run_as._mapped(m, 1000, 10) and not run_as._mapped(m, 2_100_000_000, 10)


def test_group_ids() -> None:
    root_group = pwd.getpwuid(0).pw_gid
    assert group_ids(None, "0", "no-such-group-tms") == frozenset({0})
    assert root_group in group_ids("root") or not group_ids("root")
