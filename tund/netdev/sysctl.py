"""Kernel settings under ``/proc/sys`` that tund needs (of the daemon's network namespace).

Contract: :meth:`ProcSysctl.ensure` reads ``KEY`` (dotted, as ``sysctl`` names it) and, only
when it differs, logs ``[#] sysctl -q KEY=VALUE`` and writes it; it never reverts one
(wg-quick does not either). A failure is a :class:`~tund.errors.KernelError` naming the key.
Code that needs a setting takes a :class:`Sysctl`, so tests pass a fake.

Used for ``net.ipv4.conf.all.src_valid_mark = 1`` when a full tunnel's policy rules go in
(:mod:`tund.netdev.policy`): reverse-path filtering then takes the fwmark into account, so
strict ``rp_filter`` does not drop the replies that come in through the tunnel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from tund.errors import KernelError

log = logging.getLogger("tund.netdev.sysctl")

#: what a full tunnel's policy needs (as wg-quick sets it)
SRC_VALID_MARK = ("net.ipv4.conf.all.src_valid_mark", "1")


class Sysctl(Protocol):
    """Sets kernel settings; see the module docstring."""

    def ensure(self, key: str, value: str) -> bool:
        """Make ``key`` equal ``value``; True if it was changed."""
        ...


class ProcSysctl:
    """The real ``/proc/sys`` (or another ``root``, for tests)."""

    def __init__(self, root: Path = Path("/proc/sys")) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not key or any(not part or part in (".", "..") or "/" in part
                          for part in key.split(".")):
            raise KernelError(f"sysctl: not a key: {key!r}")
        return self.root.joinpath(*key.split("."))

    def ensure(self, key: str, value: str) -> bool:
        path = self._path(key)
        try:
            if path.read_text().strip() == value:
                return False
            log.info("[#] sysctl -q %s=%s", key, value)
            path.write_text(value + "\n")
        except OSError as e:
            raise KernelError(f"sysctl {key}={value}: {e.strerror or e}") from None
        return True


class NoSysctl:
    """Changes nothing, records what it was asked (an engine given an ``ip`` of its own,
    e.g. a test's fake, gets this unless it is given a Sysctl too)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def ensure(self, key: str, value: str) -> bool:
        self.asked.append((key, value))
        return False
