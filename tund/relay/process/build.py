"""A worker's pump from its spec: device, codec and transport chosen and wired together.

Pure construction: wraps the fds the daemon passed (nothing is opened by path) and
imports what the loop needs; reads no packet.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
from typing import Any

from tund.relay.codec.base import Codec
from tund.relay.codec.offload import MAX_FRAME as VNET_MAX_FRAME
from tund.relay.codec.offload import OffloadCodec
from tund.relay.codec.plain import PlainCodec
from tund.relay.device.offload import set_device_offload
from tund.relay.device.tun import FdDevice
from tund.relay.errors import RelayError
from tund.relay.loop.counters import Counters
from tund.relay.loop.pump import Pump
from tund.relay.transport.base import Transport, parse_peer
from tund.relay.transport.framing import MAX_FRAME
from tund.relay.transport.tcp import TcpTransport
from tund.relay.transport.udp import RESOLVE_EVERY, UdpTransport
from tund.workerapi.spec import WorkerSpec
from tund.workerapi.underlay import bind_underlay

log = logging.getLogger("tund.relay.process.build")

CODEC_OVERHEAD = 128  # room for a codec's header / tag / padding on the wire


def max_packet(spec: WorkerSpec) -> int:
    """The largest device packet: MTU, + 14 (Ethernet header) for tap, + 4 with PI."""
    return min(MAX_FRAME, spec.mtu + (14 if spec.mode == "tap" else 0)
               + (4 if spec.packet_info else 0))


#: Test-only timer overrides (``WorkerSpec.timers``) for the transport, not for WireGuard:
#: ``resolve_every`` (UDP, role remote: seconds between lookups of a host name).
TRANSPORT_TIMERS = frozenset({"resolve_every"})


def make_codec(spec: WorkerSpec) -> Codec:
    """PlainCodec for ``none``; the WireGuard codec (imported lazily) otherwise."""
    if spec.encryption == "none":
        udp = spec.transport == "udp"
        min_len = (4 if spec.packet_info else 0) + (14 if spec.mode == "tap" else 1)
        return PlainCodec(min_len=min_len, ip_check=spec.mode == "tun" and not spec.packet_info,
                          keepalive=float(spec.keepalive) if udp else 0.0,
                          hello=udp and spec.role == "remote", timed=udp,
                          answer=udp and spec.role == "listen")
    if spec.encryption == "wireguard" and spec.peers is not None:
        from tund.relay.wireguard.multi import PeersCodec
        from tund.relay.wireguard.peers import PeerCore

        if spec.private_key is None:
            raise RelayError(f"tunnel {spec.tunnel!r}: peers need private_key in the spec")
        core = PeerCore(spec.private_key, mtu=spec.mtu, packet_info=spec.packet_info,
                        mode=spec.mode, timers={k: v for k, v in spec.timers.items()
                                                if k not in TRANSPORT_TIMERS},
                        frames=spec.offload and spec.vnet_hdr and spec.transport == "udp")
        return PeersCodec(core, spec.peers)
    if spec.encryption == "wireguard":
        try:
            from tund.relay.wireguard.codec import WireGuardCodec  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:
            raise RelayError(f"encryption 'wireguard' is not available: cannot import "
                             f"tund.relay.wireguard.codec.WireGuardCodec ({e})") from e
        wg_timers = {k: v for k, v in spec.timers.items() if k not in TRANSPORT_TIMERS}
        codec: Codec = WireGuardCodec(dataclasses.replace(spec, timers=wg_timers))
        return codec
    raise RelayError(f"unknown encryption {spec.encryption!r} (expected 'none' or 'wireguard')")


def _own_socket(spec: WorkerSpec) -> socket.socket:
    """Role listen without a socket from the daemon (standalone use): bind one ourselves."""
    log.info("no socket_fd given: binding %s:%d myself", spec.host, spec.port)
    return bind_underlay(spec.transport, spec.host, spec.port)


def make_transport(spec: WorkerSpec, counters: Counters,
                   largest: int | None = None) -> Transport:
    """The spec's transport; ``largest``: the largest device frame (default: max_packet)."""
    kind = socket.SOCK_STREAM if spec.transport == "tcp" else socket.SOCK_DGRAM
    sock = None
    if spec.socket_fd is not None:  # listen, or remote over UDP: the daemon's (marked) socket
        sock = socket.socket(fileno=spec.socket_fd)
        if sock.type != kind:
            raise RelayError(f"socket_fd {spec.socket_fd} is not a {spec.transport} socket")
        if spec.transport == "tcp" and spec.role == "remote":
            raise RelayError(f"socket_fd {spec.socket_fd}: a connecting tcp tunnel opens "
                             "its own sockets")
    elif spec.role == "listen":
        sock = _own_socket(spec)
    common: dict[str, Any] = {"role": spec.role, "host": spec.host, "port": spec.port,
                              "reconnect_min": spec.reconnect_min,
                              "reconnect_max": spec.reconnect_max,
                              "allowed_sources": spec.allowed_sources}
    if spec.transport == "tcp":
        return TcpTransport(counters, listen_sock=sock, keepalive=spec.keepalive,
                            max_message=(largest or max_packet(spec)) + CODEC_OVERHEAD,
                            authenticates=spec.encryption == "wireguard", **common)
    known = parse_peer(spec.known_peer) if spec.known_peer and spec.role == "listen" else None
    return UdpTransport(counters, sock=sock, known_peer=known, multi=spec.peers is not None,
                        resolve_every=float(spec.timers.get("resolve_every", RESOLVE_EVERY)),
                        **common)


def underlay_check(spec: WorkerSpec) -> tuple[int, int, int] | None:
    """The pump's ``underlay`` (MTU warning) for a UDP tunnel: (mtu, 14 for tap, 32 for
    WireGuard's header and tag); None for TCP."""
    if spec.transport != "udp":
        return None
    return (spec.mtu, 14 if spec.mode == "tap" else 0,
            32 if spec.encryption == "wireguard" else 0)


def build(spec: WorkerSpec, control: socket.socket) -> Pump:
    pump = _build(spec, control)
    peers = _peers_codec(pump.codec)
    if peers is not None:  # many peers: the codec sends to each peer's address itself
        peers.attach(pump.transport.reply_to)
    return pump


def _peers_codec(codec: Codec) -> Any:
    from tund.relay.wireguard.multi import PeersCodec

    inner = getattr(codec, "inner", codec)  # under an OffloadCodec
    return inner if isinstance(inner, PeersCodec) else None


def _build(spec: WorkerSpec, control: socket.socket) -> Pump:
    counters = Counters()
    mp = max_packet(spec)
    codec = make_codec(spec)
    underlay = underlay_check(spec)
    if spec.vnet_hdr and spec.mode == "tun" and not spec.packet_info:
        # vnet frames on the device (tund.relay.codec.offload); offloads only when negotiated.
        # The frames' IP check moves to OffloadCodec.
        if isinstance(codec, PlainCodec):
            codec.ip_check = False
        # WireGuard carries IP packets only (tun mode: the receiver strips padding by the
        # IP length and drops anything else as invalid_packet): frames go in envelopes
        codec = OffloadCodec(codec, functools.partial(set_device_offload, spec.device_fd),
                             max_packet=mp, drops=counters.drops,
                             negotiate=spec.offload and spec.peers is None,
                             enveloped=not isinstance(codec, PlainCodec),
                             chunked=spec.transport == "udp", many=spec.peers is not None)
        device = FdDevice(spec.device_fd, read_size=VNET_MAX_FRAME + 1)
        transport = make_transport(spec, counters, VNET_MAX_FRAME)
        if isinstance(transport, UdpTransport):
            transport.on_recovered(codec.on_recovered)
        return Pump(control=control, device=device, transport=transport,
                    codec=codec, counters=counters, max_packet=VNET_MAX_FRAME,
                    mtu=spec.mtu, vnet=True, underlay=underlay)
    device = FdDevice(spec.device_fd, read_size=mp + 1)  # mp + 1 bytes read = oversize
    return Pump(control=control, device=device, transport=make_transport(spec, counters),
                codec=codec, counters=counters, max_packet=mp, mtu=spec.mtu,
                underlay=underlay)
