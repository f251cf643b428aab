"""PeerCore: WireGuard for many peers on one interface (issue 17), sans-IO.

One :class:`~.peer.Local` (our static key, cookie checker, load detector, rate limiters,
one receiver-index map) and one :class:`Peer` (a :class:`~.peer.PeerSession` with its
name, endpoint, allowed ips and counters) per configured peer. Results name the
endpoint each message goes to: ``(address, message)`` pairs.

Send (``seal``): the device packet's destination address -> the peer whose allowed_ips
hold it, longest prefix (:class:`~.prefixes.PrefixTable`); none: dropped ``no_route``.
A peer with no endpoint yet (a roaming client that never wrote) cannot be sent to: its
messages are dropped ``no_endpoint`` (the packet stays staged while no session exists).

Receive (``open``): transport data, responses and cookie replies -> the peer by receiver
index; an initiation -> the peer by the static key it carries, after it opens with our
key. An authenticated message moves its peer's endpoint to its source (roaming), as
wireguard-go does before the source check. A decrypted packet whose inner source
address does not route back to the same peer is dropped ``not_allowed`` (a tund
peer's offload hello, from 0.0.0.0, ``offload_hello``, unless ``frames``).

``frames`` (a vnet device, the tunnel's ``offload`` on): tund peers may send super-packets
(:mod:`tund.relay.codec.offload`). A peer's hello is answered with an ack sealed for that
peer (it then sends us vnet frames in envelopes and chunks; we keep sending it plain
packets, as to every peer), its mode advice to us is ignored (we send no frames), and an
envelope passes up to the offload codec only if the IP source of the frame inside routes
back to the peer that sent it (else ``not_allowed``): the cryptokey check, made on the
packet the device will see. Chunks carry their frame's own IP header, checked like any
packet.

Drop causes: those of :mod:`.codec`, plus ``no_route``, ``no_endpoint``,
``not_allowed`` and ``offload_hello``. Returned as ``Delivered.drop`` (the pump counts
them): every cause of a received message. Counted only in ``stats()["drops"]`` (the
core's own, never returned): ``no_route``, ``no_endpoint``, ``cookie``, ``no_session``,
``handshake_timeout``. A drop with a known peer is counted in that peer's ``drops``
too; the others (``malformed``, ``bad_mac``, ``unknown_receiver``, ``unknown_peer``,
``decrypt`` of an initiation, ``handshake_ratelimited``, ``cookie``, ``no_route``) in
the interface's.

Timers: one heap of (due, seq, peer) over all peers; :meth:`PeerCore.next_deadline`
is its head, :meth:`PeerCore.tick` pops what is due and ticks only those peers. Every
deadline a peer sets is at least ``floor`` = min(REKEY_TIMEOUT, KEEPALIVE_TIMEOUT,
3 x REJECT_AFTER_TIME, persistent keepalive) after the ``now`` it was set at. So
after a per-packet call, a peer whose heap entry is later than ``now + floor`` gets a
check-in entry at ``now + floor`` (a heap push, at most one per peer per ``floor``
seconds), and the per-packet paths cost one comparison; every other call reschedules
the peer from its exact deadlines. A check-in may wake the pump early: ``tick`` is harmless then.

Allowed ips move like WireGuard's: giving a peer a prefix another peer holds takes it
from that peer, so applying the peers of a valid (non-overlapping) configuration in any
order ends in that configuration's table.

Wiring into a worker (what the pump and a UDP transport do with it)::

    start      PeerCore(key, mtu=, packet_info=, timers=); add_peer(...) per peer;
               start(now) once the socket is ready -> sendto each (address, message)
    device     seal_one(packet, now) -> (address, message) | None; None: seal() -> pairs
    socket     open_one(datagram, source, now) -> bytes (to the device) | Delivered
               (packets to the device, sends by sendto, drop counted by the caller);
               ``source`` exactly as recvfrom gives it (IPv6: a 4-tuple is fine)
    timers     next_deadline(); tick(now) -> pairs
    reload     add_peer / remove_peer / update_peer(name, <the full new peer>, now)
    status     stats(): drops (add to the worker's), wg_drops, peers: name -> fields

Size: one class on purpose: the per-packet paths inline the prefix lookup and the
receiver-index map (see bench/peers_core.py for what each call costs).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tund.keyformat import decode_key, encode_key
from tund.relay.codec.base import Address, Opened
from tund.relay.codec.hello import hello, is_control, parse_hello, parse_mode_advice
from tund.relay.codec.offload import ENVELOPE_LEN, VNET_HDR_LEN, frame_ok, is_envelope
from tund.relay.wireguard import messages as msgs
from tund.relay.wireguard import noise
from tund.relay.wireguard.peer import (
    MAX_LEN,
    MIN_LEN,
    OWN_DROPS,
    TRANSPORT_WORD,
    Local,
    PeerSession,
    unpack_header,
)
from tund.relay.wireguard.prefixes import PrefixTable, format_prefix, parse_prefix
from tund.relay.wireguard.timers import Timers

log = logging.getLogger("tund.relay.wireguard.peers")

#: the core's own drop causes (never returned as ``Delivered.drop``)
CORE_OWN_DROPS = OWN_DROPS | {"no_route", "no_endpoint"}
#: what a worker reports about each peer (Stats ``peers``): :meth:`PeerCore.stats`
#: without ``full``
REPORTED = ("public_key", "endpoint", "latest_handshake", "rx_bytes", "tx_bytes",
            "rx_packets", "tx_packets", "drops", "offload")
#: ``state`` of a peer: a handshake within this many seconds is ``active``
ACTIVE_WITHIN = 180.0

Send = tuple[Address, bytes]
_u32 = struct.Struct(">I").unpack_from
Key = str | bytes


@dataclass(slots=True)
class Delivered:
    """The result of :meth:`PeerCore.open`: ``packets`` for the device, ``sends`` as
    (address, message) pairs, ``drop`` the cause when the message was rejected,
    ``peer`` the name of the peer it was for (None when no peer was found)."""

    packets: list[bytes]
    sends: list[Send]
    drop: str | None = None
    peer: str | None = None


class Peer(PeerSession):
    """One configured peer: its session state plus what the core keeps about it."""

    __slots__ = ("allowed", "configured_endpoint", "due", "endpoint", "floor", "name",
                 "public_text", "removed", "rx_bytes", "rx_packets", "tx_bytes",
                 "tx_packets")

    def __init__(self, local: Local, name: str, public: bytes, psk: bytes | None,
                 endpoint: Address | None, keepalive: float) -> None:
        super().__init__(local, public, psk, keepalive=keepalive, where=f"peer {name!r}")
        self.name = name
        self.public_text = encode_key(public)  # fixed: a new key is a new Peer
        self.allowed: list[tuple[bytes, int]] = []
        self.endpoint = endpoint
        self.configured_endpoint = endpoint
        self.rx_bytes = self.rx_packets = self.tx_bytes = self.tx_packets = 0
        self.due: float | None = None  # this peer's earliest entry in the core's heap
        self.removed = False
        self.floor = 0.0
        self.set_floor()

    def set_floor(self) -> None:
        """The least time after ``now`` at which this peer may set a deadline."""
        t = self._t
        candidates = [t.rekey_timeout, t.keepalive_timeout, 3 * t.reject_after_time]
        if self._keepalive > 0:
            candidates.append(self._keepalive)
        self.floor = min(candidates)


def _key(value: Key, field: str) -> bytes:
    if isinstance(value, bytes):
        if len(value) != 32:
            raise ValueError(f"{field}: a key is 32 bytes (got {len(value)})")
        return value
    return decode_key(value, field)


class PeerCore:
    """WireGuard for many peers (module docstring). ``private_key``: ours, base64 or 32
    raw bytes. Tun mode only (cryptokey routing reads IP headers); ValueError otherwise.
    ``timers``: test-only overrides by name (see :class:`~.timers.Timers`)."""

    #: handshake messages: the pump opens them after the transport data of a turn
    handshake_types = frozenset({msgs.TYPE_INITIATION, msgs.TYPE_RESPONSE,
                                 msgs.TYPE_COOKIE_REPLY})

    def __init__(self, private_key: Key, *, mtu: int, packet_info: bool = False,
                 mode: str = "tun", timers: Mapping[str, float] | None = None,
                 wall: Callable[[], float] = time.time,
                 rand: Callable[[int], bytes] = os.urandom, frames: bool = False) -> None:
        if mode != "tun":
            raise ValueError(f"peers: mode {mode!r}: many peers need mode \"tun\" "
                             "(cryptokey routing reads IP addresses)")
        self._local = Local(_key(private_key, "private_key"), mode="tun", mtu=mtu,
                            packet_info=packet_info,
                            timers=Timers.from_overrides(dict(timers or {})),
                            wall=wall, rand=rand)
        self._off = 4 if self._local.packet_info else 0
        # Local's index map, which in a PeerCore holds only Peers
        self._index: dict[int, Peer] = self._local.index  # type: ignore[assignment]
        self._peers: dict[str, Peer] = {}
        self._by_key: dict[bytes, Peer] = {}
        self._routes: PrefixTable[Peer] = PrefixTable()
        self._v4, self._v6 = self._routes.orders()  # for the inlined lookups
        self._heap: list[tuple[float, int, Peer]] = []
        self._seq = itertools.count()
        self._drops: Counter[str] = Counter()  # the interface's, without a peer
        self._cookie_replies = 0
        self.frames = frames and not self._local.packet_info  # (see the module docstring)
        self.frame_peers: set[str] = set()  # peers whose hello was answered

    # ------------------------------------------------------------------ peers

    def add_peer(self, name: str, public_key: Key, psk: Key | None,
                 allowed_ips: Iterable[str], endpoint: Address | None, keepalive: float,
                 now: float | None = None) -> list[Send]:
        """Configure a new peer; with ``now``, a peer with an endpoint and a persistent
        keepalive sends its keepalive at once (starting its handshake). ValueError for a
        name or key already configured, bad keys or prefixes (nothing changes then)."""
        if name in self._peers:
            raise ValueError(f"peer {name!r}: already configured")
        public = _key(public_key, f"peer {name!r}: public_key")
        other = self._by_key.get(public)
        if other is not None:
            raise ValueError(f"peer {name!r}: public_key is already peer {other.name!r}'s")
        prefixes = [parse_prefix(p) for p in allowed_ips]
        raw_psk = None if psk is None else _key(psk, f"peer {name!r}: preshared_key")
        peer = Peer(self._local, name, public, raw_psk, endpoint, keepalive)
        self._peers[name] = peer
        self._by_key[public] = peer
        self._set_allowed(peer, prefixes)
        if now is None or endpoint is None or keepalive <= 0:
            return []
        return self._emit(peer, peer.send_keepalive(now), now)

    def remove_peer(self, name: str) -> None:
        """Forget a peer and wipe its sessions at once: its messages then open as
        ``unknown_receiver`` (or ``unknown_peer``). KeyError for an unknown name."""
        peer = self._peers.pop(name)
        del self._by_key[peer._peer]
        for net, length in peer.allowed:
            self._routes.remove(net, length)
        peer.allowed = []
        self._local.forget(peer)
        peer.wipe()
        peer.removed = True
        if len(self._heap) > 2 * len(self._peers) + 64:
            self._compact()

    def _compact(self) -> None:
        """Drop the heap's superseded entries and those of removed peers (which would
        otherwise keep a removed peer's memory until its deadlines pass)."""
        self._heap = [e for e in self._heap if not e[2].removed and e[2].due == e[0]]
        heapq.heapify(self._heap)

    def update_peer(self, name: str, public_key: Key, psk: Key | None,
                    allowed_ips: Iterable[str], endpoint: Address | None,
                    keepalive: float, now: float) -> list[Send]:
        """Make a peer what the configuration now says (wg syncconf): a new public key
        is a new peer (sessions wiped); otherwise the sessions stay, the allowed ips
        are replaced, a changed configured endpoint replaces the current (roamed) one
        (one no longer configured leaves the current one),
        a changed keepalive is re-armed from ``now`` (one turned on sends a keepalive at
        once, as ``wg set`` does), a changed psk is used from the next handshake on."""
        peer = self._peers[name]
        public = _key(public_key, f"peer {name!r}: public_key")
        if public != peer._peer:
            other = self._by_key.get(public)
            if other is not None:
                raise ValueError(f"peer {name!r}: public_key is already peer "
                                 f"{other.name!r}'s")
            self.remove_peer(name)
            return self.add_peer(name, public, psk, allowed_ips, endpoint, keepalive, now)
        prefixes = [parse_prefix(p) for p in allowed_ips]
        raw_psk = None if psk is None else _key(psk, f"peer {name!r}: preshared_key")
        self._set_allowed(peer, prefixes)
        peer._psk = raw_psk if raw_psk is not None else noise.ZERO_PSK
        if endpoint != peer.configured_endpoint:
            peer.configured_endpoint = endpoint
            if endpoint is not None:  # no endpoint configured now: keep the roamed one
                peer.endpoint = endpoint
        if float(keepalive) != peer._keepalive:
            enabled = peer._keepalive <= 0 < keepalive
            peer.set_keepalive(keepalive, now)
            peer.set_floor()
            if enabled and peer.endpoint is not None:  # as wg set does: one at once
                return self._emit(peer, peer.send_keepalive(now), now)
            self._schedule(peer)
        return []

    def _set_allowed(self, peer: Peer, prefixes: list[tuple[bytes, int]]) -> None:
        routes = self._routes
        for net, length in peer.allowed:
            if routes.lookup_exact(net, length) is peer:
                routes.remove(net, length)
        peer.allowed = []
        for net, length in dict.fromkeys(prefixes):
            old = routes.insert(net, length, peer)
            if old is not None and old is not peer:  # moves, as in WireGuard
                old.allowed.remove((net, length))
            peer.allowed.append((net, length))

    def peer_names(self) -> list[str]:
        return list(self._peers)

    def start(self, now: float) -> list[Send]:
        """The socket is ready: every peer with an endpoint and a persistent keepalive
        sends a keepalive (its first handshake)."""
        out: list[Send] = []
        for peer in self._peers.values():
            if peer.endpoint is not None and peer._keepalive > 0:
                out += self._emit(peer, peer.send_keepalive(now), now)
        return out

    # ------------------------------------------------------------------ send

    def route(self, packet: bytes) -> Peer | None:
        """The peer a device packet goes to (by its destination address), or None."""
        off = self._off
        if len(packet) > off:
            version = packet[off] >> 4
            if version == 4:
                if len(packet) >= off + 20:
                    return self._routes.lookup(packet[off + 16:off + 20])
            elif version == 6 and len(packet) >= off + 40:
                return self._routes.lookup(packet[off + 24:off + 40])
        return None

    def seal(self, packet: bytes, now: float) -> list[Send]:
        """A device packet as (address, message) pairs for its peer; [] while staged or
        dropped (``no_route``, ``no_endpoint``, counted in :meth:`stats`)."""
        peer = self.route(packet)
        if peer is None:
            self._drops["no_route"] += 1
            return []
        peer.tx_packets += 1
        peer.tx_bytes += len(packet) - self._off
        return self._emit(peer, peer.seal(packet, now), now)

    def seal_to(self, source: Address, packet: bytes, now: float) -> list[Send]:
        """``packet`` (one of ours, e.g. an offload mode advice) sealed for the peer whose
        endpoint is ``source``; [] if no peer is there (rare: a linear search)."""
        peer = next((p for p in self._peers.values() if p.endpoint == source), None)
        return [] if peer is None else self._emit(peer, peer.seal(packet, now), now)

    def seal_one(self, packet: bytes, now: float) -> Send | None:
        """The per-packet path of :meth:`seal`: its one (address, message) when the
        peer has an endpoint and a session that needs nothing else; else None and no
        effect (call :meth:`seal`)."""
        off = self._off  # self.route(packet), inline
        size = len(packet)
        if size >= off + 20 and packet[off] >> 4 == 4:
            x = _u32(packet, off + 16)[0]
            order = self._v4
        elif size >= off + 40 and packet[off] >> 4 == 6:
            x = int.from_bytes(packet[off + 24:off + 40], "big")
            order = self._v6
        else:
            return None
        for shift, bucket in order:
            peer = bucket.get(x >> shift)
            if peer is not None:
                break
        else:
            return None
        endpoint = peer.endpoint
        if endpoint is None:
            return None
        message = peer.seal_one(packet, now)
        if message is None:
            return None
        peer.tx_packets += 1
        peer.tx_bytes += size - off
        due = peer.due
        if due is None or due > now + peer.floor:
            self._check_in(peer, now)
        return endpoint, message

    # ------------------------------------------------------------------ receive

    def open(self, message: bytes, source: Address | None, now: float) -> Delivered:
        """One datagram from ``source``; never raises on hostile input."""
        got = self.open_one(message, source, now)
        if isinstance(got, bytes):
            return Delivered([got], [], None, None)
        return got

    def open_one(self, message: bytes, source: Address | None,
                 now: float) -> bytes | Delivered:
        """:meth:`open`; an authenticated transport message carrying one allowed packet
        and needing no reply comes back as the packet alone."""
        if MIN_LEN <= len(message) <= MAX_LEN:
            word, receiver, counter = unpack_header(message)
            if word == TRANSPORT_WORD:
                peer = self._index.get(receiver)
                if peer is None:
                    return self._drop("unknown_receiver")
                peer._now = now
                got = peer._open_transport(receiver, counter, message, now, True)
                if isinstance(got, bytes):
                    if source is not None:
                        peer.endpoint = source
                    off = self._off  # self._allowed(peer, got), inline
                    if got[off] >> 4 == 4:
                        x = _u32(got, off + 12)[0]
                        order = self._v4
                    else:
                        x = int.from_bytes(got[off + 8:off + 24], "big")
                        order = self._v6
                    for shift, bucket in order:
                        owner = bucket.get(x >> shift)
                        if owner is not None:
                            break
                    else:
                        owner = None
                    if owner is not peer:
                        if self.frames and (d := self._offload(peer, got, now)) is not None:
                            return d
                        cause = self._not_allowed(got)
                        peer._drops[cause] += 1
                        return Delivered([], [], cause, peer.name)
                    peer.rx_packets += 1
                    peer.rx_bytes += len(got) - off
                    due = peer.due
                    if due is None or due > now + peer.floor:
                        self._check_in(peer, now)
                    return got
                return self._finish(peer, got, source, now)
        return self._open_handshake(message, source, now)

    def _open_handshake(self, message: bytes, source: Address | None,
                        now: float) -> Delivered:
        if self._local.cheap_drop(message, source, now):
            return self._drop("handshake_ratelimited")
        try:
            m = msgs.parse(message)
        except msgs.Malformed:
            return self._drop("malformed")
        local = self._local
        if isinstance(m, msgs.Transport):  # not reached: open_one takes every one
            return self._drop("malformed")
        if isinstance(m, msgs.CookieReply):
            peer = self._index.get(m.receiver)
            if peer is None:
                return self._drop("unknown_receiver")
            peer._now = now
            return self._finish(peer, peer._open_cookie(m, now), source, now)
        screened = local.screen(message, m.sender, source, now)
        if isinstance(screened, str):
            return self._drop(screened)
        if screened is not None:
            self._drops["cookie"] += 1
            self._cookie_replies += 1
            sends = [] if source is None else [(source, screened)]
            return Delivered([], sends, None, None)
        if isinstance(m, msgs.Initiation):
            read = local.read_initiation(m)
            if read is None:
                return self._drop("decrypt")
            state, got = read
            peer = self._by_key.get(got.peer_static)
            if peer is None:
                return self._drop("unknown_peer")
            peer._now = now
            return self._finish(peer, peer._accept_initiation(m, state, got, now),
                                source, now)
        found = self._index.get(m.receiver)
        if found is None:
            return self._drop("unknown_receiver")
        found._now = now
        return self._finish(found, found._open_response(m, now), source, now)

    def _finish(self, peer: Peer, opened: Opened, source: Address | None,
                now: float) -> Delivered:
        """A peer's Opened as a Delivered: roam, check the packets' sources, address
        the replies, reschedule."""
        if opened.authenticated and source is not None:
            peer.endpoint = source
        packets = []
        drop = opened.drop
        sends: list[Send] = []
        for p in opened.packets:
            if self._routes.lookup(self._source_of(p)) is peer:
                packets.append(p)
                peer.rx_packets += 1
                peer.rx_bytes += len(p) - self._off
            elif self.frames and (d := self._offload(peer, p, now)) is not None:
                packets += d.packets
                sends += d.sends
                if d.drop is not None:
                    drop = d.drop
            else:
                drop = self._not_allowed(p)
                peer._drops[drop] += 1
        sends = self._emit(peer, opened.replies, now) + sends
        return Delivered(packets, sends, drop, peer.name)

    def _offload(self, peer: Peer, packet: bytes, now: float) -> Delivered | None:
        """A tund peer's offload packet (``frames``; see the module docstring) whose source
        is not the peer's: a hello (answered), a mode advice (ignored) or an envelope
        (passed up if the frame inside is the peer's); None for anything else."""
        ack = parse_hello(packet)
        if ack is not None:
            if peer.name not in self.frame_peers:
                self.frame_peers.add(peer.name)
                log.info("peer %s is a tund peer: it may send us super-packets", peer.name)
            sends = [] if ack else self._emit(peer, peer.seal(hello(True), now), now)
            return Delivered([], sends, None, peer.name)
        if parse_mode_advice(packet) is not None:
            return Delivered([], [], None, peer.name)
        if not is_envelope(packet):
            return None
        frame = packet[ENVELOPE_LEN:]
        if not frame_ok(frame) or len(frame) < VNET_HDR_LEN + (
                20 if frame[VNET_HDR_LEN] >> 4 == 4 else 40):
            peer._drops["malformed"] += 1
            return Delivered([], [], "malformed", peer.name)
        if self._routes.lookup(self._source_of(frame[VNET_HDR_LEN:])) is not peer:
            peer._drops["not_allowed"] += 1
            return Delivered([], [], "not_allowed", peer.name)
        peer.rx_packets += 1
        peer.rx_bytes += len(frame) - VNET_HDR_LEN
        return Delivered([packet], [], None, peer.name)

    def _not_allowed(self, packet: bytes) -> str:
        """The cause of dropping an authenticated ``packet`` whose source is not its
        peer's: ``offload_hello`` for a tund peer's offload negotiation (from 0.0.0.0;
        a worker with many peers takes no offloads, as a kernel drops the hello), else
        ``not_allowed``."""
        return "offload_hello" if is_control(packet[self._off:]) else "not_allowed"

    def _source_of(self, packet: bytes) -> bytes:
        off = self._off
        if packet[off] >> 4 == 4:
            return packet[off + 12:off + 16]
        return packet[off + 8:off + 24]

    def _drop(self, cause: str) -> Delivered:
        self._drops[cause] += 1
        return Delivered([], [], cause, None)

    def _emit(self, peer: Peer, messages: list[bytes], now: float) -> list[Send]:
        """``messages`` for ``peer`` as sends to its endpoint (none: ``no_endpoint``);
        reschedules the peer."""
        self._schedule(peer)
        if not messages:
            return []
        endpoint = peer.endpoint
        if endpoint is None:
            peer._drops["no_endpoint"] += len(messages)
            return []
        return [(endpoint, m) for m in messages]

    # ------------------------------------------------------------------ timers

    def _push(self, peer: Peer, due: float) -> None:
        peer.due = due
        heapq.heappush(self._heap, (due, next(self._seq), peer))

    def _check_in(self, peer: Peer, now: float) -> None:
        self._push(peer, now + peer.floor)

    def _schedule(self, peer: Peer) -> None:
        """Make sure the heap holds an entry for ``peer`` no later than its deadline."""
        if peer.removed:
            return
        first = peer.next_deadline()
        if first is not None and (peer.due is None or first < peer.due):
            self._push(peer, first)

    def tick(self, now: float) -> list[Send]:
        """Run the timers of the peers that are due; harmless when none is."""
        heap = self._heap
        woken: list[Peer] = []
        out: list[Send] = []
        while heap and heap[0][0] <= now:
            due, _, peer = heapq.heappop(heap)
            if peer.removed or peer.due != due:
                continue  # superseded by an earlier entry, or the peer is gone
            peer.due = None
            woken.append(peer)
            messages = peer.tick(now)
            if messages:
                if peer.endpoint is None:
                    peer._drops["no_endpoint"] += len(messages)
                else:
                    out += [(peer.endpoint, m) for m in messages]
        for peer in woken:
            self._schedule(peer)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next may have work (the heap's head), or None."""
        heap = self._heap
        while heap and (heap[0][2].removed or heap[0][2].due != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # ------------------------------------------------------------------ status

    def mtu_changed(self, old: int, new: int) -> None:
        """The device's MTU changed: padding is bounded by the new one."""
        self._local.mtu = new
        for peer in self._peers.values():
            peer._mtu = new

    @property
    def public_key(self) -> str:
        return encode_key(self._local.pub)

    def peer(self, name: str) -> Peer:
        return self._peers[name]

    def _reported(self, name: str, p: Peer) -> dict[str, Any]:
        """The fields of :data:`REPORTED` (what a worker sends the daemon of each peer)."""
        endpoint = None
        if p.endpoint is not None:
            host, port = p.endpoint[0], p.endpoint[1]
            endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return {
            "public_key": p.public_text,
            "endpoint": endpoint,
            "latest_handshake": p._latest_handshake,
            "rx_bytes": p.rx_bytes,
            "tx_bytes": p.tx_bytes,
            "rx_packets": p.rx_packets,
            "tx_packets": p.tx_packets,
            "drops": dict(p._drops),
            "offload": "in" if name in self.frame_peers else "off",
        }

    def peer_status(self, name: str) -> dict[str, Any]:
        """One peer's fields: name, public_key, endpoint (``host:port`` or None),
        allowed_ips, latest_handshake (unix time or None), state (``active``: a
        handshake within 180 s, ``idle``, ``never``), session, rx/tx bytes and packets
        (device packets), drops (cause -> n), keepalive, handshakes_sent, offload (``in``:
        its hello was answered, it may send us super-packets; else ``off``)."""
        p = self._peers[name]
        out = self._reported(name, p)
        latest = p._latest_handshake
        if latest is None:
            state = "never"
        else:
            state = "active" if self._local.wall() - latest < ACTIVE_WITHIN else "idle"
        out.update(name=name, allowed_ips=[format_prefix(n, ln) for n, ln in p.allowed],
                   state=state, session=p.session_state(p._now), keepalive=p._keepalive,
                   handshakes_sent=p._handshakes_sent)
        return out

    def stats(self, *, full: bool = True) -> dict[str, Any]:
        """wg_drops (every cause, the interface's and all peers'), drops (the core's own
        causes only: see the module docstring), cookie_replies_sent, peers (name ->
        :meth:`peer_status`; without ``full``, only its :data:`REPORTED` fields, what a
        worker sends every ping: a tenth of the work with 1,000 peers)."""
        total: Counter[str] = Counter(self._drops)
        for p in self._peers.values():
            if p._drops:
                total.update(p._drops)
        peers = self._peers
        return {
            "wg_drops": dict(total),
            "drops": {k: n for k, n in total.items() if k in CORE_OWN_DROPS},
            "cookie_replies_sent": self._cookie_replies,
            "peers": ({name: self.peer_status(name) for name in peers} if full
                      else {name: self._reported(name, p) for name, p in peers.items()}),
        }
