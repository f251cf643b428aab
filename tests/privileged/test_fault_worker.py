"""Fault injection on one worker: kill -9, SIGSTOP (hung), a worker that cannot start.

Each test measures the interruption with a 10 ms UDP probe through the tunnel and ends
with :func:`tests.faults.teardown_checked` (nothing left behind). Run with ``-s`` for
the figures; they are copied into tests/FAULTS.md.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from tests.faults import (
    Probe,
    daemon_section,
    fault_sites,
    fi_name,
    ip_state,
    netns_inode,
    stable_fd_count,
    start_pair,
    status,
    teardown_checked,
    tun_ifaces,
    wait_until,
    workers_in,
)
from tests.sites import plain_tunnel

pytestmark = pytest.mark.usefixtures("privileged")


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_kill9_worker_restarts_on_same_device(tmp_path: Path, transport: str) -> None:
    ts = fault_sites(tmp_path)
    try:
        _, ib = start_pair(ts, transport)
        old = ts.b.wait_state("t1", "up")
        assert old["restarts"] == 0, old  # a fresh streak: the first backoff is the minimum
        before = ip_state(ts.b.ns, ib)
        assert ts.b.proc is not None
        dpid = ts.b.proc.pid
        fds0 = stable_fd_count(dpid)
        with Probe(ts.b.ns, ts.a.ns, ts.inner("a")) as probe:
            time.sleep(1.0)
            os.kill(old["pid"], signal.SIGKILL)
            t_up = wait_until("new worker up", lambda: _replaced(ts.b.sock, old["pid"]), 10)
            time.sleep(1.5)
            res = probe.stop()
        print(f"\n[fault 1/{transport}] kill -9 worker: new worker up after {t_up:.2f}s; "
              f"probe: {res.summary()}")
        assert res.recovered, res.summary()
        assert res.longest_gap < 3.0, res.summary()
        new = status(ts.b, "t1")["tunnels"]["t1"]
        assert new["restarts"] == old["restarts"] + 1, new
        assert "signal 9" in (new["last_error"] or ""), new
        assert ip_state(ts.b.ns, ib) == before  # same ifindex, addresses, routes
        workers = workers_in(ts.b.ns)
        assert [w.pid for w in workers] == [new["pid"]], workers
        assert workers[0].ppid == dpid
        assert tun_ifaces(new["pid"]) == [ib]
        fds1 = stable_fd_count(dpid)
        print(f"[fault 1/{transport}] daemon fds {fds0} -> {fds1}; ifindex {before['ifindex']} "
              f"kept; restarts {old['restarts']} -> {new['restarts']}")
        assert fds1 == fds0
        left = teardown_checked(ts)
        print(f"[fault 1/{transport}] {left.summary()}")
        assert left.clean(), left.summary()
    finally:
        ts.a.stop()
        ts.b.stop()


def _replaced(sock: Path, old_pid: int) -> bool:
    from tund.control import client

    t = client.call(str(sock), "status", {"tunnel": "t1"}, timeout=5)["tunnels"]["t1"]
    return bool(t["pid"] not in (None, old_pid) and t["state"] == "up")


def test_sigstop_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    ts = fault_sites(tmp_path)
    timeout = 1.0
    try:
        _, ib = start_pair(ts, "tcp", daemon_b=daemon_section(ping_interval=0.2,
                                                              ping_timeout=timeout))
        old = ts.b.wait_state("t1", "up")
        ino = netns_inode(ts.b.ns)
        per_dev: Counter[int] = Counter()  # live workers holding ib, per scan
        scans = 0
        t_gone = t_new = t_up = None
        with Probe(ts.b.ns, ts.a.ns, ts.inner("a")) as probe:
            time.sleep(0.5)
            os.kill(old["pid"], signal.SIGSTOP)
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout + 6 and (
                    t_up is None or time.monotonic() - t0 < t_up + 1.0):
                live = workers_in(ino)
                holding = [w for w in live if ib in tun_ifaces(w.pid)]
                per_dev[len(holding)] += 1
                scans += 1
                pids = {w.pid for w in live}
                if t_gone is None and old["pid"] not in pids:
                    t_gone = time.monotonic() - t0
                if t_new is None and pids - {old["pid"]}:
                    t_new = time.monotonic() - t0
                if t_new is not None and t_up is None and _replaced(ts.b.sock, old["pid"]):
                    t_up = time.monotonic() - t0
                time.sleep(0.01)
            time.sleep(0.5)
            res = probe.stop()
        new = status(ts.b, "t1")["tunnels"]["t1"]
        assert t_gone is not None and t_new is not None and t_up is not None, (t_gone, t_new)
        print(f"\n[fault 2] SIGSTOP worker (ping 0.2/{timeout}s): killed after {t_gone:.2f}s, "
              f"new worker after {t_new:.2f}s, up after {t_up:.2f}s; {scans} /proc scans, "
              f"workers holding {ib} per scan: {dict(per_dev)}; probe: {res.summary()}")
        print(f"[fault 2] last_error: {new['last_error']}")
        assert t_new <= timeout + 1.0, f"replaced after {t_new:.2f}s"
        assert max(per_dev) <= 1, f"two workers on {ib} at once: {dict(per_dev)}"
        assert "did not answer pings" in (new["last_error"] or ""), new
        assert new["restarts"] == old["restarts"] + 1
        assert res.recovered, res.summary()
        left = teardown_checked(ts)
        print(f"[fault 2] {left.summary()}")
        assert left.clean(), left.summary()
    finally:
        ts.a.stop()
        ts.b.stop()


_HOLD = """
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
time.sleep(600)
"""


def _log_times(log: Path, pattern: str) -> list[tuple[float, str]]:
    """(unix time, line) of each daemon log line matching ``pattern``."""
    out = []
    for line in log.read_text().splitlines():
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append((stamp.timestamp(), line))
    return out


def test_crash_loop_fails_then_restart_after_freeing_port(tmp_path: Path) -> None:
    ts = fault_sites(tmp_path)
    crash_port, nb_port, limit = 56001, 56002, 4
    ia, ib, ca, cb = fi_name(), fi_name(), fi_name(), fi_name()
    ts.a.write(
        plain_tunnel(ia, "tun", ts.inner("a"), "tcp", "listen", f"{ts.ua}:{nb_port}",
                     tunnel="nb")
        + plain_tunnel(ca, "tun", "10.78.0.1", "tcp", "remote", f"{ts.ub}:{crash_port}",
                       tunnel="crash", extra_tun="reconnect_max = 1.0"))
    ts.b.write(
        daemon_section(restart_backoff_min=0.2, restart_backoff_max=5.0, crash_limit=limit,
                       crash_window=60.0)
        + plain_tunnel(ib, "tun", ts.inner("b"), "tcp", "remote", f"{ts.ua}:{nb_port}",
                       tunnel="nb")
        + plain_tunnel(cb, "tun", "10.78.0.2", "tcp", "listen", f"{ts.ub}:{crash_port}",
                       tunnel="crash"))
    holder = subprocess.Popen(ts.b.ns.argv(sys.executable, "-c", _HOLD, ts.ub, str(crash_port)),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        ts.a.start()
        ts.b.start()
        ts.b.ns.wait_ping(ts.inner("a"))
        nb_pid = ts.b.tunnel("nb")["pid"]
        with Probe(ts.b.ns, ts.a.ns, ts.inner("a")) as probe:
            failed = ts.b.wait_state("crash", "failed", within=30)
            n_attempts = len(_log_times(ts.b.log, r"tunnel crash: cannot start"))
            time.sleep(2.0)  # FAILED: no further attempts
            res = probe.stop()
        attempts = _log_times(ts.b.log, r"tunnel crash: cannot start")
        announced = [float(m.group(1)) for _, line in
                     _log_times(ts.b.log, r"tunnel crash: .*-> backoff")
                     if (m := re.search(r"restart in ([\d.]+)s", line))]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(attempts)]
        print(f"\n[fault 9] crash loop: {len(attempts)} attempts, announced backoff "
              f"{announced}, measured gaps {[round(g, 2) for g in gaps]}; failed with "
              f"last_error {failed['last_error']!r}; neighbour probe: {res.summary()}")
        assert len(attempts) == n_attempts == limit + 1
        assert announced == sorted(announced) and len(set(announced)) == len(announced)
        assert all(g2 >= g1 * 0.9 for g1, g2 in itertools.pairwise(gaps)), gaps
        assert all(g >= d * 0.9 for g, d in zip(gaps, announced, strict=False)), gaps
        assert "Address already in use" in (failed["last_error"] or ""), failed
        assert failed["pid"] is None
        assert ts.b.tunnel("nb")["pid"] == nb_pid
        assert res.lost == 0, res.summary()

        holder.kill()
        holder.wait(5)
        t0 = time.monotonic()
        ts.b.ctl("restart", "crash")
        up = ts.b.wait_state("crash", "up", within=15)
        t_up = time.monotonic() - t0
        assert ts.b.ns.ping("10.78.0.1", count=3)
        print(f"[fault 9] port freed, tundctl restart crash: up after {t_up:.2f}s "
              f"(pid {up['pid']}); neighbour pid kept {nb_pid}")
        assert ts.b.tunnel("nb")["pid"] == nb_pid
        left = teardown_checked(ts)
        print(f"[fault 9] {left.summary()}")
        assert left.clean(), left.summary()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
        ts.a.stop()
        ts.b.stop()
