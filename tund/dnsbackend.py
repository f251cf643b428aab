"""Which tool sets a link's DNS servers on this host: ``resolvectl`` when systemd-resolved
runs, else ``resolvconf`` when installed, else none (used by the config check and by
:mod:`tund.netdev.dns`; changes nothing).
"""

from __future__ import annotations

import os
import shutil
from typing import Literal

#: systemd-resolved creates these while it runs (its varlink socket, its resolv.conf)
RESOLVED_RUNNING = ("/run/systemd/resolve/io.systemd.Resolve",
                    "/run/systemd/resolve/resolv.conf")

Backend = Literal["resolvectl", "resolvconf"]


def backend() -> Backend | None:
    """The tool to use, or None when neither is there."""
    if shutil.which("resolvectl") and any(os.path.exists(p) for p in RESOLVED_RUNNING):
        return "resolvectl"
    if shutil.which("resolvconf"):
        return "resolvconf"
    return None


def missing() -> str:
    """Why DNS cannot be set here (for a located error)."""
    has_ctl = shutil.which("resolvectl") is not None
    return ("cannot set DNS on this host: systemd-resolved is not running"
            + (" (resolvectl is installed)" if has_ctl else " (no resolvectl)")
            + " and resolvconf is not installed; remove dns or install one of them")
