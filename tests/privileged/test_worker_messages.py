"""A compromised worker's malformed message (issue 16.4) against a real daemon.

``tund --test-malformed-state 1`` makes the first worker send ``{"op": "state", ...,
"stats": {"rx_packets": "pwn", ...}}`` before its first packet. The daemon must kill it
and restart the tunnel through the backoff, log the field and the value, and keep
``status`` and ``/metrics`` answering with integer counters all along.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns import _ALL, Netns, unique
from tests.sites import Site

pytestmark = pytest.mark.usefixtures("privileged")

METRICS = "127.0.0.1:9587"
SCRAPE = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
          f"'http://{METRICS}/metrics', timeout=5).read().decode())")


def tms_netns() -> Netns:
    """A namespace named with this suite's prefix (destroyed by the privileged fixture)."""
    ns = Netns(unique("tms"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    _ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def test_a_malformed_state_message_replaces_the_worker_and_status_keeps_working(
        tmp_path: Path) -> None:
    ns = tms_netns()
    site = Site(ns, tmp_path / "s", "s")
    dev = unique("tms")
    site.write(f"""
        [daemon]
        metrics_listen = "{METRICS}"
        restart_backoff_min = 0.2

        [interfaces.{dev}]
        mode = "tun"
        addresses = ["10.231.0.1/24"]

        [tunnels.t1]
        interface = "{dev}"
        transport = "udp"
        listen = "127.0.0.1:55601"
        encryption = "none"
        """)
    site.start(extra_args=("--test-malformed-state", "1"))
    try:
        deadline = time.monotonic() + 20
        seen: dict[str, object] = {}
        while time.monotonic() < deadline:
            seen = site.tunnel("t1")  # tundctl status --json: must keep answering
            assert isinstance(seen["rx_packets"], int), seen
            if seen["restarts"] == 1 and seen["state"] == "connecting":
                break
            time.sleep(0.1)
        assert seen["restarts"] == 1 and seen["state"] == "connecting", seen
        err = str(seen["last_error"])
        assert "malformed control message" in err and "stats.rx_packets" in err, err
        assert "'pwn'" in err, err
        text = ns.run(sys.executable, "-c", SCRAPE).stdout
        assert 'tund_tunnel_rx_packets_total{tunnel="t1"} 0' in text.replace(".0", ""), text
        log = site.log.read_text()
        assert "field stats.rx_packets must be an integer >= 0 (got 'pwn')" in log, log[-3000:]
        time.sleep(1.0)
        assert site.tunnel("t1")["restarts"] == 1  # the replacement is healthy: no more
    finally:
        site.stop()
