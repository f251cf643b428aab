"""FakeIp: an in-memory stand-in for :class:`tund.netdev.ip.IpRunner` (and its own tests).

It models one or more links well enough for reconcile: ``json`` answers the reads that
``read_state`` makes from the model, ``run`` records every argv and applies it to the model,
and ``fail`` makes chosen commands fail like ``ip`` would (IpCommandError, exit 2).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tund.errors import IpCommandError
from tund.netdev.ip import Ip


@dataclass
class FakeLink:
    name: str
    up: bool = False
    mtu: int = 1500
    mac: str | None = "02:00:00:00:00:aa"
    master: str | None = None
    txqueuelen: int = 500
    # (cidr, scope, secondary)
    addresses: list[tuple[str, str, bool]] = field(default_factory=list)
    # dst -> (via, metric)
    routes: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)


class FakeIp:
    """Records ``run`` argv in ``.ran``; ``fail(pred, stderr)`` makes matching runs fail."""

    def __init__(self, *links: FakeLink) -> None:
        self.links = {link.name: link for link in links}
        self.ran: list[list[str]] = []
        self.reads: list[list[str]] = []
        self._failures: list[tuple[Callable[[list[str]], bool], str]] = []

    def fail(self, pred: Callable[[list[str]], bool], stderr: str = "RTNETLINK: fake") -> None:
        self._failures.append((pred, stderr))

    # ---------------------------------------------------------------- Ip protocol

    def json(self, argv: Sequence[str]) -> Any:
        args = list(argv)
        self.reads.append(args)
        fam = None
        if args[0] in ("-4", "-6"):
            fam, args = int(args[0][1]), args[1:]
        link = self._link(args[args.index("dev") + 1], ["ip", "-json", *argv])
        if args[:2] == ["addr", "show"]:
            return [self._link_json(link)]
        if args[:2] == ["route", "show"]:
            return [{"dst": dst, **({"gateway": via} if via else {}),
                     **({"metric": m} if m is not None else {})}
                    for dst, (via, m) in link.routes.items()
                    if ipaddress.ip_network(dst).version == fam]
        raise AssertionError(f"FakeIp cannot answer {args}")

    def run(self, argv: Sequence[str]) -> str:
        args = list(argv)
        self.ran.append(args)
        for pred, stderr in self._failures:
            if pred(args):
                raise IpCommandError(["ip", *args], 2, stderr)
        {"link": self._link_cmd, "addr": self._addr_cmd, "route": self._route_cmd}[args[0]](args)
        return ""

    # ---------------------------------------------------------------- model

    def _link(self, name: str, argv: list[str]) -> FakeLink:
        if name not in self.links:
            raise IpCommandError(argv, 1, f'Device "{name}" does not exist.')
        return self.links[name]

    @staticmethod
    def _link_json(link: FakeLink) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ifname": link.name, "flags": ["BROADCAST", *(["UP"] if link.up else [])],
            "mtu": link.mtu, "txqlen": link.txqueuelen,
            "link_type": "ether" if link.mac else "none",
            "addr_info": [
                {"family": "inet6" if ":" in c else "inet", "local": c.split("/")[0],
                 "prefixlen": int(c.split("/")[1]), "scope": scope,
                 **({"secondary": True} if sec else {})}
                for c, scope, sec in link.addresses],
        }
        if link.mac:
            out["address"] = link.mac
        if link.master:
            out["master"] = link.master
        return out

    def _link_cmd(self, a: list[str]) -> None:
        link = self._link(a[2], ["ip", *a])
        key, *rest = a[3:]
        if key in ("up", "down"):
            link.up = key == "up"
        elif key == "mtu":
            link.mtu = int(rest[0])
        elif key == "address":
            link.mac = rest[0]
        elif key == "txqueuelen":
            link.txqueuelen = int(rest[0])
        elif key == "master":
            link.master = rest[0]
        elif key == "nomaster":
            link.master = None
        else:
            raise AssertionError(f"FakeIp: unknown link command {a}")

    def _addr_cmd(self, a: list[str]) -> None:
        verb, cidr = a[1], a[2]
        link = self._link(a[a.index("dev") + 1], ["ip", *a])
        present = [x for x in link.addresses if x[0] == cidr]
        if verb == "add":
            if present:
                raise IpCommandError(["ip", *a], 2, "RTNETLINK answers: File exists")
            iface = ipaddress.ip_interface(cidr)
            sec = iface.version == 4 and any(
                ipaddress.ip_interface(c).network == iface.network for c, _, _ in link.addresses)
            link.addresses.append((cidr, "global", sec))
        else:
            if not present:
                raise IpCommandError(["ip", *a], 2, "RTNETLINK answers: Cannot assign")
            link.addresses.remove(present[0])

    def _route_cmd(self, a: list[str]) -> None:
        verb, dst = a[1], a[2]
        link = self._link(a[a.index("dev") + 1], ["ip", *a])
        via = a[a.index("via") + 1] if "via" in a else None
        metric = int(a[a.index("metric") + 1]) if "metric" in a else None
        if verb == "replace":
            link.routes[dst] = (via, metric)
        elif dst in link.routes:
            del link.routes[dst]
        else:
            raise IpCommandError(["ip", *a], 2, "RTNETLINK answers: No such process")


def _check_protocol() -> Ip:
    return FakeIp()  # mypy: FakeIp satisfies the Ip protocol


# --------------------------------------------------------------------------- tests of the fake


def test_fake_records_and_applies() -> None:
    ip = FakeIp(FakeLink("t0"))
    ip.run(["link", "set", "t0", "mtu", "1400"])
    ip.run(["addr", "add", "10.210.0.1/24", "dev", "t0"])
    assert ip.ran == [["link", "set", "t0", "mtu", "1400"],
                      ["addr", "add", "10.210.0.1/24", "dev", "t0"]]
    (j,) = ip.json(["addr", "show", "dev", "t0"])
    assert j["mtu"] == 1400 and j["addr_info"][0]["local"] == "10.210.0.1"


def test_fake_fails_on_request() -> None:
    ip = FakeIp(FakeLink("t0"))
    ip.fail(lambda a: a[0] == "route", "RTNETLINK answers: Invalid argument")
    with pytest.raises(IpCommandError, match="Invalid argument") as ei:
        ip.run(["route", "replace", "10.210.9.0/24", "dev", "t0", "proto", "static"])
    assert ei.value.argv[0] == "ip"


def test_fake_unknown_device() -> None:
    with pytest.raises(IpCommandError, match="does not exist"):
        FakeIp().json(["addr", "show", "dev", "nope0"])
