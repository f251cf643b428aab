"""The control client: blocking calls to the daemon over its Unix socket.

:func:`call` opens a connection, sends one request and returns the reply's result.

Error handling:

* the daemon answered with an error      -> :class:`~tund.errors.ControlError` (``.code``
  is the daemon's error code, the message is the daemon's message);
* the daemon could not be reached, or went away / stalled before answering
                                          -> :class:`DaemonUnreachable`, whose ``.reason``
  is ``missing`` (no socket at the path), ``refused`` (a stale socket: nothing listens),
  ``permission`` (not root and not in the control group), ``timeout``, ``closed``, or
  ``unsafe`` (the socket or a directory on its way is another user's, or writable by
  others: it may be a fake, so it is never connected to; see :mod:`tund.control.sockdir`);
* the reply could not be understood        -> ControlError with the protocol error's code.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import time
from typing import Any, Literal

from tund.control import protocol, sockdir
from tund.control.protocol import ProtocolError
from tund.errors import ControlError, ErrorCode, TundError

DEFAULT_TIMEOUT = 30.0
#: Same as tund.config.DEFAULT_CONTROL_SOCKET (not imported: keeps pydantic out of tundctl).
DEFAULT_CONTROL_SOCKET = "/run/tund/control.sock"
SOCKET_ENV = "TUND_CONTROL_SOCKET"

#: Seconds between two connects while the daemon's listen backlog is full.
_BACKLOG_RETRY = 0.005
#: Seconds to read the daemon's refusal after it closed a connection we could not write to.
_REFUSAL_READ = 1.0

Reason = Literal["missing", "refused", "permission", "timeout", "closed", "unsafe", "other"]


class DaemonUnreachable(TundError):
    """The daemon could not be asked: ``reason`` says why, the message says where."""

    code = ErrorCode.UNREACHABLE

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def default_socket_path(explicit: str | None = None) -> str:
    """``explicit`` if given, else ``$TUND_CONTROL_SOCKET``, else /run/tund/control.sock."""
    return explicit or os.environ.get(SOCKET_ENV) or DEFAULT_CONTROL_SOCKET


def _unreachable(path: str, err: OSError) -> DaemonUnreachable:
    if isinstance(err, FileNotFoundError) or err.errno == errno.ENOENT:
        return DaemonUnreachable("missing", f"no control socket at {path} (is tund running?)")
    if isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED:
        return DaemonUnreachable("refused", f"connection refused on {path} "
                                 "(stale socket: tund is not running)")
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM):
        return DaemonUnreachable("permission", f"permission denied on {path} "
                                 "(run as root or as a member of the control group)")
    if isinstance(err, TimeoutError):
        return DaemonUnreachable("timeout", f"tund did not answer on {path} in time")
    return DaemonUnreachable("other", f"cannot connect to {path}: {err.strerror or err}")


class Connection:
    """One open control connection; several requests may be sent over it in turn."""

    _ids = itertools.count(1)

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._buf = bytearray()
        problem = sockdir.socket_problem(path)
        if problem is not None:
            raise DaemonUnreachable("unsafe", f"refusing to talk to control socket {path}: "
                                    f"{problem}")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock.connect(path)
                break
            except BlockingIOError:
                # a full listen backlog (a flood of connects): wait for room, up to timeout
                if time.monotonic() < deadline:
                    time.sleep(_BACKLOG_RETRY)
                    continue
                self._sock.close()
                raise DaemonUnreachable("timeout", f"tund did not accept a connection on "
                                        f"{path} within {timeout:g}s (its queue is full)"
                                        ) from None
            except OSError as e:
                self._sock.close()
                raise _unreachable(path, e) from None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send ``cmd`` and return the result; raises ControlError or DaemonUnreachable."""
        request_id = next(self._ids)
        deadline = time.monotonic() + self.timeout
        try:
            try:
                self._sock.sendall(protocol.encode_request(request_id, cmd, args))
            except (BrokenPipeError, ConnectionResetError):
                # the daemon refused the connection (a limit) and closed it before our
                # request came: its reason is already waiting to be read
                line = self._read_line(min(deadline, time.monotonic() + _REFUSAL_READ))
            else:
                line = self._read_line(deadline)
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise DaemonUnreachable(
                    "timeout", f"tund did not answer {cmd!r} on {self.path} "
                    f"within {self.timeout:g}s") from None
            raise DaemonUnreachable("closed", f"connection to {self.path} failed during "
                                    f"{cmd!r}: {e.strerror or e}") from None
        try:
            reply = protocol.decode_reply(line)
        except ProtocolError as e:
            raise ControlError(e.code, f"unreadable reply from tund: {e}") from None
        if reply.id is not None and reply.id != request_id:
            raise ControlError(ErrorCode.BAD_REQUEST, f"reply id {reply.id} does not match "
                               f"request id {request_id}")
        if not reply.ok:
            raise ControlError(reply.error_code, reply.error_message)
        return reply.result

    def _read_line(self, deadline: float) -> bytes:
        end = self._buf.find(b"\n")
        while end < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise DaemonUnreachable("closed", f"tund closed the connection on {self.path} "
                                        "without answering")
            searched = len(self._buf)
            self._buf += chunk
            end = self._buf.find(b"\n", searched)
            if end < 0 and len(self._buf) > protocol.MAX_REPLY:
                raise ControlError("too-large", "reply from tund exceeds "
                                   f"{protocol.MAX_REPLY} bytes")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line



def call(socket_path: str, cmd: str, args: dict[str, Any] | None = None,
         timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Ask the daemon at ``socket_path`` to run ``cmd``; return its result dict."""
    with Connection(socket_path, timeout) as conn:
        return conn.call(cmd, args)
