"""The underlay sockets a tunnel's worker is handed: bound here, once.

The daemon binds them (as root, before any worker starts) and keeps them across worker
restarts: a listening tunnel's (:func:`bind_underlay`) and a tunnel's that connects over
UDP (:func:`connector_socket`: so the daemon can mark it, which the worker may not); a
worker run standalone binds its own the same way.
"""

from __future__ import annotations

import errno
import ipaddress
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
    _mark(s, mark, f"the {transport} socket for {host}:{port}")
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


def _mark(s: socket.socket, mark: int, what: str) -> None:
    """SO_MARK ``mark`` on ``s`` (nothing for 0); OSError naming ``what``, ``s`` closed."""
    if not mark:
        return
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot set fwmark {mark} on {what}: "
                               f"{os.strerror(e.errno or errno.EIO)}") from None


def connector_socket(host: str, mark: int = 0) -> socket.socket:
    """The UDP socket a tunnel that connects to ``host`` sends from: bound to a port the
    kernel picks (kept for the socket's life, so across worker restarts), with SO_MARK
    ``mark``. Its family is that of ``host`` when it is an IP address; for a host name
    (whose address may be of either family, and change) an IPv6 socket that also reaches
    IPv4 addresses (as ``::ffff:a.b.c.d``), or IPv4 on a host without IPv6.

    Raises OSError whose message names the remote host.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        dual = False
    except ValueError:  # a host name
        family, dual = (socket.AF_INET6, True) if socket.has_ipv6 else (socket.AF_INET, False)
    try:
        s = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        if not dual:
            raise
        family, dual = socket.AF_INET, False  # IPv6 is off on this host
        s = socket.socket(family, socket.SOCK_DGRAM)
    _mark(s, mark, f"the udp socket for remote {host}")
    try:
        if dual:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot bind a udp socket for remote {host}: "
                               f"{os.strerror(e.errno or errno.EIO)}") from None
    return s
