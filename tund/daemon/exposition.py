"""The ``status`` result as Prometheus metric families and their text exposition.

:func:`families` is pure: the numbers are exactly those of ``tundctl status --json``
taken at the same moment. :func:`exposition` renders them with ``prometheus_client`` on
a private registry (never the library's global one). Served by :mod:`tund.daemon.metrics`.

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

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tund.states import TunnelState

#: What generate_latest writes (newer prometheus_client versions call other formats "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: Any) -> float | None:
    return float(value) if _num(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# Size: a list of the tunnel metric families, one short stanza each with its help text.
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
