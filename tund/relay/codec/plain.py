"""Encryption "none": :class:`PlainCodec`, packets pass through unchanged."""

from __future__ import annotations

from typing import Any

from tund.relay.codec.base import Address, Codec, HoldsNothing, Opened

KEEPALIVE = b""  # plain UDP only: an empty datagram says "I am here" and carries nothing


class PlainCodec(HoldsNothing):
    """Encryption "none": packets pass through unchanged.

    Checks on what arrives from the peer (counted as ``"malformed"`` drops): a message
    shorter than ``min_len``; with ``ip_check`` (tun mode without packet info) a first
    nibble that is not IP version 4 or 6.

    ``keepalive`` > 0 (plain UDP): an empty datagram is sent on :meth:`on_connected`
    when ``hello`` is set, and whenever nothing was sent for ``keepalive`` seconds, so a
    listening peer learns (and keeps, through NATs) our address. An empty message from
    the peer is such a keepalive: no packet, no drop, authenticated (it moves the
    endpoint, as any well-formed message of an unauthenticated codec does).

    ``answer`` (plain UDP, role listen): an empty message from the peer (its hello or
    keepalive) is answered with one empty message, so the remote end learns that its
    packets arrive (it is ``unverified`` until a message comes back, see
    :func:`tund.states.link_state`); one answer per message, of the same size: no
    amplification, and a remote (``answer`` False) never answers back.
    """

    def __init__(self, *, min_len: int = 1, ip_check: bool = False,
                 keepalive: float = 0.0, hello: bool = False, timed: bool = True,
                 answer: bool = False) -> None:
        """``timed`` False (TCP: the socket's own keepalive): ``set_keepalive`` is ignored."""
        self.min_len = max(1, min_len)
        self.ip_check = ip_check
        self.keepalive = keepalive
        self.timed = timed
        self.hello = hello
        self.answer = answer
        self._last_send: float | None = None

    def seal(self, packet: bytes, now: float) -> list[bytes]:
        self._last_send = now
        return [packet]

    def seal_one(self, packet: bytes, now: float) -> bytes:
        self._last_send = now
        return packet

    def open_one(self, message: bytes, source: Address | None, now: float) -> bytes | Opened:
        if len(message) >= self.min_len and (not self.ip_check or message[0] >> 4 in (4, 6)):
            return message
        return self.open(message, source, now)

    def open(self, message: bytes, source: Address | None, now: float) -> Opened:
        n = len(message)
        if n >= self.min_len and (not self.ip_check or message[0] >> 4 in (4, 6)):
            return Opened([message], [], True)
        if n == 0:  # keepalive
            return Opened([], [KEEPALIVE] if self.answer else [], True)
        return Opened([], [], False, "malformed")

    def _keepalive(self, now: float) -> list[bytes]:
        self._last_send = now
        return [KEEPALIVE]

    def tick(self, now: float) -> list[bytes]:
        deadline = self.next_deadline()
        if deadline is not None and now >= deadline:
            return self._keepalive(now)
        return []

    def next_deadline(self) -> float | None:
        if self.keepalive <= 0 or self._last_send is None:
            return None
        return self._last_send + self.keepalive

    def set_keepalive(self, seconds: float, now: float) -> None:
        if self.timed:
            self.keepalive = seconds

    def on_connected(self, now: float) -> list[bytes]:
        if self.hello:
            return self._keepalive(now)
        return []

    def stats(self) -> dict[str, Any]:
        return {}


_: Codec = PlainCodec()
