"""Routes from peers' allowed_ips (issue 17.3): which prefixes get a route, the plan of
``ip`` steps a reload makes of them, and /0 never replacing the default route."""

from __future__ import annotations

from pathlib import Path

import pytest

from tund import keys
from tund.config import Config, effective_interface, parse_text, peer_routes, skipped_default_routes
from tund.daemon import plan
from tund.netdev import reconcile


@pytest.fixture
def key(tmp_path: Path) -> str:
    path = tmp_path / "vpn.key"
    path.write_text(keys.generate_private_key() + "\n")
    path.chmod(0o600)
    return str(path)


def _pub() -> str:
    return keys.public_key(keys.generate_private_key())


def _conf(key: str, peers: dict[str, str], routes: str = "[]") -> Config:
    text = (f'[interfaces.wg0]\nmode = "tun"\naddresses = ["10.8.0.1/24", "fd08::1/64"]\n'
            f'routes = {routes}\n'
            f'[tunnels.vpn]\ninterface = "wg0"\nprivate_key_file = "{key}"\n'
            '[tunnels.vpn.peers]\n')
    for name, body in peers.items():
        text += f'[tunnels.vpn.peers.{name}]\npublic_key = "{_pub()}"\n{body}\n'
    return parse_text(text)


def test_prefixes_outside_the_interfaces_own_get_routes(key: str) -> None:
    cfg = _conf(key, {
        "alice": 'allowed_ips = ["10.8.0.2/32", "fd08::2/128", "192.168.50.0/24"]',
        "bob": 'allowed_ips = ["fd50::/48", "10.9.0.0/16", "10.99.0.0/24"]',
        "carol": 'allowed_ips = ["172.16.0.0/12"]\nenabled = false'}, '["10.99.0.0/24"]')
    r = peer_routes(cfg.interfaces["wg0"], cfg.tunnels["vpn"])
    # covered by 10.8.0.1/24 or fd08::1/64: none; listed in routes: once; disabled: none
    assert r.routes == ("192.168.50.0/24", "fd50::/48", "10.9.0.0/16")
    assert r.skipped == ()
    eff = effective_interface(cfg, "wg0")
    assert eff.routes == ("10.99.0.0/24", "192.168.50.0/24", "fd50::/48", "10.9.0.0/16")
    assert skipped_default_routes(cfg) == []


def test_a_supernet_of_the_interfaces_prefix_still_gets_a_route(key: str) -> None:
    cfg = _conf(key, {"hub": 'allowed_ips = ["10.0.0.0/8"]'})
    assert peer_routes(cfg.interfaces["wg0"], cfg.tunnels["vpn"]).routes == ("10.0.0.0/8",)


def test_default_prefixes_get_no_route_and_a_warning(key: str) -> None:
    cfg = _conf(key, {"exit": 'allowed_ips = ["0.0.0.0/0", "::/0", "10.50.0.0/24"]'})
    r = peer_routes(cfg.interfaces["wg0"], cfg.tunnels["vpn"])
    assert r.routes == ("10.50.0.0/24",)
    assert r.skipped == (("exit", "0.0.0.0/0"), ("exit", "::/0"))
    warnings = skipped_default_routes(cfg)
    assert len(warnings) == 2
    assert warnings[0].startswith("tunnel vpn, peer exit: allowed_ips 0.0.0.0/0 routes "
                                  "everything through wg0 by policy routing")
    steps = reconcile.plan_steps("wg0", effective_interface(cfg, "wg0"),
                                 reconcile.LinkState("wg0", up=True, addresses=(
                                     "10.8.0.1/24", "fd08::1/64")))
    assert [s.argv for s in steps] == [
        ("route", "replace", "10.50.0.0/24", "dev", "wg0", "proto", "static")]
    # the plan carries the warning as a note (shown by reload and reload --dry-run)
    assert plan.diff(cfg, cfg).daemon_notes == tuple(warnings)


def test_single_peer_tunnels_add_no_routes(key: str) -> None:
    cfg = parse_text('[interfaces.t0]\nmode = "tun"\n[tunnels.x]\ninterface = "t0"\n'
                     'remote = "192.0.2.1:5"\nencryption = "none"\n')
    assert effective_interface(cfg, "t0") is cfg.interfaces["t0"]


def test_a_reload_adding_and_removing_a_peer_plans_its_routes(key: str) -> None:
    """Adding a peer reconfigures its interface with a route per prefix (applied as a diff
    with the kernel's routes); removing the peer deletes them; the others stay."""
    bob = 'allowed_ips = ["10.9.0.0/16"]'
    old = _conf(key, {"bob": bob})
    new = _conf(key, {"bob": bob, "alice": 'allowed_ips = ["192.168.50.0/24", "fd50::/48"]'})
    p = plan.diff(old, new)
    (c,) = p.interfaces
    assert (c.action, c.reason) == ("reconfigure", "changed: routes")
    assert p.of("tunnels", "update") == ["vpn"]
    kernel = reconcile.LinkState("wg0", up=True, addresses=("10.8.0.1/24", "fd08::1/64"),
                                 routes=(reconcile.Route("10.9.0.0/16"),))
    assert c.new is not None
    steps = reconcile.plan_steps("wg0", c.new, kernel)
    assert [s.argv for s in steps] == [
        ("route", "replace", "192.168.50.0/24", "dev", "wg0", "proto", "static"),
        ("route", "replace", "fd50::/48", "dev", "wg0", "proto", "static")]
    assert steps[0].undo == ("route", "del", "192.168.50.0/24", "dev", "wg0", "proto",
                             "static")
    # and back: removing alice deletes exactly her routes
    (back,) = plan.diff(new, old).interfaces
    assert back.new is not None
    after = reconcile.LinkState("wg0", up=True, addresses=kernel.addresses, routes=(
        reconcile.Route("10.9.0.0/16"), reconcile.Route("192.168.50.0/24"),
        reconcile.Route("fd50::/48")))
    assert [s.argv for s in reconcile.plan_steps("wg0", back.new, after)] == [
        ("route", "del", "192.168.50.0/24", "dev", "wg0", "proto", "static"),
        ("route", "del", "fd50::/48", "dev", "wg0", "proto", "static")]


def test_disabling_a_peer_removes_its_routes_and_a_covered_prefix_changes_nothing(
        key: str) -> None:
    on = _conf(key, {"a": 'allowed_ips = ["10.60.0.0/24"]'})
    off = _conf(key, {"a": 'allowed_ips = ["10.60.0.0/24"]\nenabled = false'})
    (c,) = plan.diff(on, off).interfaces
    assert c.action == "reconfigure" and c.new is not None and c.new.routes == ()
    covered = _conf(key, {"a": 'allowed_ips = ["10.8.0.7/32"]'})
    assert plan.diff(_conf(key, {}), covered).interfaces[0].action == "unchanged"


def test_reload_text_shows_the_notes() -> None:
    from tund.ctl import render

    text = render.render_reload({"actions": ["[#] ip route replace 10.1.0.0/16 dev wg0"],
                                 "notes": ["tunnel vpn, peer exit: allowed_ips 0.0.0.0/0 gets "
                                           "no route"], "dry_run": True})
    assert text.endswith("actions:\n  [#] ip route replace 10.1.0.0/16 dev wg0\nnotes:\n"
                         "  tunnel vpn, peer exit: allowed_ips 0.0.0.0/0 gets no route")
    assert "notes" not in render.render_reload({"notes": []})
