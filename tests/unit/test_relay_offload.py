"""OffloadCodec: vnet framing, in-band hello negotiation, stale GSO frames, MTU checks."""

from __future__ import annotations

import struct

from tests.unit.test_relay_chunks import kernel_checksum_ok, tso_frame
from tund.relay.codec import chunks
from tund.relay.codec.base import Opened
from tund.relay.codec.chunks import F_NEEDS_CSUM, GSO_TCPV4, WAIT, LossMeter
from tund.relay.codec.hello import hello, mode_advice, parse_hello, parse_mode_advice
from tund.relay.codec.offload import (
    ENVELOPE_LEN,
    F_DATA_VALID,
    VNET_HDR_LEN,
    ZERO_HDR,
    OffloadCodec,
    envelope,
    frame_ok,
    is_envelope,
)
from tund.relay.codec.plain import PlainCodec
from tund.relay.transport import segments

IP4 = bytes([0x45]) + bytes(19) + b"payload"
PEER = ("192.0.2.1", 9)


def vnet(flags: int, gso: int, packet: bytes) -> bytes:
    return struct.pack("<BBHHHH", flags, gso, 0, 1400 if gso else 0, 20 if flags else 0,
                       16 if flags else 0) + packet


class Switch:
    def __init__(self, ok: bool = True) -> None:
        self.calls: list[bool] = []
        self.ok = ok

    def __call__(self, on: bool) -> bool:
        self.calls.append(on)
        return self.ok


def make(negotiate: bool = True, ok: bool = True) -> tuple[OffloadCodec, Switch, dict[str, int]]:
    sw, drops = Switch(ok), dict[str, int]()
    return OffloadCodec(PlainCodec(), sw, max_packet=1400, drops=drops,
                        negotiate=negotiate), sw, drops


def test_hello_is_an_ipv4_packet_kernels_drop() -> None:
    h = hello(False)
    assert h[0] == 0x45 and h[9] == 253 and h[8] == 0  # TTL 0, protocol 253
    assert h[12:20] == bytes(8)  # 0.0.0.0 -> 0.0.0.0
    assert int.from_bytes(h[2:4], "big") == len(h)
    total = sum(struct.unpack("!10H", h[:20]))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total != 0xFFFF  # the header checksum is wrong on purpose
    assert parse_hello(h) is False and parse_hello(hello(True)) is True
    assert parse_hello(IP4) is None


def test_before_the_hello_frames_go_out_as_plain_packets_after_one_hello() -> None:
    c, sw, _ = make()
    out = c.seal(ZERO_HDR + IP4, 0.0)
    assert out == [hello(False), IP4]
    assert c.seal(ZERO_HDR + IP4, 0.5) == [IP4]  # no second hello within HELLO_RETRY
    assert c.seal(ZERO_HDR + IP4, 1.6) == [hello(False), IP4]  # retried
    assert sw.calls == []


def test_a_hello_turns_offloads_on_and_is_answered_then_frames_pass_whole() -> None:
    c, sw, _ = make()
    op = c.open(hello(False), PEER, 0.0)
    assert op.packets == [] and op.replies == [hello(True)] and op.drop is None
    assert sw.calls == [True] and c.peer_vnet
    frame = vnet(F_NEEDS_CSUM, GSO_TCPV4, IP4 + bytes(60000))
    assert c.seal(frame, 1.0) == [frame]
    op = c.open(hello(True), PEER, 1.0)  # an ack is not answered
    assert op.replies == [] and sw.calls == [True]


def test_received_frames_are_written_as_they_are_and_packets_get_a_zero_header() -> None:
    c, _, _ = make()
    frame = vnet(F_NEEDS_CSUM, GSO_TCPV4, IP4)
    assert c.open(frame, PEER, 0.0).packets == [frame]
    assert c.open(IP4, PEER, 0.0).packets == [ZERO_HDR + IP4]


def test_bad_frames_and_oversize_packets_are_dropped() -> None:
    c, _, drops = make()
    assert c.open(vnet(0x08, 0, IP4), PEER, 0.0).drop == "malformed"  # unknown flag
    assert c.open(vnet(0, 0x33, IP4), PEER, 0.0).drop == "malformed"  # unknown gso
    assert c.open(ZERO_HDR + b"\x00" * 20, PEER, 0.0).drop == "malformed"  # not IP
    assert c.open(IP4 + bytes(1400), PEER, 0.0).drop == "oversize"
    assert not frame_ok(ZERO_HDR)
    assert c.seal(ZERO_HDR + IP4 + bytes(1400), 0.0) == [hello(False)]  # only the hello
    assert drops["oversize"] == 1


def test_stale_gso_frames_are_dropped_but_still_carry_the_hello() -> None:
    # a restarted worker finds the device's offloads on: every frame may be "stale", and
    # without the hello going out anyway the peers would never agree again
    c, sw, drops = make()
    assert c.on_connected(0.0) == [] and sw.calls == [False]  # offloads off at once
    assert c.seal(vnet(F_NEEDS_CSUM, GSO_TCPV4, IP4), 0.0) == [hello(False)]
    assert c.seal(vnet(F_NEEDS_CSUM, 0, IP4), 0.1) == []
    assert drops["offload_stale"] == 2
    assert c.open(hello(True), PEER, 0.2).replies == [] and c.peer_vnet
    assert sw.calls == [False, True]


def test_a_new_path_forgets_the_peer_and_turns_offloads_off() -> None:
    c, sw, _ = make()
    c.open(hello(False), PEER, 0.0)
    c.on_connected(1.0)
    assert sw.calls == [True, False] and not c.peer_vnet
    c.on_connected(2.0)  # known to be off already: no second ioctl
    assert sw.calls == [True, False]
    assert c.seal(ZERO_HDR + IP4, 1.0)[0] == hello(False)


def test_without_negotiation_no_hello_is_sent_nor_answered() -> None:
    c, sw, _ = make(negotiate=False)
    assert c.seal(ZERO_HDR + IP4, 0.0) == [IP4]
    op = c.open(hello(False), PEER, 0.0)
    assert op.replies == [] and op.packets == [] and sw.calls == [] and not c.peer_vnet


def test_a_device_that_refuses_offloads_keeps_plain_packets() -> None:
    c, sw, _ = make(ok=False)
    c.open(hello(False), PEER, 0.0)
    assert sw.calls == [True] and not c.peer_vnet
    assert c.seal(ZERO_HDR + IP4, 5.0)[-1] == IP4
    assert len(hello(False)) + VNET_HDR_LEN > VNET_HDR_LEN


def test_after_the_hello_whole_packets_go_bare_and_everything_else_in_envelopes() -> None:
    """A frame that needs nothing from its header (no GSO type, no partial checksum)
    travels as its IP packet and comes back with a zero header; a frame the receiver's
    short path would not take back as a plain packet stays whole, in its envelope."""
    c = OffloadCodec(PlainCodec(ip_check=True), Switch(), max_packet=1400, drops={},
                     enveloped=True)
    c.open(hello(False), PEER, 0.0)
    v4 = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17]) + bytes(18)
    v6 = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(32) + bytes(8)
    for packet in (v4, v6):
        for flags in (0, F_DATA_VALID):
            (wire,) = c.seal(vnet(flags, 0, packet), 1.0)
            assert wire == packet
            assert c.open_one(wire, PEER, 1.0) == ZERO_HDR + packet
    p253 = v4[:9] + bytes([253]) + v4[10:]
    big = bytes([0x45, 0, 0x05, 0x79]) + bytes(1397)  # 1401 bytes, one over max_packet
    v6p253 = v6[:6] + bytes([253]) + v6[7:]
    not_ip = b"\x50" + v4[1:]
    for frame in (vnet(F_NEEDS_CSUM, 0, v4), ZERO_HDR + p253, ZERO_HDR + v6p253,
                  ZERO_HDR + big, ZERO_HDR + v4[:19], ZERO_HDR + not_ip):
        (wire,) = c.seal(frame, 1.0)
        assert wire == envelope(frame), frame
        got = c.open(wire, PEER, 1.0)
        assert (got.packets == [frame]) if frame_ok(frame) else (got.drop == "malformed")


def test_enveloped_frames_pass_a_codec_that_only_carries_ip_packets() -> None:
    sw, drops = Switch(), dict[str, int]()
    c = OffloadCodec(PlainCodec(ip_check=True), sw, max_packet=1400, drops=drops,
                     enveloped=True)
    c.open(hello(False), PEER, 0.0)
    frame = vnet(F_NEEDS_CSUM, GSO_TCPV4, IP4 + bytes(60000))
    (wire,) = c.seal(frame, 1.0)
    assert wire[0] >> 4 == 6 and int.from_bytes(wire[4:6], "big") == len(frame)
    assert wire[ENVELOPE_LEN:] == frame
    assert c.open(wire, PEER, 1.0).packets == [frame]
    assert is_envelope(envelope(frame)) and not is_envelope(IP4)


def test_over_udp_super_packets_travel_in_chunks_of_eight_as_trains() -> None:
    pair = []
    for _ in range(2):
        sw, drops = Switch(), dict[str, int]()
        c = OffloadCodec(PlainCodec(ip_check=True), sw, max_packet=1400, drops=drops,
                         enveloped=True, chunked=True)
        c.open(hello(False), PEER, 0.0)
        pair.append(c)
    a, b = pair
    a.send_chunks = True  # as the peer's LossMeter advises on a lossy path (below)
    frame = tso_frame(payload_len=60000)
    wire = a.seal(frame, 1.0)
    # a chunk holds eight MTU's worth and goes as one train of datagrams within the MTU,
    # with a parity datagram (chunks are cut on a lossy path)
    assert all(w[0] == segments.MARK and segments.train_size(w) <= 1400 for w in wire)
    assert all(w[1] == segments.MAGIC_PARITY for w in wire)
    cut = joined(wire)
    assert len(cut) == len(wire) == -(-60000 // (8 * (1400 - 52 - chunks.TRAILER_LEN)))
    assert all(chunks.is_chunk(c) and len(c) <= 8 * 1400 for c in cut)
    got = [f for m in cut for f in b.open(m, PEER, 1.0).packets]
    assert got == [frame]
    small = vnet(0, 0, IP4)  # not a super-packet: one enveloped message, as before
    (m,) = a.seal(small, 1.0)
    assert b.open(m, PEER, 1.0).packets == [small]
    # a lost chunk: the rest is written as valid runs once the wait is over
    cut = joined(a.seal(frame, 2.0))
    got = [f for m in cut[:1] + cut[2:] for f in b.open(m, PEER, 2.0).packets]
    assert got == [] and b.next_deadline() is not None
    runs = b.expired(2.0 + WAIT)
    assert len(runs) == 2 and all(kernel_checksum_ok(r) for r in runs)
    assert all(r[1] == GSO_TCPV4 for r in runs)  # several segments each: still TSO frames
    assert b.open(cut[1], PEER, 2.1).drop is None  # a late straggler starts a new frame


def test_rebuilt_datagrams_keep_the_path_judged_lossy() -> None:
    """One datagram of every chunk's train is lost: the parity rebuilds each (every frame
    arrives whole), and the receiver still advises chunks, as the LossMeter heard of the
    losses; without that news it would advise "whole" and the path would flip."""
    advice: dict[bool, list[bool | None]] = {}
    for told in (True, False):
        a, b = (OffloadCodec(PlainCodec(ip_check=True), Switch(), max_packet=1400,
                             drops=dict[str, int](), enveloped=True, chunked=True)
                for _ in range(2))
        for c in (a, b):
            c.open(hello(False), PEER, 0.0)
        segs = segments.Reassembler(lambda cause: None,
                                    b.on_recovered if told else lambda n: None)
        frame, said = tso_frame(payload_len=60000), []
        for i in range(LossMeter.WINDOW * 2):
            got = []
            for w in a.seal(frame, 1.0):
                size = segments.train_size(w)
                for d in [w[o:o + size] for o in range(0, len(w), size) if o != size]:
                    for m in segs.add(d, len(d), len(d), PEER):
                        op = b.open(m, PEER, 1.0 + i * 0.02)
                        got += op.packets
                        said += [parse_mode_advice(r) for r in op.replies]
            assert got == [frame]
        advice[told] = said
        assert b.recovered == (LossMeter.WINDOW * 2 * 6 if told else 0)
    assert advice[True] and False not in advice[True]
    assert False in advice[False]


def joined(wire: list[bytes]) -> list[bytes]:
    """What the UDP transport delivers of ``wire``: trains joined, the rest as is."""
    drops: list[str] = []
    segs = segments.Reassembler(drops.append)
    out = []
    for w in wire:
        size = segments.train_size(w) if w[0] == segments.MARK else len(w)
        out += segs.add(w, len(w), size, PEER)
    assert drops == [] and segs.need == 0
    return out


def test_super_packets_go_whole_until_the_peer_sees_them_lost_then_in_chunks() -> None:
    pair = []
    for _ in range(2):
        c = OffloadCodec(PlainCodec(ip_check=True), Switch(), max_packet=1400,
                         drops=dict[str, int](), enveloped=True, chunked=True)
        c.open(hello(False), PEER, 0.0)
        pair.append(c)
    a, b = pair
    frame = tso_frame(payload_len=60000)
    advice: list[bytes] = []
    assert a.send_chunks  # the safe start
    for i in range(LossMeter.WINDOW * 2):  # a clean path
        op = None
        for m in joined(a.seal(frame, 1.0)):
            op = b.open(m, PEER, 1.0 + i * 0.001)
            advice += op.replies
        assert op is not None and op.packets == [frame]
        for r in op.replies:
            a.open(r, PEER, 1.0)
    assert [parse_mode_advice(r) for r in advice] == [False]  # "whole" said once
    assert not a.send_chunks
    # whole: one message, as one train of datagrams no larger than the MTU (no fragments)
    (train,) = a.seal(frame, 1.5)
    size = segments.train_size(train)  # below the MTU, and no length WireGuard data has
    assert train[0] == segments.MARK and size <= 1400 and size % 16 == 15
    assert len(joined([train])) == 1
    advice = []
    for i in range(LossMeter.WINDOW * 2):  # every fifth frame lost on the way
        (m,) = joined(a.seal(frame, 2.0))
        if i % 5:
            advice += b.open(m, PEER, 2.0 + i * 0.001).replies
    assert [parse_mode_advice(r) for r in advice][:1] == [True]
    for r in advice:
        assert a.open(r, PEER, 3.0).packets == []
    assert a.send_chunks
    wire = a.seal(frame, 3.0)
    cut = joined(wire)
    assert len(cut) > 5 and all(chunks.is_chunk(w) for w in cut)
    assert [f for w in cut for f in b.open(w, PEER, 3.0).packets] == [frame]
    assert parse_hello(mode_advice(True)) is None and parse_mode_advice(hello(True)) is None


def _twins(**kw: bool) -> tuple[OffloadCodec, OffloadCodec]:
    def one() -> OffloadCodec:
        return OffloadCodec(PlainCodec(ip_check=True), Switch(), max_packet=1400,
                            drops=dict[str, int](), **kw)
    return one(), one()


def _state(c: OffloadCodec) -> tuple[object, ...]:
    return (c.peer_vnet, c.send_chunks, c._hello_tries, c._hello_at, c._frame_id,
            dict(c.drops), {k: v for k, v in vars(c._meter).items() if k != "now"},
            c._reasm.deadline, c.stats())  # (the meter's clock is set before each use)


def _as_opened(r: bytes | Opened) -> Opened:
    return Opened([r], [], True) if isinstance(r, bytes) else r


def test_open_one_and_seal_one_do_exactly_what_open_and_seal_do() -> None:
    """Every kind of message and frame, before and after the hello, enveloped or not:
    the short paths give the same result and leave the same state as the general ones
    (and say None, changing nothing, where they do not apply)."""
    tcp = tso_frame(payload_len=3000)
    numbered = envelope(tcp, 7)
    v6 = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(32) + bytes(8)
    proto253 = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 253]) + bytes(18)
    messages = [IP4, v6, proto253, hello(False), hello(True), mode_advice(True),
                mode_advice(False), envelope(vnet(0, 0, IP4)), numbered,
                envelope(b"\x7f" + bytes(30)), vnet(0, 0, IP4), b"\x45", b"",
                IP4 + bytes(1400), bytes([0x50]) + bytes(30)]
    messages += chunks.split(tcp, 1400, 9) or []
    frames = [ZERO_HDR + IP4, tcp, vnet(F_NEEDS_CSUM, 0, IP4), ZERO_HDR + IP4 + bytes(1400)]
    short = {"open": 0, "seal": 0}  # how often the short paths applied
    for kw in ({}, {"enveloped": True}, {"enveloped": True, "chunked": True},
               {"chunked": True}):
        for hello_first in (False, True):
            a, b = _twins(**kw)
            if hello_first:
                a.open(hello(False), PEER, 0.0)
                b.open(hello(False), PEER, 0.0)
            for i, m in enumerate(messages):
                now = 1.0 + i
                r = a.open_one(m, PEER, now)
                short["open"] += isinstance(r, bytes)
                assert _as_opened(r) == b.open(m, PEER, now), (kw, m)
                assert _state(a) == _state(b), (kw, m)
            for i, f in enumerate(frames * 2):
                now = 50.0 + i * 0.3
                before = _state(a)
                one = a.seal_one(f, now)
                if one is None:
                    assert _state(a) == before, (kw, f)
                    assert a.seal(f, now) == b.seal(f, now), (kw, f)
                else:
                    short["seal"] += 1
                    assert [one] == b.seal(f, now), (kw, f)
                assert _state(a) == _state(b), (kw, f)
    assert short["open"] >= 16 and short["seal"] >= 16, short


class _Many(PlainCodec):
    """An inner codec with many peers, as the offload codec sees one: it seals advice
    for a sender itself (``seal_to``)."""

    def __init__(self) -> None:
        super().__init__(ip_check=True)
        self.to: list[tuple[object, bytes]] = []

    def seal_to(self, source: object, packet: bytes, now: float) -> None:
        self.to.append((source, packet))


def test_with_many_peers_two_senders_chunks_interleaved_are_each_rebuilt() -> None:
    """``many``: chunks are joined per sender (one Reassembler each): two tund clients'
    super-packets arriving interleaved both come out whole (one shared Reassembler keeps
    one frame at a time: each chunk of the other sender would cut the frame into runs),
    and the advice goes to the sender it is about, through ``seal_to``."""
    senders = [OffloadCodec(PlainCodec(ip_check=True), Switch(), max_packet=1400,
                            drops={}, enveloped=True, chunked=True) for _ in range(2)]
    for s in senders:
        s.open(hello(False), PEER, 0.0)
        s.send_chunks = True
    inner = _Many()
    server = OffloadCodec(inner, Switch(), max_packet=1400, drops={}, negotiate=False,
                          enveloped=True, chunked=True, many=True)
    frames = [tso_frame(payload_len=30000), tso_frame(payload_len=20000)]
    cuts = [joined(s.seal(f, 1.0)) for s, f in zip(senders, frames, strict=True)]
    assert min(len(c) for c in cuts) >= 2
    where = [("198.51.100.1", 1), ("198.51.100.2", 2)]
    got: dict[int, list[bytes]] = {0: [], 1: []}
    for i in range(max(len(c) for c in cuts)):
        for k in (0, 1):
            if i < len(cuts[k]):
                got[k] += server.open(cuts[k][i], where[k], 1.0).packets
    assert got == {0: [frames[0]], 1: [frames[1]]}
    assert server.next_deadline() is None and server.expired(2.0) == []
    for i in range(LossMeter.WINDOW * 2):  # sender 0's path: few incomplete -> "whole"
        for m in joined(senders[0].seal(frames[0], 2.0 + i * 0.02)):
            server.open(m, where[0], 2.0 + i * 0.02)
    assert inner.to and {s for s, _ in inner.to} == {where[0]}
    assert {parse_mode_advice(p) for _, p in inner.to} == {False}  # "send them whole"
