"""Reload planning: a pure diff of two configurations into the least disruptive actions.

Contract: :func:`diff` touches nothing; it compares frozen models (and a fingerprint of each
tunnel's key material, so a rewritten key file with an unchanged path still counts) and
returns a :class:`Plan`:

* interfaces: ``add`` / ``remove`` / ``unchanged``, and for changed ones the least
  disruptive action: ``reconfigure`` (addresses, routes, MTU, MAC, bridge, txqueuelen:
  applied in place by ``ip``, the worker keeps running), ``retag`` (persist: an ioctl on the
  held device), ``recreate`` (mode, packet_info, multi_queue, owner, group: a new device);
* tunnels: ``add`` / ``remove`` / ``unchanged`` / ``update`` (only settings the running
  worker takes without a restart changed: ``keepalive``) / ``restart`` (any other tunnel
  setting or its key material changed, or its interface is recreated).

An unchanged tunnel is never touched: its worker process keeps running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tund.config import Config, InterfaceConfig

InterfaceAction = Literal["add", "remove", "unchanged", "reconfigure", "retag", "recreate"]
TunnelAction = Literal["add", "remove", "unchanged", "update", "restart"]

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
class TunnelChange:
    name: str
    action: TunnelAction
    reason: str = ""


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
        changed_if = ("reconfigure", "retag", "recreate")
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


def diff(old: Config | None, new: Config,
         old_keys: Mapping[str, str] | None = None,
         new_keys: Mapping[str, str] | None = None) -> Plan:
    """Plan the move from ``old`` (None: nothing running) to ``new``.

    ``old_keys`` / ``new_keys`` map tunnel name -> an opaque fingerprint of its key material
    (e.g. a hash of private key, peer key and PSK); a differing fingerprint restarts the tunnel.
    """
    old_ifs = old.interfaces if old else {}
    old_tuns = old.tunnels if old else {}
    old_keys = old_keys or {}
    new_keys = new_keys or {}

    ifaces = tuple(_interface_change(n, old_ifs.get(n), new.interfaces.get(n))
                   for n in sorted(old_ifs.keys() | new.interfaces.keys()))
    recreated = {c.name for c in ifaces if c.action == "recreate"}

    tunnels: list[TunnelChange] = []
    for name in sorted(old_tuns.keys() | new.tunnels.keys()):
        o, n = old_tuns.get(name), new.tunnels.get(name)
        if o is None:
            tunnels.append(TunnelChange(name, "add"))
        elif n is None:
            tunnels.append(TunnelChange(name, "remove"))
        elif o != n:
            keys = [k for k in type(n).model_fields if getattr(o, k) != getattr(n, k)]
            live = (set(keys) <= set(LIVE_TUNNEL_KEYS) and n.interface not in recreated
                    and old_keys.get(name) == new_keys.get(name))
            tunnels.append(TunnelChange(name, "update" if live else "restart",
                                        f"changed: {', '.join(keys)}"))
        elif old_keys.get(name) != new_keys.get(name):
            tunnels.append(TunnelChange(name, "restart", "key material changed"))
        elif n.interface in recreated:
            tunnels.append(TunnelChange(name, "restart", f"interface {n.interface} is recreated"))
        else:
            tunnels.append(TunnelChange(name, "unchanged"))

    notes: list[str] = []
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
