"""TCP transport of a real worker: reconnects, replacement, backpressure, simpletun interop."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.component.test_relay_worker import Factory, packet, worker

__all__ = ["worker"]  # the fixture, shared with test_relay_worker


def read_frame(s: socket.socket) -> bytes:
    """simpletun's reader: exactly 2 bytes of length, then exactly that many."""
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError("peer closed")
            buf += chunk
        return buf
    (n,) = struct.unpack("!H", exactly(2))
    return exactly(n)


def write_frame_simpletun(s: socket.socket, pkt: bytes) -> None:
    """simpletun's writer: the length and the packet as two separate writes."""
    s.sendall(struct.pack("!H", len(pkt)))
    s.sendall(pkt)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_interop_with_a_simpletun_style_peer(worker: Factory) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    w, dev = worker("tcp", "remote", port=srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.settimeout(5)
    w.wait_state("up")
    for i in range(50):  # peer -> worker, header and body in separate segments
        write_frame_simpletun(conn, packet(i, 60 + i))
    assert [dev.recv(4096) for _ in range(50)] == [packet(i, 60 + i) for i in range(50)]
    for i in range(50):  # worker -> peer
        dev.send(packet(i, 1400))
    assert [read_frame(conn) for _ in range(50)] == [packet(i, 1400) for i in range(50)]
    stats = w.ping()
    assert (stats["rx_packets"], stats["tx_packets"]) == (50, 50)
    conn.close()
    srv.close()


def test_remote_reconnects_with_backoff_after_the_peer_goes(worker: Factory) -> None:
    a, _da = worker("tcp", "listen")
    port = a.port  # type: ignore[attr-defined]
    b, db = worker("tcp", "remote", port=port, reconnect_min=0.05, reconnect_max=0.4)
    b.wait_state("up")
    a.kill()  # the listen side dies without a word
    b.wait_state("connecting")
    time.sleep(1.0)  # several refused attempts (backoff capped at 0.4s)
    assert b.proc.poll() is None
    a2, da2 = worker("tcp", "listen", port=port)
    b.wait_state("up", within=5)
    a2.wait_state("up", peer=True)
    db.send(packet(1))
    assert da2.recv(4096) == packet(1)
    da2.send(packet(2))
    assert db.recv(4096) == packet(2)


def test_a_live_plaintext_connection_is_never_displaced(worker: Factory) -> None:
    """Issue 16.2: a second connection waits while the current one passes frames; it is
    given nothing and what it sends is dropped; it takes over once the current one goes.
    On the old code the second connection replaced the live one and got its traffic."""
    a, dev = worker("tcp", "listen")
    port = a.port  # type: ignore[attr-defined]
    a.wait_state("connecting")
    c1 = socket.create_connection(("127.0.0.1", port), timeout=5)
    up1 = a.wait_state("up")
    write_frame_simpletun(c1, packet(1))
    assert dev.recv(4096) == packet(1)
    c2 = socket.create_connection(("127.0.0.1", port), timeout=5)  # c1 is still open
    c2.settimeout(0.5)
    write_frame_simpletun(c2, packet(9))  # an intruder's frame: dropped
    dev.send(packet(2))
    assert read_frame(c1) == packet(2)  # the live connection keeps the tunnel
    write_frame_simpletun(c1, packet(3))
    assert dev.recv(4096) == packet(3)
    with pytest.raises(TimeoutError):
        c2.recv(10)  # nothing for the waiting connection
    stats = a.ping()
    assert stats["peer"] == up1["peer"] and stats["drops"] == {"pending_connection": 1}
    c1.close()  # the current one goes: the waiting one takes over
    up2 = a.wait_state("up", peer=True)
    assert up2["peer"] == f"127.0.0.1:{c2.getsockname()[1]}"
    c2.settimeout(5)
    dev.send(packet(4))
    assert read_frame(c2) == packet(4)
    write_frame_simpletun(c2, packet(5))
    assert dev.recv(4096) == packet(5)
    c2.close()


def test_a_dead_plaintext_connection_is_displaced(worker: Factory) -> None:
    """No frame on the current connection for 3 x keepalive: a new one replaces it."""
    a, dev = worker("tcp", "listen", keepalive=1)
    port = a.port  # type: ignore[attr-defined]
    c1 = socket.create_connection(("127.0.0.1", port), timeout=5)
    up1 = a.wait_state("up")
    time.sleep(3.2)  # c1 stays silent
    c2 = socket.create_connection(("127.0.0.1", port), timeout=5)
    up2 = a.wait_state("up")
    assert up2["peer"] == f"127.0.0.1:{c2.getsockname()[1]}" != up1["peer"]
    assert c1.recv(10) == b""  # the old connection was closed by the worker
    dev.send(packet(2))
    assert read_frame(c2) == packet(2)
    c1.close()
    c2.close()


def test_pending_connections_are_bounded(worker: Factory) -> None:
    a, _dev = worker("tcp", "listen")
    port = a.port  # type: ignore[attr-defined]
    c1 = socket.create_connection(("127.0.0.1", port), timeout=5)
    a.wait_state("up")
    waiting = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]
    for s in waiting[:4]:  # the oldest beyond 8 are closed by the worker
        assert s.recv(10) == b""
    time.sleep(0.3)
    assert a.proc.poll() is None
    fds = len(list(Path(f"/proc/{a.proc.pid}/fd").iterdir()))
    for s in waiting:
        s.close()
    c1.close()
    assert fds < 40


def test_allowed_sources_refuse_other_connections(worker: Factory) -> None:
    a, _dev = worker("tcp", "listen", allowed_sources=("127.0.0.2/32",))
    port = a.port  # type: ignore[attr-defined]
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert c.recv(10) == b""  # closed at once
    c.close()
    assert a.ping()["drops"] == {"source_refused": 1}
    c2 = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
    assert a.wait_state("up")["peer"].startswith("127.0.0.2:")
    c2.close()


def test_listen_side_goes_connecting_when_the_peer_closes(worker: Factory) -> None:
    a, _dev = worker("tcp", "listen")
    c = socket.create_connection(("127.0.0.1", a.port), timeout=5)  # type: ignore[attr-defined]
    a.wait_state("up")
    write_frame_simpletun(c, b"\x45" + b"\x00\x03")  # half a frame, then gone
    c.close()
    msg = a.wait_state("connecting")
    assert msg["peer"] is None and msg["stats"]["rx_packets"] == 1


def test_slow_reader_backpressure_keeps_memory_bounded_and_loses_nothing(
        worker: Factory) -> None:
    """A peer that reads slowly: the worker stops reading the device, buffers a bounded
    amount and delivers every packet in order once the reader catches up."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    srv.settimeout(10)
    w, dev = worker("tcp", "remote", port=srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.settimeout(10)
    w.wait_state("up")
    n, size = 12000, 1400  # ~17 MB, far above the worker's buffer limits
    rss0 = rss_kib(w.proc.pid)
    sent = threading.Event()

    def feed() -> None:
        dev.settimeout(60)
        for i in range(n):
            dev.send(packet(i, size))  # blocks while the worker does not read the device
        sent.set()

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    time.sleep(1.0)  # nobody reads: the worker must be stalled, not buffering
    stalled = w.ping()
    assert not sent.is_set()
    assert stalled["tx_packets"] < n // 2, stalled
    rss_peak = rss_kib(w.proc.pid)
    got = 0
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        frame = read_frame(conn)
        assert frame == packet(got, size), f"frame {got} corrupt or out of order"
        got += 1
        if got % 2000 == 0:
            rss_peak = max(rss_peak, rss_kib(w.proc.pid))
            time.sleep(0.05)  # stay slow
    t.join(10)
    assert got == n and sent.is_set()
    stats = w.ping()
    assert stats["tx_packets"] == n and stats["drops"] == {}
    assert rss_peak - rss0 < 16 * 1024, (rss0, rss_peak)  # KiB: bounded well below 17 MB
    conn.close()
    srv.close()
