"""One worker's life: start message -> :class:`~tund.workerapi.spec.WorkerSpec` -> pump -> exit.

Once its pump is built (fds wrapped, codec and transport made, every module imported) and
before it reads a single packet, the worker drops its privileges
(:mod:`tund.relay.process.privileges`): to ``UID:GID`` when given, no capabilities,
no_new_privs, not dumpable, no core dumps. It refuses to run if that fails. After the
drop it needs nothing from the file system.

Exit codes: 0 after ``stop`` or when the daemon went away; 1 on a fatal error (after a
``state`` message carrying it); 2 when the start message itself is unusable.
Logs go to stderr, every line tagged with the tunnel name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys

from tund import logs, proctitle
from tund.libc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt
from tund.relay.errors import RelayError
from tund.relay.loop.counters import Counters
from tund.relay.loop.pump import Pump
from tund.relay.process.build import build
from tund.relay.process.privileges import drop_privileges
from tund.workerapi.channel import recv_message
from tund.workerapi.messages import MessageError, Start, State, Stats, decode
from tund.workerapi.run_as import RunAs
from tund.workerapi.spec import WorkerSpec

log = logging.getLogger("tund.relay.process.worker")

START_TIMEOUT = 30.0
#: Test-only (``WorkerSpec.test_malformed``): a state message whose counter is a string.
MALFORMED_STATE = (b'{"op":"state","state":"up","peer":null,"error":null,"stats":'
                   b'{"rx_packets":"pwn","rx_bytes":0,"tx_packets":0,"tx_bytes":0,'
                   b'"drops":{},"errors":0,"last_rx":null,"last_tx":null,"peer":null,'
                   b'"state":"up"}}')


def receive_start(control: socket.socket) -> WorkerSpec:
    control.settimeout(START_TIMEOUT)
    try:
        raw = recv_message(control)
    except TimeoutError:
        raise RelayError(f"no start message within {START_TIMEOUT:.0f}s") from None
    if not raw:
        raise RelayError("control socket closed before the start message")
    try:
        return decode(raw, (Start,), "start message").spec
    except MessageError as e:
        raise RelayError(f"bad start message: {e}") from None


def setup_logging(tunnel: str, program: str = "tund-relay", interface: str | None = None) -> None:
    """Log at info to stderr, every line tagged ``PROGRAM[TUNNEL]``; with ``interface`` (a
    worker that has its spec) to journald instead when the daemon's rule picks it
    (:func:`tund.logs.current_target`), every message carrying ``TUND_TUNNEL`` and
    ``TUND_INTERFACE``. The fork server passes no interface: it never opens the journal."""
    handler: logging.Handler | None = None
    if interface is not None and logs.current_target() == "journal":
        with contextlib.suppress(ImportError, OSError):
            handler = logs.object_journal_handler(
                logs.fields(interface=interface, tunnel=tunnel))
    if handler is None:
        tag = tunnel.replace("%", "%%")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {program}[{tag}] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def set_process_name(tunnel: str, interface: str) -> None:
    """Command line ``tund: worker TUNNEL (IFACE)``, thread name ``relay:TUNNEL`` (cut to
    15 bytes with a hash suffix, :func:`tund.proctitle.worker_comm`); best effort."""
    proctitle.set_title(proctitle.worker_title(tunnel, interface), proctitle.worker_comm(tunnel))


#: freed heap kept for reuse, and the size from which allocations get their own mapping
HEAP_KEEP, OWN_MAPPING = 16 << 20, 1 << 20


def keep_heap() -> None:
    """Keep the allocator from handing 64 KB buffers back to the kernel between packets.

    glibc returns the top of the heap once more than 128 KB of it is free, and maps
    blocks from 128 KB on (raising that bound as it goes): a worker moving 64 KB
    super-packets then faults in and zeroes fresh pages for nearly every one (5% of
    its CPU in page faults, bench/RESULTS.md). With these bounds a busy worker keeps up
    to ``HEAP_KEEP`` of freed heap; an idle one stays as small as before."""
    for param, value in ((M_TRIM_THRESHOLD, HEAP_KEEP), (M_MMAP_THRESHOLD, OWN_MAPPING)):
        if not mallopt(param, value):
            log.debug("mallopt(%d, %d) refused", param, value)


def _fatal(control: socket.socket, error: str, pump: Pump | None) -> None:
    log.error("%s", error)
    if pump is not None:
        pump.report(error=error)
        return
    msg = State("connecting", None, error, Stats.of(Counters().as_dict()))
    with contextlib.suppress(OSError):
        control.send(msg.encode())


def run(control_fd: int, run_as: RunAs | None) -> int:
    """One worker on control socket ``control_fd``: start message, pump, exit code."""
    setup_logging("?")
    try:
        control = socket.socket(fileno=control_fd)
    except OSError as e:
        log.error("--control-fd %d is not a socket: %s", control_fd, e)
        return 2
    try:
        spec = receive_start(control)
    except RelayError as e:
        _fatal(control, str(e), None)
        return 2
    setup_logging(spec.tunnel, interface=spec.interface)
    set_process_name(spec.tunnel, spec.interface)
    keep_heap()
    log.info("starting: %s", json.dumps(spec.redacted(), sort_keys=True))
    pump: Pump | None = None
    try:
        pump = build(spec, control)
        drop_privileges(run_as)  # before the first packet; raises PrivilegeError
        if spec.test_malformed:  # test-only: what a compromised worker might send
            log.warning("test: sending a malformed state message")
            control.send(MALFORMED_STATE)
        return pump.run()
    except (RelayError, OSError, ValueError) as e:
        _fatal(control, str(e) if isinstance(e, RelayError) else f"{type(e).__name__}: {e}",
               pump)
        return 1
    except Exception as e:  # a bug: say so, with the traceback in the log
        log.exception("unexpected error")
        _fatal(control, f"internal error: {type(e).__name__}: {e}", pump)
        return 1
