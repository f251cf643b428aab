"""One relay worker process as seen from the daemon: spawn, message, stop, kill.

Contract (see :mod:`tund.workerapi.spec` for the wire side): :meth:`WorkerProcess.spawn` starts
a ``python -m tund.relay`` worker through :attr:`WorkerProcess.LAUNCHER`
(:mod:`tund.supervise.forkserver`: forked by the zygote, or spawned as
``python -m tund.relay --control-fd N [--run-as UID:GID]``) with its control end, the
device fd and (role listen) the underlay socket under the same numbers as in the daemon,
and no other fd, then sends the start message carrying the spec (secrets travel only
there). Either way the worker is the daemon's child. Incoming control messages
are handed to ``on_message``; the control socket closing (the worker died) calls ``on_exit``
once, with the exit status collected by a task (the loop never waits for a process).
Nothing here blocks the daemon's event loop for longer than a non-blocking send.

Privileges: the worker drops them itself before its first packet
(:mod:`tund.relay.process.privileges`); :attr:`WorkerProcess.RUN_AS` (set per configuration
with :func:`worker_class`) says to whom.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from tund import logs
from tund.supervise.forkserver import Child, Launcher, SpawnLauncher
from tund.workerapi.channel import MAX_MESSAGE, recv_message, widen
from tund.workerapi.messages import FROM_WORKER, Message, MessageError, Pong, Start, State, Stop
from tund.workerapi.messages import decode as decode_message
from tund.workerapi.run_as import RunAs
from tund.workerapi.spec import WorkerSpec

log = logging.getLogger("tund.supervise")

REAP_GRACE = 2.0  # seconds a worker may linger after closing its socket; then SIGKILL
REAP_POLL = 0.02  # how often the reaper looks (it never blocks the loop)


@dataclass(frozen=True)
class Malformed:
    """Not a message: the worker sent something :func:`decode_message` refused (``error``
    names the field and the value). Nothing it sends afterwards is read."""

    error: str


FromWorker = Pong | State | Malformed
MessageHandler = Callable[[FromWorker], None]


class WorkerProcess:
    """A spawned worker and the daemon's end of its control socket."""

    #: The uid/gid workers of this class switch to; None: they keep the daemon's.
    RUN_AS: RunAs | None = None
    #: How workers of this class are started (set per daemon with :func:`worker_class`).
    LAUNCHER: Launcher = SpawnLauncher()

    def __init__(self, spec: WorkerSpec, on_message: MessageHandler,
                 on_exit: Callable[[int | None], None]) -> None:
        self.spec = spec
        self._on_message = on_message
        self._on_exit = on_exit
        self._sock: socket.socket | None = None
        self.proc: Child | None = None
        self._exited = False
        self._refused = False  # it sent a malformed message: read nothing more
        self._reaper: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def spawn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the process and send it its spec. Raises OSError if it cannot start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):  # messages grow with the peers (tund.workerapi.channel)
            widen(end)
        fds = [theirs.fileno(), self.spec.device_fd]
        if self.spec.socket_fd is not None:
            fds.append(self.spec.socket_fd)
        try:
            self.proc = self.LAUNCHER.launch(fds, self.RUN_AS)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        loop.add_reader(ours.fileno(), self._readable)
        self.send(Start(self.spec))

    def send(self, msg: Message) -> bool:
        """Send one control message; False if the worker is gone or its queue is full."""
        if self._sock is None:
            return False
        try:
            self._sock.send(msg.encode())
            return True
        except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
            return False

    def drain(self) -> None:
        """Handle every control message already queued (used before judging liveness)."""
        if self._sock is not None:
            self._readable()

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = recv_message(self._sock)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._closed()
                return
            if self._refused:
                continue
            try:
                if len(data) >= MAX_MESSAGE:
                    raise MessageError(f"control message of {MAX_MESSAGE} bytes or more")
                msg: FromWorker = decode_message(data, FROM_WORKER)
            except MessageError as e:
                log.warning("worker %s (pid %s) sent malformed control data (%d bytes): %s",
                            self.spec.tunnel, self.pid, len(data), e,
                            extra=logs.fields(interface=self.spec.interface,
                                              tunnel=self.spec.tunnel))
                self._refused = True
                msg = Malformed(str(e))
            self._on_message(msg)

    def _closed(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._exited:
            return
        self._exited = True
        code = self.proc.poll() if self.proc is not None else None
        if self.proc is None or code is not None:
            self._on_exit(code)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tools, tests): wait here
            self._on_exit(self._reap_now(REAP_GRACE))
            return
        self._reaper = loop.create_task(self._reap(REAP_GRACE))

    async def _reap(self, grace: float) -> None:
        """Collect the exit status without blocking the loop; kill the process if it
        lingers ``grace`` seconds after closing its socket."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        killed = False
        while (code := self.proc.poll()) is None:
            if loop.time() >= deadline:
                if killed:  # not even SIGKILL ended it (a fork request never answered)
                    log.warning("worker of tunnel %s (pid %s): no exit status %.0fs after "
                                "SIGKILL; counted as exited", self.spec.tunnel, self.pid,
                                grace)
                    break
                self.kill()
                killed, deadline = True, loop.time() + grace
            await asyncio.sleep(REAP_POLL)
        self._on_exit(code)

    def _reap_now(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process by PID (never by name)."""
        if self.proc is not None and self.proc.poll() is None:
            log.info("[#] kill -%d %s (worker of tunnel %s)", sig, self.proc.pid or "(pending)",
                     self.spec.tunnel,
                     extra=logs.fields(interface=self.spec.interface, tunnel=self.spec.tunnel))
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def stop(self, grace: float = 2.0) -> None:
        """Ask the worker to stop; TERM then KILL if it does not exit in time."""
        if self.proc is None or self._exited:
            await self._reaped()
            return
        self.send(Stop())
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                self.kill(sig)
            deadline = asyncio.get_running_loop().time() + grace
            while self.proc.poll() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            if self.proc.poll() is not None:
                break
        self._closed()
        await self._reaped()

    async def _reaped(self) -> None:
        """Return once ``on_exit`` was called (the reaper task, if one runs, is done)."""
        if self._reaper is not None:
            await asyncio.shield(self._reaper)


_SO_SNDBUFFORCE = 32  # Linux; beyond net.core.wmem_max, for CAP_NET_ADMIN (the daemon)


def spec_dict(spec: WorkerSpec) -> dict[str, object]:
    """The spec as the start message carries it (without ``asdict``'s deep copy)."""
    return dict(Start(spec).fields()["spec"])


def worker_class(run_as: RunAs | None,
                 launcher: Launcher | None = None) -> type[WorkerProcess]:
    """A :class:`WorkerProcess` subclass whose workers switch to ``run_as`` and are started
    by ``launcher`` (default: spawned)."""
    if run_as is None and launcher is None:
        return WorkerProcess
    name = f"WorkerProcess_{run_as.uid}_{run_as.gid}" if run_as else "WorkerProcess_"
    return type(name, (WorkerProcess,),
                {"RUN_AS": run_as, "LAUNCHER": launcher or WorkerProcess.LAUNCHER})
