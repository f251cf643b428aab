"""An address another interface of the host (one tund does not manage) already has is an
error for the interface that would get it (issue 15.5, the host's half): at start the
interface fails alone, nothing of it applied; a reload fails and is undone. Before, the
kernel took the address twice and routed it twice. The same against the kernel:
tests/privileged/test_address_conflicts.py."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_netdev_fakeip import FakeLink
from tests.unit.test_reload_steps import BatchFakeIp, _iface, _tunnel, fake_kernel
from tund import config
from tund.daemon.engine import Engine
from tund.errors import ReloadError
from tund.netdev import conflicts

ETH = FakeLink("eth0", up=True, addresses=[("192.0.2.10/24", "global", False),
                                            ("fe80::1/64", "link", False)])


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchFakeIp]:
    """A FakeIp host with an underlay eth0 tund does not manage; fake ioctls and workers."""
    ip = BatchFakeIp(copy.deepcopy(ETH))
    fake_kernel(monkeypatch, ip)
    yield ip


@pytest.mark.parametrize(("want", "found"), [
    (["10.0.0.1/24", "192.0.2.10/24"], ("192.0.2.10/24", "eth0", "192.0.2.10/24")),
    (["192.0.2.10/32"], ("192.0.2.10/32", "eth0", "192.0.2.10/24")),  # prefix aside
    (["192.0.2.11/24"], None),                  # same subnet, another address: allowed
    (["fe80::1/64"], None),                     # link scope: every link has its own
])
def test_foreign(host: BatchFakeIp, want: list[str],
                 found: tuple[str, str, str] | None) -> None:
    assert conflicts.foreign(want, conflicts.host_addresses(host), {"tcf0"}) == found


def test_a_managed_interface_is_no_conflict(host: BatchFakeIp) -> None:
    """An address moving between tund's own interfaces is the config check's business."""
    assert conflicts.foreign(["192.0.2.10/24"], conflicts.host_addresses(host),
                             {"eth0"}) is None


def test_at_start_the_interface_fails_alone_with_nothing_applied(
        tmp_path: Path, host: BatchFakeIp) -> None:
    path = tmp_path / "tunnels.toml"
    path.write_text(_iface("tcfa", addrs=["10.93.1.1/24", "192.0.2.10/24"])
                    + _tunnel("a", "tcfa")
                    + _iface("tcfb", addrs=["10.93.2.1/24"]) + _tunnel("b", "tcfb"))
    eng = Engine(path, ip=host, fork_server=False)

    async def go() -> None:
        await eng.start(config.load(path))
        try:
            assert eng.device_errors == {"tcfa": conflicts.conflict_message(
                "tcfa", "192.0.2.10/24", "eth0", "192.0.2.10/24")}
            assert host.links["tcfa"].addresses == [] and not host.links["tcfa"].up
            assert [a for a, _, _ in host.links["tcfb"].addresses] == ["10.93.2.1/24"]
            assert eng.runners["b"].worker is not None
            assert "192.0.2.10/24" in eng.device_errors["tcfa"]
        finally:
            await eng.shutdown()

    asyncio.run(go())


def test_a_reload_that_would_take_a_host_address_fails_and_is_undone(
        tmp_path: Path, host: BatchFakeIp) -> None:
    path = tmp_path / "tunnels.toml"
    old = _iface("tcfa", addrs=["10.93.1.1/24"]) + _tunnel("a", "tcfa")
    path.write_text(old)
    eng = Engine(path, ip=host, fork_server=False)

    async def go() -> None:
        await eng.start(config.load(path))
        try:
            links = copy.deepcopy(host.links)
            path.write_text(_iface("tcfa", addrs=["10.93.1.1/24", "10.93.1.2/24"],
                                   extra="mtu = 1300")
                            + _tunnel("a", "tcfa")
                            + _iface("tcfn", addrs=["192.0.2.10/32"]))
            dry = await eng.reload(dry_run=True)  # the check changes nothing: not listed
            assert not any("check" in a for a in dry["actions"]), dry
            with pytest.raises(ReloadError) as ei:
                await eng.reload()
            msg = str(ei.value)
            assert ("reload failed at step 'create tcfn' (check that no other interface has "
                    "192.0.2.10/32): address 192.0.2.10/32 for tcfn is already on interface "
                    "eth0 (192.0.2.10/24), which tund does not manage") in msg, msg
            assert "the 4 step(s) before it were undone" in msg, msg
            assert host.links == links  # tcfa's mtu and address back, tcfn gone
        finally:
            await eng.shutdown()

    asyncio.run(go())


# --------------------------------------------------------------------------- routes (17.3)

LAN_ROUTES = {4: [{"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel"},
                  {"dst": "default", "dev": "eth0", "gateway": "192.0.2.1"},
                  {"dst": "198.51.100.0/24", "dev": "tcfa", "protocol": "static"}],
              6: [{"dst": "fe80::/64", "dev": "eth0"}]}


class RoutedHost(BatchFakeIp):
    """BatchFakeIp whose main table has eth0's connected route and default route."""

    def json(self, argv: Any) -> Any:
        args = list(argv)
        if args[1:] == ["route", "show", "table", "main"]:
            self.reads.append(args)
            return LAN_ROUTES[int(args[0][1])]
        return super().json(argv)


@pytest.mark.parametrize(("want", "found"), [
    (["10.50.0.0/16", "192.0.2.0/24"], ("192.0.2.0/24", "eth0")),  # the LAN: refused
    (["0.0.0.0/0"], ("0.0.0.0/0", "eth0")),                         # the default too
    (["192.0.2.0/25"], None),                   # a more specific prefix: a route of its own
    (["198.51.100.0/24"], None),                # on a link tund manages
    (["fe80::/64"], ("fe80::/64", "eth0")),
])
def test_foreign_route(want: list[str], found: tuple[str, str] | None) -> None:
    routes = conflicts.host_routes(RoutedHost())
    assert conflicts.foreign_route(want, routes, {"tcfz", "tcfa"}) == found


def test_a_reload_whose_peer_would_take_over_a_host_route_fails_and_is_undone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 17.3: a peer's allowed_ips equal to the LAN's prefix on eth0: ``ip route
    replace`` would move the LAN to the tunnel; the reload refuses it, nothing changed."""
    from tund import keys

    ip = RoutedHost(copy.deepcopy(ETH))
    fake_kernel(monkeypatch, ip)
    key = tmp_path / "vpn.key"
    key.write_text(keys.generate_private_key())
    key.chmod(0o600)
    path = tmp_path / "tunnels.toml"
    base = (_iface("tcfz", addrs=["10.93.9.1/24"])
            + '[tunnels.vpn]\ninterface = "tcfz"\nlisten = "127.0.0.1:1"\n'
            'private_key_file = "vpn.key"\n[tunnels.vpn.peers]\n')
    path.write_text(base)
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> None:
        await eng.start(config.load(path))
        try:
            links = copy.deepcopy(ip.links)
            path.write_text(base + "[tunnels.vpn.peers.site]\n"
                            f'public_key = "{keys.public_key(keys.generate_private_key())}"\n'
                            'allowed_ips = ["10.60.0.0/16", "192.0.2.0/24"]\n')
            with pytest.raises(ReloadError) as ei:
                await eng.reload()
            msg = str(ei.value)
            assert ("route 192.0.2.0/24 for tcfz would take over the route of 192.0.2.0/24 "
                    "through interface eth0, which tund does not manage") in msg, msg
            assert ip.links == links  # no route added
            assert not any(a[:2] == ["route", "replace"] for a in ip.ran)
        finally:
            await eng.shutdown()

    asyncio.run(go())


@pytest.mark.parametrize("one_by_one", [False, True])
def test_at_start_an_interface_whose_peer_would_take_over_a_host_route_fails_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_by_one: bool) -> None:
    """Also when the links cannot be read at once and are configured one by one."""
    from tund import keys
    from tund.errors import KernelError
    from tund.netdev import reconcile

    if one_by_one:
        def unreadable(ip: Any, names: Any) -> Any:
            raise KernelError("ip -json addr show: fake failure")
        monkeypatch.setattr(reconcile, "read_states", unreadable)

    ip = RoutedHost(copy.deepcopy(ETH))
    fake_kernel(monkeypatch, ip)
    key = tmp_path / "vpn.key"
    key.write_text(keys.generate_private_key())
    key.chmod(0o600)
    path = tmp_path / "tunnels.toml"
    path.write_text(_iface("tcfz", addrs=["10.93.9.1/24"]) + _iface("tcfo", addrs=["10.93.8.1/24"])
                    + '[tunnels.vpn]\ninterface = "tcfz"\nlisten = "127.0.0.1:1"\n'
                    'private_key_file = "vpn.key"\n[tunnels.vpn.peers.site]\n'
                    f'public_key = "{keys.public_key(keys.generate_private_key())}"\n'
                    'allowed_ips = ["192.0.2.0/24"]\n')
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> None:
        await eng.start(config.load(path))
        await eng.shutdown()

    asyncio.run(go())
    assert "would take over the route of 192.0.2.0/24" in eng.device_errors["tcfz"]
    assert "tcfo" not in eng.device_errors
    assert ip.links["tcfz"].addresses == [] and ip.links["tcfo"].addresses  # alone
