"""The contract between the daemon and one relay worker process.

Start-up: the daemon creates a ``SOCK_SEQPACKET`` socketpair and runs::

    python -m tund.relay --control-fd N

with ``pass_fds`` holding the control end, the device fd and (role ``listen``) the
pre-bound underlay socket; or, the usual way, the fork server (``python -m tund.relay
--fork-server``, :mod:`tund.relay.process.zygote`) forks a worker that finds the same fds under
the same numbers (:mod:`tund.supervise.forkserver`). Its first message on the control
socket is::

    {"op": "start", "spec": WorkerSpec.to_dict()}

Secrets (private / preshared keys) travel only in that message, never in argv or env.

Control messages (one JSON object per SEQPACKET datagram):

daemon -> worker
    ``{"op": "ping", "seq": N}``  answered from the packet loop itself (a wedged loop
    does not answer, and the daemon kills it);
    ``{"op": "stop"}``            finish the current batch, close, exit 0.

worker -> daemon
    ``{"op": "pong", "seq": N, "stats": STATS}``
    ``{"op": "state", "state": "connecting"|"up", "peer": "ADDR:PORT"|null,
       "error": str|null, "stats": STATS}``  sent on every state change.

``STATS`` is a dict with at least: ``rx_packets``, ``rx_bytes`` (peer -> device),
``tx_packets``, ``tx_bytes`` (device -> peer), ``drops`` (cause -> count), ``errors``,
``last_rx``, ``last_tx`` (unix time or null), ``peer`` (or null), ``state``; encrypted
tunnels add their session fields. Counters are cumulative for the life of the process;
the daemon adds the totals of earlier incarnations.

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
    socket_fd: int | None = None  # role listen: bound (UDP) / listening (TCP) socket
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
    # Test-only timer overrides (e.g. {"rekey_after_time": 5}); empty in production.
    timers: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
        return d
