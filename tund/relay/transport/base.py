"""The wire end of the data path: the :class:`Transport` contract and shared helpers.

A transport owns its sockets and registers them on the pump's selector with a callback
as the key's ``data`` (``callback(mask)``). It hands every message it receives to its
:class:`Link` (the pump) and reports state changes to it. It never blocks.

States: ``"connecting"`` (no path to the peer: TCP not connected, UDP listen without a
learned peer, endpoint not resolvable) and ``"up"``.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Sequence
from typing import Any, Protocol

from tund.relay.codec.base import Address
from tund.relay.loop.poller import Registry


class Link(Protocol):
    """What a transport calls back (implemented by the pump).

    ``busy``: the current loop turn follows one that did work (the loop has not found
    itself idle since). A readiness callback then reads a whole batch; otherwise (after
    an idle wait) it may take one message and leave the rest to the next poll, which does
    not wait: the message is handled without first paying for the read that finds none.

    A link may also have ``deliver_train(data, size, source)`` (the pump has): a train of
    plain ``size``-byte datagrams from one source in one call, as ``deliver`` of each.
    """

    busy: bool

    def deliver(self, message: bytes, source: Address | None) -> None:
        """One message (UDP datagram / TCP frame) arrived from ``source``."""
        ...

    def on_state(self, new_path: bool) -> None:
        """``state`` or ``peer`` changed; ``new_path``: a new connection / socket is up."""
        ...

    def on_drained(self) -> None:
        """The outbound backlog fell below its low-water mark: resume reading the device."""
        ...


class Transport(Protocol):
    """One peer over one underlay; see the module docstring. A transport class also says
    its ``kind`` (``"udp"`` / ``"tcp"``; read with ``getattr``, a fake may lack it)."""

    state: str
    peer: Address | None

    def start(self, sel: Registry, link: Link, now: float) -> None:
        """Register sockets, start connecting (role remote) or accepting (role listen)."""
        ...

    def send(self, message: bytes) -> bool:
        """Queue or send one message; False if it was dropped (cause already counted)."""
        ...

    def send_now(self, message: bytes) -> bool:
        """``send`` then ``flush``, in fewer steps when nothing is queued (the latency
        path: one message after an idle wait). False if it was dropped (counted)."""
        ...

    def reply_to(self, message: bytes, source: Address) -> bool:
        """Answer a message that came from ``source`` without proving it is the peer (e.g.
        a WireGuard cookie reply): UDP sends it to ``source`` itself, not to the peer; a
        connection-based transport sends it on the connection. False if dropped."""
        ...

    def flush(self) -> None:
        """Push queued bytes to the kernel (called once per loop iteration)."""
        ...

    @property
    def backlogged(self) -> bool:
        """True while the outbound queue is above its high-water mark."""
        ...

    def set_peer(self, addr: Address) -> None:
        """Move the peer endpoint (UDP roaming); a no-op where the peer is a connection."""
        ...

    def set_keepalive(self, seconds: int) -> None:
        """A reload changed ``keepalive``: TCP re-arms its socket keepalive; UDP ignores it
        (the codec sends UDP keepalives)."""
        ...

    def tick(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def close(self) -> None: ...


def format_peer(addr: Any) -> str | None:
    """``"ADDR:PORT"`` / ``"[V6]:PORT"`` for a socket address, None for None."""
    if addr is None:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_peer(text: str) -> tuple[str, int]:
    """The inverse of :func:`format_peer`: ``"ADDR:PORT"`` / ``"[V6]:PORT"`` -> (addr, port).

    Raises ValueError naming the text when it is not of that form."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not an ADDR:PORT endpoint: {text!r}")
    return host, int(port)


def resolve(host: str, port: int, socktype: int) -> tuple[int, Any]:
    """``(family, sockaddr)`` of the first address of ``host``; raise OSError naming it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socktype)
    except socket.gaierror as e:
        raise OSError(e.errno, f"cannot resolve {host!r}: {e.strerror}") from None
    if not infos:
        raise OSError(0, f"cannot resolve {host!r}: no address")
    family, _, _, _, sockaddr = infos[0]
    return int(family), sockaddr


class Backoff:
    """Capped exponential backoff with jitter: ``min * 2**n``, capped at ``max``, x[0.5, 1]."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = max(minimum, 0.001)
        self.maximum = max(maximum, self.minimum)
        self.attempts = 0

    def reset(self) -> None:
        self.attempts = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.minimum * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return float(max(self.minimum, base * random.uniform(0.5, 1.0)))


class SourceFilter:
    """Which source addresses a listener takes: those inside one of ``networks``
    (``"198.51.100.0/24"``, ``"2001:db8::/32"``, a bare address). An IPv4-mapped IPv6
    source counts as its IPv4 address. Answers are cached per address (bounded).
    A network that does not parse is a ValueError naming it."""

    CACHE = 1024

    def __init__(self, networks: Sequence[str]) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for n in networks:
            try:
                self.networks.append(ipaddress.ip_network(n, strict=False))
            except ValueError as e:
                raise ValueError(f"allowed_sources: {n!r} is not a network ({e})") from None
        self._cache: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        ok = self._cache.get(host)
        if ok is None:
            ok = self._check(host)
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            self._cache[host] = ok
        return ok

    def _check(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.networks)
