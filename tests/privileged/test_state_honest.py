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


# --------------------------------------------------------------------------- 15.1


def _wg_site(site: Site, ifname: str, inner: str, role: str, endpoint: str, me: KeyPair,
             peer_pub: str, mtu: int | None = 1420) -> None:
    key = write_key(site.dir / "me.key", me.priv)
    site.write(wg_tunnel(ifname, "tun", inner, "udp", role, endpoint, key, peer_pub, mtu=mtu))


def _wait_tunnel(site: Site, pred: object, within: float, what: str) -> dict[str, object]:
    def probe() -> dict[str, object] | None:
        t = site.tunnel("t1")
        return t if pred(t) else None  # type: ignore[operator]
    try:
        return wait_for(probe, within, what, every=0.2)  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"{site.label}: {what}: {site.tunnel('t1')}\n"
                             f"{site.log_tail()}") from None


def _dump_state(site: Site) -> str:
    return site.ctl("dump").stdout.split("\t")[2]


def test_a_remote_that_never_answers_is_handshaking_then_failing(tmp_path: Path) -> None:
    """Nothing runs at the endpoint: before the fix ``state: up`` with ``latest handshake:
    (none yet)``; now handshaking, then failing with the endpoint named."""
    ts = tst_sites(tmp_path)
    try:
        _wg_site(ts.b, unique("tst"), "10.78.0.2", "remote", f"{ts.ua}:{PORT}",
                 KeyPair.new(), KeyPair.new().pub)
        ts.b.start()
        t0 = time.monotonic()
        t = _wait_tunnel(ts.b, lambda t: t["state"] != "starting", 15, "a worker state")
        assert t["state"] == "handshaking", t
        assert _dump_state(ts.b) == "handshaking"
        t = _wait_tunnel(ts.b, lambda t: t["state"] == "failing", 30, "failing")
        print(f"handshaking -> failing {time.monotonic() - t0:.1f} s after the start")
        assert t["last_error"] == f"no reply from {ts.ua}:{PORT} to 3 handshake initiations"
        assert t["latest_handshake"] is None and t["handshakes_sent"] >= 3
        assert "failing" in ts.b.ctl("status").stdout
    finally:
        ts.b.stop()


@pytest.mark.parametrize("wrong", ["listener", "remote"])
def test_a_wrong_peer_key_is_not_up_on_either_end(tmp_path: Path, wrong: str) -> None:
    """One end has a wrong ``peer_public_key``: before the fix both ends were ``up``
    through 100% loss. Now neither is, and each says why."""
    ts = tst_sites(tmp_path)
    ka, kb = KeyPair.new(), KeyPair.new()
    a_peer = KeyPair.new().pub if wrong == "listener" else kb.pub
    b_peer = KeyPair.new().pub if wrong == "remote" else ka.pub
    try:
        _wg_site(ts.a, unique("tst"), "10.79.0.1", "listen", f"{ts.ua}:{PORT}", ka, a_peer)
        _wg_site(ts.b, unique("tst"), "10.79.0.2", "remote", f"{ts.ua}:{PORT}", kb, b_peer)
        ts.a.start()
        ts.b.start()
        assert not ts.b.ns.ping("10.79.0.1", count=2, timeout=1)
        b = _wait_tunnel(ts.b, lambda t: t["state"] == "failing", 30, "b failing")
        assert b["last_error"] == f"no reply from {ts.ua}:{PORT} to 3 handshake initiations"
        a = _wait_tunnel(ts.a, lambda t: t["state"] == "failing", 10, "a failing")
        if wrong == "listener":
            why = str(a["last_error"])
            assert why.startswith(f"handshake from an unknown key (fingerprint "
                                  f"{kb.pub[:10]}) at {ts.ub}:"), a
            assert why.endswith(": not peer_public_key"), a
        else:
            assert str(a["last_error"]).startswith(f"a handshake from {ts.ub}:"), a
            assert "not meant for our key" in str(a["last_error"]), a
        for site in (ts.a, ts.b):
            assert _dump_state(site) == "failing"
            assert site.tunnel("t1")["session"] != "established"
    finally:
        ts.a.stop()
        ts.b.stop()


def test_correct_keys_are_up_and_an_mtu_too_large_for_the_path_is_a_warning(
        tmp_path: Path) -> None:
    """Right keys: up on both ends without any traffic sent (the remote's first keepalive
    makes the handshake). The listener's mtu 1500 over a 1500-byte veth cannot carry
    WireGuard/UDP over IPv4 (60 bytes): a warning in status; the remote's 1420 fits."""
    ts = tst_sites(tmp_path)
    ka, kb = KeyPair.new(), KeyPair.new()
    try:
        _wg_site(ts.a, unique("tst"), "10.80.0.1", "listen", f"{ts.ua}:{PORT}", ka, kb.pub,
                 mtu=1500)
        _wg_site(ts.b, unique("tst"), "10.80.0.2", "remote", f"{ts.ua}:{PORT}", kb, ka.pub)
        ts.a.start()
        ts.b.start()
        b = _wait_tunnel(ts.b, lambda t: t["state"] == "up", 15, "b up")
        a = _wait_tunnel(ts.a, lambda t: t["state"] == "up", 15, "a up")
        assert a["session"] == b["session"] == "established"
        assert b["warnings"] == []
        assert a["warnings"] == [
            f"mtu 1500 is larger than the underlay path to {ts.ub} carries: its MTU 1500 - 60 "
            "(WireGuard/UDP over IPv4) = 1440; larger packets are fragmented or lost "
            "(set mtu = 1440)"], a
        assert "  warning: mtu 1500 is larger" in ts.a.ctl("status").stdout
        assert ts.b.ns.ping("10.80.0.1", count=2, timeout=2)
    finally:
        ts.a.stop()
        ts.b.stop()


def test_plain_udp_is_unverified_until_the_listener_answers(tmp_path: Path) -> None:
    """Plaintext UDP: the remote alone is unverified (nothing comes back); with the
    listener running it is up at once (the listener answers its hello)."""
    ts = tst_sites(tmp_path)
    ia, ib = unique("tst"), unique("tst")
    try:
        ts.b.write(plain_tunnel(ib, "tun", "10.81.0.2", "udp", "remote", f"{ts.ua}:{PORT}"))
        ts.b.start()
        _wait_tunnel(ts.b, lambda t: t["state"] == "unverified", 15, "b unverified")
        time.sleep(1.0)
        assert ts.b.tunnel("t1")["state"] == "unverified"
        ts.a.write(plain_tunnel(ia, "tun", "10.81.0.1", "udp", "listen", f"{ts.ua}:{PORT}"))
        ts.a.start()
        ts.b.ctl("restart", "t1")  # a new hello, now that someone listens
        _wait_tunnel(ts.b, lambda t: t["state"] == "up", 15, "b up")
        _wait_tunnel(ts.a, lambda t: t["state"] == "up", 15, "a up")
        assert ts.b.ns.ping("10.81.0.1", count=1, timeout=2)
    finally:
        ts.a.stop()
        ts.b.stop()


def test_an_unresolvable_endpoint_and_a_bind_failure_are_in_last_error(tmp_path: Path) -> None:
    ts = tst_sites(tmp_path)
    try:
        ts.b.write(plain_tunnel(unique("tst"), "tun", "10.82.0.2", "udp", "remote",
                                "nowhere.invalid:51820", tunnel="t1")
                   + plain_tunnel(unique("tst"), "tun", "10.82.1.2", "udp", "listen",
                                  f"{ts.ua}:{PORT}", tunnel="t2").replace(
                                      "[interfaces.", "\n[interfaces.", 1))
        ts.b.start()
        t1 = _wait_tunnel(ts.b, lambda t: t["last_error"] is not None, 20, "t1's error")
        assert t1["state"] == "connecting" and "nowhere.invalid" in str(t1["last_error"]), t1
        t2 = wait_for(lambda: ts.b.tunnel("t2")["last_error"], 15, "t2's error")
        assert f"{ts.ua}:{PORT}" in t2 and "bind" in t2, t2
    finally:
        ts.b.stop()
