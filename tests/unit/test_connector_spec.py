"""A connecting UDP tunnel's worker is given the daemon's socket (issue 19): the spec
carries its fd, the same socket for every worker of the tunnel, marked as the config says
and re-marked by a reload without a new worker; a connecting TCP tunnel gets none.

A real Engine with the fakes of tests/unit/test_reload_steps.py (FakeIp, fake devices,
fake workers)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from tests.unit.test_reload_steps import BatchFakeIp, FakeDevices, _start, fakes  # noqa: F401
from tests.unit.test_supervisor import FakeWorker
from tund.daemon.engine import Engine

CONF = """
[interfaces.zqa0]
mode = "tun"
routes = ["0.0.0.0/0"]
[tunnels.udp]
interface = "zqa0"
remote = "127.0.0.1:9"
encryption = "none"
{mark}
[interfaces.zqb0]
mode = "tun"
[tunnels.tcp]
interface = "zqb0"
remote = "127.0.0.1:9"
transport = "tcp"
encryption = "none"
"""


def _mark(s: socket.socket) -> int:
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
def test_the_worker_gets_the_daemons_marked_socket_kept_across_restarts_and_reloads(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices]) -> None:  # noqa: F811
    ip, _ = fakes
    path = tmp_path / "tunnels.toml"
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> None:
        await _start(eng, CONF.format(mark=""), path)
        first = eng.runners["udp"].worker
        assert isinstance(first, FakeWorker)
        sock = eng.listeners["udp"]
        assert first.spec.role == "remote" and first.spec.socket_fd == sock.fileno()
        assert sock.getsockname()[0] == "0.0.0.0" and _mark(sock) == 51820  # the auto mark
        tcp = eng.runners["tcp"].worker
        assert isinstance(tcp, FakeWorker) and tcp.spec.socket_fd is None
        assert "tcp" not in eng.listeners
        await eng.tunnel_restart("udp")  # a new worker, the same socket
        second = eng.runners["udp"].worker
        assert isinstance(second, FakeWorker) and second is not first
        assert eng.listeners["udp"] is sock and second.spec.socket_fd == sock.fileno()
        path.write_text(CONF.format(mark="fwmark = 4242"))
        done = await eng.reload()
        assert "set fwmark 4242 on the socket of tunnel udp" in done["actions"], done
        assert done["changed"]["tunnels"] == ["udp"]
        assert eng.runners["udp"].worker is second  # re-marked in place
        assert eng.listeners["udp"] is sock and _mark(sock) == 4242
        await eng.shutdown()
        assert eng.listeners == {}

    asyncio.run(go())
