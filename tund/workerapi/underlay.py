"""The underlay sockets a listening tunnel's worker is handed: bound here, once.

The daemon binds them (as root, before any worker starts) and keeps them across worker
restarts; a worker run standalone binds its own the same way.
"""

from __future__ import annotations

import errno
import os
import socket

BACKLOG = 16  # TCP: connections that may wait for the worker to accept them


def bind_underlay(transport: str, host: str, port: int, mark: int = 0) -> socket.socket:
    """A bound UDP socket or a listening TCP socket on ``host:port`` (not inheritable);
    ``mark`` (not 0): its SO_MARK, set before binding (needs CAP_NET_ADMIN; the
    connections a TCP listener accepts inherit it).

    A UDP port another socket holds, or a TCP port another socket listens on, is an error
    (EADDRINUSE), whatever options that socket set.

    Raises OSError whose message names the transport and the address.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    if mark:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"cannot set fwmark {mark} on the {transport} socket "
                                   f"for {host}:{port}: {os.strerror(e.errno or errno.EIO)}"
                          ) from None
    try:
        if kind == socket.SOCK_STREAM:
            # TCP: rebinding a port with connections in TIME_WAIT. Linux never lets two
            # live listeners share a port through it. Not for UDP, where it would let a
            # second socket (another tunnel, another program) take the port's traffic.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(BACKLOG)
    except OSError as e:
        s.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(e.errno, f"cannot bind {transport} {where}: "
                               f"{os.strerror(e.errno or errno.EIO)}") from None
    return s
