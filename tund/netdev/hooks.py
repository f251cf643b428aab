"""An interface's hooks (``pre_up``, ``post_up``, ``pre_down``, ``post_down``): commands the
daemon runs as root, off the event loop (asyncio subprocesses).

Contract:

* :func:`expand` replaces ``%i`` in every argument with the interface name (``%%`` is a
  literal ``%``); nothing else is interpreted (no shell).
* :func:`run_phase` runs a phase's commands in order, each logged ``[#] hook PHASE of
  IFACE: ARGV`` before it starts, its output (stdout and stderr together) logged line by
  line after it ends. The first command that exits non-zero, cannot be started, or runs
  past ``timeout`` (its whole process group is then killed with SIGKILL) stops the phase:
  :class:`HookError` names the interface, the key (``interfaces.X.pre_up[N]``), the argv
  and the exit status. Commands after it are not run.
* Hooks come from the configuration only; a root daemon loads only root-owned files
  that nobody else can write (:mod:`tund.config.safefile`), so hooks are as trusted as
  the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Sequence

from tund.errors import KernelError

log = logging.getLogger("tund.netdev.hooks")

#: the longest output kept from one hook (the rest is dropped, and that is said)
MAX_OUTPUT = 64 * 1024


class HookError(KernelError):
    """A hook failed; the message is located (``interfaces.X.PHASE[N]``)."""


def expand(argv: Sequence[str], iface: str) -> list[str]:
    """``argv`` with ``%i`` -> ``iface`` and ``%%`` -> ``%`` in every argument."""
    return [a.replace("%%", "\0").replace("%i", iface).replace("\0", "%") for a in argv]


def where(iface: str, phase: str, index: int) -> str:
    """The key path of one hook command: ``interfaces.tun0.post_up[1]``."""
    return f"interfaces.{iface}.{phase}[{index}]"


def describe(iface: str, phase: str, argv: Sequence[str]) -> str:
    """The line logged before a hook runs (and the dry run's line)."""
    return f"[#] hook {phase} of {iface}: {shlex.join(expand(argv, iface))}"


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # it leads its own group: its children too
    await proc.wait()


async def run_one(iface: str, phase: str, index: int, argv: Sequence[str],
                  timeout: float) -> None:
    """Run one hook command (logged before); HookError if it fails (see the contract)."""
    cmd = expand(argv, iface)
    extra = {"TUND_INTERFACE": iface}
    log.info("%s", describe(iface, phase, argv), extra=extra)
    at = where(iface, phase, index)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        log.error("%s: cannot run %s: %s", at, shlex.join(cmd), e.strerror or e, extra=extra)
        raise HookError(f"{at}: cannot run {shlex.join(cmd)}: {e.strerror or e}") from e
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        rc = proc.returncode
        assert rc is not None
    except TimeoutError:
        await _kill(proc)
        log.error("%s: %s still running after %gs: killed", at, shlex.join(cmd), timeout,
                  extra=extra)
        raise HookError(f"{at}: {shlex.join(cmd)} still running after {timeout:g}s "
                        "(hook_timeout): killed") from None
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    text = out[:MAX_OUTPUT].decode("utf-8", "replace")
    for line in text.splitlines():
        log.info("hook %s of %s: %s", phase, iface, line, extra=extra)
    if len(out) > MAX_OUTPUT:
        log.info("hook %s of %s: (%d more bytes of output dropped)", phase, iface,
                 len(out) - MAX_OUTPUT, extra=extra)
    if rc != 0:
        status = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        log.error("%s: %s failed (%s)", at, shlex.join(cmd), status, extra=extra)
        raise HookError(f"{at}: {shlex.join(cmd)} failed ({status})")


async def run_phase(iface: str, phase: str, commands: Sequence[Sequence[str]],
                    timeout: float) -> None:
    """Run ``commands`` (one phase of ``iface``) in order; HookError at the first failure."""
    for i, argv in enumerate(commands):
        await run_one(iface, phase, i, argv, timeout)
