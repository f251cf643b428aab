"""Per-peer lifetime counters (issue 18.5): folded across worker restarts by the runner,
kept in counters.json by the CounterStore across daemon restarts; a corrupt or missing
file is a warning and a start from zero. (For real: tests/privileged/test_enroll_server.py
test_lifetime_counters_survive_worker_kill_and_daemon_restart.)"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from tests.unit.test_supervisor import SPEC, FakeWorker
from tund.daemon.counterstore import CounterStore, load, state_dir
from tund.supervise.runner import Limits, TunnelRunner
from tund.workerapi.messages import State, Stats

PEER = {"public_key": "k", "endpoint": None, "latest_handshake": None, "rx_bytes": 100,
        "tx_bytes": 10, "rx_packets": 2, "tx_packets": 1, "drops": {}}


def _stats() -> Stats:
    return Stats(rx_packets=2, extra={"peers": {"alice": dict(PEER)}})


def test_runner_folds_each_worker_into_the_lifetime() -> None:
    async def go() -> None:
        FakeWorker.all = []
        saves: list[bool] = []
        base = {"alice": {"rx_bytes": 1000, "tx_bytes": 0, "rx_packets": 20, "tx_packets": 0}}
        r = TunnelRunner("t", lambda: SPEC, Limits(backoff_min=0.02, ping_interval=10), {},
                         spawn=FakeWorker,  # type: ignore[arg-type]
                         peer_base=base, on_counters=saves.append)
        r.start()
        FakeWorker.all[0].on_message(State("up", None, None, _stats()))
        st = r.status()["peers"]["alice"]
        assert st["rx_bytes"] == 100 and st["lifetime"]["rx_bytes"] == 1100
        FakeWorker.all[0].on_exit(-9)  # kill -9: what it reported last is kept
        assert base["alice"]["rx_bytes"] == 1100 and saves[-1] is True
        await asyncio.sleep(0.1)
        FakeWorker.all[1].on_message(State("up", None, None, _stats()))
        st = r.status()["peers"]["alice"]  # this daemon run's two workers; the lifetime's
        assert st["rx_bytes"] == 200 and st["lifetime"] == {
            "rx_bytes": 1200, "tx_bytes": 20, "rx_packets": 24, "tx_packets": 2}
        await r.stop()

    asyncio.run(go())


def test_store_round_trip_and_throttle(tmp_path: Path) -> None:
    path = tmp_path / "state" / "counters.json"
    s = CounterStore(path)
    s.base("vpn")["alice"] = {"rx_bytes": 5}
    s.save({"vpn": {"alice": {"rx_bytes": 7, "tx_bytes": 1, "rx_packets": 1,
                              "tx_packets": 1}}}, force=True)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    s.save({"vpn": {"alice": {"rx_bytes": 99}}})  # throttled: not written
    assert load(path) == {"vpn": {"alice": {"rx_bytes": 7, "tx_bytes": 1, "rx_packets": 1,
                                            "tx_packets": 1}}}
    again = CounterStore(path)
    assert again.base("vpn")["alice"]["rx_bytes"] == 7
    again.keep_only({"other"})
    assert again.base("vpn") == {}


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"tunnels": 3}', b"\xff\xfe",
                                     json.dumps({"tunnels": {"vpn": {"a": {"rx_bytes": -1,
                                                "tx_bytes": "x", "rx_packets": True}}}}
                                                ).encode()])
def test_corrupt_or_missing_file_is_a_warning_and_zero(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "counters.json"
    with caplog.at_level(logging.WARNING, "tund.daemon.counterstore"):
        assert CounterStore(path).base("vpn") == {}  # missing
        path.write_bytes(content)
        path.chmod(0o600)
        got = CounterStore(path).base("vpn")
    assert got in ({}, {"a": {"tx_packets": 0}})  # only well-formed numbers are kept
    assert any("peer counters" in r.getMessage() for r in caplog.records)


def test_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/tund")
    assert state_dir("/tmp/x/control.sock", "/run/tund/control.sock") == Path("/var/lib/tund")
    monkeypatch.delenv("STATE_DIRECTORY")
    assert state_dir("/run/tund/control.sock", "/run/tund/control.sock") == Path(
        "/var/lib/tund")
    assert state_dir("/tmp/x/control.sock", "/run/tund/control.sock") == Path("/tmp/x")


def test_unit_keeps_a_state_directory() -> None:
    unit = (Path(__file__).resolve().parents[2] / "systemd/tund.service").read_text()
    assert "StateDirectory=tund" in unit.splitlines()
