"""The codec: what sits between the packet pump and the wire (encryption plugs in here).

A codec is sans-IO: it never touches a socket or a clock; the pump passes ``now``
(``time.monotonic()`` seconds) in and sends what it returns. One codec instance serves
one worker (one peer) for the life of the process; it is called from one thread only.

Contract (:class:`Codec`):

``seal(packet, now) -> list[bytes]``
    A packet read from the device (with its packet-info / Ethernet header as the device
    gives it) becomes the wire messages to send to the peer, in order. It may return
    ``[]`` while no session exists (e.g. a handshake is pending), keeping the packet
    queued (bounded; the codec drops and counts the excess in ``stats()``), and may
    return handshake messages before the data. The pump counts the packet as sent.

``seal_one(packet, now) -> bytes | None``
    The per-packet fast path of ``seal`` for the steady state (a session is up, nothing
    is queued, no timer or negotiation wants to add a message): the one message
    ``seal`` would return, with the same effects; else None, with no effect at all (the
    pump then calls ``seal``). ``b""`` (never a wire message): the codec sent it itself,
    as a codec with many peers does (each to its own peer's endpoint); the pump counts
    the packet as sent.

``open(message, source, now) -> Opened``
    A message received from the peer (one UDP datagram or one TCP frame). ``source`` is
    the sender's address for UDP, the connection's address for TCP, or None.
    ``Opened.packets`` go to the device in order, ``Opened.replies`` back to the peer
    (e.g. a handshake response), or, when the message is not ``authenticated``, back to
    ``source`` (e.g. a cookie reply to whoever sent a handshake under load).
    ``Opened.drop`` names why the message was rejected (``"malformed"``, ``"replay"``,
    ...; the pump counts ``drops[cause] += 1`` and ignores the rest of the result).
    ``Opened.authenticated`` says the message proves it comes from the peer (a codec
    without authentication sets it for every well-formed message); only then may a UDP
    transport move its peer endpoint to ``source`` (roaming) or learn its first peer.

``open_one(message, source, now) -> bytes | Opened``
    Exactly ``open``, except that its most common result, an authenticated message
    carrying one packet and needing no reply (``Opened([packet], [], True)``), may come
    back as that packet alone, without the ``Opened`` around it.

``tick(now) -> list[bytes]``
    Timer-driven messages (handshake retries, keepalives). The pump calls it when
    ``now >= next_deadline()``; calling it early must be harmless.

``next_deadline() -> float | None``
    When ``tick`` next has work, or None for never.

``on_connected(now) -> list[bytes]``
    The transport has a (new) path to the peer: a TCP connection came up or was
    replaced, a UDP socket is ready. An initiator starts its handshake here. Session
    state tied to the old connection may be dropped.

``expired(now) -> list[bytes]``
    Device packets the codec held and no longer waits to complete (offload: a frame
    rebuilt from chunks whose lost companions never came); the pump writes them when
    ``now >= next_deadline()``. ``[]`` from a codec that holds nothing.

``mtu_changed(old, new)``
    The device's MTU changed in place (a reload). A codec that checks packet sizes itself
    (offload: plain packets of at most the MTU) moves its limit by ``new - old``; the
    others ignore it.

``set_keepalive(seconds, now)``
    A reload changed the tunnel's ``keepalive``: use ``seconds`` (0 = off) from now on,
    without restarting the worker.

``stats() -> dict[str, Any]``
    Extra JSON-serialisable fields merged into the worker's STATS. Its ``drops``, if
    present, maps cause -> count of what the codec discarded on its own (never returned
    as ``Opened.drop``, e.g. packets queued for a session that never came); the pump adds
    them into its ``drops``, so STATS ``drops`` holds every drop once.

``handshake_types`` (optional attribute, a frozenset of ints)
    The first bytes of messages that may cost the codec much more than data does (a
    WireGuard handshake: a Diffie-Hellman). The pump opens such messages after the
    data that came in the same turn, a bounded number per turn (see the pump).

``health(now) -> tund.states.Handshakes`` (optional; an encrypting codec has it)
    What :func:`tund.states.link_state` needs to say whether packets pass (a session
    and how young it is, unanswered and refused handshakes). A codec without it (or one
    whose ``health`` returns None) is plaintext: the pump judges by what came back.

Codecs must not raise on hostile input: malformed messages are drops, not exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

Address = tuple[str, int]


@dataclass(slots=True)
class Opened:
    """The result of :meth:`Codec.open` (see the module docstring)."""

    packets: list[bytes]
    replies: list[bytes]
    authenticated: bool
    drop: str | None = None


class Codec(Protocol):
    """Turns device packets into wire messages and back; see the module docstring."""

    def seal(self, packet: bytes, now: float) -> list[bytes]: ...

    def seal_one(self, packet: bytes, now: float) -> bytes | None: ...

    def open(self, message: bytes, source: Address | None, now: float) -> Opened: ...

    def open_one(self, message: bytes, source: Address | None, now: float) -> bytes | Opened:
        ...

    def tick(self, now: float) -> list[bytes]: ...

    def next_deadline(self) -> float | None: ...

    def on_connected(self, now: float) -> list[bytes]: ...

    def expired(self, now: float) -> list[bytes]: ...

    def mtu_changed(self, old: int, new: int) -> None: ...

    def set_keepalive(self, seconds: float, now: float) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class HoldsNothing:
    """For codecs that hold no device packets and check no sizes: ``expired`` and
    ``mtu_changed`` of the contract, doing nothing."""

    __slots__ = ()

    def expired(self, now: float) -> list[bytes]:
        return []

    def mtu_changed(self, old: int, new: int) -> None:
        return None
