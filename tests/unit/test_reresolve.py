"""Re-resolving peers' endpoint names (issue 18.6): which peers are due, at most once per
STALE_AFTER, the lookup off the event loop, and the worker told the new address."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tund import keys
from tund.config import parse_text
from tund.daemon import reresolve
from tund.daemon.engine import Engine
from tund.daemon.reresolve import STALE_AFTER, Reresolver, host_name

NOW = 1_000_000.0


@pytest.fixture
def cfg(tmp_path: Path) -> Any:
    key = tmp_path / "s.key"
    key.write_text(keys.generate_private_key() + "\n")
    key.chmod(0o600)
    return _cfg(key)


def _cfg(key: Path) -> Any:
    def pub() -> str:
        return keys.public_key(keys.generate_private_key())

    peers = {"stale": ("vpn.example.org:51820", True), "fresh": ("b.example.org:1", True),
             "literal": ("192.0.2.7:51820", True), "off": ("d.example.org:1", False),
             "never": ("e.example.org:2", True), "roaming": (None, True)}
    text = ('[interfaces.ten0]\nmode = "tun"\naddresses = ["10.0.0.1/24"]\n\n'
            '[tunnels.vpn]\ninterface = "ten0"\nlisten = "0.0.0.0:51820"\n'
            f'private_key_file = "{key}"\n\n'
            "[tunnels.vpn.peers]\n")
    for i, (name, (endpoint, enabled)) in enumerate(peers.items()):
        ep = f'endpoint = "{endpoint}"\n' if endpoint else ""
        text += (f'[tunnels.vpn.peers.{name}]\npublic_key = "{pub()}"\n'
                 f'allowed_ips = ["10.0.0.{i + 2}/32"]\n{ep}enabled = {str(enabled).lower()}\n')
    return parse_text(text)


LIVE = {"stale": {"latest_handshake": NOW - 200, "endpoint": "198.51.100.1:51820"},
        "fresh": {"latest_handshake": NOW - 10, "endpoint": "198.51.100.2:1"},
        "literal": {"latest_handshake": NOW - 500, "endpoint": "192.0.2.7:51820"},
        "never": {"latest_handshake": None, "endpoint": None}}


def test_host_name() -> None:
    assert host_name("vpn.example.org:51820") == ("vpn.example.org", 51820)
    assert host_name("192.0.2.1:5") is None and host_name("[2001:db8::1]:5") is None
    assert host_name(None) is None


def test_due_peers_and_rate_limit(cfg: Any) -> None:
    clock = [NOW]
    r = Reresolver(clock=lambda: clock[0])
    assert r.due(cfg, "vpn", LIVE, worker_since=NOW - 300) == [
        ("stale", "vpn.example.org", 51820), ("never", "e.example.org", 2)]
    assert r.due(cfg, "vpn", LIVE, worker_since=NOW - 300) == []  # once per STALE_AFTER
    clock[0] += STALE_AFTER + 1  # now "fresh" has had no handshake for 131 s either
    assert [d[0] for d in r.due(cfg, "vpn", LIVE, NOW - 300)] == ["stale", "fresh", "never"]
    # a worker that started a moment ago gives its peers time for a first handshake
    assert Reresolver(clock=lambda: NOW).due(cfg, "vpn", LIVE, worker_since=NOW - 5) == [
        ("stale", "vpn.example.org", 51820)]


def test_check_records_only_a_changed_address(cfg: Any) -> None:
    answers = {"vpn.example.org": "203.0.113.9:51820", "e.example.org": None}

    async def look(host: str, port: int) -> str | None:
        return answers[host]

    r = Reresolver(look, clock=lambda: NOW)
    assert asyncio.run(r.check(cfg, "vpn", LIVE, NOW - 300)) is True
    assert r.overrides == {"vpn": {"stale": "203.0.113.9:51820"}}
    same = Reresolver(lambda h, p: _const("198.51.100.1:51820"), clock=lambda: NOW)
    assert asyncio.run(same.check(cfg, "vpn", {"stale": LIVE["stale"]}, NOW)) is False


async def _const(value: str) -> str:
    return value


def test_lookup_runs_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def slow(*args: Any, **kw: Any) -> Any:
        time.sleep(0.5)  # a slow DNS server
        return real("127.0.0.1", args[1], type=socket.SOCK_DGRAM)

    monkeypatch.setattr(socket, "getaddrinfo", slow)

    async def go() -> tuple[str | None, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        t = asyncio.create_task(tick())
        found = await reresolve.lookup("vpn.example.org", 51820)
        t.cancel()
        return found, ticks

    found, ticks = asyncio.run(go())
    assert found == "127.0.0.1:51820"
    assert ticks >= 10, f"the loop was blocked during the lookup ({ticks} ticks in 0.5 s)"


class _Runner:
    def __init__(self) -> None:
        self.worker = object()
        self.worker_since = NOW - 300
        self.sent: list[Any] = []

    def live_peers(self) -> dict[str, Any]:
        return dict(LIVE)

    def send(self, msg: Any) -> bool:
        self.sent.append(msg)
        return True


def test_engine_tells_the_worker_the_new_address(tmp_path: Path, cfg: Any) -> None:
    async def look(host: str, port: int) -> str | None:
        return "203.0.113.9:51820" if host == "vpn.example.org" else None

    async def go() -> _Runner:
        e = Engine(tmp_path / "tunnels.toml", fork_server=False)
        e.config = cfg
        runner = _Runner()
        e.runners = {"vpn": runner}  # type: ignore[dict-item]
        e.reresolver = Reresolver(look, clock=lambda: NOW)
        await e.reresolve()
        await e.reresolve()  # nothing due: no second message
        return runner

    runner = asyncio.run(go())
    assert len(runner.sent) == 1
    entries = {p["name"]: p for p in runner.sent[0].peers}
    assert entries["stale"]["endpoint"] == "203.0.113.9:51820"
    assert entries["fresh"]["endpoint"] == "b.example.org:1"  # the others as configured
    assert "off" not in entries
