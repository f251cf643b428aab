"""The control socket server: listen on a Unix socket, decode requests, call ``dispatch``.

The server knows nothing of what commands do. For each request it awaits
``dispatch(cmd, args, peer)`` and turns the outcome into a reply:

* a returned dict                      -> ``ok: true`` with that result;
* a raised :class:`~tund.errors.TundError` -> ``ok: false`` with the error's ``.code``
  and its message (so a located ``ConfigError`` reaches the CLI line by line);
* any other exception                  -> code ``internal``, logged here with its
  traceback; the reply says only that the daemon log has the details.

Socket handling (see :meth:`ControlServer.start`):

* the directories leading to the socket must be root's (or the daemon's user's) and not
  writable by others unless sticky and root's (:mod:`tund.control.sockdir`); otherwise
  start fails, before anything is created; the parent directory is created (0755) when
  missing;
* an existing path is probed: if something answers, start fails ("another tund is
  running"); a dead socket is unlinked; anything that is not a socket is left alone
  and start fails;
* bind under umask 117, so the socket is born 0660 (no chmod by path afterwards), then,
  with ``group``, chgrp to that group with ``lchown`` (never following a link), before
  ``listen``; ``lstat`` checks the result is our socket. Only the owner (root) and the
  control group can connect;
* :meth:`ControlServer.close` unlinks the socket only if it is still the one bound here.

Per connection: requests are handled one at a time, replies in order; a connection
silent for ``idle_timeout`` seconds (also mid-line) is dropped, and so is one that does not
read its replies within that time; a line longer than ``max_request`` gets a ``too-large``
reply and the connection is closed. Connections are independent: a stalled client never
delays another. At most ``max_clients`` connections are served at once: one more is
answered ``busy`` and closed at once (so a flood of idle clients costs the daemon at most
``max_clients`` open sockets for ``idle_timeout`` seconds, and frees up by itself).

Who may run what is decided by ``dispatch`` from the :class:`PeerCred` it is given
(see :mod:`tund.control.auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tund.control import protocol, sockdir
from tund.control.protocol import ProtocolError
from tund.errors import ErrorCode, TundError

log = logging.getLogger("tund.control.server")

SOCKET_MODE = 0o660
DIR_MODE = 0o755
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_CLIENTS = 32
_BUSY_SEND_TIMEOUT = 1.0
_PROBE_TIMEOUT = 1.0
_SETTLE_TURNS = 8


@dataclass(frozen=True)
class PeerCred:
    """Who is on the other end of a connection, from ``SO_PEERCRED``."""

    pid: int
    uid: int
    gid: int


Dispatch = Callable[[str, dict[str, Any], PeerCred], Awaitable[dict[str, Any]]]
"""``dispatch(cmd, args, peer) -> result``; raises TundError subclasses for refusals."""


class ControlSocketError(TundError):
    """The control socket could not be set up (in use, not a socket, bad group ...)."""

    code = ErrorCode.CONTROL_SOCKET


def peer_credentials(sock: socket.socket) -> PeerCred:
    """Read ``SO_PEERCRED`` (pid, uid, gid) from a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def _resolve_group(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(f"control socket group {group!r}: no such group") from None


def _socket_answers(path: Path) -> bool:
    """True if a server accepts connections on ``path`` (a dead socket refuses)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # a live but busy listener: a full backlog still means "in use"
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ControlSocketError(f"cannot probe existing control socket {path}: "
                                 f"{e.strerror or e}") from None
    finally:
        probe.close()
    return True


def _clear_stale(path: Path) -> None:
    """Remove a dead socket at ``path``; refuse if it is live or not a socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to replace it")
    if _socket_answers(path):
        raise ControlSocketError(f"another tund is running on {path}")
    log.info("removing stale control socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _check_dir(path: Path) -> None:
    problem = sockdir.dir_problem(path)
    if problem is not None:
        raise ControlSocketError(f"refusing control socket {path}: {problem}")


def _check_bound(path: Path, gid: int | None) -> None:
    """The path is still the socket just bound: ours, 0660, of group ``gid``."""
    st = path.lstat()
    if (not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid()
            or stat.S_IMODE(st.st_mode) != SOCKET_MODE
            or (gid is not None and st.st_gid != gid)):
        raise ControlSocketError(
            f"control socket {path} is not as bound (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"uid {st.st_uid}, gid {st.st_gid}; expected a socket {SOCKET_MODE:04o} of uid "
            f"{os.geteuid()}" + ("" if gid is None else f", gid {gid}")
            + "): something replaced it")


def bind_control_socket(path: Path, gid: int | None) -> socket.socket:
    """Create, bind and listen on the control socket at ``path`` (see module docstring)."""
    _check_dir(path)
    if not path.parent.is_dir():
        log.info("creating control socket directory %s (mode %o)", path.parent, DIR_MODE)
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        _check_dir(path)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o777 & ~SOCKET_MODE)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        if gid is not None:
            log.info("[#] chgrp %d %s (not following links)", gid, path)
            os.chown(path, -1, gid, follow_symlinks=False)
        _check_bound(path, gid)
        sock.listen(64)
        sock.setblocking(False)
    except ControlSocketError:
        sock.close()
        raise
    except OSError as e:
        sock.close()
        raise ControlSocketError(f"cannot listen on control socket {path}: "
                                 f"{e.strerror or e}") from None
    return sock


class ControlServer:
    """A Unix-socket server speaking :mod:`tund.control.protocol` to ``dispatch``."""

    def __init__(self, path: str | os.PathLike[str], dispatch: Dispatch, *,
                 group: str | None = None,
                 max_request: int = protocol.MAX_REQUEST,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        self.path = Path(path)
        self._dispatch = dispatch
        self._group = group
        self._max_request = max_request
        self._idle_timeout = idle_timeout
        self._max_clients = max_clients
        self._refused = 0
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Bind the socket and start accepting; raises ControlSocketError on failure."""
        gid = _resolve_group(self._group) if self._group is not None else None
        sock = bind_control_socket(self.path, gid)
        st = self.path.stat()
        self._inode = (st.st_dev, st.st_ino)
        # The limit lets readuntil() see a whole max-size line plus its newline.
        self._server = await asyncio.start_unix_server(
            self._on_connect, sock=sock, limit=self._max_request + 1)
        log.info("control socket listening on %s", self.path)

    async def close(self) -> None:
        """Stop accepting, drop open connections, unlink the socket if still ours."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        # Connections accepted just before close() reach _on_connect a few loop turns
        # later (and see _closing); give them those turns, then cancel whoever is left.
        for _ in range(_SETTLE_TURNS):
            await asyncio.sleep(0)
        while self._handlers:
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._unlink_if_ours()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _unlink_if_ours(self) -> None:
        if self._inode is None:
            return
        try:
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self._inode = None

    # ----------------------------------------------------------------- connections

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self._closing:
                return
            sock = writer.get_extra_info("socket")
            peer = peer_credentials(sock) if sock is not None else PeerCred(0, -1, -1)
            if len(self._handlers) > self._max_clients:
                await self._refuse_busy(writer, peer)
                return
            await self._serve(reader, writer, peer)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # peer went away, stalled on reading its replies, or we are closing
        except Exception:
            log.exception("control connection failed")
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _refuse_busy(self, writer: asyncio.StreamWriter, peer: PeerCred) -> None:
        self._refused += 1
        if self._refused % 100 == 1:  # a flood logs one line per 100 refusals
            log.warning("control: %d client(s) connected, the limit; refusing pid %d (uid %d)"
                        " (%d refused so far)", self._max_clients, peer.pid, peer.uid,
                        self._refused)
        writer.write(protocol.encode_error(
            None, ErrorCode.BUSY,
            f"too many control clients at once (limit {self._max_clients}); try again"))
        await asyncio.wait_for(writer.drain(), _BUSY_SEND_TIMEOUT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: PeerCred) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), self._idle_timeout)
            except TimeoutError:
                log.debug("dropping control client pid %d: idle for %.1fs",
                          peer.pid, self._idle_timeout)
                return
            except asyncio.IncompleteReadError:
                return  # EOF, possibly mid-line: the client gave up
            except asyncio.LimitOverrunError:
                await self._send(writer, protocol.encode_error(
                    None, ErrorCode.TOO_LARGE,
                    f"request longer than {self._max_request} bytes; closing connection"))
                return
            reply = await self._handle_line(line, peer)
            await self._send(writer, reply)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self._idle_timeout)

    async def _handle_line(self, line: bytes, peer: PeerCred) -> bytes:
        try:
            req = protocol.decode_request(line, self._max_request)
        except ProtocolError as e:
            return protocol.encode_error(e.request_id, e.code, str(e))
        try:
            result = await self._dispatch(req.cmd, req.args, peer)
            if not isinstance(result, dict):
                raise TypeError(f"dispatch returned {type(result).__name__}, not dict")
            return protocol.encode_result(req.id, result)
        except TundError as e:
            return protocol.encode_error(req.id, e.code, str(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("control command %r from pid %d (uid %d) failed",
                          req.cmd, peer.pid, peer.uid)
            return protocol.encode_error(
                req.id, ErrorCode.INTERNAL,
                f"internal error while handling {req.cmd!r}; the daemon log has the details")
