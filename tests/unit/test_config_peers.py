"""Many peers per tunnel (issue 17): the ``[tunnels.T.peers.NAME]`` tables, their drop-ins
and every located error of their validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tund import keys
from tund.config import ANY_PORT, PeerConfig, load, parse_text
from tund.errors import ConfigError, ConfigIssue

PUB_A = keys.public_key(keys.generate_private_key())
PUB_B = keys.public_key(keys.generate_private_key())
PUB_C = keys.public_key(keys.generate_private_key())


def doc(*lines: str) -> str:
    """A TOML document whose line N is ``lines[N-1]``."""
    return "\n".join(lines) + "\n"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    k = tmp_path / "vpn.key"
    k.write_text(keys.generate_private_key() + "\n")
    k.chmod(0o600)
    return k


def head(key: Path, *extra: str) -> tuple[str, ...]:
    """Lines 1-6: an interface and a peers tunnel; ``extra`` goes on lines 7+."""
    return ('[interfaces.wg0]', 'mode = "tun"', '[tunnels.vpn]', 'interface = "wg0"',
            f'private_key_file = "{key}"', 'listen = "0.0.0.0:51820"', *extra)


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as e:
        parse_text(text, "t.toml")
    return e.value.issues


def one(text: str) -> ConfigIssue:
    found = issues_of(text)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- valid forms


def test_full_peer_parses_with_every_key(key: Path, tmp_path: Path) -> None:
    psk = tmp_path / "alice.psk"
    psk.write_text(keys.generate_psk())
    psk.chmod(0o600)
    cfg = parse_text(doc(*head(key, '[tunnels.vpn.peers.alice-laptop]',
                                f'public_key = "{PUB_A}"',
                                'allowed_ips = ["10.8.0.2/32", "fd08::2/128"]',
                                'endpoint = "203.0.113.5:51820"',
                                f'preshared_key_file = "{psk}"', 'keepalive = 25',
                                'enabled = false')))
    t = cfg.tunnels["vpn"]
    assert t.peers == {"alice-laptop": PeerConfig(
        public_key=PUB_A, allowed_ips=("10.8.0.2/32", "fd08::2/128"),
        endpoint="203.0.113.5:51820", preshared_key_file=str(psk), keepalive=25,
        enabled=False)}
    assert t.peers["alice-laptop"].endpoint_address == ("203.0.113.5", 51820)
    assert t.enabled_peers == {}


def test_peer_defaults_and_endpoint_forms(key: Path) -> None:
    cfg = parse_text(doc(*head(key, '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"',
                                '[tunnels.vpn.peers.b]', f'public_key = "{PUB_B}"',
                                'endpoint = "[2001:db8::1]:51820"',
                                '[tunnels.vpn.peers.c]', f'public_key = "{PUB_C}"',
                                'endpoint = "vpn.example.org:1"')))
    peers = cfg.tunnels["vpn"].peers
    assert peers is not None
    a = peers["a"]
    assert (a.allowed_ips, a.endpoint, a.preshared_key_file, a.keepalive, a.enabled) == (
        (), None, None, 0, True)
    assert a.endpoint_address is None
    assert peers["b"].endpoint_address == ("2001:db8::1", 51820)
    assert peers["c"].endpoint_address == ("vpn.example.org", 1)
    assert list(cfg.tunnels["vpn"].enabled_peers) == ["a", "b", "c"]


def test_without_listen_the_kernel_picks_the_port(key: Path) -> None:
    lines = [ln for ln in head(key) if not ln.startswith("listen")]
    cfg = parse_text(doc(*lines, '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"'))
    t = cfg.tunnels["vpn"]
    assert t.listen is None and t.remote is None
    assert (t.role, t.endpoint) == ("listen", ANY_PORT) == ("listen", ("0.0.0.0", 0))
    assert t.endpoint_text == "0.0.0.0:0"  # status shows a string, as for every tunnel


def test_listen_with_peers_is_kept(key: Path) -> None:
    cfg = parse_text(doc(*head(key, "[tunnels.vpn.peers]")))
    t = cfg.tunnels["vpn"]
    assert t.peers == {} and (t.role, t.endpoint) == ("listen", ("0.0.0.0", 51820))
    assert t.endpoint_text == "0.0.0.0:51820"


def test_single_peer_form_is_unchanged(key: Path) -> None:
    cfg = parse_text(doc(*head(key, f'peer_public_key = "{PUB_A}"')))
    t = cfg.tunnels["vpn"]
    assert t.peers is None and t.enabled_peers == {}
    assert (t.role, t.endpoint) == ("listen", ("0.0.0.0", 51820))


def test_nested_prefixes_of_one_peer_and_disabled_peers_are_not_conflicts(key: Path) -> None:
    parse_text(doc(*head(key, '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"',
                         'allowed_ips = ["10.8.0.0/24", "10.8.0.7/32", "0.0.0.0/0"]',
                         '[tunnels.vpn.peers.b]', f'public_key = "{PUB_A}"',
                         'allowed_ips = ["10.8.0.0/24", "0.0.0.0/0"]', "enabled = false",
                         '[tunnels.vpn.peers.c]', f'public_key = "{PUB_C}"',
                         'allowed_ips = ["10.9.0.0/24", "fd08::/64", "::/0"]')))


def test_one_default_route_may_overlap_the_others(key: Path) -> None:
    """0.0.0.0/0 on one peer takes what no other peer has (longest prefix wins)."""
    parse_text(doc(*head(key, '[tunnels.vpn.peers.hub]', f'public_key = "{PUB_A}"',
                         'allowed_ips = ["0.0.0.0/0", "::/0"]',
                         '[tunnels.vpn.peers.b]', f'public_key = "{PUB_B}"',
                         'allowed_ips = ["10.8.0.2/32", "fd08::2/128"]')))


# ---------------------------------------------------------------- located errors


def test_duplicate_public_key_names_both_peers(key: Path) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.alice]', f'public_key = "{PUB_A}"',
                      '[tunnels.vpn.peers.bob]', f'public_key = "{PUB_A}"')))
    assert (i.file, i.line, i.path) == ("t.toml", 10, "tunnels.vpn.peers.bob.public_key")
    assert 'also the public key of peer "alice"' in i.message


def test_own_public_key_as_a_peer_is_refused(key: Path) -> None:
    own = keys.public_key(key.read_text().strip())
    i = one(doc(*head(key, '[tunnels.vpn.peers.me]', f'public_key = "{own}"')))
    assert (i.line, i.path) == (8, "tunnels.vpn.peers.me.public_key")
    assert "this tunnel's own public key" in i.message


@pytest.mark.parametrize(("value", "fragment"), [
    ('"abc"', "public_key"),
    ("1", "must be a string"),
])
def test_bad_public_key(key: Path, value: str, fragment: str) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.a]', f"public_key = {value}")))
    assert (i.line, i.path) == (8, "tunnels.vpn.peers.a.public_key")
    assert fragment in i.message


def test_missing_public_key(key: Path) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.a]', 'allowed_ips = ["10.8.0.2/32"]')))
    assert (i.line, i.path) == (7, "tunnels.vpn.peers.a.public_key")
    assert i.message == "required key is missing"


def test_overlapping_prefixes_name_both_peers_and_prefixes(key: Path) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.alice]', f'public_key = "{PUB_A}"',
                      'allowed_ips = ["10.8.0.0/24"]',
                      '[tunnels.vpn.peers.bob]', f'public_key = "{PUB_B}"',
                      'allowed_ips = ["fd08::2/128", "10.8.0.3/32"]')))
    assert (i.line, i.path) == (12, "tunnels.vpn.peers.bob.allowed_ips[1]")
    assert i.message == ('overlaps 10.8.0.0/24 of peer "alice" (t.toml:9): each address may '
                         'belong to one peer only (got "10.8.0.3/32")')


def test_equal_prefixes_ipv6(key: Path) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.alice]', f'public_key = "{PUB_A}"',
                      'allowed_ips = ["fd08::/64"]',
                      '[tunnels.vpn.peers.bob]', f'public_key = "{PUB_B}"',
                      'allowed_ips = ["fd08::/64"]')))
    assert i.path == "tunnels.vpn.peers.bob.allowed_ips[0]"
    assert 'overlaps fd08::/64 of peer "alice"' in i.message


def test_host_bits_set(key: Path) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"',
                      'allowed_ips = ["10.8.0.1/24"]')))
    assert (i.line, i.path) == (9, "tunnels.vpn.peers.a.allowed_ips[0]")
    assert "host bits set (expected a network, like 10.8.0.0/24)" in i.message


@pytest.mark.parametrize("zero", ["0.0.0.0/0", "::/0"])
def test_default_route_on_two_peers(key: Path, zero: str) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"',
                      f'allowed_ips = ["{zero}"]',
                      '[tunnels.vpn.peers.b]', f'public_key = "{PUB_B}"',
                      f'allowed_ips = ["10.1.0.0/16", "{zero}"]')))
    assert (i.line, i.path) == (12, "tunnels.vpn.peers.b.allowed_ips[1]")
    assert f'{zero} (every address) is already peer "a"' in i.message


@pytest.mark.parametrize(("line", "fragment"), [
    ('endpoint = "10.0.0.1"', 'expected "HOST:PORT"'),
    ('endpoint = "fd00::1:5"', "must be written in brackets"),
    ("keepalive = 65536", "must be at most 65535"),
    ("keepalive = -1", "must be at least 0"),
    ('enabled = "yes"', "must be true or false"),
    ('allowed_ips = "10.8.0.2/32"', "must be an array"),
    ('allowed_ips = ["10.8.0.2/32", "10.8.0.2/32"]', "lists the prefix 10.8.0.2/32 twice"),
    ("colour = 1", "unknown key"),
])
def test_bad_peer_values(key: Path, line: str, fragment: str) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"', line)))
    assert (i.file, i.line) == ("t.toml", 9)
    assert i.path.startswith("tunnels.vpn.peers.a.")
    assert fragment in i.message


def test_bad_peer_name(key: Path) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers."a b"]', f'public_key = "{PUB_A}"')))
    assert (i.line, i.path) == (7, 'tunnels.vpn.peers."a b"')
    assert "peer name must be 1 to 64 of" in i.message


def test_peers_and_single_peer_keys_are_exclusive(key: Path) -> None:
    found = issues_of(doc(*head(key, f'peer_public_key = "{PUB_B}"',
                                'remote = "192.0.2.1:5"', "keepalive = 5",
                                '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"')))
    assert [(i.line, i.path) for i in found] == [
        (7, "tunnels.vpn.peer_public_key"),
        (8, "tunnels.vpn.remote"),
        (9, "tunnels.vpn.keepalive"),
    ]
    assert all("not with a peers table" in i.message for i in found)
    assert "set each peer's public_key instead" in found[0].message


def test_peers_need_wireguard(key: Path) -> None:
    i = one(doc('[interfaces.wg0]', 'mode = "tun"', '[tunnels.vpn]', 'interface = "wg0"',
                'encryption = "none"', '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"'))
    assert (i.line, i.path) == (3, "tunnels.vpn.peers")
    assert 'needs encryption = "wireguard"' in i.message
    assert 'got encryption = "none"' in i.message


def test_peers_over_tcp_are_refused_saying_why(key: Path) -> None:
    i = one(doc(*head(key, 'transport = "tcp"', '[tunnels.vpn.peers.a]',
                      f'public_key = "{PUB_A}"')))
    assert (i.line, i.path) == (7, "tunnels.vpn.transport")
    assert 'transport = "udp" only' in i.message and "one socket serves every peer" in i.message


def test_peers_still_need_the_private_key(key: Path) -> None:
    lines = [ln for ln in head(key) if not ln.startswith("private_key_file")]
    i = one(doc(*lines, '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"'))
    assert i.path == "tunnels.vpn.private_key_file"


def test_all_errors_at_once(key: Path) -> None:
    found = issues_of(doc(*head(key, 'transport = "tcp"',
                                '[tunnels.vpn.peers.a]', 'public_key = "short"',
                                'allowed_ips = ["10.8.0.1/24", "10.9.0.0/16"]',
                                '[tunnels.vpn.peers.b]', f'public_key = "{PUB_B}"',
                                'allowed_ips = ["10.9.1.0/24"]', "keepalive = 99999")))
    assert [i.path for i in found] == [
        "tunnels.vpn.transport", "tunnels.vpn.peers.a.public_key",
        "tunnels.vpn.peers.a.allowed_ips[0]", "tunnels.vpn.peers.b.allowed_ips[0]",
        "tunnels.vpn.peers.b.keepalive"]


def test_relative_psk_path_is_resolved_against_its_file(tmp_path: Path, key: Path) -> None:
    (tmp_path / "tunnels.d").mkdir()
    (tmp_path / "keys").mkdir()
    psk = tmp_path / "tunnels.d" / "b.psk"
    psk.write_text(keys.generate_psk())
    psk.chmod(0o600)
    (tmp_path / "tunnels.toml").write_text(doc(*head(key)))
    (tmp_path / "tunnels.d" / "50-b.toml").write_text(doc(
        "[tunnels.vpn.peers.b]", f'public_key = "{PUB_B}"', 'preshared_key_file = "b.psk"'))
    cfg = load(tmp_path / "tunnels.toml")
    peers = cfg.tunnels["vpn"].peers
    assert peers is not None and peers["b"].preshared_key_file == str(psk)


def test_psk_file_is_checked_per_peer(key: Path, tmp_path: Path) -> None:
    i = one(doc(*head(key, '[tunnels.vpn.peers.a]', f'public_key = "{PUB_A}"',
                      f'preshared_key_file = "{tmp_path / "nope"}"')))
    assert (i.line, i.path) == (9, "tunnels.vpn.peers.a.preshared_key_file")
    assert "cannot open preshared key" in i.message


# ---------------------------------------------------------------- drop-ins


def _tree(tmp_path: Path, key: Path, main: tuple[str, ...],
          **dropins: tuple[str, ...]) -> Path:
    d = tmp_path / "tunnels.d"
    d.mkdir(exist_ok=True)
    (tmp_path / "tunnels.toml").write_text(doc(*main))
    for name, lines in dropins.items():
        (d / f"{name}.toml").write_text(doc(*lines))
    return tmp_path / "tunnels.toml"


def test_a_peer_in_a_drop_in_of_its_own_is_merged(tmp_path: Path, key: Path) -> None:
    path = _tree(tmp_path, key, head(key, "[tunnels.vpn.peers.a]", f'public_key = "{PUB_A}"'),
                 **{"50-bob": ("[tunnels.vpn.peers.bob]", f'public_key = "{PUB_B}"',
                               'allowed_ips = ["10.8.0.3/32"]'),
                    "60-carol": ("[tunnels.vpn.peers.carol]", f'public_key = "{PUB_C}"')})
    t = load(path).tunnels["vpn"]
    assert t.peers is not None and list(t.peers) == ["a", "bob", "carol"]
    assert t.peers["bob"].allowed_ips == ("10.8.0.3/32",)


def test_peers_only_drop_in_before_the_tunnel_merges_too(tmp_path: Path, key: Path) -> None:
    path = _tree(tmp_path, key, ("[interfaces.wg0]", 'mode = "tun"'),
                 **{"10-bob": ("[tunnels.vpn.peers.bob]", f'public_key = "{PUB_B}"'),
                    "50-vpn": head(key)[2:]})
    t = load(path).tunnels["vpn"]
    assert t.peers is not None and list(t.peers) == ["bob"] and t.interface == "wg0"


def test_a_peer_defined_twice_names_both_files(tmp_path: Path, key: Path) -> None:
    bob = ("# bob", "[tunnels.vpn.peers.bob]", f'public_key = "{PUB_B}"')
    path = _tree(tmp_path, key, head(key), **{"50-bob": bob, "60-bob-again": bob})
    with pytest.raises(ConfigError) as e:
        load(path)
    (i,) = e.value.issues
    first = tmp_path / "tunnels.d" / "50-bob.toml"
    again = tmp_path / "tunnels.d" / "60-bob-again.toml"
    assert (i.file, i.line, i.path) == (str(again), 2, "tunnels.vpn.peers.bob")
    assert i.message == f"peer defined twice: first in {first}:2, again in {again}"


def test_errors_in_a_peer_drop_in_are_located_in_it(tmp_path: Path, key: Path) -> None:
    path = _tree(tmp_path, key, head(key, "[tunnels.vpn.peers.a]", f'public_key = "{PUB_A}"',
                                     'allowed_ips = ["10.8.0.0/24"]'),
                 **{"50-bob": ("[tunnels.vpn.peers.bob]", f'public_key = "{PUB_B}"',
                               'allowed_ips = ["10.8.0.9/32"]', "keepalive = true")})
    with pytest.raises(ConfigError) as e:
        load(path)
    dropin = str(tmp_path / "tunnels.d" / "50-bob.toml")
    assert [(i.file, i.line, i.path) for i in e.value.issues] == [
        (dropin, 3, "tunnels.vpn.peers.bob.allowed_ips[0]"),
        (dropin, 4, "tunnels.vpn.peers.bob.keepalive"),
    ]
    assert e.value.issues[0].message.startswith(f'overlaps 10.8.0.0/24 of peer "a" ({path}:9)')


def test_a_tunnel_defined_twice_is_still_an_error(tmp_path: Path, key: Path) -> None:
    path = _tree(tmp_path, key, head(key, "[tunnels.vpn.peers]"),
                 **{"50-vpn": head(key, "[tunnels.vpn.peers]")[2:]})
    with pytest.raises(ConfigError) as e:
        load(path)
    assert [i.message.split(":")[0] for i in e.value.issues] == ["name defined twice"]


def test_peers_of_a_tunnel_defined_nowhere_is_one_clear_issue(tmp_path: Path,
                                                              key: Path) -> None:
    path = _tree(tmp_path, key, head(key)[:2],
                 **{"50-bob": ("# bob", "[tunnels.vpn.peers.bob]", f'public_key = "{PUB_B}"')})
    with pytest.raises(ConfigError) as e:
        load(path)
    (i,) = e.value.issues
    assert (i.file, i.line, i.path) == (str(tmp_path / "tunnels.d" / "50-bob.toml"), 2,
                                        "tunnels.vpn.peers.bob")
    assert i.message.startswith('peers of tunnel "vpn", but no file defines the tunnel itself')
