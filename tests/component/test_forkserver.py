"""The fork server (zygote): real workers forked on request, relaying over loopback UDP.

The test process plays the daemon: it becomes a child subreaper (as the daemon does when it
starts the zygote), so forked workers are re-parented to it. The devices are SEQPACKET
socketpairs (one packet per read, like a TUN fd).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.relay_support import fake_device, listening_socket
from tund.relay.process.zygote import WORKER_COMM, ZYGOTE_COMM
from tund.supervise.forkserver import (
    DEATH_LIMIT,
    FORK_FAILED,
    ForkedChild,
    ForkServer,
    SpawnLauncher,
)
from tund.supervise.worker import WorkerProcess, spec_dict, worker_class
from tund.workerapi.spec import WorkerSpec

_PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def server() -> Iterator[ForkServer]:
    """A started fork server; the test process is a subreaper until the test ends."""
    fs = ForkServer(ready_timeout=30.0)
    fs.start()
    try:
        yield fs
    finally:
        fs.close()
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def cmdline(pid: int) -> str:
    """``/proc/PID/cmdline`` as ps shows it (NULs as spaces, trailing padding dropped)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class Tunnel:
    """One worker started through a launcher, with the daemon side's callbacks."""

    def __init__(self, launcher: Any, role: str, port: int = 0, name: str = "",
                 interface: str = "") -> None:
        self.dev, dev_worker = fake_device()
        self.dev.settimeout(5)
        sock = listening_socket("udp") if role == "listen" else None
        self.port = sock.getsockname()[1] if sock else port
        spec = WorkerSpec(tunnel=name or f"fs{role[0]}", interface=interface or f"fs{role[0]}",
                          mode="tun",
                          transport="udp", role=role, host="127.0.0.1",  # type: ignore[arg-type]
                          port=self.port, device_fd=dev_worker.fileno(),
                          socket_fd=sock.fileno() if sock else None)
        self.messages: list[dict[str, Any]] = []
        self.exit_codes: list[int | None] = []
        self.worker = worker_class(None, launcher)(
            spec, lambda m: self.messages.append(json.loads(m.encode())),  # as it came
            self.exit_codes.append)
        self.worker.spawn(asyncio.get_running_loop())
        dev_worker.close()  # the worker holds its own copies now
        if sock:
            sock.close()

    def close(self) -> None:
        self.dev.close()

    async def wait_up(self, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if any(m.get("state") == "up" and m.get("peer") for m in self.messages):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.worker.spec.tunnel}: not up within {within}s: "
                             f"{self.messages[-3:]}")


def test_forked_workers_are_our_children_and_relay(server: ForkServer) -> None:
    async def go() -> None:
        a = Tunnel(server, "listen")
        b = Tunnel(server, "remote", port=a.port)
        await b.wait_up()
        b.dev.send(b"\x45" + b"x" * 99)  # an IPv4-looking packet, b -> a
        await a.wait_up()
        assert (await asyncio.to_thread(a.dev.recv, 2048)) == b"\x45" + b"x" * 99
        assert server.forked == 2 and server.spawned == 0
        assert server.pid is not None and comm(server.pid) == ZYGOTE_COMM
        assert cmdline(server.pid) == "tund: fork server"
        for t in (a, b):
            pid = t.worker.pid
            assert isinstance(pid, int)
            assert ppid(pid) == os.getpid()  # re-parented to us, the subreaper
            assert comm(pid) == f"relay:{t.worker.spec.tunnel}"
            spec = t.worker.spec
            assert cmdline(pid) == f"tund: worker {spec.tunnel} ({spec.interface})"
            # besides stdio: its control end, its device, its underlay socket (passed, or
            # its own for role remote), its epoll fd; nothing of the fork server or of the
            # other worker
            fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}")
                   for fd in os.listdir(f"/proc/{pid}/fd")}
            sockets = sorted(fd for fd, what in fds.items() if fd > 2
                             and what.startswith("socket:"))
            others = [what for fd, what in fds.items() if fd > 2 and fd not in sockets]
            own = [t.worker.spec.device_fd] + ([t.worker.spec.socket_fd]
                                               if t.worker.spec.socket_fd is not None else [])
            assert len(sockets) == 3 and set(own) < set(sockets), fds
            assert others == ["anon_inode:[eventpoll]"], fds
        for t in (a, b):
            await t.worker.stop()
            t.close()
            assert t.exit_codes == [0]

    asyncio.run(go())


def test_killed_worker_reports_its_signal(server: ForkServer) -> None:
    async def go() -> None:
        a = Tunnel(server, "listen")
        deadline = time.monotonic() + 15
        while a.worker.pid is None or not a.messages:
            assert time.monotonic() < deadline, "no message from the forked worker"
            await asyncio.sleep(0.02)
        a.worker.kill(signal.SIGKILL)
        while not a.exit_codes and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert a.exit_codes == [-signal.SIGKILL]
        a.close()

    asyncio.run(go())


def test_dead_fork_server_is_restarted_at_the_next_launch(server: ForkServer) -> None:
    async def go() -> None:
        first = Tunnel(server, "listen")
        deadline = time.monotonic() + 15
        while first.worker.pid is None:
            assert time.monotonic() < deadline, "the fork server did not fork"
            await asyncio.sleep(0.02)
        old = server.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        while server.proc is not None and server.proc.poll() is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        second = Tunnel(server, "listen")
        while second.worker.pid is None:
            assert time.monotonic() < deadline, "the restarted fork server did not fork"
            await asyncio.sleep(0.02)
        assert server.pid not in (None, old) and server.forked == 2
        # the first worker does not depend on the fork server: it runs on
        assert first.worker.pid is not None and first.worker.proc is not None
        assert first.worker.proc.poll() is None
        for t in (first, second):
            await t.worker.stop()
            t.close()

    asyncio.run(go())


def test_fork_server_that_cannot_start_falls_back_to_spawning() -> None:
    fs = ForkServer(argv=["/nonexistent/python", "--control-fd"], retry_after=60)

    async def go() -> None:
        a = Tunnel(fs, "listen")
        assert fs.spawned == 1 and fs.forked == 0
        assert a.worker.proc is not None and not isinstance(a.worker.proc, ForkedChild)
        b = Tunnel(fs, "listen")  # not tried again so soon: spawned at once
        assert fs.spawned == 2
        for t in (a, b):
            await t.worker.stop()
            t.close()
            assert t.exit_codes == [0]

    try:
        asyncio.run(go())
    finally:
        fs.close()
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def test_fork_server_that_never_gets_ready_falls_back(tmp_path: Path,
                                                     dummy: list[int]) -> None:
    script = tmp_path / "silent.py"
    script.write_text("import sys, time\ntime.sleep(30)\n")
    import sys

    fs = ForkServer(argv=[sys.executable, str(script), "--control-fd"], ready_timeout=0.5)
    try:
        child = fs.launch(dummy, None)
        assert fs.spawned == 1 and not isinstance(child, ForkedChild)
        child.wait(10)  # the spawned worker finds no start message's sender and exits
        assert fs.proc is None  # the silent one was stopped
    finally:
        fs.close()
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def dummy() -> Iterator[list[int]]:
    """Fds of a worker that will find its control socket closed before any start message
    (it exits 2): ``[control end, device]``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev, dev_worker = fake_device()
    ours.close()
    try:
        yield [theirs.fileno(), dev_worker.fileno()]
    finally:
        for sock in (theirs, dev, dev_worker):
            sock.close()


def test_refused_request_is_answered_with_its_id(server: ForkServer,
                                                dummy: list[int]) -> None:
    server.launch(dummy, None).wait(10)  # waits for the zygote to be ready
    assert server._sock is not None
    sock = server._sock
    sock.setblocking(True)
    sock.sendmsg([json.dumps({"op": "fork", "id": 7, "fds": [3, 4, 5]}).encode()])
    sock.settimeout(10)
    reply = json.loads(sock.recv(4096))
    assert reply == {"op": "error", "id": 7,
                     "error": "3 fd number(s) named but 0 fd(s) attached"}
    sock.setblocking(False)


def test_refused_child_counts_as_exited() -> None:
    child = ForkedChild(ForkServer(), 1)
    child.send_signal(signal.SIGTERM)  # no pid yet: kept for later
    child.failed("fork server refused: test")
    assert child.poll() == FORK_FAILED and child.wait() == FORK_FAILED


def test_fork_server_exits_when_the_daemon_end_closes(server: ForkServer,
                                                      dummy: list[int]) -> None:
    server.launch(dummy, None).wait(10)
    proc = server.proc
    assert proc is not None and proc.poll() is None
    assert server._sock is not None
    server._sock.close()  # as when the daemon is killed: the zygote reads EOF
    server._sock = None
    assert proc.wait(10) == 0


def test_spawn_launcher_is_the_default() -> None:
    assert isinstance(WorkerProcess.LAUNCHER, SpawnLauncher)
    assert worker_class(None) is WorkerProcess


def test_worker_comm_before_its_start_message(server: ForkServer) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev, dev_worker = fake_device()
    try:
        child = server.launch([theirs.fileno(), dev_worker.fileno()], None)
        assert isinstance(child, ForkedChild) and child.pid is not None  # no loop: waited
        assert ppid(child.pid) == os.getpid()
        deadline = time.monotonic() + 5
        while comm(child.pid) != WORKER_COMM:  # set right after the fork
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ours.close()  # no start message: the worker exits 2
        assert child.wait(10) == 2
    finally:
        for s in (ours, theirs, dev, dev_worker):
            s.close()


def test_a_fork_server_that_keeps_dying_is_given_up_for_a_while(server: ForkServer,
                                                                 dummy: list[int]) -> None:
    for _ in range(DEATH_LIMIT):
        assert isinstance(server.launch(dummy, None), ForkedChild)  # (re)started
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    child = server.launch(dummy, None)
    assert not isinstance(child, ForkedChild) and server.spawned == 1
    assert child.wait(10) == 2  # the spawned worker: control socket closed, no start


def test_start_message_spec_is_to_dict() -> None:
    spec = WorkerSpec(tunnel="t", interface="i", mode="tun", transport="udp", role="listen",
                      host="127.0.0.1", port=1, device_fd=5, socket_fd=6,
                      encryption="wireguard", private_key="k", peer_public_key="p",
                      timers={"rekey_timeout": 1.0})
    assert json.dumps(spec_dict(spec)) == json.dumps(spec.to_dict())
    assert WorkerSpec.from_dict(json.loads(json.dumps(spec_dict(spec)))) == spec


def test_in_the_loop_a_silent_fork_server_never_blocks_a_launch(tmp_path: Path,
                                                                dummy: list[int]) -> None:
    """Issue 15.9: no wait for the ready message nor for room in the request queue while
    the event loop runs; a full queue spawns that worker and keeps the zygote."""
    import sys

    script = tmp_path / "silent.py"
    script.write_text("import sys, time\ntime.sleep(30)\n")
    fs = ForkServer(argv=[sys.executable, str(script), "--control-fd"], ready_timeout=30)

    async def go() -> list[float]:
        times, children = [], []
        fs.start()
        for _ in range(2000):  # until the zygote's queue is full
            t0 = time.monotonic()
            children.append(fs.launch(dummy, None))
            times.append(time.monotonic() - t0)
            if fs.spawned:
                break
        assert fs.spawned >= 1 and fs.forked >= 1, (fs.spawned, fs.forked)
        assert fs.pid is not None  # kept: busy is not dead
        for child in children:
            if not isinstance(child, ForkedChild):
                child.wait(10)
        return times

    try:
        times = asyncio.run(go())
        assert max(times) < 0.5, times  # a spawn takes a few ms; a wait took seconds
    finally:
        fs.close()
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


#: A stand-in zygote: ready at once, then it refuses requests one by one, ``DELAY`` s each,
#: and after ``ANSWERS`` of them it answers nothing more.
SLOW_ZYGOTE = """\
import json, os, socket, sys, time
DELAY, ANSWERS = float(sys.argv[1]), int(sys.argv[2])
sock = socket.socket(fileno=int(sys.argv[-1]))
sock.send(json.dumps({"op": "ready", "pid": os.getpid()}).encode())
answered = 0
while True:
    msg, anc, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(64))
    if not msg:
        break
    for _level, _kind, data in anc:
        for i in range(0, len(data) - len(data) % 4, 4):
            os.close(int.from_bytes(data[i:i + 4], sys.byteorder))
    if answered < ANSWERS:
        time.sleep(DELAY)
        sock.send(json.dumps({"op": "error", "id": json.loads(msg)["id"],
                              "error": "refused slowly"}).encode())
        answered += 1
"""


@pytest.mark.parametrize(("answers", "slow"), [(10, 0), (3, 7)])
def test_a_busy_fork_server_is_kept_and_a_silent_one_stopped(
        tmp_path: Path, dummy: list[int], answers: int, slow: int) -> None:
    """A queue answered one by one, each reply 0.2 s after the one before, 10 requests in
    all (2 s, four times ``request_timeout``), is a busy zygote, not a stuck one: the
    requests are answered, none fails for a stop. One that goes silent after 3 answers is
    stopped ``request_timeout`` after its last answer; the 7 requests left fail."""
    import sys

    script = tmp_path / "slow.py"
    script.write_text(SLOW_ZYGOTE)
    fs = ForkServer(argv=[sys.executable, str(script), "0.2", str(answers), "--control-fd"],
                    request_timeout=0.5, ready_timeout=30)

    async def go() -> list[ForkedChild]:
        fs.start()
        assert await fs.wait_ready(10)
        children = [fs.launch(dummy, None) for _ in range(10)]
        assert all(isinstance(c, ForkedChild) for c in children)
        deadline = time.monotonic() + 10
        while any(c.pending for c in children) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return [c for c in children if isinstance(c, ForkedChild)]

    try:
        children = asyncio.run(go())
        errors = [c.error for c in children]
        assert errors.count("refused slowly") == answers, errors
        assert errors.count("the fork server was stopped before it replied") == slow, errors
        assert all(c.returncode == FORK_FAILED for c in children)
    finally:
        fs.close()
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
