"""Valid configurations: defaults, normalisation, drop-in merging, equality, properties."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tund.config import (
    Config,
    DaemonConfig,
    InterfaceConfig,
    IssueFactory,
    TunnelConfig,
    check_ifname,
    config_files,
    load,
    parse_endpoint,
    parse_text,
    register_check,
)
from tund.errors import ConfigError, ConfigIssue

MINIMAL = """
[interfaces.tun0]
mode = "tun"

[tunnels.t]
interface = "tun0"
listen = "0.0.0.0:55555"
encryption = "none"
"""


@pytest.fixture
def no_extra_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run without hooks other modules registered (e.g. key-file checks)."""
    monkeypatch.setattr("tund.config.checks._EXTRA_CHECKS", [])


def test_empty_document_is_all_defaults() -> None:
    cfg = parse_text("")
    assert cfg == Config()
    assert cfg.daemon.control_socket == "/run/tund/control.sock"
    assert (cfg.interfaces, cfg.tunnels) == ({}, {})


def test_defaults_are_filled_in() -> None:
    cfg = parse_text(MINIMAL)
    assert cfg.daemon == DaemonConfig()
    assert cfg.daemon.log_level == "info" and cfg.daemon.crash_limit == 10
    iface = cfg.interfaces["tun0"]
    assert iface == InterfaceConfig(mode="tun")
    assert (iface.persist, iface.packet_info, iface.multi_queue) == (True, False, False)
    assert (iface.mtu, iface.txqueuelen, iface.addresses, iface.routes) == (None, None, (), ())
    t = cfg.tunnels["t"]
    assert (t.transport, t.keepalive, t.reconnect_min, t.reconnect_max) == ("udp", 0, 0.2, 10.0)
    assert (t.private_key_file, t.peer_public_key, t.preshared_key_file) == (None, None, None)
    assert t.remote is None


def test_allowed_sources_on_a_listener_are_normalised() -> None:
    text = MINIMAL + 'allowed_sources = ["198.51.100.0/24", "2001:DB8::/32", "192.0.2.7"]\n'
    t = parse_text(text).tunnels["t"]
    assert t.allowed_sources == ("198.51.100.0/24", "2001:db8::/32", "192.0.2.7/32")
    assert parse_text(MINIMAL).tunnels["t"].allowed_sources == ()


def test_encryption_none_needs_no_keys() -> None:
    assert parse_text(MINIMAL).tunnels["t"].encryption == "none"


def test_wireguard_with_keys_passes_the_schema(no_extra_checks: None) -> None:
    cfg = parse_text(MINIMAL.replace('encryption = "none"',
                                     'private_key_file = "/k"\npeer_public_key = "P"'))
    assert cfg.tunnels["t"].encryption == "wireguard"
    assert cfg.tunnels["t"].private_key_file == "/k"


def test_integers_are_accepted_for_seconds() -> None:
    cfg = parse_text(MINIMAL + "reconnect_min = 1\nreconnect_max = 3\n")
    assert cfg.tunnels["t"].reconnect_min == 1.0
    assert isinstance(cfg.tunnels["t"].reconnect_min, float)


def test_values_are_normalised() -> None:
    cfg = parse_text('[interfaces.tap0]\nmode = "tap"\nmac = "02:AB:00:00:00:01"\n'
                     'addresses = ["fd00:0:0::1/64", "10.0.0.1/24"]\nroutes = ["fd01:0::/64"]\n')
    iface = cfg.interfaces["tap0"]
    assert iface.mac == "02:ab:00:00:00:01"
    assert iface.addresses == ("fd00::1/64", "10.0.0.1/24")
    assert iface.routes == ("fd01::/64",)


def test_role_and_endpoint() -> None:
    def tunnel(endpoint: str) -> TunnelConfig:
        text = MINIMAL.replace('listen = "0.0.0.0:55555"', endpoint)
        return parse_text(text).tunnels["t"]

    t = tunnel('listen = "10.1.2.3:4000"')
    assert (t.role, t.endpoint) == ("listen", ("10.1.2.3", 4000))
    t = tunnel('listen = "[::]:55555"')
    assert (t.role, t.endpoint) == ("listen", ("::", 55555))
    t = tunnel('remote = "peer.example.org:443"')
    assert (t.role, t.endpoint) == ("remote", ("peer.example.org", 443))
    t = tunnel('remote = "[fd00::7]:1"')
    assert (t.role, t.endpoint) == ("remote", ("fd00::7", 1))


def test_uid_and_gid_resolve_names_and_numbers() -> None:
    cfg = parse_text('[interfaces.a]\nmode = "tun"\nowner = "root"\ngroup = "root"\n'
                     '[interfaces.b]\nmode = "tun"\nowner = 1234\ngroup = "4321"\n'
                     '[interfaces.c]\nmode = "tun"\n')
    a, b, c = (cfg.interfaces[n] for n in "abc")
    assert (a.uid, a.gid) == (0, 0)
    assert (b.uid, b.gid) == (1234, 4321)
    assert (c.uid, c.gid) == (None, None)


def test_tunnel_for() -> None:
    cfg = parse_text(MINIMAL + '[interfaces.tun1]\nmode = "tun"\n')
    assert cfg.tunnel_for("tun0") == ("t", cfg.tunnels["t"])
    assert cfg.tunnel_for("tun1") is None


def test_models_are_frozen() -> None:
    cfg = parse_text(MINIMAL)
    with pytest.raises(ValidationError):
        setattr(cfg.tunnels["t"], "keepalive", 5)  # noqa: B010
    with pytest.raises(ValidationError):
        setattr(cfg, "daemon", DaemonConfig())  # noqa: B010


# --------------------------------------------------------------------------- equality


def test_equal_configs_compare_equal() -> None:
    """Reload planning compares models: spelling must not matter, values must."""
    a = parse_text(MINIMAL + "reconnect_max = 10\n")
    b = parse_text("""
# same config, written differently
tunnels.t = {encryption="none", listen="0.0.0.0:55555", interface="tun0", reconnect_max=10.0}
[interfaces]
tun0.mode = 'tun'
tun0.persist = true
""")
    assert a == b
    assert a.tunnels["t"] == b.tunnels["t"]
    assert parse_text(MINIMAL.replace("55555", "55556")) != a
    changed = parse_text(MINIMAL.replace('mode = "tun"', 'mode = "tun"\nmtu = 1400'))
    assert changed.tunnels == a.tunnels and changed.interfaces != a.interfaces


def test_normalised_addresses_compare_equal() -> None:
    x = parse_text('[interfaces.i]\nmode = "tun"\naddresses = ["fd00:0::1/64"]\n')
    y = parse_text('[interfaces.i]\nmode = "tun"\naddresses = ["fd00::1/64"]\n')
    assert x == y


# --------------------------------------------------------------------------- drop-ins


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_dropins_are_merged_in_name_order(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", '[daemon]\nlog_level = "debug"\n'
                 '[interfaces.tun0]\nmode = "tun"\n[interfaces.tun1]\nmode = "tun"\n')
    b = write(tmp_path / "tunnels.d" / "20-b.toml",
              '[tunnels.b]\ninterface = "tun1"\nencryption = "none"\nremote = "10.0.0.2:1"\n')
    a = write(tmp_path / "tunnels.d" / "10-a.toml",
              '[tunnels.a]\ninterface = "tun0"\nencryption = "none"\nremote = "10.0.0.1:1"\n'
              "[daemon]\ncrash_limit = 3\n")
    write(tmp_path / "tunnels.d" / "README", "not toml, not read")
    assert config_files(main) == [main, a, b]
    cfg = load(main)
    assert list(cfg.tunnels) == ["a", "b"]
    assert (cfg.daemon.log_level, cfg.daemon.crash_limit) == ("debug", 3)
    assert cfg.tunnels["b"].endpoint == ("10.0.0.2", 1)


def test_load_equals_parse_text_of_the_merged_document(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", '[interfaces.tun0]\nmode = "tun"\n')
    write(tmp_path / "tunnels.d" / "t.toml", MINIMAL.split("\n\n", 1)[1])
    assert load(main) == parse_text(MINIMAL)


# --------------------------------------------------------------------------- helpers & hooks


def test_register_check_hook_issues_are_located(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tund.config.checks._EXTRA_CHECKS", [])

    def hook(raw: Mapping[str, Any], issue: IssueFactory) -> list[ConfigIssue]:
        return [issue(("tunnels", name, "listen"), "hook says no")
                for name in raw.get("tunnels", {})]

    register_check(hook)
    register_check(hook)  # idempotent
    with pytest.raises(ConfigError) as info:
        parse_text(MINIMAL, "m.toml")
    assert [str(i) for i in info.value.issues] == ["m.toml:7: tunnels.t.listen: hook says no"]


def test_a_failing_hook_becomes_an_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tund.config.checks._EXTRA_CHECKS", [])

    def broken(raw: Mapping[str, Any], issue: IssueFactory) -> list[ConfigIssue]:
        raise KeyError("oops")

    register_check(broken)
    with pytest.raises(ConfigError) as info:
        parse_text(MINIMAL, "m.toml")
    (issue,) = info.value.issues
    assert issue.file == "m.toml"
    assert "internal error in check" in issue.message and "KeyError" in issue.message


@pytest.mark.parametrize(("name", "why"), [
    ("eth0", None),
    ("a" * 15, None),
    ("a" * 16, "must be at most 15 bytes (is 16)"),
    ("", "must not be empty"),
    ("..", "must not be '.' or '..'"),
    ("a b", "must not contain whitespace, '/' or ':'"),
    ("a:1", "must not contain whitespace, '/' or ':'"),
])
def test_check_ifname(name: str, why: str | None) -> None:
    assert check_ifname(name) == why


@pytest.mark.parametrize(("text", "hostname", "expected"), [
    ("1.2.3.4:5", False, ("1.2.3.4", 5)),
    ("[fe80::1]:65535", False, ("fe80::1", 65535)),
    ("host-1.example:80", True, ("host-1.example", 80)),
])
def test_parse_endpoint(text: str, hostname: bool, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text, allow_hostname=hostname) == expected


@pytest.mark.parametrize("text", ["1.2.3.4", "1.2.3.4:", ":5", "[::1]5", "[::1:5", "1.2.3.4:x",
                                  "1.2.3.4:٣", "h:5"])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text, allow_hostname=False)


# ------------------------------------------------ relative paths (issue 15.6)


def _key(path: Path) -> Path:
    from tund import keys

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(keys.generate_private_key() + "\n")
    path.chmod(0o600)
    return path


def two_files_with_relative_keys(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A main file and a drop-in, each naming key files relative to itself."""
    from tund import keys

    etc = tmp_path / "etc"
    peer = keys.public_key(keys.generate_private_key())
    main_key, psk, drop_key = (_key(etc / "to-b.key"), _key(etc / "keys" / "psk"),
                               _key(etc / "tunnels.d" / "c.key"))
    main = etc / "tunnels.toml"
    main.write_text(f'[interfaces.tun0]\nmode = "tun"\n[interfaces.tun1]\nmode = "tun"\n'
                    f'[tunnels.b]\ninterface = "tun0"\nlisten = "0.0.0.0:51820"\n'
                    f'private_key_file = "to-b.key"\npreshared_key_file = "keys/psk"\n'
                    f'peer_public_key = "{peer}"\n')
    (etc / "tunnels.d" / "20-c.toml").write_text(
        f'[tunnels.c]\ninterface = "tun1"\nremote = "192.0.2.1:51820"\n'
        f'private_key_file = "c.key"\npeer_public_key = "{peer}"\n')
    return main, main_key, psk, drop_key


def test_relative_key_files_are_resolved_against_the_file_naming_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from another directory (systemd runs the daemon in /): the keys are found
    beside the file that names them. Failed before: 'cannot read' against the cwd."""
    main, main_key, psk, drop_key = two_files_with_relative_keys(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load(main)
    assert cfg.tunnels["b"].private_key_file == str(main_key)
    assert cfg.tunnels["b"].preshared_key_file == str(psk)
    assert cfg.tunnels["c"].private_key_file == str(drop_key)
    monkeypatch.chdir(main.parent.parent)  # a relative path to the main file: the same
    assert load(Path("etc/tunnels.toml")) == cfg


def test_in_memory_text_keeps_relative_paths(no_extra_checks: None) -> None:
    """Text that is not a file has no directory: its paths are left as written."""
    cfg = parse_text(MINIMAL.replace('encryption = "none"', 'private_key_file = "k"\n'
                                     'peer_public_key = "x"'))
    assert cfg.tunnels["t"].private_key_file == "k"
