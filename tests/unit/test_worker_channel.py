"""The daemon-worker control channel carries messages larger than 64 KiB (issue 17: a
worker's stats with 1,000 peers), whole, and cuts only beyond MAX_MESSAGE."""

from __future__ import annotations

import socket

import pytest

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
    assert MAX_MESSAGE >= 4 << 20


def test_a_message_beyond_the_limit_is_cut_there_so_it_fails_to_decode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A (compromised) worker cannot make the daemon read more than MAX_MESSAGE at once:
    the rest is discarded, and the cut JSON is refused as malformed (the limit lowered to
    100 KB here: how large one packet may be depends on the kernel)."""
    from tund.workerapi import channel
    from tund.workerapi.messages import FROM_WORKER, MessageError, decode

    monkeypatch.setattr(channel, "MAX_MESSAGE", 100_000)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        widen(a)
        big = b'{"op":"state","state":"up","error":"' + b"x" * 100_000 + b'"}'
        a.send(big)
        got = recv_message(b)
        assert len(got) == 100_000
        try:
            decode(got, FROM_WORKER)
        except MessageError:
            pass
        else:
            raise AssertionError("a cut message decoded")
        a.send(b"next")
        assert recv_message(b) == b"next"
