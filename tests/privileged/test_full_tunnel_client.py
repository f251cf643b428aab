"""Full tunnel on the road-warrior client: a *connecting* WireGuard tunnel over UDP
(issue 19, "what must work" 1, 2, 5; before, ``tundctl check`` refused it: the daemon
did not make a connecting tunnel's socket, so nobody could mark it).

Three namespaces: a client, whose tunnel has ``remote`` = the server's public address
and ``routes = ["0.0.0.0/0", "::/0"]`` with ``table = "auto"``; a server that listens and
forwards; a far host behind the server. The server's public address is reached only
through the client's default gateway (the server's veth end), as on the internet, so an
unmarked tunnel socket would send its own packets into the tunnel.

* the daemon makes the tunnel's socket, marks it (51820), the worker sends from it;
* the client's traffic to the far host goes through the tunnel (the far host sees the
  tunnel address; ping works; the tunnel's byte counters rise), the tunnel stays up and
  the underlay carries no loop; ``src_valid_mark`` is set (logged) before the rules;
* the client filters reverse paths strictly (``rp_filter = 1``) and its ``post_up`` hooks
  keep the tunnel's mark in conntrack and put it back on the replies: with
  ``src_valid_mark`` the replies pass; with it reset to 0 they are dropped (counted as
  IPReversePathFilter);
* a reload changing ``fwmark`` re-marks the live socket and moves the table: the worker
  keeps running;
* a daemon killed with SIGKILL leaves the rules; a restarted one adopts them, without
  duplicates, and sets ``src_valid_mark`` again;
* stopping the daemon removes rules and routes (``ip -json rule`` / ``route show table
  all`` before and after are the same).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netns
from tests.netns import Netns, unique
from tests.privileged.test_full_tunnel import (
    _ASK,
    _ECHO,
    restored,
    snapshot,
    tx_packets,
)
from tests.sites import Site
from tund import keys

pytestmark = pytest.mark.usefixtures("privileged")

_ENV = {"TUND_LOG_TARGET": "stderr"}
SERVER = "10.79.83.1"  # the server's public address (on its loopback)
FAR = "10.79.82.2"
CLIENT_INNER = "10.79.90.2"


#: the client's hooks: the mark of the tunnel's packets kept in conntrack and put back on
#: the replies, so that strict rp_filter (with src_valid_mark, which tund sets) checks the
#: replies' source against the main table, not the tunnel's
CONNMARK = """post_up = [["nft", "add", "table", "ip", "pz_%i"],
  ["nft", "add", "chain", "ip", "pz_%i", "pre", "{ type filter hook prerouting priority -150; }"],
  ["nft", "add", "rule", "ip", "pz_%i", "pre", "meta", "l4proto", "udp", "meta", "mark",
   "set", "ct", "mark"],
  ["nft", "add", "chain", "ip", "pz_%i", "post",
   "{ type filter hook postrouting priority -150; }"],
  ["nft", "add", "rule", "ip", "pz_%i", "post", "meta", "l4proto", "udp", "meta", "mark",
   "!=", "0", "ct", "mark", "set", "meta", "mark"]]
pre_down = [["nft", "delete", "table", "ip", "pz_%i"]]
"""


def full_client(cs: Site, c_if: str, s_pub: str, remote: str, hooks: str = "") -> str:
    """The client's config: a connecting tunnel whose interface routes everything."""
    return (f'[interfaces.{c_if}]\nmode = "tun"\npersist = false\n'
            f'addresses = ["{CLIENT_INNER}/24"]\nroutes = ["0.0.0.0/0", "::/0"]\n'
            f'table = "auto"\n{hooks}'
            f'[tunnels.vpn]\ninterface = "{c_if}"\nremote = "{remote}"\n'
            f'private_key_file = "{cs.dir / "vpn.key"}"\n'
            f'peer_public_key = "{s_pub}"\nkeepalive = 1\n')


def make_ns() -> Netns:
    ns = Netns(unique("pz"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    netns._ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def link(a: Netns, addr_a: str, b: Netns, addr_b: str) -> tuple[str, str]:
    na, nb = unique("pzv"), unique("pzv")
    subprocess.run(["ip", "link", "add", na, "netns", a.name, "type", "veth", "peer", "name",
                    nb, "netns", b.name], check=True)
    for ns, dev, addr in ((a, na, addr_a), (b, nb, addr_b)):
        ns.run("ip", "addr", "add", addr, "dev", dev)
        ns.run("ip", "link", "set", dev, "up")
    return na, nb


def settle(ns: Netns, dev: str) -> None:
    """Wait for the veth's link-local address to leave DAD (it adds routes)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            "fe80" not in ns.run("ip", "-6", "addr", "show", "dev", dev).stdout
            or ns.run("ip", "-6", "addr", "show", "dev", dev, "tentative").stdout):
        time.sleep(0.1)
    time.sleep(0.2)


def rp_dropped(ns: Netns) -> int:
    """The namespace's count of packets reverse-path filtering dropped."""
    names, values = [line.split() for line in ns.run("cat", "/proc/net/netstat").stdout
                     .splitlines() if line.startswith("TcpExt:")][:2]
    return int(values[names.index("IPReversePathFilter")])


def ask(client: Netns) -> str:
    return client.run(sys.executable, "-c", _ASK, FAR).stdout.strip()


def worker_mark(ns: Netns, pid: int) -> str:
    """The ``fwmark:0x..`` of the UDP sockets worker ``pid`` holds (``ss -e``)."""
    out = ns.run("ss", "-uanpe", "-H").stdout
    lines = [line for line in out.splitlines() if f"pid={pid}," in line]
    assert lines, out
    return " ".join(w for line in lines for w in line.split() if w.startswith("fwmark:"))


def three(tmp_path: Path) -> tuple[Netns, Netns, Netns, str]:
    """Client, server and far host, linked and routed; the client's underlay device."""
    client, server, far = make_ns(), make_ns(), make_ns()
    c_up, _ = link(client, "10.79.81.2/24", server, "10.79.81.1/24")
    link(server, "10.79.82.1/24", far, f"{FAR}/24")
    server.run("ip", "addr", "add", f"{SERVER}/32", "dev", "lo")
    client.run("ip", "route", "add", "default", "via", "10.79.81.1")
    far.run("ip", "route", "add", "default", "via", "10.79.82.1")
    server.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    return client, server, far, c_up


def sites(tmp_path: Path, client: Netns, server: Netns) -> tuple[Site, Site, str, str]:
    """The client's and the server's Site (the server's config written), the client's
    interface name and the server's public key."""
    c_key, s_key = keys.generate_private_key(), keys.generate_private_key()
    cs, ss = Site(client, tmp_path / "c", "client"), Site(server, tmp_path / "s", "server")
    for site, key in ((cs, c_key), (ss, s_key)):
        (site.dir / "vpn.key").write_text(key + "\n")
        (site.dir / "vpn.key").chmod(0o600)
    s_if = unique("pzt")
    ss.write(f'[interfaces.{s_if}]\nmode = "tun"\naddresses = ["10.79.90.1/24"]\n'
             f'[tunnels.vpn]\ninterface = "{s_if}"\nlisten = "{SERVER}:51820"\n'
             f'private_key_file = "{ss.dir / "vpn.key"}"\n'
             f'[tunnels.vpn.peers.client]\npublic_key = "{keys.public_key(c_key)}"\n'
             f'allowed_ips = ["{CLIENT_INNER}/32"]\n')
    return cs, ss, unique("pzt"), keys.public_key(s_key)


def test_a_connecting_udp_client_sends_everything_through_the_tunnel(tmp_path: Path) -> None:
    client, server, far, c_up = three(tmp_path)
    client.run("sysctl", "-qw", "net.ipv4.conf.all.src_valid_mark=0")
    for key in ("all", "default", c_up):  # strict reverse-path filtering
        client.run("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1")
    cs, ss, c_if, s_pub = sites(tmp_path, client, server)

    def client_conf(mark: str = "") -> str:
        return full_client(cs, c_if, s_pub, f"{SERVER}:51820", CONNMARK) + mark

    cs.write(client_conf())
    check = cs.ctl("check", str(cs.config), check=False)  # before: refused
    assert check.returncode == 0, check.stdout + check.stderr
    echo = far.spawn(sys.executable, "-c", _ECHO, log=tmp_path / "echo.log")
    settle(client, c_up)
    before = snapshot(client)
    try:
        ss.start(extra_env=_ENV)
        cs.start(extra_env=_ENV)
        st = cs.wait_state("vpn", "up", within=20)
        deadline = time.monotonic() + 10
        while "ready" not in (tmp_path / "echo.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker_mark(client, st["pid"]) == "fwmark:0xca6c"  # the daemon's socket
        rules = client.run("ip", "-4", "rule", "show").stdout
        assert "not from all fwmark 0xca6c lookup 51820" in rules, rules
        assert "from all lookup main suppress_prefixlength 0" in rules, rules
        assert "not from all fwmark 0xca6c lookup 51820" in client.run(
            "ip", "-6", "rule", "show").stdout
        assert client.run("sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").stdout.strip() \
            == "1"
        # the host's packets to the server go through the tunnel, the socket's do not
        assert f"dev {c_if}" in client.run("ip", "route", "get", SERVER).stdout
        assert f"dev {c_up}" in client.run("ip", "route", "get", SERVER, "mark",
                                           "51820").stdout
        counted = cs.tunnel("vpn")
        t0, n0 = time.monotonic(), tx_packets(client, c_up)
        assert ask(client) == CLIENT_INNER, cs.log_tail()  # the far host saw the tunnel
        assert client.ping(FAR, count=3, timeout=2), cs.log_tail()
        time.sleep(3)
        sent = tx_packets(client, c_up) - n0
        print(f"underlay packets sent by the client in {time.monotonic() - t0:.1f}s: {sent}")
        assert sent < 200, sent  # a loop sends hundreds of thousands
        now = cs.tunnel("vpn")
        assert now["state"] == "up" and now["pid"] == st["pid"], now
        assert now["tx_bytes"] > counted["tx_bytes"] and now["rx_bytes"] > counted["rx_bytes"]

        # a reload changing fwmark re-marks the live socket and moves table and rules
        cs.write(client_conf("fwmark = 4242\n"))
        done = cs.reload()
        assert "set fwmark 4242 on the socket of tunnel vpn" in done.stdout, done.stdout
        assert worker_mark(client, st["pid"]) == "fwmark:0x1092"
        rules = client.run("ip", "-4", "rule", "show").stdout
        assert "fwmark 0x1092 lookup 4242" in rules and "0xca6c" not in rules, rules
        assert ask(client) == CLIENT_INNER, cs.log_tail()
        assert cs.tunnel("vpn")["pid"] == st["pid"]  # the worker kept running

        # without src_valid_mark, strict rp_filter drops the server's replies
        # (the flush: a connected socket's cached input route skips the check)
        client.run("sysctl", "-qw", "net.ipv4.conf.all.src_valid_mark=0")
        client.run("ip", "route", "flush", "cache")
        dropped = rp_dropped(client)
        assert not client.ping(FAR, count=2, timeout=1)
        assert rp_dropped(client) > dropped  # by reverse-path filtering

        # a daemon killed with SIGKILL leaves its rules; a restarted one adopts them (and
        # sets src_valid_mark again)
        cs.stop(signal.SIGKILL)
        assert "fwmark 0x1092" in client.run("ip", "-4", "rule", "show").stdout
        cs.start(extra_env=_ENV)
        cs.wait_state("vpn", "up", within=20)
        assert client.run("sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").stdout.strip() \
            == "1"
        for fam in ("-4", "-6"):
            rules = client.run("ip", fam, "rule", "show").stdout
            assert rules.count("fwmark 0x1092") == 1, rules  # adopted, not duplicated
            assert rules.count("suppress_prefixlength") == 1, rules
        assert ask(client) == CLIENT_INNER, cs.log_tail()
    finally:
        cs.stop()
        ss.stop()
        echo.kill()
        echo.wait(10)
    log = restored(client, before, cs)
    assert log.index("[#] sysctl -q net.ipv4.conf.all.src_valid_mark=1") < log.index(
        "[#] ip -4 rule add not fwmark 51820 table 51820")
    assert "[#] ip -4 rule del not fwmark 4242 table 4242" in log


def test_a_client_whose_server_name_moves_sends_to_the_new_address_from_its_marked_socket(
        tmp_path: Path) -> None:
    """``remote`` is a host name: the daemon's socket is dual-stack (the name's address
    may be of either family); the worker looks the name up again (every 0.5 s here) and
    re-points that socket, keeping the mark, when the address moves."""
    client, server, far, c_up = three(tmp_path)
    etc = Path("/etc/netns") / client.name
    etc.mkdir(parents=True)
    hosts = etc / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.79.83.9 vpn.test\n")  # nobody at .9
    cs, ss, c_if, s_pub = sites(tmp_path, client, server)
    cs.write(full_client(cs, c_if, s_pub, "vpn.test:51820"))
    echo = far.spawn(sys.executable, "-c", _ECHO, log=tmp_path / "echo.log")
    try:
        ss.start(extra_env=_ENV)
        cs.start(extra_env=_ENV, extra_args=("--test-timers", "resolve_every=0.5"))
        time.sleep(2)
        st = cs.tunnel("vpn")
        assert st["state"] != "up" and st["pid"], st  # the name points at nobody
        assert worker_mark(client, st["pid"]) == "fwmark:0xca6c"
        with open(hosts, "r+") as f:  # in place: the namespace's bind mount sees it
            f.truncate(0)
            f.write(f"127.0.0.1 localhost\n{SERVER} vpn.test\n")
        up = cs.wait_state("vpn", "up", within=20)
        assert up["pid"] == st["pid"], up  # the same worker, the same socket
        assert worker_mark(client, up["pid"]) == "fwmark:0xca6c"
        log = cs.log.read_text()
        assert f"vpn.test now resolves to [::ffff:{SERVER}]:51820" in log, cs.log_tail()
        deadline = time.monotonic() + 10
        while "ready" not in (tmp_path / "echo.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        n0 = tx_packets(client, c_up)
        assert ask(client) == CLIENT_INNER, cs.log_tail()
        time.sleep(2)
        assert tx_packets(client, c_up) - n0 < 200  # no loop
    finally:
        cs.stop()
        ss.stop()
        echo.kill()
        echo.wait(10)
        shutil.rmtree(etc, ignore_errors=True)
