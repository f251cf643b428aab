"""A handshake flooder for tests (issue 16.3): valid-mac1 initiations at a paced rate.

``python -m tests.wg_flood --bind ADDR --target HOST:PORT --pub KEY --rate N --seconds S``
sends initiations from a key nobody configured, each with a valid mac1 (computable from
the responder's public key alone) and no mac2, to ``HOST:PORT`` from ``ADDR`` at ``N``
per second for ``S`` seconds, reading whatever comes back. It prints one JSON line:
``sent`` (datagrams the kernel took), ``seconds`` (measured), ``rate`` (sent / seconds),
``send_errors``, ``replies`` and ``reply_bytes`` (e.g. cookie replies).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

from tund.keyformat import clamp, decode_key, random_private_key
from tund.relay.wireguard import messages as msgs
from tund.relay.wireguard import noise
from tund.relay.wireguard.cookie import CookieGenerator
from tund.relay.wireguard.primitives import tai64n
from tund.relay.wireguard.timers import Timers

DISTINCT = 256  # initiations made up front (sender indexes differ), sent round-robin


def initiations(responder_pub: bytes, n: int) -> list[bytes]:
    """``n`` valid initiations (fresh ephemerals, valid mac1, zero mac2) from a new key."""
    priv = random_private_key()
    gen = CookieGenerator(responder_pub, Timers())
    out = []
    for i in range(n):
        state = noise.initial_state(noise.prologue_for("tun"), responder_pub)
        body = noise.write_initiation(state, priv, clamp(os.urandom(32)), responder_pub,
                                      tai64n(time.time()))
        out.append(gen.add_macs(msgs.pack_initiation(0x10000 + i, body), time.monotonic()))
    return out


def flood(bind: str, target: tuple[str, int], pub: bytes, rate: float,
          seconds: float) -> dict[str, float]:
    messages = initiations(pub, DISTINCT)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, 0))
    s.setblocking(False)
    sent = errors = replies = reply_bytes = 0
    t0 = time.monotonic()
    end = t0 + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * rate)
        while sent < due:
            try:
                s.sendto(messages[sent % DISTINCT], target)
                sent += 1
            except BlockingIOError:
                errors += 1
                break
            except OSError:
                errors += 1
                break
        while True:
            try:
                reply_bytes += len(s.recv(2048))
                replies += 1
            except (BlockingIOError, OSError):
                break
        time.sleep(0.0005)
    took = time.monotonic() - t0
    time.sleep(0.2)  # late replies
    while True:
        try:
            reply_bytes += len(s.recv(2048))
            replies += 1
        except (BlockingIOError, OSError):
            break
    s.close()
    return {"sent": sent, "seconds": round(took, 3), "rate": round(sent / took, 1),
            "send_errors": errors, "replies": replies, "reply_bytes": reply_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--pub", required=True)
    ap.add_argument("--rate", type=float, default=20000)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    print(json.dumps(flood(a.bind, (host, int(port)), decode_key(a.pub, "--pub"), a.rate,
                           a.seconds)), flush=True)


if __name__ == "__main__":
    main()
