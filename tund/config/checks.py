"""Checks across entries, made on the raw merged data (so they run even when types are
wrong), and the registry of further checks (:func:`register_check`).

Contract: :func:`cross_issues` returns issues, never raises; a registered hook that
raises is reported as an issue. The key-file check of :mod:`tund.keys` is registered
on first use (imported late: config without encryption needs no crypto library).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from tund.config.conflicts import address_issues, listener_issues
from tund.config.locate import Locator
from tund.config.loops import dns_issues, loop_issues
from tund.config.model import TUNNEL_NAME_RE, KeyPath, check_ifname
from tund.config.nets import network, within
from tund.config.render import got, quote, render_path
from tund.errors import ConfigIssue


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def cross_issues(raw: Mapping[str, Any], loc: Locator) -> list[ConfigIssue]:
    """Checks across entries, made on the raw data so they run even when types are wrong."""
    issues: list[ConfigIssue] = []
    daemon = raw.get("daemon", {})
    ifaces = raw.get("interfaces", {})
    tunnels = raw.get("tunnels", {})
    daemon = daemon if isinstance(daemon, Mapping) else {}
    ifaces = ifaces if isinstance(ifaces, Mapping) else {}
    tunnels = tunnels if isinstance(tunnels, Mapping) else {}

    bmin, bmax = daemon.get("restart_backoff_min", 0.2), daemon.get("restart_backoff_max", 10.0)
    if _number(bmin) and _number(bmax) and bmin > bmax:
        issues.append(loc.issue(("daemon", "restart_backoff_min"),
                                f"must not exceed restart_backoff_max = {got(bmax)} "
                                f"(got {got(bmin)})"))

    for name, body in ifaces.items():
        if why := check_ifname(name):
            issues.append(loc.issue(("interfaces", name),
                                    f"interface name {why} (got {got(name)})"))
        if isinstance(body, Mapping) and body.get("mode") == "tun":
            for key in ("mac", "bridge"):
                if key in body:
                    issues.append(loc.issue(
                        ("interfaces", name, key),
                        f'only valid with mode = "tap" (this interface is "tun") '
                        f"(got {got(body[key])})"))

    used: dict[str, str] = {}
    for name, body in tunnels.items():
        if not TUNNEL_NAME_RE.match(name):
            issues.append(loc.issue(("tunnels", name),
                                    "tunnel name must be 1 to 64 of A-Z a-z 0-9 _ . @ - "
                                    f"(got {got(name)})"))
        if not isinstance(body, Mapping):
            continue
        issues.extend(_tunnel_issues(name, body, ifaces, used, loc))
    issues.extend(listener_issues(daemon, tunnels, loc))
    issues.extend(address_issues(ifaces, loc))
    issues.extend(dns_issues(ifaces, loc))
    issues.extend(loop_issues(ifaces, tunnels, loc))
    _register_builtin_checks()
    for hook in _EXTRA_CHECKS:
        try:
            issues.extend(hook(raw, loc.issue))
        except Exception as e:  # a bug in a hook must not turn into a traceback for the user
            issues.append(loc.issue((), f"internal error in check {hook.__qualname__}: "
                                        f"{type(e).__name__}: {e}"))
    return issues


#: why a connecting TCP tunnel's socket cannot be marked, and what to do instead
TCP_CONNECTOR_MARK = (
    'not on a tunnel that connects over transport = "tcp": its worker opens a new '
    "socket for every reconnect and may not mark it (SO_MARK needs CAP_NET_ADMIN, which "
    'the worker has not); use transport = "udp" (the daemon then makes the socket and '
    "marks it), or listen on this side")


def connects_over_tcp(body: Mapping[str, Any]) -> bool:
    """A ``remote`` tunnel over TCP: the one kind whose underlay socket the daemon does not
    make (and so cannot mark)."""
    return ("listen" not in body and body.get("peers") is None
            and body.get("transport", "udp") == "tcp")


def _tunnel_issues(name: str, body: Mapping[str, Any], ifaces: Mapping[str, Any],
                   used: dict[str, str], loc: Locator) -> list[ConfigIssue]:
    if set(body) == {"peers"}:
        peers = body["peers"]
        first = next(iter(peers), None) if isinstance(peers, Mapping) else None
        where = ("tunnels", name) if first is None else ("tunnels", name, "peers", str(first))
        return [loc.issue(where, f"peers of tunnel {quote(name)}, but no file defines the "
                                 f"tunnel itself ([{render_path(('tunnels', name))}] with "
                                 "interface and private_key_file); define it, or remove "
                                 "these peers")]
    issues = _interface_issues(name, body, ifaces, used, loc)
    if body.get("peers") is not None:
        issues.extend(_peers_issues(name, body, loc))
    issues += _endpoint_issues(name, body, loc) + _key_issues(name, body, loc)
    mark = body.get("fwmark", 0)
    if _number(mark) and mark and connects_over_tcp(body):
        issues.append(loc.issue(("tunnels", name, "fwmark"), TCP_CONNECTOR_MARK
                                + f" (got {got(mark)})"))
    rmin, rmax = body.get("reconnect_min", 0.2), body.get("reconnect_max", 10.0)
    if _number(rmin) and _number(rmax) and rmin > rmax:
        issues.append(loc.issue(("tunnels", name, "reconnect_min"),
                                f"must not exceed reconnect_max = {got(rmax)} "
                                f"(got {got(rmin)})"))
    return issues


def _interface_issues(name: str, body: Mapping[str, Any], ifaces: Mapping[str, Any],
                      used: dict[str, str], loc: Locator) -> list[ConfigIssue]:
    """The tunnel's interface exists and carries no other tunnel (``used`` records it)."""
    iface = body.get("interface")
    if not isinstance(iface, str):
        return []
    if iface not in ifaces:
        known = (f"expected one of: {', '.join(sorted(ifaces))}" if ifaces
                 else "no [interfaces] are defined")
        return [loc.issue(("tunnels", name, "interface"),
                          f"no interface of that name ({known}) (got {got(iface)})")]
    if iface in used:
        return [loc.issue(("tunnels", name, "interface"),
                          f"already used by tunnel {quote(used[iface])} (one tunnel "
                          f"per interface) (got {got(iface)})")]
    used[iface] = name
    return []


def _endpoint_issues(name: str, body: Mapping[str, Any], loc: Locator) -> list[ConfigIssue]:
    """listen xor remote (with peers: listen optional, remote refused by _peers_issues);
    allowed_sources only on a listener."""
    issues: list[ConfigIssue] = []
    has_listen, has_remote = "listen" in body, "remote" in body
    if body.get("peers") is not None:
        pass
    elif has_listen and has_remote:
        issues.append(loc.issue(("tunnels", name, "remote"),
                                "set either listen or remote, not both "
                                f"(got listen = {got(body['listen'])}, "
                                f"remote = {got(body['remote'])})"))
    elif not has_listen and not has_remote:
        issues.append(loc.issue(("tunnels", name),
                                'needs listen = "ADDRESS:PORT" (wait for the peer) or '
                                'remote = "HOST:PORT" (connect to it); got neither'))
    if body.get("allowed_sources") and not has_listen:  # (an empty list: no filter)
        issues.append(loc.issue(("tunnels", name, "allowed_sources"),
                                "only valid on a tunnel that listens (a connecting tunnel "
                                "talks to its remote only; got allowed_sources = "
                                f"{got(body['allowed_sources'])})"))
    return issues


def _key_issues(name: str, body: Mapping[str, Any], loc: Locator) -> list[ConfigIssue]:
    """The keys WireGuard needs are there; plaintext has none."""
    issues: list[ConfigIssue] = []
    if body.get("encryption", "wireguard") == "wireguard":
        for key in ("private_key_file", "peer_public_key"):
            if key == "peer_public_key" and body.get("peers") is not None:
                continue
            if key not in body:
                issues.append(loc.issue(("tunnels", name, key),
                                        'required with encryption = "wireguard" (the '
                                        'default); set encryption = "none" for plaintext'))
    elif body.get("encryption") == "none":
        for key in ("private_key_file", "peer_public_key", "preshared_key_file"):
            if key in body:
                issues.append(loc.issue(("tunnels", name, key),
                                        'only valid with encryption = "wireguard" '
                                        f"(got {got(body[key])})"))
    return issues


# single-peer keys a tunnel with a peers table must not have, and where they go instead
_SINGLE_PEER_KEYS = {
    "peer_public_key": "each peer's public_key",
    "remote": "each peer's endpoint",
    "preshared_key_file": "each peer's preshared_key_file",
    "keepalive": "each peer's keepalive",
}


def _peers_issues(name: str, body: Mapping[str, Any], loc: Locator) -> list[ConfigIssue]:
    """A tunnel with ``peers``: WireGuard over UDP, none of the single-peer keys, valid peer
    names, and allowed_ips that no two enabled peers share (:func:`_overlap_issues`)."""
    issues: list[ConfigIssue] = []
    where = ("tunnels", name, "peers")
    if body.get("encryption", "wireguard") != "wireguard":
        issues.append(loc.issue(where, 'needs encryption = "wireguard": plaintext has no '
                                       "identity to tell peers apart (got encryption = "
                                       f"{got(body.get('encryption'))})"))
    if body.get("transport", "udp") == "tcp":
        # Refused rather than made to work: over TCP the listener would have to accept one
        # connection per peer and learn which peer it is from the handshake; one UDP socket
        # serves every peer, as WireGuard does. (issue 17)
        issues.append(loc.issue(("tunnels", name, "transport"),
                                'a tunnel with peers works over transport = "udp" only '
                                "(one socket serves every peer, told apart by their keys); "
                                'use "udp" or one tunnel per peer over tcp (got "tcp")'))
    for key, instead in _SINGLE_PEER_KEYS.items():
        if key in body:
            issues.append(loc.issue(("tunnels", name, key),
                                    f"not with a peers table (a tunnel has either one peer "
                                    f"set by {key} or peers); set {instead} instead "
                                    f"(got {got(body[key])})"))
    peers = body.get("peers")
    if not isinstance(peers, Mapping):
        return issues  # not a table: the model says so
    for peer in peers:
        if not TUNNEL_NAME_RE.match(str(peer)):
            issues.append(loc.issue((*where, str(peer)),
                                    "peer name must be 1 to 64 of A-Z a-z 0-9 _ . @ - "
                                    f"(got {got(peer)})"))
    issues.extend(_overlap_issues(name, peers, loc))
    return issues


_Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


def _overlap_issues(tunnel: str, peers: Mapping[str, Any], loc: Locator) -> list[ConfigIssue]:
    """Prefixes of two enabled peers that overlap (one holds the other, or they are equal),
    and a default route (0.0.0.0/0, ::/0) on more than one peer. A default route on one
    peer may overlap the others' prefixes: the longest prefix wins, as in WireGuard.
    Sorted once and swept with a stack of enclosing prefixes: O(n log n) in prefixes."""
    issues: list[ConfigIssue] = []
    found: list[tuple[_Prefix, str, int]] = []
    defaults: dict[int, list[tuple[str, int]]] = {4: [], 6: []}
    for peer, pbody in peers.items():
        if not isinstance(pbody, Mapping) or pbody.get("enabled", True) is False:
            continue
        ips = pbody.get("allowed_ips", ())
        for i, text in enumerate(ips if isinstance(ips, list | tuple) else ()):
            try:
                net = network(text) if isinstance(text, str) else None
            except ValueError:
                net = None  # reported by the model
            if net is None:
                continue
            if net.prefixlen == 0:
                defaults[net.version].append((str(peer), i))
            else:
                found.append((net, str(peer), i))
    path = ("tunnels", tunnel, "peers")
    for version, users in defaults.items():
        if len(users) > 1:
            zero = "0.0.0.0/0" if version == 4 else "::/0"
            first = users[0]
            for peer, i in users[1:]:
                issues.append(loc.issue((*path, peer, "allowed_ips", i),
                                        f"{zero} (every address) is already peer "
                                        f"{quote(first[0])}'s: only one peer may have it "
                                        f"(got {got(zero)})"))
    found.sort(key=lambda f: (f[0].version, int(f[0].network_address), f[0].prefixlen))
    stack: list[tuple[_Prefix, str, int]] = []
    for net, peer, i in found:
        while stack and not within(net, stack[-1][0]):
            stack.pop()
        other = next((s for s in reversed(stack) if s[1] != peer), None)
        if other is not None:
            onet, opeer, oi = other
            where = loc.source_of((*path, opeer, "allowed_ips", oi))
            line = where.line_of((*path, opeer, "allowed_ips", oi))
            issues.append(loc.issue((*path, peer, "allowed_ips", i),
                                    f"overlaps {onet} of peer {quote(opeer)} ({where.name}:"
                                    f"{line}): each address may belong to one peer only "
                                    f"(got {got(str(net))})"))
        stack.append((net, peer, i))
    return issues


IssueFactory = Callable[[KeyPath, str], ConfigIssue]
#: Further checks registered by other modules (e.g. key files for encryption); each gets the
#: raw merged data and a factory that turns (key path, message) into a located ConfigIssue.
_EXTRA_CHECKS: list[Callable[[Mapping[str, Any], IssueFactory], list[ConfigIssue]]] = []


_builtins_registered = False


def _register_builtin_checks() -> None:
    """Register, once, the checks every load runs: the key-file check of tund.keys (imported
    here, not at the top, so loading config without encryption needs no crypto library)."""
    global _builtins_registered
    if not _builtins_registered:
        from tund.keys import check_tunnel_keys

        register_check(check_tunnel_keys)
        _builtins_registered = True


def register_check(hook: Callable[[Mapping[str, Any], IssueFactory], list[ConfigIssue]]) -> None:
    """Add a cross-entry check run by every load (idempotent per hook).

    The hook gets the raw merged data (types NOT yet validated: check before use) and must
    return issues, not raise; an exception it raises anyway is reported as an issue.
    """
    if hook not in _EXTRA_CHECKS:
        _EXTRA_CHECKS.append(hook)
