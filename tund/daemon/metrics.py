"""Prometheus metrics: the ``status`` result as an exposition, served over HTTP on request.

Opt-in with ``[daemon] metrics_listen = "IP:PORT"``. Contract:

* :func:`families` turns one status result (see :mod:`tund.control.status_schema`) into metric
  families; pure, so the numbers are exactly those of ``tundctl status --json`` taken at
  the same moment. :func:`exposition` renders them with ``prometheus_client`` on a private
  registry (never the library's global one).
* :class:`MetricsServer` is a small HTTP/1.x server on the daemon's own asyncio loop (no
  thread): ``GET /metrics`` answers the exposition of a status snapshot at most
  ``CACHE_TTL`` seconds old (taking one asks every worker for fresh counters, so a flood
  of scrapes costs the workers nothing more); ``GET /`` a one-line pointer; other paths
  404, other methods 405. One request per connection (no keep-alive); each connection has
  ``REQUEST_TIMEOUT`` seconds in all; a request head over ``MAX_REQUEST`` bytes gets 431;
  at most ``MAX_CONNECTIONS`` are served at once. No authentication: listen on loopback
  or a management network.

Metric names (all gauges/counters labelled ``tunnel`` are per tunnel; ``rx`` is peer ->
device, ``tx`` is device -> peer):

=============================================  =======  ==================================
``tund_tunnel_{rx,tx}_packets_total``          counter  packets per direction
``tund_tunnel_{rx,tx}_bytes_total``            counter  bytes per direction
``tund_tunnel_drops_total{cause}``             counter  packets dropped, by cause
``tund_tunnel_wireguard_drops_total{cause}``   counter  the WireGuard layer's own drops
``tund_tunnel_errors_total``                   counter  non-fatal failed system calls
``tund_tunnel_restarts_total``                 counter  worker restarts after crashes
``tund_tunnel_state{state}``                   gauge    1 for the current state, else 0
``tund_tunnel_up``                             gauge    1 only when the state is ``up``
``tund_tunnel_state_since_timestamp_seconds``  gauge    unix time of the last state change
``tund_tunnel_latest_handshake_timestamp_seconds``  gauge  (wireguard, after a handshake)
``tund_tunnel_last_{rx,tx}_timestamp_seconds`` gauge    latest packet per direction
``tund_peer_{rx,tx}_packets_total{tunnel,peer}``  counter  per peer of a tunnel with peers
``tund_peer_{rx,tx}_bytes_total{tunnel,peer}``    counter  per peer
``tund_peer_drops_total{tunnel,peer,cause}``      counter  per peer, by cause
``tund_peer_latest_handshake_timestamp_seconds{tunnel,peer}``  gauge  (after a handshake)
``tund_peer_active{tunnel,peer}``              gauge    1 for a handshake within 180 s
``tund_interface_exists{interface}``           gauge    1 when the kernel has the device
``tund_interface_mtu_bytes{interface}``        gauge    the link MTU
``tund_info{version}``                         gauge    always 1
``tund_start_time_seconds``                    gauge    unix time the daemon started
``tund_reloads_total``                         counter  reloads attempted
``tund_last_reload_success``                   gauge    1 ok, 0 failed (absent: none yet)
``tund_last_reload_timestamp_seconds``         gauge    when (absent: none yet)
=============================================  =======  ==================================
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tund.logs import Throttle
from tund.states import TunnelState

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
#: What generate_latest writes (newer prometheus_client versions call other formats "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

StatusSource = Callable[[], Awaitable[Mapping[str, Any]]]


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: Any) -> float | None:
    return float(value) if _num(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _tunnel_families(tunnels: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc, labels=["tunnel"])
        for tname, t in tunnels.items():
            if _num(t.get(key)):
                fam.add_metric([tname], t[key])
        return fam

    yield counter("tund_tunnel_rx_packets", "Packets from the peer written to the device.",
                  "rx_packets")
    yield counter("tund_tunnel_rx_bytes", "Bytes from the peer written to the device.",
                  "rx_bytes")
    yield counter("tund_tunnel_tx_packets", "Packets read from the device and sent to the "
                  "peer.", "tx_packets")
    yield counter("tund_tunnel_tx_bytes", "Bytes read from the device and sent to the peer.",
                  "tx_bytes")
    yield counter("tund_tunnel_errors", "Failed system calls that were not fatal.", "errors")
    yield counter("tund_tunnel_restarts", "Worker restarts after crashes.", "restarts")

    for name, key, doc in (
            ("tund_tunnel_drops", "drops", "Packets dropped, by cause."),
            ("tund_tunnel_wireguard_drops", "wg_drops",
             "Packets dropped by the WireGuard layer, by cause (some causes also count in "
             "tund_tunnel_drops_total).")):
        fam = CounterMetricFamily(name, doc, labels=["tunnel", "cause"])
        for tname, t in tunnels.items():
            for cause, n in sorted(_mapping(t.get(key)).items()):
                if _num(n):
                    fam.add_metric([tname, str(cause)], n)
        yield fam

    state = GaugeMetricFamily("tund_tunnel_state", "1 for the tunnel's current state, 0 for "
                              "the others.", labels=["tunnel", "state"])
    up = GaugeMetricFamily("tund_tunnel_up", "1 only when the tunnel is up (packets pass: "
                           "a fresh WireGuard session, a plaintext UDP peer heard, TCP "
                           "connected); 0 while connecting, handshaking, unverified, "
                           "failing, ...", labels=["tunnel"])
    for tname, t in tunnels.items():
        current = str(t.get("state") or "")
        for s in TunnelState:
            state.add_metric([tname, s.value], 1 if s.value == current else 0)
        up.add_metric([tname], 1 if current == TunnelState.UP.value else 0)
    yield state
    yield up

    for name, key, doc in (
            ("tund_tunnel_state_since_timestamp_seconds", "since",
             "Unix time of the tunnel's last state change."),
            ("tund_tunnel_latest_handshake_timestamp_seconds", "latest_handshake",
             "Unix time of the latest completed WireGuard handshake."),
            ("tund_tunnel_last_rx_timestamp_seconds", "last_rx",
             "Unix time of the latest packet from the peer."),
            ("tund_tunnel_last_tx_timestamp_seconds", "last_tx",
             "Unix time of the latest packet sent to the peer.")):
        stamp = GaugeMetricFamily(name, doc, labels=["tunnel"])
        for tname, t in tunnels.items():
            value = _float(t.get(key))
            if value is not None and value > 0:
                stamp.add_metric([tname], value)
        yield stamp


def _peer_families(tunnels: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Per-peer series (labels ``tunnel``, ``peer``) of the tunnels with ``peers``."""
    peers = [(tname, str(pname), _mapping(p)) for tname, t in tunnels.items()
             for pname, p in sorted(_mapping(t.get("peers")).items())]
    for key, doc in (("rx_packets", "Packets from the peer written to the device."),
                     ("rx_bytes", "Bytes from the peer written to the device."),
                     ("tx_packets", "Packets read from the device and sent to the peer."),
                     ("tx_bytes", "Bytes read from the device and sent to the peer.")):
        fam = CounterMetricFamily(f"tund_peer_{key}", doc, labels=["tunnel", "peer"])
        for tname, pname, p in peers:
            if _num(p.get(key)):
                fam.add_metric([tname, pname], p[key])
        yield fam
    drops = CounterMetricFamily("tund_peer_drops", "The peer's packets dropped, by cause.",
                                labels=["tunnel", "peer", "cause"])
    for tname, pname, p in peers:
        for cause, n in sorted(_mapping(p.get("drops")).items()):
            if _num(n):
                drops.add_metric([tname, pname, str(cause)], n)
    yield drops
    stamp = GaugeMetricFamily("tund_peer_latest_handshake_timestamp_seconds",
                              "Unix time of the peer's latest completed handshake.",
                              labels=["tunnel", "peer"])
    active = GaugeMetricFamily("tund_peer_active", "1 when the peer's latest handshake is "
                               "at most 180 s old, else 0.", labels=["tunnel", "peer"])
    for tname, pname, p in peers:
        value = _float(p.get("latest_handshake"))
        if value is not None and value > 0:
            stamp.add_metric([tname, pname], value)
        active.add_metric([tname, pname], 1 if p.get("state") == "active" else 0)
    yield stamp
    yield active


def _interface_families(interfaces: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    exists = GaugeMetricFamily("tund_interface_exists", "1 when the kernel has the device.",
                               labels=["interface"])
    mtu = GaugeMetricFamily("tund_interface_mtu_bytes", "The interface's link MTU.",
                            labels=["interface"])
    for name, i in interfaces.items():
        exists.add_metric([name], 1 if i.get("exists") else 0)
        if _num(i.get("mtu")):
            mtu.add_metric([name], i["mtu"])
    yield exists
    yield mtu


def _daemon_families(d: Mapping[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("tund_info", "Always 1; the version is a label.",
                             labels=["version"])
    info.add_metric([str(d.get("version") or "unknown")], 1)
    yield info
    if _num(d.get("started")):
        yield GaugeMetricFamily("tund_start_time_seconds", "Unix time the daemon started.",
                                value=d["started"])
    yield CounterMetricFamily("tund_reloads", "Reloads attempted (successful or not).",
                              value=d["reloads"] if _num(d.get("reloads")) else 0)
    last = _mapping(d.get("last_reload"))
    if last:
        yield GaugeMetricFamily("tund_last_reload_success",
                                "1 if the latest reload succeeded, 0 if it failed.",
                                value=1 if last.get("ok") else 0)
        if _num(last.get("time")):
            yield GaugeMetricFamily("tund_last_reload_timestamp_seconds",
                                    "Unix time of the latest reload.", value=last["time"])


def families(status: Mapping[str, Any]) -> list[Metric]:
    """The metric families of one ``status`` result (missing parts give no samples)."""
    tunnels = {str(k): _mapping(v) for k, v in _mapping(status.get("tunnels")).items()}
    interfaces = {str(k): _mapping(v) for k, v in _mapping(status.get("interfaces")).items()}
    out: list[Metric] = []
    out += _daemon_families(_mapping(status.get("daemon")))
    out += _tunnel_families(tunnels)
    out += _peer_families(tunnels)
    out += _interface_families(interfaces)
    return out


class _Snapshot:
    """A collector that yields the families of one status result it was given."""

    def __init__(self, status: Mapping[str, Any]) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        return families(self.status)


def exposition(status: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of one status result."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(status))
    return generate_latest(registry)


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
