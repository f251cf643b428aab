"""The daemon-worker control channel carries messages larger than 64 KiB (issue 17: a
worker's stats with 1,000 peers), whole, and cuts only beyond MAX_MESSAGE."""

from __future__ import annotations

import socket

from tund.workerapi.channel import MAX_MESSAGE, recv_message, widen


def test_large_messages_arrive_whole_and_eof_is_empty() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        widen(a)
        for size in (1, 65536, 65537, 300_000):
            a.send(bytes([size & 255]) * size)
            assert recv_message(b) == bytes([size & 255]) * size
        a.send(b"x" * 10)
        a.send(b"y" * 5)
        assert (recv_message(b), recv_message(b)) == (b"x" * 10, b"y" * 5)
        a.shutdown(socket.SHUT_WR)
        assert recv_message(b) == b""
    assert MAX_MESSAGE >= 1 << 20
