"""plan_steps (pure) for many link states; apply/rollback against FakeIp."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.test_netdev_fakeip import FakeIp, FakeLink
from tund.config import InterfaceConfig
from tund.errors import IpCommandError
from tund.netdev.reconcile import LinkState, Route, apply, parse_state, plan_steps, read_state


def iface(**kw: Any) -> InterfaceConfig:
    kw.setdefault("mode", "tun")
    return InterfaceConfig(**kw)


def argvs(steps: list[Any]) -> list[list[str]]:
    return [list(s.argv) for s in steps]


FULL = dict(mode="tap", mtu=1400, mac="02:00:00:00:00:01", txqueuelen=1000, bridge="ndbr0",
            addresses=("10.210.0.1/24", "fd10:210::1/64"), routes=("10.210.9.0/24",))
CONFIGURED = LinkState("t0", up=True, mtu=1400, mac="02:00:00:00:00:01", master="ndbr0",
                       txqueuelen=1000, addresses=("10.210.0.1/24", "fd10:210::1/64"),
                       routes=(Route("10.210.9.0/24"),))


def test_fresh_device_gets_everything_in_order() -> None:
    st = LinkState("t0", mtu=1500, mac="02:11:11:11:11:11", txqueuelen=500)
    steps = plan_steps("t0", iface(**FULL), st)
    assert argvs(steps) == [
        ["link", "set", "t0", "mtu", "1400"],
        ["link", "set", "t0", "address", "02:00:00:00:00:01"],
        ["link", "set", "t0", "txqueuelen", "1000"],
        ["link", "set", "t0", "master", "ndbr0"],
        ["link", "set", "t0", "up"],
        ["addr", "add", "10.210.0.1/24", "dev", "t0"],
        ["addr", "add", "fd10:210::1/64", "dev", "t0", "nodad"],
        ["route", "replace", "10.210.9.0/24", "dev", "t0", "proto", "static"],
    ]
    assert [list(s.undo or []) for s in steps] == [
        ["link", "set", "t0", "mtu", "1500"],
        ["link", "set", "t0", "address", "02:11:11:11:11:11"],
        ["link", "set", "t0", "txqueuelen", "500"],
        ["link", "set", "t0", "nomaster"],
        ["link", "set", "t0", "down"],
        ["addr", "del", "10.210.0.1/24", "dev", "t0"],
        ["addr", "del", "fd10:210::1/64", "dev", "t0"],
        ["route", "del", "10.210.9.0/24", "dev", "t0", "proto", "static"],
    ]
    assert all(s.describe for s in steps)


def test_configured_device_needs_nothing() -> None:
    assert plan_steps("t0", iface(**FULL), CONFIGURED) == []


def test_unset_options_are_left_alone() -> None:
    st = LinkState("t0", up=True, mtu=9000, txqueuelen=7, mac="02:99:99:99:99:99")
    assert plan_steps("t0", iface(), st) == []


def test_extra_address_removed_link_local_never_read() -> None:
    link = {"ifname": "t0", "flags": ["UP"], "mtu": 1500, "txqlen": 500, "link_type": "none",
            "addr_info": [
                {"family": "inet", "local": "10.210.0.1", "prefixlen": 24, "scope": "global"},
                {"family": "inet", "local": "10.210.7.7", "prefixlen": 32, "scope": "global"},
                {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"},
                {"family": "inet6", "local": "fd10:210::1", "prefixlen": 64, "scope": "global"},
            ]}
    st = parse_state("t0", link, [], [])
    assert st.addresses == ("10.210.0.1/24", "10.210.7.7/32", "fd10:210::1/64")
    steps = plan_steps("t0", iface(addresses=("10.210.0.1/24", "fd10:210::1/64")), st)
    assert argvs(steps) == [["addr", "del", "10.210.7.7/32", "dev", "t0"]]
    assert steps[0].undo == ("addr", "add", "10.210.7.7/32", "dev", "t0")
    assert not any("fe80" in " ".join(s.argv) for s in steps)


def test_mtu_change_only() -> None:
    steps = plan_steps("t0", iface(**{**FULL, "mtu": 1300}), CONFIGURED)
    assert argvs(steps) == [["link", "set", "t0", "mtu", "1300"]]
    assert steps[0].undo == ("link", "set", "t0", "mtu", "1400")


def test_bridge_on_off_and_moved() -> None:
    on = plan_steps("t0", iface(**FULL), replace(CONFIGURED, master=None))
    assert argvs(on) == [["link", "set", "t0", "master", "ndbr0"]]
    assert on[0].undo == ("link", "set", "t0", "nomaster")
    off = plan_steps("t0", iface(**{**FULL, "bridge": None}), CONFIGURED)
    assert argvs(off) == [["link", "set", "t0", "nomaster"]]
    assert off[0].undo == ("link", "set", "t0", "master", "ndbr0")
    moved = plan_steps("t0", iface(**{**FULL, "bridge": "ndbr1"}), CONFIGURED)
    assert argvs(moved) == [["link", "set", "t0", "master", "ndbr1"]]
    assert moved[0].undo == ("link", "set", "t0", "master", "ndbr0")


def test_tun_master_is_not_ours() -> None:
    st = LinkState("t0", up=True, master="vrf0")
    assert plan_steps("t0", iface(mode="tun"), st) == []


def test_route_add_and_delete_keeps_exact_undo() -> None:
    st = LinkState("t0", up=True, routes=(Route("10.210.9.0/24"),
                                           Route("fd10:210:5::/64", metric=1024)))
    steps = plan_steps("t0", iface(routes=("10.210.8.0/24",)), st)
    assert argvs(steps) == [
        ["route", "replace", "10.210.8.0/24", "dev", "t0", "proto", "static"],
        ["route", "del", "10.210.9.0/24", "dev", "t0", "proto", "static"],
        ["route", "del", "fd10:210:5::/64", "dev", "t0", "proto", "static", "metric", "1024"],
    ]
    assert steps[2].undo == ("route", "replace", "fd10:210:5::/64", "dev", "t0", "proto",
                             "static", "metric", "1024")


def test_route_default_normalized() -> None:
    st = parse_state("t0", {"flags": ["UP"], "mtu": 1500}, [{"dst": "default"}],
                     [{"dst": "default", "metric": 1024}, {"dst": "fd10:210:1::1"}])
    assert [r.dst for r in st.routes] == ["0.0.0.0/0", "::/0", "fd10:210:1::1/128"]
    assert plan_steps("t0", iface(routes=("0.0.0.0/0", "::/0", "fd10:210:1::1/128")), st) == []


def test_prefix_change_deletes_before_adding() -> None:
    st = LinkState("t0", up=True, addresses=("fd10:210::1/64",))
    steps = plan_steps("t0", iface(addresses=("fd10:210::1/80",)), st)
    assert argvs(steps) == [["addr", "del", "fd10:210::1/64", "dev", "t0"],
                            ["addr", "add", "fd10:210::1/80", "dev", "t0", "nodad"]]


def test_deleting_a_primary_re_adds_kept_secondary() -> None:
    st = LinkState("t0", up=True, addresses=("10.210.0.1/24", "10.210.0.2/24"),
                   secondary=frozenset({"10.210.0.2/24"}))
    steps = plan_steps("t0", iface(addresses=("10.210.0.2/24",)), st)
    assert argvs(steps) == [["addr", "del", "10.210.0.2/24", "dev", "t0"],
                            ["addr", "del", "10.210.0.1/24", "dev", "t0"],
                            ["addr", "add", "10.210.0.2/24", "dev", "t0"]]


def test_mac_undo_unknown_for_device_without_mac() -> None:
    steps = plan_steps("t0", iface(mode="tap", mac="02:00:00:00:00:01"),
                       LinkState("t0", up=True, mac=None))
    assert steps[0].undo is None


# --------------------------------------------------------------------------- apply / FakeIp


def test_apply_then_apply_again_runs_nothing() -> None:
    ip = FakeIp(FakeLink("t0", addresses=[("10.210.3.3/24", "global", False),
                                          ("fe80::1/64", "link", False)]))
    done = apply(ip, "t0", iface(**FULL))
    assert len(done) == 9 and ip.ran == argvs(done)
    ip.ran.clear()
    assert apply(ip, "t0", iface(**FULL)) == []
    assert ip.ran == []
    assert read_state(ip, "t0") == CONFIGURED
    assert ("fe80::1/64", "link", False) in ip.links["t0"].addresses


def test_apply_failure_rolls_back_in_reverse() -> None:
    link = FakeLink("t0", addresses=[("10.210.3.3/24", "global", False)],
                    routes={"10.210.4.0/24": (None, None)})
    ip = FakeIp(link)
    before = read_state(ip, "t0")
    ip.fail(lambda a: a[:2] == ["route", "replace"] and a[2] == "10.210.9.0/24",
            "RTNETLINK answers: Invalid argument")
    with pytest.raises(IpCommandError, match="Invalid argument"):
        apply(ip, "t0", iface(**{**FULL, "bridge": None, "mode": "tun"}))
    assert read_state(ip, "t0") == before
    forward = ip.ran[: ip.ran.index(["route", "replace", "10.210.9.0/24", "dev", "t0", "proto",
                                     "static"])]
    undone = ip.ran[len(forward) + 1:]
    assert len(undone) == len(forward)
    assert undone[0] == ["addr", "del", "fd10:210::1/64", "dev", "t0"]
    assert undone[-1] == ["link", "set", "t0", "mtu", "1500"]


def test_failure_and_rollback_messages_carry_the_interface(
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 15.12: the warning about a failed step and the errors of its undo carry
    TUND_INTERFACE (they had no field)."""
    ip = FakeIp(FakeLink("t0"))
    ip.fail(lambda a: a[:2] == ["addr", "add"], "RTNETLINK answers: File exists")
    ip.fail(lambda a: a[:3] == ["link", "set", "t0"] and a[3:4] == ["mtu"] and a[4] == "1500")
    with caplog.at_level(logging.INFO, "tund.netdev.reconcile"), \
            pytest.raises(IpCommandError):
        apply(ip, "t0", iface(mtu=1400, addresses=("10.210.5.1/24",)))
    records = [r for r in caplog.records if r.name == "tund.netdev.reconcile"]
    assert len(records) >= 2 and any("undo" in r.getMessage() for r in records)
    assert all(getattr(r, "TUND_INTERFACE", None) == "t0" for r in records), [
        (r.getMessage(), r.__dict__.get("TUND_INTERFACE")) for r in records]


def test_apply_missing_device() -> None:
    with pytest.raises(IpCommandError, match="does not exist"):
        apply(FakeIp(), "nope0", iface())
