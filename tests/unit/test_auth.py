"""Control-socket rights: who may read, who may change things (tund.control.auth)."""

from __future__ import annotations

import grp
import logging
import os
import pwd
from typing import Any

import pytest

from tund.control.auth import Denied, Policy, authorize, groups_of, has_right, who_has

# A real user with supplementary groups would make these tests depend on the machine, so
# the user database is replaced by a small fake one.
USERS = {1001: ("alice", 1001), 1002: ("bob", 1002), 1003: ("carol", 1003)}
GROUPS = {"tundctl": 2001, "tundadm": 2002, "staff": 2003}
MEMBERS = {"alice": [2001], "bob": [2002], "carol": [2003]}


@pytest.fixture(autouse=True)
def fake_userdb(monkeypatch: pytest.MonkeyPatch) -> None:
    def getpwuid(uid: int) -> Any:
        if uid not in USERS:
            raise KeyError(uid)
        name, gid = USERS[uid]
        return pwd.struct_passwd((name, "x", uid, gid, "", "/", "/bin/sh"))

    def getgrnam(name: str) -> Any:
        if name not in GROUPS:
            raise KeyError(name)
        return grp.struct_group((name, "x", GROUPS[name], []))

    def getgrouplist(name: str, gid: int) -> list[int]:
        return [gid, *MEMBERS.get(name, [])]

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(grp, "getgrnam", getgrnam)
    monkeypatch.setattr(os, "getgrouplist", getgrouplist)


BOTH = Policy(control_group="tundctl", admin_group="tundadm", daemon_uid=0)


def test_root_may_do_everything_under_any_policy() -> None:
    for policy in (BOTH, Policy(), Policy("tundctl")):
        assert has_right("read", 0, 0, policy)
        assert has_right("admin", 0, 0, policy)


def test_control_group_member_reads_but_may_not_change() -> None:
    assert has_right("read", 1001, 1001, BOTH)
    assert not has_right("admin", 1001, 1001, BOTH)


def test_admin_group_member_may_change_and_read() -> None:
    assert has_right("admin", 1002, 1002, BOTH)
    assert has_right("read", 1002, 1002, BOTH)


def test_others_get_nothing() -> None:
    assert not has_right("read", 1003, 1003, BOTH)
    assert not has_right("admin", 1003, 1003, BOTH)


def test_primary_gid_from_the_credentials_counts() -> None:
    """A process running with gid tundctl (sg, setgid) is a member even if not listed."""
    assert has_right("read", 1003, GROUPS["tundctl"], BOTH)
    assert not has_right("admin", 1003, GROUPS["tundctl"], BOTH)


def test_uid_without_passwd_entry_has_only_its_gid() -> None:
    assert groups_of(4242, 77) == frozenset({77})
    assert not has_right("read", 4242, 77, BOTH)
    assert has_right("read", 4242, GROUPS["tundctl"], BOTH)


def test_numeric_group_in_policy() -> None:
    policy = Policy(control_group=str(GROUPS["tundctl"]))
    assert has_right("read", 1001, 1001, policy)


def test_group_that_vanished_grants_nothing() -> None:
    policy = Policy(control_group="gone", admin_group="gone-too")
    assert not has_right("read", 1001, 1001, policy)
    assert not has_right("admin", 1002, 1002, policy)


def test_without_admin_group_only_root_and_daemon_user_administer() -> None:
    policy = Policy(control_group="tundctl", daemon_uid=1003)
    assert not has_right("admin", 1002, 1002, policy)
    assert has_right("admin", 1003, 1003, policy)  # the daemon's own user


def test_denied_message_names_command_right_and_who_has_it() -> None:
    with pytest.raises(Denied) as info:
        authorize("reload", "admin", 1001, 1001, BOTH)
    assert str(info.value) == "reload needs admin rights: root or a member of group 'tundadm'"
    assert info.value.code == "denied"


def test_denied_message_without_groups_says_root_only() -> None:
    with pytest.raises(Denied, match=r"status needs read rights: root only \(no \[daemon\] "
                                     r"control_group or admin_group is set\)"):
        authorize("status", "read", 1001, 1001, Policy())
    assert who_has("admin", Policy("tundctl")) == "root only (no [daemon] admin_group is set)"
    assert who_has("read", BOTH) == "root or a member of group 'tundctl' or 'tundadm'"


def test_authorize_passes_silently_when_allowed() -> None:
    authorize("status", "read", 1001, 1001, BOTH)
    authorize("up", "admin", 1002, 1002, BOTH)
    assert Policy.current(None, None).daemon_uid == os.geteuid()


def test_daemon_dispatch_enforces_the_right_of_each_command(
        caplog: pytest.LogCaptureFixture) -> None:
    """Daemon.dispatch checks the COMMANDS table's right before running the handler."""
    import asyncio
    from pathlib import Path

    from tests.fuzz.targets import FakeEngine
    from tund.config import parse_text
    from tund.control.server import PeerCred
    from tund.daemon.commands import COMMANDS
    from tund.daemon.main import Daemon

    assert {cmd: right for cmd, (_, right) in COMMANDS.items()} == {
        "status": "read", "reload": "admin", "up": "admin", "down": "admin",
        "restart": "admin"}
    cfg = parse_text('[daemon]\ncontrol_group = "tundctl"\nadmin_group = "tundadm"\n')
    daemon = Daemon(cfg, Path("/nonexistent.toml"), "/nonexistent.sock")
    daemon.engine = FakeEngine()  # type: ignore[assignment]
    reader, admin = PeerCred(11, 1001, 1001), PeerCred(12, 1002, 1002)

    async def run() -> None:
        assert "tunnels" in await daemon.dispatch("status", {}, reader)
        with pytest.raises(Denied, match="up needs admin rights: root or a member of "
                                         "group 'tundadm'"):
            await daemon.dispatch("up", {"tunnel": "t1"}, reader)
        assert (await daemon.dispatch("up", {"tunnel": "t1"}, admin))["tunnel"] == "t1"
        assert (await daemon.dispatch("reload", {}, None))["dry_run"] is False  # SIGHUP

    with caplog.at_level(logging.WARNING, "tund.daemon.commands"):
        asyncio.run(run())
    assert "denied 'up' to uid 1001 (pid 11, gid 1001)" in caplog.text
