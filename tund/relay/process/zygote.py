"""The fork server ("zygote"): one pre-imported Python that forks relay workers on request.

Run as ``python -m tund.relay --fork-server --control-fd N`` (by
:mod:`tund.supervise.forkserver`). It imports what a worker needs once (:data:`PRELOAD`),
runs ``gc.freeze()`` on it (forked workers keep sharing those pages), says :class:`Ready`
once, and answers each :class:`Fork` request (fds attached, ``SCM_RIGHTS``) with
:class:`Forked` (sent by the worker itself, once re-parented to the daemon) or
:class:`ForkError`, in any order (:mod:`tund.workerapi.messages`). Each worker is forked
twice, so the daemon (a subreaper) is its parent, as with a spawned worker. The zygote
exits 0 when the daemon's end closes; it never runs a worker itself nor touches a packet.
Why and how, step by step: docs/design.md, "The fork server".
"""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import json
import logging
import os
import resource
import select
import signal
import socket
import sys
import time

from tund import logs, proctitle
from tund.relay.transport import xor
from tund.workerapi.messages import (
    TO_ZYGOTE,
    Fork,
    Forked,
    ForkError,
    Message,
    MessageError,
    Ping,
    Ready,
    Start,
    Stop,
    decode,
)
from tund.workerapi.run_as import RunAs

log = logging.getLogger("tund.relay.process.zygote")

#: Thread names (``/proc/PID/comm``) of the zygote and of a worker before its start message.
ZYGOTE_COMM = "tund-zygote"
WORKER_COMM = "tund-relay"
WARM_ROUNDS = 10  # start-up paths run this often (Python 3.11 specializes after 8 calls)
#: What a worker may import, imported once here (missing optional ones are skipped).
PRELOAD = (
    "tund.relay.process.worker", "tund.relay.loop.pump", "tund.relay.transport.udp",
    "tund.relay.transport.tcp", "tund.relay.codec.offload", "tund.relay.process.privileges",
    "tund.relay.wireguard.codec", "tund.relay.wireguard.multi", "tund.relay.transport.resolver",
    "encodings.idna", "selectors", "ctypes",
)
#: Imported by a worker where installed (its command line; its journal handler when it
#: logs to journald): 6 ms of imports in every worker when left to it; missing ones change
#: nothing. The journal's is imported only where the workers will use it (its libraries
#: add 70 mappings that every fork copies).
OPTIONAL_PRELOAD = ("setproctitle",)
JOURNAL_PRELOAD = "systemd.journal"
MAX_FDS = 3  # control, device, socket
REPARENT_TIMEOUT = 5.0  # seconds a worker waits for its middle process to exit
_MSG_SIZE = 1 << 16


class ForkRequestError(ValueError):
    """A fork request the zygote cannot act on (the reply carries the message)."""


def preload() -> list[str]:
    """Import :data:`PRELOAD` and what of :data:`OPTIONAL_PRELOAD` (and, for workers that
    log to journald, :data:`JOURNAL_PRELOAD`) is installed; return
    the names of :data:`PRELOAD` that could not be imported."""
    missing = []
    journal = (JOURNAL_PRELOAD,) if logs.current_target() == "journal" else ()
    for name in PRELOAD + OPTIONAL_PRELOAD + journal:
        try:
            importlib.import_module(name)
        except ImportError:
            if name in PRELOAD:
                missing.append(name)
    if not xor.prepare():  # numpy (optional) for the parity of trains, once for all workers
        log.info("fork server: no numpy: the parity of trains is computed in Python (slower)")
    return missing


def request_id(msg: bytes) -> int | None:
    """The ``id`` of a request, if it has a usable one (for the error reply)."""
    try:
        rid = json.loads(msg).get("id")
    except (ValueError, AttributeError):
        return None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


# Size: long on purpose: one straight walk through a worker's start-up path, step by step, each
# step best effort; split, the steps would only pass their throwaway objects around.
def warm_up(rounds: int = WARM_ROUNDS) -> list[str]:
    """Run a worker's start-up path ``rounds`` times on throwaway fds, best effort.

    A function's first calls write to its code object (warm-up counters, then specialized
    bytecode) and fill caches; done here, before ``gc.freeze()``, the workers share those
    pages instead of each copying them on its first run. Each round parses a start
    message, builds a WireGuard pump on a socketpair "device" and an unbound UDP socket,
    runs it until a queued ``stop``, and reads ``/proc/self/status`` as the privilege
    check does. Logs go nowhere meanwhile. Returns what failed (nothing, normally).
    """
    import base64

    from tund.keyformat import public_from_private
    from tund.relay.process import build as relay_build
    from tund.relay.process import privileges
    from tund.relay.process import worker as relay_worker
    from tund.workerapi.spec import WorkerSpec

    failed: list[str] = []
    root = logging.getLogger()
    saved = root.handlers[:]
    sink = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    handler = logging.StreamHandler(sink)
    handler.setFormatter(saved[0].formatter if saved else None)
    root.handlers[:] = [handler]
    key = base64.b64encode(os.urandom(32)).decode()
    peer = base64.b64encode(public_from_private(os.urandom(32))).decode()
    try:
        for i in range(rounds):
            for vnet in (True, False):
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                dev, dev_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    spec = WorkerSpec(
                        tunnel=f"warm{i}", interface=f"warm{i}", mode="tun",
                        transport="udp", role="listen", host="127.0.0.1", port=9,
                        device_fd=dev_worker.fileno(), socket_fd=udp.fileno(), mtu=1420,
                        vnet_hdr=vnet, encryption="wireguard", private_key=key,
                        peer_public_key=peer)
                    ours.send(Start(spec).encode())
                    spec = relay_worker.receive_start(theirs)
                    json.dumps(spec.redacted(), sort_keys=True)
                    pump = relay_build.build(spec, theirs)
                    udp.detach()  # the pump's transport owns (and closes) it now
                    ours.send(Ping(1).encode())
                    ours.send(Stop().encode())
                    pump.run()
                    privileges.problems(privileges.read_status(), None)
                    privileges.prepare()
                except Exception as e:  # best effort: workers then just start slower
                    failed.append(f"{type(e).__name__}: {e}")
                finally:
                    for sock in (ours, theirs, dev, dev_worker, udp):
                        sock.close()
    finally:
        root.handlers[:] = saved
        sink.close()
    return sorted(set(failed))


def parse_request(msg: bytes, fds: list[int]) -> tuple[int, list[int], str | None]:
    """``(id, target fd numbers, run_as text)`` of a fork request; ForkRequestError if
    unusable.

    Targets must be distinct integers above 2, one per received fd, at most
    :data:`MAX_FDS` of them (control first).
    """
    try:
        req: Fork = decode(msg, TO_ZYGOTE, "fork request")
    except MessageError as e:
        raise ForkRequestError(str(e)) from None
    rid, targets, run_as = req.id, list(req.fds), req.run_as
    if len(fds) != len(targets):
        raise ForkRequestError(f"{len(targets)} fd number(s) named but {len(fds)} fd(s) "
                               "attached")
    return rid, targets, run_as


def place_fds(fds: list[int], targets: list[int]) -> None:
    """Move ``fds[i]`` to number ``targets[i]`` and close every other fd above 2.

    Safe when a received fd already sits on another one's target: all of them are first
    duplicated above every number involved.
    """
    floor = max([*fds, *targets]) + 1
    high = [_dup_above(fd, floor) for fd in fds]
    for fd, target in zip(high, targets, strict=True):
        os.dup2(fd, target, inheritable=True)
    keep = sorted(targets)
    start = 3
    for k in keep:
        os.closerange(start, k)
        start = k + 1
    os.closerange(start, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _dup_above(fd: int, floor: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)


def _wait_reparented(middle: int) -> None:
    """Block until the middle process has exited, which re-parents us (no busy wait).

    A pidfd turns readable once the process has exited and its children were handed on;
    the loop after it only covers kernels without pidfds.
    """
    try:
        pidfd = os.pidfd_open(middle)
    except OSError:  # already gone (so we were handed on), or no pidfd support
        pidfd = -1
    if pidfd >= 0:
        try:
            select.select([pidfd], [], [], REPARENT_TIMEOUT)
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while os.getppid() == middle and time.monotonic() < deadline:
        time.sleep(0.001)


def _worker(server: socket.socket, rid: int, middle: int, fds: list[int],
            targets: list[int], run_as: str | None) -> None:
    """In the forked worker: wait to be re-parented, reply, run; never returns."""
    code = 1
    try:
        proctitle.set_comm(WORKER_COMM)
        _wait_reparented(middle)
        _reply(server, Forked(rid, os.getpid()))
        server.detach()  # its fd is closed by place_fds; the object must not close it again
        place_fds(fds, targets)
        from tund.relay.process import worker as relay_worker

        code = relay_worker.run(targets[0], RunAs.parse(run_as) if run_as else None)
    except BaseException:  # nothing may unwind into the zygote's loop
        with contextlib.suppress(Exception):
            log.exception("worker failed")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def fork_worker(server: socket.socket, rid: int, fds: list[int], targets: list[int],
                run_as: str | None) -> None:
    """Fork (through a middle process) a worker that replies to request ``rid`` itself.

    Raises OSError when the first fork fails; when the second one does, the middle
    process sends the error reply.
    """
    middle = os.fork()
    if middle != 0:
        return
    status = 0
    try:  # the middle process: fork the worker and leave at once
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            me = os.getpid()  # not os.getppid() in the worker: we may be gone by then
            if os.fork() == 0:
                _worker(server, rid, me, fds, targets, run_as)
        except OSError as e:
            status = 1
            _reply(server, ForkError(rid, f"cannot fork a worker: {e}"))
    except BaseException:  # never return into the zygote's loop
        status = 1
    finally:
        os._exit(status)


def _recv(server: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    msg, ancdata, flags, _ = server.recvmsg(_MSG_SIZE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        return msg, [-1] * (MAX_FDS + 1)  # too many fds: refused by parse_request
    return msg, list(fds)


def _reply(server: socket.socket, msg: Message) -> None:
    server.send(msg.encode())


def serve(control_fd: int) -> int:
    """Run the zygote on ``control_fd`` until the daemon closes it; return the exit code."""
    proctitle.set_title(proctitle.FORK_SERVER_TITLE, ZYGOTE_COMM)
    try:
        server = socket.socket(fileno=control_fd)
    except OSError as e:
        log.error("--control-fd %d is not a socket: %s", control_fd, e)
        return 2
    server.set_inheritable(False)
    missing = preload()
    if missing:
        log.warning("fork server: could not import %s; workers will import them themselves",
                    ", ".join(missing))
    else:
        for problem in warm_up():
            log.warning("fork server: warm-up: %s (workers may start slower)", problem)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the middle processes
    gc.collect()
    gc.freeze()  # forked workers share these pages: the collector never writes to them
    _reply(server, Ready(os.getpid()))
    while True:
        try:
            msg, fds = _recv(server)
        except (ConnectionResetError, BrokenPipeError):
            return 0
        except KeyboardInterrupt:
            return 0
        if not msg:
            return 0  # the daemon is gone
        reply: Message | None = None
        try:
            rid, targets, run_as = parse_request(msg, fds)
            fork_worker(server, rid, fds, targets, run_as)
        except (ForkRequestError, OSError) as e:
            reply = ForkError(request_id(msg), str(e))
        finally:
            for fd in fds:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if reply is not None:
            try:
                _reply(server, reply)
            except OSError:
                return 0
