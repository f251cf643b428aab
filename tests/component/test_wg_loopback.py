"""Two WireGuardCodecs over real UDP sockets on loopback, real clocks, bounded in time."""

from __future__ import annotations

import os
import socket
import time

from tund.keys import generate_private_key, public_key
from tund.relay.wireguard.codec import WireGuardCodec
from tund.workerapi.spec import WorkerSpec


def _spec(priv: str, peer: str, role: str, port: int) -> WorkerSpec:
    return WorkerSpec(tunnel="lo", interface="wgt0", mode="tun", transport="udp",
                      role=role, host="127.0.0.1", port=port, device_fd=-1,  # type: ignore[arg-type]
                      encryption="wireguard", private_key=priv, peer_public_key=peer)


def _ip(i: int) -> bytes:
    body = i.to_bytes(4, "big") + os.urandom(60)
    n = 20 + len(body)
    return bytes([0x45, 0]) + n.to_bytes(2, "big") + bytes(16) + body


def test_handshake_and_500_packets_over_loopback_udp() -> None:
    ka, kb = generate_private_key(), generate_private_key()
    sa = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sa.bind(("127.0.0.1", 0))
        sb.bind(("127.0.0.1", 0))
        for s in (sa, sb):
            s.settimeout(0.002)
        a = WireGuardCodec(_spec(ka, public_key(kb), "remote", sb.getsockname()[1]))
        b = WireGuardCodec(_spec(kb, public_key(ka), "listen", sb.getsockname()[1]))
        b_peer: tuple[str, int] = ("0.0.0.0", 0)  # learned from authenticated messages
        for m in a.on_connected(time.monotonic()):
            sa.sendto(m, sb.getsockname())
        sent = [_ip(i) for i in range(500)]
        got: list[bytes] = []
        queue = list(sent)
        end = time.monotonic() + 20
        while len(got) < len(sent) and time.monotonic() < end:
            now = time.monotonic()
            if queue:
                for m in a.seal(queue.pop(0), now):
                    sa.sendto(m, sb.getsockname())
            for sock, codec in ((sb, b), (sa, a)):
                try:
                    data, src = sock.recvfrom(65536)
                except TimeoutError:
                    continue
                r = codec.open(data, src, time.monotonic())
                assert r.drop is None, r.drop
                if codec is b:
                    b_peer = src if r.authenticated else b_peer
                    got += r.packets
                for m in r.replies:
                    sock.sendto(m, b_peer if codec is b else sb.getsockname())
        assert got == sent
        assert a.stats()["session"] == "established"
        assert b.stats()["session"] == "established"
        assert a.stats()["wg_drops"] == {} and b.stats()["wg_drops"] == {}
    finally:
        sa.close()
        sb.close()
