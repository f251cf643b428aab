"""Honest tunnel state and drops in real daemons (issue 15 items 1 and 2).

Namespaces, devices and veths are named with the ``tst`` prefix of this test module.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests import netns
from tests.netns import Netns, unique
from tests.sites import Site, TwoSites, plain_tunnel
from tests.wg_helpers import KeyPair, link_stats, wait_for, wg_tunnel, write_key

pytestmark = pytest.mark.usefixtures("privileged")

PORT = 51930


def _ns() -> Netns:
    ns = Netns(unique("tst"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    netns._ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


_NET = [0]


def tst_sites(tmp: Path) -> TwoSites:
    """Two namespaces joined by a veth, every name with the ``tst`` prefix."""
    _NET[0] += 1
    net = 180 + _NET[0] % 20
    na, nb = _ns(), _ns()
    va, vb = unique("tstva"), unique("tstvb")
    subprocess.run(["ip", "link", "add", va, "netns", na.name, "type", "veth", "peer", "name",
                    vb, "netns", nb.name], check=True)
    ua, ub = f"10.{net}.7.1", f"10.{net}.7.2"
    for ns, dev, addr in ((na, va, ua), (nb, vb, ub)):
        ns.run("ip", "addr", "add", f"{addr}/24", "dev", dev)
        ns.run("ip", "link", "set", dev, "up")
    return TwoSites(Site(na, tmp / "a", "a"), Site(nb, tmp / "b", "b"), ua, ub, net)


# --------------------------------------------------------------------------- 15.2


@pytest.mark.parametrize("encryption", ["none", "wireguard"])
def test_a_fresh_listener_counts_only_the_packets_the_kernel_sent(tmp_path: Path,
                                                                  encryption: str) -> None:
    """A new UDP listener with no peer: ``no_peer`` equals the packets the kernel really
    sent out of the device (its IPv6 router solicitation, ...), nothing else is dropped.
    Before the fix each packet counted twice (the offload hello, or a WireGuard
    initiation, was a second ``no_peer``)."""
    ts = tst_sites(tmp_path)
    ifname = unique("tst")
    try:
        if encryption == "none":
            ts.a.write(plain_tunnel(ifname, "tun", "10.77.0.1", "udp", "listen",
                                    f"{ts.ua}:{PORT}"))
        else:
            key = write_key(ts.a.dir / "a.key", KeyPair.new().priv)
            ts.a.write(wg_tunnel(ifname, "tun", "10.77.0.1", "udp", "listen",
                                 f"{ts.ua}:{PORT}", key, KeyPair.new().pub))
        ts.a.start()
        wait_for(lambda: link_stats(ts.a.ns, ifname)["tx_packets"] >= 1, 15,
                 "the kernel's first packet out of the new device")
        time.sleep(1.0)
        before = link_stats(ts.a.ns, ifname)["tx_packets"]
        t = ts.a.tunnel("t1")
        after = link_stats(ts.a.ns, ifname)["tx_packets"]  # one may leave meanwhile
        assert t["state"] == "connecting", t
        assert set(t["drops"]) == {"no_peer"}, t["drops"]
        assert before <= t["drops"]["no_peer"] <= after, (t["drops"], before, after)
        assert t["tx_packets"] == 0
    finally:
        ts.a.stop()
