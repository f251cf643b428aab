"""UdpTransport batching over real loopback sockets: UDP_SEGMENT trains out, UDP_GRO in.

A train sent with UDP_SEGMENT must reach a plain receiver as the same datagrams in the
same order; a GRO-coalesced train (loopback keeps a GSO train whole for a UDP_GRO socket)
must be split back into its datagrams before the pump sees them.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import time
from collections.abc import Callable

import pytest

from tund.relay.codec.base import Address
from tund.relay.loop.counters import Counters
from tund.relay.transport import segments
from tund.relay.transport.gso import SOL_UDP, UDP_SEGMENT
from tund.relay.transport.udp import UdpTransport


class Sink:
    busy = True  # read whole batches (tund.relay.transport.base.Link.busy)

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address | None]] = []

    def deliver(self, message: bytes, source: Address | None) -> None:
        self.got.append((message, source))

    def on_state(self, new_path: bool) -> None:
        pass

    def on_drained(self) -> None:
        pass


class TrainSink(Sink):
    """A link with ``deliver_train`` (as the pump has): a GRO train in one call."""

    def __init__(self) -> None:
        super().__init__()
        self.trains: list[tuple[int, Address | None]] = []

    def deliver_train(self, data: bytes, size: int, source: Address | None) -> None:
        self.trains.append((size, source))
        for at in range(0, len(data), size):
            self.deliver(data[at:at + size], source)


def messages() -> list[bytes]:
    out = [bytes([i]) * 1000 for i in range(20)] + [b"s" * 500]  # a train, short last
    out += [b"x" * 700, b"y" * 700, b""]  # another train, then an empty keepalive
    out += [b"z" * 1200] + [bytes([100 + i]) * 900 for i in range(70)]  # > GSO_SEGMENTS
    return out


def test_queued_datagrams_leave_in_order_as_trains() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    sel = selectors.DefaultSelector()
    c = Counters()
    tx = UdpTransport(c, role="remote", host="127.0.0.1", port=rx.getsockname()[1])
    tx.start(sel, Sink(), time.monotonic())
    try:
        sent = messages()
        for m in sent:
            assert tx.send(m)
        tx.flush()
        got = [rx.recvfrom(65536)[0] for _ in sent]
        assert got == sent
        assert tx.gso and c.drops == {} and c.errors == 0
    finally:
        tx.close()
        rx.close()
        sel.close()


@pytest.mark.parametrize("link", [Sink, TrainSink])
def test_a_gro_train_is_split_back_into_its_datagrams(link: type[Sink]) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.bind(("127.0.0.1", 0))
    sel = selectors.DefaultSelector()
    sink = link()
    rx = UdpTransport(Counters(), role="listen", host="127.0.0.1", port=0, sock=lsock)
    rx.start(sel, sink, time.monotonic())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(lsock.getsockname())
    try:
        train = [bytes([i]) * 1200 for i in range(10)] + [b"end" * 100]
        tx.sendmsg([b"".join(train)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 1200))])
        deadline = time.monotonic() + 5
        while len(sink.got) < len(train) and time.monotonic() < deadline:
            for key, mask in sel.select(0.1):
                key.data(mask)
        assert [m for m, _ in sink.got] == train
        assert {src for _, src in sink.got} == {tx.getsockname()}
        if isinstance(sink, TrainSink):  # the whole train in one call
            assert sink.trains == [(1200, tx.getsockname())]
    finally:
        rx.close()
        tx.close()
        sel.close()


def _pump(sel: selectors.BaseSelector, until: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not until() and time.monotonic() < deadline:
        for key, mask in sel.select(0.1):
            key.data(mask)


def test_a_message_as_a_train_leaves_in_one_send_and_is_delivered_once() -> None:
    """A 64 KB message (a super-packet sent whole) as a train goes out in one
    UDP_SEGMENT send and comes back, through a UDP_GRO socket, as the message alone."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.bind(("127.0.0.1", 0))
    sel = selectors.DefaultSelector()
    sink = Sink()
    rc, tc = Counters(), Counters()
    rx = UdpTransport(rc, role="listen", host="127.0.0.1", port=0, sock=lsock)
    rx.start(sel, sink, time.monotonic())
    tx = UdpTransport(tc, role="remote", host="127.0.0.1", port=lsock.getsockname()[1])
    tx.start(sel, Sink(), time.monotonic())
    assert tx.sock is not None
    sends = 0
    real_sendmsg = tx.sock.sendmsg

    class Counted:  # the socket's sendmsg, counted (socket objects take no attributes)
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def sendmsg(self, *a: object) -> int:
            nonlocal sends
            sends += 1
            return real_sendmsg(*a)  # type: ignore[arg-type]

    real = tx.sock
    tx.sock = Counted()  # type: ignore[assignment]
    try:
        big = os.urandom(64_430)
        t = segments.train(big, 1420)
        assert t is not None and tx.send(t) and tx.send(b"after")
        tx.flush()
        _pump(sel, lambda: len(sink.got) >= 2)
        assert [m for m, _ in sink.got] == [big, b"after"]
        assert sends == 1  # the whole message in one train (the lone datagram by send)
        assert rc.drops == {} and tc.drops == {}
        # a datagram lost: nothing delivered; the next train's header counts the loss
        parts = [t[o:o + 1420] for o in range(0, len(t), 1420)]
        for p in parts[:5] + parts[6:]:
            real.send(p)
        real.sendmsg([t], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 1420))])
        _pump(sel, lambda: len(sink.got) >= 3)
        assert [m for m, _ in sink.got[2:]] == [big]
        assert rc.drops == {"segments_incomplete": 1}
    finally:
        tx.sock = real
        tx.close()
        rx.close()
        sel.close()


def test_a_train_with_parity_is_rebuilt_from_datagrams_read_one_by_one() -> None:
    """A chunk's train with parity over real sockets: sent whole it comes back as the
    message; read datagram by datagram (a lossy link: no GRO) with one lost, the
    transport rebuilds it and says so."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.bind(("127.0.0.1", 0))
    sel = selectors.DefaultSelector()
    sink, rc, rebuilt = Sink(), Counters(), []
    rx = UdpTransport(rc, role="listen", host="127.0.0.1", port=0, sock=lsock)
    rx.on_recovered(rebuilt.append)
    rx.start(sel, sink, time.monotonic())
    tx = UdpTransport(Counters(), role="remote", host="127.0.0.1",
                      port=lsock.getsockname()[1])
    tx.start(sel, Sink(), time.monotonic())
    assert tx.sock is not None
    try:
        chunk = os.urandom(11_000)
        t = segments.parity_train(chunk, 1420, 1)
        assert t is not None and tx.send(t)
        tx.flush()  # one UDP_SEGMENT send
        _pump(sel, lambda: len(sink.got) >= 1)
        assert [m for m, _ in sink.got] == [chunk] and rebuilt == []
        t2 = segments.parity_train(chunk[::-1], 1420, 2)
        assert t2 is not None
        size = segments.train_size(t2)
        parts = [t2[o:o + size] for o in range(0, len(t2), size)]
        for p in parts[:3] + parts[4:]:  # the fourth lost on the way
            tx.sock.send(p)
            time.sleep(0.001)  # (one by one, as from a wire: no GRO run)
        _pump(sel, lambda: len(sink.got) >= 2)
        assert [m for m, _ in sink.got[1:]] == [chunk[::-1]] and rebuilt == [1]
        assert rc.drops == {}
    finally:
        tx.close()
        rx.close()
        sel.close()


def test_with_many_peers_two_senders_trains_interleaved_are_each_joined() -> None:
    """A listener with many peers (``multi``) joins trains per sender: two tund clients'
    trains, plain and with parity, arriving datagram by datagram interleaved, both come
    out whole, and a rebuilt datagram is reported with its sender. (One reassembler for
    all gives each train up at the other sender's datagram: ``segments_incomplete``.)"""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.bind(("127.0.0.1", 0))
    sel = selectors.DefaultSelector()
    sink, rc = Sink(), Counters()
    rebuilt: list[tuple[int, Address | None]] = []
    rx = UdpTransport(rc, role="listen", host="127.0.0.1", port=0, sock=lsock, multi=True)
    rx.on_recovered(lambda n, source=None: rebuilt.append((n, source)))
    rx.start(sel, sink, time.monotonic())
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for s in senders:
            s.connect(lsock.getsockname())
        chunk = [os.urandom(11_000), os.urandom(9_000)]
        trains = [segments.train(chunk[0], 1420), segments.parity_train(chunk[1], 1420, 7)]
        assert trains[0] is not None and trains[1] is not None
        parts = []
        for t in trains:
            size = segments.train_size(t)
            parts.append([t[o:o + size] for o in range(0, len(t), size)])
        del parts[1][2]  # one of the parity train's datagrams lost
        for i in range(max(len(p) for p in parts)):
            for k in (0, 1):
                if i < len(parts[k]):
                    senders[k].send(parts[k][i])
                    time.sleep(0.001)  # one by one: no GRO run
        _pump(sel, lambda: len(sink.got) >= 2)
        got = {source: m for m, source in sink.got}
        names = [s.getsockname() for s in senders]
        assert got == {names[0]: chunk[0], names[1]: chunk[1]}, rc.drops
        assert rebuilt == [(1, names[1])] and rc.drops == {}
    finally:
        for s in senders:
            s.close()
        rx.close()
        sel.close()
