"""Tunnel supervision with a fake worker: backoff, crash loops, hung workers, counters."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from tund.states import TunnelState, can_move
from tund.supervise.runner import Limits, TunnelRunner
from tund.workerapi.messages import Message, Pong, State, Stats
from tund.workerapi.spec import WorkerSpec

SPEC = WorkerSpec(tunnel="t", interface="tun0", mode="tun", transport="udp", role="remote",
                  host="192.0.2.1", port=1, device_fd=-1)


class FakeWorker:
    """Stands in for WorkerProcess; tests drive its messages and death."""

    all: list[FakeWorker] = []
    answer_pings = True

    def __init__(self, spec: WorkerSpec, on_message: Callable[[Any], None],
                 on_exit: Callable[[int | None], None]) -> None:
        self.spec, self.on_message, self.on_exit = spec, on_message, on_exit
        self.pid = 1000 + len(FakeWorker.all)
        self.killed = False
        self.sent: list[dict[str, Any]] = []
        FakeWorker.all.append(self)

    def spawn(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def drain(self) -> None:
        pass

    def send(self, message: Message) -> bool:
        msg = json.loads(message.encode())  # as the worker would read it
        self.sent.append(msg)
        if msg["op"] == "ping" and FakeWorker.answer_pings and not self.killed:
            asyncio.get_running_loop().call_soon(
                self.on_message, Pong(msg["seq"], Stats(rx_packets=5, rx_bytes=500,
                                                        drops={"oversize": 1})))
        return True

    def kill(self, sig: int = 9) -> None:
        self.killed = True
        asyncio.get_running_loop().call_soon(self.on_exit, -sig)

    async def stop(self, grace: float = 2.0) -> None:
        self.on_exit(0)


def _runner(limits: Limits) -> TunnelRunner:
    FakeWorker.all = []
    FakeWorker.answer_pings = True
    return TunnelRunner("t", lambda: SPEC, limits, {"interface": "tun0"},
                        spawn=FakeWorker)  # type: ignore[arg-type]


def test_states_module_transitions() -> None:
    assert can_move(TunnelState.UP, TunnelState.BACKOFF)
    assert not can_move(TunnelState.FAILED, TunnelState.UP)
    assert not can_move(TunnelState.STOPPED, TunnelState.UP)


def test_crash_restarts_with_backoff_and_keeps_counters() -> None:
    async def go() -> None:
        r = _runner(Limits(backoff_min=0.05, backoff_max=0.2, ping_interval=0.02))
        r.start()
        assert r.state == TunnelState.STARTING
        FakeWorker.all[0].on_message(State("up", "192.0.2.1:1", None, Stats()))
        assert r.state == TunnelState.UP
        await r.refresh()
        assert r.status()["rx_packets"] == 5
        FakeWorker.all[0].on_exit(1)  # crash
        assert r.state == TunnelState.BACKOFF
        assert r.status()["rx_packets"] == 5  # folded into the base
        await asyncio.sleep(0.15)
        assert len(FakeWorker.all) == 2 and r.restarts == 1
        await r.refresh()
        st = r.status()
        assert st["rx_packets"] == 10 and st["drops"] == {"oversize": 2}
        assert st["last_error"] == "worker exited with status 1"
        await r.stop()
        assert r.state == TunnelState.STOPPED

    asyncio.run(go())


def test_crash_loop_ends_in_failed_and_is_not_restarted() -> None:
    async def go() -> None:
        r = _runner(Limits(backoff_min=0.01, backoff_max=0.01, crash_limit=3, crash_window=10,
                           ping_interval=0.5))
        r.start()
        for _ in range(10):
            if r.state == TunnelState.FAILED:
                break
            FakeWorker.all[-1].on_exit(2)
            await asyncio.sleep(0.05)
        assert r.state == TunnelState.FAILED
        n = len(FakeWorker.all)
        await asyncio.sleep(0.1)
        assert len(FakeWorker.all) == n  # no more restarts
        r.start()  # `tundctl restart` / reload gets it going again
        assert r.state == TunnelState.STARTING
        await r.stop()

    asyncio.run(go())


def test_hung_worker_is_killed_and_replaced() -> None:
    async def go() -> None:
        r = _runner(Limits(backoff_min=0.01, backoff_max=0.01, ping_interval=0.02,
                           ping_timeout=0.1))
        r.start()
        FakeWorker.all[0].on_message(State("connecting", None, None, Stats()))
        FakeWorker.answer_pings = False
        await asyncio.sleep(0.3)
        assert FakeWorker.all[0].killed
        assert "did not answer pings" in (r.last_error or "")
        FakeWorker.answer_pings = True
        await asyncio.sleep(0.1)
        assert r.worker is not None and r.worker is not FakeWorker.all[0]
        await r.stop()

    asyncio.run(go())


def test_spec_failure_counts_as_crash() -> None:
    async def go() -> None:
        def bad() -> WorkerSpec:
            raise OSError("cannot bind tcp 0.0.0.0:1: Address already in use")

        r = TunnelRunner("t", bad, Limits(backoff_min=5), {})
        r.start()
        assert r.state == TunnelState.BACKOFF
        assert "Address already in use" in (r.last_error or "")
        await r.stop()

    asyncio.run(go())


def test_a_stall_of_the_daemon_does_not_condemn_healthy_workers() -> None:
    """Only pings really sent and left unanswered count: a blocked daemon loop sends none."""
    import time

    async def go() -> None:
        r = _runner(Limits(ping_interval=0.02, ping_timeout=0.1))
        r.start()
        FakeWorker.all[0].on_message(State("up", "x", None, Stats()))
        await asyncio.sleep(0.1)
        time.sleep(0.5)  # the daemon's loop is blocked for 5x ping_timeout
        await asyncio.sleep(0.2)
        assert not FakeWorker.all[0].killed
        assert r.restarts == 0 and len(FakeWorker.all) == 1
        await r.stop()

    asyncio.run(go())


def test_a_starting_worker_gets_a_grace_period() -> None:
    async def go() -> None:
        r = _runner(Limits(ping_interval=0.02, ping_timeout=0.05))
        FakeWorker.answer_pings = False  # still importing Python: no answer yet
        r.start()
        await asyncio.sleep(0.3)
        assert not FakeWorker.all[0].killed  # START_GRACE, not ping_timeout, applies
        await r.stop()

    asyncio.run(go())


def test_one_ping_is_in_flight_at_a_time() -> None:
    """A worker that has not answered (still starting, or busy) is sent no second ping: its
    answer to the first is what counts; once it answers, pings go on every interval."""
    async def go() -> None:
        r = _runner(Limits(ping_interval=0.02, ping_timeout=5.0))
        FakeWorker.answer_pings = False
        r.start()
        w = FakeWorker.all[0]
        await asyncio.sleep(0.3)  # ~15 intervals
        pings = [m["seq"] for m in w.sent if m["op"] == "ping"]
        assert len(pings) == 1, pings
        FakeWorker.answer_pings = True
        w.on_message(Pong(pings[0], Stats()))  # the late answer
        await asyncio.sleep(0.3)
        assert len([m for m in w.sent if m["op"] == "ping"]) >= 5
        assert not w.killed
        await r.stop()

    asyncio.run(go())


def test_a_forked_workers_pid_is_logged_once_known_never_as_pending(
        caplog: pytest.LogCaptureFixture) -> None:
    class LatePid(FakeWorker):  # a forked worker: the fork server says its pid a moment later
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.late, self.pid = self.pid, None  # type: ignore[assignment]

    async def go() -> None:
        FakeWorker.all = []
        r = TunnelRunner("t", lambda: SPEC, Limits(ping_interval=10), {"interface": "tun0"},
                         spawn=LatePid)  # type: ignore[arg-type]
        with caplog.at_level(logging.INFO):
            r.start()
            w = FakeWorker.all[0]
            w.pid = w.late  # type: ignore[attr-defined]
            w.on_message(State("up", "192.0.2.1:1", None, Stats()))
            w.on_message(State("up", "192.0.2.1:1", None, Stats()))
            await r.stop()
        text = caplog.text
        assert "(pending)" not in text and "pid None" not in text, text
        assert text.count(f"worker pid {w.pid} started") == 1, text
    asyncio.run(go())


def test_a_malformed_message_kills_the_worker_and_leaves_the_state_alone() -> None:
    """The worker process reports what it could not decode as Malformed (16.4)."""
    from tund.supervise.worker import Malformed

    async def go() -> None:
        r = _runner(Limits(backoff_min=0.01, backoff_max=0.01, ping_interval=0.02))
        r.start()
        FakeWorker.all[0].on_message(State("up", "192.0.2.1:1", None, Stats()))
        await r.refresh()
        before = r.status()
        FakeWorker.all[0].on_message(Malformed("state message: field stats.rx_packets must "
                                               "be an integer >= 0 (got 'pwn')"))
        assert FakeWorker.all[0].killed
        after = r.status()
        assert after["rx_packets"] == before["rx_packets"] == 5
        await asyncio.sleep(0.1)
        assert r.restarts == 1 and len(FakeWorker.all) == 2
        assert "stats.rx_packets" in (r.last_error or "") and "'pwn'" in (r.last_error or "")
        await r.stop()

    asyncio.run(go())


def _peer_state(peers: dict[str, Any]) -> State:
    """A state message as the wire brings it (decoded by the strict reader)."""
    from tund.workerapi.messages import FROM_WORKER, decode

    data = json.dumps({"op": "state", "state": "up", "peer": None, "error": None,
                       "stats": {**Stats().as_dict(), "peers": peers}}).encode()
    msg = decode(data, FROM_WORKER)
    assert isinstance(msg, State)
    return msg


def _peer(rx: int, tx: int, handshake: float | None, endpoint: str | None,
          drops: dict[str, int]) -> dict[str, Any]:
    return {"public_key": "K", "endpoint": endpoint, "latest_handshake": handshake,
            "rx_bytes": rx, "tx_bytes": tx, "rx_packets": rx // 100, "tx_packets": tx // 100,
            "drops": drops}


def test_peer_counters_survive_a_worker_restart() -> None:
    """(issue 17.5) Each peer's counters and drops are folded like the tunnel's; its
    latest endpoint/handshake is the live worker's unless that one has none yet."""
    async def go() -> None:
        r = _runner(Limits(backoff_min=0.02, backoff_max=0.02, ping_interval=5))
        r.start()
        FakeWorker.all[0].on_message(_peer_state({
            "alice": _peer(1000, 500, 100.0, "192.0.2.5:1", {"not_allowed": 2}),
            "bob": _peer(300, 0, None, None, {})}))
        st = r.status()["peers"]
        assert st["alice"]["rx_bytes"] == 1000 and st["alice"]["drops"] == {"not_allowed": 2}
        assert st["bob"]["latest_handshake"] is None
        FakeWorker.all[0].on_exit(1)  # crash: folded
        assert r.status()["peers"]["alice"]["rx_bytes"] == 1000
        await asyncio.sleep(0.1)
        assert len(FakeWorker.all) == 2
        FakeWorker.all[1].on_message(_peer_state({
            "alice": _peer(200, 100, None, None, {"not_allowed": 1, "decrypt": 4}),
            "carol": _peer(100, 100, 200.0, "192.0.2.9:2", {})}))
        st = r.status()["peers"]
        assert st["alice"].pop("lifetime")["rx_bytes"] == 1200  # (no earlier daemon run)
        assert st["alice"] == {"public_key": "K", "endpoint": "192.0.2.5:1",
                               "latest_handshake": 100.0, "rx_bytes": 1200, "tx_bytes": 600,
                               "rx_packets": 12, "tx_packets": 6,
                               "drops": {"not_allowed": 3, "decrypt": 4}}
        assert st["bob"]["rx_bytes"] == 300 and st["carol"]["latest_handshake"] == 200.0
        assert r.status()["rx_bytes"] == 0  # the tunnel's own counters: the worker's sums
        await r.stop()

    asyncio.run(go())


def test_a_tunnel_without_peers_reports_an_empty_peers_object() -> None:
    r = _runner(Limits())
    assert r.status()["peers"] == {}


def test_the_new_states_are_followed_and_a_why_is_cleared_once_up() -> None:
    """issue 15.1: the worker's handshaking / failing (with why) reach status; once up, a
    why that explained the old state is no longer last_error (a crash's error stays)."""
    async def go() -> None:
        r = _runner(Limits(ping_interval=0.5))
        r.start()
        w = FakeWorker.all[0]
        w.on_message(State("handshaking", "192.0.2.1:1", None, Stats()))
        assert r.state == TunnelState.HANDSHAKING and r.last_error is None
        why = "no reply from 192.0.2.1:1 to 3 handshake initiations"
        w.on_message(State("failing", "192.0.2.1:1", None, Stats(), why))
        assert (r.state, r.status()["last_error"]) == (TunnelState.FAILING, why)
        w.on_message(State("up", "192.0.2.1:1", None, Stats()))
        assert (r.state, r.last_error) == (TunnelState.UP, None)
        r.last_error = "worker killed by signal 9"  # a crash's error outlives a why
        w.on_message(State("connecting", None, None, Stats(), "connect to x: ECONNREFUSED"))
        w.on_message(State("up", "192.0.2.1:1", None, Stats()))
        assert r.last_error == "worker killed by signal 9"
        await r.stop()

    asyncio.run(go())
