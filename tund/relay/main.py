"""Worker entry point: start message -> :class:`~tund.relay.spec.WorkerSpec` -> pump -> exit.

Usage (by the daemon, see :mod:`tund.relay.spec`)::

    python -m tund.relay --control-fd N [--run-as UID:GID]
    python -m tund.relay --fork-server --control-fd N     (the zygote: tund.relay.zygote)

Once its pump is built (fds wrapped, codec and transport made, every module imported) and
before it reads a single packet, the worker drops its privileges
(:mod:`tund.relay.privileges`): to ``UID:GID`` when given, no capabilities, no_new_privs,
not dumpable, no core dumps. It refuses to run if that fails. After the drop it needs
nothing from the file system.

Exit codes: 0 after ``stop`` or when the daemon went away; 1 on a fatal error (after a
``state`` message carrying it); 2 when the start message itself is unusable.
Logs go to stderr, every line tagged with the tunnel name.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import logging
import os
import socket
import sys
from typing import Any

from tund.relay.codec import Codec, PlainCodec
from tund.relay.counters import Counters
from tund.relay.device import FdDevice
from tund.relay.errors import RelayError
from tund.relay.framing import MAX_FRAME
from tund.relay.offload import MAX_FRAME as VNET_MAX_FRAME
from tund.relay.offload import OffloadCodec, set_device_offload
from tund.relay.privileges import RunAs, drop_privileges
from tund.relay.pump import Pump
from tund.relay.spec import WorkerSpec
from tund.relay.tcp import TcpTransport
from tund.relay.transport import Transport
from tund.relay.udp import UdpTransport

log = logging.getLogger("tund.relay.main")

START_TIMEOUT = 30.0
CODEC_OVERHEAD = 128  # room for a codec's header / tag / padding on the wire


def max_packet(spec: WorkerSpec) -> int:
    """The largest device packet: MTU, + 14 (Ethernet header) for tap, + 4 with PI."""
    return min(MAX_FRAME, spec.mtu + (14 if spec.mode == "tap" else 0)
               + (4 if spec.packet_info else 0))


def make_codec(spec: WorkerSpec) -> Codec:
    """PlainCodec for ``none``; the WireGuard codec (imported lazily) otherwise."""
    if spec.encryption == "none":
        udp = spec.transport == "udp"
        min_len = (4 if spec.packet_info else 0) + (14 if spec.mode == "tap" else 1)
        return PlainCodec(min_len=min_len, ip_check=spec.mode == "tun" and not spec.packet_info,
                          keepalive=float(spec.keepalive) if udp else 0.0,
                          hello=udp and spec.role == "remote")
    if spec.encryption == "wireguard":
        try:
            from tund.relay.wireguard.codec import WireGuardCodec  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:
            raise RelayError(f"encryption 'wireguard' is not available: cannot import "
                             f"tund.relay.wireguard.codec.WireGuardCodec ({e})") from e
        codec: Codec = WireGuardCodec(spec)
        return codec
    raise RelayError(f"unknown encryption {spec.encryption!r} (expected 'none' or 'wireguard')")


def _own_socket(spec: WorkerSpec, kind: int) -> socket.socket:
    """Role listen without a socket from the daemon (standalone use): bind one ourselves."""
    log.info("no socket_fd given: binding %s:%d myself", spec.host, spec.port)
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((spec.host, spec.port))
    return s


def make_transport(spec: WorkerSpec, counters: Counters,
                   largest: int | None = None) -> Transport:
    """The spec's transport; ``largest``: the largest device frame (default: max_packet)."""
    kind = socket.SOCK_STREAM if spec.transport == "tcp" else socket.SOCK_DGRAM
    sock = None
    if spec.role == "listen":
        if spec.socket_fd is not None:
            sock = socket.socket(fileno=spec.socket_fd)
            if sock.type != kind:
                raise RelayError(f"socket_fd {spec.socket_fd} is not a {spec.transport} socket")
        else:
            sock = _own_socket(spec, kind)
    common: dict[str, Any] = {"role": spec.role, "host": spec.host, "port": spec.port,
                              "reconnect_min": spec.reconnect_min,
                              "reconnect_max": spec.reconnect_max}
    if spec.transport == "tcp":
        return TcpTransport(counters, listen_sock=sock, keepalive=spec.keepalive,
                            max_message=(largest or max_packet(spec)) + CODEC_OVERHEAD,
                            **common)
    return UdpTransport(counters, sock=sock, **common)


def build(spec: WorkerSpec, control: socket.socket) -> Pump:
    counters = Counters()
    mp = max_packet(spec)
    codec = make_codec(spec)
    if spec.vnet_hdr and spec.mode == "tun" and not spec.packet_info:
        # vnet frames on the device (tund.relay.offload); offloads only when negotiated.
        # The frames' IP check moves to OffloadCodec.
        if isinstance(codec, PlainCodec):
            codec.ip_check = False
        # the tunnel's `offload` setting; TUND_OFFLOAD=1/0 in the environment overrides it
        negotiate = {"1": True, "0": False}.get(os.environ.get("TUND_OFFLOAD", ""),
                                                spec.offload)
        # WireGuard carries IP packets only (tun mode: the receiver strips padding by the
        # IP length and drops anything else as invalid_packet): frames go in envelopes
        codec = OffloadCodec(codec, functools.partial(set_device_offload, spec.device_fd),
                             max_packet=mp, drops=counters.drops, negotiate=negotiate,
                             enveloped=not isinstance(codec, PlainCodec),
                             chunked=spec.transport == "udp")
        device = FdDevice(spec.device_fd, read_size=VNET_MAX_FRAME + 1)
        return Pump(control=control, device=device,
                    transport=make_transport(spec, counters, VNET_MAX_FRAME),
                    codec=codec, counters=counters, max_packet=VNET_MAX_FRAME,
                    mtu=spec.mtu, vnet=True)
    device = FdDevice(spec.device_fd, read_size=mp + 1)  # mp + 1 bytes read = oversize
    return Pump(control=control, device=device, transport=make_transport(spec, counters),
                codec=codec, counters=counters, max_packet=mp, mtu=spec.mtu)


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


def set_process_name(tunnel: str) -> None:
    """Name the thread ``relay:<tunnel>`` (15 bytes, shown by ps -o comm, top); best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, f"relay:{tunnel}".encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _fatal(control: socket.socket, error: str, pump: Pump | None) -> None:
    log.error("%s", error)
    if pump is not None:
        pump.report(error=error)
        return
    msg = {"op": "state", "state": "connecting", "peer": None, "error": error,
           "stats": {**Counters().as_dict(), "peer": None, "state": "connecting"}}
    with contextlib.suppress(OSError):
        control.send(json.dumps(msg).encode())


def main(argv: list[str] | None = None) -> int:
    """``python -m tund.relay``: parse the command line, then :func:`run` (or the zygote)."""
    parser = argparse.ArgumentParser(prog="python -m tund.relay")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--run-as", type=RunAs.parse, default=None, metavar="UID:GID")
    parser.add_argument("--fork-server", action="store_true",
                        help="fork workers on request (tund.relay.zygote), run none")
    args = parser.parse_args(argv)
    if args.fork_server:
        from tund.relay import zygote

        setup_logging("fork-server", "tund-zygote")
        return zygote.serve(args.control_fd)
    return run(args.control_fd, args.run_as)


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
    set_process_name(spec.tunnel)
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
