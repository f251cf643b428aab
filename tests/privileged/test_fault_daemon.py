"""Fault injection on whole daemons: kill -9 and restart; the peer daemon away for 30 s.

Figures are printed (run with ``-s``) and copied into tests/FAULTS.md.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults import (
    Probe,
    daemon_section,
    diff,
    fault_sites,
    ip_state,
    netns_inode,
    orphan_workers,
    stable_fd_count,
    start_pair,
    status,
    teardown_checked,
    tun_ifaces,
    wait_until,
    workers_in,
)

pytestmark = pytest.mark.usefixtures("privileged")

OUTAGE = 30.0


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_kill9_daemon_workers_exit_device_kept_new_daemon_adopts(tmp_path: Path,
                                                                 transport: str) -> None:
    ts = fault_sites(tmp_path)
    try:
        _, ib = start_pair(ts, transport)
        ts.b.wait_state("t1", "up")
        assert ts.b.proc is not None
        ino = netns_inode(ts.b.ns)
        old_workers = workers_in(ino)
        assert len(old_workers) == 1, old_workers
        fds0 = stable_fd_count(ts.b.proc.pid)
        before = ip_state(ts.b.ns, ib)
        with Probe(ts.b.ns, ts.a.ns, ts.inner("a")) as probe:
            time.sleep(1.0)
            t_kill = time.monotonic()
            assert ts.b.stop(signal.SIGKILL) == -signal.SIGKILL
            orphans = orphan_workers({ino})
            t_exit = wait_until("orphan workers exit", lambda: not workers_in(ino), 5)
            mid = ip_state(ts.b.ns, ib)
            time.sleep(1.0)  # the daemon stays dead a while
            ts.b.start()
            t_start = time.monotonic() - t_kill
            ts.b.wait_state("t1", "up", within=15)
            time.sleep(1.5)
            res = probe.stop()
        after = ip_state(ts.b.ns, ib)
        assert ts.b.proc is not None
        new_workers = workers_in(ino)
        fds1 = stable_fd_count(ts.b.proc.pid)
        print(f"\n[fault 3/{transport}] kill -9 daemon: {len(orphans)} orphan worker(s) "
              f"(ppid {[o.ppid for o in orphans]}) exited by themselves after {t_exit:.2f}s; "
              f"new daemon answering {t_start:.2f}s after the kill; probe: {res.summary()}")
        print(f"[fault 3/{transport}] ip diff before->dead: {diff(before, mid) or 'none'}; "
              f"before->after: {diff(before, after) or 'none'}; daemon fds {fds0} -> {fds1}")
        # the worker saw its control socket close and left on its own (not killed)
        assert ts.b.log.read_text().count("control socket closed (the daemon is gone)") == 1
        assert diff(before, mid) == [], "device state changed while the daemon was dead"
        assert diff(before, after) == [], "device state changed after the new daemon"
        assert [w.pid for w in new_workers] != [w.pid for w in old_workers]
        assert len(new_workers) == 1 and new_workers[0].ppid == ts.b.proc.pid
        assert tun_ifaces(new_workers[0].pid) == [ib]
        assert status(ts.b)["interfaces"][ib]["ifindex"] == before["ifindex"]
        assert fds1 == fds0
        assert res.recovered, res.summary()
        assert ts.a.ns.ping(ts.inner("b"), count=3)
        left = teardown_checked(ts)
        print(f"[fault 3/{transport}] {left.summary()}")
        assert left.clean(), left.summary()
    finally:
        ts.a.stop()
        ts.b.stop()


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_peer_daemon_away_30s_tunnel_recovers_by_itself(tmp_path: Path, transport: str) -> None:
    ts = fault_sites(tmp_path)
    try:
        start_pair(ts, transport)
        b_pid = ts.b.wait_state("t1", "up")["pid"]
        with Probe(ts.b.ns, ts.a.ns, ts.inner("a")) as probe:
            time.sleep(1.0)
            assert ts.a.stop() == 0  # SIGTERM: the listening peer is gone
            time.sleep(OUTAGE)
            ts.a.start()
            t_back = time.monotonic()
            ts.b.wait_state("t1", "up", within=20)
            wait_until("traffic through the tunnel again",
                       lambda: ts.a.ns.ping(ts.inner("b"), timeout=0.5), 20, step=0.05)
            time.sleep(1.5)
            res = probe.stop()
        after_restart = [t for t in res.arrivals if t > t_back]
        recovery = after_restart[0] - t_back if after_restart else float("inf")
        b_now = ts.b.tunnel("t1")
        print(f"\n[fault 4/{transport}] peer daemon away {OUTAGE:.0f}s: first probe datagram "
              f"{recovery:.2f}s after the peer answered again; probe: {res.summary()}; "
              f"worker pid {b_pid} -> {b_now['pid']}, restarts {b_now['restarts']}")
        assert res.recovered, res.summary()
        assert recovery < 10.0 + 2.0  # reconnect_max (default 10 s) plus slack
        assert b_now["pid"] == b_pid  # the remote side reconnected by itself, no crash
        left = teardown_checked(ts)
        print(f"[fault 4/{transport}] {left.summary()}")
        assert left.clean(), left.summary()
    finally:
        ts.a.stop()
        ts.b.stop()


def test_daemon_stall_does_not_kill_healthy_workers(tmp_path: Path) -> None:
    ts = fault_sites(tmp_path)
    try:
        start_pair(ts, "tcp", daemon_b=daemon_section(ping_interval=0.2, ping_timeout=1.0))
        old = ts.b.wait_state("t1", "up")
        assert ts.b.proc is not None
        os.kill(ts.b.proc.pid, signal.SIGSTOP)  # the daemon stalls; its worker is healthy
        time.sleep(2.0)
        os.kill(ts.b.proc.pid, signal.SIGCONT)
        time.sleep(1.5)
        new = status(ts.b, "t1")["tunnels"]["t1"]
        print(f"\n[fault 3b] daemon stalled 2.0s (ping_timeout 1.0s): worker pid "
              f"{old['pid']} -> {new['pid']}, restarts {new['restarts']}, last_error "
              f"{new['last_error']!r}")
        assert (new["pid"], new["restarts"]) == (old["pid"], 0), new
    finally:
        ts.a.stop()
        ts.b.stop()
