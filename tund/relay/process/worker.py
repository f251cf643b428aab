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

from tund import proctitle
from tund.relay.errors import RelayError
from tund.relay.loop.counters import Counters
from tund.relay.loop.pump import Pump
from tund.relay.process.build import build
from tund.relay.process.privileges import drop_privileges
from tund.workerapi.run_as import RunAs
from tund.workerapi.spec import WorkerSpec

log = logging.getLogger("tund.relay.process.worker")

START_TIMEOUT = 30.0


def receive_start(control: socket.socket) -> WorkerSpec:
    control.settimeout(START_TIMEOUT)
    try:
        raw = control.recv(1 << 20)
    except TimeoutError:
        raise RelayError(f"no start message within {START_TIMEOUT:.0f}s") from None
    if not raw:
        raise RelayError("control socket closed before the start message")
    try:
        msg = json.loads(raw)
        if msg.get("op") != "start":
            raise ValueError(f"expected op 'start' (got {msg.get('op')!r})")
        return WorkerSpec.from_dict(msg["spec"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise RelayError(f"bad start message: {e}") from None


def setup_logging(tunnel: str, program: str = "tund-relay") -> None:
    """Log to stderr at info, every line tagged ``PROGRAM[TUNNEL]``."""
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


def _fatal(control: socket.socket, error: str, pump: Pump | None) -> None:
    log.error("%s", error)
    if pump is not None:
        pump.report(error=error)
        return
    msg = {"op": "state", "state": "connecting", "peer": None, "error": error,
           "stats": {**Counters().as_dict(), "peer": None, "state": "connecting"}}
    with contextlib.suppress(OSError):
        control.send(json.dumps(msg).encode())


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
    setup_logging(spec.tunnel)
    set_process_name(spec.tunnel, spec.interface)
    log.info("starting: %s", json.dumps(spec.redacted(), sort_keys=True))
    pump: Pump | None = None
    try:
        pump = build(spec, control)
        drop_privileges(run_as)  # before the first packet; raises PrivilegeError
        return pump.run()
    except (RelayError, OSError, ValueError) as e:
        _fatal(control, str(e) if isinstance(e, RelayError) else f"{type(e).__name__}: {e}",
               pump)
        return 1
    except Exception as e:  # a bug: say so, with the traceback in the log
        log.exception("unexpected error")
        _fatal(control, f"internal error: {type(e).__name__}: {e}", pump)
        return 1
