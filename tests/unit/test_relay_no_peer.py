"""A UDP tunnel without a peer counts each device packet once as ``no_peer`` (issue 15.2).

Before the fix the pump sealed the packet first: a vnet device's offload hello and a
WireGuard initiation were each counted as one more ``no_peer`` drop, so a fresh listener
whose kernel sent one packet showed ``no_peer 2`` (and used up its offload hellos)."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from tests.unit.test_relay_pump import FakeDevice
from tests.unit.test_wg_codec import ip_packet, make_spec
from tund.keyformat import public_from_private, random_private_key
from tund.relay.codec.base import Codec
from tund.relay.codec.offload import VNET_HDR_LEN, OffloadCodec
from tund.relay.codec.plain import PlainCodec
from tund.relay.loop.counters import Counters
from tund.relay.loop.pump import Pump
from tund.relay.transport.udp import UdpTransport
from tund.relay.wireguard.codec import WireGuardCodec


@pytest.fixture
def control() -> Iterator[socket.socket]:
    daemon, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield worker
    daemon.close()
    worker.close()


def _pump(codec_kind: str, control: socket.socket) -> tuple[Pump, FakeDevice, UdpTransport]:
    c = Counters()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    transport = UdpTransport(c, role="listen", host="127.0.0.1", port=0, sock=sock)
    codec: Codec
    if codec_kind == "wireguard":
        codec = WireGuardCodec(make_spec(random_private_key(),
                                         public_from_private(random_private_key()), "listen"))
    else:
        codec = OffloadCodec(PlainCodec(), lambda on: True, max_packet=1500, drops=c.drops,
                             chunked=True)
    dev = FakeDevice()
    return Pump(control=control, device=dev, transport=transport, codec=codec, counters=c,
                max_packet=1500 + VNET_HDR_LEN), dev, transport


@pytest.mark.parametrize("codec_kind", ["vnet-plain", "wireguard"])
def test_each_packet_without_a_peer_is_one_no_peer_drop(codec_kind: str,
                                                        control: socket.socket) -> None:
    pump, dev, transport = _pump(codec_kind, control)
    frame = (bytes(VNET_HDR_LEN) if codec_kind == "vnet-plain" else b"") + ip_packet(48)
    try:
        for i in range(3):
            dev.inbox = [frame] * (i + 1)
            pump.turn += 1
            pump._on_device(selectors.EVENT_READ)
        for t in (1.0, 6.0, 12.0):  # codec timers (handshake retries) meet no peer either
            for m in pump.codec.tick(t):
                transport.send(m)
        stats = pump.stats()
        assert stats["drops"] == {"no_peer": 6}, stats
        assert stats["tx_packets"] == 0 and dev.inbox == []
    finally:
        transport.close()
