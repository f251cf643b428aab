"""Prometheus metrics: the ``status`` result as an exposition, served over HTTP on request.

Opt-in with ``[daemon] metrics_listen = "IP:PORT"``. Contract:

* :func:`~tund.daemon.exposition.families` / :func:`~tund.daemon.exposition.exposition`
  (re-exported here) turn one status result into metric families and their text; the
  metric names are listed there.
* :class:`MetricsServer` is a small HTTP/1.x server on the daemon's own asyncio loop (no
  thread): ``GET /metrics`` answers the exposition of a status snapshot at most
  ``CACHE_TTL`` seconds old (taking one asks every worker for fresh counters, so a flood
  of scrapes costs the workers nothing more); ``GET /`` a one-line pointer; other paths
  404, other methods 405. One request per connection (no keep-alive); each connection has
  ``REQUEST_TIMEOUT`` seconds in all; a request head over ``MAX_REQUEST`` bytes gets 431;
  at most ``MAX_CONNECTIONS`` are served at once. No authentication: listen on loopback
  or a management network.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tund.daemon.exposition import CONTENT_TYPE, exposition, families
from tund.logs import Throttle

__all__ = ["CONTENT_TYPE", "MetricsServer", "exposition", "families", "parse_listen"]

log = logging.getLogger("tund.daemon.metrics")

DEFAULT_PORT = 9586
#: Seconds a connection may take in all: request, collection, reply (then it is closed).
REQUEST_TIMEOUT = 5.0
#: Longest request head (request line and headers); longer gets 431.
MAX_REQUEST = 8192
#: Seconds a collection of the status may take (bounded by REQUEST_TIMEOUT per scrape).
STATUS_TIMEOUT = 20.0
#: Connections served at once; more are accepted and closed at once.
MAX_CONNECTIONS = 64
#: Seconds a snapshot of the status is served to scrapes before a fresh one is taken.
CACHE_TTL = 0.25
#: Connections accepted per loop turn; seconds accepting pauses after EMFILE and the like.
ACCEPT_BATCH = 64
ACCEPT_PAUSE = 0.5
BACKLOG = 128
#: After a 431, what the client still sends is read and dropped (bytes, seconds).
DISCARD_MAX, DISCARD_TIME = 256 * 1024, 1.0
#: Seconds between two log lines of the same warning.
WARN_INTERVAL = 10.0
_ACCEPT_RETRY_LATER = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
StatusSource = Callable[[], Awaitable[Mapping[str, Any]]]


# --------------------------------------------------------------------------- HTTP


def _response(code: int, reason: str, body: bytes, content_type: str,
              head: bool = False) -> bytes:
    header = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return header if head else header + body


_TEXT = "text/plain; charset=utf-8"


class _Cache:
    """The latest exposition, reused for ``ttl`` seconds; concurrent scrapes share one
    collection (so workers are asked at most 1/ttl times a second, whatever the load)."""

    def __init__(self, source: StatusSource, ttl: float) -> None:
        self._source = source
        self._ttl = ttl
        self._body: bytes | None = None
        self._at = -1e9
        self._pending: asyncio.Future[bytes] | None = None
        self.collections = 0

    async def get(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self._body is not None and loop.time() - self._at < self._ttl:
            return self._body
        if self._pending is None:
            self._pending = loop.create_task(self._collect())
            # retrieved even when every scrape waiting for it was cut off by its timeout
            self._pending.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._pending)

    def invalidate(self) -> None:
        """Something changed (a reload, a tunnel up or down): the next scrape collects
        afresh instead of serving the snapshot taken before the change."""
        self._body = None

    def cancel(self) -> None:
        """Stop a collection under way (the server is closing)."""
        if self._pending is not None:
            self._pending.cancel()

    async def _collect(self) -> bytes:
        try:
            self.collections += 1
            status = await asyncio.wait_for(self._source(), STATUS_TIMEOUT)
            body = exposition(status)
            self._body, self._at = body, asyncio.get_running_loop().time()
            return body
        finally:
            self._pending = None


class MetricsServer:
    """Serve ``/metrics`` at ``host:port`` from ``source()`` (a status coroutine).

    Bounds: at most ``max_connections`` served at once (one more is accepted and closed at
    once, with a rate-limited warning); a request head over ``MAX_REQUEST`` bytes gets 431;
    each connection gets ``REQUEST_TIMEOUT`` seconds in all (read, collect, write), then is
    closed; no keep-alive. A failing ``accept`` (EMFILE ...) pauses accepting for
    ``ACCEPT_PAUSE`` seconds and logs one rate-limited warning line, no traceback.
    Scrapes are served from a snapshot at most ``CACHE_TTL`` seconds old.
    """

    def __init__(self, host: str, port: int, source: StatusSource, *,
                 max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT,
                 cache_ttl: float = CACHE_TTL) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._cache = _Cache(source, cache_ttl)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._throttle = Throttle(WARN_INTERVAL)
        self.refused = 0

    async def start(self) -> None:
        """Bind and listen; raises OSError (address in use, not local, ...)."""
        log.info("metrics: listening on http://%s/metrics", self.address)
        family, kind, proto, _, addr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._accept)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def collections(self) -> int:
        """How many times the status source was asked (for tests)."""
        return self._cache.collections

    def invalidate(self) -> None:
        """See :meth:`_Cache.invalidate`."""
        self._cache.invalidate()

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._conns)

    async def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._cache.cancel()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    def _accept(self) -> None:
        """Accept what is waiting (a bounded batch per loop turn)."""
        assert self._sock is not None and self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _ACCEPT_RETRY_LATER:
                    self._pause_accepting(e)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            if len(self._conns) >= self.max_connections:
                self.refused += 1
                conn.close()
                self._throttle.log(log, logging.WARNING, "full",
                                   "metrics: %d connections open (the limit); closing new "
                                   "ones at once (%d so far)", self.max_connections,
                                   self.refused)
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    def _pause_accepting(self, e: OSError) -> None:
        assert self._sock is not None and self._loop is not None
        self._throttle.log(log, logging.WARNING, f"accept-{e.errno}",
                           "metrics: cannot accept a connection: %s; not accepting for "
                           "%.1fs", e.strerror or e, ACCEPT_PAUSE)
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _serve(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            async with asyncio.timeout(self.request_timeout):
                head = await self._read_head(conn)
                reply = (_response(431, "Request Header Fields Too Large",
                                   f"request head over {MAX_REQUEST} bytes\n".encode(), _TEXT)
                         if head is None else await self._answer(_parse_request(head)))
                await self._loop.sock_sendall(conn, reply)
                if head is None:
                    await self._discard_rest(conn)
        except (TimeoutError, ConnectionError, _Gone):
            pass
        except OSError as e:
            log.debug("metrics: connection failed: %s", e)
        finally:
            conn.close()

    async def _discard_rest(self, conn: socket.socket) -> None:
        """After a 431: read and drop what the client still sends (at most DISCARD_MAX
        bytes, DISCARD_TIME seconds), so closing does not reset the reply away."""
        assert self._loop is not None
        conn.shutdown(socket.SHUT_WR)
        left = DISCARD_MAX
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DISCARD_TIME):
                while left > 0:
                    chunk = await self._loop.sock_recv(conn, min(left, 65536))
                    if not chunk:
                        return
                    left -= len(chunk)

    async def _read_head(self, conn: socket.socket) -> bytes | None:
        """The request head up to its blank line; None if it exceeds MAX_REQUEST."""
        assert self._loop is not None
        buf = b""
        while True:
            chunk = await self._loop.sock_recv(conn, MAX_REQUEST + 1 - len(buf))
            if not chunk:
                raise _Gone
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                return buf[:end + 4] if end + 4 <= MAX_REQUEST else None
            if len(buf) > MAX_REQUEST:
                return None

    async def _answer(self, request: tuple[str, str] | None) -> bytes:
        if request is None:
            return _response(400, "Bad Request", b"bad request\n", _TEXT)
        method, path = request
        if method not in ("GET", "HEAD"):
            return _response(405, "Method Not Allowed", b"only GET\n", _TEXT)
        head = method == "HEAD"
        if path == "/":
            return _response(200, "OK", b"tund: metrics at /metrics\n", _TEXT, head)
        if path != "/metrics":
            return _response(404, "Not Found", b"not found; metrics at /metrics\n", _TEXT,
                             head)
        try:
            body = await self._cache.get()
        except Exception as e:  # the scrape fails, the daemon does not
            self._throttle.log(log, logging.ERROR, f"collect-{type(e).__name__}",
                               "metrics: cannot collect: %s: %s", type(e).__name__, e)
            return _response(500, "Internal Server Error",
                             b"cannot collect; see the daemon log\n", _TEXT)
        return _response(200, "OK", body, CONTENT_TYPE, head)


class _Gone(Exception):
    """The client closed the connection before sending a whole request head."""


def _parse_request(head: bytes) -> tuple[str, str] | None:
    """(method, path) from the request line; None if malformed."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    return parts[0], parts[1].split("?", 1)[0]


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9586"`` / ``"[::1]:9586"`` -> (host, port); ValueError if malformed."""
    from tund.config import parse_endpoint  # late: keeps pydantic out of the import

    return parse_endpoint(text, allow_hostname=False)
