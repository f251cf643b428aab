"""The shipped configs: etc/tund/tunnels.toml documents every key; the demo sites parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from tund.config import (
    Config,
    DaemonConfig,
    InterfaceConfig,
    PeerConfig,
    TunnelConfig,
    load,
    parse_text,
)

ETC = Path(__file__).resolve().parents[2] / "etc" / "tund"
EXAMPLE = ETC / "tunnels.toml"
# A commented-out setting is "#key = value" or "#[table]"; prose is "# text".
SETTING_RE = re.compile(r"^#(?=[A-Za-z_\[])", re.M)


def uncommented(text: str) -> str:
    return SETTING_RE.sub("", text)


def test_example_as_shipped_is_valid_and_creates_nothing() -> None:
    cfg = load(EXAMPLE)
    assert cfg == Config()


def test_example_settings_are_commented_consistently() -> None:
    """Every commented setting starts with '#' directly, so uncommenting finds it."""
    for no, line in enumerate(EXAMPLE.read_text().splitlines(), 1):
        if re.match(r"^#\s+[a-z_]+ = ", line) or re.match(r"^#\s+\[[^\]]+\]\s*$", line):
            pytest.fail(f"{EXAMPLE}:{no}: write settings as '#key = value': {line!r}")


def test_every_setting_uncommented_is_valid_and_covers_the_schema(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncommenting every setting gives a valid config that sets every field of every model.

    Users, groups and key files named in the example need not exist on this machine, so
    name resolution and registered (key-file) checks are stubbed out here.
    """
    monkeypatch.setattr("tund.config.checks._EXTRA_CHECKS", [])
    monkeypatch.setattr("tund.config.model.resolve_id", lambda value, kind: 1000)
    monkeypatch.setattr("tund.dnsbackend.backend", lambda: "resolvectl")
    cfg = parse_text(uncommented(EXAMPLE.read_text()), str(EXAMPLE))

    def fields_set(models: list[BaseModel]) -> set[str]:
        return set().union(*(m.model_fields_set for m in models))

    assert cfg.model_fields_set == set(Config.model_fields)
    expected: list[tuple[type[BaseModel], list[BaseModel]]] = [
        (DaemonConfig, [cfg.daemon]),
        (InterfaceConfig, list(cfg.interfaces.values())),
        (TunnelConfig, list(cfg.tunnels.values())),
        (PeerConfig, [p for t in cfg.tunnels.values() for p in (t.peers or {}).values()]),
    ]
    for model, instances in expected:
        missing = set(model.model_fields) - fields_set(instances)
        assert not missing, f"{EXAMPLE} does not show {model.__name__} keys {sorted(missing)}"
    assert {i.mode for i in cfg.interfaces.values()} == {"tun", "tap"}
    assert {t.encryption for t in cfg.tunnels.values()} == {"none", "wireguard"}


def test_every_commented_default_is_the_real_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings whose comment calls them the default must match the model's default."""
    monkeypatch.setattr("tund.config.checks._EXTRA_CHECKS", [])
    monkeypatch.setattr("tund.config.model.resolve_id", lambda value, kind: 1000)
    monkeypatch.setattr("tund.dnsbackend.backend", lambda: "resolvectl")
    cfg = parse_text(uncommented(EXAMPLE.read_text()), str(EXAMPLE))
    daemon = cfg.daemon
    for name in ("control_socket", "log_level", "restart_backoff_min", "restart_backoff_max",
                 "crash_limit", "crash_window", "ping_interval", "ping_timeout"):
        assert getattr(daemon, name) == DaemonConfig.model_fields[name].default, name
    tun0 = cfg.interfaces["tun0"]
    for name in ("persist", "packet_info", "multi_queue"):
        assert getattr(tun0, name) == InterfaceConfig.model_fields[name].default, name
    wg0, lan = cfg.tunnels["wg0"], cfg.tunnels["lan"]
    assert (wg0.transport, wg0.encryption) == ("udp", "wireguard")
    assert (lan.reconnect_min, lan.reconnect_max) == (0.2, 10.0)


def test_two_site_examples_parse_and_fit_together(monkeypatch: pytest.MonkeyPatch) -> None:
    # key files: tests/demo.sh makes them
    monkeypatch.setattr("tund.config.checks._EXTRA_CHECKS", [])
    a, b = load(ETC / "examples" / "site-a.toml"), load(ETC / "examples" / "site-b.toml")
    assert a.daemon.control_socket == "/run/tund/site-a.sock"
    assert b.daemon.control_socket == "/run/tund/site-b.sock"
    assert list(a.interfaces) == ["tunsa0"] and list(b.interfaces) == ["tunsb0"]
    assert a.interfaces["tunsa0"].addresses == ("10.241.0.1/24",)
    assert b.interfaces["tunsb0"].addresses == ("10.241.0.2/24",)
    (ta,), (tb,) = a.tunnels.values(), b.tunnels.values()
    assert (ta.interface, tb.interface) == ("tunsa0", "tunsb0")
    assert (ta.role, ta.endpoint) == ("listen", ("10.240.0.1", 51820))
    assert (tb.role, tb.endpoint) == ("remote", ta.endpoint)
    assert ta.transport == tb.transport == "udp"  # the defaults users get
    assert ta.encryption == tb.encryption == "wireguard"
    assert (ta.private_key_file, tb.private_key_file) == ("/etc/tund/keys/site-a.key",
                                                          "/etc/tund/keys/site-b.key")


def test_server_example_with_a_peer_drop_in_passes_check(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """issue 17: server.toml plus server.d/50-bob-phone.toml pass `tundctl check`. Only the
    key files are stubbed (tests/demo.sh-style files need not exist): public keys, PSK
    paths and every peer check still run."""
    from tund import keys
    from tund.ctl import main as ctl

    server_private = bytes(range(1, 33))
    monkeypatch.setattr(keys, "load_private_key_file", lambda path: server_private)
    monkeypatch.setattr(keys, "load_psk_file", lambda path: bytes(32))
    path = ETC / "examples" / "server.toml"
    assert ctl.main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"{path} + 1 drop-in: ok (1 interface, 1 tunnel, 2 peers)\n", "")
    t = load(path).tunnels["vpn"]
    assert t.peers is not None and list(t.peers) == ["alice-laptop", "bob-phone"]
    alice, bob = t.peers["alice-laptop"], t.peers["bob-phone"]
    assert alice.preshared_key_file == "/etc/tund/keys/alice-laptop.psk" and alice.keepalive == 0
    assert bob.allowed_ips == ("10.8.0.3/32", "fd08::3/128") and bob.keepalive == 25
    assert (t.role, t.endpoint) == ("listen", ("0.0.0.0", 51820))
