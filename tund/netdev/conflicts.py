"""Addresses that another interface of the host already has.

The kernel accepts one address on several links and adds a second route for it, so a
tund interface given an address that, say, the underlay's ``eth0`` has would take over part
of its traffic silently. Contract:

* :func:`host_addresses` (I/O: one ``ip -json addr show``) maps every link to its
  addresses as ``ADDR/PREFIXLEN``, link-scope ones (fe80::/64 ...) left out: every link may
  have those.
* :func:`foreign` (pure) returns the first address to be added whose host address (the
  prefix length aside) a link outside ``managed`` has, with that link and its address.
* :func:`check` raises :class:`AddressConflict` for it; nothing is changed.
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


def screen(ip: Ip, links: Sequence[tuple[str, InterfaceConfig]],
           states: Mapping[str, LinkState], managed: Collection[str]
           ) -> tuple[list[tuple[str, InterfaceConfig]], dict[str, str]]:
    """(the links without a conflict, {link: why} for the others). Only addresses a link
    does not have yet (``states``) are looked at."""
    try:
        host = host_addresses(ip)
    except KernelError as e:
        log.warning("cannot read the host's addresses (%s); not checking them", e)
        return list(links), {}
    keep: list[tuple[str, InterfaceConfig]] = []
    clashes: dict[str, str] = {}
    for name, iface in links:
        have = states[name].addresses if name in states else ()
        found = foreign([a for a in iface.addresses if a not in have], host, {name, *managed})
        if found is None:
            keep.append((name, iface))
        else:
            clashes[name] = conflict_message(name, *found)
    return keep, clashes
