"""The only place tund runs ``ip`` (iproute2).

Contract:

* :meth:`IpRunner.run` takes the arguments after ``ip`` (``["link", "set", "tun0", "up"]``),
  logs ``[#] ip link set tun0 up`` at info (logger ``tund.netdev.ip``) *before* running it,
  returns stdout, and raises :class:`~tund.errors.IpCommandError` (full argv, exit status,
  stderr) when ``ip`` exits non-zero, cannot be started, or runs past ``timeout``.
* :meth:`IpRunner.json` runs ``ip -json ARGS`` for reads (logged at debug only) and returns
  the parsed JSON (``[]`` for empty output).
* ``netns`` makes every command act in that network namespace (``ip -n NS``).

Code that changes links takes an :class:`Ip` (the Protocol), so tests pass a fake.
"""

from __future__ import annotations

import json as jsonlib
import logging
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any, Protocol

from tund.errors import IpCommandError

log = logging.getLogger("tund.netdev.ip")


class Ip(Protocol):
    """Runs ``ip`` commands; see the module docstring for the contract."""

    def run(self, argv: Sequence[str]) -> str: ...

    def json(self, argv: Sequence[str]) -> Any: ...


class IpRunner:
    """Runs the real ``ip`` binary, optionally in network namespace ``netns``."""

    def __init__(self, *, netns: str | None = None, binary: str = "ip",
                 timeout: float = 30.0) -> None:
        self.netns = netns
        self.binary = binary
        self.timeout = timeout

    def command(self, argv: Sequence[str], *, json: bool = False) -> list[str]:
        """The full argv that runs ``ip [-n NS] [-json] ARGV``."""
        cmd = [self.binary]
        if self.netns is not None:
            cmd += ["-n", self.netns]
        if json:
            cmd.append("-json")
        return [*cmd, *argv]

    def _exec(self, cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            raise IpCommandError(cmd, 127, f"cannot run {cmd[0]}: {e.strerror}") from e
        except subprocess.TimeoutExpired as e:
            raise IpCommandError(cmd, -1, f"no answer within {self.timeout}s") from e
        if p.returncode != 0:
            raise IpCommandError(cmd, p.returncode, p.stderr)
        return p.stdout

    def run(self, argv: Sequence[str]) -> str:
        """Log, then run ``ip ARGV`` (a change); stdout, or IpCommandError."""
        cmd = self.command(argv)
        log.info("[#] %s", shlex.join(cmd))
        return self._exec(cmd)

    def json(self, argv: Sequence[str]) -> Any:
        """Run ``ip -json ARGV`` (a read) and parse its output."""
        cmd = self.command(argv, json=True)
        log.debug("ip read: %s", shlex.join(cmd))
        out = self._exec(cmd)
        if not out.strip():
            return []
        try:
            return jsonlib.loads(out)
        except ValueError as e:
            raise IpCommandError(cmd, 0, f"output is not JSON ({e}): {out[:200]!r}") from e
