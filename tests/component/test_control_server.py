"""ControlServer <-> client over a real Unix socket in a temp dir, with stand-in dispatchers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.control_support import ServerThread
from tund.control import client, protocol
from tund.control.client import DaemonUnreachable
from tund.control.protocol import CommandError, ErrorCode
from tund.control.server import ControlServer, ControlSocketError, PeerCred
from tund.errors import ConfigError, ConfigIssue, ControlError


async def echo_dispatch(cmd: str, args: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
    """Answers like a tiny daemon: a few commands, each error kind on request."""
    if cmd == "echo":
        return {"args": args, "peer": [peer.pid, peer.uid, peer.gid]}
    if cmd == "sleep":
        await asyncio.sleep(float(args["seconds"]))
        return {"slept": args["seconds"]}
    if cmd == "invalid":
        raise ConfigError([ConfigIssue("/etc/t.toml", 3, "tunnels.a.mtu", "too big (got 70000)"),
                           ConfigIssue("/etc/t.toml", 9, "tunnels.b", "unknown key")])
    if cmd == "crash":
        raise RuntimeError("secret internals /root/x")
    if cmd == "not-a-dict":
        return [1, 2]  # type: ignore[return-value]
    raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {cmd!r}")


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def server(sock_path: Path) -> Any:
    with ServerThread(sock_path, echo_dispatch, idle_timeout=1.0) as srv:
        yield srv


def raw_connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def read_reply(s: socket.socket) -> dict[str, Any]:
    buf = b""
    deadline = time.monotonic() + 5
    while not buf.endswith(b"\n"):
        assert time.monotonic() < deadline, f"no full reply, got {buf!r}"
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


def test_call_returns_result_and_peer_credentials(server: ServerThread) -> None:
    result = client.call(str(server.path), "echo", {"x": 1})
    assert result["args"] == {"x": 1}
    assert result["peer"] == [os.getpid(), os.getuid(), os.getgid()]


def test_error_codes_reach_the_client(server: ServerThread) -> None:
    with pytest.raises(ControlError) as info:
        client.call(str(server.path), "frobnicate")
    assert (info.value.code, str(info.value)) == ("unknown-command", "unknown command 'frobnicate'")
    with pytest.raises(ControlError) as info:
        client.call(str(server.path), "invalid")
    assert info.value.code == "invalid-config"
    assert str(info.value).splitlines() == [
        "/etc/t.toml:3: tunnels.a.mtu: too big (got 70000)",
        "/etc/t.toml:9: tunnels.b: unknown key"]


@pytest.mark.parametrize("cmd", ["crash", "not-a-dict"])
def test_unexpected_exception_is_internal_and_hides_details(
        server: ServerThread, cmd: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tund.control.server"), \
            pytest.raises(ControlError) as info:
        client.call(str(server.path), cmd)
    assert info.value.code == "internal"
    assert "daemon log" in str(info.value)
    assert "secret" not in str(info.value)
    assert any(r.exc_info for r in caplog.records), "traceback not logged"


def test_many_requests_on_one_connection(server: ServerThread) -> None:
    with client.Connection(str(server.path), timeout=5) as conn:
        for i in range(20):
            assert conn.call("echo", {"i": i})["args"] == {"i": i}
        with pytest.raises(ControlError):
            conn.call("nope")
        assert conn.call("echo")["args"] == {}


def test_pipelined_requests_answered_in_order(server: ServerThread) -> None:
    with raw_connect(server.path) as s:
        s.sendall(b"".join(protocol.encode_request(i, "echo", {"i": i}) for i in range(5)))
        buf = b""
        deadline = time.monotonic() + 5
        while buf.count(b"\n") < 5 and time.monotonic() < deadline:
            buf += s.recv(65536)
    ids = [json.loads(line)["id"] for line in buf.splitlines()]
    assert ids == [0, 1, 2, 3, 4]


def test_malformed_line_gets_error_and_connection_survives(server: ServerThread) -> None:
    with raw_connect(server.path) as s:
        s.sendall(b"this is not json\n")
        reply = read_reply(s)
        assert reply["ok"] is False and reply["error"]["code"] == "bad-request"
        assert reply["id"] is None
        s.sendall(b'{"v":99,"id":5,"cmd":"echo"}\n')
        reply = read_reply(s)
        assert (reply["id"], reply["error"]["code"]) == (5, "version-mismatch")
        s.sendall(protocol.encode_request(6, "echo"))
        assert read_reply(s)["ok"] is True


def test_oversize_request_gets_error_then_close(sock_path: Path) -> None:
    with ServerThread(sock_path, echo_dispatch, max_request=1024) as srv, \
            raw_connect(srv.path) as s:
        s.sendall(b'{"v":1,"id":1,"cmd":"echo","args":{"pad":"' + b"a" * 4000 + b'"}}\n')
        reply = read_reply(s)
        assert reply["error"]["code"] == "too-large"
        assert s.recv(10) == b"", "connection should be closed after an oversize request"
        # ... while a request just under the limit is fine
        assert client.call(str(srv.path), "echo", {"pad": "a" * 900})["args"]["pad"]


def test_concurrent_clients_do_not_wait_for_each_other(server: ServerThread) -> None:
    results: list[float] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            start = time.monotonic()
            client.call(str(server.path), "sleep", {"seconds": 0.5}, timeout=5)
            results.append(time.monotonic() - start)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(20)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(results) == 20
    # one after another would take 20 * 0.5 s
    assert time.monotonic() - start < 5, "requests were served one after another"


def test_stalled_half_line_client_does_not_block_others_and_is_dropped(
        sock_path: Path) -> None:
    with ServerThread(sock_path, echo_dispatch, idle_timeout=3.0) as srv, \
            raw_connect(srv.path) as stalled:
        stalled.sendall(b'{"v":1,"id":1,"cmd":"ec')
        t0 = time.monotonic()
        assert client.call(str(srv.path), "echo", timeout=5)["args"] == {}
        assert time.monotonic() - t0 < 2.5, "the stalled client held up another"
        stalled.settimeout(10)
        assert stalled.recv(10) == b""  # dropped after idle_timeout
        assert 2.5 < time.monotonic() - t0 < 8


def test_socket_mode_and_directory(sock_path: Path, server: ServerThread) -> None:
    st = sock_path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o755


def test_group_is_applied(tmp_path: Path) -> None:
    gid = os.getgroups()[-1] if os.getgroups() else os.getgid()
    path = tmp_path / "g.sock"
    with ServerThread(path, echo_dispatch, group=str(gid)):
        assert path.stat().st_gid == gid


def test_unknown_group_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ControlSocketError, match="no such group"):
        ServerThread(tmp_path / "g.sock", echo_dispatch, group="no-such-group-tund").start()


def test_close_unlinks_socket(sock_path: Path) -> None:
    with ServerThread(sock_path, echo_dispatch):
        assert sock_path.exists()
    assert not sock_path.exists()


def test_stale_socket_is_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # the path stays, nobody listens: a stale socket
    with pytest.raises(DaemonUnreachable) as info:
        client.call(str(sock_path), "echo")
    assert info.value.reason == "refused"
    with ServerThread(sock_path, echo_dispatch):
        assert client.call(str(sock_path), "echo")["args"] == {}


def test_live_socket_is_refused(sock_path: Path, server: ServerThread) -> None:
    with pytest.raises(ControlSocketError, match="another tund is running on"):
        ServerThread(sock_path, echo_dispatch).start()
    # the first server still answers
    assert client.call(str(sock_path), "echo")["args"] == {}


def test_non_socket_path_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ServerThread(path, echo_dispatch).start()
    assert path.read_text() == "keep me"


def test_replaced_socket_is_not_unlinked_by_old_server(sock_path: Path) -> None:
    async def scenario() -> None:
        srv = ControlServer(sock_path, echo_dispatch)
        await srv.start()
        sock_path.unlink()
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(sock_path))
        try:
            await srv.close()
            assert sock_path.exists(), "close() removed a socket it did not create"
        finally:
            other.close()

    asyncio.run(scenario())


def test_close_drops_connected_clients(sock_path: Path) -> None:
    srv = ServerThread(sock_path, echo_dispatch, idle_timeout=60)
    srv.start()
    with raw_connect(sock_path) as served, raw_connect(sock_path) as fresh:
        served.sendall(protocol.encode_request(1, "echo"))
        assert read_reply(served)["ok"] is True
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 5
        assert served.recv(10) == b""
        # accepted-and-closed reads EOF; still in the backlog reads a reset
        with contextlib.suppress(ConnectionResetError):
            assert fresh.recv(10) == b""


def test_missing_socket_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable) as info:
        client.call(str(tmp_path / "nope.sock"), "status")
    assert info.value.reason == "missing"
    assert "no control socket at" in str(info.value)


def test_permission_denied_is_reported(sock_path: Path, server: ServerThread) -> None:
    os.chmod(sock_path, 0)
    # root bypasses file permissions: drop the effective uid around the call
    euid = os.geteuid()
    if euid == 0:
        os.seteuid(65534)
    try:
        with pytest.raises(DaemonUnreachable) as info:
            client.call(str(sock_path), "echo", timeout=5)
    finally:
        if euid == 0:
            os.seteuid(0)
    assert info.value.reason == "permission"
    assert "permission denied on" in str(info.value)


def test_default_socket_matches_config() -> None:
    from tund import config

    assert client.DEFAULT_CONTROL_SOCKET == config.DEFAULT_CONTROL_SOCKET


def test_client_timeout(server: ServerThread) -> None:
    with pytest.raises(DaemonUnreachable) as info:
        client.call(str(server.path), "sleep", {"seconds": 3}, timeout=0.3)
    assert info.value.reason == "timeout"


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUND_CONTROL_SOCKET", raising=False)
    assert client.default_socket_path() == "/run/tund/control.sock"
    monkeypatch.setenv("TUND_CONTROL_SOCKET", "/tmp/x.sock")
    assert client.default_socket_path() == "/tmp/x.sock"
    assert client.default_socket_path("/a.sock") == "/a.sock"


def test_daemon_closing_without_reply_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def accept_and_hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    t = threading.Thread(target=accept_and_hang_up)
    t.start()
    try:
        with pytest.raises(DaemonUnreachable) as info:
            client.call(str(path), "status", timeout=5)
        assert info.value.reason == "closed"
        assert "without answering" in str(info.value)
    finally:
        t.join(5)
        listener.close()


def test_silent_client_is_dropped_after_idle_timeout(server: ServerThread) -> None:
    with raw_connect(server.path) as silent:
        t0 = time.monotonic()
        assert silent.recv(10) == b""
        assert 0.5 < time.monotonic() - t0 < 4


def test_socket_in_a_dir_others_may_write_is_refused(tmp_path: Path) -> None:
    """issue 16.7: the daemon will not bind where someone else could swap the socket."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)

    async def go() -> None:
        with pytest.raises(ControlSocketError) as info:
            await ControlServer(d / "run" / "control.sock", echo_dispatch).start()
        assert f"refusing control socket {d}/run/control.sock: directory {d} is " \
               "group- and other-writable (mode 0777)" in str(info.value)

    asyncio.run(go())
    assert not (d / "run").exists()  # refused before anything was made


def test_socket_mode_is_set_at_bind_never_by_path_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No chmod by path after bind (it would follow a link put there meanwhile): the socket
    is born 0660 and its group is set with lchown."""
    from tund.control import server as server_mod

    def no_chmod(*a: Any, **k: Any) -> None:
        raise AssertionError(f"chmod by path after bind: {a}")

    chowns: list[tuple[Any, ...]] = []
    real_chown = os.chown

    def chown(*a: Any, **k: Any) -> None:
        chowns.append((*a, k.get("follow_symlinks", True)))
        real_chown(*a, **k)

    monkeypatch.setattr(server_mod.os, "chmod", no_chmod)
    monkeypatch.setattr(server_mod.os, "chown", chown)
    path = tmp_path / "control.sock"
    sock = server_mod.bind_control_socket(path, os.getegid())
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert chowns == [(path, -1, os.getegid(), False)]
    finally:
        sock.close()
