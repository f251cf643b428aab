"""What the daemon tells a worker: a tunnel's :class:`~tund.workerapi.spec.WorkerSpec`
(from the config, the held device, the underlay socket the daemon made and the key
material), its peers,
the static fields of its status. Pure, except :func:`bind_underlay`, which binds.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from tund.config import Config, InterfaceConfig, TunnelConfig
from tund.daemon.keyfiles import KeyMaterial
from tund.daemon.status import sysfs_mtu
from tund.workerapi import underlay
from tund.workerapi.spec import WorkerSpec


def vnet_hdr(iface: InterfaceConfig) -> bool:
    """Tun devices without packet info carry a vnet header (offloads: tund.relay.codec.offload)."""
    return iface.mode == "tun" and not iface.packet_info


def peer_entries(t: TunnelConfig, km: KeyMaterial | None) -> list[dict[str, Any]]:
    """The enabled peers of ``t`` as the worker takes them (tund.workerapi.spec.check_peer),
    with each peer's preshared key from ``km``."""
    psks = km.peer_preshared_keys if km is not None else {}
    return [{"name": name, "public_key": p.public_key, "preshared_key": psks.get(name),
             "allowed_ips": [str(r) for r in p.allowed_ips], "endpoint": p.endpoint,
             "keepalive": p.keepalive}
            for name, p in sorted((t.peers or {}).items()) if p.enabled]


def daemon_binds(t: TunnelConfig) -> bool:
    """Whether the daemon makes ``t``'s underlay socket (and keeps it across worker
    restarts): a listening tunnel's, and a connecting tunnel's over UDP; a connecting TCP
    tunnel's worker opens its own for every connection."""
    return t.role == "listen" or t.transport == "udp"


def bind_underlay(t: TunnelConfig, mark: int = 0) -> socket.socket:
    """Open the underlay socket of a tunnel the daemon binds for (:func:`daemon_binds`):
    a ``listen`` tunnel's listening (TCP) or bound (UDP) socket, a connecting UDP
    tunnel's socket on a port the kernel picks (its worker connects it to the resolved
    remote); with its mark (:func:`tund.netdev.policy.mark`: SO_MARK needs CAP_NET_ADMIN,
    which the worker has not)."""
    host, port = t.endpoint
    if t.role == "remote":
        assert t.transport == "udp", "a connecting tcp tunnel's worker makes its sockets"
        return underlay.connector_socket(host, mark=mark)
    return underlay.bind_underlay(t.transport, host, port, mark=mark)


def describe(t: TunnelConfig) -> dict[str, Any]:
    """The static fields of a tunnel's status (tund.control.status_schema)."""
    return {"interface": t.interface, "transport": t.transport, "role": t.role,
            "endpoint": t.endpoint_text, "encryption": t.encryption,
            "keepalive": t.keepalive}


def worker_spec(name: str, cfg: Config, device_fd: int, socket_fd: int | None,
                km: KeyMaterial, *, known_peer: str | None, timers: Mapping[str, float],
                test_malformed: bool = False) -> WorkerSpec:
    """Tunnel ``name``'s spec. ``known_peer``: its last authenticated peer (tund.daemon.
    peerstore), used only by a single-peer UDP listener."""
    t = cfg.tunnels[name]
    iface = cfg.interfaces[t.interface]
    host, port = t.endpoint
    resumable = t.role == "listen" and t.transport == "udp" and t.peers is None
    return WorkerSpec(
        tunnel=name, interface=t.interface, mode=iface.mode, transport=t.transport,
        role=t.role, host=host, port=port, device_fd=device_fd, socket_fd=socket_fd,
        mtu=iface.mtu or sysfs_mtu(t.interface) or 1500, packet_info=iface.packet_info,
        vnet_hdr=vnet_hdr(iface), offload=t.offload,
        keepalive=t.keepalive, reconnect_min=t.reconnect_min,
        reconnect_max=t.reconnect_max, allowed_sources=t.allowed_sources,
        encryption=t.encryption,
        private_key=km.private_key, peer_public_key=km.peer_public_key,
        preshared_key=km.preshared_key,
        known_peer=known_peer if resumable else None,
        peers=peer_entries(t, km) if t.peers is not None else None,
        timers=dict(timers), test_malformed=test_malformed)
