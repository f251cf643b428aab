#!/usr/bin/env python3
"""The Python floor of the idle-RTT goal: the least work a Python data path with tund's
AEAD can do per packet. A measurement reference for bench/run.sh, not a tunnel.

One process per end, one epoll over a TUN device (IFF_TUN | IFF_NO_PI) and a connected
UDP socket. Device -> peer: one read, one ChaCha20-Poly1305 ``encrypt`` (``cryptography``,
the call tund's WireGuard codec makes), one send. Peer -> device: one recv, one
``decrypt``, one write. Nothing else: a fixed key read from a file, a counter nonce sent in
the clear, no handshake, no replay window, no timers, no counters, no offloads. Whatever
tund adds on top of this (a protocol, supervision, status) can only cost time; so the ratio
of this relay's RTT to the lowest peer's is the best a Python data path with this AEAD can
reach on the machine, and tund's RTT over this relay's is what tund itself adds.

  pyfloor.py --dev NAME --bind HOST:PORT --peer HOST:PORT --key FILE
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import socket
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
NONCE = struct.Struct("<4xQ")  # WireGuard's nonce layout: 4 zero bytes, 64-bit counter


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--dev", "--bind", "--peer", "--key"):
        ap.add_argument(flag, required=True)
    a = ap.parse_args()
    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH22x", a.dev.encode(), IFF_TUN | IFF_NO_PI))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(address(a.bind))
    sock.connect(address(a.peer))
    sock.setblocking(False)
    with open(a.key, "rb") as f:
        relay(tun, sock, f.read(32))


def relay(tun: int, sock: socket.socket, key: bytes) -> None:
    """The floor's loop between the device ``tun`` (an fd that reads and writes whole
    packets) and the connected, non-blocking UDP socket ``sock``; never returns."""
    aead = ChaCha20Poly1305(key)
    seal, unseal, nonce = aead.encrypt, aead.decrypt, NONCE.pack
    read, write, send, recv = os.read, os.write, sock.send, sock.recv
    ep = select.epoll()
    ep.register(tun, select.EPOLLIN)
    ep.register(sock.fileno(), select.EPOLLIN)
    counter = 0
    while True:
        for fd, _ in ep.poll():
            try:
                if fd == tun:
                    while True:
                        packet = read(tun, 65535)
                        n = nonce(counter)
                        counter += 1
                        try:  # noqa: SIM105 (a `with` per packet is work the floor must not do)
                            send(n + seal(n, packet, None))
                        except OSError:  # e.g. ECONNREFUSED before the peer is up
                            pass
                else:
                    while True:
                        try:
                            message = recv(65535)
                        except ConnectionRefusedError:
                            continue
                        try:  # noqa: SIM105
                            write(tun, unseal(message[:12], message[12:], None))
                        except (InvalidTag, OSError):
                            pass
            except BlockingIOError:
                pass

if __name__ == "__main__":
    main()
