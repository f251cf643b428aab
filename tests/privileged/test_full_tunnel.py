"""Full-tunnel routing without a loop (issue 19, "what must work" 1, 2, 5).

Four namespaces: a client, a router (the client's default gateway: the host's own default
route), a server beyond it, and a far host behind the server. The
client's one peer has ``allowed_ips = ["0.0.0.0/0", "::/0"]`` and ``table = "auto"``:

* its traffic to the far host goes through the tunnel (the far host sees the tunnel
  address as the source), the tunnel stays up and the underlay carries no loop (the
  client's underlay packet count stays small), the main default route is untouched;
* a daemon killed with SIGKILL leaves the rules; a restarted one adopts them (no
  duplicate rule);
* ``tundctl down`` removes the rules (the host's own default route takes over), ``up``
  puts them back;
* stopping the daemon removes rules and routes: ``ip -json rule`` / ``route`` before the
  first start and after the stop are the same.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netns
from tests.netns import Netns, unique
from tests.sites import Site
from tund import keys

pytestmark = pytest.mark.usefixtures("privileged")

_ENV = {"TUND_LOG_TARGET": "stderr"}
_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(addr[0].encode(), addr)
"""
_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for _ in range(5):
    s.sendto(b"who am i", (sys.argv[1], 7))
    try:
        print(s.recvfrom(2048)[0].decode())
        break
    except OSError:
        pass
"""


def make_ns() -> Netns:
    ns = Netns(unique("tro"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    netns._ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def snapshot(ns: Netns) -> dict[str, object]:
    out: dict[str, object] = {}
    for fam in ("-4", "-6"):
        out[f"rule{fam}"] = json.loads(ns.run("ip", "-json", fam, "rule", "show").stdout or "[]")
        out[f"route{fam}"] = json.loads(ns.run("ip", "-json", fam, "route", "show", "table",
                                               "all").stdout or "[]")
    return out


def restored(ns: Netns, before: dict[str, object], site: Site) -> str:
    """Assert ``ns``'s rules and routes are ``before`` again, within 5 s (a non-persistent
    device goes when its last holder exits); ``site``'s log."""
    deadline = time.monotonic() + 5
    while snapshot(ns) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert snapshot(ns) == before, site.log_tail()
    return site.log.read_text()


def tx_packets(ns: Netns, dev: str) -> int:
    return int(ns.run("cat", f"/sys/class/net/{dev}/statistics/tx_packets").stdout)


def test_everything_through_the_tunnel_without_a_loop(tmp_path: Path) -> None:
    client, router, server, far = make_ns(), make_ns(), make_ns(), make_ns()
    # the server is beyond the client's default gateway, as on the internet: only the
    # main table's default route reaches it
    c_up, _ = netns.veth(client, "10.79.51.2/24", router, "10.79.51.1/24", prefix="trov")
    netns.veth(router, "10.79.53.1/24", server, "10.79.53.2/24", prefix="trov")
    netns.veth(server, "10.79.52.1/24", far, "10.79.52.2/24", prefix="trov")
    client.run("ip", "route", "add", "default", "via", "10.79.51.1")
    server.run("ip", "route", "add", "10.79.51.0/24", "via", "10.79.53.1")
    far.run("ip", "route", "add", "default", "via", "10.79.52.1")
    for ns in (router, server):
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    c_key, s_key = keys.generate_private_key(), keys.generate_private_key()
    c_if, s_if = unique("trot"), unique("trot")
    cs, ss = Site(client, tmp_path / "c", "client"), Site(server, tmp_path / "s", "server")
    for site, key in ((cs, c_key), (ss, s_key)):
        (site.dir / "vpn.key").write_text(key + "\n")
        (site.dir / "vpn.key").chmod(0o600)
    ss.write(f'[interfaces.{s_if}]\nmode = "tun"\naddresses = ["10.79.60.1/24"]\n'
             f'[tunnels.vpn]\ninterface = "{s_if}"\nlisten = "10.79.53.2:51820"\n'
             f'private_key_file = "{ss.dir / "vpn.key"}"\n'
             f'[tunnels.vpn.peers.client]\npublic_key = "{keys.public_key(c_key)}"\n'
             'allowed_ips = ["10.79.60.2/32"]\n')
    cs.write(f'[interfaces.{c_if}]\nmode = "tun"\npersist = false\n'
             'addresses = ["10.79.60.2/24"]\ntable = "auto"\n'
             f'[tunnels.vpn]\ninterface = "{c_if}"\n'
             f'private_key_file = "{cs.dir / "vpn.key"}"\n'
             f'[tunnels.vpn.peers.server]\npublic_key = "{keys.public_key(s_key)}"\n'
             'endpoint = "10.79.53.2:51820"\nallowed_ips = ["0.0.0.0/0", "::/0"]\n'
             'keepalive = 1\n')
    echo = far.spawn(sys.executable, "-c", _ECHO, log=tmp_path / "echo.log")
    deadline = time.monotonic() + 10  # the veth's link-local address settles (DAD) first
    while time.monotonic() < deadline and (
            "fe80" not in client.run("ip", "-6", "addr", "show", "dev", c_up).stdout
            or client.run("ip", "-6", "addr", "show", "dev", c_up, "tentative").stdout):
        time.sleep(0.1)
    time.sleep(0.2)
    before = snapshot(client)
    try:
        ss.start(extra_env=_ENV)
        cs.start(extra_env=_ENV)
        cs.wait_state("vpn", "up", within=20)
        deadline = time.monotonic() + 10
        while "ready" not in (tmp_path / "echo.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        rules = client.run("ip", "-4", "rule", "show").stdout
        assert "from all lookup main suppress_prefixlength 0" in rules, rules
        assert "not from all fwmark 0xca6c lookup 51820" in rules, rules
        assert f"dev {c_if} table 51820" in client.run("ip", "route", "get",
                                                       "10.79.52.2").stdout
        rules6 = client.run("ip", "-6", "rule", "show").stdout
        assert "32764:\tfrom all lookup main suppress_prefixlength 0" in rules6, rules6
        assert "32765:\tnot from all fwmark 0xca6c lookup 51820" in rules6, rules6
        assert f"dev {c_if}" in client.run("ip", "-6", "route", "show", "table", "51820").stdout
        # the tunnel's own packets (marked) still take the underlay
        assert f"via 10.79.51.1 dev {c_up}" in client.run(
            "ip", "route", "get", "10.79.53.2", "mark", "51820").stdout
        # while the host's own (unmarked) packets to the server go through the tunnel
        assert f"dev {c_if}" in client.run("ip", "route", "get", "10.79.53.2").stdout
        assert "via 10.79.51.1" in client.run("ip", "-4", "route", "show", "default").stdout
        t0, n0 = time.monotonic(), tx_packets(client, c_up)
        got = client.run(sys.executable, "-c", _ASK, "10.79.52.2").stdout.strip()
        assert got == "10.79.60.2", (got, cs.log_tail())  # the far host saw the tunnel address
        time.sleep(3)
        sent = tx_packets(client, c_up) - n0
        print(f"underlay packets sent by the client in {time.monotonic() - t0:.1f}s: {sent}")
        assert sent < 200, sent  # a loop sends hundreds of thousands
        assert cs.tunnel("vpn")["state"] == "up"

        # a daemon killed with SIGKILL leaves its rules; a new one adopts them
        cs.stop(signal.SIGKILL)
        assert "not from all fwmark 0xca6c" in client.run("ip", "-4", "rule", "show").stdout
        cs.start(extra_env=_ENV)
        cs.wait_state("vpn", "up", within=20)
        rules = client.run("ip", "-4", "rule", "show").stdout
        assert rules.count("fwmark 0xca6c") == 1 and rules.count("suppress_prefixlength") == 1, \
            rules
        got = client.run(sys.executable, "-c", _ASK, "10.79.52.2").stdout.strip()
        assert got == "10.79.60.2", (got, cs.log_tail())

        # a tunnel taken down takes its rules with it (the host falls back to its own
        # default route); up puts them back
        cs.ctl("down", "vpn")
        assert "fwmark" not in client.run("ip", "-4", "rule", "show").stdout
        assert "dev " + c_up in client.run("ip", "route", "get", "10.79.52.2").stdout
        cs.ctl("up", "vpn")
        cs.wait_state("vpn", "up", within=20)
        assert "fwmark 0xca6c" in client.run("ip", "-4", "rule", "show").stdout
        got = client.run(sys.executable, "-c", _ASK, "10.79.52.2").stdout.strip()
        assert got == "10.79.60.2", (got, cs.log_tail())
    finally:
        cs.stop()
        ss.stop()
        echo.kill()
        echo.wait(10)
    log = restored(client, before, cs)  # the device (persist = false) and what tund added
    assert "[#] ip -4 rule add not fwmark 51820 table 51820" in log
    assert "[#] ip -4 rule del not fwmark 51820 table 51820" in log


def test_table_moves_routes_between_main_a_numbered_table_and_none(tmp_path: Path) -> None:
    """``table`` changed by reload: auto (main) -> 100 -> off -> auto, each step a diff."""
    ns = make_ns()
    dev = unique("trot")
    site = Site(ns, tmp_path / "s", "s")

    def conf(table: str) -> str:
        return (f'[interfaces.{dev}]\nmode = "tun"\npersist = false\n'
                f'addresses = ["10.79.70.1/24"]\nroutes = ["10.79.71.0/24"]\ntable = {table}\n')

    def where() -> tuple[bool, bool]:
        main = ns.run("ip", "-4", "route", "show", "dev", dev).stdout
        t100 = ns.run("ip", "-4", "route", "show", "table", "100", check=False).stdout
        return "10.79.71.0/24" in main, "10.79.71.0/24" in t100

    site.write(conf('"auto"'))
    try:
        site.start(extra_env=_ENV)
        deadline = time.monotonic() + 10
        while where() != (True, False) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert where() == (True, False)
        for table, want in (("100", (False, True)), ('"off"', (False, False)),
                            ('"auto"', (True, False))):
            site.write(conf(table))
            site.reload()
            assert where() == want, (table, site.log_tail())
    finally:
        site.stop()
