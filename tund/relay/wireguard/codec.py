"""WireGuardCodec: the relay's :class:`~tund.relay.codec.base.Codec` speaking WireGuard.

One codec = one peer (many peers: :mod:`.peers`). Sans-IO: ``now`` is
``time.monotonic()``-like and passed in; the wall clock (TAI64N timestamps,
``latest_handshake``) comes from the ``wall`` callable. Outbound, a device packet waits
(bounded) for a usable keypair, then is padded (tun) and encrypted; without one, a
handshake starts. Inbound, each message type is checked cheapest first (size, type, mac1,
under load mac2 and the source's token buckets) before any Diffie-Hellman. Every drop is
counted by cause in ``stats()["wg_drops"]``; the codec's own (``cookie``, ``no_session``,
``handshake_timeout``) also in ``stats()["drops"]``. Timers follow wireguard-go's
``timers.go``. The flows step by step and every drop cause: docs/design.md, "The
WireGuard codec".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag

from tund.keyformat import decode_key, encode_key
from tund.relay.codec.base import Address, HoldsNothing, Opened
from tund.relay.wireguard import messages as msgs
from tund.relay.wireguard.peer import (
    MAX_LEN,
    MIN_LEN,
    TRANSPORT_WORD,
    Local,
    PeerSession,
    ip_length,
    unpack_header,
)
from tund.relay.wireguard.primitives import AEAD_NONCE
from tund.relay.wireguard.timers import Timers
from tund.workerapi.spec import WorkerSpec

__all__ = ["WireGuardCodec", "ip_length"]


def _where(source: Address | None) -> str:
    """``ADDR:PORT`` / ``[V6]:PORT`` of a message's sender, for errors."""
    if source is None:
        return "the peer"
    host, port = source[0], source[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

_TRANSPORT_WORD = TRANSPORT_WORD
_unpack_header = unpack_header
_MIN_LEN = MIN_LEN
_MAX_LEN = MAX_LEN
_nonce = AEAD_NONCE.pack
_HDR_LEN = msgs.TRANSPORT_HEADER_LEN
_OFFLOAD_PROTO = 253  # the offload extension's messages (tund.relay.codec.offload)


class WireGuardCodec(PeerSession, HoldsNothing):
    """WireGuard for one peer; see the module docstring for flows and drop causes.

    ``spec`` supplies ``private_key``, ``peer_public_key``, ``preshared_key`` (base64),
    ``mode``, ``role``, ``keepalive``, ``mtu``, ``packet_info`` and ``timers``
    (test-only overrides, see :class:`~.timers.Timers`). Raise ValueError for missing or
    bad keys, naming the field. The per-peer state machine is the
    :class:`~.peer.PeerSession` this class is; the interface side a
    :class:`~.peer.Local` of its own.
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
        priv = decode_key(spec.private_key, "private_key")
        peer = decode_key(spec.peer_public_key, "peer_public_key")
        psk = (decode_key(spec.preshared_key, "preshared_key")
               if spec.preshared_key is not None else None)
        local = Local(priv, mode=spec.mode, mtu=spec.mtu, packet_info=spec.packet_info,
                      timers=Timers.from_overrides(dict(spec.timers)), wall=wall, rand=rand)
        try:
            super().__init__(local, peer, psk, keepalive=spec.keepalive,
                             where=f"tunnel {spec.tunnel!r}")
        except ValueError as e:  # keep the field's name in the message
            raise ValueError(str(e).replace("the peer's public key", "peer_public_key")) \
                from None
        self._role = spec.role
        # a listener handed its previous worker's peer (spec.known_peer) initiates at once
        self._resume = spec.known_peer is not None

    # ------------------------------------------------------------------ Codec contract

    def open(self, message: bytes, source: Address | None, now: float) -> Opened:
        """Handle one message from the peer; never raises on hostile input."""
        self._now = now
        n = len(message)
        if _MIN_LEN <= n <= _MAX_LEN:
            word, receiver, counter = _unpack_header(message)
            if word == _TRANSPORT_WORD:
                return self._open_transport(receiver, counter, message, now)
        if self._local.cheap_drop(message, source, now):
            return self._drop("handshake_ratelimited")
        try:
            m = msgs.parse(message)
        except msgs.Malformed:
            return self._drop("malformed")
        if isinstance(m, msgs.Transport):  # not reached: the test above takes every one
            return self._open_transport(m.receiver, m.counter, message, now)
        if isinstance(m, msgs.CookieReply):
            return self._open_cookie(m, now)
        screened = self._local.screen(message, m.sender, source, now)
        if isinstance(screened, str):
            if screened == "bad_mac":
                self._refused = (f"a handshake from {_where(source)} is not "
                                 "meant for our key: the peer has a wrong peer_public_key for "
                                 "us (and rejects our handshakes)")
            return self._drop(screened)
        if screened is not None:
            self._drops["cookie"] += 1
            self._cookie_replies += 1
            return Opened([], [screened], False, None)
        if isinstance(m, msgs.Initiation):
            read = self._local.read_initiation(m)
            if read is None:
                self._refused = self._refusal("decrypt", True, source)
                return self._drop("decrypt")
            state, got = read
            if got.peer_static != self._peer:
                self._unknown_key = got.peer_static
                self._refused = self._refusal("unknown_peer", True, source)
                return self._drop("unknown_peer")
            return self._accept_initiation(m, state, got, now)
        opened = self._open_response(m, now)
        if opened.drop == "decrypt":
            self._refused = self._refusal("decrypt", False, source)
        return opened

    def _refusal(self, cause: str, initiation: bool, source: Address | None) -> str:
        where = _where(source)
        if cause == "unknown_peer" and self._unknown_key is not None:
            return (f"handshake from an unknown key (fingerprint "
                    f"{encode_key(self._unknown_key)[:10]}) at {where}: not peer_public_key")
        if initiation:
            return (f"a handshake from {where} did not decrypt (the other end in another "
                    "mode, tun or tap, or the message was changed on the way)")
        return (f"the peer rejected our handshake: its response from {where} did not "
                "decrypt (a different preshared_key?)")

    def open_one(self, message: bytes, source: Address | None, now: float) -> bytes | Opened:
        """:meth:`open`; a transport message with one packet and no reply comes back as
        the packet alone."""
        if _MIN_LEN <= len(message) <= _MAX_LEN:
            word, receiver, counter = _unpack_header(message)
            if word == _TRANSPORT_WORD:
                self._now = now
                return self._open_transport(receiver, counter, message, now, True)
        return self.open(message, source, now)

    # Size: one loop on purpose: the per-packet path of a train (see _open_transport).
    def open_train(self, data: bytes, size: int, now: float,
                   max_packet: int) -> tuple[list[bytes], int]:
        """The leading messages of ``data``, a train of ``size``-byte datagrams (the last
        may be shorter), that :meth:`open_one` would give bare as plain IPv4/IPv6 packets
        of at most ``max_packet`` bytes, not protocol 253 (the offload extension's): data
        for the current keypair, in the replay window, no reply due. Returns their packets
        and the offset of the first message left, which goes through :meth:`open_one`
        (a handshake, keepalive, other keypair, replay or bad tag: opened there again,
        and counted, as if alone). The state moves as by open_one of each."""
        kp = self._keys.current
        if (kp is None or not self._tun or self._packet_info
                or now - kp.created >= self._reject_time
                or (not self._sent_last_minute_handshake and kp.is_initiator
                    and now - kp.created > self._last_minute_age)):
            return [], 0
        index, open_, check = kp.local_index, kp.open, kp.replay.check_and_set
        limit, unpack, n = self._reject_messages, _unpack_header, len(data)
        packets: list[bytes] = []
        off = 0
        while off < n:
            m = data[off:off + size]
            if len(m) < _MIN_LEN:
                break
            word, receiver, counter = unpack(m)
            if word != _TRANSPORT_WORD or receiver != index:
                break
            try:
                plain = open_(_nonce(counter), m[_HDR_LEN:], None)
            except InvalidTag:
                break
            got = len(plain)
            version = plain[0] >> 4 if got else 0
            if version == 4 and got >= 20:
                length = plain[2] << 8 | plain[3]
                if length < 20 or plain[9] == _OFFLOAD_PROTO:
                    break
            elif version == 6 and got >= 40:
                length = 40 + (plain[4] << 8 | plain[5])
                if plain[6] == _OFFLOAD_PROTO:
                    break
            else:
                break  # a keepalive, or not an IP packet: open_one counts it
            if length > got or length > max_packet or not check(counter, limit):
                break
            packets.append(plain if length == got else plain[:length])
            off += size
        if packets:  # _open_transport's timers, once for the train
            self._now = now
            deadline = self._deadline
            if self._keepalive > 0:
                deadline["persistent"] = now + self._keepalive
            deadline["new_handshake"] = None
            if deadline["send_keepalive"] is None:
                deadline["send_keepalive"] = now + self._keepalive_timeout
                self._need_another_keepalive = self._need_another_keepalive or len(packets) > 1
            else:
                self._need_another_keepalive = True
        return packets, off

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

    def stats(self) -> dict[str, Any]:
        """peer_public_key, latest_handshake (unix time or None), session (as of the latest
        ``now`` passed in), handshakes_sent, cookie_replies_sent, wg_drops (cause -> n),
        drops (the codec's own causes only, see the module docstring)."""
        return self.peer_stats()

    # ------------------------------------------------------------------ queries

    @property
    def public_key(self) -> str:
        return encode_key(self._local.pub)
