"""The control channel between the daemon and a worker: one ``SOCK_SEQPACKET`` socketpair,
one message per packet (:mod:`.messages`).

Messages grow with a tunnel's peers (a worker's stats carry every peer's counters, a start
message every peer's keys), so neither side reads with a fixed-size buffer:
:func:`recv_message` asks the kernel the size of the next message first and reads it whole,
up to :data:`MAX_MESSAGE` (a larger one is cut there, so it fails to decode and is refused
as malformed); :func:`widen` lets a socket send messages that large (a Unix packet socket
refuses any message larger than its send buffer with ``EMSGSIZE``).
"""

from __future__ import annotations

import contextlib
import socket

#: the largest control message either side reads: a stats message of ~20,000 peers (a
#: Unix packet socket carries little more in one message: ~4.2 MB on Linux 6.18)
MAX_MESSAGE = 4 << 20
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def recv_message(sock: socket.socket) -> bytes:
    """The next message whole (at most MAX_MESSAGE bytes); b"" when the peer closed.
    Raises what ``recv`` raises (BlockingIOError on a non-blocking socket with none)."""
    probe = bytearray(1)
    size = sock.recv_into(probe, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    return sock.recv(max(1, min(size, MAX_MESSAGE)))


def widen(sock: socket.socket) -> None:
    """Let ``sock`` send messages up to MAX_MESSAGE: ``SO_SNDBUFFORCE`` (the daemon is
    root), else ``SO_SNDBUF`` (capped by net.core.wmem_max). A buffer is a limit, not an
    allocation."""
    want = MAX_MESSAGE + (64 << 10)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, want)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want)
