"""Nothing blocks a loop (issue 15.9): a DNS server that never answers, a stopped worker.

* A live UDP tunnel whose endpoint is a host name keeps carrying traffic while its
  re-resolution waits on a resolver that reads queries and never replies (site b's
  namespace gets ``/etc/netns/NAME/resolv.conf`` pointing at it, and a hosts file that
  names the peer at first and is emptied once the tunnel is up).
* The daemon answers ``status`` within 100 ms while a worker, or the fork server, is
  SIGSTOPped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.faults import call, status
from tests.netns import _ALL, Netns, unique
from tests.sites import Site

pytestmark = pytest.mark.usefixtures("privileged")

UNDER = "10.233.0"
INNER = "10.234.0"
PEER_NAME = "peer-tms.test"
#: A "DNS server" that reads queries, counts them in a file and never answers.
BLACKHOLE = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.53", 53))
    n = 0
    while True:
        s.recv(4096)
        n += 1
        open(sys.argv[1], "w").write(str(n))
    """)


def tms_netns() -> Netns:
    ns = Netns(unique("tms"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    _ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def tunnel_config(dev: str, inner: str, endpoint_key: str, endpoint: str) -> str:
    return f"""
        [interfaces.{dev}]
        mode = "tun"
        addresses = ["{inner}/24"]

        [tunnels.t1]
        interface = "{dev}"
        transport = "udp"
        {endpoint_key} = "{endpoint}"
        encryption = "none"
        keepalive = 1
        """


def _ping_all(ns: Netns, addr: str, count: int) -> tuple[int, int]:
    """``count`` pings 0.1 s apart; (sent, received)."""
    p = ns.run("ping", "-n", "-q", "-c", str(count), "-i", "0.1", "-W", "1", addr,
               check=False, timeout=count + 20)
    for line in p.stdout.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(p.stdout + p.stderr)


def test_a_resolver_that_never_answers_does_not_stop_a_live_tunnel(tmp_path: Path) -> None:
    na, nb = tms_netns(), tms_netns()
    etc = Path("/etc/netns") / nb.name
    va, vb = unique("tms"), unique("tms")
    subprocess.run(["ip", "link", "add", va, "netns", na.name, "type", "veth", "peer", "name",
                    vb, "netns", nb.name], check=True)
    for ns, dev, addr in ((na, va, f"{UNDER}.1"), (nb, vb, f"{UNDER}.2")):
        ns.run("ip", "addr", "add", f"{addr}/24", "dev", dev)
        ns.run("ip", "link", "set", dev, "up")
    etc.mkdir(parents=True)
    hosts = etc / "hosts"
    sites: list[Site] = []
    try:
        (etc / "resolv.conf").write_text("nameserver 127.0.0.53\n"
                                         "options timeout:30 attempts:5\n")
        hosts.write_text(f"127.0.0.1 localhost\n{UNDER}.1 {PEER_NAME}\n")
        queries = tmp_path / "queries"
        nb.spawn(sys.executable, "-c", BLACKHOLE, str(queries))
        a, b = Site(na, tmp_path / "a", "a"), Site(nb, tmp_path / "b", "b")
        sites += [a, b]
        a.write(tunnel_config(unique("tms"), f"{INNER}.1", "listen", f"{UNDER}.1:55602"))
        b.write(tunnel_config(unique("tms"), f"{INNER}.2", "remote",
                              f"{PEER_NAME}:55602"))
        a.start()
        b.start(extra_args=("--test-timers", "resolve_every=1"))
        nb.wait_ping(f"{INNER}.1", within=20)
        # from now on the name is only in DNS, and DNS never answers
        with open(hosts, "r+") as f:  # in place: the namespace's bind mount sees it
            f.truncate(0)
            f.write("127.0.0.1 localhost\n")
        deadline = time.monotonic() + 10
        while not queries.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queries.exists(), "the worker never asked the DNS server"
        sent, received = _ping_all(nb, f"{INNER}.1", 60)  # 6 s, the lookup pending
        t = status(b, "t1")["tunnels"]["t1"]
        print(f"\n[15.9] pings through the tunnel while the lookup hangs: {received}/{sent}; "
              f"DNS queries unanswered: {queries.read_text()}")
        assert received >= sent - 2, (sent, received)
        assert t["state"] == "up" and t["restarts"] == 0, t
        assert "now resolves" not in b.log.read_text()
    finally:
        for site in sites:
            site.stop()
        shutil.rmtree(etc, ignore_errors=True)  # the blackhole goes with its namespace


def _status_time(site: Site) -> float:
    t0 = time.monotonic()
    call(site, "status", timeout=5)
    return time.monotonic() - t0


def _slowest_status(site: Site, seconds: float) -> tuple[float, int]:
    """The slowest of ``status`` calls made back to back for ``seconds``; and how many."""
    worst, n = 0.0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        worst = max(worst, _status_time(site))
        n += 1
        time.sleep(0.01)
    return worst, n


@pytest.mark.parametrize("what", ["worker stopped", "fork server stopped",
                                  "fork server restarted"])
def test_status_answers_within_100ms_while_a_worker_or_the_fork_server_is_stuck(
        tmp_path: Path, what: str) -> None:
    """``worker stopped``: SIGSTOP the worker (status used to wait 0.5 s for its pong).
    ``fork server stopped``: SIGSTOP the zygote, SIGKILL the worker: its restart is a
    request the zygote never answers. ``fork server restarted``: SIGKILL the zygote, then
    the worker: the restart starts a new zygote (the daemon used to wait for its ready
    message, a second or more of imports)."""
    from tests.faults import fork_servers, netns_inode

    ns = tms_netns()
    site = Site(ns, tmp_path / "s", "s")
    site.write("[daemon]\nping_interval = 0.2\nping_timeout = 3\n"
               + tunnel_config(unique("tms"), f"{INNER}.1", "listen", "127.0.0.1:55603"))
    site.start()
    stopped: int | None = None
    try:
        worker = site.wait_state("t1", "connecting")["pid"]
        servers = fork_servers(netns_inode(ns))
        assert len(servers) == 1, servers
        zygote = servers[0].pid
        if what == "worker stopped":
            stopped = worker
            os.kill(worker, signal.SIGSTOP)
        elif what == "fork server stopped":
            stopped = zygote
            os.kill(zygote, signal.SIGSTOP)
            os.kill(worker, signal.SIGKILL)
        else:
            os.kill(zygote, signal.SIGKILL)
            time.sleep(0.2)
            os.kill(worker, signal.SIGKILL)
        worst, n = _slowest_status(site, 2.5)  # within the ping timeout
        print(f"\n[15.9] {what}: slowest of {n} status calls {worst * 1000:.1f} ms")
        assert worst < 0.1, (what, worst)
        if what != "worker stopped":  # and the tunnel gets a worker again (a stopped
            # zygote is found out when its request times out, and replaced)
            deadline = time.monotonic() + 20
            t = site.tunnel("t1")
            while time.monotonic() < deadline and t["pid"] in (None, worker):
                time.sleep(0.1)
                t = site.tunnel("t1")
            assert t["pid"] not in (None, worker), (t, site.log_tail())
            print(f"[15.9] {what}: new worker pid {t['pid']}, state {t['state']}")
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        site.stop()
