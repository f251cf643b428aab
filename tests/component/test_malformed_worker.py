"""A real worker that sends the daemon a malformed message is killed and replaced (16.4).

The worker is spawned (``python -m tund.relay``) with ``WorkerSpec.test_malformed`` set
for its first incarnation only: it sends ``{"op": "state", ... "stats": {"rx_packets":
"pwn", ...}}`` before its first packet. The runner must kill it, restart it through the
usual backoff, and keep ``status()`` working with integer counters throughout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest

from tests.relay_support import fake_device, listening_socket
from tund.states import TunnelState
from tund.supervise.runner import Limits, TunnelRunner
from tund.supervise.worker import WorkerProcess
from tund.workerapi.spec import WorkerSpec


def test_a_worker_sending_a_malformed_state_is_replaced_and_status_keeps_working(
        caplog: pytest.LogCaptureFixture) -> None:
    dev, dev_worker = fake_device()
    sock = listening_socket("udp")
    base = WorkerSpec(tunnel="bad", interface="bad0", mode="tun", transport="udp",
                      role="listen", host="127.0.0.1", port=sock.getsockname()[1],
                      device_fd=dev_worker.fileno(), socket_fd=sock.fileno())
    specs = [dataclasses.replace(base, test_malformed=True)]

    def make_spec() -> WorkerSpec:
        return specs.pop() if specs else base

    async def go() -> None:
        r = TunnelRunner("bad", make_spec, Limits(backoff_min=0.05, ping_interval=0.1),
                         {"interface": "bad0"}, spawn=WorkerProcess)
        r.start()
        first = r.worker
        assert first is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = r.status()  # never raises, counters stay integers
            assert isinstance(st["rx_packets"], int), st
            if r.restarts >= 1 and r.state == TunnelState.CONNECTING:
                break
            await asyncio.sleep(0.02)
        assert r.restarts == 1, r.status()
        assert r.worker is not None and r.worker is not first
        err = r.last_error or ""
        assert "malformed control message" in err and "stats.rx_packets" in err, err
        assert "'pwn'" in err, err
        await r.refresh()  # the replacement answers pings: a healthy worker
        assert r.status()["rx_packets"] == 0
        await r.stop()

    try:
        with caplog.at_level(logging.WARNING):
            asyncio.run(go())
    finally:
        dev.close()
        dev_worker.close()
        sock.close()
    assert "field stats.rx_packets must be an integer >= 0 (got 'pwn')" in caplog.text
