"""tundctl's operator commands on real sockets and files: status --watch, dump, config,
peer-config (accepted by check), and the message when the socket is not accessible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control_support import ServerThread
from tund import keys
from tund.control.server import PeerCred
from tund.ctl import main as ctl
from tund.ctl import render

STATUS: dict[str, Any] = {
    "schema": 1,
    "daemon": {"version": "0.1.0", "pid": 99, "config": "/etc/tund/tunnels.toml",
               "started": 1.0, "reloads": 0, "last_reload": None},
    "interfaces": {},
    "tunnels": {"wan0": {"interface": "tun0", "transport": "udp", "role": "listen",
                         "endpoint": "127.0.0.1:55555", "encryption": "none", "state": "up",
                         "pid": 1234, "rx_bytes": 2048, "tx_bytes": 10, "drops": {"x": 2}}},
}


@pytest.fixture
def sock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], Path]]:
    calls: list[str] = []

    async def dispatch(cmd: str, args: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
        calls.append(cmd)
        return STATUS

    path = tmp_path / "control.sock"
    monkeypatch.setenv("TUND_CONTROL_SOCKET", str(path))
    monkeypatch.setenv("TUND_COLOR", "never")
    with ServerThread(path, dispatch):
        yield calls, path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = ctl.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_watch_count_prints_frames_with_headers(sock: tuple[list[str], Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    calls, _ = sock
    rc, out, _ = run(["status", "--watch", "--interval", "0.1", "--count", "3"], capsys)
    assert rc == 0
    assert calls == ["status"] * 3
    assert out.count("Every 0.1s: tundctl status") == 3
    assert out.count("tunnel: wan0") == 3
    assert "\x1b[" not in out  # not a tty: no screen clearing


def test_watch_json_and_bad_options(sock: tuple[list[str], Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["status", "--watch", "--count", "1", "--json"], capsys)
    assert rc == 0 and '"schema": 1' in out
    for bad in (["--count", "0"], ["--interval", "0"], ["--interval", "x"]):
        rc, _, err = run(["status", "--watch", *bad], capsys)
        assert rc == 2, bad
        assert "tundctl status" in err


def test_watch_stops_on_unreachable_daemon_after_count(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    rc, out, err = run(["--socket", str(tmp_path / "none.sock"), "status", "--watch",
                        "--interval", "0.1", "--count", "2"], capsys)
    assert rc == 3
    assert err.count("no control socket") == 2 and out.count("Every") == 2


def test_dump_cli(sock: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["dump"], capsys)
    assert rc == 0
    fields = out.rstrip("\n").split("\t")
    assert len(fields) == len(render.DUMP_COLUMNS)
    row = dict(zip(render.DUMP_COLUMNS, fields, strict=True))
    assert (row["tunnel"], row["state"], row["encryption"], row["drops"]) == ("wan0", "up",
                                                                              "off", "2")
    rc, _, err = run(["dump", "nope"], capsys)
    assert rc == 1 and "no tunnel named 'nope'" in err


def test_not_accessible_socket_says_permission(sock: tuple[list[str], Path],
                                                tmp_path: Path) -> None:
    """As a user who may not connect: exit 3 and 'permission denied', not 'not running'."""
    _, path = sock
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv to drop root")
        tmp_path.chmod(0o755)
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        path.chmod(0)
        prefix = []
    repo = str(Path(__file__).resolve().parents[2])
    p = subprocess.run([*prefix, sys.executable, "-m", "tund.ctl.main", "--socket", str(path),
                        "status"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": repo}, cwd="/")
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "permission denied" in p.stderr and "control group" in p.stderr
    assert "not running" not in p.stderr


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0
    for line in ("0  ok", "1  refused or invalid", "2  usage error",
                 "3  the daemon could not be reached"):
        assert line in out
    for name in ("dump", "config", "peer-config"):
        assert f"\n  {name} " in out


# --------------------------------------------------------------------------- offline


def _site(tmp_path: Path) -> tuple[Path, Path, str]:
    key = tmp_path / "a.key"
    key.write_text(keys.generate_private_key() + "\n")
    key.chmod(0o600)
    peer_priv = keys.generate_private_key()
    path = tmp_path / "tunnels.toml"
    path.write_text(f"""
[interfaces.tun0]
mode = "tun"
addresses = ["10.235.3.1/24"]

[tunnels.wg]
interface = "tun0"
listen = "0.0.0.0:51820"
private_key_file = "{key}"
peer_public_key = "{keys.public_key(peer_priv)}"
""")
    dropins = tmp_path / "tunnels.d"
    dropins.mkdir()
    (dropins / "10-log.toml").write_text('[daemon]\nlog_level = "debug"\n')
    return path, key, peer_priv


def test_config_prints_merged_effective_toml(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, key, _ = _site(tmp_path)
    rc, out, _ = run(["config", str(path)], capsys)
    assert rc == 0
    data = tomllib.loads(out)
    assert data["daemon"]["log_level"] == "debug"          # from the drop-in
    assert data["daemon"]["crash_limit"] == 10               # a default
    assert data["tunnels"]["wg"]["private_key_file"] == str(key)
    assert key.read_text().strip() not in out
    assert str(tmp_path / "tunnels.d" / "10-log.toml") in out  # sources named
    (tmp_path / "tunnels.d" / "20-bad.toml").write_text("[daemon]\nbogus = 1\n")
    rc, out, err = run(["config", str(path)], capsys)
    assert rc == 1 and out == "" and "daemon.bogus: unknown key" in err


def test_peer_config_is_accepted_by_check(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, key, peer_priv = _site(tmp_path)
    rc, out, err = run(["peer-config", "wg", str(path), "--endpoint", "site-a.example"], capsys)
    assert rc == 0, err
    other = tmp_path / "other"
    other.mkdir()
    peer_key = other / "wg.key"
    peer_key.write_text(peer_priv + "\n")
    peer_key.chmod(0o600)
    peer_path = other / "tunnels.toml"
    peer_path.write_text(out.replace("/etc/tund/keys/wg.key", str(peer_key)))
    rc, out2, err = run(["check", str(peer_path)], capsys)
    assert rc == 0, err
    assert "ok (1 interface, 1 tunnel)" in out2
    peer = tomllib.loads(peer_path.read_text())
    assert peer["tunnels"]["wg"]["remote"] == "site-a.example:51820"
    assert peer["tunnels"]["wg"]["peer_public_key"] == keys.public_key(
        key.read_text().strip())
    assert peer["interfaces"]["tun0"]["addresses"] == ["10.235.3.2/24"]


def test_peer_config_without_endpoint_or_key_needs_filling_in(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, key, _ = _site(tmp_path)
    key.chmod(0o644)  # refused as a key file: check fails too, so test peer-config alone
    rc, out, err = run(["peer-config", "wg", str(path)], capsys)
    assert rc == 1 and "check" not in out and "private_key_file" in err
    key.chmod(0o600)
    rc, out, err = run(["peer-config", "wg", str(path)], capsys)
    assert rc == 0 and "FILL IN" in out
    rc, _, err = run(["peer-config", "nope", str(path)], capsys)
    assert rc == 1 and "no tunnel named 'nope' (configured: wg)" in err


# --------------------------------------------------------------------------- the daemon's file


@pytest.fixture
def daemon_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[Path, Path]]:
    """A daemon stand-in on a socket whose status names ``tmp_path/site/tunnels.toml``."""
    conf = tmp_path / "site" / "tunnels.toml"
    conf.parent.mkdir()

    async def dispatch(cmd: str, args: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
        return {**STATUS, "daemon": {**STATUS["daemon"], "config": str(conf)}}

    path = tmp_path / "control.sock"
    monkeypatch.delenv("TUND_CONFIG", raising=False)
    monkeypatch.delenv("TUND_CONTROL_SOCKET", raising=False)
    with ServerThread(path, dispatch):
        yield path, conf


CONNECTING = """
[interfaces.tun0]
mode = "tun"
addresses = ["10.235.4.2/24"]

[tunnels.up]
interface = "tun0"
remote = "192.0.2.1:55555"
encryption = "none"
"""


def test_config_and_peer_config_read_the_running_daemons_file(
        daemon_with: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15.13: without PATH they read the file the daemon on --socket runs (they used
    to fail on /etc/tund/tunnels.toml); --config overrides."""
    sock, conf = daemon_with
    conf.write_text(CONNECTING)
    rc, out, err = run(["--socket", str(sock), "config"], capsys)
    assert rc == 0, err
    assert tomllib.loads(out)["tunnels"]["up"]["remote"] == "192.0.2.1:55555"
    rc, out, err = run(["config", "--socket", str(sock)], capsys)
    assert rc == 0 and "192.0.2.1:55555" in out, err
    other = tmp_path / "other.toml"
    other.write_text(CONNECTING.replace("192.0.2.1", "192.0.2.9"))
    rc, out, err = run(["--socket", str(sock), "config", "--config", str(other)], capsys)
    assert rc == 0 and "192.0.2.9:55555" in out and "192.0.2.1:" not in out, err
    rc, out, err = run(["--socket", str(sock), "peer-config", "up"], capsys)
    assert rc == 0 and err == "", err
    peer = tomllib.loads(out)
    assert peer["tunnels"]["up"]["listen"] == "0.0.0.0:55555"
    # the connecting end (.2) proposes the listener's address (.1), not a guessed .3
    assert peer["interfaces"]["tun0"]["addresses"] == ["10.235.4.1/24"]


def test_config_with_a_named_socket_nobody_answers_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TUND_CONFIG", raising=False)
    monkeypatch.setattr("tund.config.default_config_path", lambda: tmp_path / "none.toml")
    rc, _, err = run(["--socket", str(tmp_path / "none.sock"), "config"], capsys)
    assert rc == 1
    assert "cannot ask the daemon on" in err and "none.toml" in err, err


def test_peer_config_of_each_end_proposes_the_others_address(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listener = tmp_path / "a.toml"
    listener.write_text(CONNECTING.replace('remote = "192.0.2.1:55555"',
                                           'listen = "192.0.2.1:55555"')
                        .replace("10.235.4.2/24", "10.235.4.1/24"))
    rc, out, err = run(["peer-config", "up", "--config", str(listener)], capsys)
    assert rc == 0, err
    connecting = tmp_path / "b.toml"
    connecting.write_text(out)
    assert tomllib.loads(out)["interfaces"]["tun0"]["addresses"] == ["10.235.4.2/24"]
    rc, out, err = run(["peer-config", "up", str(connecting)], capsys)
    assert rc == 0, err
    assert tomllib.loads(out)["interfaces"]["tun0"]["addresses"] == ["10.235.4.1/24"]
