"""A UDP listener on 0.0.0.0 answers from the address its peer sent to (issue 15.7).

Site ``a`` holds two addresses on its underlay veth and listens on ``0.0.0.0``; site
``b`` connects to the second (not the primary) one. Its socket is ``connect()``-ed, so a
reply from the primary address (the routing table's choice, as before) never reaches it:
the tunnel was ``up`` on both ends with no packet passing. Now the ping passes, and every
datagram ``a`` sends (sniffed on ``b``) comes from the second address.

``test_single_address_throughput`` is a measurement (iperf3-free: :mod:`tests.transfer`)
of a listener bound to one address, the path that must not slow down, and of the
wildcard one; it prints both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sites import TwoSites, new_ifname, two_sites
from tests.transfer import transfer
from tests.wg_helpers import (
    KeyPair,
    Sniffer,
    dev_with_addr,
    disable_ipv6,
    wg_tunnel,
    write_key,
)

pytestmark = pytest.mark.usefixtures("privileged")

PORT = 51905


def _pair(ts: TwoSites, listen_host: str, connect_to: str) -> None:
    disable_ipv6(ts.a.ns, ts.b.ns)
    ka, kb = KeyPair.new(), KeyPair.new()
    ts.a.write(wg_tunnel(new_ifname("twga"), "tun", ts.inner("a"), "udp", "listen",
                         f"{listen_host}:{PORT}", write_key(ts.a.dir / "a.key", ka.priv),
                         kb.pub))
    ts.b.write(wg_tunnel(new_ifname("twgb"), "tun", ts.inner("b"), "udp", "remote",
                         f"{connect_to}:{PORT}", write_key(ts.b.dir / "b.key", kb.priv),
                         ka.pub, extra_tun="keepalive = 1"))


def _second_address(ts: TwoSites) -> str:
    second = ts.ua.rsplit(".", 1)[0] + ".11"
    ts.a.ns.run("ip", "addr", "add", f"{second}/24", "dev", dev_with_addr(ts.a.ns, ts.ua))
    return second


def test_peer_connected_to_the_second_address_gets_replies(tmp_path: Path) -> None:
    """Fails on the old code: no ping passes (replies came from the primary address)."""
    ts = two_sites(tmp_path)
    second = _second_address(ts)
    _pair(ts, "0.0.0.0", second)
    sniffer = Sniffer(ts.b.ns, dev_with_addr(ts.b.ns, ts.ub), PORT)
    ts.a.start()
    ts.b.start()
    try:
        ts.b.ns.wait_ping(ts.inner("a"), within=15)
        assert ts.a.ns.ping(ts.inner("b"), count=3)
        sources = {c.src for c in sniffer.drain() if c.src[1] == PORT}
        assert sources == {(second, PORT)}, sources
        assert ts.a.tunnel("t1")["peer"].startswith(ts.ub + ":")
    except AssertionError:
        print(f"--- a ---\n{ts.a.log_tail()}\n--- b ---\n{ts.b.log_tail()}")
        raise
    finally:
        sniffer.close()
        ts.a.stop()
        ts.b.stop()


@pytest.mark.parametrize("bind", ["one-address", "wildcard"])
def test_single_address_throughput(tmp_path: Path, bind: str) -> None:
    ts = two_sites(tmp_path)
    _pair(ts, ts.ua if bind == "one-address" else "0.0.0.0", ts.ua)
    ts.a.start()
    ts.b.start()
    try:
        ts.b.ns.wait_ping(ts.inner("a"), within=15)
        for name, src, dst, to in (("b -> a", ts.b.ns, ts.a.ns, ts.inner("a")),
                                   ("a -> b", ts.a.ns, ts.b.ns, ts.inner("b"))):
            rates = []
            for _ in range(3):
                n, sha_tx, sha_rx, seconds = transfer(src, dst, to, 200 << 20)
                assert n == 200 << 20 and sha_tx == sha_rx
                rates.append(n * 8 / seconds / 1e6)
            print(f"\n[15.7] listener bound to {bind}, {name}: "
                  f"{', '.join(f'{r:.0f}' for r in rates)} Mbit/s (200 MB each)")
    finally:
        ts.a.stop()
        ts.b.stop()


def test_ipv6_peer_connected_to_the_second_address_gets_replies(tmp_path: Path) -> None:
    """The same over an IPv6 underlay: a listens on [::], b connects to a's second v6
    address (IPV6_RECVPKTINFO / IPV6_PKTINFO)."""
    ts = two_sites(tmp_path)
    va, vb = dev_with_addr(ts.a.ns, ts.ua), dev_with_addr(ts.b.ns, ts.ub)
    net = f"fd00:{ts.net:x}::"
    # the kernel picks the address added last (::3) for replies; b connects to ::f0
    for ns, dev, addrs in ((ts.a.ns, va, ("f0", "3")), (ts.b.ns, vb, ("2",))):
        ns.run("sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=0")
        for a in addrs:
            ns.run("ip", "-6", "addr", "add", f"{net}{a}/64", "dev", dev, "nodad")
    ka, kb = KeyPair.new(), KeyPair.new()
    ts.a.write(wg_tunnel(new_ifname("twga"), "tun", ts.inner("a"), "udp", "listen",
                         f"[::]:{PORT}", write_key(ts.a.dir / "a.key", ka.priv), kb.pub))
    ts.b.write(wg_tunnel(new_ifname("twgb"), "tun", ts.inner("b"), "udp", "remote",
                         f"[{net}f0]:{PORT}", write_key(ts.b.dir / "b.key", kb.priv),
                         ka.pub, extra_tun="keepalive = 1"))
    ts.a.start()
    ts.b.start()
    try:
        ts.b.ns.wait_ping(ts.inner("a"), within=15)
        assert ts.a.ns.ping(ts.inner("b"), count=3)
        assert ts.a.tunnel("t1")["peer"] == f"[{net}2]:" + ts.a.tunnel("t1")["peer"].rsplit(
            ":", 1)[1]
    except AssertionError:
        print(f"--- a ---\n{ts.a.log_tail()}\n--- b ---\n{ts.b.log_tail()}")
        raise
    finally:
        ts.a.stop()
        ts.b.stop()
