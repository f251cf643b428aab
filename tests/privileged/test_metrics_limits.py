"""A metrics flood against a real daemon (issue 16.5): 2,000 connections to /metrics leave
the daemon's descriptors bounded, its log free of tracebacks and its tunnel up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns import _ALL, Netns, unique, veth
from tests.sites import Site, plain_tunnel

pytestmark = pytest.mark.usefixtures("privileged")

PORT, METRICS_PORT = 55571, 9587
UA, UB = "10.236.20.1", "10.236.20.2"
IA, IB = "10.236.21.1", "10.236.21.2"

FLOOD = r"""
import resource, socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 256), hard))
held, failed = [], 0
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    except OSError:
        failed += 1
        s.close()
        continue
    if i % 3 == 1:  # a third send a request head that never ends, byte by byte
        try:
            s.send(b"G")
        except OSError:
            pass
    held.append(s)
    if i % 100 == 99:
        time.sleep(0.05)
time.sleep(6)  # hold them all past the server's 5 s limit
for s in held:
    s.close()
print(len(held), failed, flush=True)
"""


def make_ns() -> Netns:
    ns = Netns(unique("tse"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    _ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_2000_metrics_connections_leave_fds_bounded_and_the_tunnel_up(tmp_path: Path) -> None:
    na, nb = make_ns(), make_ns()
    veth(na, f"{UA}/24", nb, f"{UB}/24")
    a, b = Site(na, tmp_path / "a", "a"), Site(nb, tmp_path / "b", "b")
    ia, ib = unique("tse"), unique("tse")
    a.write(f'[daemon]\nmetrics_listen = "127.0.0.1:{METRICS_PORT}"\n'
            + plain_tunnel(ia, "tun", IA, "tcp", "listen", f"{UA}:{PORT}"))
    b.write(plain_tunnel(ib, "tun", IB, "tcp", "remote", f"{UA}:{PORT}"))
    try:
        a.start()
        b.start()
        b.ns.wait_ping(IA, within=20)
        a.wait_state("t1", "up")
        assert a.proc is not None
        pid = a.proc.pid
        base = fd_count(pid)
        flood = subprocess.Popen(na.argv(sys.executable, "-c", FLOOD, "2000", str(METRICS_PORT)),
                                 stdout=subprocess.PIPE, text=True)
        peak, deadline = base, time.monotonic() + 30
        while flood.poll() is None and time.monotonic() < deadline:
            peak = max(peak, fd_count(pid))
            time.sleep(0.02)
        out, _ = flood.communicate(timeout=30)
        held, failed = map(int, out.split())
        assert held + failed == 2000 and held >= 1900, out
        # 64 served at once at most, plus a few in passing (accept then close)
        assert peak - base <= 64 + 16, f"daemon fds went from {base} to {peak}"
        assert b.ns.ping(IA, count=5, interval=0.2)
        assert a.tunnel("t1")["state"] == "up" and a.tunnel("t1")["restarts"] == 0
        scrape = na.run(sys.executable, "-c", "import urllib.request, sys; sys.stdout.write("
                        f"urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', "
                        "timeout=10).read().decode())").stdout
        assert 'tund_tunnel_up{tunnel="t1"} 1.0' in scrape
        log = a.log.read_text()
        assert "Traceback" not in log, a.log_tail(80)
        assert log.count("metrics: 64 connections open") <= 3  # rate-limited
        print(f"fds: base {base}, peak {peak}; {held} connections held, {failed} failed")
    finally:
        a.stop()
        b.stop()
