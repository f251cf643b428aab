"""Who workers run as, and how a dropped worker's /proc status is judged (pure parts)."""

from __future__ import annotations

import asyncio
import logging
import pwd
from pathlib import Path
from typing import Any

import pytest

from tund.relay.process import privileges
from tund.relay.process.privileges import problems
from tund.workerapi.run_as import RunAs, WorkerUserError, resolve_worker_user

USERS = {"tund": (998, 997), "nobody": (65534, 65534), "root": (0, 0)}


@pytest.fixture
def userdb(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    db = dict(USERS)

    def entry(name: str, uid: int, gid: int) -> Any:
        return pwd.struct_passwd((name, "x", uid, gid, "", "/", "/usr/sbin/nologin"))

    def getpwnam(name: str) -> Any:
        if name not in db:
            raise KeyError(name)
        return entry(name, *db[name])

    def getpwuid(uid: int) -> Any:
        for name, (u, g) in db.items():
            if u == uid:
                return entry(name, u, g)
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    return db


def test_configured_user_is_used(userdb: dict[str, tuple[int, int]]) -> None:
    assert resolve_worker_user("tund", euid=0) == RunAs(998, 997, "tund")
    assert resolve_worker_user("998", euid=0) == RunAs(998, 997, "tund")


def test_missing_user_is_an_error_with_the_useradd_hint_never_nobody(
        userdb: dict[str, tuple[int, int]]) -> None:
    del userdb["tund"]
    with pytest.raises(WorkerUserError) as e:
        resolve_worker_user("tund", euid=0)
    assert "'tund' does not exist" in str(e.value)
    assert "useradd --system --no-create-home --shell /usr/sbin/nologin tund" in str(e.value)
    with pytest.raises(WorkerUserError, match="'tund-w' does not exist"):
        resolve_worker_user("tund-w", euid=0)
    with pytest.raises(WorkerUserError, match="'4242' does not exist"):
        resolve_worker_user("4242", euid=0)


def test_explicit_nobody_is_allowed_with_a_warning(
        userdb: dict[str, tuple[int, int]], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "tund.workerapi.run_as"):
        assert resolve_worker_user("nobody", euid=0) == RunAs(65534, 65534, "nobody")
    assert "share uid 65534" in caplog.text and "useradd" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "tund.workerapi.run_as"):
        assert resolve_worker_user("tund", euid=0) == RunAs(998, 997, "tund")
    assert caplog.text == ""


def test_root_or_a_non_root_daemon_means_no_switch(
        userdb: dict[str, tuple[int, int]], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "tund.workerapi.run_as"):
        assert resolve_worker_user("root", euid=0) is None
    assert "not advised" in caplog.text
    assert resolve_worker_user("tund", euid=1000) is None


def test_run_as_round_trips_through_the_command_line() -> None:
    assert RunAs.parse(str(RunAs(998, 997))) == RunAs(998, 997)
    for bad in ("998", "a:b", "-1:2", "1:", ":1", "1:2:3"):
        with pytest.raises(ValueError, match="UID:GID"):
            RunAs.parse(bad)


DROPPED = {"Uid": "998 998 998 998", "Gid": "997 997 997 997", "Groups": "",
           "CapInh": "0000000000000000", "CapPrm": "0000000000000000",
           "CapEff": "0000000000000000", "CapBnd": "0000000000000000",
           "CapAmb": "0000000000000000", "NoNewPrivs": "1"}


def test_a_fully_dropped_status_has_no_problems() -> None:
    assert problems(DROPPED, RunAs(998, 997)) == []


@pytest.mark.parametrize(("field", "value", "expect"), [
    ("Uid", "998 998 0 998", "Uid"),             # saved uid still root: could switch back
    ("Gid", "0 997 997 997", "Gid"),
    ("Groups", "0 27", "Groups"),
    ("CapEff", "0000000000001000", "CapEff"),
    ("CapPrm", "000001ffffffffff", "CapPrm"),
    ("CapBnd", "000001ffffffffff", "CapBnd"),
    ("CapAmb", "0000000000000400", "CapAmb"),
    ("NoNewPrivs", "0", "NoNewPrivs"),
])
def test_each_shortfall_is_named(field: str, value: str, expect: str) -> None:
    found = problems({**DROPPED, field: value}, RunAs(998, 997))
    assert len(found) == 1 and found[0].startswith(expect), found


def test_without_switch_only_capabilities_and_no_new_privs_are_judged() -> None:
    status = {**DROPPED, "Uid": "1000 1000 1000 1000", "Gid": "1000 1000 1000 1000",
              "CapBnd": "000001ffffffffff"}
    assert problems(status, None) == []
    assert problems({**status, "CapEff": "0000000000000001"}, None) != []
    assert privileges.PRELOAD  # what the drop imports first is stated, not implicit


def test_daemon_start_and_reload_refuse_a_missing_worker_user(
        userdb: dict[str, tuple[int, int]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """As root with no 'tund' user: start fails before anything is made, a reload to a
    missing user is refused (located at daemon.worker_user), never 'nobody'."""
    from tund import config
    from tund.daemon import engine as engine_mod
    from tund.errors import ConfigError

    monkeypatch.setattr(engine_mod, "resolve_worker_user",
                        lambda user: resolve_worker_user(user, euid=0))
    del userdb["tund"]
    NOBODY = RunAs(65534, 65534, "nobody")
    path = tmp_path / "tunnels.toml"
    path.write_text("[daemon]\n")
    engine = engine_mod.Engine(path, fork_server=False)
    with pytest.raises(ConfigError) as e:
        asyncio.run(engine.start(config.load(path)))
    assert "daemon.worker_user" in str(e.value) and "useradd --system" in str(e.value)
    assert engine.config is None and not engine.runners
    path.write_text('[daemon]\nworker_user = "nobody"\n')
    asyncio.run(engine.start(config.load(path)))
    assert engine._worker_cls.RUN_AS == NOBODY
    path.write_text('[daemon]\nworker_user = "tund-missing"\n')
    with pytest.raises(ConfigError, match="'tund-missing' does not exist"):
        asyncio.run(engine.reload())
    assert engine._worker_cls.RUN_AS == NOBODY
    assert engine.last_reload is not None and not engine.last_reload["ok"]
