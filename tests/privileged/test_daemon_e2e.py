"""Two real tund daemons in two namespaces, joined by a veth: the core issue end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sites import TwoSites, new_ifname, plain_tunnel, two_sites
from tests.transfer import transfer

pytestmark = pytest.mark.usefixtures("privileged")

PORT = 55555


def _up_pair(ts: TwoSites, mode: str, transport: str, extra_if_b: str = "") -> tuple[str, str]:
    ia, ib = new_ifname(), new_ifname()
    ts.a.write(plain_tunnel(ia, mode, ts.inner("a"), transport, "listen", f"{ts.ua}:{PORT}"))
    ts.b.write(plain_tunnel(ib, mode, ts.inner("b"), transport, "remote", f"{ts.ua}:{PORT}",
                            extra_if=extra_if_b))
    ts.a.start()
    ts.b.start()
    return ia, ib


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_tun_ping_both_ways_and_100mb_intact(tmp_path: Path, transport: str) -> None:
    ts = two_sites(tmp_path)
    try:
        _up_pair(ts, "tun", transport)
        # no tunnel traffic has flowed yet; the ping must establish it
        ts.b.ns.wait_ping(ts.inner("a"), within=20)
        assert ts.a.ns.ping(ts.inner("b"), count=3)
        st = ts.b.wait_state("t1", "up")
        assert st["tx_packets"] > 0 and st["rx_packets"] > 0
        n, sha_s, sha_r, secs = transfer(ts.a.ns, ts.b.ns, ts.inner("b"), 100 * 1024 * 1024)
        assert n == 100 * 1024 * 1024
        assert sha_s == sha_r
        print(f"{transport}: 100 MiB in {secs:.2f}s = {n * 8 / secs / 1e6:.0f} Mbit/s")
        a = ts.a.tunnel("t1")
        assert a["tx_bytes"] > 100 * 1024 * 1024  # A sent the payload plus IP/TCP headers
        assert ts.b.tunnel("t1")["rx_bytes"] > 100 * 1024 * 1024
    finally:
        ts.a.stop()
        ts.b.stop()


def test_tap_over_tcp_arp_and_ping(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    try:
        _ia, ib = _up_pair(ts, "tap", "tcp")
        ts.b.ns.wait_ping(ts.inner("a"), within=20)
        neigh = ts.b.ns.run("ip", "-j", "neigh", "show", "dev", ib).stdout
        entries = {e["dst"]: e for e in json.loads(neigh)}
        assert ts.inner("a") in entries, neigh  # ARP resolved through the tunnel
        assert "lladdr" in entries[ts.inner("a")]
    finally:
        ts.a.stop()
        ts.b.stop()


def test_tap_enslaved_to_bridge(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    br = new_ifname("tbr")
    ts.b.ns.run("ip", "link", "add", br, "type", "bridge")
    ts.b.ns.run("ip", "addr", "add", f"{ts.inner('b')}/24", "dev", br)
    ts.b.ns.run("ip", "link", "set", br, "up")
    ia, ib = new_ifname(), new_ifname()
    ts.a.write(plain_tunnel(ia, "tap", ts.inner("a"), "tcp", "listen", f"{ts.ua}:{PORT}"))
    ts.b.write(f"""
[interfaces.{ib}]
mode = "tap"
bridge = "{br}"

[tunnels.t1]
interface = "{ib}"
transport = "tcp"
remote = "{ts.ua}:{PORT}"
encryption = "none"
""")
    try:
        ts.a.start()
        ts.b.start()
        link = json.loads(ts.b.ns.run("ip", "-j", "link", "show", ib).stdout)[0]
        assert link.get("master") == br
        ts.a.ns.wait_ping(ts.inner("b"), within=20)
    finally:
        ts.a.stop()
        ts.b.stop()


def test_kill_worker_is_restarted_and_traffic_resumes(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    try:
        _up_pair(ts, "tun", "tcp")
        ts.b.ns.wait_ping(ts.inner("a"))
        old = ts.b.wait_state("t1", "up")
        os.kill(old["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        new = old
        while time.monotonic() < deadline:
            new = ts.b.tunnel("t1")
            if new["pid"] not in (None, old["pid"]) and new["state"] == "up":
                break
            time.sleep(0.1)
        assert new["pid"] != old["pid"] and new["state"] == "up", new
        assert new["restarts"] == old["restarts"] + 1
        assert "signal 9" in (new["last_error"] or ""), new
        ts.b.ns.wait_ping(ts.inner("a"), within=20)
    finally:
        ts.a.stop()
        ts.b.stop()


def test_daemon_restart_keeps_persistent_device(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    try:
        _ia, ib = _up_pair(ts, "tun", "tcp")
        ts.b.ns.wait_ping(ts.inner("a"))
        before = json.loads(ts.b.ns.run("ip", "-j", "addr", "show", "dev", ib).stdout)[0]
        assert ts.b.stop() == 0
        mid = json.loads(ts.b.ns.run("ip", "-j", "addr", "show", "dev", ib).stdout)[0]
        assert mid["ifindex"] == before["ifindex"]
        assert [a["local"] for a in mid["addr_info"]] == [a["local"] for a in before["addr_info"]]
        ts.b.start()
        after = json.loads(ts.b.ns.run("ip", "-j", "addr", "show", "dev", ib).stdout)[0]
        assert after["ifindex"] == before["ifindex"]
        ts.b.ns.wait_ping(ts.inner("a"), within=20)
    finally:
        ts.a.stop()
        ts.b.stop()


def test_sigterm_removes_non_persistent_device(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    ia = new_ifname()
    ts.a.write(plain_tunnel(ia, "tun", ts.inner("a"), "udp", "listen", f"{ts.ua}:{PORT}",
                            extra_if="persist = false"))
    try:
        ts.a.start()
        assert ts.a.ns.run("ip", "link", "show", ia, check=False).returncode == 0
        workers = [t["pid"] for t in ts.a.status()["tunnels"].values()]
        assert ts.a.stop() == 0
        assert ts.a.ns.run("ip", "link", "show", ia, check=False).returncode != 0
        for pid in workers:
            assert pid is None or not Path(f"/proc/{pid}").exists()
    finally:
        ts.a.stop()


def test_start_with_invalid_config_exits_with_located_errors(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    ts.a.write("""
[interfaces.tun0]
mode = "tan"
""")
    p2 = subprocess.run(ts.a.ns.argv(sys.executable, "-m", "tund", "--config",
                                     str(ts.a.config), "--control-socket", str(ts.a.sock)),
                        capture_output=True, text=True, timeout=30)
    assert p2.returncode == 1
    assert f"{ts.a.config}:3: interfaces.tun0.mode:" in p2.stderr
    assert "Traceback" not in p2.stderr


def test_down_up_restart_one_tunnel(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    try:
        _up_pair(ts, "tun", "udp")
        ts.b.ns.wait_ping(ts.inner("a"))
        pid = ts.b.wait_state("t1", "up")["pid"]
        ts.b.ctl("down", "t1")
        st = ts.b.tunnel("t1")
        assert st["state"] == "stopped" and st["pid"] is None
        gone = Path(f"/proc/{pid}/cmdline")
        assert not gone.exists() or not any(
            w in gone.read_bytes().decode(errors="replace") for w in ("tund.relay", "tund: worker"))
        assert not ts.b.ns.ping(ts.inner("a"), count=2)  # nothing carries the traffic now
        one = json.loads(ts.b.ctl("status", "t1", "--json").stdout)
        assert list(one["tunnels"]) == ["t1"]
        ts.b.ctl("up", "t1")
        ts.b.ns.wait_ping(ts.inner("a"), within=20)
        pid2 = ts.b.wait_state("t1", "up")["pid"]
        ts.b.ctl("restart", "t1")
        ts.b.ns.wait_ping(ts.inner("a"), within=20)
        assert ts.b.wait_state("t1", "up")["pid"] not in (pid, pid2)
        p = ts.b.ctl("down", "nosuch", check=False)
        assert p.returncode == 1 and "nosuch" in p.stderr
    finally:
        ts.a.stop()
        ts.b.stop()
