"""Addresses (and routes) that another interface of the host already has.

The kernel accepts one address on several links and adds a second route for it, so a
tund interface given an address that, say, the underlay's ``eth0`` has would take over part
of its traffic silently. Contract:

* :func:`host_addresses` (I/O: one ``ip -json addr show``) maps every link to its
  addresses as ``ADDR/PREFIXLEN``, link-scope ones (fe80::/64 ...) left out: every link may
  have those.
* :func:`foreign` (pure) returns the first address to be added whose host address (the
  prefix length aside) a link outside ``managed`` has, with that link and its address.
* :func:`check` raises :class:`AddressConflict` for it; nothing is changed.
* :func:`host_routes` (I/O: ``ip -json -4/-6 route show table main``), :func:`foreign_route`
  (pure) and :func:`check_routes` do the same for routes (issue 17.3): a route tund is to
  add for a prefix that another link tund does not manage already routes (exactly that
  prefix, any metric: the LAN's connected route, say, that a peer's ``allowed_ips``
  repeats) is refused, as wg-quick's ``ip route add`` refuses it; ``ip route replace``
  would take it over and cut the host off that network.
* :func:`screen` (daemon start) splits links to configure into those without a conflict
  and, for the others, why; a host that cannot be read is not screened (logged).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence

from tund.config import InterfaceConfig
from tund.errors import KernelError
from tund.netdev.ip import Ip
from tund.netdev.reconcile import LinkState

log = logging.getLogger("tund.netdev.conflicts")


class AddressConflict(KernelError):
    """An address tund is to add is already on an interface tund does not manage."""


def host_addresses(ip: Ip) -> dict[str, tuple[str, ...]]:
    """Every link's addresses but link-scope ones, by link name."""
    out: dict[str, tuple[str, ...]] = {}
    for link in ip.json(["addr", "show"]):
        addrs = [str(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}"))
                 for a in link.get("addr_info", [])
                 if a.get("family") in ("inet", "inet6") and a.get("scope") != "link"
                 and "local" in a and "prefixlen" in a]
        out[str(link.get("ifname"))] = tuple(addrs)
    return out


def foreign(want: Iterable[str], host: Mapping[str, Sequence[str]],
            managed: Collection[str]) -> tuple[str, str, str] | None:
    """(wanted address, link, the link's address) of the first conflict, or None."""
    for cidr in want:
        addr = ipaddress.ip_interface(cidr).ip
        for link, addrs in host.items():
            if link in managed:
                continue
            for have in addrs:
                if ipaddress.ip_interface(have).ip == addr:
                    return cidr, link, have
    return None


def check(ip: Ip, name: str, want: Sequence[str], managed: Collection[str]) -> None:
    """Raise AddressConflict if an address of ``want`` (to go on ``name``) is on a link
    outside ``managed`` (``name`` itself always counts as managed)."""
    if not want:
        return
    found = foreign(want, host_addresses(ip), {name, *managed})
    if found is not None:
        raise AddressConflict(conflict_message(name, *found))


def conflict_message(name: str, cidr: str, link: str, have: str) -> str:
    return (f"address {cidr} for {name} is already on interface {link} ({have}), which tund "
            f"does not manage; remove it there or choose another address")


def host_routes(ip: Ip) -> dict[str, tuple[str, ...]]:
    """Every route of the main table: prefix (normalized; ``default`` as ``0.0.0.0/0`` /
    ``::/0``) -> the links it goes through."""
    out: dict[str, list[str]] = {}
    for fam, default in ((4, "0.0.0.0/0"), (6, "::/0")):
        for r in ip.json([f"-{fam}", "route", "show", "table", "main"]):
            dst, dev = r.get("dst"), r.get("dev")
            if not isinstance(dst, str) or not isinstance(dev, str):
                continue
            try:
                key = default if dst == "default" else str(ipaddress.ip_network(dst,
                                                                                strict=False))
            except ValueError:
                continue
            out.setdefault(key, []).append(dev)
    return {k: tuple(v) for k, v in out.items()}


def foreign_route(want: Iterable[str], routes: Mapping[str, Sequence[str]],
                  managed: Collection[str]) -> tuple[str, str] | None:
    """(wanted prefix, link) of the first prefix a link outside ``managed`` routes."""
    for dst in want:
        for link in routes.get(str(ipaddress.ip_network(dst)), ()):
            if link not in managed:
                return dst, link
    return None


def route_conflict_message(name: str, dst: str, link: str) -> str:
    return (f"route {dst} for {name} would take over the route of {dst} through interface "
            f"{link}, which tund does not manage; remove that prefix from the routes or the "
            f"peers' allowed_ips of {name}, or the route from {link}")


def check_routes(ip: Ip, name: str, want: Sequence[str], managed: Collection[str]) -> None:
    """Raise AddressConflict if a prefix of ``want`` (to be routed through ``name``) is
    routed through a link outside ``managed`` (``name`` itself always counts as managed)."""
    if not want:
        return
    found = foreign_route(want, host_routes(ip), {name, *managed})
    if found is not None:
        raise AddressConflict(route_conflict_message(name, *found))


def screen(ip: Ip, links: Sequence[tuple[str, InterfaceConfig]],
           states: Mapping[str, LinkState], managed: Collection[str]
           ) -> tuple[list[tuple[str, InterfaceConfig]], dict[str, str]]:
    """(the links without a conflict, {link: why} for the others). Only addresses a link
    does not have yet (``states``) are looked at."""
    try:
        host = host_addresses(ip)
        routes = host_routes(ip)
    except KernelError as e:
        log.warning("cannot read the host's addresses and routes (%s); not checking them", e)
        return list(links), {}
    keep: list[tuple[str, InterfaceConfig]] = []
    clashes: dict[str, str] = {}
    for name, iface in links:
        st = states.get(name)
        have = st.addresses if st is not None else ()
        routed = {r.dst for r in st.routes} if st is not None else set()
        found = foreign([a for a in iface.addresses if a not in have], host, {name, *managed})
        found_route = foreign_route([r for r in iface.routes if r not in routed], routes,
                                    {name, *managed})
        if found is not None:
            clashes[name] = conflict_message(name, *found)
        elif found_route is not None:
            clashes[name] = route_conflict_message(name, *found_route)
        else:
            keep.append((name, iface))
    return keep, clashes
