"""TCP listener with an authenticating codec (issue 16.2): a new connection waits until
a message on it is authenticated, then takes over; pending ones are bounded in time."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tund.relay.codec.base import Address
from tund.relay.loop.counters import Counters
from tund.relay.loop.poller import Poller
from tund.relay.transport import tcp
from tund.relay.transport.tcp import TcpTransport


class FakeLink:
    """Plays the pump: a frame b"AUTH" is 'authenticated' and moves the peer there."""

    busy = False

    def __init__(self) -> None:
        self.transport: TcpTransport | None = None
        self.got: list[tuple[bytes, Any]] = []
        self.states: list[bool] = []

    def deliver(self, message: bytes, source: Address | None) -> None:
        self.got.append((bytes(message), source))
        if message == b"AUTH" and source is not None:
            assert self.transport is not None
            self.transport.set_peer(source)

    def on_state(self, new_path: bool) -> None:
        self.states.append(new_path)

    def on_drained(self) -> None:
        pass


def frame(m: bytes) -> bytes:
    return struct.pack("!H", len(m)) + m


@pytest.fixture
def rig() -> Iterator[tuple[TcpTransport, FakeLink, Poller, int]]:
    srv = socket.create_server(("127.0.0.1", 0))
    sel = Poller()
    t = TcpTransport(Counters(), role="listen", host="127.0.0.1", port=0, max_message=1500,
                     listen_sock=srv, authenticates=True)
    link = FakeLink()
    link.transport = t
    t.start(sel, link, time.monotonic())
    yield t, link, sel, srv.getsockname()[1]
    t.close()
    sel.close()


def turn(sel: Poller, t: TcpTransport, n: int = 5) -> None:
    for _ in range(n):
        for callback, mask in sel.poll(0.05):
            callback(mask)
        t.flush()


def test_a_new_connection_takes_over_only_once_authenticated(rig: Any) -> None:
    """Fails on the old code: c2 replaced c1 on accept."""
    t, link, sel, port = rig
    c1 = socket.create_connection(("127.0.0.1", port), timeout=2)
    turn(sel, t)
    assert t.peer == c1.getsockname() and link.states == [True]
    c2 = socket.create_connection(("127.0.0.1", port), timeout=2)
    c2.sendall(frame(b"hello"))
    turn(sel, t)
    assert t.peer == c1.getsockname() and len(t.pending) == 1
    assert link.got == [(b"hello", c2.getsockname())]  # to the codec, with its own source
    assert t.send(b"data")
    turn(sel, t)
    assert c1.recv(100) == frame(b"data")  # the tunnel stays on c1
    assert t.reply_to(b"cookie", c2.getsockname())  # an unauthenticated reply: on c2
    assert c2.recv(100) == frame(b"cookie")
    c2.sendall(frame(b"AUTH"))
    turn(sel, t)
    assert t.peer == c2.getsockname() and t.pending == []
    assert link.states == [True, False]  # the session goes on: no new path for the codec
    assert c1.recv(100) == b""  # the old one is closed
    assert t.send(b"more")
    turn(sel, t)
    assert c2.recv(100) == frame(b"more")
    c1.close()
    c2.close()


def test_pending_connections_expire_and_the_newest_takes_over_a_lost_one(rig: Any) -> None:
    t, _link, sel, port = rig
    c1 = socket.create_connection(("127.0.0.1", port), timeout=2)
    turn(sel, t)
    waiting = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(3)]
    turn(sel, t)
    assert len(t.pending) == 3
    deadline = t.next_deadline()
    assert deadline is not None and deadline <= time.monotonic() + tcp.PENDING_LIFETIME
    t.tick(time.monotonic() + tcp.PENDING_LIFETIME + 0.1)
    assert t.pending == [] and t.next_deadline() is None
    for s in waiting:
        assert s.recv(10) == b""
    c2 = socket.create_connection(("127.0.0.1", port), timeout=2)
    turn(sel, t)
    c1.close()  # the current one is lost: the waiting one takes over
    turn(sel, t)
    assert t.peer == c2.getsockname() and t.state == "up"
    for s in [*waiting, c2]:
        s.close()
