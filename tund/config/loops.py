"""Checks of issue 19 on the raw merged data (types not yet validated: each value is
checked before use; issues, never exceptions):

* :func:`loop_issues`: a main-table route through a tunnel's interface (its ``routes``,
  its enabled peers' ``allowed_ips``) that covers the tunnel's own peer (``remote`` or a
  peer's ``endpoint`` given as an IP address) would carry the tunnel's encrypted packets
  into the tunnel again: refused, located at the route. A default route with
  ``table = "auto"`` is handled by policy routing (:mod:`tund.netdev.policy`), which
  needs a socket the daemon makes and marks: refused on a ``remote`` tunnel over TCP
  (its worker opens a socket per reconnect); two full tunnels with the same table
  (= mark) are refused.
* :func:`dns_issues`: ``dns`` on a host with neither resolvectl (systemd-resolved
  running) nor resolvconf.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any

from tund import dnsbackend
from tund.config.locate import Locator
from tund.config.model import KeyPath
from tund.config.nets import network
from tund.config.render import got, quote, render_path
from tund.errors import ConfigIssue

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: a full tunnel's table and mark when its tunnel sets no fwmark (tund.netdev.policy)
AUTO_MARK = 51820


def _endpoint_ip(text: Any) -> Address | None:
    """The IP of a "HOST:PORT" / "[V6]:PORT" endpoint, None for a host name or junk."""
    if not isinstance(text, str):
        return None
    host = text[1:text.find("]")] if text.startswith("[") else text.rpartition(":")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _items(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else []


def _endpoints(tname: str, body: Mapping[str, Any],
               peers: Mapping[str, Any]) -> list[tuple[Address, KeyPath]]:
    """The tunnel's peers given by IP address, each with its key path."""
    out: list[tuple[Address, KeyPath]] = []
    if (e := _endpoint_ip(body.get("remote"))) is not None:
        out.append((e, ("tunnels", tname, "remote")))
    for pn, pb in peers.items():
        if isinstance(pb, Mapping) and (e := _endpoint_ip(pb.get("endpoint"))) is not None:
            out.append((e, ("tunnels", tname, "peers", pn, "endpoint")))
    return out


def _routes(tname: str, iname: str, iface: Mapping[str, Any],
            peers: Mapping[str, Any]) -> Iterator[tuple[str, Any, KeyPath]]:
    """(text, network, key path) of every route the interface is given."""
    entries: list[tuple[Any, KeyPath]] = [
        (r, ("interfaces", iname, "routes", i)) for i, r in enumerate(_items(iface.get("routes")))]
    for pn, pb in peers.items():
        if isinstance(pb, Mapping) and pb.get("enabled", True) is not False:
            entries += [(r, ("tunnels", tname, "peers", pn, "allowed_ips", i))
                        for i, r in enumerate(_items(pb.get("allowed_ips")))]
    for r, where in entries:
        try:
            if isinstance(r, str):
                yield r, network(r, strict=False), where
        except ValueError:
            continue


def _tunnel_loops(tname: str, body: Mapping[str, Any], iname: str,
                  iface: Mapping[str, Any], loc: Locator) -> list[ConfigIssue]:
    raw_peers = body.get("peers")
    peers: Mapping[str, Any] = raw_peers if isinstance(raw_peers, Mapping) else {}
    ends = _endpoints(tname, body, peers)
    issues: list[ConfigIssue] = []
    for r, net, where in _routes(tname, iname, iface, peers):
        if net.prefixlen == 0:
            if "listen" not in body and raw_peers is None and body.get("transport") == "tcp":
                issues.append(loc.issue(where, (
                    "a default route needs the tunnel's socket marked (policy routing), "
                    "and a tunnel that connects over tcp opens a new socket for every "
                    "reconnect in its worker, which may not mark it (SO_MARK needs "
                    'CAP_NET_ADMIN); use transport = "udp" (the daemon makes and marks '
                    f"the socket) or listen on this side (got {got(r)})")))
            continue
        for ep, ep_where in ends:
            if ep.version == net.version and ep in net:
                issues.append(loc.issue(where, (
                    f"would route the tunnel's own traffic to its peer {ep} "
                    f"({render_path(ep_where)}) into interface {quote(iname)}: a loop; "
                    'route everything with 0.0.0.0/0 or ::/0 and table = "auto" (policy '
                    f"routing), or leave the peer's address out (got {got(r)})")))
    return issues


def loop_issues(ifaces: Mapping[str, Any], tunnels: Mapping[str, Any],
                loc: Locator) -> list[ConfigIssue]:
    """Routes that would loop the tunnel's own traffic (see the module docstring)."""
    issues: list[ConfigIssue] = []
    full: dict[int, str] = {}  # table (= mark) of a full tunnel -> its tunnel
    for tname, body in tunnels.items():
        iname = body.get("interface") if isinstance(body, Mapping) else None
        iface = ifaces.get(iname) if isinstance(iname, str) else None
        # off: no routes; a numbered table: the user's rules decide
        if not (isinstance(iname, str) and isinstance(iface, Mapping)
                and iface.get("table", "auto") == "auto"):
            continue
        issues += _tunnel_loops(tname, body, iname, iface, loc)
        raw_peers = body.get("peers")
        peers: Mapping[str, Any] = raw_peers if isinstance(raw_peers, Mapping) else {}
        if any(net.prefixlen == 0 for _, net, _ in _routes(tname, iname, iface, peers)):
            mark = body.get("fwmark", 0)
            table = mark if isinstance(mark, int) and mark > 0 else AUTO_MARK
            if table in full:
                issues.append(loc.issue(("tunnels", tname), (
                    f"routes everything like tunnel {quote(full[table])}, through the same "
                    f"table and mark {table}; give one of them another fwmark")))
            full.setdefault(table, tname)
    return issues


def dns_issues(ifaces: Mapping[str, Any], loc: Locator) -> list[ConfigIssue]:
    """An interface with ``dns`` on a host with neither resolvectl (resolved) nor resolvconf."""
    wanting = [n for n, b in ifaces.items() if isinstance(b, Mapping) and b.get("dns")]
    if not wanting or dnsbackend.backend() is not None:
        return []
    return [loc.issue(("interfaces", n, "dns"), dnsbackend.missing()) for n in wanting]
