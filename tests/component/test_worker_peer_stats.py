"""The daemon's end of a worker's control socket takes the stats of thousands of peers
(issue 17.5): one datagram each, up to MAX_MESSAGE bytes; a longer one is refused by name."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Sequence
from typing import Any

from tund.supervise.worker import FromWorker, Malformed, WorkerProcess
from tund.workerapi.channel import MAX_MESSAGE
from tund.workerapi.messages import State, Stats
from tund.workerapi.run_as import RunAs
from tund.workerapi.spec import WorkerSpec

SPEC = WorkerSpec(tunnel="t", interface="tun0", mode="tun", transport="udp", role="remote",
                  host="192.0.2.1", port=1, device_fd=0)


class _Child:
    pid = 4242

    def poll(self) -> int | None:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def send_signal(self, sig: int) -> None:
        pass


class _KeepEnd:
    """A launcher that starts nothing and keeps the worker's end of the control socket."""

    def __init__(self) -> None:
        self.end: socket.socket | None = None

    def launch(self, fds: Sequence[int], run_as: RunAs | None) -> _Child:
        self.end = socket.socket(fileno=os.dup(fds[0]))
        return _Child()


def _peer(i: int) -> dict[str, Any]:
    return {"public_key": "k" * 43 + "=", "endpoint": f"198.51.100.{i % 250}:{40000 + i}",
            "latest_handshake": 1_700_000_000.5 + i, "rx_bytes": 10**12 + i,
            "tx_bytes": 10**12 + i, "rx_packets": 10**9 + i, "tx_packets": 10**9 + i,
            "drops": {"not_allowed": i, "decrypt": 1}}


def _receive(payload: bytes) -> list[FromWorker]:
    got: list[FromWorker] = []

    async def go() -> None:
        launcher = _KeepEnd()
        cls = type("W", (WorkerProcess,), {"LAUNCHER": launcher})
        w = cls(SPEC, got.append, lambda code: None)
        w.spawn(asyncio.get_running_loop())
        assert launcher.end is not None
        launcher.end.setblocking(True)
        launcher.end.recv(MAX_MESSAGE)  # the start message
        launcher.end.send(payload)
        for _ in range(200):  # bounded: 2 s
            if got:
                break
            await asyncio.sleep(0.01)
        launcher.end.close()
        w._closed()

    asyncio.run(go())
    return got


def test_stats_of_many_peers_arrive_whole() -> None:
    """3,000 peers (~800 KiB) as root, whose daemon forces the send buffer; 1,200 (~330 KiB:
    what wmem_max allows) otherwise. Both beyond the old 64 KiB read and the default
    208 KiB buffer."""
    count = 3000 if os.geteuid() == 0 else 1200
    peers = {f"peer-{i:04d}": _peer(i) for i in range(count)}
    payload = State("up", None, None, Stats.of({**Stats().as_dict(), "peers": peers})).encode()
    assert 256 * 1024 < len(payload) <= MAX_MESSAGE
    (msg,) = _receive(payload)
    assert isinstance(msg, State)
    assert msg.stats.extra["peers"] == peers


def test_a_datagram_beyond_the_limit_is_refused_by_name() -> None:
    payload = json.dumps({"op": "state", "pad": "x" * MAX_MESSAGE}).encode()
    (msg,) = _receive(payload)
    assert isinstance(msg, Malformed)
    assert f"of {MAX_MESSAGE} bytes or more" in msg.error
