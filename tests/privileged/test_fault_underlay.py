"""Fault injection on the underlay: the veth link down for 30 s.

The worker must neither crash nor busy-loop while its path is gone (CPU time from
/proc/PID/stat over the outage), and the tunnel must come back by itself. Figures are
printed (run with ``-s``) and copied into tests/FAULTS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults import (
    Probe,
    cpu_seconds,
    fault_sites,
    start_pair,
    teardown_checked,
    wait_until,
)

pytestmark = [pytest.mark.usefixtures("privileged"), pytest.mark.slow]

OUTAGE = 30.0


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_underlay_down_30s_recovers_without_busy_loop(tmp_path: Path, transport: str) -> None:
    ts = fault_sites(tmp_path)
    try:
        start_pair(ts, transport)
        wa = ts.a.wait_state("t1", "up")["pid"]
        wb = ts.b.wait_state("t1", "up")["pid"]
        with Probe(ts.b.ns, ts.a.ns, ts.inner("a")) as probe:
            time.sleep(1.0)
            cpu0 = {pid: cpu_seconds(pid) for pid in (wa, wb)}
            ts.b.ns.run("ip", "link", "set", ts.vb, "down")
            time.sleep(OUTAGE)
            cpu = {pid: cpu_seconds(pid) - c for pid, c in cpu0.items()}
            ts.b.ns.run("ip", "link", "set", ts.vb, "up")
            t_up = time.monotonic()
            wait_until("ping a -> b through the tunnel",
                       lambda: ts.a.ns.ping(ts.inner("b"), timeout=0.5), 60, step=0.05)
            t_ping = time.monotonic() - t_up
            time.sleep(1.5)
            res = probe.stop()
        after = [t for t in res.arrivals if t > t_up]
        recovery = after[0] - t_up if after else float("inf")
        now_a, now_b = ts.a.tunnel("t1"), ts.b.tunnel("t1")
        print(f"\n[fault 5/{transport}] underlay down {OUTAGE:.0f}s: worker CPU over the "
              f"outage a {cpu[wa]:.2f}s, b {cpu[wb]:.2f}s; probe back {recovery:.2f}s and "
              f"ping a->b back {t_ping:.2f}s after link up; probe: {res.summary()}; "
              f"pids a {wa}->{now_a['pid']}, b {wb}->{now_b['pid']}; "
              f"b errors {now_b['errors']}, drops {now_b['drops']}")
        assert cpu[wa] < 1.0 and cpu[wb] < 1.0, cpu
        assert res.recovered, res.summary()
        assert (now_a["pid"], now_b["pid"]) == (wa, wb)  # no crash, no restart
        left = teardown_checked(ts)
        print(f"[fault 5/{transport}] {left.summary()}")
        assert left.clean(), left.summary()
    finally:
        ts.a.stop()
        ts.b.stop()
