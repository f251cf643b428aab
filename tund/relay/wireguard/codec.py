"""WireGuardCodec: the relay's :class:`~tund.relay.codec.base.Codec` speaking WireGuard.

One codec = one peer. Sans-IO: ``now`` is ``time.monotonic()``-like and passed in; the
wall clock (TAI64N timestamps, ``latest_handshake``) comes from the ``wall`` callable.

Outbound (``seal``)::

    device packet -> staged queue (bounded) -> current keypair usable?
        yes: pad (tun) -> encrypt with next counter -> transport message(s)
        no : handshake initiation (rate-limited to one per REKEY_TIMEOUT)

Inbound (``open``) by message type::

    initiation : size, type -> mac1 -> [under load: mac2 valid? yes: the source's
                 handshake bucket; no: a cookie reply within the source's cookie bucket;
                 beyond a bucket: dropped] -> decrypt static/timestamp
                 -> peer's key? -> timestamp newer? -> not a flood? -> response; next keypair
    response   : mac1 -> [load: mac2] -> our pending initiation? -> decrypt -> current
                 keypair; send staged packets (or a keepalive, confirming the keys)
    cookie     : for our pending handshake? -> decrypt against our last mac1 -> store
    transport  : known receiver index -> not expired -> decrypt -> replay window
                 -> rotate next->current -> packet (an empty one is a keepalive)

Drop causes (``Opened.drop``; every one is also counted in ``stats()["wg_drops"]``):

``malformed``        not a well-formed WireGuard message (length, type, reserved bytes)
``bad_mac``          handshake message whose mac1 is not for our public key
``decrypt``          an encrypted field did not open (wrong key, other mode, tampering)
``unknown_peer``     an initiation that opened but came from another static key
``stale_timestamp``  an initiation whose TAI64N is not newer than the last accepted one
``flood``            an initiation within ``handshake_initiation_rate`` of the previous
``handshake_ratelimited`` under load, a handshake message beyond its source address's
                     token bucket (cookie replies and mac2-valid handshakes each
                     ``handshake_rate``/s, burst ``handshake_burst``; see :mod:`.ratelimit`);
                     one of handshake size without mac2 while the source's cookie bucket
                     is empty is dropped so before it is parsed or its mac1 computed
``unknown_receiver`` response/cookie/transport for an index we do not hold
``bad_cookie``       a cookie reply that does not open against our last mac1
``expired``          transport on a keypair older than REJECT_AFTER_TIME
``replay``           transport counter already seen or behind the window
``invalid_packet``   tun mode: decrypted data that is not an IPv4/IPv6 packet

The codec's own drops, never returned as ``Opened.drop`` (the reply must reach the
pump, or no message was being opened): ``cookie`` (handshake answered with a cookie reply
instead of processed), ``no_session`` (a packet waiting for a session pushed out of the
bounded staging queue), ``handshake_timeout`` (staged packets flushed after
REKEY_ATTEMPT_TIME of retries). ``stats()["drops"]`` holds exactly these (the pump adds
them to its own ``drops``); ``stats()["wg_drops"]`` holds every WireGuard cause above.

Timers follow wireguard-go's ``timers.go``: retransmit handshake, send keepalive
(KEEPALIVE_TIMEOUT after data received and nothing sent), new handshake (no reply to
sent data within KEEPALIVE + REKEY_TIMEOUT), zero key material (3 x REJECT_AFTER_TIME),
persistent keepalive (``spec.keepalive`` seconds).

Tap mode uses a different Noise prologue (see :mod:`.noise`) and does not pad (an
Ethernet frame has no length field to strip padding by).
"""

from __future__ import annotations

import collections
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

from cryptography.exceptions import InvalidTag

from tund.keyformat import clamp, decode_key, encode_key, public_from_private
from tund.relay.codec.base import Address, HoldsNothing, Opened
from tund.relay.wireguard import messages as msgs
from tund.relay.wireguard import noise
from tund.relay.wireguard.cookie import CookieChecker, CookieGenerator, LoadDetector
from tund.relay.wireguard.primitives import AEAD_NONCE, DecryptError, dh, tai64n
from tund.relay.wireguard.ratelimit import RateLimiter, source_key
from tund.relay.wireguard.session import Keypair, Keypairs
from tund.relay.wireguard.timers import Timers
from tund.workerapi.spec import WorkerSpec

_PAD = 16
_ETH_P_IP = b"\x08\x00"
_ETH_P_IPV6 = b"\x86\xdd"
_OWN_DROPS = frozenset({"cookie", "no_session", "handshake_timeout"})
_DEADLINES = ("retransmit", "send_keepalive", "new_handshake", "zero_keys", "persistent")
_ZEROS = tuple(bytes(i) for i in range(_PAD))  # padding, by length
_NO_MAC2 = bytes(16)
# The transport header as one little-endian word: type 4 with its 3 reserved bytes zero.
_TRANSPORT_WORD = msgs.TYPE_TRANSPORT
_HEADER = struct.Struct("<IIQ")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_nonce = AEAD_NONCE.pack
_HDR_LEN = msgs.TRANSPORT_HEADER_LEN
_MIN_LEN = msgs.TRANSPORT_MIN_LEN
_MAX_LEN = msgs.MAX_TRANSPORT
assert _HEADER.size == _HDR_LEN
_JITTER_BLOCK = 128
_JITTER_DRAWS = struct.Struct(f"<{_JITTER_BLOCK}H")


@dataclass
class _Pending:
    """Our initiation waiting for its response."""

    local_index: int
    ephemeral: bytes
    state: noise.SymmetricState


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


class WireGuardCodec(HoldsNothing):
    """WireGuard for one peer; see the module docstring for flows and drop causes.

    ``spec`` supplies ``private_key``, ``peer_public_key``, ``preshared_key`` (base64),
    ``mode``, ``role``, ``keepalive``, ``mtu``, ``packet_info`` and ``timers``
    (test-only overrides, see :class:`~.timers.Timers`). Raise ValueError for missing or
    bad keys, naming the field.
    """

    #: handshake messages (initiation, response, cookie reply): the pump opens them after
    #: the transport data of the same turn (see :mod:`tund.relay.codec.base`)
    handshake_types = frozenset({msgs.TYPE_INITIATION, msgs.TYPE_RESPONSE,
                                 msgs.TYPE_COOKIE_REPLY})

    def __init__(self, spec: WorkerSpec, *, wall: Callable[[], float] = time.time,
                 rand: Callable[[int], bytes] = os.urandom) -> None:
        if spec.private_key is None or spec.peer_public_key is None:
            raise ValueError(f"tunnel {spec.tunnel!r}: encryption \"wireguard\" needs "
                             "private_key and peer_public_key in the worker spec")
        self._priv = decode_key(spec.private_key, "private_key")
        self._pub = public_from_private(self._priv)
        self._peer = decode_key(spec.peer_public_key, "peer_public_key")
        if self._peer == self._pub:
            raise ValueError(f"tunnel {spec.tunnel!r}: peer_public_key is our own public key")
        self._psk = (decode_key(spec.preshared_key, "preshared_key")
                     if spec.preshared_key is not None else noise.ZERO_PSK)
        try:
            self._static_static = dh(self._priv, self._peer)
        except DecryptError:
            raise ValueError(f"tunnel {spec.tunnel!r}: peer_public_key is a low-order "
                             "point (X25519 gives zero)") from None
        self._prologue = noise.prologue_for(spec.mode)
        self._mode = spec.mode
        self._packet_info = spec.packet_info and spec.mode == "tun"
        self._mtu = spec.mtu
        self._role = spec.role
        self._keepalive = float(spec.keepalive)
        # a listener handed its previous worker's peer (spec.known_peer) initiates at once
        self._resume = spec.known_peer is not None
        self._t = t = Timers.from_overrides(dict(spec.timers))
        # Timers is frozen: the per-packet paths read these copies.
        self._tun = spec.mode == "tun"
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
        self._wall = wall
        self._rand = rand
        self._jitter_pool: list[int] = []  # 16-bit draws for _jitter, used from the end
        self._checker = CookieChecker(self._pub, self._t, rand)
        self._cookies = CookieGenerator(self._peer, self._t)
        self._load = LoadDetector(self._t)
        self._cookie_limit = RateLimiter(t.handshake_rate, t.handshake_burst)
        self._handshake_limit = RateLimiter(t.handshake_rate, t.handshake_burst)
        self._keys = Keypairs()
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
        self._now = float("-inf")  # the latest ``now`` passed in (for stats())

    # ------------------------------------------------------------------ Codec contract

    def seal(self, packet: bytes, now: float) -> list[bytes]:
        """Stage ``packet`` and send what the session allows (see module docstring)."""
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
        message = _pack_header(_TRANSPORT_WORD, kp.remote_index, counter) + kp.seal(
            _nonce(counter), packet, None)
        deadline = self._deadline
        if self._keepalive > 0:  # _on_authenticated_traversal
            deadline["persistent"] = now + self._keepalive
        deadline["send_keepalive"] = None
        self._need_another_keepalive = False
        if deadline["new_handshake"] is None:
            deadline["new_handshake"] = (now + self._keepalive_timeout
                                         + self._t.rekey_timeout + self._jitter())
        return message

    def open(self, message: bytes, source: Address | None, now: float) -> Opened:
        """Handle one message from the peer; never raises on hostile input."""
        self._now = now
        n = len(message)
        if _MIN_LEN <= n <= _MAX_LEN:
            word, receiver, counter = _unpack_header(message)
            if word == _TRANSPORT_WORD:
                return self._open_transport(receiver, counter, message, now)
        if ((n == msgs.INITIATION_LEN or n == msgs.RESPONSE_LEN)
                and message[-16:] == _NO_MAC2 and self._load.under_load(now)):
            # Under load a handshake without mac2 can only earn a cookie reply: with the
            # source's cookie bucket empty it is dropped before parsing or mac1.
            key = source_key(source[0]) if source is not None else ""
            if not self._cookie_limit.has_token(key, now):
                self._load.note(now)
                return self._drop("handshake_ratelimited")
        try:
            m = msgs.parse(message)
        except msgs.Malformed:
            return self._drop("malformed")
        if isinstance(m, msgs.Transport):  # not reached: the test above takes every one
            return self._open_transport(m.receiver, m.counter, message, now)
        if isinstance(m, msgs.CookieReply):
            return self._open_cookie(m, now)
        if not self._checker.check_mac1(message):
            return self._drop("bad_mac")
        self._load.note(now)
        if self._load.under_load(now):
            key = source_key(source[0]) if source is not None else ""
            if not self._checker.check_mac2(message, source, now):
                if not self._cookie_limit.allow(key, now):
                    return self._drop("handshake_ratelimited")
                self._drops["cookie"] += 1
                self._cookie_replies += 1
                reply = self._checker.create_reply(message, m.sender, source, now)
                return Opened([], [reply], False, None)
            if not self._handshake_limit.allow(key, now):
                return self._drop("handshake_ratelimited")
        if isinstance(m, msgs.Initiation):
            return self._open_initiation(m, now)
        return self._open_response(m, now)

    def open_one(self, message: bytes, source: Address | None, now: float) -> bytes | Opened:
        """:meth:`open`; a transport message with one packet and no reply comes back as
        the packet alone."""
        if _MIN_LEN <= len(message) <= _MAX_LEN:
            word, receiver, counter = _unpack_header(message)
            if word == _TRANSPORT_WORD:
                self._now = now
                return self._open_transport(receiver, counter, message, now, True)
        return self.open(message, source, now)

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
        first: float | None = None
        for d in self._deadline.values():
            if d is not None and (first is None or d < first):
                first = d
        return first

    def on_connected(self, now: float) -> list[bytes]:
        """A (new) path to the peer: the initiator side (role remote, or any side with a
        persistent keepalive, or a listener resuming its predecessor's peer) sends a
        keepalive, which starts a handshake when no session exists. The rate limit is
        reset, since an earlier initiation may have gone to a dead connection."""
        self._now = now
        resume, self._resume = self._resume, False
        if self._role != "remote" and self._keepalive <= 0 and not resume:
            return []
        self._last_sent_handshake = None
        return self._send_keepalive(now)

    def set_keepalive(self, seconds: float, now: float) -> None:
        """A new persistent-keepalive interval: re-armed from now (0 disarms it), as wg
        does on ``wg set ... persistent-keepalive``."""
        self._keepalive = float(seconds)
        self._deadline["persistent"] = now + self._keepalive if seconds > 0 else None

    def stats(self) -> dict[str, Any]:
        """peer_public_key, latest_handshake (unix time or None), session (as of the latest
        ``now`` passed in), handshakes_sent, cookie_replies_sent, wg_drops (cause -> n),
        drops (the codec's own causes only, see the module docstring)."""
        return {
            "peer_public_key": encode_key(self._peer),
            "latest_handshake": self._latest_handshake,
            "session": self.session_state(self._now),
            "handshakes_sent": self._handshakes_sent,
            "cookie_replies_sent": self._cookie_replies,
            "wg_drops": dict(self._drops),
            "drops": {k: n for k, n in self._drops.items() if k in _OWN_DROPS},
        }

    # ------------------------------------------------------------------ queries

    def session_state(self, now: float) -> str:
        """``"established"`` (a current keypair may send), ``"handshaking"`` or ``"none"``."""
        if self._usable(self._keys.current, now):
            return "established"
        if self._pending is not None or self._keys.next is not None:
            return "handshaking"
        return "none"

    @property
    def public_key(self) -> str:
        return encode_key(self._pub)

    # ------------------------------------------------------------------ sending

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
                                               + self._t.rekey_timeout + self._jitter())
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
        return _pack_header(_TRANSPORT_WORD, kp.remote_index, counter) + sealed

    def _send_keepalive(self, now: float) -> list[bytes]:
        if not self._staged:
            self._staged.append(b"")
        return self._send_staged(now)

    def _new_index(self) -> int:
        taken = self._keys.indexes()
        while True:
            index = int.from_bytes(self._rand(4), "little")
            if index not in taken:
                return index

    def _jitter(self) -> float:
        """Up to ``rekey_jitter`` s, from 16 random bits. The bits come from ``rand`` in
        blocks of :data:`_JITTER_BLOCK` draws: a sealed packet that (re)arms the
        new-handshake timer needs one, and that is every first packet sent after one
        was received, so drawing them one at a time cost a getrandom call per packet."""
        pool = self._jitter_pool
        if not pool:
            pool.extend(_JITTER_DRAWS.unpack(self._rand(_JITTER_DRAWS.size)))
        return pool.pop() / 0xFFFF * self._t.rekey_jitter

    def _initiate(self, now: float, *, retry: bool) -> list[bytes]:
        if not retry:
            self._attempts = 0
        if (self._last_sent_handshake is not None
                and now - self._last_sent_handshake < self._t.rekey_timeout):
            return []
        self._last_sent_handshake = now
        ephemeral = clamp(self._rand(32))
        index = self._new_index()
        state = noise.initial_state(self._prologue, self._peer)
        body = noise.write_initiation(state, self._priv, ephemeral, self._peer,
                                      tai64n(self._wall()), static_static=self._static_static)
        self._pending = _Pending(index, ephemeral, state)
        message = self._cookies.add_macs(msgs.pack_initiation(index, body), now)
        self._on_authenticated_traversal(now)
        self._deadline["send_keepalive"] = None
        self._deadline["retransmit"] = now + self._t.rekey_timeout + self._jitter()
        self._handshakes_sent += 1
        return [message]

    # ------------------------------------------------------------------ receiving

    def _drop(self, cause: str) -> Opened:
        self._drops[cause] += 1
        return Opened([], [], False, cause)

    def _open_initiation(self, m: msgs.Initiation, now: float) -> Opened:
        state = noise.initial_state(self._prologue, self._pub)
        try:
            got = noise.read_initiation(state, self._priv, m.ephemeral + m.static + m.timestamp)
        except DecryptError:
            return self._drop("decrypt")
        if got.peer_static != self._peer:
            return self._drop("unknown_peer")
        if self._last_timestamp is not None and got.payload <= self._last_timestamp:
            return self._drop("stale_timestamp")
        if (self._last_initiation is not None
                and now - self._last_initiation <= self._t.handshake_initiation_rate):
            return self._drop("flood")
        self._last_timestamp, self._last_initiation = got.payload, now
        self._on_authenticated_traversal(now)
        self._deadline["new_handshake"] = None
        ephemeral = clamp(self._rand(32))
        index = self._new_index()
        body = noise.write_response(state, ephemeral, got.peer_ephemeral, got.peer_static,
                                    self._psk, b"")
        to_responder, to_initiator = state.split()
        self._keys.begin(Keypair(to_initiator, to_responder, index, m.sender, now, False))
        self._pending = None
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
            noise.read_response(state, pending.ephemeral, self._priv, self._psk,
                                m.ephemeral + m.empty)
        except DecryptError:
            return self._drop("decrypt")
        to_responder, to_initiator = state.split()
        self._keys.begin(Keypair(to_responder, to_initiator, pending.local_index, m.sender,
                                 now, True))
        self._pending = None
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

    def _open_transport(self, receiver: int, counter: int, message: bytes,
                        now: float, one: bool = False) -> Opened | bytes:
        """A well-formed transport message (header fields already unpacked); with
        ``one``, a single packet without replies comes back bare (:meth:`open_one`)."""
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
        self._latest_handshake = self._wall()

    def _expired_retransmit(self, now: float) -> list[bytes]:
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
