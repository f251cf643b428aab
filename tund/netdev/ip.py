"""The only place tund runs ``ip`` (iproute2).

Contract:

* :meth:`IpRunner.run` takes the arguments after ``ip`` (``["link", "set", "tun0", "up"]``),
  logs ``[#] ip link set tun0 up`` at info (logger ``tund.netdev.ip``) *before* running it,
  returns stdout, and raises :class:`~tund.errors.IpCommandError` (full argv, exit status,
  stderr) when ``ip`` exits non-zero, cannot be started, or runs past ``timeout``.
* :meth:`IpRunner.json` runs ``ip -json ARGS`` for reads (logged at debug only) and returns
  the parsed JSON (``[]`` for empty output).
* :meth:`IpRunner.batch` runs several changes through one ``ip -batch -`` (one process
  instead of one each): every command is logged as above before the batch starts; ``ip``
  stops at the first failing command, and :class:`IpBatchError` (an IpCommandError naming
  that command) says how many ran before it (``done``). :func:`run_batch` does the same
  with any :class:`Ip`, one command at a time when it has no ``batch``.
* ``netns`` makes every command act in that network namespace (``ip -n NS``).

Code that changes links takes an :class:`Ip` (the Protocol), so tests pass a fake.
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any, Protocol

from tund.errors import IpCommandError

log = logging.getLogger("tund.netdev.ip")

#: What ``ip -batch`` prints when a line fails (``-`` is stdin, N counts from 1).
_BATCH_FAILED = re.compile(r"^Command failed -:(\d+)\s*$", re.MULTILINE)
#: Arguments ``ip -batch`` would split or treat as a comment; such commands run alone.
_BATCH_UNSAFE = re.compile(r"[\s\"'#\\]")


class IpBatchError(IpCommandError):
    """Command ``done`` (counting from 0) of a batch failed; the ``done`` before it ran."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, done: int) -> None:
        super().__init__(argv, returncode, stderr)
        self.done = done


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
        log.info("[#] %s", shlex.join(cmd), extra=interface_field(argv))
        return self._exec(cmd)

    def batch(self, argvs: Sequence[Sequence[str]]) -> None:
        """Log each change, then run them all through one ``ip -batch -``.

        Raises IpBatchError for the first failing command (``done`` ran before it), and a
        plain IpCommandError (``done`` unknown: treat all as possibly run) when ``ip``
        fails without saying which line.
        """
        if not argvs:
            return
        unsafe = [a for argv in argvs for a in argv if not a or _BATCH_UNSAFE.search(a)]
        if unsafe:
            raise ValueError(f"ip -batch cannot carry the argument {unsafe[0]!r}")
        for argv in argvs:
            log.info("[#] %s", shlex.join(self.command(argv)), extra=interface_field(argv))
        cmd = self.command(["-batch", "-"])
        text = "".join(" ".join(argv) + "\n" for argv in argvs)
        try:
            p = subprocess.run(cmd, input=text, capture_output=True, text=True,
                               timeout=self.timeout + len(argvs) * 0.1)
        except FileNotFoundError as e:
            raise IpCommandError(cmd, 127, f"cannot run {cmd[0]}: {e.strerror}") from e
        except subprocess.TimeoutExpired as e:
            raise IpCommandError(cmd, -1, f"no answer within {e.timeout:g}s") from e
        if p.returncode == 0:
            return
        m = _BATCH_FAILED.search(p.stderr)
        if m is None or not 1 <= int(m.group(1)) <= len(argvs):
            raise IpCommandError(cmd, p.returncode, p.stderr)
        line = int(m.group(1))
        stderr = "\n".join(x for x in p.stderr.splitlines() if not _BATCH_FAILED.match(x))
        raise IpBatchError(self.command(argvs[line - 1]), p.returncode, stderr, line - 1)

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


def interface_field(argv: Sequence[str]) -> dict[str, str]:
    """``{"TUND_INTERFACE": NAME}`` for a command about one link (``... dev NAME ...`` or
    ``link set|add|del NAME``), for the journal; empty when it names none."""
    for i, a in enumerate(argv[:-1]):
        if a == "dev" or (a in ("set", "add", "del", "delete") and i == 1 and argv[0] == "link"):
            return {"TUND_INTERFACE": argv[i + 1]}
    return {}


def run_batch(ip: Ip, argvs: Sequence[Sequence[str]]) -> None:
    """Run ``argvs`` in order through ``ip``: one ``ip -batch`` when it can, else one by one.

    Raises IpBatchError for the first failing command, with how many ran before it.
    """
    batch = getattr(ip, "batch", None)
    if batch is not None and not any(_BATCH_UNSAFE.search(a) or not a
                                     for argv in argvs for a in argv):
        batch(argvs)
        return
    for i, argv in enumerate(argvs):
        try:
            ip.run(argv)
        except IpBatchError:
            raise
        except IpCommandError as e:
            raise IpBatchError(e.argv, e.returncode, e.stderr, i) from e
