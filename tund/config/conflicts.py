"""Conflicts between entries: two listeners on one port, one address on two interfaces.

Contract: both checks read the raw merged data (a value that does not parse is skipped:
its own check reports it) and return one located issue per conflict, at the entry defined
later, naming the entry it conflicts with.

* Listeners conflict when they use the same transport and port and their addresses
  overlap: equal, or one is the wildcard of the other's family (``0.0.0.0`` covers every
  IPv4 address, ``[::]`` every address: tund's IPv6 sockets are dual-stack). A v4-mapped
  IPv6 address is its IPv4 address. ``[daemon] metrics_listen`` is a TCP listener too.
* Interfaces conflict when one host address (whatever the prefix lengths) is on both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from tund.config.locate import Locator
from tund.config.model import KeyPath, parse_endpoint
from tund.config.render import got, quote
from tund.errors import ConfigIssue

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def plain(ip: IPAddress) -> IPAddress:
    """``ip``, or the IPv4 address a v4-mapped IPv6 address stands for."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def overlap(a: IPAddress, b: IPAddress) -> bool:
    """Whether sockets bound to ``a`` and ``b`` (same transport and port) would collide."""
    a, b = plain(a), plain(b)
    if a == b:
        return True
    for x, y in ((a, b), (b, a)):
        if x.is_unspecified and (x.version == 6 or y.version == x.version):
            return True
    return False


def listener_issues(daemon: Mapping[str, Any], tunnels: Mapping[str, Any],
                    loc: Locator) -> list[ConfigIssue]:
    """One issue per listener overlapping one defined before it."""
    seen: list[tuple[str, str, int, IPAddress, KeyPath]] = []
    issues: list[ConfigIssue] = []
    candidates: list[tuple[str, KeyPath, Any]] = [
        ("tcp", ("daemon", "metrics_listen"), daemon.get("metrics_listen"))]
    for name, body in tunnels.items():
        if isinstance(body, Mapping):
            transport = body.get("transport", "udp")
            candidates.append((transport, ("tunnels", name, "listen"), body.get("listen")))
    for transport, path, text in candidates:
        if transport not in ("udp", "tcp") or not isinstance(text, str):
            continue
        try:
            host, port = parse_endpoint(text, allow_hostname=False)
        except ValueError:
            continue
        ip = ipaddress.ip_address(host)
        for t2, text2, port2, ip2, path2 in seen:
            if t2 == transport and port2 == port and overlap(ip, ip2):
                issues.append(loc.issue(path, (
                    f"overlaps the {transport} listener of {_what(path2)} "
                    f"({path2[-1]} = {got(text2)}): two listeners cannot share "
                    f"{transport} port {port} (got {got(text)})")))
                break
        else:
            seen.append((transport, text, port, ip, path))
    return issues


def address_issues(ifaces: Mapping[str, Any], loc: Locator) -> list[ConfigIssue]:
    """One issue per interface address whose host address another interface has."""
    owner: dict[IPAddress, tuple[str, int, str]] = {}
    issues: list[ConfigIssue] = []
    for name, body in ifaces.items():
        addrs = body.get("addresses") if isinstance(body, Mapping) else None
        if not isinstance(addrs, list | tuple):
            continue
        for i, text in enumerate(addrs):
            if not isinstance(text, str) or "/" not in text:
                continue
            try:
                ip = plain(ipaddress.ip_interface(text).ip)
            except ValueError:
                continue
            first = owner.setdefault(ip, (name, i, text))
            if first[0] != name:
                issues.append(loc.issue(("interfaces", name, "addresses", i), (
                    f"{ip} is already an address of interface {quote(first[0])} "
                    f"(addresses[{first[1]}] = {got(first[2])}); an address belongs to one "
                    f"interface (got {got(text)})")))
    return issues


def _what(path: KeyPath) -> str:
    return "[daemon]" if path[0] == "daemon" else f"tunnel {quote(str(path[1]))}"
