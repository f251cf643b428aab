"""Hooks and dns in a daemon's life (issue 19): start, reload (dry run = what runs), stop.

A real Engine over the fakes of tests/unit/test_reload_steps.py; hooks are real processes
appending to a file, resolvectl a fake on PATH recording its argv.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_hooks_dns import calls, fake_tool
from tests.unit.test_reload_steps import BatchFakeIp, FakeDevices, _iface, _tunnel, fakes
from tund import config, dnsbackend
from tund.daemon.engine import Engine

__all__ = ["fakes"]  # the fixture, imported for pytest

PY = sys.executable


def hook(log: Path, word: str) -> str:
    """A TOML command list of one hook that appends ``word`` (``%i`` expanded) to ``log``."""
    return (f'[["{PY}", "-c", "import sys; open(sys.argv[1], \'a\').write(sys.argv[2] + '
            f'\'\\\\n\')", "{log}", "{word}"]]')


def hooked(log: Path, name: str, extra: str = "") -> str:
    return _iface(name, extra="\n".join(
        f"{phase} = {hook(log, f'{phase} %i')}"
        for phase in ("pre_up", "post_up", "pre_down", "post_down")) + "\n" + extra)


@pytest.fixture
def resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = fake_tool(tmp_path, "resolvectl")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    running = tmp_path / "resolved-runs"
    running.write_text("")
    monkeypatch.setattr(dnsbackend, "RESOLVED_RUNNING", (str(running),))
    return tmp_path


def test_start_runs_hooks_in_order_and_a_failing_pre_up_stops_only_its_interface(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices], resolved: Path) -> None:
    ip, _dev = fakes
    log = tmp_path / "hooks.log"
    path = tmp_path / "tunnels.toml"
    path.write_text(hooked(log, "trh0", 'dns = ["10.9.0.53", "vpn.example"]')
                    + _tunnel("t0", "trh0")
                    + _iface("trb0", extra='pre_up = [["false"]]') + _tunnel("t1", "trb0"))
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> dict[str, Any]:
        await eng.start(config.load(path))
        st = await eng.status()
        assert log.read_text() == "pre_up trh0\npost_up trh0\n"
        await eng.shutdown()
        return st

    st = asyncio.run(go())
    assert log.read_text() == "pre_up trh0\npost_up trh0\npre_down trh0\npost_down trh0\n"
    assert "trb0" not in ip.links  # its pre_up failed: the device was never created
    assert "trh0" in ip.links
    text = str(st)
    assert "interfaces.trb0.pre_up[0]" in text and "exit status 1" in text
    assert [c[0] for c in calls(resolved)] == [
        ["dns", "trh0", "10.9.0.53"], ["domain", "trh0", "vpn.example"], ["revert", "trh0"]]


def test_reload_dry_run_lists_the_hooks_and_dns_the_apply_runs(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices], resolved: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    ip, _dev = fakes
    log = tmp_path / "hooks.log"
    path = tmp_path / "tunnels.toml"
    old = hooked(log, "trg0") + _tunnel("gone", "trg0") + _iface("trk0")
    new = (_iface("trk0", extra='dns = ["10.9.1.53"]')
           + hooked(log, "trn0", 'dns = ["10.9.2.53"]'))
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        path.write_text(old)
        await eng.start(config.load(path))
        path.write_text(new)
        dry = await eng.reload(dry_run=True)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            done = await eng.reload()
        await eng.shutdown()
        return dry, done

    dry, done = asyncio.run(go())
    py = PY
    q = "'\"'\"'"  # a single quote inside shlex's single quotes
    line = f"-c 'import sys; open(sys.argv[1], {q}a{q}).write(sys.argv[2] + {q}\\n{q})' {log}"
    assert dry["actions"] == [
        "set dns of trk0: 10.9.1.53",
        f"[#] hook pre_up of trn0: {py} {line} 'pre_up trn0'",
        "create device trn0 (mode tun)",
        "[#] ip link set trn0 up",
        "set dns of trn0: 10.9.2.53",
        f"[#] hook post_up of trn0: {py} {line} 'post_up trn0'",
        "stop worker of tunnel gone",
        f"[#] hook pre_down of trg0: {py} {line} 'pre_down trg0'",
        "delete device trg0",
        f"[#] hook post_down of trg0: {py} {line} 'post_down trg0'",
    ]
    assert done["actions"] == dry["actions"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name in
              ("tund.daemon.reload", "tund.netdev.ip", "tund.netdev.hooks")
              and r.getMessage().startswith(("[#] hook", "[#] ip", "set dns", "create",
                                             "stop", "delete"))]
    assert logged == dry["actions"]
    assert log.read_text().splitlines() == [
        "pre_up trg0", "post_up trg0",  # start
        "pre_up trn0", "post_up trn0", "pre_down trg0", "post_down trg0",  # reload
        "pre_down trn0", "post_down trn0"]  # stop
    argvs = [c[0] for c in calls(resolved)]
    assert argvs == [["dns", "trk0", "10.9.1.53"], ["dns", "trn0", "10.9.2.53"],
                     ["revert", "trk0"], ["revert", "trn0"]]


def test_failing_pre_up_fails_the_reload_and_undoes_it(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices], resolved: Path) -> None:
    ip, _dev = fakes
    path = tmp_path / "tunnels.toml"
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> None:
        path.write_text(_iface("trk0"))
        await eng.start(config.load(path))
        path.write_text(_iface("trk0", extra='dns = ["10.9.1.53"]')
                        + _iface("trn0", extra='pre_up = [["false"]]'))
        with pytest.raises(Exception, match=r"interfaces.trn0.pre_up\[0\]"):
            await eng.reload()
        await eng.shutdown()

    asyncio.run(go())
    assert "trn0" not in ip.links
    # the dns set on trk0 was reverted by the rollback (set to none)
    assert [c[0] for c in calls(resolved)] == [["dns", "trk0", "10.9.1.53"], ["revert", "trk0"]]
