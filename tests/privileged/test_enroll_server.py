"""Enrollment for real (issue 18.1-18.4): ``tundctl peer add`` against a running tund
server in a namespace, three clients driven by what it prints.

Each client's wg-quick output goes through the real ``wg-quick strip`` and ``wg setconf``
into a wireguard-go device in a namespace of its own (its Address added with ``ip``), and
pings the server through the tunnel. Then: ``peer disable`` of one client (its pings fail,
its handshakes are refused as unknown_peer, the others keep pinging), ``peer enable`` (it
is back), and ``peer remove`` of it while the others ping (zero loss on them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests import netns
from tests.netns import Netns, stop, unique, veth
from tests.sites import Site
from tests.wg_helpers import KeyPair, wait_for, write_key

pytestmark = pytest.mark.usefixtures("privileged")

PORT = 51820
SERVER_IP = "10.77.0.1"


def _ns(label: str) -> Netns:
    """A namespace named with this helper's prefix ``ten`` (cleaned up by the fixture)."""
    ns = Netns(unique(f"ten{label}"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    netns._ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


class Client:
    """wireguard-go in ``ns`` configured from a wg-quick file, as wg-quick would."""

    def __init__(self, ns: Netns, d: Path, conf: str) -> None:
        self.ns, self.ifname = ns, unique("tenw")
        d.mkdir(parents=True, exist_ok=True)
        self.conf = d / f"{self.ifname}.conf"
        self.conf.write_text(conf)
        self.conf.chmod(0o600)
        stripped = subprocess.run(["wg-quick", "strip", str(self.conf)], capture_output=True,
                                  text=True, check=True, timeout=20).stdout
        self.setconf = write_key(d / f"{self.ifname}.setconf", stripped.strip())
        self.log = d / f"{self.ifname}.log"
        self.sock = Path(f"/var/run/wireguard/{self.ifname}.sock")
        self.proc = ns.spawn("wireguard-go", "-f", self.ifname, log=self.log,
                             env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
        wait_for(lambda: self.sock.exists() or self.proc.poll() is not None, 10, str(self.sock))
        ns.run("wg", "setconf", self.ifname, str(self.setconf))
        address = re.search(r"^Address = (.+)$", conf, re.M)
        assert address, conf
        for a in address.group(1).split(","):
            ns.run("ip", "addr", "add", a.strip(), "dev", self.ifname)
        ns.run("ip", "link", "set", self.ifname, "mtu", "1420", "up")

    def stop(self) -> None:
        stop(self.proc)
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()


def _pinger(ns: Netns, count: int = 100) -> subprocess.Popen[str]:
    return subprocess.Popen(ns.argv("ping", "-n", "-q", "-c", str(count), "-i", "0.05",
                                    "-W", "1", SERVER_IP),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _loss(p: subprocess.Popen[str]) -> tuple[int, int]:
    text, _ = p.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(shutil.which("wireguard-go") is None or shutil.which("wg-quick") is None,
                    reason="needs wireguard-go and wireguard-tools")
def test_enroll_three_clients_disable_enable_remove(tmp_path: Path) -> None:
    s_ns = _ns("S")
    cns = [_ns(f"C{i}") for i in (1, 2, 3)]
    for i, c in enumerate(cns, start=1):
        veth(s_ns, f"10.76.{i}.1/24", c, f"10.76.{i}.2/24")
    server = Site(s_ns, tmp_path / "s", "s")
    ks = KeyPair.new()
    key = write_key(server.dir / "s.key", ks.priv)
    ifname = unique("tens")
    server.write(f'[interfaces.{ifname}]\nmode = "tun"\naddresses = ["{SERVER_IP}/24"]\n'
                 f'mtu = 1420\n\n[tunnels.vpn]\ninterface = "{ifname}"\n'
                 f'listen = "0.0.0.0:{PORT}"\nprivate_key_file = "{key}"\n\n'
                 "[tunnels.vpn.peers]\n")
    clients: list[Client] = []
    try:
        server.start()
        t0 = time.monotonic()
        for i, ns in enumerate(cns, start=1):
            args = ["peer", "add", "vpn", f"c{i}", "--endpoint", f"10.76.{i}.1:{PORT}",
                    "--keepalive", "5", "--dns", "10.77.0.1"]
            conf = server.ctl(*args, *(["--psk"] if i == 3 else [])).stdout
            assert f"PublicKey = {ks.pub}" in conf and f"Address = 10.77.0.{i + 1}/24" in conf
            assert "DNS = 10.77.0.1" in conf and f"Endpoint = 10.76.{i}.1:{PORT}" in conf
            assert "AllowedIPs = 10.77.0.0/24" in conf and "PersistentKeepalive = 5" in conf
            assert ("PresharedKey = " in conf) == (i == 3)
            dropin = server.dir / "tunnels.d" / f"vpn-peer-c{i}.toml"
            assert stat.S_IMODE(dropin.stat().st_mode) == 0o600
            clients.append(Client(ns, tmp_path / f"c{i}", conf))
        enrolled = time.monotonic() - t0
        worker = server.tunnel("vpn")["pid"]
        took = [ns.wait_ping(SERVER_IP, within=20) for ns in cns]
        peers = server.tunnel("vpn")["peers"]
        assert set(peers) == {"c1", "c2", "c3"} and all(
            p["latest_handshake"] for p in peers.values()), peers

        # disable c2: refused, the others keep going
        out = server.ctl("peer", "disable", "vpn", "c2")
        assert "peers" in out.stderr, out.stderr
        assert not cns[1].ping(SERVER_IP, count=3, timeout=1), "a disabled peer still passes"
        for ns in (cns[0], cns[2]):
            assert ns.ping(SERVER_IP, count=3, timeout=1), "a kept peer lost traffic"
        wait_for(lambda: server.tunnel("vpn")["drops"].get("unknown_peer", 0) > 0, 40,
                 "the disabled peer's handshakes refused as unknown_peer "
                 f"({server.tunnel('vpn')['drops']})")
        refused = server.tunnel("vpn")["drops"]["unknown_peer"]

        # enable: back
        server.ctl("peer", "enable", "vpn", "c2")
        back = cns[1].wait_ping(SERVER_IP, within=30)

        # remove c2 while c1 and c3 ping
        pings = [_pinger(cns[0]), _pinger(cns[2])]
        time.sleep(1)
        server.ctl("peer", "remove", "vpn", "c2")
        losses = [_loss(p) for p in pings]
        assert all(sent == got and sent > 0 for sent, got in losses), losses
        assert not (server.dir / "tunnels.d" / "vpn-peer-c2.toml").exists()
        assert not cns[1].ping(SERVER_IP, count=2, timeout=1), "a removed peer still passes"
        assert set(server.tunnel("vpn")["peers"]) == {"c1", "c3"}
        assert server.tunnel("vpn")["pid"] == worker, "peer changes must not restart"
        print(f"\n[enroll] 3 clients enrolled in {enrolled:.1f}s; first pings after "
              + ", ".join(f"{t:.1f}s" for t in took)
              + f"; disabled c2: {refused} handshakes refused; enabled c2 pings after "
              f"{back:.1f}s; during the removal c1/c3 sent/received {losses}; "
              f"drops {json.dumps(server.tunnel('vpn')['drops'])}")
    finally:
        for c in clients:
            c.stop()
        server.stop()


def _lifetime(server: Site, peer: str) -> dict[str, int]:
    return dict(server.tunnel("vpn")["peers"][peer]["lifetime"])


@pytest.mark.skipif(shutil.which("wireguard-go") is None or shutil.which("wg-quick") is None,
                    reason="needs wireguard-go and wireguard-tools")
def test_lifetime_counters_survive_worker_kill_and_daemon_restart(tmp_path: Path) -> None:
    """Per-peer lifetime counters (issue 18.5) after a worker's kill -9 and a daemon
    restart (SIGTERM, start again): never smaller; a daemon run's own counters hold its
    workers' and start from zero at the next run."""
    s_ns, c_ns = _ns("S"), _ns("C")
    veth(s_ns, "10.76.9.1/24", c_ns, "10.76.9.2/24")
    server = Site(s_ns, tmp_path / "s", "s")
    key = write_key(server.dir / "s.key", KeyPair.new().priv)
    ifname = unique("tens")
    server.write(f'[interfaces.{ifname}]\nmode = "tun"\naddresses = ["{SERVER_IP}/24"]\n'
                 f'mtu = 1420\n\n[tunnels.vpn]\ninterface = "{ifname}"\n'
                 f'listen = "0.0.0.0:{PORT}"\nprivate_key_file = "{key}"\n'
                 f'public_endpoint = "10.76.9.1:{PORT}"\n\n[tunnels.vpn.peers]\n')
    client: Client | None = None
    try:
        server.start()
        conf = server.ctl("peer", "add", "vpn", "c", "--keepalive", "2").stdout
        client = Client(c_ns, tmp_path / "c", conf)
        c_ns.wait_ping(SERVER_IP, within=20)
        assert c_ns.ping(SERVER_IP, count=20, timeout=1, interval=0.02)
        first = _lifetime(server, "c")
        assert first["rx_packets"] >= 21, first

        worker = server.tunnel("vpn")["pid"]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: server.tunnel("vpn")["pid"] not in (None, worker), 20, "a new worker")
        c_ns.wait_ping(SERVER_IP, within=30)
        after_kill = _lifetime(server, "c")
        run = server.tunnel("vpn")["peers"]["c"]
        assert after_kill["rx_packets"] >= first["rx_packets"] + 1, (first, after_kill)
        # this daemon run's counters hold both workers' (issue 17.5): no earlier run yet
        assert run["rx_packets"] == after_kill["rx_packets"], (run, after_kill)

        server.stop()
        saved = json.loads((server.dir / "counters.json").read_text())
        assert saved["tunnels"]["vpn"]["c"]["rx_packets"] >= after_kill["rx_packets"]
        server.start()
        c_ns.wait_ping(SERVER_IP, within=30)
        after_restart = _lifetime(server, "c")
        assert after_restart["rx_packets"] > after_kill["rx_packets"], (after_kill,
                                                                         after_restart)
        run = server.tunnel("vpn")["peers"]["c"]  # the new run's own start from zero
        assert run["rx_packets"] < after_restart["rx_packets"], (run, after_restart)
        print(f"\n[counters] lifetime rx packets of peer c: {first['rx_packets']} -> "
              f"{after_kill['rx_packets']} after kill -9 -> {after_restart['rx_packets']} "
              f"after a daemon restart (this run: "
              f"{server.tunnel('vpn')['peers']['c']['rx_packets']})")
    finally:
        if client is not None:
            client.stop()
        server.stop()
