"""Peers' endpoint names are looked up again (issue 18.6), for real.

The server's peer has ``endpoint = "roamer.test:PORT"`` and a keepalive, so the server
initiates. The namespace's hosts file (``/etc/netns/NAME/hosts``, bind-mounted by ``ip netns
exec``) first maps the name to an address where nobody answers; then it is edited to the
client's real address. With the periods shortened (``--test-timers reresolve_stale=2,
reresolve_every=0.5``) the daemon looks the name up again, tells the worker, and the
handshake completes: the client, which knows no endpoint for the server, is reached.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Netns, unique, veth
from tests.sites import Site
from tests.wg_helpers import KeyPair, WireGuardGo, write_key

pytestmark = pytest.mark.usefixtures("privileged")

PORT = 51830
NAME = "roamer.test"


def _peer(site: Site) -> dict[str, Any]:
    out = json.loads(site.ctl("status", "--json").stdout)
    return out["tunnels"]["vpn"]["peers"]["roamer"]  # type: ignore[no-any-return]


def test_a_peer_whose_name_moves_is_reached_after_the_lookup_again(tmp_path: Path) -> None:
    s_ns, c_ns = Netns.make("rrS"), Netns.make("rrC")
    veth(s_ns, "10.94.0.1/24", c_ns, "10.94.0.2/24")
    etc = Path("/etc/netns") / s_ns.name
    etc.mkdir(parents=True)
    hosts = etc / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n10.94.0.9 {NAME}\n")  # nobody at .9
    ks, kc = KeyPair.new(), KeyPair.new()
    server = Site(s_ns, tmp_path / "s", "s")
    key = write_key(server.dir / "s.key", ks.priv)
    ifname = unique("rrs")
    server.write(f'[interfaces.{ifname}]\nmode = "tun"\naddresses = ["10.95.0.1/24"]\n'
                 f'mtu = 1420\n\n[tunnels.vpn]\ninterface = "{ifname}"\n'
                 f'listen = "0.0.0.0:{PORT}"\nprivate_key_file = "{key}"\n\n'
                 f'[tunnels.vpn.peers.roamer]\npublic_key = "{kc.pub}"\n'
                 f'allowed_ips = ["10.95.0.2/32"]\nendpoint = "{NAME}:{PORT}"\n'
                 'keepalive = 1\n')
    wg: WireGuardGo | None = None
    try:
        wg = WireGuardGo(c_ns, tmp_path / "c", kc, PORT)
        wg.set_peer(ks.pub, "10.95.0.0/24")  # no endpoint: it cannot start the handshake
        wg.up("10.95.0.2/24")
        server.start(extra_args=("--test-timers", "reresolve_stale=2,reresolve_every=0.5"))
        time.sleep(3.0)
        before = _peer(server)
        assert not before["latest_handshake"], before  # the name points at nobody
        with open(hosts, "r+") as f:  # in place: the namespace's bind mount sees it
            f.truncate(0)
            f.write(f"127.0.0.1 localhost\n10.94.0.2 {NAME}\n")
        deadline = time.monotonic() + 20
        after = before
        while time.monotonic() < deadline and not after["latest_handshake"]:
            time.sleep(0.2)
            after = _peer(server)
        print(f"\n[reresolve] before {before['endpoint']}, after {after['endpoint']}, "
              f"handshake {after['latest_handshake']}")
        assert after["latest_handshake"], (after, server.log_tail())
        assert after["endpoint"].startswith("10.94.0.2:"), after
        assert "now resolves to 10.94.0.2" in server.log.read_text()
        assert s_ns.ping("10.95.0.2", count=2, timeout=2), "the peer is not reached"
    finally:
        if wg is not None:
            wg.stop()
        server.stop()
        shutil.rmtree(etc, ignore_errors=True)
