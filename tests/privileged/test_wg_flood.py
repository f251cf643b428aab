"""A handshake flood does not starve the data path (issue 16.3).

Site ``a``: a tund daemon listening on UDP (one WireGuard tunnel). Site ``b``: wireguard-go,
the real peer, plus a second address on the same veth from which a flooder
(:mod:`tests.wg_flood`, a separate process) sends 20,000 initiations a second with a
valid mac1 (made from the public key alone) for 12 s. Measured: the ping RTT through the
tunnel idle, then under the flood: at most 1% lost and the average RTT under 5x idle; the
cookie replies tund sent (its status and what the flooder received) stay under 25 per
second. ``TUND_FLOOD_RATE`` asks for another rate (by hand; the goals stay the same).
The flooder prints what it really sent; the test fails if it fell short of 90% of the
asked rate (the figures would not mean anything).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.netns import tool_missing
from tests.sites import new_ifname, two_sites
from tests.wg_helpers import (
    KeyPair,
    WireGuardGo,
    dev_with_addr,
    disable_ipv6,
    wg_tunnel,
    write_key,
)

pytestmark = pytest.mark.usefixtures("privileged")

WG_PORT, TUND_PORT = 51820, 51903
INNER_A, INNER_B = "10.231.202.1", "10.231.202.2"
RATE = int(os.environ.get("TUND_FLOOD_RATE", "20000"))  # by hand: other rates
SECONDS = 12.0


def ping_stats(out: str) -> tuple[int, int, float]:
    """(sent, received, average RTT in ms) from ``ping -q`` output."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), float(rtt.group(1)) if rtt else float("inf")


def test_handshake_flood_leaves_the_tunnel_usable(tmp_path: Path) -> None:
    require(tool_missing("wireguard-go", "wg"))
    ts = two_sites(tmp_path)
    disable_ipv6(ts.a.ns, ts.b.ns)
    ka, kb = KeyPair.new(), KeyPair.new()
    tif = new_ifname("twg")
    ts.a.write(wg_tunnel(tif, "tun", INNER_A, "udp", "listen", f"{ts.ua}:{TUND_PORT}",
                         write_key(ts.a.dir / "a.key", ka.priv), kb.pub, mtu=1420))
    ts.a.start()
    wg = WireGuardGo(ts.b.ns, tmp_path / "wg", kb, WG_PORT)
    flooder_addr = ts.ub.rsplit(".", 1)[0] + ".3"
    ts.b.ns.run("ip", "addr", "add", f"{flooder_addr}/24", "dev",
                dev_with_addr(ts.b.ns, ts.ub))
    try:
        wg.set_peer(ka.pub, f"{INNER_A}/32", endpoint=f"{ts.ua}:{TUND_PORT}",
                    keepalive=1)
        wg.up(f"{INNER_B}/24")
        ts.b.ns.wait_ping(INNER_A, within=20)
        ping = ("ping", "-n", "-q", "-c", "200", "-i", "0.05", "-W", "1", INNER_A)
        _, idle_got, idle_rtt = ping_stats(ts.b.ns.run(*ping, check=False).stdout)
        assert idle_got == 200
        before = ts.a.tunnel("t1")
        log = tmp_path / "flood.json"
        flooder = ts.b.ns.spawn(sys.executable, "-m", "tests.wg_flood", "--bind", flooder_addr,
                                "--target", f"{ts.ua}:{TUND_PORT}", "--pub", ka.pub,
                                "--rate", str(RATE), "--seconds", str(SECONDS), log=log)
        time.sleep(1.5)  # the flood is on: the worker is under load
        sent, got, rtt = ping_stats(ts.b.ns.run(*ping, check=False).stdout)
        flooder.wait(SECONDS + 30)
        time.sleep(0.5)
        after = ts.a.tunnel("t1")
        report = json.loads(log.read_text().strip().splitlines()[-1])
        cookies = after["cookie_replies_sent"] - before["cookie_replies_sent"]
        limited = (after["wg_drops"].get("handshake_ratelimited", 0)
                   - before["wg_drops"].get("handshake_ratelimited", 0))
        print(f"flooder: {report}; idle RTT {idle_rtt:.3f} ms, under flood {rtt:.3f} ms; "
              f"ping {got}/{sent}; cookie replies sent {cookies} "
              f"({cookies / report['seconds']:.1f}/s), handshake_ratelimited {limited}, "
              f"queue drops {after['drops'].get('handshake_queue_full', 0)}")
        assert report["rate"] >= 0.9 * RATE, f"the flooder fell short: {report}"
        assert sent - got <= sent // 100, f"lost {sent - got} of {sent} pings"
        assert rtt < 5 * idle_rtt, f"RTT {rtt} ms under flood vs {idle_rtt} ms idle"
        assert cookies / report["seconds"] < 25
        assert report["replies"] == cookies
        assert after["pid"] == before["pid"]
    except AssertionError:
        print(f"--- tund ---\n{ts.a.log_tail()}\n--- wireguard-go ---\n{wg.log_tail()}")
        raise
    finally:
        ts.a.stop()
        wg.stop()
