"""A port another socket holds is a bind error, even if that socket set SO_REUSEADDR
(issue 15.3). Before, the UDP listener set SO_REUSEADDR itself, so a second tunnel or
another program with the option bound the same port and took its traffic."""

from __future__ import annotations

import errno
import socket

import pytest

from tund.workerapi.underlay import bind_underlay


def holder(kind: int, host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    if kind == socket.SOCK_STREAM:
        s.listen(1)
    return s


@pytest.mark.parametrize("held", ["127.0.0.1", "0.0.0.0"])
def test_a_udp_port_held_by_a_reuseaddr_socket_is_a_bind_error(held: str) -> None:
    with holder(socket.SOCK_DGRAM, held) as other:
        port = other.getsockname()[1]
        with pytest.raises(OSError) as info:
            bind_underlay("udp", "127.0.0.1", port).close()
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value).endswith(
            f"cannot bind udp 127.0.0.1:{port}: Address already in use")


def test_two_tund_udp_listeners_cannot_share_a_port() -> None:
    with bind_underlay("udp", "0.0.0.0", 0) as first:
        port = first.getsockname()[1]
        with pytest.raises(OSError, match="Address already in use"):
            bind_underlay("udp", "127.0.0.1", port).close()


def test_a_tcp_port_someone_listens_on_is_a_bind_error() -> None:
    with holder(socket.SOCK_STREAM, "127.0.0.1") as other:
        port = other.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind tcp 127.0.0.1:{port}: Address already"):
            bind_underlay("tcp", "127.0.0.1", port).close()


def test_tcp_rebinds_a_port_with_connections_in_time_wait() -> None:
    """What SO_REUSEADDR is kept for on TCP: a restarted listener gets its port back."""
    listener = bind_underlay("tcp", "127.0.0.1", 0)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn, _ = listener.accept()
    conn.close()  # the server side closes first: its end waits in TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    bind_underlay("tcp", "127.0.0.1", port).close()
