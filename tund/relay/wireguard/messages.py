"""WireGuard's four wire messages: exact layouts, packing and strict parsing.

Layouts (all integers little-endian; the first 4 bytes are ``type`` then 3 zero bytes)::

    initiation   148 B  type=1 | sender u32 | ephemeral 32 | static 32+16 | timestamp 12+16
                        | mac1 16 | mac2 16
    response      92 B  type=2 | sender u32 | receiver u32 | ephemeral 32 | empty 0+16
                        | mac1 16 | mac2 16
    cookie reply  64 B  type=3 | receiver u32 | nonce 24 | cookie 16+16
    transport   >=32 B  type=4 | receiver u32 | counter u64 | ciphertext (>= 16: tag)

Contract: :func:`parse` returns one of the message dataclasses or raises
:class:`Malformed` (whose ``cause`` is the drop cause ``"malformed"``): unknown type,
non-zero reserved bytes, a handshake message of the wrong length, a transport message
shorter than 32 bytes or longer than :data:`MAX_TRANSPORT`. The ``pack_*`` functions
build the bytes; ``mac1``/``mac2`` are filled in later by :mod:`.cookie`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

TYPE_INITIATION = 1
TYPE_RESPONSE = 2
TYPE_COOKIE_REPLY = 3
TYPE_TRANSPORT = 4

INITIATION_LEN = 148
RESPONSE_LEN = 92
COOKIE_REPLY_LEN = 64
TRANSPORT_HEADER_LEN = 16
TRANSPORT_MIN_LEN = TRANSPORT_HEADER_LEN + 16
#: Largest transport message accepted: header + a 65535-byte packet padded to 16 + tag.
MAX_TRANSPORT = TRANSPORT_HEADER_LEN + 65536 + 16

_INIT = struct.Struct("<I I 32s 48s 28s 16s 16s")
_RESP = struct.Struct("<I I I 32s 16s 16s 16s")
_COOKIE = struct.Struct("<I I 24s 32s")
_TRANSPORT_HDR = struct.Struct("<I I Q")
assert _INIT.size == INITIATION_LEN and _RESP.size == RESPONSE_LEN
assert _COOKIE.size == COOKIE_REPLY_LEN and _TRANSPORT_HDR.size == TRANSPORT_HEADER_LEN


class Malformed(ValueError):
    """The bytes are not a well-formed WireGuard message; ``cause`` is the drop cause."""

    cause = "malformed"


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    static: bytes
    timestamp: bytes
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    empty: bytes
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    cookie: bytes


@dataclass(frozen=True, slots=True)
class Transport:
    receiver: int
    counter: int
    ciphertext: bytes


Message = Initiation | Response | CookieReply | Transport

_ZERO_MACS = bytes(32)


def pack_initiation(sender: int, body: bytes) -> bytes:
    """Initiation with zero MACs; ``body`` is ephemeral || static || timestamp (108 B)."""
    if len(body) != 108:
        raise ValueError(f"initiation body must be 108 bytes (got {len(body)})")
    return struct.pack("<II", TYPE_INITIATION, sender) + body + _ZERO_MACS


def pack_response(sender: int, receiver: int, body: bytes) -> bytes:
    """Response with zero MACs; ``body`` is ephemeral || empty (48 B)."""
    if len(body) != 48:
        raise ValueError(f"response body must be 48 bytes (got {len(body)})")
    return struct.pack("<III", TYPE_RESPONSE, sender, receiver) + body + _ZERO_MACS


def pack_cookie_reply(receiver: int, nonce: bytes, cookie: bytes) -> bytes:
    return _COOKIE.pack(TYPE_COOKIE_REPLY, receiver, nonce, cookie)


def transport_header(receiver: int, counter: int) -> bytes:
    return _TRANSPORT_HDR.pack(TYPE_TRANSPORT, receiver, counter)


def message_type(data: bytes) -> int | None:
    """The type field of ``data``, or None when it is too short or reserved bytes are set."""
    if len(data) < 4 or data[1:4] != b"\x00\x00\x00":
        return None
    return data[0]


def parse(data: bytes) -> Message:
    """Parse one message strictly; raise :class:`Malformed` saying what is wrong."""
    kind = message_type(data)
    n = len(data)
    if kind == TYPE_TRANSPORT:
        if not TRANSPORT_MIN_LEN <= n <= MAX_TRANSPORT:
            raise Malformed(f"transport message of {n} bytes "
                            f"(must be {TRANSPORT_MIN_LEN}..{MAX_TRANSPORT})")
        _, receiver, counter = _TRANSPORT_HDR.unpack_from(data)
        return Transport(receiver, counter, bytes(data[TRANSPORT_HEADER_LEN:]))
    if kind == TYPE_INITIATION:
        if n != INITIATION_LEN:
            raise Malformed(f"initiation of {n} bytes (must be {INITIATION_LEN})")
        _, sender, eph, static, ts, mac1, mac2 = _INIT.unpack(data)
        return Initiation(sender, eph, static, ts, mac1, mac2)
    if kind == TYPE_RESPONSE:
        if n != RESPONSE_LEN:
            raise Malformed(f"response of {n} bytes (must be {RESPONSE_LEN})")
        _, sender, receiver, eph, empty, mac1, mac2 = _RESP.unpack(data)
        return Response(sender, receiver, eph, empty, mac1, mac2)
    if kind == TYPE_COOKIE_REPLY:
        if n != COOKIE_REPLY_LEN:
            raise Malformed(f"cookie reply of {n} bytes (must be {COOKIE_REPLY_LEN})")
        _, receiver, nonce, cookie = _COOKIE.unpack(data)
        return CookieReply(receiver, nonce, cookie)
    head = bytes(data[:4]).hex()
    raise Malformed(f"unknown message type (first bytes {head or 'none'})")
