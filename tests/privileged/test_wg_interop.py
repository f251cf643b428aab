"""Interop: tund's WireGuardCodec against the real wireguard-go, in throwaway netns.

Topology (per test)::

    netns A: wireguard-go on wg iface 10.230.1.1/24 --veth 10.230.0.1/24 ----+
    netns B: driver (this file, run as a module) with a TUN 10.230.1.2/24,     |
             UDP :51821, WireGuardCodec  --veth 10.230.0.2/24 ----------------+

The driver is a test-only pump (TUNSETIFF + one UDP socket + the codec), independent of
the relay worker. It is started with ``python -m tests.privileged.test_wg_interop`` and
reads its settings (keys included) as JSON on stdin.
"""

from __future__ import annotations

import fcntl
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.netns import Netns, tool_missing, unique, veth

REPO = Path(__file__).resolve().parents[2]
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
WG_PORT, DRIVER_PORT = 51820, 51821


# --------------------------------------------------------------------------- driver


def drive(cfg: dict[str, Any]) -> None:
    """Pump packets between a new TUN device and UDP through a WireGuardCodec."""
    from tund.relay.wireguard.codec import WireGuardCodec
    from tund.workerapi.spec import WorkerSpec

    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", cfg["ifname"].encode(), IFF_TUN | IFF_NO_PI))
    for argv in (["ip", "addr", "add", cfg["addr"], "dev", cfg["ifname"]],
                 ["ip", "link", "set", cfg["ifname"], "mtu", "1420", "up"]):
        print("[#]", " ".join(argv), flush=True)
        subprocess.run(argv, check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", DRIVER_PORT))
    remote = cfg.get("remote")
    spec = WorkerSpec(tunnel="interop", interface=cfg["ifname"], mode="tun", transport="udp",
                      role="remote" if remote else "listen",
                      host=remote[0] if remote else "0.0.0.0",
                      port=remote[1] if remote else DRIVER_PORT, device_fd=fd, mtu=1420,
                      encryption="wireguard", private_key=cfg["private_key"],
                      peer_public_key=cfg["peer_public_key"], preshared_key=cfg.get("psk"))
    codec = WireGuardCodec(spec)
    peer: tuple[str, int] | None = (remote[0], remote[1]) if remote else None

    def send(messages: list[bytes]) -> None:
        for m in messages:
            if peer is not None:
                sock.sendto(m, peer)

    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ, "tun")
    sel.register(sock, selectors.EVENT_READ, "udp")
    send(codec.on_connected(time.monotonic()))
    print("ready", flush=True)
    end = time.monotonic() + cfg.get("seconds", 60)
    while (now := time.monotonic()) < end:
        deadline = codec.next_deadline()
        wait = 0.5 if deadline is None else min(0.5, max(0.0, deadline - now))
        for key, _ in sel.select(wait):
            now = time.monotonic()
            if key.data == "tun":
                send(codec.seal(os.read(fd, 65536), now))
            else:
                data, src = sock.recvfrom(65536)
                r = codec.open(data, src, now)
                if r.drop:
                    print("drop", r.drop, flush=True)
                    continue
                if r.authenticated:
                    peer = src
                for p in r.packets:
                    os.write(fd, p)
                send(r.replies)
        send(codec.tick(time.monotonic()))
        print("stats", json.dumps(codec.stats()), flush=True)  # last line wins
    os.close(fd)


# --------------------------------------------------------------------------- tests


def _keypair() -> tuple[str, str]:
    from tund.keys import generate_private_key, public_key
    priv = generate_private_key()
    return priv, public_key(priv)


def _wait_for(pred: Any, within: float, what: str) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def _start_wireguard_go(ns: Netns, tmp: Path, priv: str, peer_pub: str,
                        endpoint: str | None, psk: str | None) -> str:
    ifname = unique("wg")
    sock = Path(f"/var/run/wireguard/{ifname}.sock")
    ns.spawn("wireguard-go", "-f", ifname, log=tmp / "wireguard-go.log",
             env={"LOG_LEVEL": "debug", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
    _wait_for(sock.exists, 10, f"{sock}")
    key_file = tmp / "wg.key"
    key_file.write_text(priv + "\n")
    key_file.chmod(0o600)
    argv = ["wg", "set", ifname, "private-key", str(key_file), "listen-port", str(WG_PORT),
            "peer", peer_pub, "allowed-ips", "10.230.1.2/32"]
    if endpoint:
        argv += ["endpoint", endpoint]
    if psk:
        psk_file = tmp / "wg.psk"
        psk_file.write_text(psk + "\n")
        psk_file.chmod(0o600)
        argv += ["preshared-key", str(psk_file)]
    ns.run(*argv)
    ns.run("ip", "addr", "add", "10.230.1.1/24", "dev", ifname)
    ns.run("ip", "link", "set", ifname, "up")
    return ifname


def _start_driver(ns: Netns, tmp: Path, cfg: dict[str, Any]) -> Path:
    log = tmp / "driver.log"
    p = ns.spawn(sys.executable, "-m", "tests.privileged.test_wg_interop", log=log,
                 env={"PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE)
    assert p.stdin is not None
    p.stdin.write(json.dumps(cfg).encode())
    p.stdin.close()
    _wait_for(lambda: log.exists() and "ready" in log.read_text(), 15, "the driver to be ready")
    return log


def _driver_stats(log: Path) -> dict[str, Any]:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("stats ")]
    return json.loads(lines[-1][6:]) if lines else {}


def _latest_handshake(ns: Netns, ifname: str) -> int:
    out = ns.run("wg", "show", ifname, "latest-handshakes").stdout.split()
    return int(out[1]) if len(out) == 2 else 0


@pytest.mark.parametrize("tund_initiates, use_psk", [(True, False), (False, True),
                                                     (True, True)])
def test_ping_through_wireguard_go(privileged: None, tmp_path: Path, tund_initiates: bool,
                                   use_psk: bool) -> None:
    require(tool_missing("wireguard-go", "wg", "ping"))
    from tund.keys import generate_psk
    a, b = Netns.make("wga"), Netns.make("wgb")
    veth(a, "10.230.0.1/24", b, "10.230.0.2/24")
    wg_priv, wg_pub = _keypair()
    our_priv, our_pub = _keypair()
    psk = generate_psk() if use_psk else None
    ifname = _start_wireguard_go(a, tmp_path, wg_priv, our_pub,
                                 None if tund_initiates else f"10.230.0.2:{DRIVER_PORT}", psk)
    tun = unique("wgt")
    log = _start_driver(b, tmp_path, {
        "ifname": tun, "addr": "10.230.1.2/24", "private_key": our_priv,
        "peer_public_key": wg_pub, "psk": psk, "seconds": 60,
        "remote": ["10.230.0.1", WG_PORT] if tund_initiates else None})
    try:
        # Narrative: nothing has been exchanged yet, then the first ping drives the handshake.
        if tund_initiates:
            assert b.wait_ping("10.230.1.1", within=20) < 20
            assert a.ping("10.230.1.2", count=3)
        else:
            assert a.wait_ping("10.230.1.2", within=20) < 20
            assert b.ping("10.230.1.1", count=3)
        assert _latest_handshake(a, ifname) > 0
        _wait_for(lambda: _driver_stats(log).get("session") == "established", 5,
                  "the driver to report an established session")
        stats = _driver_stats(log)
        assert stats["latest_handshake"] is not None
        assert stats["wg_drops"] == {}, stats
        # A larger packet both ways exercises padding near the MTU.
        assert b.run("ping", "-n", "-c", "2", "-s", "1300", "-W", "2", "10.230.1.1",
                     check=False).returncode == 0
    except AssertionError:
        print((tmp_path / "wireguard-go.log").read_text()[-3000:])
        print(log.read_text()[-3000:])
        raise


def test_wrong_key_never_connects(privileged: None, tmp_path: Path) -> None:
    """A driver with a key wireguard-go does not know gets no session (assert failure)."""
    require(tool_missing("wireguard-go", "wg", "ping"))
    a, b = Netns.make("wga"), Netns.make("wgb")
    veth(a, "10.230.0.1/24", b, "10.230.0.2/24")
    wg_priv, wg_pub = _keypair()
    _, stranger_pub = _keypair()
    our_priv, _ = _keypair()
    ifname = _start_wireguard_go(a, tmp_path, wg_priv, stranger_pub, None, None)
    _start_driver(b, tmp_path, {
        "ifname": unique("wgt"), "addr": "10.230.1.2/24", "private_key": our_priv,
        "peer_public_key": wg_pub, "seconds": 20, "remote": ["10.230.0.1", WG_PORT]})
    assert not b.ping("10.230.1.1", count=3, timeout=1)
    assert _latest_handshake(a, ifname) == 0


if __name__ == "__main__":
    drive(json.loads(sys.stdin.read()))
