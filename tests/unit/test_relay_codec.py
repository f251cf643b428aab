"""PlainCodec: passthrough, malformed drops by cause, UDP keepalives."""

from __future__ import annotations

from tund.relay.codec.base import Codec, Opened
from tund.relay.codec.plain import PlainCodec


def test_passthrough_both_ways() -> None:
    c: Codec = PlainCodec()
    assert c.seal(b"\x45abc", 1.0) == [b"\x45abc"]
    op = c.open(b"\x45abc", ("10.0.0.1", 5), 1.0)
    assert op == Opened([b"\x45abc"], [], True, None)
    assert c.tick(2.0) == []
    assert c.next_deadline() is None
    assert c.on_connected(0.0) == []
    assert c.stats() == {}


def test_ip_check_drops_non_ip_as_malformed() -> None:
    c = PlainCodec(ip_check=True)
    assert c.open(b"\x45\x00", None, 0).packets == [b"\x45\x00"]
    assert c.open(b"\x60\x00", None, 0).packets == [b"\x60\x00"]
    bad = c.open(b"\x15\x00", None, 0)
    assert bad.drop == "malformed" and bad.packets == [] and not bad.authenticated


def test_short_messages_are_malformed() -> None:
    c = PlainCodec(min_len=14)  # tap: an Ethernet header at least
    assert c.open(b"x" * 13, None, 0).drop == "malformed"
    assert c.open(b"x" * 14, None, 0).drop is None


def test_empty_message_is_a_keepalive_not_a_packet() -> None:
    op = PlainCodec().open(b"", ("1.2.3.4", 9), 0)
    assert op.packets == [] and op.drop is None and op.authenticated


def test_keepalive_when_idle_and_hello() -> None:
    c = PlainCodec(keepalive=10, hello=True)
    assert c.on_connected(100.0) == [b""]
    assert c.next_deadline() == 110.0
    assert c.tick(105.0) == []
    c.seal(b"\x45", 108.0)  # traffic postpones the keepalive
    assert c.next_deadline() == 118.0
    assert c.tick(118.0) == [b""]
    assert c.next_deadline() == 128.0
