"""How a worker process is started, as the daemon sees it: the :class:`Child` and
:class:`Launcher` contracts, :class:`SpawnLauncher` (a fresh ``python -m tund.relay``) and
:class:`ForkedChild` (a worker the fork server forked, see :mod:`tund.supervise.forkserver`).

A :class:`Launcher` takes the worker's fds (control end first, then the device, then the
underlay socket if any) and a :class:`RunAs`, starts one worker that finds each fd under the
same number, and returns a :class:`Child`: the PID, ``poll()``/``wait(timeout)`` with
``subprocess`` semantics (exit code, or ``-SIGNAL``; ``wait`` raises
:class:`subprocess.TimeoutExpired`), and ``send_signal``. Either way the worker is a child
of the daemon, so the daemon reaps it and may signal its PID without a reuse race.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Protocol

from tund.workerapi.run_as import RunAs

log = logging.getLogger("tund.supervise")

#: Exit status of a worker the zygote refused or lost (it never ran).
FORK_FAILED = 255


class Replies(Protocol):
    """What a :class:`ForkedChild` needs of its fork server."""

    request_timeout: float

    def read_replies(self, until: ForkedChild | None = None, timeout: float = 0.0) -> None: ...


class Child(Protocol):
    """A started worker process (``subprocess.Popen`` has this shape)."""

    @property
    def pid(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


class Launcher(Protocol):
    """Starts workers; see the module docstring for the contract."""

    def launch(self, fds: Sequence[int], run_as: RunAs | None) -> Child: ...


def worker_argv(control_fd: int, run_as: RunAs | None) -> list[str]:
    """The command line of a spawned worker."""
    return [sys.executable, "-m", "tund.relay", "--control-fd", str(control_fd),
            *(["--run-as", str(run_as)] if run_as is not None else [])]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


class SpawnLauncher:
    """One fresh ``python -m tund.relay`` per worker (``subprocess.Popen``)."""

    def launch(self, fds: Sequence[int], run_as: RunAs | None) -> Child:
        """Spawn the worker with ``fds`` inherited; OSError if it cannot start."""
        return subprocess.Popen(worker_argv(fds[0], run_as), pass_fds=list(fds),
                                stdin=subprocess.DEVNULL, close_fds=True, env=child_env())


class ForkedChild:
    """A worker forked by the zygote and re-parented to us: we are its parent and reaper.

    ``pid`` is None until the zygote's reply is read (see the module docstring).
    """

    def __init__(self, server: Replies, rid: int) -> None:
        self.server = server
        self.rid = rid
        self.pid: int | None = None
        self.returncode: int | None = None
        self.error: str | None = None
        self._signals: list[int] = []

    @property
    def pending(self) -> bool:
        """The reply has not been read yet."""
        return self.pid is None and self.returncode is None

    def resolved(self, pid: int) -> None:
        """The zygote reports the PID: deliver the signals sent meanwhile."""
        self.pid = pid
        for sig in self._signals:
            self.send_signal(sig)
        self._signals.clear()

    def failed(self, error: str) -> None:
        """The worker was never started (refused, or the zygote went away)."""
        log.warning("fork server: worker request %d failed: %s", self.rid, error)
        self.error = error
        self.returncode = FORK_FAILED

    def poll(self) -> int | None:
        """The exit code (``-SIGNAL`` if killed) once it exited, else None."""
        if self.returncode is not None or self.pid is None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # cannot happen once re-parented; the worker replies only after that
            log.warning("worker pid %d is not a child of the daemon: exit status unknown",
                        self.pid)
            self.returncode = FORK_FAILED
            return self.returncode
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; subprocess.TimeoutExpired after ``timeout`` seconds.

        A child still waiting for its PID reads the zygote's replies for at most
        ``timeout`` (or the server's ``request_timeout``), then counts as failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.pending:
            limit = self.server.request_timeout if timeout is None else timeout
            self.server.read_replies(until=self, timeout=limit)
            if self.pending:
                if timeout is not None:
                    raise subprocess.TimeoutExpired(f"worker request {self.rid}", timeout)
                self.failed(f"no reply within {limit:g}s")
        if self.pid is None:
            return self.returncode if self.returncode is not None else FORK_FAILED
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = -1  # already reaped, or no pidfd support: poll
        try:
            while (code := self.poll()) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
                if pidfd >= 0:
                    select.select([pidfd], [], [], 1.0 if left is None else left)
                else:
                    time.sleep(0.05 if left is None else min(left, 0.05))
            return code
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def send_signal(self, sig: int) -> None:
        """Signal the worker by PID (later, if its PID is not known yet); not once reaped."""
        if self.pending:
            self._signals.append(sig)
        elif self.poll() is None:
            assert self.pid is not None
            os.kill(self.pid, sig)


