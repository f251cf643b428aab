"""The ``status`` reply: daemon, interfaces and tunnels, as :mod:`tund.control.status_schema`
documents them (schema 1; fields are public: add freely, rename nothing).

Contract: :func:`reply` only assembles; the caller (:meth:`tund.daemon.engine.Engine.status`)
refreshes the tunnel runners first. :func:`interfaces` reads one sysfs file per interface.
:func:`tunnel_peers` (pure) joins a tunnel's configured peers with what its workers reported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tund import __version__
from tund.config import Config, TunnelConfig
from tund.control.status_schema import SCHEMA_VERSION
from tund.netdev.tuntap import OpenedDevice


def sysfs_mtu(name: str) -> int | None:
    """The link MTU the kernel reports for ``name``; None if there is no such link.

    Plain ``open`` (no pathlib): a status of many interfaces reads one file per interface.
    """
    try:
        with open(f"/sys/class/net/{name}/mtu", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def interfaces(cfg: Config | None, devices: Mapping[str, OpenedDevice],
               errors: Mapping[str, str]) -> dict[str, Any]:
    """Every configured interface: its config, whether it exists, ifindex, mtu, error."""
    out: dict[str, Any] = {}
    if cfg is None:
        return out
    for name, iface in cfg.interfaces.items():
        dev = devices.get(name)
        mtu = sysfs_mtu(name)
        out[name] = {
            "mode": iface.mode, "persist": iface.persist,
            "exists": mtu is not None or os.path.exists(f"/sys/class/net/{name}"),
            "ifindex": dev.info.ifindex if dev else None,
            "mtu": mtu, "addresses": list(iface.addresses),
            "owner": iface.owner, "group": iface.group,
            "error": errors.get(name),
        }
    return out


#: A peer is ``active`` while its latest handshake is at most this many seconds old
#: (WireGuard rekeys every 120 s, so a live session never gets older than ~180 s).
ACTIVE_WITHIN = 180.0
_PEER_COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")


def peer_state(latest_handshake: float | None, now: float) -> str:
    """``"active"`` (handshake within :data:`ACTIVE_WITHIN` s), ``"idle"`` or ``"never"``."""
    if latest_handshake is None or latest_handshake <= 0:
        return "never"
    return "active" if now - latest_handshake <= ACTIVE_WITHIN else "idle"


def tunnel_peers(t: TunnelConfig | None, reported: Mapping[str, Mapping[str, Any]],
                 now: float) -> dict[str, Any]:
    """``peers`` of a tunnel's status (``status_schema.PEER_FIELDS``): every configured peer
    (disabled ones too), its config fields joined with the workers' counters (zeros and
    ``never`` without them). Peers a worker reports but the config no longer has are left
    out. ``{}`` for the single-peer form."""
    out: dict[str, Any] = {}
    for name, pc in sorted(((t.peers or {}) if t is not None else {}).items()):
        r = reported.get(name) or {}
        handshake = r.get("latest_handshake")
        out[name] = {
            "public_key": pc.public_key,
            "endpoint": r.get("endpoint") or pc.endpoint,
            "allowed_ips": list(pc.allowed_ips),
            "keepalive": pc.keepalive,
            "enabled": pc.enabled,
            "latest_handshake": handshake,
            "state": peer_state(handshake, now),
            **{k: int(r.get(k) or 0) for k in _PEER_COUNTERS},
            "drops": dict(r.get("drops") or {}),
            "offload": str(r.get("offload") or "off"),
            "lifetime": dict(r.get("lifetime") or {}),
        }
    return out


def reply(*, config_path: Path, started: float, reloads: int,
          last_reload: dict[str, Any] | None, ifaces: dict[str, Any],
          tunnels: dict[str, Any]) -> dict[str, Any]:
    """The whole reply (``ifaces`` is ``{}`` when one tunnel was asked for)."""
    return {
        "schema": SCHEMA_VERSION,
        "daemon": {"version": __version__, "pid": os.getpid(),
                   "config": str(config_path), "started": started,
                   "reloads": reloads, "last_reload": last_reload},
        "interfaces": ifaces,
        "tunnels": tunnels,
    }
