"""Fast recovery of an encrypted listener (issue 15.8): traffic back within 2 s.

A WireGuard listener's replacement worker knows no peer until the peer speaks again; the
connecting end only rekeys after its session goes stale (about 15 s of silence). tund keeps
each tunnel's last authenticated peer endpoint (in the daemon, and in a file beside the
control socket across a daemon restart), hands it to the new worker, which initiates at
once; a reload that changes only ``keepalive`` is applied to the running worker.

Every case runs a 10 ms probe b -> a through the tunnel and measures the longest gap.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults import (
    Probe,
    call,
    fault_sites,
    start_pair,
    status,
    teardown_checked,
    tunnel_config,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("privileged")

GOAL = 2.0  # seconds of interruption allowed


def _worker_pid(site: object, tunnel: str = "t1") -> int | None:
    try:
        t = status(site, tunnel)["tunnels"][tunnel]  # type: ignore[arg-type]
    except Exception:  # the daemon may be restarting
        return None
    pid = t.get("pid")
    return pid if isinstance(pid, int) and t.get("state") == "up" else None


@pytest.mark.parametrize("fault", ["kill9", "restart", "daemon", "keepalive"])
def test_listener_side_recovers_within_two_seconds(tmp_path: Path, fault: str) -> None:
    ts = fault_sites(tmp_path)
    try:
        ia, _ = start_pair(ts, "udp", encryption="wireguard", port=51820)
        old = ts.a.wait_state("t1", "up")
        with Probe(ts.b.ns, ts.a.ns, ts.inner("a")) as probe:
            time.sleep(1.0)
            if fault == "kill9":
                os.kill(old["pid"], signal.SIGKILL)
            elif fault == "restart":
                call(ts.a, "restart", {"tunnel": "t1"})
            elif fault == "daemon":
                ts.a.stop()
                ts.a.start()
            else:
                ts.a.write(tunnel_config(ts, "a", ia, "udp", 51820, "t1", "wireguard",
                                         "keepalive = 7"))
                ts.a.reload()
            wait_until("listener worker up", lambda: _worker_pid(ts.a) is not None, 15)
            time.sleep(GOAL + 1.0)
            res = probe.stop()
        new = status(ts.a, "t1")["tunnels"]["t1"]
        print(f"\n[recovery/{fault}] listener a: worker {old['pid']} -> {new['pid']}; "
              f"probe: {res.summary()}")
        assert res.recovered, res.summary()
        if fault == "daemon":  # the gap includes the daemon's own stop and start
            t_restart = 1.5
            assert res.longest_gap < GOAL + t_restart, res.summary()
        else:
            assert res.longest_gap < GOAL, res.summary()
        if fault == "keepalive":
            assert new["pid"] == old["pid"], "a keepalive change must not restart the worker"
            assert new.get("keepalive") == 7, new
        else:
            assert new["pid"] != old["pid"], new
        left = teardown_checked(ts)
        assert left.clean(), left.summary()
    finally:
        ts.a.stop()
        ts.b.stop()
