"""A UDP listener on a wildcard address answers from the address the peer sent to
(issue 15.7). Loopback holds all of 127/8: the peer sends to 127.0.0.2 from 127.0.0.1,
so the routing table's choice for the reply (127.0.0.1) is the wrong one."""

from __future__ import annotations

import socket
import time
from typing import Any

from tund.relay.codec.base import Address
from tund.relay.loop.counters import Counters
from tund.relay.loop.poller import Poller
from tund.relay.transport.udp import UdpTransport


class FakeLink:
    """Plays the pump: every datagram is authenticated (moves the peer there)."""

    busy = True

    def __init__(self) -> None:
        self.transport: UdpTransport | None = None
        self.got: list[tuple[bytes, Any]] = []

    def deliver(self, message: bytes, source: Address | None) -> None:
        self.got.append((bytes(message), source))
        assert self.transport is not None and source is not None
        if message.startswith(b"auth"):
            self.transport.set_peer(source)

    def on_state(self, new_path: bool) -> None:
        pass

    def on_drained(self) -> None:
        pass


def _listener(bind: str) -> tuple[UdpTransport, FakeLink, Poller, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 0))
    t = UdpTransport(Counters(), role="listen", host=bind, port=0, sock=sock)
    link = FakeLink()
    link.transport = t
    sel = Poller()
    t.start(sel, link, time.monotonic())
    return t, link, sel, sock.getsockname()[1]


def _turn(sel: Poller, t: UdpTransport) -> None:
    for _ in range(3):
        for callback, mask in sel.poll(0.05):
            callback(mask)
        t.flush()


def test_wildcard_listener_replies_from_the_address_the_peer_sent_to() -> None:
    """Fails on the old code: the reply came from 127.0.0.1, and a peer connected to
    127.0.0.2 never saw it."""
    t, _link, sel, port = _listener("0.0.0.0")
    assert t.sticky
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    try:
        peer.sendto(b"auth hello", ("127.0.0.2", port))
        _turn(sel, t)
        assert t.peer == peer.getsockname()
        t.send(b"one")  # single datagram
        t.flush()
        assert peer.recvfrom(100) == (b"one", ("127.0.0.2", port))
        for _ in range(4):  # a GSO train
            t.send(b"x" * 100)
        t.flush()
        for _ in range(4):
            assert peer.recvfrom(200)[1] == ("127.0.0.2", port)
        assert t.send_now(b"now")
        assert peer.recvfrom(100) == (b"now", ("127.0.0.2", port))
        # a stranger (not authenticated) gets its reply from where it sent to
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        stranger.settimeout(2)
        stranger.sendto(b"hi", ("127.0.0.3", port))
        _turn(sel, t)
        assert t.reply_to(b"cookie", stranger.getsockname())
        assert stranger.recvfrom(100) == (b"cookie", ("127.0.0.3", port))
        stranger.close()
        # the peer now sends to another of our addresses: replies follow
        peer.sendto(b"data", ("127.0.0.4", port))
        _turn(sel, t)
        t.send(b"two")
        t.flush()
        assert peer.recvfrom(100) == (b"two", ("127.0.0.4", port))
    finally:
        peer.close()
        t.close()
        sel.close()


def test_a_listener_bound_to_one_address_uses_no_control_messages() -> None:
    t, _link, sel, port = _listener("127.0.0.1")
    try:
        assert not t.sticky
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2)
        peer.sendto(b"auth", ("127.0.0.1", port))
        _turn(sel, t)
        t.send(b"one")
        t.flush()
        assert peer.recvfrom(100) == (b"one", ("127.0.0.1", port))
        peer.close()
    finally:
        t.close()
        sel.close()


def test_ipv6_wildcard_listener_answers_v4_mapped_peers_from_their_address() -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    t = UdpTransport(Counters(), role="listen", host="::", port=0, sock=sock)
    link = FakeLink()
    link.transport = t
    sel = Poller()
    t.start(sel, link, time.monotonic())
    port = sock.getsockname()[1]
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    try:
        assert t.sticky
        peer.sendto(b"auth", ("127.0.0.5", port))
        _turn(sel, t)
        t.send(b"one")
        t.flush()
        assert peer.recvfrom(100) == (b"one", ("127.0.0.5", port))
    finally:
        peer.close()
        t.close()
        sel.close()
