"""Dissolving a UDP socket's association (``connect`` with ``AF_UNSPEC``), which Python's
``socket.connect`` cannot express.

Needed by a connecting tunnel's dual-stack socket (the daemon's: it is kept, never
replaced) when its remote moves between an IPv4 address (connected as ``::ffff:a.b.c.d``)
and an IPv6 one: the kernel refuses to re-connect such a socket across families
(EAFNOSUPPORT) until it is dissolved. The local address and port the socket had are
given up then (it was bound to the wildcard address and port 0): the next connect picks
new ones; the socket, and its mark, stay.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from tund.libc import libc

_UNSPEC = struct.pack("=H14x", socket.AF_UNSPEC)  # a struct sockaddr of family AF_UNSPEC


def disconnect(sock: socket.socket) -> None:
    """Dissolve ``sock``'s association; OSError if the kernel refuses."""
    buf = ctypes.create_string_buffer(_UNSPEC, len(_UNSPEC))
    if libc().connect(sock.fileno(), buf, len(_UNSPEC)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot dissolve the socket's association: {os.strerror(err)}")
