"""Routes from peers' ``allowed_ips`` (issue 17.3), like wg-quick's ``Table = auto``.

Contract (pure): every ``allowed_ips`` prefix of an enabled peer of the tunnel on an
interface gets a route through that interface, unless one of the interface's own
addresses already covers it (its connected route carries it) or ``routes`` lists it.
``0.0.0.0/0`` and ``::/0`` never get one in the main table: a route there would take
over the host's default route; they are returned as skipped (full-tunnel routing with
``table = "auto"``: :mod:`tund.netdev.policy`), for the daemon to note.
:func:`effective_interface` is the interface as the kernel is made to look: its
``routes`` followed by its peers' routes (the diff of :mod:`tund.netdev.reconcile` and
the reload plan work on that; the daemon passes only its main-table routes:
:func:`tund.netdev.policy.main_routes`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tund.config.model import Config, InterfaceConfig, TunnelConfig
from tund.config.nets import network, within


@dataclass(frozen=True)
class PeerRoutes:
    """``routes``: the prefixes to route through the interface (peer and prefix order,
    each once); ``skipped``: (peer name, prefix) of the ``/0`` prefixes left out."""

    routes: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()


def peer_routes(iface: InterfaceConfig, tunnel: TunnelConfig | None) -> PeerRoutes:
    """The routes the enabled peers of ``tunnel`` need on ``iface`` (see the module)."""
    if tunnel is None:
        return PeerRoutes()
    own = [ipaddress.ip_interface(a).network for a in iface.addresses]
    have = set(iface.routes)
    routes: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name, peer in sorted(tunnel.enabled_peers.items()):
        for prefix in peer.allowed_ips:
            net = network(prefix)
            if net.prefixlen == 0:
                skipped.append((name, prefix))
            elif prefix in have or any(within(net, o) for o in own):
                continue
            else:
                have.add(prefix)
                routes.append(prefix)
    return PeerRoutes(tuple(routes), tuple(skipped))


def effective_interface(cfg: Config, name: str) -> InterfaceConfig:
    """Interface ``name`` of ``cfg`` with its peers' routes after its own ``routes``."""
    iface = cfg.interfaces[name]
    found = cfg.tunnel_for(name)
    extra = peer_routes(iface, found[1] if found else None).routes
    return iface.model_copy(update={"routes": iface.routes + extra}) if extra else iface


def effective_interfaces(cfg: Config) -> dict[str, InterfaceConfig]:
    """Every interface of ``cfg`` as :func:`effective_interface` makes it."""
    return {name: effective_interface(cfg, name) for name in cfg.interfaces}


def skipped_default_routes(cfg: Config) -> list[str]:
    """One note per ``/0`` prefix of an enabled peer: it gets no main-table route; with
    ``table = "auto"`` it routes everything through the interface by policy routing
    (:mod:`tund.netdev.policy`), with ``table = "off"`` nothing, with a number it is a
    route of that table like the others (no note)."""
    out = []
    for name, iface in cfg.interfaces.items():
        found = cfg.tunnel_for(name)
        if isinstance(iface.table, int):
            continue
        for peer, prefix in peer_routes(iface, found[1] if found else None).skipped:
            assert found is not None
            how = ("routes everything through {0} by policy routing (table = \"auto\": its "
                   "own table and rules; the host's default route stays)" if iface.table ==
                   "auto" else "gets no route through {0} (table = \"off\")").format(name)
            out.append(f"tunnel {found[0]}, peer {peer}: allowed_ips {prefix} {how}")
    return out
