"""Status per peer (issue 17.5): the daemon's join of config and worker counters, its
documented fields, the text, dump and metrics of status dicts built by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tund import keys
from tund.config import Config, parse_text
from tund.control import status_schema
from tund.ctl import render
from tund.daemon import metrics, specs
from tund.daemon.engine import Engine
from tund.daemon.status import ACTIVE_WITHIN, peer_state, tunnel_peers
from tund.supervise.runner import Limits, TunnelRunner

NOW = 1_700_000_000.0
A_KEY, B_KEY = (keys.public_key(keys.generate_private_key()) for _ in range(2))

CONF = f"""\
[interfaces.wg0]
mode = "tun"
addresses = ["10.8.0.1/24"]

[tunnels.vpn]
interface = "wg0"
private_key_file = "{{key}}"

[tunnels.vpn.peers.alice]
public_key = "{A_KEY}"
allowed_ips = ["10.8.0.2/32", "fd08::2/128"]
endpoint = "203.0.113.5:51820"
keepalive = 25

[tunnels.vpn.peers.bob]
public_key = "{B_KEY}"
allowed_ips = ["10.8.0.3/32"]
enabled = false
"""


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    key = tmp_path / "vpn.key"
    key.write_text(keys.generate_private_key() + "\n")
    key.chmod(0o600)
    return parse_text(CONF.replace("{key}", str(key)))


def _reported(**over: Any) -> dict[str, Any]:
    return {"public_key": A_KEY, "endpoint": "198.51.100.9:4000", "latest_handshake": NOW - 10,
            "rx_bytes": 2048, "tx_bytes": 1024, "rx_packets": 2, "tx_packets": 1,
            "drops": {"not_allowed": 3}, **over}


def test_peer_state() -> None:
    assert peer_state(None, NOW) == "never"
    assert peer_state(NOW - 5, NOW) == "active"
    assert peer_state(NOW - ACTIVE_WITHIN, NOW) == "active"
    assert peer_state(NOW - ACTIVE_WITHIN - 1, NOW) == "idle"


def test_tunnel_peers_joins_config_and_worker_counters(cfg: Config) -> None:
    t = cfg.tunnels["vpn"]
    peers = tunnel_peers(t, {"alice": _reported(offload="in"), "gone": _reported()}, NOW)
    assert list(peers) == ["alice", "bob"]  # configured ones only, disabled too
    assert peers["alice"] == {
        "public_key": A_KEY, "endpoint": "198.51.100.9:4000",
        "allowed_ips": ["10.8.0.2/32", "fd08::2/128"], "keepalive": 25, "enabled": True,
        "latest_handshake": NOW - 10, "state": "active", "rx_bytes": 2048, "tx_bytes": 1024,
        "rx_packets": 2, "tx_packets": 1, "drops": {"not_allowed": 3}, "offload": "in",
        "lifetime": {}}
    assert peers["bob"] == {
        "public_key": B_KEY, "endpoint": None, "allowed_ips": ["10.8.0.3/32"],
        "keepalive": 0, "enabled": False, "latest_handshake": None, "state": "never",
        "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0, "drops": {},
        "offload": "off", "lifetime": {}}
    # no worker data yet: the configured endpoint
    assert tunnel_peers(t, {}, NOW)["alice"]["endpoint"] == "203.0.113.5:51820"
    assert set(peers["alice"]) == set(status_schema.PEER_FIELDS)


def test_engine_status_of_a_peers_tunnel_has_documented_peer_fields(tmp_path: Path,
                                                                     cfg: Config) -> None:
    engine = Engine(tmp_path / "tunnels.toml")
    engine.config = cfg
    t = engine.config.tunnels["vpn"]
    engine.runners["vpn"] = TunnelRunner("vpn", lambda: None, Limits(),  # type: ignore[arg-type,return-value]
                                         specs.describe(t))
    result = asyncio.run(engine.status())
    peers = result["tunnels"]["vpn"]["peers"]
    assert set(peers) == {"alice", "bob"}
    for p in peers.values():
        assert set(p) == set(status_schema.PEER_FIELDS)
    assert peers["alice"]["state"] == "never" and peers["alice"]["rx_bytes"] == 0


# --------------------------------------------------------------------------- text, dump, metrics

STATUS: dict[str, Any] = {
    "schema": 1,
    "tunnels": {
        "vpn": {"interface": "wg0", "state": "up", "encryption": "wireguard",
                "rx_bytes": 3072, "tx_bytes": 1024, "drops": {"no_route": 1},
                "peers": {
                    "alice": {"public_key": "AAAA", "endpoint": "198.51.100.9:4000",
                              "allowed_ips": ["10.8.0.2/32", "fd08::2/128"],
                              "keepalive": 25, "enabled": True,
                              "latest_handshake": NOW - 12, "state": "active",
                              "rx_bytes": 2048, "tx_bytes": 1024, "rx_packets": 2,
                              "tx_packets": 1, "drops": {"not_allowed": 3}},
                    "bob": {"public_key": "BBBB", "endpoint": None, "allowed_ips": [],
                            "keepalive": 0, "enabled": False, "latest_handshake": None,
                            "state": "never", "rx_bytes": 0, "tx_bytes": 0,
                            "rx_packets": 0, "tx_packets": 0, "drops": {}}}},
        "plain": {"interface": "tun1", "state": "up", "peers": {}},
    },
}


def test_status_text_has_a_block_per_peer_like_wg_show() -> None:
    text = render.render_status(STATUS, now=NOW)
    vpn = text.split("tunnel: vpn", 1)[1].split("tunnel: ", 1)[0]
    assert ("\n\n  peer: alice\n"
            "    public key: AAAA\n"
            "    endpoint: 198.51.100.9:4000\n"
            "    allowed ips: 10.8.0.2/32, fd08::2/128\n"
            "    latest handshake: 12 seconds ago\n"
            "    transfer: 2.00 KiB received, 1.00 KiB sent\n"
            "    packets: 2 received, 1 sent\n"
            "    persistent keepalive: every 25 seconds\n"
            "    state: active\n"
            "    drops: not_allowed 3\n") in vpn
    assert vpn.index("peer: alice") < vpn.index("peer: bob")
    bob = vpn.split("peer: bob", 1)[1]
    assert "endpoint: (none)" in bob and "allowed ips: (none)" in bob
    assert "latest handshake: (none yet)" in bob and "state: never (disabled)" in bob
    assert "keepalive" not in bob
    assert "peer:" not in text.split("tunnel: plain", 1)[1].split("tunnel: vpn", 1)[0]


def test_status_of_one_peer() -> None:
    text = render.render_status(STATUS, now=NOW, tunnel="vpn", peer="alice")
    assert text.startswith("peer: alice\n    tunnel: vpn\n    public key: AAAA\n")
    assert "bob" not in text and "interface" not in text
    with pytest.raises(render.NoSuchPeer) as e:
        render.render_status(STATUS, now=NOW, tunnel="vpn", peer="carol")
    assert str(e.value) == "tunnel vpn has no peer named 'carol' (peers: alice, bob)"
    with pytest.raises(KeyError):
        render.render_status(STATUS, now=NOW, tunnel="nope", peer="alice")


def test_dump_has_a_line_per_peer_after_its_tunnel() -> None:
    rows = [line.split("\t") for line in render.render_dump(STATUS).split("\n")]
    assert [(r[0], len(r)) for r in rows] == [
        ("plain", len(render.DUMP_COLUMNS)), ("vpn", len(render.DUMP_COLUMNS)),
        ("vpn", len(render.PEER_DUMP_COLUMNS)), ("vpn", len(render.PEER_DUMP_COLUMNS))]
    assert len(render.PEER_DUMP_COLUMNS) != len(render.DUMP_COLUMNS)  # how to tell them apart
    alice = dict(zip(render.PEER_DUMP_COLUMNS, rows[2], strict=True))
    assert alice == {"tunnel": "vpn", "peer": "alice", "state": "active", "public_key": "AAAA",
                     "endpoint": "198.51.100.9:4000", "allowed_ips": "10.8.0.2/32,fd08::2/128",
                     "latest_handshake": str(int(NOW - 12)), "rx_bytes": "2048",
                     "tx_bytes": "1024", "rx_packets": "2", "tx_packets": "1", "drops": "3",
                     "keepalive": "25", "enabled": "yes"}
    bob = dict(zip(render.PEER_DUMP_COLUMNS, rows[3], strict=True))
    assert (bob["endpoint"], bob["allowed_ips"], bob["latest_handshake"], bob["enabled"]) == (
        "(none)", "(none)", "0", "no")
    assert render.render_dump(STATUS, tunnel="plain") == "\t".join(
        render.dump_row("plain", STATUS["tunnels"]["plain"]))


def test_readme_documents_every_peer_dump_column() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### tundctl dump", 1)[1].split("\n### ", 1)[0]
    for column in render.PEER_DUMP_COLUMNS:
        assert f"`{column}`" in section, column
    # how a script tells the lines apart: the field counts README gives are the real ones
    assert f"; {len(render.PEER_DUMP_COLUMNS)} fields, a tunnel's line" in " ".join(
        section.split())
    assert f"has {len(render.DUMP_COLUMNS)})" in " ".join(section.split())
    assert f"NF == {len(render.DUMP_COLUMNS)} " in section


def test_metrics_have_per_peer_series() -> None:
    text = metrics.exposition(STATUS).decode()
    assert 'tund_peer_rx_bytes_total{peer="alice",tunnel="vpn"} 2048.0' in text
    assert 'tund_peer_tx_packets_total{peer="alice",tunnel="vpn"} 1.0' in text
    assert 'tund_peer_rx_bytes_total{peer="bob",tunnel="vpn"} 0.0' in text
    assert 'tund_peer_drops_total{cause="not_allowed",peer="alice",tunnel="vpn"} 3.0' in text
    assert ('tund_peer_latest_handshake_timestamp_seconds{peer="alice",tunnel="vpn"} '
            '1.699999988e+09') in text
    assert 'tund_peer_active{peer="alice",tunnel="vpn"} 1.0' in text
    assert 'tund_peer_active{peer="bob",tunnel="vpn"} 0.0' in text
    assert 'tund_peer_latest_handshake_timestamp_seconds{peer="bob"' not in text
    assert 'tunnel="plain"' not in text.split("tund_peer_", 1)[1]
    assert 'tund_tunnel_rx_bytes_total{tunnel="vpn"} 3072.0' in text  # unchanged
