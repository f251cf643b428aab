"""A relay worker as a real subprocess: control exchanges and a two-worker pair.

The device is a SEQPACKET socketpair (one packet per read, like a TUN fd); the underlay
is loopback TCP or UDP.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.relay_support import WorkerProcess, fake_device, listening_socket
from tund.workerapi.spec import WorkerSpec

Factory = Callable[..., tuple[WorkerProcess, socket.socket]]


def packet(i: int, size: int = 100) -> bytes:
    """An IPv4-looking packet (first nibble 4) carrying its index."""
    head = b"\x45" + i.to_bytes(4, "big")
    return head + bytes([i % 251]) * (size - len(head))


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Factory]:
    """``worker(transport, role, port=..., **spec)`` -> (process, device test end)."""
    made: list[WorkerProcess] = []
    devs: list[socket.socket] = []

    def make(transport: str, role: str, port: int = 0, **kw: Any
             ) -> tuple[WorkerProcess, socket.socket]:
        dev, dev_worker = fake_device()
        sock = None
        if role == "listen":
            sock = listening_socket(transport, port=port)
            port = sock.getsockname()[1]
        name = f"rl{len(made)}{role[0]}{transport}"
        spec = WorkerSpec(tunnel=name, interface=name, mode=kw.pop("mode", "tun"),
                          transport=transport, role=role, host="127.0.0.1", port=port,  # type: ignore[arg-type]
                          device_fd=dev_worker.fileno(),
                          socket_fd=sock.fileno() if sock else None, **kw)
        w = WorkerProcess(spec, log=tmp_path / f"{name}.log")
        dev_worker.close()
        if sock:
            sock.close()
        made.append(w)
        w.port = port  # type: ignore[attr-defined]
        dev.settimeout(5)
        devs.append(dev)
        return w, dev

    yield make
    for w in made:
        w.kill()
    for d in devs:
        d.close()


def pair(worker: Factory, transport: str, **kw: Any
         ) -> tuple[WorkerProcess, socket.socket, WorkerProcess, socket.socket]:
    a, da = worker(transport, "listen", **kw)
    b, db = worker(transport, "remote", port=a.port, **kw)  # type: ignore[attr-defined]
    b.wait_state("up")
    a.wait_state("up", peer=True)
    return a, da, b, db


def relay(src: socket.socket, dst: socket.socket, packets: list[bytes]) -> bool:
    """Send ``packets`` into ``src`` in rounds of 50; True if ``dst`` got them all, in order."""
    got: list[bytes] = []
    for k in range(0, len(packets), 50):
        for p in packets[k:k + 50]:
            src.send(p)
        got += [dst.recv(65536) for _ in packets[k:k + 50]]
    return got == packets


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_pair_relays_both_ways_with_exact_counters(worker: Factory, transport: str) -> None:
    a, da, b, db = pair(worker, transport)
    n, size = 300, 200
    # in rounds of 50: a socketpair's buffer is smaller than a TUN queue
    assert relay(da, db, [packet(i, size) for i in range(n)])  # intact, in order, none lost
    assert relay(db, da, [packet(i, size + 1) for i in range(n)])

    sa, sb = a.ping(), b.ping()
    assert (sa["tx_packets"], sa["tx_bytes"], sa["rx_packets"], sa["rx_bytes"]) == (
        n, n * size, n, n * (size + 1))
    assert (sb["tx_packets"], sb["tx_bytes"], sb["rx_packets"], sb["rx_bytes"]) == (
        n, n * (size + 1), n, n * size)
    for s in (sa, sb):
        assert s["drops"] == {} and s["errors"] == 0 and s["state"] == "up"
        assert s["last_rx"] and s["last_tx"] and abs(s["last_rx"] - time.time()) < 60
    assert sb["peer"] == f"127.0.0.1:{a.port}"  # type: ignore[attr-defined]
    assert sa["peer"] is not None and sa["peer"].startswith("127.0.0.1:")
    assert a.stop() == 0 and b.stop() == 0


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_oversize_packets_are_dropped_and_counted_both_ways(worker: Factory,
                                                            transport: str) -> None:
    a, da, b, db = pair(worker, transport, mtu=1000)
    da.send(packet(1, 1001))  # device -> peer: above the MTU
    da.send(packet(2, 1000))  # exactly the MTU: passes
    assert db.recv(4096) == packet(2, 1000)
    assert a.ping()["drops"] == {"oversize": 1}
    # peer -> device: b's MTU is bigger, so a must drop what b sends
    b.stop()
    b, db = worker(transport, "remote", port=a.port, mtu=1400)  # type: ignore[attr-defined]
    b.wait_state("up")
    if transport == "tcp":
        a.wait_state("up", peer=True)
    db.send(packet(3, 1300))
    db.send(packet(4, 900))
    assert da.recv(4096) == packet(4, 900)
    sa = a.ping()
    assert sa["drops"] == {"oversize": 2} and sa["rx_packets"] == 1


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_malformed_packets_from_the_peer_are_dropped(worker: Factory, transport: str) -> None:
    a, da, _b, db = pair(worker, transport)
    db.send(b"\x15not an ip packet")  # b (tun, no PI) relays it; a refuses it
    db.send(packet(7))
    assert da.recv(4096) == packet(7)
    assert a.ping()["drops"] == {"malformed": 1}


def test_ping_is_answered_and_stop_exits_zero(worker: Factory) -> None:
    w, _ = worker("udp", "listen")
    w.wait_state("connecting")
    stats = w.ping()
    assert stats["state"] == "connecting" and stats["peer"] is None
    assert stats["tx_packets"] == 0 and stats["drops"] == {}
    assert w.stop() == 0


def test_worker_exits_when_the_daemon_goes_away(worker: Factory) -> None:
    w, _ = worker("tcp", "listen")
    w.wait_state("connecting")
    w.control.close()
    assert w.proc.wait(10) == 0


def test_device_packets_without_a_peer_are_dropped_as_no_peer(worker: Factory) -> None:
    w, dev = worker("udp", "listen")
    w.wait_state("connecting")
    for i in range(5):
        dev.send(packet(i))
    stats = w.wait_stats(lambda s: s["drops"].get("no_peer") == 5)
    assert stats["tx_packets"] == 0


def test_unusable_start_message_is_reported_and_exit_2(tmp_path: Path) -> None:
    ctl, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "tund.relay", "--control-fd",
                          str(child.fileno())], pass_fds=[child.fileno()],
                         stderr=subprocess.PIPE)
    child.close()
    ctl.send(json.dumps({"op": "start", "spec": {"tunnel": "x", "bogus": 1}}).encode())
    ctl.settimeout(10)
    msg = json.loads(ctl.recv(65536))
    assert msg["op"] == "state" and "bogus" in msg["error"]
    assert p.wait(10) == 2
    assert p.stderr is not None and b"bad start message" in p.stderr.read()
    ctl.close()


def test_dead_device_is_fatal_with_a_state_error(worker: Factory) -> None:
    w, dev = worker("udp", "listen")
    w.wait_state("connecting")
    dev.close()
    msg = w.wait_state("connecting", peer=False)
    while msg.get("error") is None:
        msg = w.wait_state("connecting", peer=False)
    assert "device" in msg["error"]
    assert w.proc.wait(10) == 1
