"""The pump's codec contract with fakes: replies, authentication, seal fan-out, drops."""

from __future__ import annotations

import json
import select
import selectors
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tund.relay.codec.base import Address, Codec, Opened
from tund.relay.device.tun import PacketDevice
from tund.relay.loop.counters import Counters
from tund.relay.loop.pump import RECHECK, Pump
from tund.relay.transport.base import Link, Transport


class FakeDevice:
    def __init__(self) -> None:
        self.inbox: list[bytes] = []  # what the device "reads"
        self.written: list[bytes] = []
        self.full = False
        self.fd = 0

    def fileno(self) -> int:
        return self.fd

    def read_batch(self, limit: int = 64) -> list[bytes]:
        out, self.inbox = self.inbox[:limit], self.inbox[limit:]
        return out

    def read_one(self) -> bytes | None:
        return self.inbox.pop(0) if self.inbox else None

    def write(self, packet: bytes) -> bool:
        if self.full:
            return False
        self.written.append(packet)
        return True

    def close(self) -> None:
        pass


class FakeTransport:
    def __init__(self) -> None:
        self.state = "up"
        self.peer: Address | None = ("192.0.2.1", 1)
        self.sent: list[bytes] = []
        self.sent_now: list[bytes] = []  # what went by send_now (also in sent)
        self.backlogged = False
        self.moves: list[Address] = []
        self.replied_to: list[Address] = []

    def start(self, sel: selectors.BaseSelector, link: Link, now: float) -> None:
        pass

    def send(self, message: bytes) -> bool:
        self.sent.append(message)
        return True

    def send_now(self, message: bytes) -> bool:
        self.sent.append(message)
        self.sent_now.append(message)
        return True

    def reply_to(self, message: bytes, source: Address) -> bool:
        self.sent.append(message)
        self.replied_to.append(source)
        return True

    def flush(self) -> None:
        pass

    def set_peer(self, addr: Address) -> None:
        self.moves.append(addr)
        self.peer = addr

    def tick(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def close(self) -> None:
        pass


class ScriptedCodec:
    """Answers ``open`` from a table; ``seal`` wraps in two messages (header + body),
    ``seal_one`` takes only packets that start with "1"; a table entry that is bytes is
    ``open_one``'s bare packet."""

    def __init__(self) -> None:
        self.table: dict[bytes, Opened | bytes] = {}

    def seal(self, packet: bytes, now: float) -> list[bytes]:
        if packet.startswith(b"Q"):
            return []  # queued: handshake pending
        return [b"H", packet]

    def seal_one(self, packet: bytes, now: float) -> bytes | None:
        return b"one:" + packet if packet.startswith(b"1") else None

    def open(self, message: bytes, source: Address | None, now: float) -> Opened:
        r = self.table[message]
        return Opened([r], [], True) if isinstance(r, bytes) else r

    def open_one(self, message: bytes, source: Address | None, now: float) -> bytes | Opened:
        return self.table[message]

    def tick(self, now: float) -> list[bytes]:
        return [b"keepalive"]

    def next_deadline(self) -> float | None:
        return 0.0

    def on_connected(self, now: float) -> list[bytes]:
        return [b"initiation"]

    def stats(self) -> dict[str, Any]:
        return {"session": "none"}


_d: PacketDevice = FakeDevice()
_t: Transport = FakeTransport()
_c: Codec = ScriptedCodec()


@pytest.fixture
def rig() -> Iterator[tuple[Pump, FakeDevice, FakeTransport, ScriptedCodec, socket.socket]]:
    daemon, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev, tr, codec = FakeDevice(), FakeTransport(), ScriptedCodec()
    pump = Pump(control=worker, device=dev, transport=tr, codec=codec, counters=Counters(),
                max_packet=100)
    yield pump, dev, tr, codec, daemon
    daemon.close()
    worker.close()


def test_replies_go_back_and_unauthenticated_sources_do_not_move_the_peer(rig: Any) -> None:
    pump, dev, tr, codec, _ = rig
    codec.table[b"init"] = Opened([], [b"response"], False)
    codec.table[b"data"] = Opened([b"p1", b"p2"], [], True)
    pump.deliver(b"init", ("198.51.100.7", 9))
    assert tr.sent == [b"response"] and tr.moves == [] and dev.written == []
    pump.deliver(b"data", ("198.51.100.7", 9))
    assert dev.written == [b"p1", b"p2"] and tr.moves == [("198.51.100.7", 9)]
    assert (pump.c.rx_packets, pump.c.rx_bytes) == (2, 4)


def test_unauthenticated_replies_go_to_their_source_and_codec_drops_merge(rig: Any) -> None:
    pump, _dev, tr, codec, _ = rig
    codec.table[b"flood"] = Opened([], [b"cookie"], False)
    codec.table[b"auth"] = Opened([], [b"response"], True)
    pump.deliver(b"flood", ("198.51.100.9", 7))
    assert tr.replied_to == [("198.51.100.9", 7)] and tr.peer == ("192.0.2.1", 1)
    pump.deliver(b"auth", ("192.0.2.1", 1))
    assert tr.replied_to == [("198.51.100.9", 7)] and tr.sent == [b"cookie", b"response"]
    pump.c.drop("replay")
    codec.stats = lambda: {"session": "none", "drops": {"cookie": 2, "replay": 1}}
    assert pump.stats()["drops"] == {"replay": 2, "cookie": 2}


def test_codec_drops_oversize_and_full_device_are_counted(rig: Any) -> None:
    pump, dev, _, codec, _ = rig
    codec.table[b"r"] = Opened([], [], False, "replay")
    codec.table[b"big"] = Opened([b"x" * 101, b"y" * 100], [], True)
    pump.deliver(b"r", None)
    pump.deliver(b"big", None)
    dev.full = True
    pump.deliver(b"big", None)
    assert pump.c.drops == {"replay": 1, "oversize": 2, "device_full": 1}
    assert dev.written == [b"y" * 100] and pump.c.rx_packets == 1


def test_seal_fan_out_queueing_and_oversize(rig: Any) -> None:
    pump, dev, tr, _, _ = rig
    pump.busy, pump._device_turn = True, pump.turn - 1  # a stream: batches
    dev.inbox = [b"a" * 10, b"Qqueued", b"z" * 101]
    pump._on_device(selectors.EVENT_READ)
    assert tr.sent == [b"H", b"a" * 10]
    assert (pump.c.tx_packets, pump.c.tx_bytes) == (2, 17)  # queued counts as sent
    assert pump.c.drops == {"oversize": 1}


def test_the_first_packet_takes_the_short_path_and_the_rest_follow(rig: Any) -> None:
    pump, dev, tr, _, _ = rig
    dev.inbox = [b"1st", b"a" * 10, b"1again"]
    pump._on_device(selectors.EVENT_READ)  # after an idle wait: one packet per call
    assert tr.sent_now == [b"one:1st"] and dev.inbox == [b"a" * 10, b"1again"]
    pump.busy, pump.turn = True, pump.turn + 1  # the device again in the next busy turn:
    pump._on_device(selectors.EVENT_READ)  # a stream, the rest of the batch follows
    assert tr.sent == [b"one:1st", b"H", b"a" * 10, b"H", b"1again"]
    assert (pump.c.tx_packets, pump.c.tx_bytes) == (3, 19)
    dev.inbox = [b"a" * 101, b"1after"]  # an oversize first packet is dropped, not sealed
    pump.turn += 1
    pump._on_device(selectors.EVENT_READ)
    assert pump.c.drops == {"oversize": 1} and tr.sent[-2:] == [b"H", b"1after"]


def test_a_bare_packet_from_open_one_is_written_and_moves_the_peer(rig: Any) -> None:
    pump, dev, tr, codec, _ = rig
    codec.table[b"d"] = b"pkt"
    codec.table[b"big"] = b"x" * 101
    pump.deliver(b"d", ("198.51.100.7", 9))
    pump.deliver(b"d", ("198.51.100.7", 9))
    assert dev.written == [b"pkt", b"pkt"] and tr.moves == [("198.51.100.7", 9)]
    pump.deliver(b"big", ("198.51.100.7", 9))
    assert (pump.c.rx_packets, pump.c.rx_bytes, pump.c.drops) == (2, 6, {"oversize": 1})


def test_new_path_starts_the_codec_and_timers_send(rig: Any) -> None:
    pump, _, tr, _, daemon = rig
    pump.on_state(True)
    assert tr.sent == [b"initiation"]
    pump._codec_timers(pump.now)
    assert tr.sent[-1] == b"keepalive"
    msg = json.loads(daemon.recv(65536))
    assert msg["op"] == "state" and msg["state"] == "up" and msg["stats"]["session"] == "none"
    assert msg["peer"] == "192.0.2.1:1"


def test_backlog_pauses_the_device_until_drained(rig: Any) -> None:
    pump, dev, tr, _, daemon = rig
    dev.fd = daemon.fileno()  # any pollable fd: only the registration is checked
    pump._watch_device(True)
    dev.inbox = [b"a"]
    tr.backlogged = True
    pump._on_device(selectors.EVENT_READ)
    assert not pump._device_watched
    tr.backlogged = False
    pump.on_drained()
    assert pump._device_watched


def test_update_op_changes_the_oversize_limit() -> None:
    """A reload that changes the MTU in place tells the worker; its limit follows."""
    import json
    import socket

    from tund.relay.codec.plain import PlainCodec
    from tund.relay.loop.counters import Counters
    from tund.relay.loop.pump import Pump

    daemon, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pump = Pump(control=worker, device=None, transport=None,  # type: ignore[arg-type]
                codec=PlainCodec(), counters=Counters(), max_packet=1514, mtu=1500)
    daemon.send(json.dumps({"op": "update", "mtu": 1300}).encode())
    pump._on_control(1)
    assert (pump.mtu, pump.max_packet) == (1300, 1314)
    daemon.send(json.dumps({"op": "update", "mtu": 10}).encode())  # nonsense is ignored
    pump._on_control(1)
    assert pump.max_packet == 1314
    daemon.close()
    worker.close()


def test_handshakes_wait_behind_data_a_bounded_number_per_turn(rig: Any) -> None:
    """Issue 16.3: a handshake (first byte in the codec's handshake_types) is opened after
    the data of its turn, HANDSHAKES_PER_TURN at a time, and the queue is bounded. On the
    old code every message was opened on arrival, in order."""
    from tund.relay.loop import pump as pump_mod
    daemon, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev, tr, codec = FakeDevice(), FakeTransport(), ScriptedCodec()
    codec.handshake_types = frozenset({ord("h")})  # type: ignore[attr-defined]
    pump = Pump(control=worker, device=dev, transport=tr, codec=codec, counters=Counters(),
                max_packet=100)
    try:
        opened: list[bytes] = []
        table_open = codec.open

        def open_(message: bytes, source: Address | None, now: float) -> Opened:
            opened.append(message)
            return table_open(message, source, now)

        codec.open = open_  # type: ignore[method-assign]
        codec.table[b"hs"] = Opened([], [b"response"], True)
        codec.table[b"data"] = b"packet"
        pump.deliver(b"hs", ("192.0.2.1", 1))
        pump.deliver(b"data", ("192.0.2.1", 1))
        assert dev.written == [b"packet"] and opened == [] and tr.sent == []
        for _ in range(pump_mod.HANDSHAKE_QUEUE + 5):
            pump.deliver(b"hs", ("192.0.2.1", 1))
        assert pump.c.drops == {"handshake_queue_full": 6}
        pump._open_handshakes()
        assert len(opened) == pump_mod.HANDSHAKES_PER_TURN
        assert tr.sent == [b"response"] * pump_mod.HANDSHAKES_PER_TURN
    finally:
        daemon.close()
        worker.close()


def test_the_turn_after_an_idle_wait_is_not_busy_even_after_a_long_turn(rig: Any) -> None:
    """A turn that did work and ran past RECHECK must not make the next wake-up (after
    the loop waited, idle) a busy one: that turn would hold and batch a lone packet."""
    pump, dev, _tr, codec, _ = rig
    other, dev_sock = socket.socketpair()  # a real fd for the device's epoll entry
    dev.fd = dev_sock.fileno()
    codec.next_deadline = lambda: None
    wakeups = [[(dev.fd, select.EPOLLIN)], [(dev.fd, select.EPOLLIN)]]
    seen: list[bool] = []
    waits: list[float] = []

    def on_device(mask: int) -> None:
        seen.append(pump.busy)
        time.sleep(2 * RECHECK)  # a slow turn: the next one reads the deadlines again

    def poll(timeout: float) -> list[tuple[int, int]]:
        waits.append(timeout)
        if timeout == 0.0:
            return []  # nothing is ready unless the loop waits
        if not wakeups:
            pump._running = False
            return []
        return wakeups.pop(0)

    pump._on_device = on_device
    real_parts = pump.sel.parts
    pump.sel.parts = lambda: (poll, real_parts()[1], real_parts()[2])
    try:
        assert pump.run() == 0
    finally:
        other.close()
        dev_sock.close()
    assert seen == [False, False], (seen, waits)
    assert 0.0 in waits  # the busy loop looked once without waiting before it waited


def test_a_train_goes_to_the_codecs_open_train_first_then_message_by_message() -> None:
    daemon, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev, tr, codec = FakeDevice(), FakeTransport(), ScriptedCodec()
    calls: list[tuple[bytes, int]] = []

    def open_train(data: bytes, size: int, now: float) -> tuple[list[bytes], int]:
        calls.append((data, size))
        return [b"F1", b"F2"], 2 * size  # the first two; the third is left to open_one

    codec.open_train = open_train  # type: ignore[attr-defined]
    codec.table[b"cc"] = b"P3"
    pump = Pump(control=worker, device=dev, transport=tr, codec=codec, counters=Counters(),
                max_packet=100, vnet=True)
    try:
        pump.deliver_train(b"aabbcc", 2, ("198.51.100.7", 9))
        assert calls == [(b"aabbcc", 2)]
        assert pump._rx == [b"F1", b"F2", b"P3"] and dev.written == []  # held, in order
        assert tr.moves == [("198.51.100.7", 9)]
        pump._flush_rx()
        assert dev.written == [b"F1", b"F2", b"P3"]
        plain = Pump(control=worker, device=dev, transport=tr, codec=codec,
                     counters=Counters(), max_packet=100)  # no vnet: message by message
        codec.table[b"aa"] = codec.table[b"bb"] = b"P"
        plain.deliver_train(b"aabbcc", 2, None)
        assert len(calls) == 1 and dev.written[3:] == [b"P", b"P", b"P3"]
    finally:
        daemon.close()
        worker.close()
