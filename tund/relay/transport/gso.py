"""UDP generic segmentation and receive offload (``UDP_SEGMENT`` / ``UDP_GRO``).

Sending: one ``sendmsg`` carries up to :data:`GSO_SEGMENTS` datagrams of one size (the
last may be shorter) with the :func:`segment_option` control message; the kernel cuts
them. Receiving: with :func:`enable_gro` the kernel may hand over such a train in one
read, its datagram size in a control message (:func:`gro_size`).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("tund.relay.transport.gso")

SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104  # <linux/udp.h>
GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels
GSO_BYTES = 65507  # one UDP_SEGMENT send: 65535 minus the IPv4 and UDP headers (IPv6 takes 20 more)
GRO_SPACE = socket.CMSG_SPACE(4)  # ancillary room for recvmsg's UDP_GRO size
_SEGMENT = struct.Struct("=H")
_GRO = struct.Struct("=i")


def enable_gro(sock: socket.socket) -> bool:
    """Ask for ``UDP_GRO`` on ``sock``; False when the kernel does not offer it."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as e:
        log.debug("UDP_GRO not available: %s", e)
        return False
    return True


def gro_size(ancillary: Iterable[tuple[int, int, Any]]) -> int:
    """The datagram size of a GRO train from recvmsg's ancillary data; 0 for one datagram."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return int(_GRO.unpack_from(data)[0])
    return 0


def segment_option(size: int) -> tuple[int, int, bytes]:
    """The ``UDP_SEGMENT`` control message for a train of ``size``-byte datagrams."""
    return (SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(size))
