"""The control socket under abuse: too many clients, stalled clients, huge lines, two daemons.

Each test checks that a well-behaved client is still served promptly while the abuse goes
on, and that the abusive connection is bounded (refused, cut off or answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control_support import ServerThread
from tund.control import client
from tund.control.server import ControlSocketError, PeerCred
from tund.errors import ControlError


async def dispatch(cmd: str, args: dict[str, Any], peer: PeerCred) -> dict[str, Any]:
    if cmd == "sleep":
        await asyncio.sleep(float(args.get("seconds", 0)))
    return {"cmd": cmd, "uid": peer.uid}


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def read_line(s: socket.socket, within: float = 5) -> bytes:
    """One reply line, or b"" if the server closed the connection first."""
    buf = b""
    deadline = time.monotonic() + within
    while not buf.endswith(b"\n"):
        assert time.monotonic() < deadline, f"no reply within {within}s (got {buf!r})"
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    return buf


def closed_within(s: socket.socket, within: float) -> float:
    """Seconds until the server closes ``s`` (its replies read and dropped); fails after."""
    start = time.monotonic()
    s.settimeout(within + 2)
    while True:
        assert time.monotonic() - start < within + 2, "connection still open"
        try:
            if not s.recv(65536):
                return time.monotonic() - start
        except ConnectionResetError:
            return time.monotonic() - start


def timed_call(path: Path, cmd: str = "status") -> float:
    start = time.monotonic()
    assert client.call(str(path), cmd, timeout=5)["cmd"] == cmd
    return time.monotonic() - start


def served_again(path: Path, within: float = 5) -> None:
    """A call succeeds within ``within`` s (closed clients are noticed a few turns late)."""
    deadline = time.monotonic() + within
    while True:
        try:
            client.call(str(path), "status", timeout=1)
            return
        except ControlError as e:
            assert e.code == "busy" and time.monotonic() < deadline, f"not served: {e}"
            time.sleep(0.05)


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "control.sock"


@contextlib.contextmanager
def many(path: Path, n: int) -> Iterator[list[socket.socket]]:
    conns = [connect(path) for _ in range(n)]
    try:
        yield conns
    finally:
        for c in conns:
            c.close()


# The test's clients all have its uid: reserved_uids=() treats it as an ordinary one, and
# per_uid = max_clients gives it the whole shared pool, so the shared limit is tested.


def test_over_the_limit_the_oldest_idle_client_makes_room_for_the_new_one(sock: Path) -> None:
    """issue 15.10: idle clients at the limit no longer lock everyone out with busy."""
    with ServerThread(sock, dispatch, max_clients=4, idle_timeout=30, reserved_uids=(),
                      per_uid=4) as _, many(sock, 4) as idle:
        time.sleep(0.2)  # let the server accept all four idle clients
        assert timed_call(sock) < 1  # served at once: the oldest idle one made room
        reply = json.loads(read_line(idle[0]))
        assert reply["ok"] is False and reply["error"]["code"] == "busy"
        assert "limit 4" in reply["error"]["message"] and "to make room" in \
            reply["error"]["message"]
        assert closed_within(idle[0], 2) < 2


def test_busy_only_when_every_slot_is_handling_a_request(sock: Path) -> None:
    with ServerThread(sock, dispatch, max_clients=2, idle_timeout=30, reserved_uids=(),
                      per_uid=2) as _:
        with many(sock, 2) as conns:
            for i, c in enumerate(conns):
                c.sendall(json.dumps({"v": 1, "id": i + 1, "cmd": "sleep",
                                      "args": {"seconds": 1.5}}).encode() + b"\n")
            time.sleep(0.3)
            extra = connect(sock)
            reply = json.loads(read_line(extra))
            assert reply["error"]["code"] == "busy" and "limit 2" in reply["error"]["message"]
            assert all(json.loads(read_line(c))["ok"] for c in conns)  # never cut off
        served_again(sock)


def test_flood_of_connections_does_not_stall_the_server(sock: Path) -> None:
    """200 clients in waves of 40 (the listen backlog is 64) against a limit of 8, none
    closing: the server never holds more than 8, and a call is still served at once."""
    with ServerThread(sock, dispatch, max_clients=8, idle_timeout=30, reserved_uids=(),
                      per_uid=8) as srv:
        start = time.monotonic()
        held_most = 0
        with contextlib.ExitStack() as stack:
            stack.enter_context(many(sock, 8))
            time.sleep(0.2)
            for _wave in range(5):
                stack.enter_context(many(sock, 40))
                held_most = max(held_most, len(srv.server._slots))
                time.sleep(0.1)  # the backlog is 64: let the server take this wave
            time.sleep(0.2)
            held_most = max(held_most, len(srv.server._slots))
            assert timed_call(sock) < 1
        assert held_most <= 8
        assert time.monotonic() - start < 10
        served_again(sock)

def test_half_a_line_then_silence_is_cut_off_and_others_are_served(sock: Path) -> None:
    with ServerThread(sock, dispatch, idle_timeout=1.0) as _:
        staller = connect(sock)
        staller.sendall(b'{"v": 1, "id": 1, "cmd": "sta')
        assert timed_call(sock) < 0.5  # served while the staller waits
        assert 0.8 < closed_within(staller, 3) < 3


def test_client_that_never_reads_replies_is_dropped(sock: Path) -> None:
    """A client that pipelines requests and never reads fills its buffers, then is cut."""
    with ServerThread(sock, dispatch, idle_timeout=1.0) as _:
        hog = connect(sock)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        line = json.dumps({"v": 1, "id": 1, "cmd": "x" * 4000}).encode() + b"\n"
        hog.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                sent += hog.send(line)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        assert sent > 0
        assert timed_call(sock) < 0.5
        hog.setblocking(True)
        assert closed_within(hog, 6) < 6


def test_oversized_line_answered_too_large_without_reading_it_all(sock: Path) -> None:
    with ServerThread(sock, dispatch, max_request=1024) as _:
        s = connect(sock)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b"{" + b" " * 5000)
        reply = json.loads(read_line(s))
        assert reply["error"]["code"] == "too-large"
        assert "1024" in reply["error"]["message"]
        assert timed_call(sock) < 0.5


def test_second_server_on_the_same_socket_refuses_and_first_keeps_serving(sock: Path) -> None:
    with ServerThread(sock, dispatch) as _:
        second = ServerThread(sock, dispatch)
        with pytest.raises(ControlSocketError, match="another tund is running"):
            second.start()
        assert timed_call(sock) < 0.5


def test_stale_socket_is_replaced_but_a_regular_file_is_not(sock: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()  # the path stays, nothing listens: stale
    with ServerThread(sock, dispatch) as _:
        assert timed_call(sock) < 0.5
    sock.write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ServerThread(sock, dispatch).start()
    assert sock.read_text() == "not a socket"


def test_second_real_daemon_refuses_to_start(tmp_path: Path) -> None:
    """Two ``python -m tund`` processes on one socket: the second exits 1, the first runs."""
    cfg = tmp_path / "tunnels.toml"
    cfg.write_text("[daemon]\n")
    sock = tmp_path / "control.sock"
    argv = [sys.executable, "-m", "tund", "--config", str(cfg), "--control-socket", str(sock)]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists() or not _answers(sock):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "first daemon did not come up"
            time.sleep(0.1)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "another tund is running" in second.stderr
        assert _answers(sock), "the first daemon stopped answering"
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(15)
    assert not sock.exists(), "the first daemon left its socket behind"


def _answers(sock: Path) -> bool:
    try:
        client.call(str(sock), "status", timeout=5)
        return True
    except Exception:
        return False


def test_idle_timeout_and_limits_come_from_the_config() -> None:
    from tund.config import parse_text

    d = parse_text("[daemon]\ncontrol_max_clients = 3\ncontrol_timeout = 2.5\n"
                   "control_max_request = 2048\n").daemon
    assert (d.control_max_clients, d.control_timeout, d.control_max_request) == (3, 2.5, 2048)
    assert os.path.isabs(d.control_socket)


def test_integer_of_5000_digits_gets_bad_request_and_the_connection_stays(
        sock: Path, caplog: pytest.LogCaptureFixture) -> None:
    with ServerThread(sock, dispatch) as _, contextlib.closing(connect(sock)) as s:
        s.sendall(b'{"v":1,"id":' + b"7" * 5000 + b',"cmd":"status"}\n')
        reply = json.loads(read_line(s))
        assert reply["ok"] is False and reply["error"]["code"] == "bad-request"
        assert "digits" in reply["error"]["message"]
        s.sendall(b'{"v":1,"id":2,"cmd":"status","args":{}}\n')
        assert json.loads(read_line(s))["result"]["cmd"] == "status"
    assert "Traceback" not in caplog.text and "failed" not in caplog.text


def test_a_peer_the_daemon_calls_reserved_is_served_when_the_shared_pool_is_busy(
        sock: Path) -> None:
    """issue 15.10: the daemon passes admin_group membership as ``reserved``; here the
    predicate turns true once the shared pool is full of requests in progress."""
    admins = {"now": False}
    server = ServerThread(sock, dispatch, max_clients=2, idle_timeout=30, reserved_uids=(),
                          per_uid=2, reserved=lambda peer: admins["now"])
    with server, many(sock, 2) as conns:
        for i, c in enumerate(conns):
            c.sendall(json.dumps({"v": 1, "id": i + 1, "cmd": "sleep",
                                  "args": {"seconds": 4.0}}).encode() + b"\n")
        time.sleep(1.0)  # both requests in progress, also on a loaded machine
        with pytest.raises(ControlError, match="limit 2"):
            client.call(str(sock), "status", timeout=5)
        admins["now"] = True
        assert timed_call(sock) < 1


def test_a_refusal_sent_before_the_request_could_be_written_is_read(sock: Path) -> None:
    """The daemon refuses a connection over a limit at once (its error line, then close):
    a client that writes its request only afterwards gets EPIPE, and must still report
    the daemon's reason, not a broken pipe."""
    import threading

    from tund.control import protocol

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(1)

    def refuse() -> None:
        conn, _ = listener.accept()
        conn.sendall(protocol.encode_error(None, "busy", "too many connections (limit 2)"))
        conn.close()

    t = threading.Thread(target=refuse)
    t.start()
    try:
        with client.Connection(str(sock), timeout=5) as conn:
            t.join(5)  # refused and closed before the request is written
            with pytest.raises(ControlError, match="limit 2"):
                conn.call("status")
    finally:
        t.join(5)
        listener.close()
