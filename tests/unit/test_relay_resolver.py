"""tund.relay.transport.resolver: lookups off the loop, answered through the poller."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from tund.relay.loop.poller import Poller
from tund.relay.transport import resolver as r


def test_literals_need_no_lookup() -> None:
    assert r.literal("192.0.2.1", 5, socket.SOCK_DGRAM) == (socket.AF_INET, ("192.0.2.1", 5))
    fam, addr = r.literal("2001:db8::1", 5, socket.SOCK_DGRAM) or (0, None)
    assert fam == socket.AF_INET6 and addr[:2] == ("2001:db8::1", 5)
    assert r.literal("example.invalid", 5, socket.SOCK_DGRAM) is None


def _poll_until(sel: Poller, done: list[Any], within: float = 5.0) -> None:
    end = time.monotonic() + within
    while not done and time.monotonic() < end:
        for cb, mask in sel.poll(0.05):
            cb(mask)


def test_the_answer_arrives_through_the_poller(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow(host: str, port: int, socktype: int) -> tuple[int, Any]:
        release.wait(5)
        return socket.AF_INET, ("192.0.2.9", port)

    monkeypatch.setattr(r, "resolve", slow)
    sel, done = Poller(), []
    res = r.Resolver("peer.test", 7, socket.SOCK_DGRAM, sel, done.append)
    t0 = time.monotonic()
    res.start()
    res.start()  # one lookup at a time
    assert time.monotonic() - t0 < 1.0 and res.pending  # (the lookup waits 5 s)
    assert sel.poll(0.1) == []  # the loop turns while the lookup hangs
    release.set()
    _poll_until(sel, done)
    assert done == [(socket.AF_INET, ("192.0.2.9", 7))] and not res.pending
    res.close()
    sel.close()


def test_errors_are_answers_and_close_abandons_a_lookup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(host: str, port: int, socktype: int) -> tuple[int, Any]:
        raise OSError(0, f"cannot resolve {host!r}: nope")

    monkeypatch.setattr(r, "resolve", fail)
    sel, done = Poller(), []
    res = r.Resolver("peer.test", 7, socket.SOCK_DGRAM, sel, done.append)
    res.start()
    _poll_until(sel, done)
    assert isinstance(done[0], OSError) and "peer.test" in str(done[0])
    res.close()
    res.start()  # closed: nothing happens
    assert not res.pending
    sel.close()
