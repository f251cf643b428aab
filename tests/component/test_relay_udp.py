"""UDP transport of a real worker: learning the peer, roaming, ICMP errors, keepalives."""

from __future__ import annotations

import socket
import time

from tests.component.test_relay_worker import Factory, packet, worker

__all__ = ["worker"]  # the fixture, shared with test_relay_worker


def test_listen_learns_the_peer_and_follows_it_when_it_moves(worker: Factory) -> None:
    a, dev = worker("udp", "listen")
    port = a.port  # type: ignore[attr-defined]
    a.wait_state("connecting")
    s1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (s1, s2):
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
    s1.sendto(b"\x15garbage", ("127.0.0.1", port))  # malformed: must not become the peer
    s1.sendto(packet(1), ("127.0.0.1", port))
    assert dev.recv(4096) == packet(1)
    up = a.wait_state("up")
    assert up["peer"] == f"127.0.0.1:{s1.getsockname()[1]}"
    dev.send(packet(2))
    assert s1.recv(4096) == packet(2)
    s2.sendto(packet(3), ("127.0.0.1", port))  # the peer roams
    assert dev.recv(4096) == packet(3)
    moved = a.wait_state("up")
    assert moved["peer"] == f"127.0.0.1:{s2.getsockname()[1]}"
    dev.send(packet(4))
    assert s2.recv(4096) == packet(4)
    stats = a.ping()
    assert stats["drops"] == {"malformed": 1} and stats["rx_packets"] == 2
    s1.close()
    s2.close()


def test_malformed_first_datagram_does_not_set_the_peer(worker: Factory) -> None:
    a, _dev = worker("udp", "listen")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"\x15garbage", ("127.0.0.1", a.port))  # type: ignore[attr-defined]
    stats = a.wait_stats(lambda st: st["drops"].get("malformed") == 1)
    assert stats["peer"] is None and stats["state"] == "connecting"
    s.close()


def test_remote_says_hello_so_the_listener_knows_it_at_once(worker: Factory) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    _b, dev = worker("udp", "remote", port=srv.getsockname()[1], keepalive=1)
    data, addr = srv.recvfrom(100)
    assert data == b""  # hello
    t0 = time.monotonic()
    data, _ = srv.recvfrom(100)  # then a keepalive about a second later (idle)
    assert data == b"" and 0.5 < time.monotonic() - t0 < 3
    dev.send(packet(1))
    assert srv.recv(4096) == packet(1)
    srv.sendto(packet(2), addr)
    assert dev.recv(4096) == packet(2)
    srv.close()


def test_icmp_errors_are_counted_not_fatal(worker: Factory) -> None:
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    port = gone.getsockname()[1]
    gone.close()  # nothing listens there: loopback answers with port unreachable
    b, dev = worker("udp", "remote", port=port)
    b.wait_state("unverified")  # nothing comes back from there (issue 15.1)
    for i in range(5):
        dev.send(packet(i))
        time.sleep(0.05)
    stats = b.wait_stats(lambda st: st["errors"] >= 1)
    assert b.proc.poll() is None and stats["state"] == "unverified"
