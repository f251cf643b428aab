"""Prometheus metrics: the ``status`` result as an exposition, served over HTTP on request.

Opt-in with ``[daemon] metrics_listen = "IP:PORT"``. Contract:

* :func:`families` turns one status result (see :mod:`tund.control.status_schema`) into metric
  families; pure, so the numbers are exactly those of ``tundctl status --json`` taken at
  the same moment. :func:`exposition` renders them with ``prometheus_client`` on a private
  registry (never the library's global one).
* :class:`MetricsServer` is a small HTTP/1.x server on the daemon's own asyncio loop (no
  thread): ``GET /metrics`` awaits the status source (which asks every worker for fresh
  counters) and answers the exposition; ``GET /`` a one-line pointer; other paths 404,
  other methods 405. One request per connection; a request must arrive within
  ``REQUEST_TIMEOUT`` seconds and fit in ``MAX_REQUEST`` bytes. No authentication: listen
  on loopback or a management network.

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
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tund.states import TunnelState

log = logging.getLogger("tund.daemon.metrics")

DEFAULT_PORT = 9586
REQUEST_TIMEOUT = 10.0
MAX_REQUEST = 8192
STATUS_TIMEOUT = 20.0
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


class MetricsServer:
    """Serve ``/metrics`` at ``host:port`` from ``source()`` (a status coroutine)."""

    def __init__(self, host: str, port: int, source: StatusSource) -> None:
        self.host = host
        self.port = port
        self.source = source
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and listen; raises OSError (address in use, not local, ...)."""
        log.info("metrics: listening on http://%s/metrics", self.address)
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str] | None:
        """(method, path) from the request line, after the headers; None if malformed."""
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return None
        return parts[0], parts[1].split("?", 1)[0]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(self._read_request(reader), REQUEST_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError):
                return
            writer.write(await self._answer(request))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

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
            status = await asyncio.wait_for(self.source(), STATUS_TIMEOUT)
            body = exposition(status)
        except Exception as e:  # the scrape fails, the daemon does not
            log.error("metrics: cannot collect: %s: %s", type(e).__name__, e)
            return _response(500, "Internal Server Error",
                             b"cannot collect; see the daemon log\n", _TEXT)
        return _response(200, "OK", body, CONTENT_TYPE, head)


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9586"`` / ``"[::1]:9586"`` -> (host, port); ValueError if malformed."""
    from tund.config import parse_endpoint  # late: keeps pydantic out of the import

    return parse_endpoint(text, allow_hostname=False)
