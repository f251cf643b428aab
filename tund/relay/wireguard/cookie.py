"""mac1/mac2 and cookie replies (whitepaper section 5.4.4 and 5.4.7), sans-IO.

Every handshake message ends with ``mac1 || mac2``::

    mac1 = MAC(HASH("mac1----" || receiver's static public), msg[:-32])
    mac2 = MAC(cookie, msg[:-16])          (zeros when no fresh cookie is held)

A receiver *under load* (see :class:`LoadDetector`) only processes a handshake message
whose mac2 is made with the cookie it would give the sender's address; otherwise it
answers with a cookie reply::

    tau    = MAC(secret, source address)         secret: random, renewed every 120 s
    cookie = XAEAD(HASH("cookie--" || receiver's static public), nonce24, tau,
                   ad = mac1 of the message being answered)

:class:`CookieChecker` is the receiving side (our static key), :class:`CookieGenerator`
the sending side (the peer's static key). Time is passed in as ``now`` (monotonic).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections import deque
from collections.abc import Callable

from tund.relay.wireguard.messages import CookieReply, pack_cookie_reply
from tund.relay.wireguard.primitives import (
    DecryptError,
    hash_,
    mac,
    xaead_decrypt,
    xaead_encrypt,
)
from tund.relay.wireguard.timers import Timers

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

Address = tuple[str, int]
_NO_MAC2 = bytes(16)  # what a sender without a cookie puts there: no MAC to compute


def address_bytes(source: Address | None) -> bytes:
    """The bytes a cookie is bound to: packed IP || big-endian port (empty without one)."""
    if source is None:
        return b""
    host, port = source
    try:
        packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    except ValueError:
        packed = host.encode()
    return packed + (port & 0xFFFF).to_bytes(2, "big")


class CookieChecker:
    """Validates mac1/mac2 of handshake messages sent to us, makes cookie replies."""

    def __init__(self, local_public: bytes, timers: Timers,
                 rand: Callable[[int], bytes] = os.urandom) -> None:
        self._mac1_key = hash_(LABEL_MAC1, local_public)
        self._cookie_key = hash_(LABEL_COOKIE, local_public)
        self._timers = timers
        self._rand = rand
        self._secret: bytes | None = None
        self._secret_set = 0.0

    def check_mac1(self, msg: bytes) -> bool:
        return hmac.compare_digest(mac(self._mac1_key, msg[:-32]), msg[-32:-16])

    def _tau(self, source: Address | None) -> bytes:
        assert self._secret is not None
        return mac(self._secret, address_bytes(source))

    def check_mac2(self, msg: bytes, source: Address | None, now: float) -> bool:
        """True when mac2 was made with the (still valid) cookie for ``source``."""
        if (self._secret is None or now - self._secret_set > self._timers.cookie_refresh_time
                or msg[-16:] == _NO_MAC2):
            return False
        return hmac.compare_digest(mac(self._tau(source), msg[:-16]), msg[-16:])

    def create_reply(self, msg: bytes, receiver: int, source: Address | None,
                     now: float) -> bytes:
        """A cookie reply answering ``msg`` (whose sender index is ``receiver``)."""
        if self._secret is None or now - self._secret_set > self._timers.cookie_refresh_time:
            self._secret = self._rand(32)
            self._secret_set = now
        nonce = self._rand(24)
        sealed = xaead_encrypt(self._cookie_key, nonce, self._tau(source), msg[-32:-16])
        return pack_cookie_reply(receiver, nonce, sealed)


class CookieGenerator:
    """Adds mac1/mac2 to handshake messages we send; takes in the peer's cookie replies."""

    def __init__(self, peer_public: bytes, timers: Timers) -> None:
        self._mac1_key = hash_(LABEL_MAC1, peer_public)
        self._cookie_key = hash_(LABEL_COOKIE, peer_public)
        self._timers = timers
        self._cookie: bytes | None = None
        self._cookie_set = 0.0
        self._last_mac1: bytes | None = None

    def add_macs(self, msg: bytes, now: float) -> bytes:
        """``msg`` (MAC fields zero) with mac1, and mac2 while a fresh cookie is held."""
        body = msg[:-32]
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        mac2 = bytes(16)
        if self._cookie is not None and now - self._cookie_set <= self._timers.cookie_refresh_time:
            mac2 = mac(self._cookie, body + mac1)
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie if ``reply`` opens against our last mac1; False if it does not."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(self._cookie_key, reply.nonce, reply.cookie, self._last_mac1)
        except DecryptError:
            return False
        self._cookie, self._cookie_set = cookie, now
        self._last_mac1 = None
        return True

    @property
    def has_cookie(self) -> bool:
        return self._cookie is not None


class LoadDetector:
    """Counts handshake messages; under load while more than N came within the window."""

    def __init__(self, timers: Timers) -> None:
        self._timers = timers
        self._seen: deque[float] = deque()
        self._until = float("-inf")

    def note(self, now: float) -> None:
        """Record the arrival of one handshake message."""
        window = self._timers.under_load_window
        self._seen.append(now)
        while self._seen and self._seen[0] <= now - window:
            self._seen.popleft()
        if len(self._seen) > self._timers.under_load_handshakes:
            self._until = now + window
            # keep the queue bounded: only the count above the threshold matters
            while len(self._seen) > self._timers.under_load_handshakes + 1:
                self._seen.popleft()

    def under_load(self, now: float) -> bool:
        return now < self._until
