"""The in-band control packets of the tund-to-tund offload extension
(:mod:`tund.relay.codec.offload`): the hello that negotiates vnet frames, and the
receiver's mode advice (chunks or whole super-packets).

Each is an IPv4 packet of protocol 253 whose header checksum is deliberately wrong, so a
kernel that saw one would drop it, carrying :data:`MAGIC` (the extension's version) and a
kind byte. Pure functions.
"""

from __future__ import annotations

import struct

from tund.relay.codec.chunks import ipv4_header_checksum

#: /2: in chunks over UDP; /3: whole ones in trains; /4: chunks in trains with parity
MAGIC = b"tund-offload/4\x00"
_HELLO_LEN = 20 + len(MAGIC) + 1


def _control(kind: int) -> bytes:
    head = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, _HELLO_LEN, 0, 0, 0, 253, 0,
                                 bytes(4), bytes(4)))
    good = ipv4_header_checksum(head)
    struct.pack_into("!H", head, 10, good ^ 0x5A5A)  # deliberately wrong: kernels drop it
    return bytes(head) + MAGIC + bytes([kind])


def _control_kind(packet: bytes) -> int | None:
    if len(packet) != _HELLO_LEN or packet[9] != 253 or packet[20:20 + len(MAGIC)] != MAGIC:
        return None
    return packet[-1]


def is_control(packet: bytes) -> bool:
    """True if ``packet`` (an IP packet, no framing) is one of this extension's control
    packets (a hello or a mode advice)."""
    return _control_kind(packet) is not None


def hello(ack: bool) -> bytes:
    """The negotiation packet (see the module docstring); ``ack`` answers one."""
    return _control(1 if ack else 0)


def parse_hello(packet: bytes) -> bool | None:
    """None if ``packet`` is not a hello, else its ack flag."""
    kind = _control_kind(packet)
    return None if kind is None or kind > 1 else kind == 1


def mode_advice(chunks: bool) -> bytes:
    """The receiver's advice (a packet like the hello): cut super-packets into chunks, or
    send them whole (see :class:`tund.relay.codec.chunks.LossMeter`)."""
    return _control(2 if chunks else 3)


def parse_mode_advice(packet: bytes) -> bool | None:
    """None if ``packet`` is not a mode advice, else True for chunks."""
    kind = _control_kind(packet)
    return None if kind not in (2, 3) else kind == 2
