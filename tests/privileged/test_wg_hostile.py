"""Hostile input against a running tund worker that serves a real WireGuard peer.

Site ``a``: a tund daemon listening on UDP (one WireGuard tunnel, tun device). Site ``b``:
wireguard-go, the real peer (it initiates). In ``b`` this test also opens, from its own
process, an AF_PACKET sniffer on the underlay (to capture wireguard-go's real initiation
and transport messages) and an attacker's UDP socket on another port. The attacker sends:

A. random datagrams, an empty one, truncated and oversized messages of every type, every
   message type with a flipped bit, replayed transport messages;
B. replayed initiations, a well-formed response with valid mac1 for an unknown index, and
   valid initiations from a key the tunnel does not know (at most 6 handshake messages
   with a valid mac1 within a second: below the "under load" threshold of 8);
C. a flood of 40 initiations from the unknown key: the first 8 are processed (and
   refused); of the rest, as many as the source's token bucket allows (a burst of 5,
   then 20/s) get a 64-byte cookie reply, the others nothing (handshake_ratelimited);
   then one initiation carrying mac2 made with such a cookie is processed even under
   load.

Afterwards: nothing reached the device (its kernel rx counter and tund's rx_packets are
unchanged), the attacker got exactly the expected cookie replies and nothing else, the
worker is the same process and still serves the peer (ping), and ``drops`` and
``wg_drops`` in status grew by exactly what was sent, per cause.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.netns import tool_missing
from tests.sites import TwoSites, new_ifname, two_sites
from tests.wg_helpers import (
    KeyPair,
    Sniffer,
    WireGuardGo,
    dev_with_addr,
    disable_ipv6,
    link_stats,
    ns_socket,
    wait_for,
    wg_tunnel,
    write_key,
)
from tund.keyformat import clamp, decode_key
from tund.relay.wireguard import messages as msgs
from tund.relay.wireguard import noise
from tund.relay.wireguard.cookie import CookieGenerator
from tund.relay.wireguard.primitives import tai64n
from tund.relay.wireguard.timers import Timers

pytestmark = pytest.mark.usefixtures("privileged")

WG_PORT, TUND_PORT = 51820, 51902
INNER_A, INNER_B = "10.231.201.1", "10.231.201.2"
FLOOD = 40
UNDER_LOAD_AFTER = Timers().under_load_handshakes  # handshakes processed before cookies
BURST, RATE = Timers().handshake_burst, Timers().handshake_rate  # per-source token bucket


def flip(message: bytes, bit: int) -> bytes:
    b = bytearray(message)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


class Stranger:
    """Makes valid initiations to ``responder_pub`` from a key nobody configured."""

    def __init__(self, responder_pub: str) -> None:
        self.priv = decode_key(KeyPair.new().priv, "stranger")
        self.peer = decode_key(responder_pub, "responder")
        self.prologue = noise.prologue_for("tun")

    def initiation(self, sender: int, gen: CookieGenerator | None = None) -> bytes:
        state = noise.initial_state(self.prologue, self.peer)
        body = noise.write_initiation(state, self.priv, clamp(os.urandom(32)), self.peer,
                                      tai64n(time.time()))
        gen = gen or CookieGenerator(self.peer, Timers())
        return gen.add_macs(msgs.pack_initiation(sender, body), time.monotonic())


def crafted_response(responder_pub: str, rng: random.Random) -> bytes:
    """A response of the right shape with a valid mac1, for an index nobody holds."""
    gen = CookieGenerator(decode_key(responder_pub, "responder"), Timers())
    packed = msgs.pack_response(rng.getrandbits(32), rng.getrandbits(32), rng.randbytes(48))
    return gen.add_macs(packed, time.monotonic())


def _setup(ts: TwoSites, tmp: Path) -> tuple[WireGuardGo, KeyPair, str, Sniffer]:
    require(tool_missing("wireguard-go", "wg"))
    disable_ipv6(ts.a.ns, ts.b.ns)
    ka, kb = KeyPair.new(), KeyPair.new()
    tif = new_ifname("wih")
    ts.a.write(wg_tunnel(tif, "tun", INNER_A, "udp", "listen", f"{ts.ua}:{TUND_PORT}",
                         write_key(ts.a.dir / "a.key", ka.priv), kb.pub, mtu=1420))
    ts.a.start()
    sniffer = Sniffer(ts.b.ns, dev_with_addr(ts.b.ns, ts.ub), TUND_PORT)
    wg = WireGuardGo(ts.b.ns, tmp / "wg", kb, WG_PORT)
    wg.set_peer(ka.pub, f"{INNER_A}/32", endpoint=f"{ts.ua}:{TUND_PORT}")
    wg.up(f"{INNER_B}/24")
    return wg, ka, tif, sniffer


def test_hostile_datagrams_never_reach_the_device(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    wg, ka, tif, sniffer = _setup(ts, tmp_path)
    attacker = ns_socket(ts.b.ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        attacker.bind((ts.ub, 0))
        target = (ts.ua, TUND_PORT)
        ts.b.ns.wait_ping(INNER_A, within=20)  # wireguard-go initiates; the session works
        assert ts.a.ns.ping(INNER_B, count=2)
        real_init = sniffer.first(msgs.TYPE_INITIATION).payload
        real_transport = next(c.payload for c in sniffer.drain()
                              if c.payload[0] == msgs.TYPE_TRANSPORT and c.dst[1] == TUND_PORT
                              and len(c.payload) > msgs.TRANSPORT_MIN_LEN)
        before = ts.a.tunnel("t1")
        dev_before = link_stats(ts.a.ns, tif)["rx_packets"]
        rng = random.Random(20240601)
        expected: collections.Counter[str] = collections.Counter()

        def send(message: bytes, cause: str | None, times: int = 1) -> None:
            for _ in range(times):
                attacker.sendto(message, target)
                if cause:
                    expected[cause] += 1

        # A. nothing with a valid mac1 (no load builds up)
        for _ in range(20):  # random bytes; a non-zero reserved byte makes no message
            junk = bytearray(rng.randbytes(rng.randint(2, 1400)))
            junk[1] |= 1
            send(bytes(junk), "malformed")
        send(b"", "malformed")
        resp = crafted_response(ka.pub, rng)
        cookie = msgs.pack_cookie_reply(rng.getrandbits(32), rng.randbytes(24),
                                        rng.randbytes(32))
        for m in (real_init[:147], real_init[:100], real_init[:4], resp[:91], cookie[:63],
                  real_transport[:31], real_transport[:16]):
            send(m, "malformed")  # truncated
        for m in (real_init + b"\0", resp + b"\0", cookie + b"\0",
                  b"\x01\0\0\0" + rng.randbytes(1400)):
            send(m, "malformed")  # oversized
        big = msgs.transport_header(rng.getrandbits(32), 0) + rng.randbytes(60000)
        send(big, "unknown_receiver")  # oversized transport for nobody's index
        send(flip(real_init, 8 * 20), "bad_mac")  # ephemeral
        send(flip(real_init, 8 * 120), "bad_mac")  # mac1 itself
        send(flip(real_init, 1), "malformed")  # type 1 -> 3 at initiation length
        send(flip(resp, 8 * 30), "bad_mac")
        send(flip(cookie, 8 * 40), "unknown_receiver")
        send(flip(real_transport, 8 * 40), "decrypt")  # ciphertext
        send(flip(real_transport, 8 * 9), "decrypt")  # counter (the nonce)
        send(flip(real_transport, 8 * 4), "unknown_receiver")  # receiver index
        send(flip(real_transport, 1), "malformed")  # type 4 -> 6
        send(real_transport, "replay", times=5)

        # B. valid mac1, below the load threshold
        time.sleep(Timers().under_load_window + 0.1)
        send(real_init, "stale_timestamp", times=3)  # replayed initiation
        send(resp, "unknown_receiver")
        stranger = Stranger(ka.pub)
        for i in range(2):
            send(stranger.initiation(1000 + i), "unknown_peer")

        attacker.settimeout(0.5)
        with pytest.raises(TimeoutError):
            got = attacker.recv(2048)
            raise AssertionError(f"no reply expected before the flood, got {got.hex()}")

        # C. a flood: the first ones are processed; then, under load, cookie replies only
        # as the source's token bucket allows (a burst, then handshake_rate/s); the rest
        # are dropped silently as handshake_ratelimited
        time.sleep(Timers().under_load_window + 0.1)
        gens = {}
        flood = []
        for i in range(FLOOD):
            gens[2000 + i] = CookieGenerator(stranger.peer, Timers())
            flood.append(stranger.initiation(2000 + i, gens[2000 + i]))
        t0 = time.monotonic()
        for m in flood:
            send(m, None)
        spent = time.monotonic() - t0
        expected["unknown_peer"] += UNDER_LOAD_AFTER
        replies: list[bytes] = []
        attacker.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            while len(replies) < FLOOD:
                replies.append(attacker.recv(2048))
        allowed = BURST + int(RATE * (spent + 0.3)) + 1
        assert BURST <= len(replies) <= allowed, (len(replies), allowed)
        expected["cookie"] += len(replies)
        expected["handshake_ratelimited"] += FLOOD - UNDER_LOAD_AFTER - len(replies)
        assert {len(r) for r in replies} == {msgs.COOKIE_REPLY_LEN}
        answered = []
        for r in replies:
            reply = msgs.parse(r)
            assert isinstance(reply, msgs.CookieReply)
            assert gens[reply.receiver].consume_reply(reply, time.monotonic())
            answered.append(reply.receiver)
        first = 2000 + UNDER_LOAD_AFTER
        assert sorted(answered)[:BURST] == list(range(first, first + BURST))
        assert set(answered) <= set(range(first, 2000 + FLOOD))
        # Still under load: with a valid mac2 (the cookie) an initiation is processed,
        # without it answered by a cookie again (the buckets have refilled a little).
        time.sleep(0.2)
        send(stranger.initiation(3000, gens[answered[0]]), "unknown_peer")
        send(stranger.initiation(3001), "cookie")
        extra = attacker.recv(2048)
        assert len(extra) == msgs.COOKIE_REPLY_LEN
        assert struct.unpack_from("<I", extra, 4)[0] == 3001
        attacker.settimeout(0.5)
        with pytest.raises(TimeoutError):
            got = attacker.recv(2048)
            raise AssertionError(f"unexpected reply {got.hex()}")

        # Nothing reached the device; the worker still serves the peer.
        def grown(field: str) -> dict[str, int]:
            now = ts.a.tunnel("t1")[field]
            was = before[field]
            return {k: n - was.get(k, 0) for k, n in now.items() if n != was.get(k, 0)}

        wait_for(lambda: grown("wg_drops") == dict(expected), 5,
                 f"wg_drops to grow by {dict(expected)}")
        assert grown("drops") == dict(expected)
        after = ts.a.tunnel("t1")
        assert after["rx_packets"] == before["rx_packets"]
        assert link_stats(ts.a.ns, tif)["rx_packets"] == dev_before
        assert after["cookie_replies_sent"] - before["cookie_replies_sent"] == expected["cookie"]
        assert after["pid"] == before["pid"] and after["restarts"] == before["restarts"]
        assert after["peer"] == f"{ts.ub}:{WG_PORT}"  # nobody moved the endpoint
        time.sleep(Timers().under_load_window)
        assert ts.b.ns.ping(INNER_A, count=3)
        assert ts.a.ns.ping(INNER_B, count=2)
        assert link_stats(ts.a.ns, tif)["rx_packets"] >= dev_before + 3
        assert ts.a.tunnel("t1")["pid"] == before["pid"]
    except AssertionError:
        print(f"--- tund ---\n{ts.a.log_tail()}\n--- wireguard-go ---\n{wg.log_tail()}")
        raise
    finally:
        attacker.close()
        sniffer.close()
        ts.a.stop()
        wg.stop()
