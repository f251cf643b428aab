"""Fault injection on the underlay: 5 % random packet loss during a 64 MiB transfer.

The loss comes from an nftables table of our own in namespace ``a`` (``numgen random
mod 100 < 5 drop`` on the underlay veth, both directions, with counters so the test can
prove packets were really dropped). Figures are printed (run with ``-s``) and copied
into tests/FAULTS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults import fault_sites, fi_name, start_pair, teardown_checked
from tests.netns import Netns
from tests.transfer import transfer

pytestmark = [pytest.mark.usefixtures("privileged"), pytest.mark.slow]

SIZE = 64 * 1024 * 1024
LOSS_PERCENT = 5


def _lossy(ns: Netns, table: str, dev: str) -> None:
    ns.run("nft", "-f", "-", input=f"""
table inet {table} {{
    chain in {{
        type filter hook input priority 0; policy accept;
        iifname "{dev}" counter
        iifname "{dev}" numgen random mod 100 < {LOSS_PERCENT} counter drop
    }}
    chain out {{
        type filter hook output priority 0; policy accept;
        oifname "{dev}" counter
        oifname "{dev}" numgen random mod 100 < {LOSS_PERCENT} counter drop
    }}
}}
""".encode())


def _counted(ns: Netns, table: str) -> tuple[int, int]:
    """(underlay packets seen, packets dropped) by our table, both directions."""
    out = json.loads(ns.run("nft", "-j", "list", "table", "inet", table).stdout)
    seen = dropped = 0
    for item in out["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        for expr in exprs:
            if "counter" in expr:
                n = int(expr["counter"]["packets"])
                if any("drop" in e for e in exprs):
                    dropped += n
                else:
                    seen += n
    return seen, dropped


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_transfer_completes_intact_under_5_percent_loss(tmp_path: Path, transport: str) -> None:
    ts = fault_sites(tmp_path)
    table = fi_name("t")
    try:
        start_pair(ts, transport)
        _lossy(ts.a.ns, table, ts.va)
        n, sha_s, sha_r, secs = transfer(ts.a.ns, ts.b.ns, ts.inner("b"), SIZE, timeout=150)
        seen, dropped = _counted(ts.a.ns, table)
        st = ts.b.tunnel("t1")
        print(f"\n[fault 6/{transport}] {LOSS_PERCENT}% underlay loss: {n} bytes in "
              f"{secs:.1f}s = {n * 8 / secs / 1e6:.0f} Mbit/s, sha256 "
              f"{'equal' if sha_s == sha_r else 'DIFFERENT'}; nft dropped {dropped} of {seen} "
              f"underlay packets (GSO/GRO-sized); b drops {st['drops']}, errors "
              f"{st['errors']}, restarts {st['restarts']}")
        assert n == SIZE and sha_s == sha_r
        assert dropped > 20 and 0.02 < dropped / seen < 0.08, (seen, dropped)  # real loss
        assert st["restarts"] == 0
        ts.a.ns.run("nft", "delete", "table", "inet", table)
        assert table not in ts.a.ns.run("nft", "list", "tables").stdout
        left = teardown_checked(ts)
        print(f"[fault 6/{transport}] {left.summary()}")
        assert left.clean(), left.summary()
    finally:
        ts.a.ns.run("nft", "delete", "table", "inet", table, check=False)
        ts.a.stop()
        ts.b.stop()
