"""A connecting UDP tunnel's socket is the daemon's (issue 19): made by
:func:`tund.workerapi.underlay.connector_socket` (with the tunnel's mark), handed to the
worker, which connects it to the resolved remote and never replaces it (a socket of its
own would lack the mark: a loop under policy routing).

Over loopback, no root needed except for the mark (skipped without it).
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.component.test_relay_udp_gso import Sink
from tund.config import parse_text
from tund.daemon import specs
from tund.relay.loop.counters import Counters
from tund.relay.process.build import make_transport
from tund.relay.transport.resolver import Result
from tund.relay.transport.udp import UdpTransport
from tund.workerapi.spec import WorkerSpec
from tund.workerapi.underlay import connector_socket


def test_its_family_follows_the_remote_and_a_host_name_gets_both() -> None:
    with connector_socket("127.0.0.1") as s4, connector_socket("::1") as s6, \
            connector_socket("vpn.example.org") as named:
        assert s4.family == socket.AF_INET and s4.getsockname()[1] > 0
        assert s6.family == socket.AF_INET6
        assert named.family == socket.AF_INET6  # reaches IPv4 addresses too
        assert named.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert not os.get_inheritable(s4.fileno())


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
def test_the_daemon_marks_it_before_any_worker_has_it() -> None:
    cfg = parse_text('[interfaces.a]\nmode = "tun"\nroutes = ["0.0.0.0/0"]\n[tunnels.t]\n'
                     'interface = "a"\nremote = "127.0.0.1:9"\nencryption = "none"\n')
    t = cfg.tunnels["t"]
    assert specs.daemon_binds(t)
    with specs.bind_underlay(t, 51820) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 51820
    tcp = cfg.tunnels["t"].model_copy(update={"transport": "tcp"})
    assert not specs.daemon_binds(tcp)  # its worker opens one per connection


@contextmanager
def _running(t: UdpTransport) -> Iterator[selectors.DefaultSelector]:
    sel = selectors.DefaultSelector()
    t.start(sel, Sink(), time.monotonic())
    try:
        yield sel
    finally:
        t.close()
        sel.close()


def _spec(fd: int, host: str, port: int) -> WorkerSpec:
    return WorkerSpec(tunnel="t", interface="a", mode="tun", transport="udp", role="remote",
                      host=host, port=port, device_fd=-1, socket_fd=fd)


def test_the_worker_sends_from_the_given_socket_and_keeps_it_when_the_name_moves() -> None:
    rx4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx4.bind(("127.0.0.1", 0))
    rx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx6.bind(("::1", 0))
    daemon = connector_socket("tund-test.invalid")  # a name: the dual-stack socket
    local = daemon.getsockname()[1]
    worker_fd = os.dup(daemon.fileno())  # the worker's copy (as pass_fds gives it)
    t = make_transport(_spec(worker_fd, "tund-test.invalid", rx4.getsockname()[1]),
                       Counters())
    assert isinstance(t, UdpTransport)
    for rx in (rx4, rx6):
        rx.settimeout(5)
    with _running(t):
        given = t.sock
        assert given is not None and given.fileno() == worker_fd
        # the name resolves to an IPv4 address: reached through the IPv6 socket, mapped
        answer: Result = (socket.AF_INET, ("127.0.0.1", rx4.getsockname()[1]))
        t._resolved(answer)
        assert t.state == "up" and t.sock is given
        assert t.send(b"hello") and (t.flush() or True)
        data, src = rx4.recvfrom(100)
        assert data == b"hello" and src[1] == local  # from the daemon's port
        # again: the same address, nothing to do (no "now resolves to" every lookup)
        t._resolved(answer)
        assert t.peer == ("::ffff:127.0.0.1", rx4.getsockname()[1])
        # it moves to an IPv6 address: the same socket, re-pointed
        t._resolved((socket.AF_INET6, ("::1", rx6.getsockname()[1], 0, 0)))
        assert t.sock is given
        assert t.send(b"moved") and (t.flush() or True)
        data, src = rx6.recvfrom(100)
        # (dissolving the IPv4 association lets the kernel pick another port)
        assert data == b"moved" and src[1] == given.getsockname()[1]
    daemon.close()
    rx4.close()
    rx6.close()


def test_an_ipv4_socket_cannot_reach_an_ipv6_address_a_problem_not_a_new_socket() -> None:
    daemon = connector_socket("127.0.0.1")
    t = make_transport(_spec(os.dup(daemon.fileno()), "127.0.0.1", 9), Counters())
    assert isinstance(t, UdpTransport)
    with _running(t):
        given = t.sock
        t._resolved((socket.AF_INET6, ("::1", 9, 0, 0)))
        assert t.sock is given and t.problem is not None and "IPv6" in t.problem
        assert t.next_deadline() is not None  # retried
    daemon.close()
