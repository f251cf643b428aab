"""tund against an independent minimal peer that speaks simpletun's framing.

The peer below is written here from the tutorial's description only (open /dev/net/tun with
TUNSETIFF, then over TCP each packet is preceded by its length as 2 bytes, big-endian); it
shares no code with tund. tund listens in site a; the peer connects from site b.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.netns import unique
from tests.sites import new_ifname, plain_tunnel, two_sites

pytestmark = pytest.mark.usefixtures("privileged")

PEER = textwrap.dedent(r'''
    import fcntl, os, socket, struct, sys, threading
    dev, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", dev.encode(), 0x0001 | 0x1000))
    print("tun-open", flush=True)
    s = socket.create_connection((host, port), timeout=10)
    s.settimeout(None)

    def tun_to_net():
        while True:
            pkt = os.read(fd, 2000)
            s.sendall(struct.pack("!H", len(pkt)) + pkt)

    def read_exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                os._exit(0)
            buf += chunk
        return buf

    threading.Thread(target=tun_to_net, daemon=True).start()
    while True:
        (n,) = struct.unpack("!H", read_exact(2))
        os.write(fd, read_exact(n))
''')


def test_tund_and_a_minimal_simpletun_peer_ping_both_ways(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    ia, peer_dev = new_ifname(), unique("stp")
    ts.a.write(plain_tunnel(ia, "tun", ts.inner("a"), "tcp", "listen", f"{ts.ua}:55555"))
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    try:
        ts.a.start()
        peer = ts.b.ns.spawn(sys.executable, str(script), peer_dev, ts.ua, "55555",
                             log=tmp_path / "peer.log")
        ts.b.ns.run("sh", "-c", f"for i in $(seq 50); do ip link show {peer_dev} && exit 0; "
                                "sleep 0.1; done; exit 1")
        ts.b.ns.run("ip", "addr", "add", f"{ts.inner('b')}/24", "dev", peer_dev)
        ts.b.ns.run("ip", "link", "set", peer_dev, "up")
        ts.b.ns.wait_ping(ts.inner("a"), within=20)
        assert ts.a.ns.ping(ts.inner("b"), count=3)
        st = ts.a.wait_state("t1", "up")
        assert st["rx_packets"] >= 4 and st["tx_packets"] >= 4
        assert st["peer"].startswith(ts.ub + ":")
        assert peer.poll() is None
    finally:
        ts.a.stop()
