"""``allowed_sources`` on a UDP listener (issue 16.2): datagrams from elsewhere are
dropped before the codec (counted ``source_refused``) and never teach it a peer."""

from __future__ import annotations

import socket

from tests.component.test_relay_worker import Factory, packet, worker

__all__ = ["worker"]


def test_udp_listener_drops_datagrams_from_outside_allowed_sources(worker: Factory) -> None:
    a, dev = worker("udp", "listen", allowed_sources=("127.0.0.2/32", "2001:db8::/32"))
    port = a.port  # type: ignore[attr-defined]
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    for i in range(3):
        stranger.sendto(packet(i), ("127.0.0.1", port))
    friend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    friend.bind(("127.0.0.2", 0))
    friend.sendto(packet(7), ("127.0.0.1", port))
    dev.settimeout(5)
    assert dev.recv(4096) == packet(7)  # the stranger's three never reached the device
    stats = a.ping()
    assert stats["drops"] == {"source_refused": 3} and stats["rx_packets"] == 1
    assert stats["peer"] == f"127.0.0.2:{friend.getsockname()[1]}"
    stranger.close()
    friend.close()
