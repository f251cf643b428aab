"""A reload is one list of steps (tund.daemon.reload): the dry run lists it, the apply logs
and runs exactly it, and a failing step undoes the ones before it.

A real Engine with fakes below it: FakeIp for ``ip``, fake tuntap ioctls (devices are
FakeLinks of the FakeIp), fake workers. The same against the real kernel:
tests/privileged/test_reload_steps.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_netdev_fakeip import FakeIp, FakeLink
from tests.unit.test_supervisor import FakeWorker
from tund import config
from tund.daemon import engine as engine_mod
from tund.daemon.engine import Engine
from tund.errors import IpCommandError, ReloadError
from tund.netdev import tuntap


class BatchFakeIp(FakeIp):
    """FakeIp that also answers the whole-table reads of a daemon start (read_states), and
    the policy rules and table routes of tund.netdev.policy (``-4 rule ...``)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.policy: dict[tuple[str, ...], dict[str, Any]] = {}  # argv without the verb

    def run(self, argv: Sequence[str]) -> str:
        args = list(argv)
        if args[0] not in ("-4", "-6"):
            return super().run(argv)
        self.ran.append(args)
        for pred, stderr in self._failures:
            if pred(args):
                raise IpCommandError(["ip", *args], 2, stderr)
        key = (*args[:2], *args[3:])
        if args[2] == "add":
            assert key not in self.policy, f"duplicate {args}"
            if args[1] == "route":
                self.policy[key] = {"dst": "default" if args[3].endswith("/0") else args[3],
                                    "dev": args[5], "protocol": "static"}
            elif "suppress_prefixlength" in args:
                self.policy[key] = {"table": "main", "suppress_prefixlen": 0}
            else:
                self.policy[key] = {"not": None, "fwmark": hex(int(args[5])), "table": args[7]}
        else:
            del self.policy[key]
        return ""

    def json(self, argv: Sequence[str]) -> Any:
        args = list(argv)
        if args[0] in ("-4", "-6") and (args[1] == "rule" or "table" in args):
            self.reads.append(args)
            return [v for k, v in self.policy.items() if k[:2] == tuple(args[:2])
                    and (args[1] == "rule" or k[-3] == args[4])]
        if "dev" in args:
            return super().json(argv)
        self.reads.append(args)
        if args == ["addr", "show"]:
            return [self._link_json(link) for link in self.links.values()]
        return []  # -4/-6 route show proto static: no routes in these configs


class FakeDevices:
    """tuntap's open/delete/persist against the links of a FakeIp."""

    def __init__(self, ip: FakeIp) -> None:
        self.ip = ip
        self.names: dict[int, str] = {}
        self.persist: dict[str, bool] = {}
        self.modes: dict[str, str] = {}

    def open_device(self, name: str, mode: Any, **kw: Any) -> tuntap.OpenedDevice:
        fd = 1000 + len(self.names)
        self.names[fd] = name
        self.persist[name], self.modes[name] = kw["persist"], mode
        self.ip.links.setdefault(name, FakeLink(name, mac=None if mode == "tun" else
                                                "02:00:00:00:00:bb"))
        info = tuntap.DeviceInfo(name, mode, kw["packet_info"], kw["multi_queue"],
                                 kw["persist"], None, None, fd)
        return tuntap.OpenedDevice(fd=fd, info=info, created=True)

    def delete_device(self, name: str, fd: int | None = None) -> bool:
        policy = getattr(self.ip, "policy", {})
        for k in [k for k, v in policy.items() if v.get("dev") == name]:
            del policy[k]  # the kernel drops a deleted link's routes, in every table
        return self.ip.links.pop(name, None) is not None

    def set_persist(self, fd: int, on: bool) -> None:
        self.persist[self.names[fd]] = on


def fake_kernel(monkeypatch: pytest.MonkeyPatch, ip: BatchFakeIp) -> FakeDevices:
    """Devices become FakeLinks of ``ip`` (tuntap's ioctls faked), workers FakeWorkers."""
    dev = FakeDevices(ip)
    monkeypatch.setattr(tuntap, "open_device", dev.open_device)
    monkeypatch.setattr(tuntap, "delete_device", dev.delete_device)
    monkeypatch.setattr(tuntap, "set_persist", dev.set_persist)
    monkeypatch.setattr(tuntap, "close", lambda fd: None)
    monkeypatch.setattr(engine_mod, "worker_class", lambda run_as, launcher: FakeWorker)
    FakeWorker.all = []
    return dev


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[BatchFakeIp, FakeDevices]]:
    ip = BatchFakeIp()
    yield ip, fake_kernel(monkeypatch, ip)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _iface(name: str, mode: str = "tun", addrs: Sequence[str] = (), extra: str = "") -> str:
    quoted = ", ".join(f'"{a}"' for a in addrs)
    return f'\n[interfaces.{name}]\nmode = "{mode}"\naddresses = [{quoted}]\n{extra}\n'


def _tunnel(name: str, iface: str, key: str = "remote", endpoint: str = "127.0.0.1:9",
            extra: str = "") -> str:
    return (f'\n[tunnels.{name}]\ninterface = "{iface}"\n{key} = "{endpoint}"\n'
            f'encryption = "none"\n{extra}\n')


OLD = (_iface("zqk0", addrs=["10.91.1.1/24"]) + _tunnel("keep", "zqk0")
       + _iface("zqg0", addrs=["10.91.2.1/24"]) + _tunnel("gone", "zqg0")
       + _iface("zqc0", addrs=["10.91.3.1/24"]) + _tunnel("chg", "zqc0")
       + _iface("zqr0", addrs=["10.91.4.1/24"]) + _tunnel("rec", "zqr0")
       + _iface("zqp0"))


def _new(port: int) -> str:
    return (_iface("zqk0", addrs=["10.91.1.1/24"]) + _tunnel("keep", "zqk0")
            + _iface("zqc0", addrs=["10.91.3.1/24", "10.91.3.2/24"], extra="mtu = 1300")
            + _tunnel("chg", "zqc0")
            + _iface("zqr0", "tap", addrs=["10.91.4.1/24"]) + _tunnel("rec", "zqr0")
            + _iface("zqp0", extra="persist = false")
            + _iface("zqn0", addrs=["10.91.5.1/24"])
            + _tunnel("new", "zqn0", "listen", f"127.0.0.1:{port}")
            + _tunnel("tcp", "zqp0", extra='transport = "tcp"'))


def _expected(port: int) -> list[str]:
    return [
        "[#] ip link set zqc0 mtu 1300",
        "[#] ip addr add 10.91.3.2/24 dev zqc0",
        "tell worker of tunnel chg: mtu 1300",
        "create device zqn0 (mode tun)",
        "[#] ip link set zqn0 up",
        "[#] ip addr add 10.91.5.1/24 dev zqn0",
        "set persist=false on device zqp0",
        "stop worker of tunnel gone",
        "stop worker of tunnel rec (interface zqr0 is recreated)",
        "delete device zqr0 to recreate it (changed: mode)",
        "create device zqr0 (mode tap)",
        "[#] ip link set zqr0 up",
        "[#] ip addr add 10.91.4.1/24 dev zqr0",
        f"bind udp 127.0.0.1:{port} for tunnel new",
        # a connecting UDP tunnel's socket is the daemon's too (it carries the mark)
        "bind a udp socket for tunnel rec (to reach 127.0.0.1:9)",
        "start worker of tunnel new",
        "start worker of tunnel rec",
        "start worker of tunnel tcp",
        "delete device zqg0",
    ]


@dataclass
class Vpn:
    """The setup of the peer tests: a tunnel ``vpn`` (its key ``vpn.key`` in the test's
    directory) listening on a free loopback port, and an Engine over the fakes."""

    ip: BatchFakeIp
    path: Path
    port: int
    eng: Engine

    def config(self, iface: str, net: str, peers: str = "[tunnels.vpn.peers]\n",
               extra: str = "") -> str:
        """Interface ``iface`` (``net``.1/24) and tunnel ``vpn`` on it, then ``peers``."""
        return (_iface(iface, addrs=[f"{net}.1/24"], extra=extra)
                + f'[tunnels.vpn]\ninterface = "{iface}"\nlisten = "127.0.0.1:{self.port}"\n'
                'private_key_file = "vpn.key"\n' + peers)


@pytest.fixture
def vpn(tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices]) -> Vpn:
    from tund import keys

    ip, _dev = fakes
    path = tmp_path / "tunnels.toml"
    key = tmp_path / "vpn.key"
    key.write_text(keys.generate_private_key())
    key.chmod(0o600)
    return Vpn(ip, path, _free_port(), Engine(path, ip=ip, fork_server=False))


def _peer(name: str, *allowed_ips: str, pub: str | None = None) -> str:
    """A peer of tunnel ``vpn`` (a fresh public key unless ``pub``)."""
    from tund import keys

    pub = pub or keys.public_key(keys.generate_private_key())
    quoted = ", ".join(f'"{a}"' for a in allowed_ips)
    return f'[tunnels.vpn.peers.{name}]\npublic_key = "{pub}"\nallowed_ips = [{quoted}]\n'


async def _start(eng: Engine, text: str, path: Path) -> None:
    path.write_text(text)
    await eng.start(config.load(path))


def test_dry_run_is_what_the_apply_logs_and_runs(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices],
        caplog: pytest.LogCaptureFixture) -> None:
    ip, dev = fakes
    path = tmp_path / "tunnels.toml"
    port = _free_port()
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        await _start(eng, OLD, path)
        chg_worker = eng.runners["chg"].worker
        keep_runner = eng.runners["keep"]
        path.write_text(_new(port))
        ip.ran.clear()
        dry = await eng.reload(dry_run=True)
        assert ip.ran == []  # a dry run changes nothing
        caplog.clear()
        with caplog.at_level(logging.INFO):
            done = await eng.reload()
        assert eng.runners["keep"] is keep_runner  # untouched
        assert isinstance(chg_worker, FakeWorker)
        assert {"op": "update", "mtu": 1300} in chg_worker.sent
        await eng.shutdown()
        return dry, done

    dry, done = asyncio.run(go())
    logged = [r.getMessage() for r in caplog.records
              if r.name in ("tund.daemon.reload", "tund.netdev.ip") and r.levelno == logging.INFO]
    assert dry["actions"] == _expected(port)
    assert done["actions"] == dry["actions"] == logged
    # what the ip lines say is what ran, in that order
    ran = [a for a in dry["actions"] if a.startswith("[#] ip ")]
    assert ["[#] ip " + " ".join(argv) for argv in ip.ran] == ran
    assert dev.persist["zqp0"] is False and dev.modes["zqr0"] == "tap"
    assert "zqg0" not in ip.links and ip.links["zqc0"].mtu == 1300
    assert done["added"] == {"interfaces": ["zqn0"], "tunnels": ["new", "tcp"]}
    assert done["removed"] == {"interfaces": ["zqg0"], "tunnels": ["gone"]}
    assert done["changed"] == {"interfaces": ["zqc0", "zqp0", "zqr0"], "tunnels": ["rec"]}
    assert done["dry_run"] is False and dry["dry_run"] is True


def test_failed_bind_undoes_every_step_before_it(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices]) -> None:
    ip, dev = fakes
    path = tmp_path / "tunnels.toml"
    port = _free_port()
    eng = Engine(path, ip=ip, fork_server=False)
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", port))

    async def go() -> None:
        await _start(eng, OLD, path)
        links = copy.deepcopy(ip.links)
        cfg, runners = eng.config, dict(eng.runners)
        path.write_text(_new(port))
        with pytest.raises(ReloadError) as ei:
            await eng.reload()
        msg = str(ei.value)
        assert (f"reload failed at step 'bind tunnel new' (bind udp 127.0.0.1:{port} for "
                f"tunnel new): cannot bind udp 127.0.0.1:{port}: Address already in use; "
                "the 13 step(s) before it were undone") in msg, msg
        assert eng.config is cfg
        assert ip.links == links  # mtu, addresses, the new device, the recreated one
        assert dev.persist["zqp0"] is True and dev.modes["zqr0"] == "tun"
        assert cfg is not None and set(eng.devices) == set(cfg.interfaces)
        assert set(eng.runners) == set(runners)
        # untouched tunnels keep their runner; the stopped ones run again
        assert eng.runners["keep"] is runners["keep"] and eng.runners["chg"] is runners["chg"]
        assert eng.runners["gone"].worker is not None and eng.runners["rec"].worker is not None
        assert eng.last_reload is not None and eng.last_reload["ok"] is False
        assert set(eng.listeners) == {"keep", "chg", "gone", "rec"}  # no "new"
        assert all(s.getsockname()[0] == "0.0.0.0" for s in eng.listeners.values())
        held.close()
        ok = await eng.reload()  # the port is free again: the same reload goes through
        assert ok["actions"] == _expected(port)
        await eng.shutdown()

    try:
        asyncio.run(go())
    finally:
        held.close()


def test_failed_ip_step_names_the_interface_and_undoes(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices]) -> None:
    ip, _ = fakes
    path = tmp_path / "tunnels.toml"
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> None:
        await _start(eng, OLD, path)
        links = copy.deepcopy(ip.links)
        path.write_text(_new(_free_port()))
        ip.fail(lambda a: a[:3] == ["addr", "add", "10.91.5.1/24"], "RTNETLINK answers: nope")
        with pytest.raises(ReloadError, match=r"at step 'create zqn0' \(\[#\] ip addr add "
                                              r"10\.91\.5\.1/24 dev zqn0\): .*nope; the 5 "):
            await eng.reload()
        assert ip.links == links
        assert "zqn0" not in eng.devices
        await eng.shutdown()

    asyncio.run(go())


class CapturingJournal(logging.Handler):
    """tund's JournalHandler with its ``send`` captured: the (MESSAGE, fields) journald
    would get, for every record of every logger."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        from tund import logs

        journal = pytest.importorskip("systemd.journal")
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.inner = logs._make_handler("journal")
        assert isinstance(self.inner, journal.JournalHandler)
        monkeypatch.setattr(self.inner, "send",
                            lambda message, /, **fields: self.sent.append((message, fields)))

    def emit(self, record: logging.LogRecord) -> None:
        self.inner.emit(record)


def test_every_message_about_an_interface_or_tunnel_carries_its_field(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15.12: creation, ``[#] ip``, removal of an interface without a tunnel carry
    TUND_INTERFACE; a tunnel's messages carry TUND_TUNNEL (fails before: 'create device',
    'delete device' and reload-logged ip lines had no field)."""
    ip, _ = fakes
    path = tmp_path / "tunnels.toml"
    port = _free_port()
    eng = Engine(path, ip=ip, fork_server=False)
    journal = CapturingJournal(monkeypatch)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(journal)
    root.setLevel(logging.DEBUG)
    try:
        async def go() -> None:
            await _start(eng, _iface("zqa0", addrs=["10.91.6.1/24"])
                         + _iface("zqk0", addrs=["10.91.1.1/24"]) + _tunnel("keep", "zqk0"),
                         path)
            path.write_text(_iface("zqb0", addrs=["10.91.7.1/24"], extra="persist = false")
                            + _iface("zqk0", addrs=["10.91.1.1/24"]) + _tunnel("keep", "zqk0")
                            + _iface("zqn0") + _tunnel("new", "zqn0", "listen",
                                                       f"127.0.0.1:{port}"))
            await eng.reload()
            await eng.shutdown()

        asyncio.run(go())
    finally:
        root.removeHandler(journal)
        root.setLevel(old_level)
    about: dict[str, list[str]] = {}
    for shown, fields in journal.sent:
        message = shown.split("] ", 1)[1] if shown.startswith("[") else shown  # the prefix
        for iface in ("zqa0", "zqb0", "zqk0", "zqn0"):
            if iface in message:
                about.setdefault(iface, []).append(message)
                assert fields.get("TUND_INTERFACE") == iface, (message, fields)
        for tunnel in ("keep", "new"):
            if f"tunnel {tunnel}" in message:
                assert fields.get("TUND_TUNNEL") == tunnel, (message, fields)
    assert "delete device zqa0" in about["zqa0"]
    assert about["zqb0"][:3] == ["create device zqb0 (mode tun)", "[#] ip link set zqb0 up",
                                 "[#] ip addr add 10.91.7.1/24 dev zqb0"]
    assert any(m.startswith("[#] close zqb0") for m in about["zqb0"])


def test_adding_a_peer_in_a_drop_in_keeps_the_worker_and_tells_it(
        tmp_path: Path, vpn: Vpn) -> None:
    """issue 17: a peers-only change is an "update" with a per-peer diff: no restart, one
    step that tells the running worker its peers, and no keepalive step that changes
    nothing."""
    path, port, eng = vpn.path, vpn.port, vpn.eng
    main = vpn.config("zqv0", "10.91.8")

    async def go() -> dict[str, Any]:
        await _start(eng, main, path)
        runner, worker = eng.runners["vpn"], eng.runners["vpn"].worker
        (tmp_path / "tunnels.d").mkdir()
        (tmp_path / "tunnels.d" / "50-alice.toml").write_text(_peer("alice", "10.91.8.2/32"))
        dry = await eng.reload(dry_run=True)
        done = await eng.reload()
        assert eng.runners["vpn"] is runner and runner.worker is worker
        status = await eng.status("vpn")
        await eng.shutdown()
        return {"dry": dry, "done": done, "status": status}

    r = asyncio.run(go())
    assert r["dry"]["actions"] == r["done"]["actions"] == [
        "tell worker of tunnel vpn: peers +alice"]
    assert f'"endpoint": "127.0.0.1:{port}"' in json.dumps(r["status"])
    assert '"role": "listen"' in json.dumps(r["status"])
    assert r["done"]["changed"]["tunnels"] == ["vpn"]
    assert eng.config.tunnels["vpn"].peers is not None
    assert list(eng.config.tunnels["vpn"].peers) == ["alice"]


def test_a_peer_added_and_removed_by_reload_adds_and_removes_its_routes(
        tmp_path: Path, vpn: Vpn) -> None:
    """issue 17.3: a peer's allowed_ips outside the interface's addresses become routes
    through it, shown by the dry run, logged and run by the reload, deleted when the peer
    goes; a /0 gets none and a note. The worker keeps running."""
    ip, path, eng = vpn.ip, vpn.path, vpn.eng
    main = vpn.config("zqv0", "10.91.8")
    drop_in = tmp_path / "tunnels.d" / "50-alice.toml"

    async def go() -> dict[str, Any]:
        await _start(eng, main, path)
        worker = eng.runners["vpn"].worker
        drop_in.parent.mkdir()
        drop_in.write_text(_peer("alice", "10.91.8.2/32", "10.93.0.0/24", "fd93::/64",
                                 "0.0.0.0/0"))
        dry = await eng.reload(dry_run=True)
        assert ip.links["zqv0"].routes == {}
        added = await eng.reload()
        routes_then = dict(ip.links["zqv0"].routes)
        drop_in.unlink()
        removed = await eng.reload()
        assert eng.runners["vpn"].worker is worker
        await eng.shutdown()
        return {"dry": dry, "added": added, "removed": removed, "routes": routes_then}

    r = asyncio.run(go())
    want = ["[#] ip route replace 10.93.0.0/24 dev zqv0 proto static",
            "[#] ip route replace fd93::/64 dev zqv0 proto static",
            # 0.0.0.0/0: a full tunnel (issue 19): the mark first, then table and rules
            "set fwmark 51820 on the socket of tunnel vpn",
            "set sysctl net.ipv4.conf.all.src_valid_mark=1 (if it is not)",
            "[#] ip -4 route add 0.0.0.0/0 dev zqv0 table 51820 proto static",
            "[#] ip -4 rule add not fwmark 51820 table 51820",
            "[#] ip -4 rule add table main suppress_prefixlength 0",
            "tell worker of tunnel vpn: peers +alice"]
    assert r["dry"]["actions"] == r["added"]["actions"] == want
    assert set(r["routes"]) == {"10.93.0.0/24", "fd93::/64"}  # no 0.0.0.0/0, no /32
    assert r["added"]["changed"] == {"interfaces": ["zqv0"], "tunnels": ["vpn"]}
    assert any("allowed_ips 0.0.0.0/0 routes everything through zqv0 by policy routing" in n
               for n in r["dry"]["notes"])
    assert r["removed"]["actions"] == [
        "[#] ip route del 10.93.0.0/24 dev zqv0 proto static",
        "[#] ip route del fd93::/64 dev zqv0 proto static",
        "[#] ip -4 rule del not fwmark 51820 table 51820",
        "[#] ip -4 rule del table main suppress_prefixlength 0",
        "[#] ip -4 route del 0.0.0.0/0 dev zqv0 table 51820 proto static",
        "set fwmark 0 on the socket of tunnel vpn",
        "tell worker of tunnel vpn: peers -alice"]
    assert ip.policy == {}
    assert ip.links["zqv0"].routes == {}
    # asked once, before the IPv4 rule; never reverted (an engine on a fake ip: recorded)
    assert eng.sysctl.asked == [("net.ipv4.conf.all.src_valid_mark", "1")]  # type: ignore[attr-defined]


def test_an_interface_that_failed_is_retried_by_the_next_reload_not_called_unchanged(
        tmp_path: Path, fakes: tuple[BatchFakeIp, FakeDevices],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 16.1: someone held the device at start (EBUSY); reloads retry it (best effort:
    still busy -> still failed, the reload goes on) and its tunnel starts once it is up."""
    from tund.errors import TunError

    ip, dev = fakes
    busy = {"zqb0"}
    real_open = dev.open_device

    def open_device(name: str, mode: Any, **kw: Any) -> tuntap.OpenedDevice:
        if name in busy:
            raise TunError(f"TUNSETIFF {name}: Device or resource busy")
        return real_open(name, mode, **kw)

    monkeypatch.setattr(tuntap, "open_device", open_device)
    text = (_iface("zqk0", addrs=["10.91.1.1/24"]) + _tunnel("keep", "zqk0")
            + _iface("zqb0", addrs=["10.91.6.1/24"]) + _tunnel("held", "zqb0"))
    path = tmp_path / "tunnels.toml"
    eng = Engine(path, ip=ip, fork_server=False)

    async def go() -> tuple[dict[str, Any], ...]:
        await _start(eng, text, path)
        assert "busy" in eng.device_errors["zqb0"]
        keep = eng.runners["keep"]
        still = await eng.reload()
        assert "busy" in eng.device_errors["zqb0"]
        busy.clear()  # the other user let go
        dry = await eng.reload(dry_run=True)
        done = await eng.reload()
        assert eng.runners["keep"] is keep  # the other tunnel is never touched
        status = await eng.status()
        again = await eng.reload()
        await eng.shutdown()
        return still, dry, done, status, again

    still, dry, done, status, again = asyncio.run(go())
    why = "failed: TUNSETIFF zqb0: Device or resource busy"
    assert still["actions"][0] == f"could not retry interface zqb0 ({why}): TUNSETIFF zqb0: " \
                                  "Device or resource busy"
    assert dry["actions"] == [f"retry interface zqb0 ({why})",
                              "stop worker of tunnel held (interface zqb0 is retried)",
                              "bind a udp socket for tunnel held (to reach 127.0.0.1:9)",
                              "start worker of tunnel held"]
    assert done["actions"] == dry["actions"]
    assert done["changed"] == {"interfaces": ["zqb0"], "tunnels": ["held"]}
    assert "zqb0" not in done["unchanged"]["interfaces"]
    assert [a[0] for a in ip.links["zqb0"].addresses] == ["10.91.6.1/24"]
    assert status["interfaces"]["zqb0"]["error"] is None
    assert [w.spec.tunnel for w in FakeWorker.all].count("held") == 1  # started once, now
    assert again["actions"] == [] and again["unchanged"]["interfaces"] == ["zqb0", "zqk0"]


def test_a_failing_rule_undoes_the_full_tunnel_and_the_reload(
        tmp_path: Path, vpn: Vpn) -> None:
    """issue 19.5: a policy rule the kernel refuses fails the reload; the table route, the
    socket mark and the peer's routes before it are undone, the old config stays."""
    import os

    if os.geteuid() != 0:
        pytest.skip("setting SO_MARK needs CAP_NET_ADMIN")

    ip, path, eng = vpn.ip, vpn.path, vpn.eng
    main = vpn.config("zqw0", "10.91.9")
    ip.fail(lambda a: a[1:4] == ["rule", "add", "not"])

    async def go() -> str:
        await _start(eng, main, path)
        old = eng.config
        (tmp_path / "tunnels.d").mkdir()
        (tmp_path / "tunnels.d" / "50-exit.toml").write_text(
            _peer("exit", "0.0.0.0/0", "10.94.0.0/24"))
        with pytest.raises(ReloadError) as e:
            await eng.reload()
        assert eng.config is old
        mark = eng.listeners["vpn"].getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
        await eng.shutdown()
        assert mark == 0
        return str(e.value)

    why = asyncio.run(go())
    assert "not fwmark 51820" in why and "undone" in why
    assert ip.policy == {}  # the table route was deleted again
    assert ip.links["zqw0"].routes == {}  # and the peer's main-table route


def test_a_recreated_full_tunnel_interface_gets_its_table_route_back(
        vpn: Vpn) -> None:
    """issue 19: recreating the device (owner changed) drops its table-51820 route with it;
    the reload adds it back and keeps the rules (no duplicate, no failed delete)."""
    import os

    if os.geteuid() != 0:
        pytest.skip("setting SO_MARK needs CAP_NET_ADMIN")
    ip, path, eng = vpn.ip, vpn.path, vpn.eng

    def conf(extra: str) -> str:  # a fresh peer key each time, as a changed peer
        return vpn.config("zqx0", "10.91.10", _peer("exit", "0.0.0.0/0"), extra)

    async def go() -> dict[str, Any]:
        await _start(eng, conf(""), path)
        assert len(ip.policy) == 3
        path.write_text(conf("owner = 0"))
        done = await eng.reload()
        mark = eng.listeners["vpn"].getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
        assert mark == 51820
        await eng.shutdown()
        return done

    done = asyncio.run(go())
    assert "[#] ip -4 route add 0.0.0.0/0 dev zqx0 table 51820 proto static" in done["actions"]
    assert not any("rule" in a for a in done["actions"]), done["actions"]
    assert ip.policy == {}  # and the stop removed it all


def test_a_reload_with_overlapping_peers_is_refused_and_the_running_peers_stay(
        tmp_path: Path, vpn: Vpn) -> None:
    """issue 17: the located peer errors of `tundctl check` refuse a reload as well (and a
    start, which loads the same way); the running worker and its peers are kept."""
    from tund.errors import ConfigError

    path, eng = vpn.path, vpn.eng
    main = vpn.config("zqo0", "10.91.9", _peer("alice", "10.91.9.2/32"))

    async def go() -> tuple[str, bool]:
        await _start(eng, main, path)
        runner, worker = eng.runners["vpn"], eng.runners["vpn"].worker
        (tmp_path / "tunnels.d").mkdir()
        (tmp_path / "tunnels.d" / "50-bob.toml").write_text(
            _peer("bob", "10.91.9.0/30"))  # overlaps alice's /32
        try:
            await eng.reload()
            message = ""
        except ConfigError as e:
            message = str(e)
        kept = eng.runners["vpn"] is runner and runner.worker is worker
        await eng.shutdown()
        return message, kept

    message, kept = asyncio.run(go())
    assert "50-bob.toml" in message and "alice" in message, message
    assert kept
    assert eng.config is not None and eng.config.tunnels["vpn"].peers is not None
    assert list(eng.config.tunnels["vpn"].peers) == ["alice"]
