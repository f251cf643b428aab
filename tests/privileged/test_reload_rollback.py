"""A reload that fails midway is undone: the kernel state and the running config stay as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.netns import Netns
from tests.sites import Site, new_ifname

pytestmark = pytest.mark.usefixtures("privileged")


def _conf(i1: str, a1: list[str], i2: str, a2: list[str], mtu2: int | None = None) -> str:
    mtu = f"mtu = {mtu2}" if mtu2 else ""
    return f"""
[interfaces.{i1}]
mode = "tun"
addresses = {json.dumps(a1)}

[interfaces.{i2}]
mode = "tun"
addresses = {json.dumps(a2)}
{mtu}

[tunnels.one]
interface = "{i1}"
transport = "udp"
listen = "127.0.0.1:56101"
encryption = "none"

[tunnels.two]
interface = "{i2}"
transport = "udp"
listen = "127.0.0.1:56102"
encryption = "none"
"""


def _addrs(ns: Netns, dev: str) -> list[str]:
    info = json.loads(ns.run("ip", "-j", "addr", "show", "dev", dev).stdout)[0]
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in info["addr_info"]
                  if a.get("scope") != "link")


def test_failed_step_is_rolled_back_and_old_config_stays(tmp_path: Path) -> None:
    ns = Netns.make("rb")
    site = Site(ns, tmp_path / "s", "s")
    i1, i2 = sorted([new_ifname(), new_ifname()])  # i1 is applied before i2
    site.write(_conf(i1, ["10.77.1.1/24"], i2, ["10.77.2.1/24"]))
    try:
        site.start()
        pids = {n: t["pid"] for n, t in site.status()["tunnels"].items()}
        # IPv6 is off on i2: `ip` will refuse the IPv6 address there, after i1 was changed
        ns.run("sysctl", "-qw", f"net.ipv6.conf.{i2}.disable_ipv6=1")
        before = (_addrs(ns, i1), _addrs(ns, i2))
        site.write(_conf(i1, ["10.77.1.1/24", "10.77.3.1/24"], i2,
                         ["10.77.2.1/24", "fd77::1/64"], mtu2=1300))
        dry = json.loads(site.ctl("reload", "--dry-run", "--json").stdout)
        assert any("10.77.3.1/24" in a for a in dry["actions"])
        assert _addrs(ns, i1) == before[0]  # a dry run changes nothing
        p = site.reload(check=False)
        assert p.returncode == 1
        msg = p.stdout + p.stderr
        assert f"configure {i2}" in msg and "undone" in msg, msg
        assert (_addrs(ns, i1), _addrs(ns, i2)) == before
        link2 = json.loads(ns.run("ip", "-j", "link", "show", i2).stdout)[0]
        assert link2["mtu"] == 1500  # the MTU step before the failing one was undone too
        st = site.status()
        assert {n: t["pid"] for n, t in st["tunnels"].items()} == pids
        assert st["daemon"]["last_reload"]["ok"] is False
        # and the daemon still reloads fine once the config is fixed
        site.write(_conf(i1, ["10.77.1.1/24", "10.77.3.1/24"], i2, ["10.77.2.1/24"]))
        ok = json.loads(site.reload().stdout)
        assert ok["changed"]["interfaces"] == [i1]
        assert _addrs(ns, i1) == ["10.77.1.1/24", "10.77.3.1/24"]
    finally:
        site.stop()
