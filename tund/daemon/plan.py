"""Reload planning: a pure diff of two configurations into the least disruptive actions.

Contract: :func:`diff` touches nothing; it compares frozen models (and a fingerprint of each
tunnel's key material, so a rewritten key file with an unchanged path still counts) and
returns a :class:`Plan`:

* interfaces (as :func:`tund.config.effective_interface` makes them: ``routes`` include the
  routes of the peers' ``allowed_ips``, so adding, removing or changing a peer reconfigures
  its interface's routes): ``add`` / ``remove`` / ``unchanged``, and for changed ones the least
  disruptive action: ``reconfigure`` (addresses, routes, MTU, MAC, bridge, txqueuelen:
  applied in place by ``ip``, the worker keeps running), ``retag`` (persist: an ioctl on the
  held device), ``recreate`` (mode, packet_info, multi_queue, owner, group: a new device);
  ``retry`` for an interface that failed (e.g. EBUSY: someone held the device) and is
  still configured: opened and configured again, never called ``unchanged``;
* tunnels: ``add`` / ``remove`` / ``unchanged`` / ``update`` (only settings the running
  worker takes without a restart changed: ``keepalive``, the ``peers`` table, and over
  UDP ``fwmark``, set on the socket the daemon holds) /
  ``restart`` (any other tunnel setting or its key material changed, the tunnel moved
  between the single-peer form and ``peers``, or its interface is recreated or retried);
* for a tunnel with ``peers`` in both configs: a :class:`PeerChange` per peer (``add`` /
  ``remove`` / ``change`` / ``unchanged``), a changed PSK file (per-peer fingerprints)
  changing only its peer. Adding, removing or changing peers never restarts the tunnel.

An unchanged tunnel is never touched: its worker process keeps running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tund.config import (
    Config,
    InterfaceConfig,
    PeerConfig,
    TunnelConfig,
    effective_interfaces,
    skipped_default_routes,
)

InterfaceAction = Literal["add", "remove", "unchanged", "reconfigure", "retag", "recreate",
                          "retry"]
TunnelAction = Literal["add", "remove", "unchanged", "update", "restart"]
PeerAction = Literal["add", "remove", "change", "unchanged"]

# The kernel allows TUNSETOWNER/TUNSETGROUP only while attached and an adopted device must
# match its owner: an owner or group change recreates the device, like a mode change.
_RECREATE_KEYS = ("mode", "packet_info", "multi_queue", "owner", "group")
_RETAG_KEYS = ("persist",)
# tunnel settings a running worker applies when told (tund.daemon.reload: "tell worker")
LIVE_TUNNEL_KEYS = ("keepalive",)


@dataclass(frozen=True)
class InterfaceChange:
    name: str
    action: InterfaceAction
    old: InterfaceConfig | None
    new: InterfaceConfig | None
    reason: str = ""


@dataclass(frozen=True)
class PeerChange:
    """One peer of a tunnel with ``peers``: what a reload does to it in the running worker."""

    name: str
    action: PeerAction
    reason: str = ""


@dataclass(frozen=True)
class TunnelChange:
    name: str
    action: TunnelAction
    reason: str = ""
    #: per peer, sorted by name; empty unless the tunnel has ``peers`` before and after
    peers: tuple[PeerChange, ...] = ()


@dataclass(frozen=True)
class Plan:
    interfaces: tuple[InterfaceChange, ...] = ()
    tunnels: tuple[TunnelChange, ...] = ()
    daemon_notes: tuple[str, ...] = field(default=())

    def of(self, kind: Literal["interfaces", "tunnels"], *actions: str) -> list[str]:
        """Names of interfaces or tunnels whose action is one of ``actions``."""
        if kind == "interfaces":
            return [c.name for c in self.interfaces if c.action in actions]
        return [t.name for t in self.tunnels if t.action in actions]

    def summary(self) -> dict[str, dict[str, list[str]]]:
        """The added / changed / removed / unchanged lists of the reload reply."""
        changed_if = ("reconfigure", "retag", "recreate", "retry")
        return {
            "added": {"interfaces": self.of("interfaces", "add"),
                      "tunnels": self.of("tunnels", "add")},
            "changed": {"interfaces": self.of("interfaces", *changed_if),
                        "tunnels": self.of("tunnels", "update", "restart")},
            "removed": {"interfaces": self.of("interfaces", "remove"),
                        "tunnels": self.of("tunnels", "remove")},
            "unchanged": {"interfaces": self.of("interfaces", "unchanged"),
                          "tunnels": self.of("tunnels", "unchanged")},
        }

    def peer_summary(self) -> dict[str, dict[str, list[str]]]:
        """Per tunnel with peers changes: its ``added`` / ``changed`` / ``removed`` peers
        (for a reload reply or dry run; not wired in yet)."""
        out: dict[str, dict[str, list[str]]] = {}
        for t in self.tunnels:
            by = {a: [c.name for c in t.peers if c.action == a]
                  for a in ("add", "change", "remove")}
            if any(by.values()):
                out[t.name] = {"added": by["add"], "changed": by["change"],
                               "removed": by["remove"]}
        return out

    @property
    def is_noop(self) -> bool:
        return (all(c.action == "unchanged" for c in self.interfaces)
                and all(t.action == "unchanged" for t in self.tunnels))


def _changed_keys(old: InterfaceConfig, new: InterfaceConfig) -> list[str]:
    return [k for k in InterfaceConfig.model_fields if getattr(old, k) != getattr(new, k)]


def _interface_change(name: str, old: InterfaceConfig | None,
                      new: InterfaceConfig | None) -> InterfaceChange:
    if old is None:
        return InterfaceChange(name, "add", None, new)
    if new is None:
        return InterfaceChange(name, "remove", old, None)
    keys = _changed_keys(old, new)
    if not keys:
        return InterfaceChange(name, "unchanged", old, new)
    if any(k in _RECREATE_KEYS for k in keys):
        return InterfaceChange(name, "recreate", old, new, f"changed: {', '.join(keys)}")
    if any(k in _RETAG_KEYS for k in keys):
        return InterfaceChange(name, "retag", old, new, f"changed: {', '.join(keys)}")
    return InterfaceChange(name, "reconfigure", old, new, f"changed: {', '.join(keys)}")


_PEER_FIELDS = tuple(PeerConfig.model_fields)  # (read per peer: 1,000 of them on a reload)


def _peer_changes(old: Mapping[str, PeerConfig], new: Mapping[str, PeerConfig],
                  old_keys: Mapping[str, str], new_keys: Mapping[str, str]
                  ) -> tuple[PeerChange, ...]:
    out: list[PeerChange] = []
    for name in sorted(old.keys() | new.keys()):
        o, n = old.get(name), new.get(name)
        if o is None:
            out.append(PeerChange(name, "add"))
        elif n is None:
            out.append(PeerChange(name, "remove"))
        else:
            keys = [] if o == n else [k for k in _PEER_FIELDS if getattr(o, k) != getattr(n, k)]
            if old_keys.get(name) != new_keys.get(name):
                keys.append("key material")
            out.append(PeerChange(name, "change", f"changed: {', '.join(keys)}") if keys
                       else PeerChange(name, "unchanged"))
    return tuple(out)


def _tunnel_change(name: str, o: TunnelConfig, n: TunnelConfig, keys_same: bool,
                   recreated: bool, retried: bool, old_peer_keys: Mapping[str, str],
                   new_peer_keys: Mapping[str, str]) -> TunnelChange:
    """The action for a tunnel in both configs (see the module docstring)."""
    both = o.peers is not None and n.peers is not None
    peers = (_peer_changes(o.peers or {}, n.peers or {}, old_peer_keys, new_peer_keys)
             if both else ())
    keys = [k for k in type(n).model_fields if getattr(o, k) != getattr(n, k)]
    if "peers" not in keys and any(p.action != "unchanged" for p in peers):
        keys.append("peers")  # only a peer's key material changed
    if keys:
        # fwmark over UDP: set on the socket the daemon holds (tund.daemon.reload); a TCP
        # listener's accepted connection keeps the mark it was accepted with
        marked = {"fwmark"} if n.transport == "udp" else set()
        live = (set(keys) <= {*LIVE_TUNNEL_KEYS, "peers", *marked}
                and (both or "peers" not in keys)
                and not recreated and not retried and keys_same)
        return TunnelChange(name, "update" if live else "restart",
                            f"changed: {', '.join(keys)}", peers)
    if not keys_same:
        return TunnelChange(name, "restart", "key material changed", peers)
    if recreated:
        return TunnelChange(name, "restart", f"interface {n.interface} is recreated", peers)
    if retried:
        return TunnelChange(name, "restart", f"interface {n.interface} is retried", peers)
    return TunnelChange(name, "unchanged", "", peers)


def _retry(c: InterfaceChange, failed: Mapping[str, str]) -> InterfaceChange:
    """A failed interface that stays (changed in place or not) is retried as configured."""
    if c.name in failed and c.action in ("unchanged", "reconfigure", "retag"):
        return InterfaceChange(c.name, "retry", c.old, c.new, f"failed: {failed[c.name]}")
    return c


# Size: seven arguments, each with its contract in the docstring; the body is one walk over them.
def diff(old: Config | None, new: Config,
         old_keys: Mapping[str, str] | None = None,
         new_keys: Mapping[str, str] | None = None,
         old_peer_keys: Mapping[str, Mapping[str, str]] | None = None,
         new_peer_keys: Mapping[str, Mapping[str, str]] | None = None,
         failed: Mapping[str, str] | None = None) -> Plan:
    """Plan the move from ``old`` (None: nothing running) to ``new``.

    ``old_keys`` / ``new_keys`` map tunnel name -> an opaque fingerprint of its key material
    (e.g. a hash of private key, peer key and PSK); a differing fingerprint restarts the tunnel.
    ``old_peer_keys`` / ``new_peer_keys`` map tunnel name -> peer name -> a fingerprint of
    that peer's key material (its PSK: :meth:`~tund.daemon.keyfiles.KeyMaterial.peer_fingerprints`);
    a differing one changes only that peer.
    ``failed`` maps interfaces that failed to their error: they are retried, their tunnels
    restarted.
    """
    failed = failed or {}
    old_ifs = effective_interfaces(old) if old else {}
    new_ifs = effective_interfaces(new)
    old_tuns = old.tunnels if old else {}
    old_keys = old_keys or {}
    new_keys = new_keys or {}
    old_peer_keys = old_peer_keys or {}
    new_peer_keys = new_peer_keys or {}

    ifaces = tuple(_retry(_interface_change(n, old_ifs.get(n), new_ifs.get(n)), failed)
                   for n in sorted(old_ifs.keys() | new_ifs.keys()))
    recreated = {c.name for c in ifaces if c.action == "recreate"}
    retried = {c.name for c in ifaces if c.action == "retry"}

    tunnels: list[TunnelChange] = []
    for name in sorted(old_tuns.keys() | new.tunnels.keys()):
        o, n = old_tuns.get(name), new.tunnels.get(name)
        if o is None:
            tunnels.append(TunnelChange(name, "add"))
        elif n is None:
            tunnels.append(TunnelChange(name, "remove"))
        else:
            tunnels.append(_tunnel_change(
                name, o, n, old_keys.get(name) == new_keys.get(name), n.interface in recreated,
                n.interface in retried, old_peer_keys.get(name, {}), new_peer_keys.get(name, {})))

    notes: list[str] = skipped_default_routes(new)
    if old is not None and old.daemon.control_socket != new.daemon.control_socket:
        notes.append("daemon.control_socket changed: takes effect at the next daemon restart")
    if old is not None and old.daemon.metrics_listen != new.daemon.metrics_listen:
        notes.append("daemon.metrics_listen changed: takes effect at the next daemon restart")
    if old is not None and (old.daemon.control_group, old.daemon.admin_group) != (
            new.daemon.control_group, new.daemon.admin_group):
        notes.append("daemon.control_group/admin_group changed: rights apply now; the socket's "
                     "group changes at the next daemon restart")
    if old is not None and old.daemon.worker_user != new.daemon.worker_user:
        notes.append("daemon.worker_user changed: applies to workers started from now on")
    return Plan(ifaces, tuple(tunnels), tuple(notes))
