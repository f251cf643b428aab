"""Reload planning: the least disruptive action for each kind of change."""

from __future__ import annotations

from pathlib import Path

import pytest

from tund import keys
from tund.config import parse_text
from tund.daemon.keyfiles import KeyMaterial, read_keys
from tund.daemon.plan import PeerChange, Plan, TunnelChange, diff

TUN1 = '[interfaces.tun1]\nmode = "tun"'
TUNNEL_B = '[tunnels.b]\ninterface = "tun1"\nremote = "192.0.2.1:5000"\nencryption = "none"\n'

BASE = """
[interfaces.tun0]
mode = "tun"
addresses = ["10.0.0.1/24"]

[interfaces.tun1]
mode = "tun"

[tunnels.a]
interface = "tun0"
listen = "0.0.0.0:5000"
encryption = "none"

[tunnels.b]
interface = "tun1"
remote = "192.0.2.1:5000"
encryption = "none"
"""


def _plan(new_text: str, old_text: str = BASE, old_keys=None, new_keys=None):  # type: ignore[no-untyped-def]
    return diff(parse_text(old_text), parse_text(new_text), old_keys, new_keys)


def test_identical_config_is_a_noop() -> None:
    p = _plan(BASE)
    assert p.is_noop
    assert p.summary()["unchanged"] == {"interfaces": ["tun0", "tun1"], "tunnels": ["a", "b"]}


def test_first_start_adds_everything() -> None:
    p = diff(None, parse_text(BASE))
    assert p.summary()["added"] == {"interfaces": ["tun0", "tun1"], "tunnels": ["a", "b"]}


def test_address_change_is_in_place_and_keeps_the_worker() -> None:
    p = _plan(BASE.replace("10.0.0.1/24", "10.0.0.2/24"))
    ch = {c.name: c for c in p.interfaces}
    assert ch["tun0"].action == "reconfigure"
    assert "addresses" in ch["tun0"].reason
    assert {t.name: t.action for t in p.tunnels} == {"a": "unchanged", "b": "unchanged"}


def test_mtu_change_is_in_place() -> None:
    p = _plan(BASE.replace(TUN1, TUN1 + "\nmtu = 1300"))
    assert {c.name: c.action for c in p.interfaces}["tun1"] == "reconfigure"
    assert p.of("tunnels", "restart") == []


def test_mode_change_recreates_device_and_restarts_its_tunnel_only() -> None:
    p = _plan(BASE.replace(TUN1, TUN1.replace('"tun"', '"tap"')))
    assert {c.name: c.action for c in p.interfaces} == {"tun0": "unchanged", "tun1": "recreate"}
    assert {t.name: t.action for t in p.tunnels} == {"a": "unchanged", "b": "restart"}


def test_persist_change_is_a_retag() -> None:
    p = _plan(BASE.replace(TUN1, TUN1 + "\npersist = false"))
    assert {c.name: c.action for c in p.interfaces}["tun1"] == "retag"
    assert p.of("tunnels", "restart") == []


def test_tunnel_setting_change_restarts_that_tunnel() -> None:
    p = _plan(BASE.replace('remote = "192.0.2.1:5000"', 'remote = "192.0.2.1:5001"'))
    t = {t.name: t for t in p.tunnels}
    assert t["b"].action == "restart" and "remote" in t["b"].reason
    assert t["a"].action == "unchanged"


def test_keepalive_change_alone_updates_the_running_worker() -> None:
    p = _plan(BASE.replace('listen = "0.0.0.0:5000"', 'listen = "0.0.0.0:5000"\nkeepalive = 9'))
    t = {t.name: t for t in p.tunnels}
    assert t["a"].action == "update" and "keepalive" in t["a"].reason
    assert p.summary()["changed"]["tunnels"] == ["a"]
    assert p.of("tunnels", "restart") == []


def test_fwmark_change_over_udp_updates_the_socket_over_tcp_restarts() -> None:
    """A UDP tunnel's socket is the daemon's, listening or connecting (issue 19): its new
    mark is set on it, the worker keeps running; a TCP listener's accepted connection would
    keep the old mark: restarted."""
    b = 'remote = "192.0.2.1:5000"'
    p = _plan(BASE.replace(b, b + "\nfwmark = 7"))
    assert {t.name: t.action for t in p.tunnels} == {"a": "unchanged", "b": "update"}
    a = 'listen = "0.0.0.0:5000"'
    p = _plan(BASE.replace(a, a + "\nfwmark = 7"))
    assert {t.name: t.action for t in p.tunnels} == {"a": "update", "b": "unchanged"}
    tcp = BASE.replace(a, a + '\ntransport = "tcp"')
    p = _plan(tcp.replace(a, a + "\nfwmark = 7"), tcp)
    assert {t.name: t.action for t in p.tunnels}["a"] == "restart"


def test_keepalive_with_another_change_or_new_keys_restarts() -> None:
    both = BASE.replace('listen = "0.0.0.0:5000"', 'listen = "0.0.0.0:5001"\nkeepalive = 9')
    assert {t.name: t.action for t in _plan(both).tunnels}["a"] == "restart"
    alone = BASE.replace('listen = "0.0.0.0:5000"', 'listen = "0.0.0.0:5000"\nkeepalive = 9')
    p = _plan(alone, old_keys={"a": "x"}, new_keys={"a": "y"})
    assert {t.name: t.action for t in p.tunnels}["a"] == "restart"


def test_key_material_change_restarts_even_with_same_paths() -> None:
    p = _plan(BASE, old_keys={"a": "x", "b": "y"}, new_keys={"a": "x", "b": "z"})
    assert {t.name: t.action for t in p.tunnels} == {"a": "unchanged", "b": "restart"}
    assert "key" in {t.name: t for t in p.tunnels}["b"].reason


def test_add_and_remove() -> None:
    new = BASE.replace(TUNNEL_B, "")
    new = new.replace('[interfaces.tun1]\nmode = "tun"\n', '[interfaces.tun2]\nmode = "tap"\n')
    p = _plan(new)
    s = p.summary()
    assert s["added"]["interfaces"] == ["tun2"]
    assert s["removed"] == {"interfaces": ["tun1"], "tunnels": ["b"]}
    assert s["unchanged"]["tunnels"] == ["a"]


def test_control_socket_change_is_noted() -> None:
    p = _plan('[daemon]\ncontrol_socket = "/run/x.sock"\n' + BASE)
    assert any("control_socket" in n for n in p.daemon_notes)


def test_metrics_listen_change_is_noted() -> None:
    p = _plan('[daemon]\nmetrics_listen = "127.0.0.1:9586"\n' + BASE)
    assert any("metrics_listen" in n for n in p.daemon_notes)


def test_rights_and_worker_user_changes_are_noted() -> None:
    p = _plan('[daemon]\nworker_user = "nobody"\nadmin_group = "root"\n' + BASE)
    assert any("worker_user" in n for n in p.daemon_notes)
    assert any("admin_group" in n for n in p.daemon_notes)


# ------------------------------------------------------------ many peers (issue 17)

PEERS = """
[interfaces.wg0]
mode = "tun"

[tunnels.vpn]
interface = "wg0"
listen = "0.0.0.0:51820"
private_key_file = "/k/vpn.key"

[tunnels.vpn.peers.alice]
public_key = "{a}"
allowed_ips = ["10.8.0.2/32"]

[tunnels.vpn.peers.bob]
public_key = "{b}"
allowed_ips = ["10.8.0.3/32"]
"""


@pytest.fixture
def peers_text(monkeypatch: pytest.MonkeyPatch) -> str:
    """The PEERS config, key files not checked (none exist here)."""
    monkeypatch.setattr("tund.config.checks._EXTRA_CHECKS", [])
    return PEERS.format(a=keys.public_key(keys.generate_private_key()),
                        b=keys.public_key(keys.generate_private_key()))


def _vpn(p: Plan) -> TunnelChange:
    (tc,) = [t for t in p.tunnels if t.name == "vpn"]
    return tc


def _peers(tc: TunnelChange) -> dict[str, tuple[str, str]]:
    return {c.name: (c.action, c.reason) for c in tc.peers}


def test_unchanged_peers_are_a_noop(peers_text: str) -> None:
    p = _plan(peers_text, peers_text)
    assert p.is_noop
    assert _peers(_vpn(p)) == {"alice": ("unchanged", ""), "bob": ("unchanged", "")}


def test_adding_a_peer_is_an_update_not_a_restart(peers_text: str) -> None:
    carol = keys.public_key(keys.generate_private_key())
    new = peers_text + f'[tunnels.vpn.peers.carol]\npublic_key = "{carol}"\n'
    tc = _vpn(_plan(new, peers_text))
    assert (tc.action, tc.reason) == ("update", "changed: peers")
    assert _peers(tc) == {"alice": ("unchanged", ""), "bob": ("unchanged", ""),
                          "carol": ("add", "")}
    assert tc.peers == (PeerChange("alice", "unchanged"), PeerChange("bob", "unchanged"),
                        PeerChange("carol", "add"))


def test_removing_a_peer_is_an_update(peers_text: str) -> None:
    new = peers_text[:peers_text.index("[tunnels.vpn.peers.bob]")]
    p = _plan(new, peers_text)
    tc = _vpn(p)
    assert tc.action == "update"
    assert _peers(tc) == {"alice": ("unchanged", ""), "bob": ("remove", "")}
    assert p.peer_summary() == {"vpn": {"added": [], "changed": [], "removed": ["bob"]}}
    assert p.summary()["changed"]["tunnels"] == ["vpn"]


def test_peer_summary_is_empty_without_peer_changes(peers_text: str) -> None:
    assert _plan(peers_text, peers_text).peer_summary() == {}
    assert _plan(BASE.replace("5000", "5001")).peer_summary() == {}


@pytest.mark.parametrize(("edit", "reason"), [
    (('allowed_ips = ["10.8.0.3/32"]', 'allowed_ips = ["10.8.0.3/32", "10.9.0.0/16"]'),
     "changed: allowed_ips"),
    (('allowed_ips = ["10.8.0.3/32"]', 'allowed_ips = ["10.8.0.3/32"]\nendpoint = "h:1"\n'
      "keepalive = 25"), "changed: endpoint, keepalive"),
    (('allowed_ips = ["10.8.0.3/32"]', 'allowed_ips = ["10.8.0.3/32"]\nenabled = false'),
     "changed: enabled"),
    (('allowed_ips = ["10.8.0.3/32"]', 'allowed_ips = ["10.8.0.3/32"]\n'
      'preshared_key_file = "/k/bob.psk"'), "changed: preshared_key_file"),
])
def test_changing_one_peer_changes_only_that_peer(peers_text: str, edit: tuple[str, str],
                                                  reason: str) -> None:
    tc = _vpn(_plan(peers_text.replace(*edit), peers_text))
    assert (tc.action, tc.reason) == ("update", "changed: peers")
    assert _peers(tc) == {"alice": ("unchanged", ""), "bob": ("change", reason)}


def test_a_new_public_key_changes_the_peer(peers_text: str) -> None:
    old_b = peers_text.split('public_key = "')[2].split('"')[0]
    new = peers_text.replace(old_b, keys.public_key(keys.generate_private_key()))
    tc = _vpn(_plan(new, peers_text))
    assert tc.action == "update"
    assert _peers(tc)["bob"] == ("change", "changed: public_key")


def test_a_rewritten_psk_file_changes_only_its_peer(peers_text: str) -> None:
    """Same config, bob's PSK file rewritten: bob changes, the tunnel is not restarted."""
    old, new = parse_text(peers_text), parse_text(peers_text)
    p = diff(old, new, {"vpn": "T"}, {"vpn": "T"},
             {"vpn": {"alice": "x", "bob": "y"}}, {"vpn": {"alice": "x", "bob": "z"}})
    tc = _vpn(p)
    assert (tc.action, tc.reason) == ("update", "changed: peers")
    assert _peers(tc) == {"alice": ("unchanged", ""), "bob": ("change", "changed: key material")}


def test_the_tunnels_own_key_still_restarts(peers_text: str) -> None:
    old, new = parse_text(peers_text), parse_text(peers_text)
    tc = _vpn(diff(old, new, {"vpn": "T1"}, {"vpn": "T2"}))
    assert (tc.action, tc.reason) == ("restart", "key material changed")


def test_a_listen_change_restarts_and_still_lists_the_peers(peers_text: str) -> None:
    carol = keys.public_key(keys.generate_private_key())
    added = f'[tunnels.vpn.peers.carol]\npublic_key = "{carol}"\n'
    tc = _vpn(_plan(peers_text.replace(":51820", ":51821") + added, peers_text))
    assert (tc.action, tc.reason) == ("restart", "changed: listen, peers")
    assert _peers(tc)["carol"] == ("add", "")  # listed all the same


def test_single_peer_to_peers_restarts(peers_text: str) -> None:
    a = peers_text.split('public_key = "')[1].split('"')[0]
    single = peers_text[:peers_text.index("[tunnels.vpn.peers")] + f'peer_public_key = "{a}"\n'
    for old, new in ((single, peers_text), (peers_text, single)):
        tc = _vpn(_plan(new, old))
        assert tc.action == "restart" and tc.peers == ()
        assert "peers" in tc.reason and "peer_public_key" in tc.reason


def test_keyfiles_fingerprint_psks_per_peer() -> None:
    a = KeyMaterial("P", None, None, {"alice": "A", "bob": None})
    b = KeyMaterial("P", None, None, {"alice": "A2", "bob": None})
    assert a.fingerprint() == b.fingerprint()  # the tunnel's own material is unchanged
    fa, fb = a.peer_fingerprints(), b.peer_fingerprints()
    assert fa["bob"] == fb["bob"] and fa["alice"] != fb["alice"]
    assert KeyMaterial("P", None, None).peer_fingerprints() == {}


def test_read_keys_reads_each_peers_psk(tmp_path: Path, peers_text: str) -> None:
    k, psk = tmp_path / "vpn.key", tmp_path / "bob.psk"
    k.write_text(keys.generate_private_key())
    psk.write_text(keys.generate_psk())
    k.chmod(0o600)
    psk.chmod(0o600)
    text = (peers_text.replace("/k/vpn.key", str(k))
            + f'preshared_key_file = "{psk}"\n')
    km = read_keys(parse_text(text).tunnels["vpn"])
    assert km.peer_preshared_keys == {"alice": None, "bob": psk.read_text()}
    assert km.preshared_key is None


def test_a_failed_interface_is_retried_and_its_tunnel_restarted_never_unchanged() -> None:
    """issue 16.1: an interface that failed (EBUSY: someone held the device) used to stay
    failed, each reload calling it "unchanged"."""
    p = diff(parse_text(BASE), parse_text(BASE), failed={"tun1": "TUNSETIFF tun1: busy"})
    ch = {c.name: c for c in p.interfaces}
    assert ch["tun1"].action == "retry" and ch["tun1"].reason == "failed: TUNSETIFF tun1: busy"
    assert ch["tun0"].action == "unchanged"
    assert {t.name: (t.action, t.reason) for t in p.tunnels} == {
        "a": ("unchanged", ""), "b": ("restart", "interface tun1 is retried")}
    assert not p.is_noop and p.summary()["changed"]["interfaces"] == ["tun1"]
    # changed in place while failed: still a retry (with the new config); removed: removed
    p = diff(parse_text(BASE), parse_text(BASE.replace(TUN1, TUN1 + "\nmtu = 1300")),
             failed={"tun1": "x"})
    assert {c.name: c.action for c in p.interfaces}["tun1"] == "retry"
    p = diff(parse_text(BASE), parse_text(BASE.replace(TUN1, "").replace(TUNNEL_B, "")),
             failed={"tun1": "x"})
    assert {c.name: c.action for c in p.interfaces}["tun1"] == "remove"
