"""A real daemon serves /metrics in its namespace; after traffic the counters match
``tundctl status --json``, ``tundctl dump`` agrees, and ``status --watch`` refreshes."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.netns import Netns, unique, veth
from tests.sites import Site
from tund.ctl import render

pytestmark = pytest.mark.usefixtures("privileged")

PORT = 55555
METRICS = "127.0.0.1:9586"
UA, UB = "10.235.10.1", "10.235.10.2"      # underlay (veth)
IA, IB = "10.235.11.1", "10.235.11.2"      # overlay (tun)

SCRAPE = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
          f"'http://{METRICS}/metrics', timeout=10).read().decode())")


def _config(ifname: str, inner: str, endpoint: str, metrics: bool) -> str:
    daemon = f'[daemon]\nmetrics_listen = "{METRICS}"\n' if metrics else ""
    return f"""{daemon}
[interfaces.{ifname}]
mode = "tun"
addresses = ["{inner}/24"]

[tunnels.t1]
interface = "{ifname}"
transport = "tcp"
{endpoint}
encryption = "none"
"""


def scrape(site: Site) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = site.ns.run(sys.executable, "-c", SCRAPE).stdout
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "errors", "restarts")


def _numbers(t: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(t.get(k) or 0) for k in COUNTERS)


def test_metrics_match_status_after_traffic(tmp_path: Path) -> None:
    na, nb = Netns.make("opa"), Netns.make("opb")
    veth(na, f"{UA}/24", nb, f"{UB}/24")
    a, b = Site(na, tmp_path / "a", "a"), Site(nb, tmp_path / "b", "b")
    ia, ib = unique("opt"), unique("opt")
    a.write(_config(ia, IA, f'listen = "{UA}:{PORT}"', metrics=True))
    b.write(_config(ib, IB, f'remote = "{UA}:{PORT}"', metrics=False))
    try:
        a.start()
        b.start()
        b.ns.wait_ping(IA, within=20)
        assert b.ns.ping(IA, count=5, interval=0.2)
        a.wait_state("t1", "up")

        # counters may still move (late replies, IPv6 noise): take a scrape between two
        # equal status readings, so that all three describe the same moment
        for _ in range(20):
            before = a.tunnel("t1")
            m = scrape(a)
            after = a.tunnel("t1")
            if _numbers(before) == _numbers(after):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"counters never settled: {before} / {after}")
        lbl = (("tunnel", "t1"),)
        for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "errors", "restarts"):
            assert m[(f"tund_tunnel_{key}_total", lbl)] == after[key], key
        assert after["rx_packets"] >= 5 and after["tx_packets"] >= 5
        assert m[("tund_tunnel_up", lbl)] == 1
        assert m[("tund_tunnel_state", (("state", "up"), ("tunnel", "t1")))] == 1
        assert m[("tund_tunnel_state", (("state", "failed"), ("tunnel", "t1")))] == 0
        for cause, n in after["drops"].items():
            assert m[("tund_tunnel_drops_total", (("cause", cause), ("tunnel", "t1")))] == n
        assert m[("tund_interface_exists", (("interface", ia),))] == 1
        assert m[("tund_reloads_total", ())] == 0

        # a reload is counted with its outcome and time
        t0 = time.time()
        a.reload()
        m = scrape(a)
        assert m[("tund_reloads_total", ())] == 1
        assert m[("tund_last_reload_success", ())] == 1
        assert m[("tund_last_reload_timestamp_seconds", ())] >= t0 - 1

        # dump agrees with status; watch refreshes
        row = dict(zip(render.DUMP_COLUMNS, a.ctl("dump").stdout.rstrip("\n").split("\t"),
                       strict=True))
        now = a.tunnel("t1")
        assert (row["tunnel"], row["state"], row["role"]) == ("t1", "up", "listen")
        assert int(row["rx_bytes"]) == now["rx_bytes"]
        assert row["encryption"] == "off" and row["peer"].startswith(UB)
        watched = a.ctl("status", "--watch", "--interval", "0.2", "--count", "2").stdout
        assert watched.count("Every 0.2s: tundctl status") == 2
        assert watched.count("tunnel: t1") == 2

        # b has no metrics_listen: nothing listens there
        p = b.ns.run(sys.executable, "-c", SCRAPE, check=False)
        assert p.returncode != 0 and "Connection refused" in p.stderr
    finally:
        a.stop()
        b.stop()
