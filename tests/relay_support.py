"""Test support: run a real worker process the way the daemon does (no root needed).

:class:`WorkerProcess` spawns ``python -m tund.relay --control-fd N`` with a
``SOCK_SEQPACKET`` control socketpair, sends the start message and offers the control
exchanges (ping, stop, waiting for a state). :func:`fake_device` returns a socketpair
that stands in for a TUN fd (one packet per read / write). Used by the relay's
component and privileged tests; not imported by the worker itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tund.workerapi.spec import WorkerSpec
from tund.workerapi.underlay import bind_underlay


def fake_device() -> tuple[socket.socket, socket.socket]:
    """``(test_end, worker_end)``: a SEQPACKET pair behaving like a TUN fd."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def listening_socket(transport: str, host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound (UDP) / listening (TCP) socket, as the daemon hands to a listen worker."""
    return bind_underlay(transport, host, port)


class WorkerProcess:
    """One worker subprocess plus the daemon's end of its control socket."""

    def __init__(self, spec: WorkerSpec, *, log: Path | None = None,
                 command: list[str] | None = None, pass_fds: list[int] | None = None) -> None:
        """Spawn ``command`` (default ``python -m tund.relay``) + ``--control-fd N``.

        ``pass_fds`` defaults to the spec's device and socket fds; a ``command`` that
        opens them itself (e.g. inside a network namespace) passes ``[]``.
        """
        self.spec = spec
        self.control, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if pass_fds is None:
            pass_fds = [spec.device_fd] + ([spec.socket_fd] if spec.socket_fd is not None
                                           else [])
        self.log = log
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        argv = [*(command or [sys.executable, "-m", "tund.relay"]),
                "--control-fd", str(child.fileno())]
        self.proc = subprocess.Popen(argv, pass_fds=[child.fileno(), *pass_fds], stdout=out,
                                     stderr=out, stdin=subprocess.DEVNULL)
        if log:
            out.close()  # type: ignore[union-attr]
        child.close()
        self.messages: list[dict[str, Any]] = []  # every message received, in order
        self.control.sendall(json.dumps({"op": "start", "spec": spec.to_dict()}).encode())
        self._seq = 0

    def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next control message, or None on timeout or a closed socket."""
        self.control.settimeout(max(timeout, 0.001))
        try:
            raw = self.control.recv(1 << 20)
        except (TimeoutError, OSError):
            return None
        if not raw:
            return None
        msg: dict[str, Any] = json.loads(raw)
        self.messages.append(msg)
        return msg

    def wait_state(self, state: str, within: float = 10.0, *,
                   peer: bool | None = None) -> dict[str, Any]:
        """Wait for a ``state`` message with ``state`` (and a peer, if ``peer``)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg is None:
                if self.proc.poll() is not None:
                    break
                continue
            if msg.get("op") == "state" and msg.get("state") == state and (
                    peer is None or (msg.get("peer") is not None) == peer):
                return msg
        raise AssertionError(f"worker {self.spec.tunnel}: no state {state!r} within {within}s "
                             f"(exit {self.proc.poll()}); messages: {self.messages[-5:]}"
                             f"{self._log_tail()}")

    def ping(self, within: float = 5.0) -> dict[str, Any]:
        """Ping; return the pong's stats (other messages met on the way are kept)."""
        self._seq += 1
        self.control.send(json.dumps({"op": "ping", "seq": self._seq}).encode())
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg is None:
                if self.proc.poll() is not None:
                    break
                continue
            if msg.get("op") == "pong" and msg.get("seq") == self._seq:
                stats: dict[str, Any] = msg["stats"]
                return stats
        raise AssertionError(f"worker {self.spec.tunnel}: no pong within {within}s "
                             f"(exit {self.proc.poll()}){self._log_tail()}")

    def wait_stats(self, check: Any, within: float = 10.0) -> dict[str, Any]:
        """Ping until ``check(stats)`` is true; return those stats or fail with the last."""
        deadline = time.monotonic() + within
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            stats = self.ping()
            if check(stats):
                return stats
            time.sleep(0.02)
        raise AssertionError(f"worker {self.spec.tunnel}: stats never matched: {stats}")

    def stop(self, timeout: float = 10.0) -> int:
        """Send ``stop`` and wait for the exit code (killed, and failing, if it hangs)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.control.send(b'{"op":"stop"}')
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
            raise AssertionError(f"worker {self.spec.tunnel} ignored stop{self._log_tail()}"
                                 ) from None
        finally:
            self.control.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.control.close()

    def _log_tail(self) -> str:
        if self.log and self.log.exists():
            return "\nworker log:\n" + "\n".join(self.log.read_text().splitlines()[-30:])
        return ""


def close_fds(*fds: int | None) -> None:
    """Close the parent's copies of fds handed to a worker."""
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


# A worker inside a network namespace opens its TUN/TAP device (and binds its listen
# socket) there, at fixed fd numbers, then becomes ``python -m tund.relay``.
_IN_NETNS = r"""
import fcntl, os, socket, struct, sys
name, mode, pi, devfd, bind, rest = sys.argv[1], sys.argv[2], sys.argv[3] == "1", \
    int(sys.argv[4]), sys.argv[5], sys.argv[6:]
fd = os.open("/dev/net/tun", os.O_RDWR)
flags = (0x0001 if mode == "tun" else 0x0002) | (0 if pi else 0x1000)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), flags))
os.dup2(fd, devfd)
os.close(fd)
if bind != "-":
    kind, host, port, sfd = bind.split(",")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    if kind == "tcp":
        s.listen(8)
    os.dup2(s.fileno(), int(sfd))
    s.close()
os.execv(sys.executable, [sys.executable, "-m", "tund.relay", *rest])
"""


def netns_worker_command(netns: str, spec: WorkerSpec) -> list[str]:
    """The ``command`` for :class:`WorkerProcess` running ``spec`` inside ``netns``.

    The device named ``spec.interface`` is created (non-persistent) there and put at
    ``spec.device_fd``; role listen binds ``spec.host:spec.port`` at ``spec.socket_fd``.
    """
    bind = "-"
    if spec.role == "listen":
        assert spec.socket_fd is not None
        bind = f"{spec.transport},{spec.host},{spec.port},{spec.socket_fd}"
    return ["ip", "netns", "exec", netns, sys.executable, "-c", _IN_NETNS, spec.interface,
            spec.mode, "1" if spec.packet_info else "0", str(spec.device_fd), bind]
