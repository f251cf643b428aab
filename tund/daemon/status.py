"""The ``status`` reply: daemon, interfaces and tunnels, as :mod:`tund.control.status_schema`
documents them (schema 1; fields are public: add freely, rename nothing).

Contract: :func:`reply` only assembles; the caller (:meth:`tund.daemon.engine.Engine.status`)
refreshes the tunnel runners first. :func:`interfaces` reads one sysfs file per interface.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tund import __version__
from tund.config import Config
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
