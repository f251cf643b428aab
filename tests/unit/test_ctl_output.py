"""tundctl's script-facing output: dump rows, the status schema, config and peer-config text."""

from __future__ import annotations

import asyncio
import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tund import config, keys
from tund.config import Config, parse_text
from tund.control import status_schema
from tund.ctl import confout, render
from tund.daemon import specs
from tund.daemon.engine import Engine
from tund.errors import ConfigError
from tund.supervise.runner import Limits, TunnelRunner

NOW = 1_700_000_000.0

STATUS: dict[str, Any] = {
    "schema": 1,
    "tunnels": {
        "wan0": {"interface": "tun0", "transport": "udp", "role": "listen",
                 "endpoint": "0.0.0.0:55555", "encryption": "wireguard", "state": "up",
                 "pid": 4321, "restarts": 1, "last_error": None, "peer": "192.0.2.1:40000",
                 "rx_packets": 100, "rx_bytes": 1_268_000, "tx_packets": 50, "tx_bytes": 3482,
                 "drops": {"queue_full": 3, "oversize": 2}, "errors": 0, "since": NOW - 5.5,
                 "latest_handshake": NOW - 5},
        "lan1": {"interface": "tap1", "transport": "tcp", "role": "remote",
                 "endpoint": "example.net:55555", "encryption": "none", "state": "backoff",
                 "restarts": 4, "last_error": "connection\trefused\nby peer", "pid": None},
    },
}


# --------------------------------------------------------------------------- dump


def test_dump_lines_fixed_columns_and_sentinels() -> None:
    lines = render.render_dump(STATUS).split("\n")
    rows = [line.split("\t") for line in lines]
    assert all(len(r) == len(render.DUMP_COLUMNS) for r in rows)
    assert [r[0] for r in rows] == ["lan1", "wan0"]  # name order
    lan = dict(zip(render.DUMP_COLUMNS, rows[0], strict=True))
    wan = dict(zip(render.DUMP_COLUMNS, rows[1], strict=True))
    assert wan == {"tunnel": "wan0", "interface": "tun0", "state": "up", "transport": "udp",
                   "role": "listen", "endpoint": "0.0.0.0:55555", "peer": "192.0.2.1:40000",
                   "encryption": "wireguard", "latest_handshake": str(int(NOW - 5)),
                   "rx_bytes": "1268000", "tx_bytes": "3482", "rx_packets": "100",
                   "tx_packets": "50", "drops": "5", "errors": "0", "restarts": "1",
                   "pid": "4321", "since": str(int(NOW - 5.5)), "last_error": "(none)"}
    assert lan["peer"] == "(none)" and lan["encryption"] == "off"
    assert lan["latest_handshake"] == "0" and lan["pid"] == "0" and lan["rx_bytes"] == "0"
    assert lan["last_error"] == "connection refused by peer"  # no tab or newline leaks


def test_dump_one_tunnel_and_unknown() -> None:
    assert render.render_dump(STATUS, tunnel="wan0").startswith("wan0\t")
    assert "\n" not in render.render_dump(STATUS, tunnel="wan0")
    with pytest.raises(KeyError):
        render.render_dump(STATUS, tunnel="nope")
    assert render.render_dump({}) == ""


def test_status_shows_pending_handshake_and_ignores_schema() -> None:
    st = {"schema": 1, "tunnels": {"w": {"state": "connecting", "encryption": "wireguard",
                                         "latest_handshake": None}}}
    text = render.render_status(st, now=NOW)
    assert "  latest handshake: (none yet)" in text
    assert "schema" not in text


def test_watch_header() -> None:
    assert render.watch_header(2, NOW).startswith("Every 2s: tundctl status    20")
    assert render.watch_header(0.5, NOW).startswith("Every 0.5s: ")


# --------------------------------------------------------------------------- schema


def test_engine_status_has_schema_and_only_documented_fields(tmp_path: Path) -> None:
    """A real Engine.status() (one runner, no worker) uses only documented fields."""
    engine = Engine(tmp_path / "tunnels.toml")
    engine.config = parse_text('[interfaces.tun0]\nmode = "tun"\n[tunnels.t]\n'
                               'interface = "tun0"\nlisten = "127.0.0.1:1"\nencryption = "none"\n')
    t = engine.config.tunnels["t"]
    engine.runners["t"] = TunnelRunner("t", lambda: None, Limits(),  # type: ignore[arg-type,return-value]
                                       specs.describe(t))
    result = asyncio.run(engine.status())
    assert result["schema"] == status_schema.SCHEMA_VERSION == 1
    assert set(result) == set(status_schema.TOP_FIELDS)
    assert set(result["daemon"]) == set(status_schema.DAEMON_FIELDS)
    assert set(result["interfaces"]["tun0"]) == set(status_schema.INTERFACE_FIELDS)
    tunnel = result["tunnels"]["t"]
    required = set(status_schema.TUNNEL_FIELDS) - status_schema.OPTIONAL_TUNNEL_FIELDS
    assert set(tunnel) == required


def test_wireguard_stats_fields_are_documented() -> None:
    """The WireGuard codec's stats() keys are documented; the optional fields are its."""
    import inspect
    import re

    from tund.relay.wireguard.codec import WireGuardCodec
    from tund.relay.wireguard.peer import PeerSession

    # WireGuardCodec.stats returns its PeerSession's peer_stats
    src = inspect.getsource(WireGuardCodec.stats) + inspect.getsource(PeerSession.peer_stats)
    found = set(re.findall(r'"([a-z_]+)":', src))
    assert found <= set(status_schema.TUNNEL_FIELDS), found - set(status_schema.TUNNEL_FIELDS)
    assert found >= status_schema.WIREGUARD_FIELDS


def test_offload_stats_fields_are_documented() -> None:
    import inspect
    import re

    from tund.relay.codec.offload import OffloadCodec

    found = set(re.findall(r'"([a-z_]+)":', inspect.getsource(OffloadCodec.stats)))
    assert found == status_schema.OPTIONAL_TUNNEL_FIELDS - status_schema.WIREGUARD_FIELDS


def test_readme_documents_every_status_field() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Status as JSON", 1)
    assert len(section) == 2, "README.md has no '### Status as JSON' section"
    body = section[1].split("\n## ", 1)[0]
    for table in (status_schema.TOP_FIELDS, status_schema.DAEMON_FIELDS,
                  status_schema.INTERFACE_FIELDS, status_schema.TUNNEL_FIELDS,
                  status_schema.PEER_FIELDS):
        for key in table:
            assert f"`{key}`" in body, f"README status schema does not document {key!r}"
    for column in render.DUMP_COLUMNS:
        assert f"`{column}`" in readme, f"README does not document dump column {column!r}"


# --------------------------------------------------------------------------- config


BASE = """
[daemon]
metrics_listen = "127.0.0.1:9586"

[interfaces.tun0]
mode = "tun"
mtu = 1420
addresses = ["10.235.1.1/24", "fd00:235::1/64"]
routes = ["10.235.50.0/24"]

[interfaces.tap0]
mode = "tap"
addresses = ["10.235.2.254/24"]

[tunnels.wg]
interface = "tun0"
listen = "0.0.0.0:51820"
private_key_file = "{key}"
peer_public_key = "{peer_pub}"
keepalive = 25

[tunnels."lan.b"]
interface = "tap0"
transport = "tcp"
remote = "192.0.2.7:55555"
encryption = "none"
"""


@pytest.fixture
def site(tmp_path: Path) -> tuple[Config, Path, str]:
    key = tmp_path / "wg.key"
    key.write_text(keys.generate_private_key() + "\n")
    key.chmod(0o600)
    peer_priv = keys.generate_private_key()
    path = tmp_path / "tunnels.toml"
    path.write_text(BASE.replace("{key}", str(key))
                    .replace("{peer_pub}", keys.public_key(peer_priv)))
    return config.load(path), key, peer_priv


def test_effective_config_round_trips_with_defaults(site: tuple[Config, Path, str]) -> None:
    cfg, key, _ = site
    text = confout.effective_toml(cfg, ["/x/tunnels.toml"])
    assert text.startswith("# tund effective configuration")
    data = tomllib.loads(text)
    assert data["daemon"]["ping_timeout"] == 5.0  # a default filled in
    assert data["tunnels"]["wg"]["transport"] == "udp"
    assert data["tunnels"]["wg"]["private_key_file"] == str(key)
    assert "mtu" not in data["interfaces"]["tap0"]  # unset: left out
    assert parse_text(text) == cfg
    assert key.read_text().strip() not in text  # key contents never printed


@pytest.mark.parametrize(("address", "taken", "expected"), [
    ("10.0.0.1/24", [], "10.0.0.2/24"),
    ("10.0.0.254/24", [], "10.0.0.1/24"),        # wraps, skips .255 and .0
    ("10.0.0.1/24", ["10.0.0.2"], "10.0.0.3/24"),
    ("10.0.0.0/31", [], "10.0.0.1/31"),
    ("10.0.0.1/31", [], "10.0.0.0/31"),
    ("10.0.0.1/32", [], "10.0.0.2/32"),
    ("fd00::1/64", [], "fd00::2/64"),
    ("fd00::ffff:ffff:ffff:ffff/64", [], "fd00::1/64"),
])
def test_mirror_address(address: str, taken: list[str], expected: str) -> None:
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = {
        ipaddress.ip_address(t) for t in taken}
    assert confout.mirror_address(address, ips) == expected


@pytest.mark.parametrize(("address", "expected"), [
    ("10.0.0.2/24", "10.0.0.1/24"),   # the connecting end .2 proposes the listener's .1
    ("10.0.0.1/24", "10.0.0.254/24"),  # wraps, skips .0 and .255
    ("10.0.0.1/31", "10.0.0.0/31"),
    ("10.0.0.2/32", "10.0.0.1/32"),
    ("fd00::2/64", "fd00::1/64"),
])
def test_mirror_address_before(address: str, expected: str) -> None:
    assert confout.mirror_address(address, set(), before=True) == expected


def test_mirror_address_full_subnet() -> None:
    with pytest.raises(ValueError, match="no free address"):
        confout.mirror_address("10.0.0.1/30", {ipaddress.ip_address("10.0.0.2")})


def _fill(text: str, key_file: Path) -> str:
    return text.replace('"/etc/tund/keys/wg.key"', f'"{key_file}"')


def test_peer_config_of_a_listening_wireguard_tunnel(site: tuple[Config, Path, str],
                                                     tmp_path: Path) -> None:
    cfg, key, peer_priv = site
    mine = keys.public_key(key.read_text().strip())
    text = confout.peer_toml(cfg, "wg", endpoint="203.0.113.5", public_key=mine)
    peer_key = tmp_path / "peer.key"
    peer_key.write_text(peer_priv + "\n")
    peer_key.chmod(0o600)
    peer_path = tmp_path / "peer.toml"
    peer_path.write_text(_fill(text, peer_key))
    peer = config.load(peer_path)  # valid once the key file exists
    t = peer.tunnels["wg"]
    assert (t.role, t.remote, t.transport, t.keepalive) == ("remote", "203.0.113.5:51820",
                                                            "udp", 25)
    assert t.peer_public_key == mine
    assert keys.public_key(peer_priv) == cfg.tunnels["wg"].peer_public_key
    iface = peer.interfaces["tun0"]
    assert iface.addresses == ("10.235.1.2/24", "fd00:235::2/64")
    assert iface.mtu == 1420 and iface.routes == ()
    assert "10.235.50.0/24" in text  # our routes are mentioned, not copied
    assert set(peer.tunnels) == {"wg"}


def test_peer_config_placeholders_are_refused_until_filled(site: tuple[Config, Path, str],
                                                           tmp_path: Path) -> None:
    cfg, _, _ = site
    text = confout.peer_toml(cfg, "wg", public_key=None, key_hint="unreadable")
    assert "FILL IN" in text and confout.PLACEHOLDER_HOST in text
    with pytest.raises(ConfigError) as e:
        parse_text(text)
    where = str(e.value)
    assert "tunnels.wg.remote" in where


def test_peer_config_of_a_connecting_tcp_tunnel(site: tuple[Config, Path, str]) -> None:
    cfg, _, _ = site
    text = confout.peer_toml(cfg, "lan.b")
    peer = parse_text(text)
    t = peer.tunnels["lan.b"]
    assert (t.role, t.listen, t.transport, t.encryption) == ("listen", "0.0.0.0:55555",
                                                             "tcp", "none")
    assert peer.interfaces["tap0"].mode == "tap"
    # the connecting end proposes the address before its own (issue 15.13): the one a
    # listener's peer-config would have given it .254 from
    assert peer.interfaces["tap0"].addresses == ("10.235.2.253/24",)


PEERS = """\
[interfaces.wg0]
mode = "tun"

[tunnels.vpn]
interface = "wg0"
private_key_file = "{key}"

[tunnels.vpn.peers.alice]
public_key = "{a}"
allowed_ips = ["10.8.0.2/32", "fd08::2/128"]
endpoint = "[2001:db8::5]:51820"
keepalive = 25

[tunnels.vpn.peers.bob]
public_key = "{b}"
enabled = false

[tunnels.empty]
interface = "wg1"
private_key_file = "{key}"

[tunnels.empty.peers]

[interfaces.wg1]
mode = "tun"
"""


def test_effective_config_with_peers_round_trips(site: tuple[Config, Path, str]) -> None:
    """issue 17: peers are shown per peer, the single-peer keys (keepalive) are not, and
    the output is a valid config equal to the input."""
    _, key, _ = site
    text = PEERS.format(key=key, a=keys.public_key(keys.generate_private_key()),
                        b=keys.public_key(keys.generate_private_key()))
    cfg = parse_text(text)
    out = confout.effective_toml(cfg, ["/x/tunnels.toml"])
    data = tomllib.loads(out)
    vpn = data["tunnels"]["vpn"]
    assert "keepalive" not in vpn and "peer_public_key" not in vpn and "listen" not in vpn
    assert vpn["peers"]["alice"]["allowed_ips"] == ["10.8.0.2/32", "fd08::2/128"]
    assert vpn["peers"]["alice"]["keepalive"] == 25
    assert vpn["peers"]["bob"]["enabled"] is False
    assert data["tunnels"]["empty"]["peers"] == {}
    assert parse_text(out) == cfg


def test_peer_config_of_a_peers_tunnel_is_refused(site: tuple[Config, Path, str]) -> None:
    _, key, _ = site
    cfg = parse_text(PEERS.format(key=key, a=keys.public_key(keys.generate_private_key()),
                                  b=keys.public_key(keys.generate_private_key())))
    with pytest.raises(ValueError, match="has a peers table"):
        confout.peer_toml(cfg, "vpn")
