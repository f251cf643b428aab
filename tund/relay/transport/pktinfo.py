"""Which local address a datagram came to, and sending from it (``IP_PKTINFO`` /
``IPV6_PKTINFO``), for UDP sockets bound to a wildcard address.

A host with several addresses answers from the routing table's choice unless told
otherwise; a peer that sent to another of our addresses then drops the replies. With
:func:`enable` the kernel adds the destination address of each received datagram as a
control message; :func:`reply_option` turns that into the control message that makes
``sendmsg`` send from the same address (like the kernel's WireGuard and wireguard-go's
sticky sockets). An IPv6 wildcard socket sees IPv4 senders as v4-mapped addresses, and
their replies go out from the v4-mapped local address the same way.

Only for wildcard sockets: a socket bound to one address sends from it anyway, and
pays nothing (no control messages).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("tund.relay.transport.pktinfo")

IP_PKTINFO = 8  # <linux/in.h>; not in Python's socket module
IPV6_RECVPKTINFO = socket.IPV6_RECVPKTINFO
IPV6_PKTINFO = socket.IPV6_PKTINFO
SOL_IP, SOL_IPV6 = socket.IPPROTO_IP, socket.IPPROTO_IPV6
SPACE = socket.CMSG_SPACE(20)  # room for one in6_pktinfo (or in_pktinfo, 12 bytes)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
_NO_V4 = bytes(4)

Option = tuple[int, int, bytes]  # a control message for sendmsg


def is_wildcard(sock: socket.socket) -> bool:
    """True when ``sock`` is bound to 0.0.0.0 or ::."""
    try:
        host = sock.getsockname()[0]
        return ipaddress.ip_address(host.split("%", 1)[0]).is_unspecified
    except (OSError, ValueError):
        return False


def enable(sock: socket.socket) -> bool:
    """Ask for the destination address of each datagram; False if the kernel refuses."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(SOL_IP, IP_PKTINFO, 1)
    except OSError as e:
        log.warning("cannot ask for the local address of datagrams (%s): replies go out "
                    "from the routing table's choice", e)
        return False
    return True


def reply_option(ancillary: Iterable[tuple[int, int, Any]]) -> Option | None:
    """The control message that sends from the address a datagram came to (from its
    recvmsg ``ancillary`` data), or None when there is none."""
    for level, kind, data in ancillary:
        if level == SOL_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _ifindex, _spec, addr = _IN_PKTINFO.unpack_from(data)
            return (SOL_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, addr, _NO_V4))
        if level == SOL_IPV6 and kind == IPV6_PKTINFO and len(data) >= _IN6_PKTINFO.size:
            addr, ifindex = _IN6_PKTINFO.unpack_from(data)
            # the interface only matters (and only stays right) for a link-local address
            link_local = addr[0] == 0xFE and addr[1] & 0xC0 == 0x80
            return (SOL_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(addr, ifindex if link_local else 0))
    return None


def describe(option: Option | None) -> str:
    """The local address in ``option``, for logs."""
    if option is None:
        return "(the routing table's choice)"
    level, _kind, data = option
    if level == SOL_IP:
        return socket.inet_ntop(socket.AF_INET, _IN_PKTINFO.unpack_from(data)[1])
    return socket.inet_ntop(socket.AF_INET6, _IN6_PKTINFO.unpack_from(data)[0])
