"""Poller: selectors-style registration over one epoll, callbacks with selectors masks."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from tund.relay.loop.poller import Poller

R, W = selectors.EVENT_READ, selectors.EVENT_WRITE


@pytest.fixture
def rig() -> Iterator[tuple[Poller, socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    p = Poller()
    yield p, a, b
    p.close()
    a.close()
    b.close()


def test_readiness_reaches_the_registered_callback_with_its_mask(
        rig: tuple[Poller, socket.socket, socket.socket]) -> None:
    p, a, b = rig
    seen: list[tuple[str, int]] = []
    p.register(a, R, lambda m: seen.append(("a", m)))
    assert p.poll(0.0) == []
    b.send(b"x")
    for cb, mask in p.poll(1.0):
        cb(mask)
    assert seen == [("a", R)]
    p.modify(a, R | W, lambda m: seen.append(("a2", m)))  # writable at once
    for cb, mask in p.poll(1.0):
        cb(mask)
    assert seen[-1] == ("a2", R | W)
    p.modify(a, R, lambda m: seen.append(("a3", m)))
    a.recv(10)
    assert p.poll(0.0) == []
    p.unregister(a)
    b.send(b"y")
    assert p.poll(0.0) == [] and not p.is_registered(a)


def test_hang_up_is_reported_in_the_registered_directions_only(
        rig: tuple[Poller, socket.socket, socket.socket]) -> None:
    p, a, b = rig
    p.register(a.fileno(), R, lambda m: None)
    b.close()
    ((_, mask),) = p.poll(1.0)
    assert mask == R


def test_registration_errors_are_those_of_selectors(
        rig: tuple[Poller, socket.socket, socket.socket]) -> None:
    p, a, b = rig
    p.register(a, R, lambda m: None)
    with pytest.raises(KeyError):
        p.register(a, R, lambda m: None)
    with pytest.raises(KeyError):
        p.unregister(b)
    with pytest.raises(KeyError):
        p.modify(b, R, lambda m: None)
    with pytest.raises(ValueError):
        p.register(b, 0, lambda m: None)
