"""The control socket server: listen on a Unix socket, decode requests, call ``dispatch``.

The server knows nothing of what commands do. For each request it awaits
``dispatch(cmd, args, peer)`` and turns the outcome into a reply:

* a returned dict                      -> ``ok: true`` with that result;
* a raised :class:`~tund.errors.TundError` -> ``ok: false`` with the error's ``.code``
  and its message (so a located ``ConfigError`` reaches the CLI line by line);
* any other exception                  -> code ``internal``, logged here with its
  traceback; the reply says only that the daemon log has the details.

Socket handling: :mod:`tund.control.listen` binds it (a safe directory, a live socket
refused, born 0660, group set without following links); :meth:`ControlServer.close`
unlinks it only if it is still the one bound here.

Per connection: requests are handled one at a time, replies in order; a connection
silent for ``idle_timeout`` seconds (also mid-line) is dropped, and so is one that does not
read its replies within that time; a line longer than ``max_request`` gets a ``too-large``
reply and the connection is closed. Connections are independent: a stalled client never
delays another. Slots (:mod:`tund.control.slots`, by the peer's uid from ``SO_PEERCRED``):
root and the daemon's uid (and peers for which ``reserved(peer)`` is true: the daemon
passes admin_group membership) have ``reserve`` slots of their own (default: as many as
``max_clients``); other uids share
``max_clients``, at most ``per_uid`` each. A newcomer over its limit evicts the oldest idle
connection within that limit (it is sent a ``busy`` line and closed); only when every one
there is handling a request is the newcomer answered ``busy`` and closed. So a flood of
idle or trickling clients costs the daemon at most ``max_clients + reserve`` sockets, and
never locks root out.

Who may run what is decided by ``dispatch`` from the :class:`PeerCred` it is given
(see :mod:`tund.control.auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from tund.control import protocol
from tund.control.listen import (
    ControlSocketError,
    PeerCred,
    bind_control_socket,
    peer_credentials,
    resolve_group,
)
from tund.control.protocol import ProtocolError
from tund.control.slots import Slots
from tund.errors import ErrorCode, TundError
from tund.logs import Throttle

__all__ = ["ControlServer", "ControlSocketError", "Dispatch", "PeerCred",
           "bind_control_socket", "peer_credentials"]

log = logging.getLogger("tund.control.server")

DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_CLIENTS = 32
_BUSY_SEND_TIMEOUT = 1.0
_SETTLE_TURNS = 8
#: Connections accepted per loop turn; seconds accepting pauses after EMFILE and the like.
ACCEPT_BATCH = 16
_ACCEPT_PAUSE = 0.5


Dispatch = Callable[[str, dict[str, Any], PeerCred], Awaitable[dict[str, Any]]]
"""``dispatch(cmd, args, peer) -> result``; raises TundError subclasses for refusals."""



class ControlServer:
    """A Unix-socket server speaking :mod:`tund.control.protocol` to ``dispatch``."""

    def __init__(self, path: str | os.PathLike[str], dispatch: Dispatch, *,
                 group: str | None = None,
                 max_request: int = protocol.MAX_REQUEST,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_clients: int = DEFAULT_MAX_CLIENTS,
                 per_uid: int | None = None, reserve: int | None = None,
                 reserved_uids: Collection[int] | None = None,
                 reserved: Callable[[PeerCred], bool] | None = None) -> None:
        """``reserved_uids`` default: root and this process's euid; ``reserved(peer)``
        True also puts a peer in the reserve (it must be quick: called per connection)."""
        self.path = Path(path)
        self._dispatch = dispatch
        self._group = group
        self._max_request = max_request
        self._idle_timeout = idle_timeout
        self._max_clients = max_clients
        self._slots = Slots(max_clients, per_uid=per_uid, reserve=reserve,
                            reserved_uids={0, os.geteuid()} if reserved_uids is None
                            else reserved_uids)
        self._reserved = reserved
        self._writers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._throttle = Throttle(10.0)
        self._refused = 0
        self._evicted = 0
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._resume: asyncio.TimerHandle | None = None
        # connections in hand at once (served, being refused or closed); at this many,
        # accepting pauses, so the descriptors in use stay bounded whatever the flood
        self._max_inflight = self._slots.max_clients + self._slots.reserve + ACCEPT_BATCH
        self._inode: tuple[int, int] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Bind the socket and start accepting; raises ControlSocketError on failure."""
        gid = resolve_group(self._group) if self._group is not None else None
        sock = bind_control_socket(self.path, gid)
        st = self.path.stat()
        self._inode = (st.st_dev, st.st_ino)
        self._listener = sock
        self._loop = asyncio.get_running_loop()
        self._start_accepting()
        log.info("control socket listening on %s", self.path)

    # ----------------------------------------------------------------- accepting

    def _start_accepting(self) -> None:
        self._resume = None
        if self._listener is not None and self._loop is not None and not self._accepting \
                and not self._closing:
            self._loop.add_reader(self._listener.fileno(), self._accept)
            self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting and self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._accepting = False

    def _accept(self) -> None:
        """Accept a bounded batch; pause while ``_max_inflight`` connections are in hand."""
        assert self._listener is not None and self._loop is not None
        for _ in range(ACCEPT_BATCH):
            if len(self._handlers) >= self._max_inflight:
                self._stop_accepting()  # resumed as handlers finish
                return
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._throttle.log(log, logging.WARNING, f"accept-{e.errno}",
                                       "control: cannot accept a connection: %s; not "
                                       "accepting for %.1fs", e.strerror or e, _ACCEPT_PAUSE)
                    self._stop_accepting()
                    self._resume = self._loop.call_later(_ACCEPT_PAUSE, self._start_accepting)
                    return
                continue  # that client is gone already
            conn.setblocking(False)
            task = self._loop.create_task(self._on_socket(conn))
            self._handlers.add(task)

    async def _on_socket(self, conn: socket.socket) -> None:
        try:
            # The limit lets readuntil() see a whole max-size line plus its newline.
            reader, writer = await asyncio.open_unix_connection(
                sock=conn, limit=self._max_request + 1)
        except BaseException:
            conn.close()
            self._handler_done(asyncio.current_task())
            raise
        await self._on_connect(reader, writer)

    def _handler_done(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._handlers.discard(task)
        if not self._accepting and self._resume is None \
                and len(self._handlers) < self._max_inflight:
            self._start_accepting()

    async def close(self) -> None:
        """Stop accepting, drop open connections, unlink the socket if still ours."""
        self._closing = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._stop_accepting()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        # Connections accepted just before close() reach _on_connect a few loop turns
        # later (and see _closing); give them those turns, then cancel whoever is left.
        for _ in range(_SETTLE_TURNS):
            await asyncio.sleep(0)
        while self._handlers:
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
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
            admission = self._slots.admit(task, peer.uid, self._is_reserved(peer))
            if admission.evicted is not None:
                self._evict(admission.evicted, peer, admission.limit)
            if not admission.admitted:
                await self._refuse_busy(writer, peer, admission.limit)
                return
            self._writers[task] = writer
            await self._serve(reader, writer, peer, task)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # peer went away, stalled on reading its replies, evicted, or we are closing
        except Exception:
            log.exception("control connection failed")
        finally:
            self._slots.release(task)
            self._writers.pop(task, None)
            self._handler_done(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _is_reserved(self, peer: PeerCred) -> bool:
        if peer.uid in self._slots.reserved_uids or self._reserved is None:
            return False  # (the uid alone decides)
        try:
            return self._reserved(peer)
        except Exception:
            log.exception("control: cannot tell whether pid %d (uid %d) is reserved",
                          peer.pid, peer.uid)
            return False

    def _limit_text(self, limit: str, uid: int) -> str:
        if limit == "uid":
            return f"too many control connections from uid {uid} at once (limit " \
                   f"{self._slots.per_uid})"
        if limit == "reserve":
            return f"too many root control connections at once (limit {self._slots.reserve})"
        return f"too many control clients at once (limit {self._max_clients})"

    def _evict(self, victim: object, newcomer: PeerCred, limit: str) -> None:
        """Close idle connection ``victim`` (a handler task) to make room for ``newcomer``."""
        self._evicted += 1
        self._throttle.log(log, logging.WARNING, f"evict-{limit}",
                           "control: %s; closing the oldest idle connection for pid %d "
                           "(uid %d) (%d closed so far)", self._limit_text(limit, newcomer.uid),
                           newcomer.pid, newcomer.uid, self._evicted)
        assert isinstance(victim, asyncio.Task)
        writer = self._writers.pop(victim, None)
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(Exception):  # best effort: never waits for the victim
                writer.write(protocol.encode_error(
                    None, ErrorCode.BUSY, f"{self._limit_text(limit, newcomer.uid)}: this "
                    "idle connection was closed to make room"))
        victim.cancel()

    async def _refuse_busy(self, writer: asyncio.StreamWriter, peer: PeerCred,
                           limit: str = "shared") -> None:
        self._refused += 1
        self._throttle.log(log, logging.WARNING, f"busy-{limit}",
                           "control: %s, every one busy; refusing pid %d (uid %d) (%d refused "
                           "so far)", self._limit_text(limit, peer.uid), peer.pid, peer.uid,
                           self._refused)
        writer.write(protocol.encode_error(
            None, ErrorCode.BUSY, f"{self._limit_text(limit, peer.uid)}; try again"))
        await asyncio.wait_for(writer.drain(), _BUSY_SEND_TIMEOUT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: PeerCred, task: asyncio.Task[None]) -> None:
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
            self._slots.set_idle(task, False)  # handling a request: never evicted
            reply = await self._handle_line(line, peer)
            await self._send(writer, reply)
            self._slots.set_idle(task, True)

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
