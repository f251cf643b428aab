"""How the daemon starts worker processes: spawned, or forked by a fork server (zygote).

The :class:`Launcher` and :class:`Child` contracts, :class:`SpawnLauncher` and
:class:`ForkedChild` live in :mod:`tund.supervise.launch` (re-exported here).

* :class:`SpawnLauncher`: ``subprocess.Popen`` of a fresh interpreter per worker (each
  pays Python's start and the imports, and keeps private copies of them).
* :class:`ForkServer`: one zygote (:mod:`tund.relay.process.zygote`) started once, with the relay
  modules imported, forks each worker (milliseconds, pages shared). It is started early
  (:meth:`ForkServer.start` does not wait; in the event loop its ready message is read
  like any reply, requests queue meanwhile; without a loop the first launch waits for
  it; a request pending while the zygote answered nothing for ``request_timeout`` means
  it is stuck: a long queue answered one by one is not), restarted at
  the next launch if it died, and when it cannot start or take a request, that launch
  falls back to spawning (logged); after a failed start (or :data:`DEATH_LIMIT` deaths
  within :data:`DEATH_WINDOW` seconds) it is not tried again for
  :attr:`ForkServer.retry_after` seconds. The daemon becomes a child subreaper
  (``PR_SET_CHILD_SUBREAPER``) so that forked workers are re-parented to it.

Launches are pipelined: inside a running event loop, :meth:`ForkServer.launch` only sends
the request and returns a :class:`ForkedChild` whose ``pid`` is None until the reply is
read (by an event-loop reader; :meth:`ForkedChild.wait` also reads replies itself).
Signals sent meanwhile are delivered once the PID is known. A request the zygote refuses,
or loses by dying, makes its child count as exited with status :data:`FORK_FAILED`; its
control socket closes too (the fds in flight are dropped), so the supervisor sees an
ordinary crash and restarts it with backoff. Without a running loop (tests, tools) a
launch waits for its reply.

Size: one class, the zygote's client: starting it, fork requests, their replies and its
death share one socket and one table of pending starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from tund import libc
from tund.supervise.launch import (
    FORK_FAILED,
    Child,
    ForkedChild,
    Launcher,
    SpawnLauncher,
    child_env,
    worker_argv,
)
from tund.workerapi.messages import (
    FROM_ZYGOTE,
    Fork,
    Forked,
    ForkError,
    MessageError,
    Ready,
    decode,
)
from tund.workerapi.run_as import RunAs

__all__ = ["FORK_FAILED", "Child", "ForkServer", "ForkServerBusy", "ForkServerError",
           "ForkedChild", "Launcher", "SpawnLauncher", "worker_argv"]

log = logging.getLogger("tund.supervise")

_PR_SET_CHILD_SUBREAPER = 36
#: A zygote found dead this often within this many seconds counts as a failed start.
DEATH_LIMIT, DEATH_WINDOW = 3, 60.0


class ForkServerError(OSError):
    """The zygote could not be started or did not fork a worker (the launch falls back)."""


class ForkServerBusy(ForkServerError):
    """The zygote's request queue is full (it is still starting, or stuck); this launch
    falls back, the zygote is kept (a stuck one is found out by its workers' pings)."""


def become_subreaper() -> bool:
    """``PR_SET_CHILD_SUBREAPER`` on this process; False (logged) if the kernel refuses."""
    try:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, what="PR_SET_CHILD_SUBREAPER")
    except OSError as e:
        log.warning("%s", e.strerror)
        return False
    return True


class ForkServer:
    """A :class:`Launcher` backed by one zygote process, falling back to ``fallback``."""

    def __init__(self, *, fallback: Launcher | None = None, ready_timeout: float = 20.0,
                 request_timeout: float = 5.0, retry_after: float = 30.0,
                 argv: Sequence[str] | None = None) -> None:
        self.fallback = fallback or SpawnLauncher()
        self.ready_timeout = ready_timeout
        self.request_timeout = request_timeout
        self.retry_after = retry_after
        self._argv = list(argv) if argv is not None else [
            sys.executable, "-m", "tund.relay", "--fork-server", "--control-fd"]
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._ready = False
        self._failed_at: float | None = None
        self._subreaper: bool | None = None
        self.forked = 0  # workers started by the zygote
        self.spawned = 0  # workers started by the fallback
        self._next_id = 0
        self._deaths: list[float] = []  # when it was found dead (monotonic)
        self._pending: dict[int, ForkedChild] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0  # when the zygote was started (monotonic)
        self._answered = 0.0  # when it last sent anything (monotonic)
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        """The zygote's PID while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        """Start the zygote without waiting for it (its imports overlap the caller's work).

        Raises ForkServerError if the process cannot be started.
        """
        self.close()
        if self._subreaper is None:
            self._subreaper = become_subreaper()
        if not self._subreaper:
            raise ForkServerError("the daemon cannot be a child subreaper: forked workers "
                                  "would not be its children")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [*self._argv, str(theirs.fileno())]
        log.info("[#] %s (fork server)", " ".join(argv))
        try:
            self.proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()],
                                         stdin=subprocess.DEVNULL, close_fds=True,
                                         env=child_env())
        except OSError as e:
            ours.close()
            raise ForkServerError(f"cannot start the fork server {argv[0]}: {e}") from e
        finally:
            theirs.close()
        ours.set_inheritable(False)
        ours.setblocking(False)
        self._sock = ours
        self._ready = False
        self._started = time.monotonic()

    def close(self) -> None:
        """Stop the zygote (it exits when its socket closes; killed if it lingers).

        Requests still without a reply fail (their workers count as exited).
        """
        if self._sock is not None:
            self._unwatch()
            with contextlib.suppress(ForkServerError):  # replies that came: pids are known
                while (msg := self._recv(0.0, "fork reply")) is not None:
                    self._dispatch(msg)
            self._sock.close()
            self._sock = None
        pending, self._pending = self._pending, {}
        for child in pending.values():
            child.failed("the fork server was stopped before it replied")
        proc, self.proc = self.proc, None
        self._ready = False
        if proc is None or proc.poll() is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: wait here
            try:
                proc.wait(CLOSE_GRACE)
            except subprocess.TimeoutExpired:
                _kill(proc)
                proc.wait()
            return
        task = loop.create_task(_retire(proc))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait, without blocking the loop, up to ``timeout`` (default ``ready_timeout``)
        for the zygote's ready message; whether it came. The daemon's start-up uses it,
        so its first workers are forked at once."""
        if self._sock is None:
            return False
        self._watch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.ready_timeout if timeout is None else timeout)
        while not self._ready and self._sock is not None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self._ready

    def _in_loop(self) -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def _recv(self, timeout: float, what: str) -> Ready | Forked | ForkError | None:
        """One message; None when none came within ``timeout`` (0: do not wait).

        The socket stays non-blocking: waits are explicit selects.
        """
        assert self._sock is not None
        if timeout > 0 and not select.select([self._sock], [], [], timeout)[0]:
            return None
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return None
        except OSError as e:
            raise ForkServerError(f"fork server: {what}: {e}") from e
        if not data:
            code = self.proc.poll() if self.proc is not None else None
            raise ForkServerError(f"fork server exited (status {code}) before its {what}")
        try:
            return decode(data, FROM_ZYGOTE, what)
        except MessageError as e:
            raise ForkServerError(f"fork server sent malformed data ({len(data)} bytes) "
                                  f"instead of its {what}: {e}") from None

    def _send(self, data: bytes, fds: Sequence[int]) -> None:
        """Send one request, waiting up to ``request_timeout`` for room in the zygote's
        queue (a Unix datagram queue holds only ``net.unix.max_dgram_qlen`` messages)."""
        assert self._sock is not None
        deadline = time.monotonic() + self.request_timeout
        while True:
            try:
                self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             _fd_array(fds))])
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if self._in_loop():  # never wait in the loop
                    raise ForkServerBusy(f"fork server pid {self.pid}: its request queue "
                                         "is full") from None
                if left <= 0:
                    raise ForkServerError(f"fork server pid {self.pid} took no request for "
                                          f"{self.request_timeout:g}s") from None
                # replies are read meanwhile: a zygote blocked on its reply frees up
                readable, _, _ = select.select([self._sock], [self._sock], [], left)
                if readable:
                    self.read_replies()
                    if self._sock is None:
                        raise ForkServerError("fork server went away") from None
            except OSError as e:
                raise ForkServerError(f"fork server: cannot send a fork request: {e}") from e

    def read_replies(self, until: ForkedChild | None = None, timeout: float = 0.0) -> None:
        """Read the replies that came; with ``until``, wait up to ``timeout`` for its one.

        A dead or confused zygote is closed (its pending requests fail).
        """
        deadline = time.monotonic() + timeout
        while self._sock is not None:
            left = deadline - time.monotonic() if until is not None and until.pending else 0.0
            try:
                msg = self._recv(left, "fork reply")
            except ForkServerError as e:  # it died: restarted at the next launch
                log.warning("%s", e)
                self._deaths.append(time.monotonic())
                self.close()
                return
            if msg is None:
                return
            self._dispatch(msg)

    def _dispatch(self, msg: Ready | Forked | ForkError) -> None:
        """Hand one reply to the child waiting for it."""
        self._answered = time.monotonic()
        if isinstance(msg, Ready):
            if not self._ready:
                self._ready = True
                log.info("fork server pid %s ready", self.pid)
            return
        child = None if msg.id is None else self._pending.pop(msg.id, None)
        if child is None:
            log.warning("fork server: reply to no pending request: %r", msg)
        elif isinstance(msg, Forked):
            child.resolved(msg.pid)
        else:
            child.failed(msg.error)

    def _watch(self) -> None:
        """Read replies from the running event loop, if there is one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._loop is not loop and self._sock is not None:
            self._unwatch()
            loop.add_reader(self._sock.fileno(), self.read_replies)
            self._loop = loop

    def _unwatch(self) -> None:
        if self._loop is not None and self._sock is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_reader(self._sock.fileno())
        self._loop = None

    def _ensure(self) -> None:
        """A running, ready zygote; (re)start it if needed. Raises ForkServerError (and
        then it is not started again for ``retry_after`` seconds)."""
        try:
            self._ensure_once()
        except ForkServerError:
            self._failed_at = time.monotonic()
            self.close()
            raise

    def _ensure_once(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("fork server pid %d exited with status %s; restarting it",
                        self.proc.pid, self.proc.returncode)
            self._deaths.append(time.monotonic())
            self.close()
        if self.proc is None:
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < DEATH_WINDOW]
            if len(self._deaths) >= DEATH_LIMIT:
                self._deaths.clear()
                raise ForkServerError(f"fork server died {DEATH_LIMIT} times within "
                                      f"{DEATH_WINDOW:g}s")
            if (self._failed_at is not None
                    and time.monotonic() - self._failed_at < self.retry_after):
                raise ForkServerError("fork server failed recently; not retried yet")
            self.start()
        if not self._ready and self._in_loop():
            # the loop reads the ready message like any reply; requests wait in the
            # socket meanwhile (the zygote reads them once ready)
            if time.monotonic() - self._started > self.ready_timeout:
                raise ForkServerError(f"fork server pid {self.pid}: no ready message within "
                                      f"{self.ready_timeout:g}s")
            return
        if not self._ready:
            msg = self._recv(self.ready_timeout, "ready message")
            if msg is None:
                raise ForkServerError(f"fork server pid {self.pid}: no ready message within "
                                      f"{self.ready_timeout:g}s")
            if not isinstance(msg, Ready):
                raise ForkServerError(f"fork server: expected op 'ready' (got {msg!r})")
            self._ready = True
            log.info("fork server pid %s ready", self.pid)

    def _fork(self, fds: Sequence[int], run_as: RunAs | None) -> ForkedChild:
        self._ensure()
        assert self._sock is not None
        self._next_id += 1
        child = ForkedChild(self, self._next_id)
        req = Fork(child.rid, tuple(fds), str(run_as) if run_as is not None else None)
        try:
            self._send(req.encode(), fds)
        except ForkServerBusy:
            raise
        except ForkServerError:
            self.close()  # dead or stuck: started afresh at the next launch
            raise
        self._pending[child.rid] = child
        self._watch()
        if self._loop is None:  # nobody reads replies for us: wait for this one
            self.read_replies(until=child, timeout=self.request_timeout)
        else:  # a zygote that never answers (stuck, stopped) is replaced
            limit = self.request_timeout + (0.0 if self._ready else self.ready_timeout)
            self._loop.call_later(limit, self._expire, child.rid, limit)
        return child

    def _expire(self, rid: int, limit: float) -> None:
        """Request ``rid`` is still unanswered after ``limit`` seconds. If the zygote
        answered others within the last ``limit`` seconds it is busy (a burst of starts
        queues hundreds of requests): look again when that answer is ``limit`` old.
        Otherwise it is stuck: stopped (SIGKILL if it lingers), its pending requests fail
        (their workers count as exited) and the next launch starts a new one."""
        if rid not in self._pending or self._sock is None or self._loop is None:
            return
        quiet = time.monotonic() - self._answered
        if quiet < limit:
            self._loop.call_later(limit - quiet, self._expire, rid, limit)
            return
        log.warning("fork server pid %s answered no request for %.0fs: stuck; stopping it",
                    self.pid, limit)
        self._deaths.append(time.monotonic())
        self.close()

    def launch(self, fds: Sequence[int], run_as: RunAs | None) -> Child:
        """Fork the worker (see the module docstring); spawn it if the zygote cannot take
        the request (logged). Raises OSError."""
        try:
            child = self._fork(fds, run_as)
        except ForkServerError as e:
            log.warning("%s; spawning the worker instead", e)
            self.spawned += 1
            return self.fallback.launch(fds, run_as)
        self.forked += 1
        return child


CLOSE_GRACE = 2.0  # seconds a closed zygote may take to exit; then SIGKILL


def _kill(proc: subprocess.Popen[bytes]) -> None:
    log.info("[#] kill -%d %d (fork server)", signal.SIGKILL, proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _retire(proc: subprocess.Popen[bytes]) -> None:
    """Reap a closed zygote from the loop without blocking it; SIGKILL if it lingers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_GRACE
    killed = False
    while proc.poll() is None:
        if loop.time() >= deadline:
            if killed:
                log.warning("fork server pid %d: no exit status after SIGKILL", proc.pid)
                return
            _kill(proc)
            killed, deadline = True, loop.time() + CLOSE_GRACE
        await asyncio.sleep(0.02)


def _fd_array(fds: Sequence[int]) -> bytes:
    import array

    return array.array("i", fds).tobytes()
