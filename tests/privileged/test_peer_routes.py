"""Routes from peers' allowed_ips against the real kernel (issue 17.3): a reload that adds
a peer (a drop-in of its own) adds its routes through the interface, removing it removes
them, a 0.0.0.0/0 peer never touches the namespace's default route (it makes a full tunnel
by policy routing, issue 19), and a peer repeating
another link's prefix fails the reload instead of taking that route over."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests import netns
from tests.netns import Netns, unique
from tests.sites import Site
from tund import keys

pytestmark = pytest.mark.usefixtures("privileged")

_ENV = {"TUND_LOG_TARGET": "stderr"}


def _netns() -> Netns:
    """A throwaway namespace named with this helper's prefix (tpu); removed at cleanup."""
    ns = Netns(unique("tpu"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    netns._ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def _routes(ns: Netns, dev: str, family: str) -> set[str]:
    out = ns.run("ip", "-json", family, "route", "show", "dev", dev, "proto", "static").stdout
    return {r["dst"] for r in json.loads(out or "[]")}


def test_reload_adding_and_removing_a_peer_adds_and_removes_its_routes(tmp_path: Path) -> None:
    ns = _netns()
    dev = unique("tpu")
    ns.run("ip", "link", "add", "tpuup0", "type", "veth", "peer", "name", "tpuup1")  # uplink
    ns.run("ip", "addr", "add", "10.94.255.1/24", "dev", "tpuup0")
    ns.run("ip", "link", "set", "tpuup1", "up")
    ns.run("ip", "link", "set", "tpuup0", "up")
    ns.run("ip", "route", "add", "default", "via", "10.94.255.254")
    site = Site(ns, tmp_path / "s", "s")
    key = site.dir / "vpn.key"
    key.write_text(keys.generate_private_key() + "\n")
    key.chmod(0o600)
    site.write(f'[interfaces.{dev}]\nmode = "tun"\naddresses = ["10.94.0.1/24", "fd94::1/64"]\n'
               f'[tunnels.vpn]\ninterface = "{dev}"\nlisten = "127.0.0.1:56291"\n'
               f'private_key_file = "{key}"\n'
               '[tunnels.vpn.peers.bob]\n'
               f'public_key = "{keys.public_key(keys.generate_private_key())}"\n'
               'allowed_ips = ["10.94.0.3/32", "10.95.0.0/16"]\n')
    drop_in = site.dir / "tunnels.d" / "50-alice.toml"
    try:
        site.start(extra_env=_ENV)
        assert _routes(ns, dev, "-4") == {"10.95.0.0/16"}  # bob's, at start; /32 covered
        drop_in.parent.mkdir()
        drop_in.write_text(
            "[tunnels.vpn.peers.alice]\n"
            f'public_key = "{keys.public_key(keys.generate_private_key())}"\n'
            'allowed_ips = ["10.96.1.0/24", "fd96::/64", "0.0.0.0/0"]\n')
        dry = json.loads(site.ctl("reload", "--dry-run", "--json").stdout)
        # alice's 0.0.0.0/0 makes it a full tunnel (issue 19): the main table keeps
        # its default route, table 51820 and two rules take the host's traffic
        assert dry["actions"] == [f"[#] ip route replace 10.96.1.0/24 dev {dev} proto static",
                                  f"[#] ip route replace fd96::/64 dev {dev} proto static",
                                  "set fwmark 51820 on the socket of tunnel vpn",
                                  "set sysctl net.ipv4.conf.all.src_valid_mark=1 "
                                  "(if it is not)",
                                  f"[#] ip -4 route add 0.0.0.0/0 dev {dev} table 51820 "
                                  "proto static",
                                  "[#] ip -4 rule add not fwmark 51820 table 51820",
                                  "[#] ip -4 rule add table main suppress_prefixlength 0",
                                  "tell worker of tunnel vpn: peers +alice"]
        assert any("0.0.0.0/0 routes everything through" in n for n in dry["notes"]), dry
        assert _routes(ns, dev, "-4") == {"10.95.0.0/16"}  # the dry run changed nothing
        done = json.loads(site.reload().stdout)
        assert done["actions"] == dry["actions"]
        assert _routes(ns, dev, "-4") == {"10.95.0.0/16", "10.96.1.0/24"}
        assert _routes(ns, dev, "-6") == {"fd96::/64"}
        default = ns.run("ip", "-4", "route", "show", "default").stdout
        assert "via 10.94.255.254 dev tpuup0" in default and dev not in default, default
        assert "routes everything through" in site.log.read_text()  # the note is logged
        rules = ns.run("ip", "-4", "rule", "show").stdout
        # the suppress rule is looked at first (the LAN and the underlay stay in main)
        assert "32764:\tfrom all lookup main suppress_prefixlength 0" in rules, rules
        assert "32765:\tnot from all fwmark 0xca6c lookup 51820" in rules, rules
        st = site.status()["tunnels"]["vpn"]["peers"]
        assert set(st) == {"alice", "bob"} and st["alice"]["state"] == "never"
        drop_in.unlink()
        gone = json.loads(site.reload().stdout)
        # deleted as the kernel reports them (IPv6 routes carry the kernel's metric 1024)
        assert [a.removesuffix(" metric 1024") for a in gone["actions"]] == [
            f"[#] ip route del 10.96.1.0/24 dev {dev} proto static",
            f"[#] ip route del fd96::/64 dev {dev} proto static",
            "[#] ip -4 rule del not fwmark 51820 table 51820",
            "[#] ip -4 rule del table main suppress_prefixlength 0",
            f"[#] ip -4 route del 0.0.0.0/0 dev {dev} table 51820 proto static",
            "set fwmark 0 on the socket of tunnel vpn",
            "tell worker of tunnel vpn: peers -alice"]
        assert "fwmark" not in ns.run("ip", "-4", "rule", "show").stdout
        assert _routes(ns, dev, "-4") == {"10.95.0.0/16"}
        assert _routes(ns, dev, "-6") == set()
        assert "via 10.94.255.254" in ns.run("ip", "-4", "route", "show", "default").stdout

        # a peer repeating the uplink's own prefix: ip route replace would move the LAN
        # into the tunnel; the reload refuses it and changes nothing
        drop_in.write_text(
            "[tunnels.vpn.peers.lan]\n"
            f'public_key = "{keys.public_key(keys.generate_private_key())}"\n'
            'allowed_ips = ["10.94.255.0/24"]\n')
        p = site.reload(check=False)
        assert p.returncode == 1, p.stdout + p.stderr
        assert ("would take over the route of 10.94.255.0/24 through interface tpuup0"
                in p.stdout + p.stderr), p.stdout + p.stderr
        lan = ns.run("ip", "-4", "route", "show", "10.94.255.0/24").stdout
        assert "dev tpuup0" in lan and dev not in lan, lan
        assert set(site.status()["tunnels"]["vpn"]["peers"]) == {"bob"}
    finally:
        site.stop()
