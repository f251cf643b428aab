"""Metrics: a status result -> Prometheus exposition, parsed back with prometheus_client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tund.config import DaemonConfig, parse_text
from tund.daemon import metrics
from tund.errors import ConfigError

STATUS: dict[str, Any] = {
    "schema": 1,
    "daemon": {"version": "0.1.0", "pid": 9, "config": "/etc/tund/tunnels.toml",
               "started": 1700000000.0, "reloads": 3,
               "last_reload": {"time": 1700000100.5, "ok": False, "message": "invalid"}},
    "interfaces": {"tun0": {"mode": "tun", "exists": True, "mtu": 1420},
                   "tap0": {"mode": "tap", "exists": False, "mtu": None}},
    "tunnels": {
        "wan0": {"interface": "tun0", "state": "up", "since": 1700000001.0, "restarts": 2,
                 "rx_packets": 10, "rx_bytes": 1000, "tx_packets": 20, "tx_bytes": 2500,
                 "errors": 1, "drops": {"oversize": 4, "no_peer": 0}, "last_rx": 1700000050.0,
                 "last_tx": None, "latest_handshake": 1700000040.0,
                 "wg_drops": {"replay": 7}},
        'we"ird': {"interface": "tap0", "state": "failed", "restarts": 11, "rx_packets": 0,
                   "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0, "errors": 0, "drops": {},
                   "latest_handshake": None},
    },
}


def samples(status: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition(status).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_names_labels_values() -> None:
    s = samples(STATUS)
    w = (("tunnel", "wan0"),)
    assert s[("tund_tunnel_rx_bytes_total", w)] == 1000
    assert s[("tund_tunnel_tx_bytes_total", w)] == 2500
    assert s[("tund_tunnel_rx_packets_total", w)] == 10
    assert s[("tund_tunnel_tx_packets_total", w)] == 20
    assert s[("tund_tunnel_errors_total", w)] == 1
    assert s[("tund_tunnel_restarts_total", w)] == 2
    assert s[("tund_tunnel_drops_total", (("cause", "oversize"), ("tunnel", "wan0")))] == 4
    assert s[("tund_tunnel_drops_total", (("cause", "no_peer"), ("tunnel", "wan0")))] == 0
    assert s[("tund_tunnel_wireguard_drops_total",
              (("cause", "replay"), ("tunnel", "wan0")))] == 7
    assert s[("tund_tunnel_up", w)] == 1
    assert s[("tund_tunnel_latest_handshake_timestamp_seconds", w)] == 1700000040.0
    assert s[("tund_tunnel_last_rx_timestamp_seconds", w)] == 1700000050.0
    assert ("tund_tunnel_last_tx_timestamp_seconds", w) not in s  # null: no sample
    assert s[("tund_reloads_total", ())] == 3
    assert s[("tund_last_reload_success", ())] == 0
    assert s[("tund_last_reload_timestamp_seconds", ())] == 1700000100.5
    assert s[("tund_start_time_seconds", ())] == 1700000000.0
    assert s[("tund_info", (("version", "0.1.0"),))] == 1
    assert s[("tund_interface_exists", (("interface", "tun0"),))] == 1
    assert s[("tund_interface_exists", (("interface", "tap0"),))] == 0
    assert s[("tund_interface_mtu_bytes", (("interface", "tun0"),))] == 1420
    assert ("tund_interface_mtu_bytes", (("interface", "tap0"),)) not in s


def test_state_is_one_hot_over_every_state() -> None:
    s = samples(STATUS)
    for tunnel, current in (("wan0", "up"), ('we"ird', "failed")):
        states = {dict(labels)["state"]: v for (name, labels), v in s.items()
                  if name == "tund_tunnel_state" and dict(labels)["tunnel"] == tunnel}
        assert set(states) == {"starting", "connecting", "handshaking", "unverified", "failing",
                               "up", "backoff", "failed", "stopped"}
        assert [k for k, v in states.items() if v == 1] == [current]
    assert s[("tund_tunnel_up", (("tunnel", 'we"ird'),))] == 0  # label escaping round-trips


def test_families_have_types_and_help() -> None:
    text = metrics.exposition(STATUS).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["tund_tunnel_rx_bytes"].type == "counter"
    assert fams["tund_tunnel_drops"].type == "counter"
    assert fams["tund_tunnel_state"].type == "gauge"
    assert fams["tund_reloads"].type == "counter"
    assert all(f.documentation for f in fams.values())
    assert all(name.startswith("tund_") for name in fams)


def test_no_reload_yet_gives_no_last_reload_samples() -> None:
    status = {**STATUS, "daemon": {**STATUS["daemon"], "reloads": 0, "last_reload": None}}
    s = samples(status)
    assert s[("tund_reloads_total", ())] == 0
    assert not any(name.startswith("tund_last_reload") for name, _ in s)


def test_empty_or_partial_status_renders() -> None:
    s = samples({})
    assert s[("tund_reloads_total", ())] == 0
    assert s[("tund_info", (("version", "unknown"),))] == 1
    s = samples({"tunnels": {"x": {"state": "stopped", "drops": "junk"}}})
    assert s[("tund_tunnel_up", (("tunnel", "x"),))] == 0


def test_metrics_listen_validation() -> None:
    assert DaemonConfig().metrics_listen is None
    ok = parse_text('[daemon]\nmetrics_listen = "[::1]:9586"\n')
    assert ok.daemon.metrics_listen == "[::1]:9586"
    assert metrics.parse_listen("[::1]:9586") == ("::1", 9586)
    assert metrics.parse_listen("127.0.0.1:9586") == ("127.0.0.1", 9586)
    for bad in ("localhost:9586", "::1:9586", "127.0.0.1", "127.0.0.1:0", "1.2.3.4:70000"):
        with pytest.raises(ConfigError) as e:
            parse_text(f'[daemon]\nmetrics_listen = "{bad}"\n', "t.toml")
        assert "daemon.metrics_listen" in str(e.value), bad


def test_server_answers_metrics_404_405_and_bad_requests() -> None:
    async def source() -> dict[str, Any]:
        return STATUS

    async def ask(port: int, raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data

    async def main() -> list[bytes]:
        server = metrics.MetricsServer("127.0.0.1", 0, source)
        await server.start()
        try:
            assert server.port > 0
            return [await ask(server.port, r) for r in (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /nope HTTP/1.1\r\n\r\n",
                b"POST /metrics HTTP/1.1\r\n\r\n",
                b"garbage\r\n\r\n",
                b"HEAD /metrics HTTP/1.0\r\n\r\n")]
        finally:
            await server.close()

    ok, missing, post, bad, head = asyncio.run(main())
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    header, body = ok.split(b"\r\n\r\n", 1)
    assert b"Content-Type: text/plain; version=0.0.4" in header
    assert f"Content-Length: {len(body)}".encode() in header
    assert b'tund_tunnel_rx_bytes_total{tunnel="wan0"} 1000.0' in body
    assert missing.startswith(b"HTTP/1.1 404 ")
    assert post.startswith(b"HTTP/1.1 405 ")
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")


def test_server_reports_a_failing_source_as_500() -> None:
    async def source() -> dict[str, Any]:
        raise RuntimeError("boom")

    async def main() -> bytes:
        server = metrics.MetricsServer("127.0.0.1", 0, source)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data
        finally:
            await server.close()

    assert asyncio.run(main()).startswith(b"HTTP/1.1 500 ")
