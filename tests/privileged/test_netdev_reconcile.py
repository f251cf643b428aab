"""reconcile.apply against real links in a throwaway namespace (``ip -n NS``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from tests.netns import Netns, unique
from tund.config import InterfaceConfig
from tund.errors import IpCommandError
from tund.netdev.ip import IpRunner
from tund.netdev.reconcile import apply


class RecordingIp(IpRunner):
    """The real runner, remembering every change it ran (reads are not recorded)."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns=netns)
        self.ran: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> str:
        self.ran.append(list(argv))
        return super().run(argv)


def snapshot(ip: IpRunner, name: str) -> dict[str, Any]:
    """The parts of ``ip -json`` a config can change (volatile counters left out)."""
    (link,) = ip.json(["addr", "show", "dev", name])
    keep = ("flags", "mtu", "master", "txqlen", "address")
    return {
        **{k: link.get(k) for k in keep},
        "addresses": sorted((a["local"], a["prefixlen"], a["scope"])
                            for a in link.get("addr_info", [])),
        "routes4": ip.json(["-4", "route", "show", "dev", name]),
        "routes6": ip.json(["-6", "route", "show", "dev", name]),
    }


@pytest.fixture
def ns(privileged: None) -> Netns:
    return Netns.make("nd")


def tap(ns: Netns, mode: str = "tap") -> str:
    name = unique("nd")
    ns.run("ip", "tuntap", "add", name, "mode", mode)
    return name


def test_apply_configures_then_second_apply_runs_nothing(ns: Netns) -> None:
    dev, br = tap(ns), unique("ndbr")
    ns.run("ip", "link", "add", br, "type", "bridge")
    ns.run("ip", "addr", "add", "fe80::99/64", "dev", dev)  # link-local: never ours
    ns.run("ip", "addr", "add", "10.210.7.7/32", "dev", dev)  # not in config: removed
    cfg = InterfaceConfig(mode="tap", mtu=1400, mac="02:00:00:21:00:01", txqueuelen=2000,
                          bridge=br, addresses=("10.210.1.1/24", "fd10:210::1/64"),
                          routes=("10.210.9.0/24", "fd10:210:9::/64"))
    ip = RecordingIp(ns.name)
    steps = apply(ip, dev, cfg)
    assert ip.ran == [list(s.argv) for s in steps] and len(steps) == 10
    snap = snapshot(ip, dev)
    assert (snap["mtu"], snap["address"], snap["master"], snap["txqlen"]) == (
        1400, "02:00:00:21:00:01", br, 2000)
    assert "UP" in snap["flags"]
    assert snap["addresses"] == [("10.210.1.1", 24, "global"), ("fd10:210::1", 64, "global"),
                                 ("fe80::99", 64, "link")]
    static4 = ip.json(["-4", "route", "show", "dev", dev, "proto", "static"])
    static6 = ip.json(["-6", "route", "show", "dev", dev, "proto", "static"])
    assert [r["dst"] for r in static4 + static6] == ["10.210.9.0/24", "fd10:210:9::/64"]

    ip.ran.clear()
    assert apply(ip, dev, cfg) == []
    assert ip.ran == []

    smaller = InterfaceConfig(mode="tap", mtu=1400, mac="02:00:00:21:00:01", txqueuelen=2000,
                              addresses=("10.210.1.1/24",), routes=("10.210.9.0/24",))
    apply(ip, dev, smaller)
    assert ip.ran == [["link", "set", dev, "nomaster"],
                      ["addr", "del", "fd10:210::1/64", "dev", dev],
                      ["route", "del", "fd10:210:9::/64", "dev", dev, "proto", "static",
                       "metric", "1024"]]
    assert snapshot(ip, dev)["master"] is None
    ip.ran.clear()
    assert apply(ip, dev, smaller) == [] and ip.ran == []


def test_failure_mid_way_restores_state_v6_route_on_small_mtu(ns: Netns) -> None:
    dev = tap(ns, "tun")
    ip = RecordingIp(ns.name)
    before = snapshot(ip, dev)
    # mtu < 1280 switches IPv6 off on the link, so the IPv6 route (last step) fails.
    cfg = InterfaceConfig(mode="tun", mtu=1200, addresses=("10.210.2.1/24",),
                          routes=("10.210.9.0/24", "fd10:210:9::/64"))
    with pytest.raises(IpCommandError) as ei:
        apply(ip, dev, cfg)
    assert ei.value.argv[-6:] == ["replace", "fd10:210:9::/64", "dev", dev, "proto", "static"]
    assert len(ip.ran) == 9  # 4 applied, 1 failed, 4 undone
    assert ip.ran[5:] == [["route", "del", "10.210.9.0/24", "dev", dev, "proto", "static"],
                          ["addr", "del", "10.210.2.1/24", "dev", dev],
                          ["link", "set", dev, "down"],
                          ["link", "set", dev, "mtu", "1500"]]
    assert snapshot(ip, dev) == before


def test_failure_on_missing_bridge_restores_state(ns: Netns) -> None:
    dev = tap(ns)
    ip = RecordingIp(ns.name)
    before = snapshot(ip, dev)
    cfg = InterfaceConfig(mode="tap", mtu=1300, mac="02:00:00:21:00:02", txqueuelen=42,
                          bridge=unique("ndnobr"), addresses=("10.210.3.1/24",))
    with pytest.raises(IpCommandError, match="does not exist"):
        apply(ip, dev, cfg)
    assert [a[3] for a in ip.ran] == ["mtu", "address", "txqueuelen", "master",
                                      "txqueuelen", "address", "mtu"]
    assert snapshot(ip, dev) == before
