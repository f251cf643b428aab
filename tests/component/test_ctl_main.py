"""tundctl against a stand-in daemon on a real Unix socket, and `check` on real files."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control_support import ServerThread
from tund.control.protocol import CommandError, ErrorCode
from tund.control.server import PeerCred
from tund.ctl import main as ctl
from tund.errors import ConfigError, ConfigIssue, ReloadError

STATUS: dict[str, Any] = {
    "daemon": {"version": "0.1.0", "pid": 99, "config": "/etc/tund/tunnels.toml",
               "started": 1.0, "reloads": 0, "last_reload": None},
    "interfaces": {"tun0": {"mode": "tun", "ifindex": 7, "exists": True, "mtu": 1420,
                            "addresses": ["10.0.0.1/24"]}},
    "tunnels": {"wan0": {"interface": "tun0", "transport": "udp", "role": "listen",
                         "endpoint": "127.0.0.1:55555", "state": "up", "pid": 1234,
                         "rx_bytes": 2048, "tx_bytes": 10, "drops": {},
                         "peers": {"alice": {"public_key": "AAAA", "state": "idle",
                                             "allowed_ips": ["10.0.0.2/32"]},
                                   "bob": {"public_key": "BBBB", "state": "never"}}},
                "wan1": {"interface": "tun1", "state": "failed", "last_error": "boom"}},
}

RELOAD = {"added": {"interfaces": [], "tunnels": ["wan2"]},
          "changed": {"interfaces": [], "tunnels": []},
          "removed": {"interfaces": [], "tunnels": ["wan1"]},
          "unchanged": {"interfaces": ["tun0"], "tunnels": ["wan0"]},
          "actions": ["start worker wan2", "stop worker wan1"], "dry_run": False}


class FakeDaemon:
    """Records the requests it gets; answers like the daemon would."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.reload_mode = "ok"

    async def dispatch(self, cmd: str, args: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
        self.requests.append((cmd, args))
        if cmd == "status":
            return STATUS
        if cmd == "reload":
            if self.reload_mode == "invalid":
                raise ConfigError([ConfigIssue("/etc/tund/tunnels.toml", 4, "tunnels.x.mtu",
                                               "must be at most 65535 (got 70000)")])
            if self.reload_mode == "failed":
                raise ReloadError("step 2 (ip link set tun1 up) failed; steps 1-1 undone")
            return {**RELOAD, "dry_run": bool(args.get("dry_run"))}
        if cmd in ("up", "down", "restart"):
            if args.get("tunnel") not in STATUS["tunnels"]:
                raise CommandError(ErrorCode.NOT_FOUND, f"no tunnel {args.get('tunnel')!r}")
            return {"state": {"up": "starting", "down": "stopped", "restart": "starting"}[cmd]}
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {cmd!r}")


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeDaemon, Path]]:
    fake = FakeDaemon()
    path = tmp_path / "control.sock"
    monkeypatch.setenv("TUND_CONTROL_SOCKET", str(path))
    monkeypatch.setenv("TUND_COLOR", "never")
    with ServerThread(path, fake.dispatch):
        yield fake, path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = ctl.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- status


def test_bare_tundctl_is_status(daemon: tuple[FakeDaemon, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run([], capsys)
    assert (rc, err) == (0, "")
    assert out.startswith("daemon: tund 0.1.0\n  pid: 99\n")
    assert "tunnel: wan0\n  interface: tun0\n  state: up\n" in out
    assert "  transport: udp, listen 127.0.0.1:55555\n" in out
    assert "  transfer: 2.00 KiB received, 10 B sent\n" in out
    assert "tunnel: wan1\n  interface: tun1\n  state: failed\n  last error: boom" in out
    assert "  tun0: tun, ifindex 7, mtu 1420, 10.0.0.1/24" in out
    assert "\x1b[" not in out
    assert daemon[0].requests == [("status", {})]


def test_status_json(daemon: tuple[FakeDaemon, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["status", "--json"], capsys)
    assert rc == 0
    assert json.loads(out) == STATUS


def test_status_one_tunnel(daemon: tuple[FakeDaemon, Path],
                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["status", "wan0"], capsys)
    assert rc == 0
    assert out.startswith("tunnel: wan0\n") and "wan1" not in out
    assert daemon[0].requests == [("status", {"tunnel": "wan0"})]
    rc, out, err = run(["status", "nope"], capsys)
    assert rc == 1 and "no tunnel named 'nope'" in err


def test_status_one_peer(daemon: tuple[FakeDaemon, Path],
                         capsys: pytest.CaptureFixture[str]) -> None:
    """(issue 17.5) ``tundctl status TUNNEL PEER``: that peer only; --json keeps only it."""
    rc, out, _ = run(["status", "wan0", "alice"], capsys)
    assert rc == 0
    assert out.startswith("peer: alice\n    tunnel: wan0\n    public key: AAAA\n")
    assert "allowed ips: 10.0.0.2/32" in out and "bob" not in out
    assert daemon[0].requests == [("status", {"tunnel": "wan0"})]
    rc, out, _ = run(["status", "wan0", "bob", "--json"], capsys)
    assert rc == 0 and json.loads(out)["tunnels"] == {
        "wan0": {**STATUS["tunnels"]["wan0"], "peers": {"bob": {"public_key": "BBBB",
                                                               "state": "never"}}}}
    rc, out, err = run(["status", "wan0", "carol"], capsys)
    assert (rc, out) == (1, "")
    assert "tunnel wan0 has no peer named 'carol' (peers: alice, bob)" in err
    rc, out, err = run(["status", "wan1", "alice", "--json"], capsys)
    assert rc == 1 and "tunnel wan1 has no peer named 'alice' (peers: none)" in err


def test_socket_option_beats_environment(daemon: tuple[FakeDaemon, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, path = daemon
    monkeypatch.setenv("TUND_CONTROL_SOCKET", str(tmp_path / "elsewhere.sock"))
    assert run(["status"], capsys)[0] == 3
    assert run(["--socket", str(path), "status"], capsys)[0] == 0
    assert run([f"--socket={path}"], capsys)[0] == 0
    assert run(["status", "--socket", str(path), "--json"], capsys)[0] == 0


# --------------------------------------------------------------------------- reload


def test_reload_prints_sections(daemon: tuple[FakeDaemon, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["reload"], capsys)
    assert rc == 0
    assert out.splitlines() == [
        "added:", "  tunnel wan2", "changed: none", "removed:", "  tunnel wan1",
        "unchanged:", "  interface tun0", "  tunnel wan0",
        "actions:", "  start worker wan2", "  stop worker wan1"]


def test_reload_dry_run_and_json(daemon: tuple[FakeDaemon, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["reload", "--dry-run", "--json"], capsys)
    assert rc == 0 and json.loads(out)["dry_run"] is True
    assert daemon[0].requests[-1] == ("reload", {"dry_run": True})
    rc, out, _ = run(["reload", "--dry-run"], capsys)
    assert out.startswith("dry run: nothing was changed")


def test_reload_invalid_config_prints_located_issues(daemon: tuple[FakeDaemon, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    daemon[0].reload_mode = "invalid"
    rc, out, err = run(["reload"], capsys)
    assert rc == 1 and out == ""
    assert err.splitlines() == [
        "/etc/tund/tunnels.toml:4: tunnels.x.mtu: must be at most 65535 (got 70000)",
        "tundctl: reload: the configuration is invalid; nothing was changed"]


def test_reload_failure_and_json_error(daemon: tuple[FakeDaemon, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    daemon[0].reload_mode = "failed"
    rc, out, err = run(["reload"], capsys)
    assert rc == 1
    assert "tundctl: reload: step 2 (ip link set tun1 up) failed" in err
    assert "(reload-failed)" in err
    rc, out, err = run(["reload", "--json"], capsys)
    assert rc == 1 and json.loads(out)["error"]["code"] == "reload-failed"


# --------------------------------------------------------------------------- actions


@pytest.mark.parametrize(("cmd", "state"), [("up", "starting"), ("down", "stopped"),
                                            ("restart", "starting")])
def test_tunnel_actions(daemon: tuple[FakeDaemon, Path], capsys: pytest.CaptureFixture[str],
                        cmd: str, state: str) -> None:
    rc, out, _ = run([cmd, "wan0"], capsys)
    assert (rc, out) == (0, f"tunnel wan0: {state}\n")
    assert daemon[0].requests[-1] == (cmd, {"tunnel": "wan0"})
    rc, _, err = run([cmd, "ghost"], capsys)
    assert rc == 1 and "no tunnel 'ghost' (not-found)" in err


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize("argv", [["frobnicate"], ["--bogus"], ["status", "--bogus"],
                                  ["up"], ["--socket"], ["status", "a", "b", "c"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(argv, capsys)
    assert rc == 2 and out == ""
    assert err.startswith("tundctl")
    assert "usage" in err.lower()


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0
    for command in ctl.COMMANDS:
        assert f"  {command.name} " in out
    assert run(["status", "--help"], capsys)[0] == 0


# --------------------------------------------------------------------------- unreachable


def test_missing_socket_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["--socket", str(tmp_path / "none.sock")], capsys)
    assert rc == 3 and out == ""
    assert err == f"tundctl: no control socket at {tmp_path / 'none.sock'} (is tund running?)\n"


def test_stale_socket_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    rc, _, err = run(["--socket", str(path), "reload"], capsys)
    assert rc == 3 and "connection refused" in err and "stale socket" in err


def test_unreachable_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["--socket", str(tmp_path / "x.sock"), "status", "--json"], capsys)
    assert rc == 3
    assert json.loads(out)["error"]["reason"] == "missing"


# --------------------------------------------------------------------------- check


VALID = """\
[interfaces.tun0]
mode = "tun"
addresses = ["10.0.0.1/24"]

[tunnels.wan0]
interface = "tun0"
listen = "127.0.0.1:55555"
encryption = "none"
"""

INVALID = """\
[interfaces.tun0]
mode = "tun"
mtu = 70000

[tunnels.wan0]
interface = "tun0"
listen = "127.0.0.1:55555"
encryption = "none"
bogus = 1
"""


def test_check_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tunnels.toml"
    path.write_text(VALID)
    rc, out, err = run(["check", str(path)], capsys)
    assert (rc, err) == (0, "")
    assert out == f"{path}: ok (1 interface, 1 tunnel)\n"


def test_check_invalid_lists_located_issues(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tunnels.toml"
    path.write_text(INVALID)
    rc, out, err = run(["check", str(path)], capsys)
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"{path}:3: interfaces.tun0.mtu: must be "), lines[0]
    assert lines[0].endswith("65535 (got 70000)"), lines[0]  # the wording is config.py's
    assert lines[1].startswith(f"{path}:9: tunnels.wan0.bogus: unknown key")
    assert lines[-1] == f"tundctl: check: {path}: 2 problems"
    assert "Traceback" not in err


def test_check_default_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[interfaces\n")
    monkeypatch.setenv("TUND_CONFIG", str(path))
    rc, _, err = run(["check"], capsys)
    assert rc == 1
    assert err.startswith(f"{path}:1: not valid TOML")


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(["check", str(tmp_path / "nope.toml")], capsys)
    assert rc == 1 and "cannot read" in err and "Traceback" not in err


# --------------------------------------------------------------------------- keys


def test_key_commands_without_keys_module_fail_clearly(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tund.keys", None)  # makes the import fail
    rc, out, err = run(["genkey"], capsys)
    assert rc == 1 and out == ""
    assert "key commands are not available" in err


def test_key_commands_call_tund_keys(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake = types.ModuleType("tund.keys")
    fake.generate_private_key = lambda: "PRIV="  # type: ignore[attr-defined]
    fake.generate_psk = lambda: "PSK="  # type: ignore[attr-defined]

    def public_key(private_b64: str) -> str:
        if private_b64 != "PRIV=":
            raise ValueError(f"not a private key (got {private_b64!r})")
        return "PUB="

    fake.public_key = public_key  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tund.keys", fake)
    assert run(["genkey"], capsys)[:2] == (0, "PRIV=\n")
    assert run(["genpsk"], capsys)[:2] == (0, "PSK=\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("PRIV=\n"))
    assert run(["pubkey"], capsys)[:2] == (0, "PUB=\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("junk\n"))
    rc, _, err = run(["pubkey"], capsys)
    assert rc == 1 and "not a private key (got 'junk')" in err


# --------------------------------------------------------------------------- as a program


def test_runs_as_module_with_exit_codes(daemon: tuple[FakeDaemon, Path], tmp_path: Path) -> None:
    env = {**os.environ, "TUND_COLOR": "never"}
    done = subprocess.run([sys.executable, "-m", "tund.ctl.main", "--socket", str(daemon[1])],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "tunnel: wan0" in done.stdout
    done = subprocess.run([sys.executable, "-m", "tund.ctl.main", "--socket",
                           str(tmp_path / "gone.sock")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 3
    assert "no control socket at" in done.stderr and "Traceback" not in done.stderr


def test_config_prints_relative_key_files_as_absolute_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``tundctl config`` from another directory shows where the keys really are (issue
    15.6; it failed before: the key files were looked for in the cwd)."""
    from tests.unit.test_config_valid import two_files_with_relative_keys

    main, main_key, psk, drop_key = two_files_with_relative_keys(tmp_path)
    monkeypatch.chdir("/")
    rc, out, err = run(["config", str(main)], capsys)
    assert (rc, err) == (0, "")
    assert f'private_key_file = "{main_key}"' in out
    assert f'preshared_key_file = "{psk}"' in out
    assert f'private_key_file = "{drop_key}"' in out
