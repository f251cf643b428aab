#!/usr/bin/env python3
"""Idle RTT through a tunnel: 100 pings at 0.05 s on an otherwise quiet tunnel.

Runs ``ping`` in namespace NS to TARGET and prints one JSON line (test ``idle_ping``) with
the median, 10th and 90th percentile, mean and loss of the per-packet times. The anchors'
``measure.py`` ping test reports the average of 20 pings taken right after iperf3, which
single stragglers of a few ms decide; the median of 100 says what a typical packet sees.

  idle_ping.py --ns NS --target ADDR --impl NAME --rep N [--count 100] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess


def summarize(times: list[float], sent: int) -> dict[str, float | int]:
    """Median / p10 / p90 / mean (ms) of ``times`` and loss % of ``sent``."""
    t = sorted(times)
    n = len(t)
    return {"n": n, "loss_pct": round(100.0 * (sent - n) / sent, 1) if sent else 0.0,
            "rtt_median_ms": round(statistics.median(t), 3),
            "rtt_p10_ms": round(t[n // 10], 3), "rtt_p90_ms": round(t[n * 9 // 10], 3),
            "rtt_mean_ms": round(statistics.fmean(t), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--impl", required=True)
    ap.add_argument("--rep", type=int, required=True)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.05)
    a = ap.parse_args()
    rec: dict[str, object] = {"impl": a.impl, "rep": a.rep, "test": "idle_ping"}
    limit = int(a.count * a.interval) + 10
    try:
        out = subprocess.run(["ip", "netns", "exec", a.ns, "ping", "-n", "-c", str(a.count),
                              "-i", str(a.interval), "-W", "2", "-w", str(limit), a.target],
                             capture_output=True, text=True, timeout=limit + 5).stdout
        times = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        if times:
            rec.update(summarize(times, a.count))
        else:
            rec["error"] = f"no replies: {out[-200:]}"
    except subprocess.TimeoutExpired:
        rec["error"] = "ping timeout"
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
