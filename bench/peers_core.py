#!/usr/bin/env python3
"""Many peers on one interface, in memory (issue 17): what the sans-IO core costs.

No root, no sockets: a server :class:`~tund.relay.wireguard.peers.PeerCore` and client
cores pass messages by hand. Prints one JSON object (also to --out):

* ``lookup_us``: a longest-prefix lookup among N /32s plus a /8 and a default route,
  for the dict-per-length table tund uses and a binary trie (the alternative measured);
* ``route_us``: ``PeerCore.route`` (the destination read from a packet, and the lookup);
* ``load_s``: adding N peers (keys decoded, X25519 static-static, prefixes inserted);
* ``add_one_ms``: adding one more peer to N (what a reload that adds a peer costs here);
* ``handshakes_per_s``: initiations the server answers (a response each), one thread;
* ``memory_kib_per_peer``: tracemalloc, configured and with an established session;
* ``seal_open_us``: per 1,400-byte packet, the server's ``seal_one`` plus the client's
  ``open_one``, with 1 peer configured and with N (N - 1 idle), and their ratio (goal
  >= 0.95), and the same with the single-peer ``WireGuardCodec`` for reference.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from tund.keyformat import encode_key, public_from_private, random_private_key
from tund.relay.wireguard.codec import WireGuardCodec
from tund.relay.wireguard.peers import PeerCore
from tund.relay.wireguard.prefixes import PrefixTable
from tund.workerapi.spec import WorkerSpec

SERVER = ("192.0.2.1", 51820)
TIMERS = {"under_load_handshakes": 10**9}


def packet(src: str, dst: str, size: int = 1400) -> bytes:
    return (bytes([0x45, 0]) + size.to_bytes(2, "big") + bytes(5) + b"\x11" + bytes(2)
            + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + bytes(size - 20))


def inner(i: int) -> str:
    return f"10.8.{(i + 2) >> 8}.{(i + 2) & 255}"


class Trie:
    """A binary trie (nodes as [child0, child1, value]), the alternative measured."""

    def __init__(self) -> None:
        self.root: list[Any] = [None, None, None]

    def insert(self, net: bytes, length: int, value: object) -> None:
        x, node = int.from_bytes(net, "big"), self.root
        for i in range(length):
            b = (x >> (31 - i)) & 1
            if node[b] is None:
                node[b] = [None, None, None]
            node = node[b]
        node[2] = value

    def lookup(self, address: bytes) -> object:
        x, node, best, i = int.from_bytes(address, "big"), self.root, None, 31
        while node is not None:
            if node[2] is not None:
                best = node[2]
            if i < 0:
                break
            node = node[(x >> i) & 1]
            i -= 1
        return best


def per_call_us(fn: Any, arg: Any, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(arg)
    return (time.perf_counter() - t0) / reps * 1e6


def lookups(n: int, reps: int) -> dict[str, float]:
    table: PrefixTable[int] = PrefixTable()
    trie = Trie()
    for i in range(n):
        net = ipaddress.IPv4Address(inner(i)).packed
        table.insert(net, 32, i)
        trie.insert(net, 32, i)
    for t in (table, trie):
        t.insert(bytes([10, 0, 0, 0]), 8, -1)
        t.insert(bytes(4), 0, -2)
    hit = ipaddress.IPv4Address(inner(n // 2)).packed
    miss = bytes([192, 168, 1, 1])
    return {
        "table_hit_32": per_call_us(table.lookup, hit, reps),
        "table_default": per_call_us(table.lookup, miss, reps),
        "trie_hit_32": per_call_us(trie.lookup, hit, reps),
        "trie_default": per_call_us(trie.lookup, miss, reps),
    }


def establish(server: PeerCore, client: PeerCore, name: str, caddr: tuple[str, int],
              src: str, now: float) -> None:
    """The client's first packet: handshake by hand, then the packet."""
    queue = [(d, m, caddr) for d, m in client.seal(packet(src, "10.8.0.1", 100), now)]
    while queue:
        dest, m, source = queue.pop(0)
        if dest == SERVER:
            got = server.open(m, source, now)
            queue += [(d, r, SERVER) for d, r in got.sends]
        else:
            got = client.open(m, source, now)
            queue += [(d, r, caddr) for d, r in got.sends]


def client_core(server_pub: bytes) -> tuple[bytes, PeerCore]:
    priv = random_private_key()
    core = PeerCore(priv, mtu=1420, timers=TIMERS)
    core.add_peer("server", server_pub, None, ["0.0.0.0/0"], SERVER, 0)
    return public_from_private(priv), core


def run_pair(seal_one: Any, open_one: Any, p: bytes, packets: int) -> float:
    """µs per packet of ``seal_one`` then ``open_one`` for ``packets`` packets."""
    t0 = time.perf_counter()
    now = 2.0
    for _ in range(packets):
        sent = seal_one(p, now)
        assert sent is not None
        message = sent if isinstance(sent, bytes) else sent[1]
        assert isinstance(open_one(message, SERVER, now), bytes)
        now += 1e-6
    return (time.perf_counter() - t0) / packets * 1e6


def core_pair(n_peers: int) -> tuple[Any, Any, bytes]:
    """A server with n_peers configured and an established session with peer 0: its
    seal_one, the client's open_one and a packet for peer 0."""
    spriv = random_private_key()
    server = PeerCore(spriv, mtu=1420, timers=TIMERS)
    spub = public_from_private(spriv)
    pub, client = client_core(spub)
    server.add_peer("p0", pub, None, [f"{inner(0)}/32"], None, 0)
    for i in range(1, n_peers):
        server.add_peer(f"p{i}", public_from_private(random_private_key()), None,
                        [f"{inner(i)}/32"], None, 0)
    establish(server, client, "p0", ("198.51.100.1", 40000), inner(0), 1.0)
    return server.seal_one, client.open_one, packet("10.8.0.1", inner(0))


def codec_pair() -> tuple[Any, Any, bytes]:
    """The single-peer WireGuardCodec, the same way."""
    ka, kb = random_private_key(), random_private_key()

    def spec(priv: bytes, peer: bytes, role: str) -> WorkerSpec:
        return WorkerSpec(tunnel="t", interface="wgt0", mode="tun", transport="udp",
                          role=role, host="127.0.0.1", port=1, device_fd=-1,  # type: ignore[arg-type]
                          encryption="wireguard", private_key=encode_key(priv),
                          peer_public_key=encode_key(peer))

    a = WireGuardCodec(spec(ka, public_from_private(kb), "remote"))
    b = WireGuardCodec(spec(kb, public_from_private(ka), "listen"))
    (init,) = a.on_connected(1.0)
    (resp,) = b.open(init, SERVER, 1.0).replies
    (ka_msg,) = a.open(resp, SERVER, 1.0).replies
    b.open(ka_msg, SERVER, 1.0)
    return a.seal_one, b.open_one, packet("10.8.0.1", "10.8.0.2")


def throughputs(n: int, packets: int, rounds: int = 100) -> dict[str, float]:
    """Interleaved rounds (the machine is shared: the least of each is kept)."""
    setups = {"one_peer": core_pair(1), f"{n}_peers": core_pair(n),
              "single_peer_codec": codec_pair()}
    best = dict.fromkeys(setups, float("inf"))
    for _ in range(rounds):
        for name, (seal_one, open_one, p) in setups.items():
            best[name] = min(best[name], run_pair(seal_one, open_one, p, packets // rounds))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--packets", type=int, default=50000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    n = args.peers
    result: dict[str, Any] = {"peers": n, "python": sys.version.split()[0]}
    result["lookup_us"] = lookups(n, 200_000)

    spriv = random_private_key()
    spub = public_from_private(spriv)
    keys = [random_private_key() for _ in range(n + 1)]
    pubs = [public_from_private(k) for k in keys]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    server = PeerCore(spriv, mtu=1420, timers=TIMERS)
    for i in range(n):
        server.add_peer(f"p{i}", pubs[i], None, [f"{inner(i)}/32"], None, 0)
    load_s = time.perf_counter() - t0
    configured = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t0 = time.perf_counter()
    server.add_peer(f"p{n}", pubs[n], None, [f"{inner(n)}/32"], None, 0)
    result["add_one_ms"] = (time.perf_counter() - t0) * 1e3
    result["load_s"] = load_s
    p = packet("10.8.0.1", inner(n // 2))
    result["route_us"] = per_call_us(server.route, p, 200_000)

    # handshakes: client cores made before, their initiations timed at the server
    clients = []
    for i in range(n):
        c = PeerCore(keys[i], mtu=1420, timers=TIMERS)
        c.add_peer("server", spub, None, ["0.0.0.0/0"], SERVER, 0)
        clients.append(c)
    inits = [c.seal(packet(inner(i), "10.8.0.1", 100), 1.0)[0][1]
             for i, c in enumerate(clients)]
    gc.collect()
    tracemalloc.start()
    tracemalloc.get_traced_memory()
    before_sessions = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    responses = [server.open(m, (f"198.51.{100 + (i >> 8)}.{i & 255}", 40000 + i), 1.0)
                 for i, m in enumerate(inits)]
    result["handshakes_per_s"] = n / (time.perf_counter() - t0)
    for i, (c, r) in enumerate(zip(clients, responses, strict=True)):
        (_, resp), = r.sends
        got = c.open(resp, SERVER, 1.0)  # the client's staged packet follows
        for _, m in got.sends:
            server.open(m, (f"198.51.{100 + (i >> 8)}.{i & 255}", 40000 + i), 1.0)
    after_sessions_with_clients = tracemalloc.get_traced_memory()[0]
    del clients, inits, responses, got, r, c
    gc.collect()
    after_sessions = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    established = sum(1 for name in server.peer_names()
                      if server.peer_status(name)["session"] == "established")
    result["established"] = established
    result["memory_kib_per_peer"] = {
        "configured": (configured - base) / n / 1024,
        "session_extra": (after_sessions - before_sessions) / n / 1024,
        "total": ((configured - base) + (after_sessions - before_sessions)) / n / 1024,
    }
    del after_sessions_with_clients

    us = throughputs(n, args.packets)
    us["ratio_one_over_many"] = us["one_peer"] / us[f"{n}_peers"]
    us["codec_over_core"] = us["single_peer_codec"] / us["one_peer"]
    result["seal_open_us"] = us
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
