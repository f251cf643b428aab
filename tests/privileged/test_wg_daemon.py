"""Two real tund daemons joined by WireGuard (the default encryption), in namespaces.

Transport (UDP, TCP), device mode (tun, tap) and preshared key (none, one), all 8 combinations:
the first ping drives the handshake, pings go both ways, and ``tundctl
status --json`` shows per tunnel the peer's public key, the endpoint, the latest
handshake (a unix time), the session state and drops by cause (none on a clean run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.sites import two_sites
from tests.wg_helpers import WgPair, wg_pair

pytestmark = pytest.mark.usefixtures("privileged")

WG_CAUSES = ("malformed", "bad_mac", "decrypt", "unknown_peer", "stale_timestamp", "flood",
             "unknown_receiver", "bad_cookie", "expired", "replay", "invalid_packet",
             "cookie", "no_session", "handshake_timeout")


def _check_status(st: dict[str, Any], peer_pub: str, endpoint: str, t0: float) -> None:
    assert st["encryption"] == "wireguard"
    assert st["state"] == "up", st
    assert st["peer_public_key"] == peer_pub
    assert st["endpoint"] == endpoint
    assert st["session"] == "established", st
    assert isinstance(st["latest_handshake"], float)
    assert t0 - 1 <= st["latest_handshake"] <= time.time() + 1, st
    assert st["handshakes_sent"] >= 0 and st["cookie_replies_sent"] == 0
    assert isinstance(st["drops"], dict) and isinstance(st["wg_drops"], dict)
    assert not any(st["drops"].get(c) for c in WG_CAUSES), st["drops"]
    assert st["wg_drops"] == {}, st["wg_drops"]
    assert st["rx_packets"] > 0 and st["tx_packets"] > 0
    for secret in ("private_key", "preshared_key"):
        assert secret not in st


CASES = [(t, m, p) for t in ("udp", "tcp") for m in ("tun", "tap") for p in (False, True)]


@pytest.mark.parametrize("transport, mode, psk", CASES,
                         ids=[f"{t}-{m}-{'psk' if p else 'nopsk'}" for t, m, p in CASES])
def test_ping_both_ways_and_status(tmp_path: Path, transport: str, mode: str,
                                   psk: bool) -> None:
    ts = two_sites(tmp_path)
    t0 = time.time()
    pair: WgPair = wg_pair(ts, mode=mode, transport=transport, psk=psk)
    try:
        # Nothing has been sent yet; the first ping starts the handshake.
        ts.b.ns.wait_ping(pair.inner("a"), within=20)
        assert ts.a.ns.ping(pair.inner("b"), count=3)
        endpoint = f"{ts.ua}:51900"
        a, b = ts.a.tunnel("t1"), ts.b.tunnel("t1")
        _check_status(a, pair.kb.pub, endpoint, t0)
        _check_status(b, pair.ka.pub, endpoint, t0)
        assert b["handshakes_sent"] >= 1  # b (role remote) initiates
        assert a["peer"] is not None and a["peer"].startswith(ts.ub + ":")
        # a larger packet near the MTU, both ways
        assert ts.a.ns.run("ping", "-n", "-c", "2", "-s", "1300", "-W", "2",
                           pair.inner("b"), check=False).returncode == 0
        # the private key never leaves the daemon
        for site, k in ((ts.a, pair.ka), (ts.b, pair.kb)):
            assert k.priv not in site.ctl("status", "--json").stdout
            assert k.priv not in site.log.read_text()
            if pair.psk:
                assert pair.psk not in site.log.read_text()
    except AssertionError:
        print(pair.logs())
        raise
    finally:
        pair.stop()
