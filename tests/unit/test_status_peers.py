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
    peers = tunnel_peers(t, {"alice": _reported(), "gone": _reported()}, NOW)
    assert list(peers) == ["alice", "bob"]  # configured ones only, disabled too
    assert peers["alice"] == {
        "public_key": A_KEY, "endpoint": "198.51.100.9:4000",
        "allowed_ips": ["10.8.0.2/32", "fd08::2/128"], "keepalive": 25, "enabled": True,
        "latest_handshake": NOW - 10, "state": "active", "rx_bytes": 2048, "tx_bytes": 1024,
        "rx_packets": 2, "tx_packets": 1, "drops": {"not_allowed": 3}}
    assert peers["bob"] == {
        "public_key": B_KEY, "endpoint": None, "allowed_ips": ["10.8.0.3/32"],
        "keepalive": 0, "enabled": False, "latest_handshake": None, "state": "never",
        "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0, "drops": {}}
    # no worker data yet: the configured endpoint
    assert tunnel_peers(t, {}, NOW)["alice"]["endpoint"] == "203.0.113.5:51820"
    assert set(peers["alice"]) == set(status_schema.PEER_FIELDS)


def test_engine_status_of_a_peers_tunnel_has_documented_peer_fields(tmp_path: Path,
                                                                     cfg: Config) -> None:
    engine = Engine(tmp_path / "tunnels.toml")
    engine.config = cfg
    t = engine.config.tunnels["vpn"]
    engine.runners["vpn"] = TunnelRunner("vpn", lambda: None, Limits(),  # type: ignore[arg-type,return-value]
                                         engine._describe("vpn", t))
    result = asyncio.run(engine.status())
    peers = result["tunnels"]["vpn"]["peers"]
    assert set(peers) == {"alice", "bob"}
    for p in peers.values():
        assert set(p) == set(status_schema.PEER_FIELDS)
    assert peers["alice"]["state"] == "never" and peers["alice"]["rx_bytes"] == 0
