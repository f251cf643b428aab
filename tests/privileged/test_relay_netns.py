"""Relay workers on real TUN devices in two throwaway namespaces joined by a veth.

Underlay: 10.220.0.1 (ns a, listen) <-veth-> 10.220.0.2 (ns b, remote).
Overlay:  tun 10.220.1.1/24 in a  <- worker <-> worker ->  tun 10.220.1.2/24 in b.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Netns, unique, veth
from tests.relay_support import WorkerProcess, netns_worker_command
from tund.workerapi.spec import WorkerSpec

log = logging.getLogger("tests.relay")

DEVICE_FD, SOCKET_FD = 200, 201
MTU = 1400  # + 28 (UDP) or + 2 (framing) + 40 fits the veth's 1500


def wait_link(ns: Netns, name: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ns.run("ip", "link", "show", name, check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"device {name} did not appear in {ns.name} within {within}s")


class Site:
    def __init__(self, ns: Netns, underlay: str, overlay: str) -> None:
        self.ns, self.underlay, self.overlay = ns, underlay, overlay
        self.worker: WorkerProcess | None = None


@pytest.fixture
def sites(privileged: None) -> Iterator[tuple[Site, Site]]:
    a, b = Netns.make("rla"), Netns.make("rlb")
    veth(a, "10.220.0.1/24", b, "10.220.0.2/24")
    sa, sb = Site(a, "10.220.0.1", "10.220.1.1"), Site(b, "10.220.0.2", "10.220.1.2")
    yield sa, sb
    for s in (sa, sb):
        if s.worker is not None:
            s.worker.kill()


def start(site: Site, transport: str, role: str, tmp_path: Path, mode: str = "tun",
          packet_info: bool = False) -> WorkerProcess:
    name = unique("rl")
    spec = WorkerSpec(tunnel=name, interface=name, mode=mode, transport=transport,  # type: ignore[arg-type]
                      packet_info=packet_info,
                      role=role, host="10.220.0.1", port=5555, device_fd=DEVICE_FD,  # type: ignore[arg-type]
                      socket_fd=SOCKET_FD if role == "listen" else None, mtu=MTU,
                      reconnect_min=0.1, reconnect_max=1.0)
    log.info("start %s worker %s in %s", role, name, site.ns.name)
    w = WorkerProcess(spec, log=tmp_path / f"{name}.log",
                      command=netns_worker_command(site.ns.name, spec), pass_fds=[])
    site.worker = w
    wait_link(site.ns, name)
    site.ns.run("ip", "link", "set", name, "mtu", str(MTU))
    site.ns.run("ip", "addr", "add", f"{site.overlay}/24", "dev", name)
    site.ns.run("ip", "link", "set", name, "up")
    return w


def tunnel(sites: tuple[Site, Site], transport: str, tmp_path: Path, mode: str = "tun",
           packet_info: bool = False) -> tuple[WorkerProcess, WorkerProcess]:
    a, b = sites
    wa = start(a, transport, "listen", tmp_path, mode, packet_info)
    wb = start(b, transport, "remote", tmp_path, mode, packet_info)
    wb.wait_state("up")
    return wa, wb


@pytest.mark.parametrize(("transport", "mode", "packet_info"), [
    ("tcp", "tun", False), ("udp", "tun", False), ("tcp", "tap", True), ("udp", "tap", False),
    ("udp", "tun", True)])
def test_ping_across_two_workers(sites: tuple[Site, Site], transport: str, mode: str,
                                 packet_info: bool, tmp_path: Path) -> None:
    a, b = sites
    log.info("no tunnel yet: ping must fail")
    assert not b.ns.ping(a.overlay, timeout=1)
    wa, wb = tunnel(sites, transport, tmp_path, mode, packet_info)
    took = b.ns.wait_ping(a.overlay, within=20)
    log.info("first reply after %.2fs", took)
    assert a.ns.ping(b.overlay, count=3, interval=0.2)
    sa, sb = wa.ping(), wb.ping()
    assert sa["state"] == sb["state"] == "up"
    assert sa["rx_packets"] >= 4 and sb["rx_packets"] >= 4
    assert sa["peer"].startswith("10.220.0.2:") and sb["peer"] == "10.220.0.1:5555"
    assert wb.stop() == 0
    assert wa.stop() == 0


SENDER = r"""
import hashlib, socket, sys, random
total = int(sys.argv[2])
rnd = random.Random(20240601)
block = rnd.randbytes(1 << 20)
h = hashlib.sha256()
s = socket.create_connection((sys.argv[1], 5001), timeout=30)
sent = 0
while sent < total:
    chunk = bytes([sent >> 20 & 255]) + block[1:min(len(block), total - sent)]
    s.sendall(chunk)
    h.update(chunk)
    sent += len(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(sent, h.hexdigest())
"""

RECEIVER = r"""
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], 5001))
srv.settimeout(30)
c, _ = srv.accept()
c.settimeout(60)
h = hashlib.sha256()
n = 0
while True:
    d = c.recv(1 << 18)
    if not d:
        break
    h.update(d)
    n += len(d)
c.close()
print(n, h.hexdigest())
"""


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_100_mb_arrive_intact(sites: tuple[Site, Site], transport: str,
                              tmp_path: Path) -> None:
    import sys

    a, b = sites
    wa, _wb = tunnel(sites, transport, tmp_path)
    b.ns.wait_ping(a.overlay, within=20)
    total = 100 * 1024 * 1024
    out = tmp_path / "receiver.out"
    recv = a.ns.spawn(sys.executable, "-c", RECEIVER, a.overlay, log=out)
    time.sleep(0.5)
    t0 = time.monotonic()
    sent = b.ns.run(sys.executable, "-c", SENDER, a.overlay, str(total), timeout=240)
    took = time.monotonic() - t0
    recv.wait(60)
    got = out.read_text().split()
    want = sent.stdout.split()
    log.info("%d bytes over %s in %.1fs (%.0f Mbit/s)", total, transport, took,
             total * 8 / took / 1e6)
    assert want[0] == str(total)
    assert got == want, f"receiver {got} != sender {want}"
    sa = wa.ping()
    assert sa["rx_bytes"] > total and sa["errors"] == 0
