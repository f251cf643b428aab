"""The contract between the daemon and one relay worker process.

Start-up: the daemon creates a ``SOCK_SEQPACKET`` socketpair and runs::

    python -m tund.relay --control-fd N

with ``pass_fds`` holding the control end, the device fd and (role ``listen``, or
``remote`` over UDP) the underlay socket the daemon made; or, the usual way, the fork
server (``python -m tund.relay --fork-server``, :mod:`tund.relay.process.zygote`) forks a
worker that finds the same fds under the same numbers (:mod:`tund.supervise.forkserver`).
Its first message on the control socket is a :class:`~tund.workerapi.messages.Start`
carrying this spec; secrets (private / preshared keys) travel only there, never in argv or
env. Every message afterwards, and ``STATS``, is a frozen dataclass of
:mod:`tund.workerapi.messages`.

Counters are cumulative for the life of the process; the daemon adds the totals of
earlier incarnations.
A worker exits non-zero on a fatal error after sending a ``state`` message carrying it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to run one tunnel; no config file, no control socket."""

    tunnel: str
    interface: str
    mode: Literal["tun", "tap"]
    transport: Literal["tcp", "udp"]
    role: Literal["listen", "remote"]
    host: str
    port: int
    device_fd: int
    # role listen: bound (UDP) / listening (TCP) socket; role remote over UDP: a socket
    # on a port the kernel picked, carrying the tunnel's mark, that the worker connects
    # to the resolved remote (None: the worker makes its own, unmarked)
    socket_fd: int | None = None
    mtu: int = 1500
    packet_info: bool = False
    # The device was opened with IFF_VNET_HDR (tun mode without packet info): every
    # packet carries a virtio_net_hdr, and offloads may be negotiated (tund.relay.codec.offload).
    vnet_hdr: bool = False
    offload: bool = False  # negotiate TSO super-packets with the peer (tund.relay.codec.offload)
    keepalive: int = 0
    reconnect_min: float = 0.2
    reconnect_max: float = 10.0
    encryption: Literal["none", "wireguard"] = "none"
    private_key: str | None = None  # base64, as `wg genkey` prints it
    peer_public_key: str | None = None
    preshared_key: str | None = None
    # role listen: source networks accepted (TCP on accept, UDP on receive); empty: all
    allowed_sources: tuple[str, ...] = ()
    # role listen, UDP: the peer's last authenticated endpoint ("ADDR:PORT", "[V6]:PORT"),
    # known to the daemon from an earlier worker: contacted at once (tund.daemon.peerstore)
    known_peer: str | None = None
    # many peers (a [tunnels.X.peers] table): one object per peer (check_peer); None for the
    # single-peer form (private_key / peer_public_key above)
    peers: list[dict[str, Any]] | None = None
    # Test-only timer overrides (e.g. {"rekey_after_time": 5}); empty in production.
    timers: dict[str, float] = dataclasses.field(default_factory=dict)
    # Test-only (tund --test-malformed-state): the worker sends one malformed state
    # message before its first packet, as a compromised worker might.
    test_malformed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON has them (``allowed_sources`` as a list)."""
        d = dataclasses.asdict(self)
        d["allowed_sources"] = list(self.allowed_sources)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown WorkerSpec fields: {sorted(unknown)}")
        if "allowed_sources" in data:  # a JSON list
            data = {**data, "allowed_sources": tuple(data["allowed_sources"])}
        return cls(**data)

    def redacted(self) -> dict[str, Any]:
        """``to_dict`` with secrets replaced, for logs and status."""
        d = self.to_dict()
        for k in ("private_key", "preshared_key"):
            if d[k] is not None:
                d[k] = "(hidden)"
        for peer in d["peers"] or ():
            if peer.get("preshared_key") is not None:
                peer["preshared_key"] = "(hidden)"
        return d


#: what the daemon tells the worker about each peer
PEER_FIELDS = ("name", "public_key", "preshared_key", "allowed_ips", "endpoint", "keepalive")


def check_peer(entry: object) -> dict[str, Any]:
    """``entry`` as a peer of the worker spec, or ValueError naming the field."""
    if not isinstance(entry, dict) or set(entry) != set(PEER_FIELDS):
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"a peer must have exactly the fields {list(PEER_FIELDS)} "
                         f"(got {got})")
    name = entry["name"]
    for key in ("name", "public_key"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise ValueError(f"peer {name!r}: {key} must be a non-empty string")
    if entry["preshared_key"] is not None and not isinstance(entry["preshared_key"], str):
        raise ValueError(f"peer {name!r}: preshared_key must be a string or null")
    ips = entry["allowed_ips"]
    if not isinstance(ips, list) or not all(isinstance(p, str) for p in ips):
        raise ValueError(f"peer {name!r}: allowed_ips must be a list of prefixes")
    if entry["endpoint"] is not None and not isinstance(entry["endpoint"], str):
        raise ValueError(f"peer {name!r}: endpoint must be \"HOST:PORT\" or null")
    k = entry["keepalive"]
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 65535:
        raise ValueError(f"peer {name!r}: keepalive must be 0..65535 seconds")
    return entry
