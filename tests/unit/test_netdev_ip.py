"""IpRunner with a stand-in ``ip`` binary (a shell script), and tuntap's log-before-ioctl rule."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tund.errors import IpCommandError
from tund.netdev import tuntap
from tund.netdev.ip import IpRunner

FAKE_IP = """#!/bin/sh
printf '%s\n' "$*" >> "{log}"
case "$*" in
  *fail*) echo "RTNETLINK answers: File exists" >&2; exit 2 ;;
  *garbage*) echo "not json"; exit 0 ;;
  *-json*empty*) exit 0 ;;
  *-json*) echo '[{{"ifname": "t0", "mtu": 1500}}]' ;;
  *) echo ok ;;
esac
"""


@pytest.fixture
def fake_ip(tmp_path: Path) -> tuple[str, Path]:
    log = tmp_path / "argv.log"
    script = tmp_path / "ip"
    script.write_text(FAKE_IP.format(log=log))
    script.chmod(0o755)
    return str(script), log


def test_run_logs_before_running_and_returns_stdout(
        fake_ip: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    binary, argv_log = fake_ip
    caplog.set_level(logging.INFO, "tund.netdev.ip")
    assert IpRunner(binary=binary).run(["link", "set", "t0", "up"]) == "ok\n"
    assert caplog.messages == [f"[#] {binary} link set t0 up"]
    assert argv_log.read_text() == "link set t0 up\n"


def test_every_change_to_a_link_carries_its_journal_field(
        fake_ip: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """``journalctl TUND_INTERFACE=t0`` finds every ``[#] ip`` line about t0."""
    binary, _ = fake_ip
    caplog.set_level(logging.INFO, "tund.netdev.ip")
    ip = IpRunner(binary=binary)
    ip.run(["link", "set", "t0", "up"])
    ip.run(["addr", "add", "10.0.0.1/24", "dev", "t1"])
    ip.batch([["route", "replace", "10.9.0.0/24", "dev", "t2"], ["rule", "add", "table", "7"]])
    assert [getattr(r, "TUND_INTERFACE", None) for r in caplog.records] == [
        "t0", "t1", "t2", None]


def test_netns_and_json(fake_ip: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    binary, argv_log = fake_ip
    caplog.set_level(logging.INFO, "tund.netdev.ip")
    ip = IpRunner(binary=binary, netns="ndns1")
    assert ip.json(["link", "show", "dev", "t0"]) == [{"ifname": "t0", "mtu": 1500}]
    assert ip.json(["empty"]) == []
    assert argv_log.read_text().splitlines() == ["-n ndns1 -json link show dev t0",
                                                 "-n ndns1 -json empty"]
    assert caplog.messages == []  # reads are not logged at info


def test_failure_raises_with_argv_rc_stderr(fake_ip: tuple[str, Path]) -> None:
    binary, _ = fake_ip
    with pytest.raises(IpCommandError) as ei:
        IpRunner(binary=binary).run(["addr", "add", "fail"])
    assert ei.value.argv == [binary, "addr", "add", "fail"]
    assert ei.value.returncode == 2
    assert ei.value.stderr == "RTNETLINK answers: File exists"
    assert "File exists" in str(ei.value)


def test_bad_json_and_missing_binary(fake_ip: tuple[str, Path], tmp_path: Path) -> None:
    binary, _ = fake_ip
    with pytest.raises(IpCommandError, match="not JSON"):
        IpRunner(binary=binary).json(["garbage"])
    with pytest.raises(IpCommandError, match="cannot run") as ei:
        IpRunner(binary=str(tmp_path / "no-such-ip")).run(["link"])
    assert ei.value.returncode == 127


# --------------------------------------------------------------------------- tuntap logging


def test_every_changing_ioctl_is_logged_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Create a device with a fake ioctl: each call comes right after its own log line."""
    events: list[str] = []
    sysfs = tmp_path / "sys"
    sysfs.mkdir()

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append("log " + record.getMessage())

    def fake_ioctl(fd: int, request: int, arg: Any) -> Any:
        names = {tuntap.TUNSETIFF: "TUNSETIFF", tuntap.TUNSETOWNER: "TUNSETOWNER",
                 tuntap.TUNSETGROUP: "TUNSETGROUP", tuntap.TUNSETPERSIST: "TUNSETPERSIST"}
        events.append("ioctl " + names[request])
        if request == tuntap.TUNSETIFF:  # the kernel makes the device appear
            d = sysfs / "t0"
            d.mkdir()
            for f, v in (("tun_flags", "0x1801"), ("owner", "7"), ("group", "8"),
                         ("ifindex", "5")):
                (d / f).write_text(v)
        return arg

    monkeypatch.setattr(tuntap, "SYSFS_NET", sysfs)
    monkeypatch.setattr(tuntap, "TUN_PATH", os.devnull)
    monkeypatch.setattr(fcntl, "ioctl", fake_ioctl)
    handler = Recorder()
    logger = logging.getLogger("tund.netdev.tuntap")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        dev = tuntap.open_device("t0", "tun", owner=7, group=8)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    os.close(dev.fd)
    assert dev.created and dev.info.owner == 7 and dev.info.persist
    ioctls = [i for i, e in enumerate(events) if e.startswith("ioctl")]
    assert [events[i] for i in ioctls] == ["ioctl TUNSETIFF", "ioctl TUNSETOWNER",
                                           "ioctl TUNSETGROUP", "ioctl TUNSETPERSIST"]
    for i in ioctls:
        what = events[i].split()[1]
        assert events[i - 1].startswith(f"log [#] ioctl {what} t0"), events
