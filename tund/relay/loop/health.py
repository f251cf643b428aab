"""Will the underlay carry the tunnel's packets? The MTU check of a worker's path.

Contract: :func:`mtu_warning` asks the kernel for the path MTU towards the peer (a UDP
socket ``connect()``-ed to it: the route's MTU, from the device or the route; no packet
is sent) and returns a warning when the largest tunnel packet plus the transport's
overhead is larger, else None (also when the kernel cannot say). Overhead: the IP
header (20 for IPv4, 40 for IPv6) + UDP (8) + the codec's own (WireGuard: 32), so a
WireGuard tunnel over IPv4 needs the underlay MTU minus 60, over IPv6 minus 80.
"""

from __future__ import annotations

import socket

from tund.relay.codec.base import Address

UDP_HEADER = 8
_IP_MTU = getattr(socket, "IP_MTU", 14)  # <linux/in.h>
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)  # <linux/in6.h>


def path_mtu(peer: Address) -> int | None:
    """The kernel's MTU for the route to ``peer``; None when it cannot say."""
    v6 = ":" in peer[0]
    try:
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(peer[:2] if not v6 else peer)
            return int(s.getsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
                                    _IPV6_MTU if v6 else _IP_MTU))
    except OSError:
        return None


def mtu_warning(mtu: int, frame_extra: int, codec_extra: int, peer: Address,
                underlay: int | None = None) -> str | None:
    """The warning for a tunnel of ``mtu`` (frames ``frame_extra`` larger: 14 for tap) whose
    codec adds ``codec_extra`` bytes, towards ``peer`` (``underlay``: the path MTU, asked of
    the kernel when None); None when it fits or the path MTU is unknown."""
    v6 = ":" in peer[0]
    underlay = path_mtu(peer) if underlay is None else underlay
    if underlay is None:
        return None
    overhead = (40 if v6 else 20) + UDP_HEADER + codec_extra
    largest = underlay - overhead - frame_extra
    if mtu <= largest:
        return None
    host = f"[{peer[0]}]" if v6 else peer[0]
    what = f"{'WireGuard/' if codec_extra else ''}UDP over IPv{6 if v6 else 4}"
    return (f"mtu {mtu} is larger than the underlay path to {host} carries: its MTU "
            f"{underlay} - {overhead} ({what}){f' - {frame_extra} (tap)' if frame_extra else ''}"
            f" = {largest}; larger packets are fragmented or lost (set mtu = {largest})")
