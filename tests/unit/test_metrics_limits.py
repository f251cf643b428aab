"""The metrics endpoint's bounds (issue 16.5), on a real loopback server in this process:
request head size, connections at once, time per connection, cached snapshots, accept
errors without tracebacks."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tund.daemon import metrics

STATUS: dict[str, Any] = {"schema": 1, "daemon": {"version": "0", "reloads": 0},
                          "interfaces": {}, "tunnels": {}}


async def source() -> dict[str, Any]:
    return STATUS


def run(body: Callable[[metrics.MetricsServer], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        server = metrics.MetricsServer("127.0.0.1", 0, kw.pop("source", source), **kw)
        await server.start()
        try:
            return await asyncio.wait_for(body(server), 30)
        finally:
            await server.close()
    return asyncio.run(main())


async def ask(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def test_documented_limits() -> None:
    assert metrics.MAX_REQUEST == 8192 and metrics.REQUEST_TIMEOUT == 5.0
    assert metrics.MAX_CONNECTIONS == 64 and metrics.CACHE_TTL == 0.25


def test_request_head_over_8192_bytes_gets_431() -> None:
    """A 20,000-byte header used to get 200; one just under the limit still does."""
    big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    fits = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 8100 + b"\r\n\r\n"
    assert len(fits) <= 8192

    async def body(s: metrics.MetricsServer) -> tuple[bytes, bytes]:
        return await ask(s.port, big), await ask(s.port, fits)

    too_big, ok = run(body)
    assert too_big.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")


def test_connections_beyond_the_limit_are_closed_at_once_and_room_comes_back() -> None:
    async def body(s: metrics.MetricsServer) -> tuple[int, float, bytes]:
        idle = []
        for _ in range(8):
            idle.append(await asyncio.open_connection("127.0.0.1", s.port))
        for _ in range(100):  # let the server accept them all
            if s.connections == 8:
                break
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        extra = await asyncio.wait_for(reader.read(), 5)  # closed by the server: EOF
        took = time.monotonic() - t0
        writer.close()
        opened = s.connections
        for _, w in idle:
            w.close()
        await asyncio.sleep(0.2)
        return opened, took, extra + await ask(s.port, b"GET /metrics HTTP/1.0\r\n\r\n")

    opened, took, after = run(body, max_connections=8)
    assert opened == 8 and took < 1.0
    assert after.startswith(b"HTTP/1.1 200 ")


def test_a_trickling_client_is_cut_off_at_the_total_time_limit() -> None:
    """One byte every 0.1 s is never idle, yet the connection ends after request_timeout."""
    async def body(s: metrics.MetricsServer) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 10:
                writer.write(b"G")
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                        break
                except TimeoutError:
                    continue
        except ConnectionError:
            pass
        writer.close()
        return time.monotonic() - t0

    took = run(body, request_timeout=1.0)
    assert 0.9 < took < 2.5


def test_scrapes_share_a_snapshot_for_a_quarter_second() -> None:
    calls = 0

    async def counting() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)  # a collection takes a while: scrapes meanwhile wait for it
        return STATUS

    async def body(s: metrics.MetricsServer) -> tuple[int, int, list[bytes]]:
        replies = await asyncio.gather(*(ask(s.port, b"GET /metrics HTTP/1.0\r\n\r\n")
                                         for _ in range(40)))
        first = calls
        await asyncio.sleep(0.3)
        replies.append(await ask(s.port, b"GET /metrics HTTP/1.0\r\n\r\n"))
        return first, calls, replies

    first, total, replies = run(body, source=counting)
    assert all(r.startswith(b"HTTP/1.1 200 ") for r in replies)
    assert first == 1 and total == 2


class _Exhausted:
    """Stands in for the listening socket while the process is out of descriptors."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.accepts = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        self.accepts += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self) -> None:
        self.real.close()


def test_accept_failing_with_emfile_logs_one_line_without_traceback_then_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(s: metrics.MetricsServer) -> tuple[int, bytes]:
        real = s._sock
        assert real is not None
        fake = _Exhausted(real)
        s._sock = fake  # type: ignore[assignment]
        pending = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(3)]
        await asyncio.sleep(1.2)  # pauses of ACCEPT_PAUSE, several failing retries
        s._sock = real
        await asyncio.sleep(metrics.ACCEPT_PAUSE + 0.1)
        for _, w in pending:
            w.close()
        return fake.accepts, await ask(s.port, b"GET /metrics HTTP/1.0\r\n\r\n")

    with caplog.at_level(logging.DEBUG, "tund.daemon.metrics"):
        accepts, after = run(body)
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert accepts >= 2 and len(lines) == 1  # identical warnings are rate-limited
    assert lines[0].exc_info is None and "Too many open files" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    assert after.startswith(b"HTTP/1.1 200 ")
