"""PeerCore over real UDP sockets on loopback (issue 17): one server socket, three client
sockets (two with PeerCore, one with the single-peer WireGuardCodec), real clocks,
addresses exactly as ``recvfrom`` gives them; bounded in time."""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import time

from tund.keys import generate_private_key, public_key
from tund.relay.wireguard.codec import WireGuardCodec
from tund.relay.wireguard.peers import PeerCore
from tund.workerapi.spec import WorkerSpec


def _ip(src: str, dst: str, i: int) -> bytes:
    body = i.to_bytes(4, "big") + os.urandom(40)
    n = 20 + len(body)
    return (bytes([0x45, 0]) + n.to_bytes(2, "big") + bytes(8)
            + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + body)


def test_three_clients_through_one_server_socket() -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        server_sock, *client_socks = socks
        here = server_sock.getsockname()
        ks = generate_private_key()
        server = PeerCore(ks, mtu=1420)
        clients: list[PeerCore | WireGuardCodec] = []
        inner = ["10.8.0.2", "10.8.0.3", "10.8.0.4"]
        for i, addr in enumerate(inner):
            kc = generate_private_key()
            server.add_peer(f"c{i}", public_key(kc), None, [f"{addr}/32"], None, 0)
            if i < 2:
                core = PeerCore(kc, mtu=1420)
                core.add_peer("server", public_key(ks), None, ["0.0.0.0/0"], here, 0)
                clients.append(core)
            else:
                clients.append(WireGuardCodec(WorkerSpec(
                    tunnel="lo", interface="wgt0", mode="tun", transport="udp",
                    role="remote", host=here[0], port=here[1], device_fd=-1,
                    encryption="wireguard", private_key=kc, peer_public_key=public_key(ks))))
        got_server: list[bytes] = []
        got_client: list[list[bytes]] = [[], [], []]

        def send_from(i: int, packet: bytes, now: float) -> None:
            c = clients[i]
            if isinstance(c, PeerCore):
                for dest, m in c.seal(packet, now):
                    client_socks[i].sendto(m, dest)
            else:
                for m in c.seal(packet, now):
                    client_socks[i].sendto(m, here)

        def pump(until: float) -> None:
            while time.monotonic() < until:
                ready, _, _ = select.select(socks, [], [], 0.005)
                now = time.monotonic()
                for s in ready:
                    while True:
                        try:
                            data, src = s.recvfrom(2048)
                        except BlockingIOError:
                            break
                        if s is server_sock:
                            r = server.open(data, src, now)
                            got_server.extend(r.packets)
                            for dest, m in r.sends:
                                server_sock.sendto(m, dest)
                            continue
                        i = client_socks.index(s)
                        c = clients[i]
                        if isinstance(c, PeerCore):
                            rc = c.open(data, src, now)
                            got_client[i].extend(rc.packets)
                            for dest, m in rc.sends:
                                s.sendto(m, dest)
                        else:
                            ro = c.open(data, src, now)
                            got_client[i].extend(ro.packets)
                            for m in ro.replies:
                                s.sendto(m, here)
                for dest, m in server.tick(now):
                    server_sock.sendto(m, dest)

        t0 = time.monotonic()
        for i, addr in enumerate(inner):
            send_from(i, _ip(addr, "10.8.0.1", 0), t0)
        pump(time.monotonic() + 0.5)
        assert sorted(p[-44:-40] for p in got_server) == [bytes(4)] * 3
        now = time.monotonic()
        for n in range(1, 51):
            for i, addr in enumerate(inner):
                send_from(i, _ip(addr, "10.8.0.1", n), now)
                for dest, m in server.seal(_ip("10.8.0.1", addr, n), now):
                    assert dest == client_socks[i].getsockname()
                    server_sock.sendto(m, dest)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (
                len(got_server) < 153 or any(len(g) < 50 for g in got_client)):
            pump(time.monotonic() + 0.05)
        assert len(got_server) == 153
        for i in range(len(inner)):
            assert [int.from_bytes(p[20:24], "big") for p in got_client[i]] == \
                list(range(1, 51))
            st = server.peer_status(f"c{i}")
            assert st["rx_packets"] == 51 and st["tx_packets"] == 50
            host, port = client_socks[i].getsockname()
            assert st["endpoint"] == f"{host}:{port}" and st["state"] == "active"
        assert server.stats()["wg_drops"] == {}
    finally:
        for s in socks:
            s.close()
