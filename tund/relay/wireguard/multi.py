"""The codec of a tunnel with many peers: :class:`~.peers.PeerCore` behind the pump.

Contract: :class:`PeersCodec` is a :class:`tund.relay.codec.base.Codec` whose messages go
to several peers, so it sends each itself through the transport's ``reply_to(message,
address)`` (a UDP listener in ``multi`` mode, :meth:`PeersCodec.attach`) and returns no
messages to the pump: the pump counts a device packet as sent when ``seal`` returns and
writes what ``open`` gives to the device. ``seal_one`` sends the steady state's one
message itself and returns ``b""`` (the pump's fast path); else None and ``seal``.

Peers come from ``WorkerSpec.peers`` (objects checked by
:func:`~tund.workerapi.spec.check_peer`) and change at runtime with
:meth:`PeersCodec.apply_peers` (the daemon's :class:`~tund.workerapi.messages.Peers` message,
on a reload): peers no longer named are removed (sessions wiped), new ones added, the
others updated in place (sessions kept unless the public key changed).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tund.relay.codec.base import Address, HoldsNothing, Opened
from tund.relay.wireguard.peers import Delivered, PeerCore, Send
from tund.workerapi.spec import check_peer

log = logging.getLogger("tund.relay.wireguard.multi")


Resolver = Callable[[str, int], Address | None]


def resolve_endpoint(text: str | None, resolve: Resolver | None = None) -> Address | None:
    """``"HOST:PORT"`` / ``"[V6]:PORT"`` -> an address; None (logged) when it does not
    resolve. A literal address needs no lookup; a host name is looked up once, here (at
    start or on a reload, never per packet)."""
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit():
        log.warning("peer endpoint %r is not HOST:PORT; the peer must write first", text)
        return None
    if resolve is not None:
        return resolve(host, int(port))
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except OSError as e:
        log.warning("peer endpoint %s does not resolve (%s); the peer must write first",
                    text, e)
        return None
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])


class PeersCodec(HoldsNothing):
    """See the module docstring. ``send_to(message, address) -> bool`` is the transport's."""

    def __init__(self, core: PeerCore, entries: Sequence[Mapping[str, Any]], *,
                 resolve: Resolver | None = None) -> None:
        self.core = core
        self.handshake_types = core.handshake_types
        self._resolve = resolve
        self._send_to: Callable[[bytes, Address], bool] | None = None
        self._entries: dict[str, Mapping[str, Any]] = {}
        for e in entries:
            self._add(check_peer(dict(e)), None)

    def attach(self, send_to: Callable[[bytes, Address], bool]) -> None:
        """Where messages go: the transport's ``send_to`` (set before the loop starts)."""
        self._send_to = send_to

    # ------------------------------------------------------------------ peers

    def _args(self, e: Mapping[str, Any]
              ) -> tuple[str, str | None, list[str], Address | None, float]:
        return (e["public_key"], e["preshared_key"], list(e["allowed_ips"]),
                resolve_endpoint(e["endpoint"], self._resolve), float(e["keepalive"]))

    def _add(self, e: Mapping[str, Any], now: float | None) -> list[Send]:
        sends = self.core.add_peer(e["name"], *self._args(e), now=now)
        self._entries[e["name"]] = e
        return sends

    def apply_peers(self, entries: Iterable[Mapping[str, Any]],
                    now: float) -> dict[str, list[str]]:
        """Make the peers exactly ``entries``; returns the names added, removed, changed.
        Raises ValueError (nothing after the failing peer is applied) for a bad entry."""
        wanted = {e["name"]: check_peer(dict(e)) for e in entries}
        done: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
        for name in [n for n in self._entries if n not in wanted]:
            self.core.remove_peer(name)
            del self._entries[name]
            done["removed"].append(name)
        sends: list[Send] = []
        for name, e in wanted.items():
            old = self._entries.get(name)
            if old is None:
                sends += self._add(e, now)
                done["added"].append(name)
            elif old != e:
                sends += self.core.update_peer(name, *self._args(e), now=now)
                self._entries[name] = e
                done["changed"].append(name)
        self._emit(sends)
        return done

    # ------------------------------------------------------------------ Codec contract

    def _emit(self, sends: list[Send]) -> None:
        send_to = self._send_to
        if send_to is None:
            return
        for address, message in sends:
            send_to(message, address)

    def seal(self, packet: bytes, now: float) -> list[bytes]:
        self._emit(self.core.seal(packet, now))
        return []

    def seal_to(self, source: Address, packet: bytes, now: float) -> None:
        """``packet`` to the peer at ``source`` (the offload codec's advice), sent."""
        self._emit(self.core.seal_to(source, packet, now))

    def seal_one(self, packet: bytes, now: float) -> bytes | None:
        """The steady state of one peer: its message goes to its endpoint at once, and
        ``b""`` says so (see :mod:`tund.relay.codec.base`); else None, no effect."""
        send_to = self._send_to
        if send_to is None:
            return None
        got = self.core.seal_one(packet, now)
        if got is None:
            return None
        send_to(got[1], got[0])
        return b""

    def open(self, message: bytes, source: Address | None, now: float) -> Opened:
        got = self.core.open(message, source, now)
        return self._opened(got)

    def open_one(self, message: bytes, source: Address | None, now: float) -> bytes | Opened:
        got = self.core.open_one(message, source, now)
        if isinstance(got, bytes):
            return got
        return self._opened(got)

    def _opened(self, got: Delivered) -> Opened:
        self._emit(got.sends)
        if got.drop is not None and not got.packets:
            return Opened([], [], False, got.drop)
        return Opened(got.packets, [], got.peer is not None, None)

    def tick(self, now: float) -> list[bytes]:
        self._emit(self.core.tick(now))
        return []

    def next_deadline(self) -> float | None:
        return self.core.next_deadline()

    def on_connected(self, now: float) -> list[bytes]:
        self._emit(self.core.start(now))
        return []

    def set_keepalive(self, seconds: float, now: float) -> None:
        """Nothing: with peers, each peer has its own keepalive (in its entry)."""

    def mtu_changed(self, old: int, new: int) -> None:
        self.core.mtu_changed(old, new)

    def stats(self) -> dict[str, Any]:
        return self.core.stats(full=False)

    @property
    def public_key(self) -> str:
        return self.core.public_key
