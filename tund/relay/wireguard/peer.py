"""WireGuard's per-peer state machine, and what all peers of one interface share.

:class:`Local` is the interface side: our static key, the Noise prologue, the cookie
checker (mac1 over OUR public key, cookie replies under load), the load detector and
the per-source handshake rate limiters, the receiver-index map over all peers and a
pool of random jitter draws. :class:`PeerSession` is one peer: its handshake state,
keypairs (current / previous / next, each with its replay window), timers, cookie
generator (mac1 over ITS public key), staged packets and drop counters.

:class:`~tund.relay.wireguard.codec.WireGuardCodec` is one ``PeerSession`` with a
``Local`` of its own (one peer per worker); :class:`~tund.relay.wireguard.peers.PeerCore`
holds one ``Local`` and a ``PeerSession`` per configured peer. Flows, drop causes and
timers are described in :mod:`tund.relay.wireguard.codec`.

Receiver indexes are unique over all peers of a ``Local``: :meth:`Local.new_index`
draws one not in :attr:`Local.index` and maps it to the peer; a peer's indexes that it
no longer holds are unmapped at its next draw (so the map holds at most a handful per
peer), all of them by :meth:`Local.forget`.

Size: one module on purpose: :class:`PeerSession`'s per-packet paths (seal_one,
_open_transport) read its slots directly and :class:`Local` is what they share; the
protocol's reasoning is in docs/design.md.
"""

from __future__ import annotations

import collections
import functools
import operator
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, overload

from cryptography.exceptions import InvalidTag

from tund.keyformat import clamp, encode_key, public_from_private
from tund.relay.codec.base import Address, Opened
from tund.relay.wireguard import messages as msgs
from tund.relay.wireguard import noise
from tund.relay.wireguard.cookie import CookieChecker, CookieGenerator, LoadDetector
from tund.relay.wireguard.primitives import AEAD_NONCE, DecryptError, dh, tai64n
from tund.relay.wireguard.ratelimit import RateLimiter, source_key
from tund.relay.wireguard.session import Keypair, Keypairs
from tund.relay.wireguard.timers import Timers
from tund.states import Handshakes

_PAD = 16
_ETH_P_IP = b"\x08\x00"
_ETH_P_IPV6 = b"\x86\xdd"
OWN_DROPS = frozenset({"cookie", "no_session", "handshake_timeout"})
_DEADLINES = ("retransmit", "send_keepalive", "new_handshake", "zero_keys", "persistent")
_ARMED = functools.partial(operator.is_not, None)  # a deadline that is set (C-level filter)
_ZEROS = tuple(bytes(i) for i in range(_PAD))  # padding, by length
_NO_MAC2 = bytes(16)  # a handshake message from a sender without a cookie
# The transport header as one little-endian word: type 4 with its 3 reserved bytes zero.
TRANSPORT_WORD = msgs.TYPE_TRANSPORT
_HEADER = struct.Struct("<IIQ")
_pack_header = _HEADER.pack
unpack_header = _HEADER.unpack_from
_nonce = AEAD_NONCE.pack
_HDR_LEN = msgs.TRANSPORT_HEADER_LEN
MIN_LEN = msgs.TRANSPORT_MIN_LEN
MAX_LEN = msgs.MAX_TRANSPORT
assert _HEADER.size == _HDR_LEN
_JITTER_BLOCK = 128
_JITTER_DRAWS = struct.Struct(f"<{_JITTER_BLOCK}H")


@dataclass
class _Pending:
    """Our initiation waiting for its response (``sent``: when it left)."""

    local_index: int
    ephemeral: bytes
    state: noise.SymmetricState
    sent: float


def ip_length(packet: bytes) -> int | None:
    """The length an IPv4/IPv6 header claims, or None when ``packet`` is not such a packet."""
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4:
        total = packet[2] << 8 | packet[3]
        return total if 20 <= total <= n else None
    if n >= 40 and packet[0] >> 4 == 6:
        total = 40 + (packet[4] << 8 | packet[5])
        return total if total <= n else None
    return None


class Local:
    """What every peer of one interface shares (module docstring). ``private`` is our
    clamped static private key (32 bytes)."""

    __slots__ = ("checker", "cookie_limit", "handshake_limit", "index", "jitter_pool",
                 "load", "mode", "mtu", "packet_info", "priv", "prologue", "pub", "rand",
                 "t", "tun", "wall")

    def __init__(self, private: bytes, *, mode: noise.Mode, mtu: int, packet_info: bool,
                 timers: Timers, wall: Callable[[], float] = time.time,
                 rand: Callable[[int], bytes] = os.urandom) -> None:
        self.priv = private
        self.pub = public_from_private(private)
        self.prologue = noise.prologue_for(mode)
        self.mode = mode
        self.tun = mode == "tun"
        self.packet_info = packet_info and self.tun
        self.mtu = mtu
        self.t = timers
        self.wall = wall
        self.rand = rand
        self.checker = CookieChecker(self.pub, timers, rand)
        self.load = LoadDetector(timers)
        self.cookie_limit = RateLimiter(timers.handshake_rate, timers.handshake_burst)
        self.handshake_limit = RateLimiter(timers.handshake_rate, timers.handshake_burst)
        self.index: dict[int, PeerSession] = {}
        self.jitter_pool: list[int] = []  # 16-bit draws for jitter(), used from the end

    def jitter(self) -> float:
        """Up to ``rekey_jitter`` s, from 16 random bits. The bits come from ``rand`` in
        blocks of :data:`_JITTER_BLOCK` draws: a sealed packet that (re)arms the
        new-handshake timer needs one, and that is every first packet sent after one
        was received, so drawing them one at a time cost a getrandom call per packet."""
        pool = self.jitter_pool
        if not pool:
            pool.extend(_JITTER_DRAWS.unpack(self.rand(_JITTER_DRAWS.size)))
        return pool.pop() / 0xFFFF * self.t.rekey_jitter

    def new_index(self, peer: PeerSession) -> int:
        """A receiver index held by no peer, now mapped to ``peer``; unmaps the indexes
        ``peer`` no longer holds."""
        index = self.index
        live = peer._keys.indexes()
        if peer._pending is not None:
            live.add(peer._pending.local_index)
        kept = []
        for i in peer._indexes:
            if i in live:
                kept.append(i)
            elif index.get(i) is peer:
                del index[i]
        while True:
            i = int.from_bytes(self.rand(4), "little")
            if i not in index:
                break
        index[i] = peer
        kept.append(i)
        peer._indexes = kept
        return i

    def forget(self, peer: PeerSession) -> None:
        """Unmap every receiver index of ``peer`` (it is being removed)."""
        for i in peer._indexes:
            if self.index.get(i) is peer:
                del self.index[i]
        peer._indexes = []

    def cheap_drop(self, message: bytes, source: Address | None, now: float) -> bool:
        """True when ``message`` is to be dropped as ``handshake_ratelimited`` before it
        is even parsed: under load, of initiation or response size, without mac2 (so only
        a cookie reply could come of it) while ``source``'s cookie bucket is empty."""
        n = len(message)
        if ((n == msgs.INITIATION_LEN or n == msgs.RESPONSE_LEN)
                and message[-16:] == _NO_MAC2 and self.load.under_load(now)):
            key = source_key(source[0]) if source is not None else ""
            if not self.cookie_limit.has_token(key, now):
                self.load.note(now)
                return True
        return False

    def screen(self, message: bytes, sender: int, source: Address | None,
               now: float) -> str | bytes | None:
        """The checks every handshake message (initiation, response) passes before any
        peer's state is touched: None to go on, a drop cause (``bad_mac``,
        ``handshake_ratelimited``), or a cookie reply to send to ``source`` instead
        (under load without a valid mac2; the caller counts it as ``cookie``)."""
        checker = self.checker
        if not checker.check_mac1(message):
            return "bad_mac"
        self.load.note(now)
        if self.load.under_load(now):
            key = source_key(source[0]) if source is not None else ""
            if not checker.check_mac2(message, source, now):
                if not self.cookie_limit.allow(key, now):
                    return "handshake_ratelimited"
                return checker.create_reply(message, sender, source, now)
            if not self.handshake_limit.allow(key, now):
                return "handshake_ratelimited"
        return None

    def read_initiation(self, m: msgs.Initiation
                        ) -> tuple[noise.SymmetricState, noise.ReadInitiation] | None:
        """Decrypt an initiation's static key and timestamp with our key; None when it
        does not open."""
        state = noise.initial_state(self.prologue, self.pub)
        try:
            got = noise.read_initiation(state, self.priv,
                                        m.ephemeral + m.static + m.timestamp)
        except DecryptError:
            return None
        return state, got


class PeerSession:
    """One peer's WireGuard state (module docstring); ``peer_public`` and ``psk`` are raw
    32-byte keys (``psk`` None: no preshared key). ValueError, naming ``where``, for our
    own public key or a low-order point."""

    __slots__ = (
        "_attempts",
        "_cookie_replies",
        "_cookies",
        "_deadline",
        "_direct_age",
        "_direct_messages",
        "_drops",
        "_handshakes_sent",
        "_indexes",
        "_keepalive",
        "_keepalive_timeout",
        "_keys",
        "_last_initiation",
        "_last_minute_age",
        "_last_sent_handshake",
        "_last_timestamp",
        "_latest_handshake",
        "_local",
        "_mtu",
        "_need_another_keepalive",
        "_now",
        "_packet_info",
        "_peer",
        "_pending",
        "_psk",
        "_refused",
        "_reject_messages",
        "_reject_time",
        "_sent_last_minute_handshake",
        "_staged",
        "_staged_max",
        "_static_static",
        "_t",
        "_tun",
        "_unanswered",
        "_unknown_key",
    )

    def __init__(self, local: Local, peer_public: bytes, psk: bytes | None, *,
                 keepalive: float, where: str) -> None:
        if peer_public == local.pub:
            raise ValueError(f"{where}: the peer's public key is our own public key")
        try:
            self._static_static = dh(local.priv, peer_public)
        except DecryptError:
            raise ValueError(f"{where}: the peer's public key is a low-order point "
                             "(X25519 gives zero)") from None
        self._local = local
        self._peer = peer_public
        self._psk = psk if psk is not None else noise.ZERO_PSK
        self._keepalive = float(keepalive)
        self._t = t = local.t
        # Timers is frozen: the per-packet paths read these copies.
        self._tun = local.tun
        self._packet_info = local.packet_info
        self._mtu = local.mtu
        self._reject_messages = t.reject_after_messages
        self._reject_time = t.reject_after_time
        self._keepalive_timeout = t.keepalive_timeout
        self._staged_max = max(1, t.staged_packets)
        # seal's direct path: no rekey by message count or age can be due below these
        self._direct_messages = min(t.rekey_after_messages, t.reject_after_messages)
        self._direct_age = min(t.rekey_after_time, t.reject_after_time)
        # _keep_key_fresh_receiving has work only for a current keypair older than this
        self._last_minute_age = (t.reject_after_time - t.keepalive_timeout
                                 - t.rekey_timeout)
        self._cookies = CookieGenerator(peer_public, t)
        self._keys = Keypairs()
        self._indexes: list[int] = []
        self._pending: _Pending | None = None
        self._staged: collections.deque[bytes] = collections.deque()
        self._deadline: dict[str, float | None] = dict.fromkeys(_DEADLINES)
        self._attempts = 0
        self._need_another_keepalive = False
        self._sent_last_minute_handshake = False
        self._last_sent_handshake: float | None = None
        self._last_timestamp: bytes | None = None
        self._last_initiation: float | None = None
        self._latest_handshake: float | None = None
        self._drops: collections.Counter[str] = collections.Counter()
        self._handshakes_sent = 0
        self._cookie_replies = 0
        self._unanswered = 0  # initiations whose retry time passed unanswered (see health)
        self._refused: str | None = None  # why the latest handshake message was refused
        self._unknown_key: bytes | None = None  # the static key of the latest unknown_peer
        self._now = float("-inf")  # the latest ``now`` passed in (for stats())

    # ------------------------------------------------------------------ sending

    def seal(self, packet: bytes, now: float) -> list[bytes]:
        """Stage ``packet`` and send what the session allows (see the codec's docstring)."""
        message = self.seal_one(packet, now)
        if message is not None:
            return [message]
        self._now = now
        if self._packet_info:
            packet = packet[4:]
        if len(self._staged) >= self._staged_max:
            self._staged.popleft()
            self._drops["no_session"] += 1
        self._staged.append(packet)
        return self._send_staged(now)

    def seal_one(self, packet: bytes, now: float) -> bytes | None:
        """The per-packet path of :meth:`seal`: a usable current keypair that needs no
        rekey, nothing staged, a non-empty packet (else None, nothing changed). Does what
        :meth:`_send_staged` does for that case, without the queue."""
        kp = self._keys.current
        if (kp is None or self._staged or kp.send_counter >= self._direct_messages
                or now - kp.created >= self._direct_age):
            return None
        if self._packet_info:
            packet = packet[4:]
        if not packet:
            return None
        self._now = now
        counter = kp.send_counter
        kp.send_counter = counter + 1
        if self._tun:
            size = len(packet)
            mtu = self._mtu
            if size < mtu:
                pad = -size & (_PAD - 1)
                if pad:
                    packet += _ZEROS[pad if size + pad <= mtu else mtu - size]
        message = _pack_header(TRANSPORT_WORD, kp.remote_index, counter) + kp.seal(
            _nonce(counter), packet, None)
        deadline = self._deadline
        if self._keepalive > 0:  # _on_authenticated_traversal
            deadline["persistent"] = now + self._keepalive
        deadline["send_keepalive"] = None
        self._need_another_keepalive = False
        if deadline["new_handshake"] is None:
            deadline["new_handshake"] = (now + self._keepalive_timeout
                                         + self._t.rekey_timeout + self._local.jitter())
        return message

    def tick(self, now: float) -> list[bytes]:
        """Run every expired timer; harmless when none is due."""
        self._now = now
        out: list[bytes] = []
        for name in _DEADLINES:
            due = self._deadline[name]
            if due is not None and due <= now:
                self._deadline[name] = None
                out += getattr(self, f"_expired_{name}")(now)
        return out

    def next_deadline(self) -> float | None:
        armed: Iterator[float] = filter(_ARMED, self._deadline.values())  # type: ignore[arg-type]
        return min(armed, default=None)

    def set_keepalive(self, seconds: float, now: float) -> None:
        """A new persistent-keepalive interval: re-armed from now (0 disarms it), as wg
        does on ``wg set ... persistent-keepalive``."""
        self._keepalive = float(seconds)
        self._deadline["persistent"] = now + self._keepalive if seconds > 0 else None

    def send_keepalive(self, now: float) -> list[bytes]:
        """A keepalive now: a transport message on a usable session, else a handshake
        initiation (rate-limited to one per REKEY_TIMEOUT)."""
        self._now = now
        return self._send_keepalive(now)

    def peer_stats(self) -> dict[str, object]:
        """peer_public_key, latest_handshake (unix time or None), session (as of the latest
        ``now`` passed in), handshakes_sent, cookie_replies_sent, wg_drops (cause -> n),
        drops (the own causes only, see the codec's docstring)."""
        return {
            "peer_public_key": encode_key(self._peer),
            "latest_handshake": self._latest_handshake,
            "session": self.session_state(self._now),
            "handshakes_sent": self._handshakes_sent,
            "cookie_replies_sent": self._cookie_replies,
            "wg_drops": dict(self._drops),
            "drops": {k: n for k, n in self._drops.items() if k in OWN_DROPS},
        }

    def health(self, now: float) -> Handshakes:
        """What :func:`tund.states.link_state` needs: the session in use (when its
        handshake completed), unanswered initiations and the latest refusal, both since
        the latest completed handshake."""
        kp = self._keys.current
        return Handshakes(kp.created if self._usable(kp, now) and kp is not None else None,
                          self._unanswered, self._refused)

    def session_state(self, now: float) -> str:
        """``"established"`` (a current keypair may send), ``"handshaking"`` or ``"none"``."""
        if self._usable(self._keys.current, now):
            return "established"
        if self._pending is not None or self._keys.next is not None:
            return "handshaking"
        return "none"

    def wipe(self) -> None:
        """Forget every keypair, the pending handshake and the staged packets (the peer
        is removed or its keys changed); its receiver indexes stay mapped until
        :meth:`Local.forget` or its next draw, and open as ``unknown_receiver``."""
        self._keys.clear()
        self._pending = None
        self._staged.clear()
        self._deadline = dict.fromkeys(_DEADLINES)

    def _usable(self, kp: Keypair | None, now: float) -> bool:
        return (kp is not None and kp.send_counter < self._t.reject_after_messages
                and now - kp.created < self._t.reject_after_time)

    def _send_staged(self, now: float) -> list[bytes]:
        kp = self._keys.current
        if kp is None or not self._usable(kp, now):
            return self._initiate(now, retry=False)
        out: list[bytes] = []
        data_sent = False
        while self._staged:
            if kp.send_counter >= self._t.reject_after_messages:
                break
            packet = self._staged.popleft()
            out.append(self._encrypt(kp, packet))
            data_sent = data_sent or bool(packet)
        if out:
            self._on_authenticated_traversal(now)
            self._deadline["send_keepalive"] = None  # any authenticated packet sent
            self._need_another_keepalive = False
        if data_sent and self._deadline["new_handshake"] is None:
            self._deadline["new_handshake"] = (now + self._t.keepalive_timeout
                                               + self._t.rekey_timeout
                                               + self._local.jitter())
        if self._staged or (kp.send_counter > self._t.rekey_after_messages or (
                kp.is_initiator and now - kp.created > self._t.rekey_after_time)):
            out += self._initiate(now, retry=False)
        return out

    def _encrypt(self, kp: Keypair, packet: bytes) -> bytes:
        if self._tun:
            size = len(packet)
            padded = min(-(-size // _PAD) * _PAD, max(self._mtu, size))
            packet = packet + _ZEROS[padded - size]
        counter, sealed = kp.encrypt(packet)
        return _pack_header(TRANSPORT_WORD, kp.remote_index, counter) + sealed

    def _send_keepalive(self, now: float) -> list[bytes]:
        if not self._staged:
            self._staged.append(b"")
        return self._send_staged(now)

    def _initiate(self, now: float, *, retry: bool) -> list[bytes]:
        if not retry:
            self._attempts = 0
        if (self._last_sent_handshake is not None
                and now - self._last_sent_handshake < self._t.rekey_timeout):
            return []
        self._last_sent_handshake = now
        local = self._local
        ephemeral = clamp(local.rand(32))
        index = local.new_index(self)
        state = noise.initial_state(local.prologue, self._peer)
        body = noise.write_initiation(state, local.priv, ephemeral, self._peer,
                                      tai64n(local.wall()),
                                      static_static=self._static_static)
        self._pending = _Pending(index, ephemeral, state, now)
        message = self._cookies.add_macs(msgs.pack_initiation(index, body), now)
        self._on_authenticated_traversal(now)
        self._deadline["send_keepalive"] = None
        self._deadline["retransmit"] = now + self._t.rekey_timeout + local.jitter()
        self._handshakes_sent += 1
        return [message]

    # ------------------------------------------------------------------ receiving

    def _drop(self, cause: str) -> Opened:
        self._drops[cause] += 1
        return Opened([], [], False, cause)

    def _accept_initiation(self, m: msgs.Initiation, state: noise.SymmetricState,
                           got: noise.ReadInitiation, now: float) -> Opened:
        """An initiation that opened with our key and carries this peer's static key."""
        if self._last_timestamp is not None and got.payload <= self._last_timestamp:
            return self._drop("stale_timestamp")
        if (self._last_initiation is not None
                and now - self._last_initiation <= self._t.handshake_initiation_rate):
            return self._drop("flood")
        self._last_timestamp, self._last_initiation = got.payload, now
        self._on_authenticated_traversal(now)
        self._deadline["new_handshake"] = None
        local = self._local
        ephemeral = clamp(local.rand(32))
        index = local.new_index(self)
        body = noise.write_response(state, ephemeral, got.peer_ephemeral, got.peer_static,
                                    self._psk, b"")
        to_responder, to_initiator = state.split()
        self._keys.begin(Keypair(to_initiator, to_responder, index, m.sender, now, False))
        # our own initiation, if one crossed this one, stays answerable (_open_response)
        self._last_sent_handshake = now
        self._session_derived(now)
        reply = self._cookies.add_macs(msgs.pack_response(index, m.sender, body), now)
        self._deadline["send_keepalive"] = None
        return Opened([], [reply], True, None)

    def _open_response(self, m: msgs.Response, now: float) -> Opened:
        pending = self._pending
        if pending is None or m.receiver != pending.local_index:
            return self._drop("unknown_receiver")
        state = pending.state.copy()
        try:
            noise.read_response(state, pending.ephemeral, self._local.priv, self._psk,
                                m.ephemeral + m.empty)
        except DecryptError:
            return self._drop("decrypt")
        self._pending = None
        crossed = self._keys.next
        if (crossed is not None and not crossed.is_initiator and crossed.created >= pending.sent
                and self._local.pub > self._peer):
            # both sides initiated at once and each answered the other: the session the
            # lower public key began wins on both sides (its first message will confirm it
            # here); WireGuard keeps neither and waits 5 s (REKEY_TIMEOUT) for a retry
            return Opened([], [], True, None)
        to_responder, to_initiator = state.split()
        self._keys.begin(Keypair(to_responder, to_initiator, pending.local_index, m.sender,
                                 now, True))
        self._session_derived(now)
        self._handshake_complete(now)
        self._on_authenticated_traversal(now)
        self._deadline["new_handshake"] = None
        return Opened([], self._send_keepalive(now), True, None)

    def _open_cookie(self, m: msgs.CookieReply, now: float) -> Opened:
        known = self._keys.indexes()
        if self._pending is not None:
            known.add(self._pending.local_index)
        if m.receiver not in known:
            return self._drop("unknown_receiver")
        if not self._cookies.consume_reply(m, now):
            return self._drop("bad_cookie")
        return Opened([], [], False, None)

    @overload
    def _open_transport(self, receiver: int, counter: int, message: bytes,
                        now: float) -> Opened: ...

    @overload
    def _open_transport(self, receiver: int, counter: int, message: bytes,
                        now: float, one: Literal[True]) -> Opened | bytes: ...

    # Size: long on purpose: the per-packet receive path (decrypt, replay, padding, timers), one
    # call per packet; every helper it called would cost each packet a Python call.
    def _open_transport(self, receiver: int, counter: int, message: bytes,
                        now: float, one: bool = False) -> Opened | bytes:
        """A well-formed transport message (header fields already unpacked); with
        ``one``, a single packet without replies comes back bare (``open_one``)."""
        keys = self._keys
        kp = keys.current
        if kp is None or kp.local_index != receiver:
            kp = keys.lookup(receiver)
            if kp is None:
                return self._drop("unknown_receiver")
        if now - kp.created >= self._reject_time:
            return self._drop("expired")
        try:
            plain = kp.open(_nonce(counter), message[_HDR_LEN:], None)
        except InvalidTag:
            return self._drop("decrypt")
        if not kp.replay.check_and_set(counter, self._reject_messages):
            return self._drop("replay")
        replies: list[bytes] = []
        if kp is keys.next:
            keys.received_with(kp)
            self._handshake_complete(now)
            if self._staged:
                replies += self._send_staged(now)
        current = keys.current
        if (not self._sent_last_minute_handshake and current is not None
                and current.is_initiator and now - current.created > self._last_minute_age):
            replies += self._keep_key_fresh_receiving(now)
        deadline = self._deadline
        if self._keepalive > 0:  # _on_authenticated_traversal
            deadline["persistent"] = now + self._keepalive
        deadline["new_handshake"] = None
        if not plain:
            return Opened([], replies, True, None)  # keepalive
        if deadline["send_keepalive"] is None:
            deadline["send_keepalive"] = now + self._keepalive_timeout
        else:
            self._need_another_keepalive = True
        packet: bytes | None = None
        if self._tun and not self._packet_info:  # ip_length and _to_device, inline
            size = len(plain)
            version = plain[0] >> 4
            if version == 4 and size >= 20:
                length = plain[2] << 8 | plain[3]
                if 20 <= length <= size:
                    packet = plain if length == size else plain[:length]
            elif version == 6 and size >= 40:
                length = 40 + (plain[4] << 8 | plain[5])
                if length <= size:
                    packet = plain if length == size else plain[:length]
        else:
            packet = self._to_device(plain)
        if packet is None:
            self._drops["invalid_packet"] += 1
            return Opened([], replies, True, "invalid_packet")
        if one and not replies:
            return packet
        return Opened([packet], replies, True, None)

    def _to_device(self, plain: bytes) -> bytes | None:
        if not self._tun:
            return plain
        length = ip_length(plain)
        if length is None:
            return None
        packet = plain[:length] if length != len(plain) else plain
        if self._packet_info:
            proto = _ETH_P_IP if packet[0] >> 4 == 4 else _ETH_P_IPV6
            packet = b"\x00\x00" + proto + packet
        return packet

    def _keep_key_fresh_receiving(self, now: float) -> list[bytes]:
        kp = self._keys.current
        if (self._sent_last_minute_handshake or kp is None or not kp.is_initiator
                or now - kp.created <= self._t.reject_after_time - self._t.keepalive_timeout
                - self._t.rekey_timeout):
            return []
        self._sent_last_minute_handshake = True
        return self._initiate(now, retry=False)

    # ------------------------------------------------------------------ timer events

    def _on_authenticated_traversal(self, now: float) -> None:
        if self._keepalive > 0:
            self._deadline["persistent"] = now + self._keepalive

    def _session_derived(self, now: float) -> None:
        self._sent_last_minute_handshake = False
        self._deadline["zero_keys"] = now + 3 * self._t.reject_after_time

    def _handshake_complete(self, now: float) -> None:
        self._deadline["retransmit"] = None
        self._attempts = 0
        self._unanswered = 0
        self._refused = None
        self._latest_handshake = self._local.wall()

    def _expired_retransmit(self, now: float) -> list[bytes]:
        self._unanswered += 1  # the latest initiation's retry time passed without a reply
        if self._attempts > self._t.max_handshake_attempts:
            # Gave up after REKEY_ATTEMPT_TIME: flush what waited for the session.
            self._drops["handshake_timeout"] += sum(1 for p in self._staged if p)
            self._staged.clear()
            self._pending = None
            if self._deadline["zero_keys"] is None:
                self._deadline["zero_keys"] = now + 3 * self._t.reject_after_time
            return []
        self._attempts += 1
        return self._initiate(now, retry=True)

    def _expired_send_keepalive(self, now: float) -> list[bytes]:
        out = self._send_keepalive(now)
        if self._need_another_keepalive:
            self._need_another_keepalive = False
            self._deadline["send_keepalive"] = now + self._t.keepalive_timeout
        return out

    def _expired_new_handshake(self, now: float) -> list[bytes]:
        return self._initiate(now, retry=False)

    def _expired_zero_keys(self, now: float) -> list[bytes]:
        self._keys.clear()
        self._pending = None
        return []

    def _expired_persistent(self, now: float) -> list[bytes]:
        return self._send_keepalive(now) if self._keepalive > 0 else []
