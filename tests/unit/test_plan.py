"""Reload planning: the least disruptive action for each kind of change."""

from __future__ import annotations

from tund.config import parse_text
from tund.daemon.plan import diff

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
