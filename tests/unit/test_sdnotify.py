"""tund.sdnotify: messages reach a NOTIFY_SOCKET listener; failures never raise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tund import sdnotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a filesystem path, as systemd's notify socket is."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_fallback_sends_fields_joined_by_newlines(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert sdnotify.notify(sdnotify.READY, sdnotify.status("2 tunnels\nup"),
                           env={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 tunnels up"


def test_fallback_abstract_socket() -> None:
    name = f"tund-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sdnotify.notify(sdnotify.STOPPING, env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_reloading_gets_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.notify(sdnotify.RELOADING, env={"NOTIFY_SOCKET": path})
    fields = sock.recv(4096).decode().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields[0] == "RELOADING=1"
    assert fields[1].startswith("MONOTONIC_USEC=")
    assert before <= int(fields[1].split("=", 1)[1]) <= after


def test_reloading_keeps_callers_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert sdnotify.notify(sdnotify.RELOADING, "MONOTONIC_USEC=42", env={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=42"


def test_no_socket_configured_returns_false() -> None:
    assert sdnotify.notify(sdnotify.READY, env={}) is False


def test_nothing_to_send_returns_false(listener: tuple[socket.socket, str]) -> None:
    assert sdnotify.notify(env={"NOTIFY_SOCKET": listener[1]}) is False


def test_missing_socket_path_does_not_raise(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}
    assert sdnotify.notify(sdnotify.READY, env=env) is False


def test_missing_socket_with_systemd_python_does_not_raise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd-python raises FileNotFoundError here; notify() must swallow it.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.notify(sdnotify.READY) is False


def test_real_path_in_a_child_process(listener: tuple[socket.socket, str]) -> None:
    """Through whatever sender the environment offers (systemd-python if installed)."""
    sock, path = listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    code = "from tund import sdnotify; import sys; sys.exit(0 if sdnotify.notify('READY=1') else 1)"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NOTIFY_SOCKET": path},
                          timeout=30, check=False)
    assert proc.returncode == 0
    assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize(("env", "pid", "expected"), [
    ({}, 10, None),
    ({"WATCHDOG_USEC": "20000000"}, 10, 20.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "10"}, 10, 20.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "11"}, 10, None),
    ({"WATCHDOG_USEC": "0"}, 10, None),
    ({"WATCHDOG_USEC": "soon"}, 10, None),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, 10, None),
])
def test_watchdog_interval(env: dict[str, str], pid: int, expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env, pid) == expected


def test_watchdog_interval_defaults_to_own_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 3.0


def test_without_systemd_python_uses_fallback(
        listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = listener
    monkeypatch.setitem(sys.modules, "systemd.daemon", None)  # makes the import fail
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.notify(sdnotify.WATCHDOG)
    assert sock.recv(4096) == b"WATCHDOG=1"
