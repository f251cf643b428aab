#!/usr/bin/env python3
"""Medians per implementation and the issue's goals as ratios, as Markdown.

Usage: report.py RESULTS.jsonl [--loss LOSS.jsonl] [--scale SCALE.json]
Only ratios within one run mean anything: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

PEERS = ("pyrelay-tcp", "openvpn-udp-aead", "wireguard-go", "wireguard-go-trixie")
TUND = ("tund-udp-wg", "tund-tcp-plain", "tund-udp-plain", "tund-wggo", "tund-wggo-trixie")
# The strongest userspace WireGuard (Debian 13's, with offloads): issue 20's yardstick
WGGO_BEST = "wireguard-go-trixie"
# Not a peer: the least a Python data path with tund's AEAD does (bench/tools/pyfloor.py)
FLOOR = "pyfloor-udp-aead"


def load(path: str | None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    if path is None or not Path(path).exists():
        return by
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if "error" not in r:
                by[r["impl"]][r["test"]].append(r)
            else:
                by[r["impl"]]["errors"].append(r)
    return by


def med(by: dict[str, dict[str, list[dict[str, Any]]]], impl: str, test: str,
        key: str) -> float | None:
    xs = [r[key] for r in by.get(impl, {}).get(test, []) if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def f(x: float | None, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--loss")
    ap.add_argument("--scale")
    a = ap.parse_args()
    by, loss = load(a.results), load(a.loss)
    out = ["| impl | single Mbit/s | tunnel CPU s/GB | RTT avg ms | idle RTT median ms "
           "| ok / errors |", "|---|---:|---:|---:|---:|---:|"]
    for i in by:
        out.append(f"| {i} | {f(med(by, i, 'tcp_single', 'mbps'))} | "
                   f"{f(med(by, i, 'tcp_single', 'tunnel_cpu_s_per_gb'), 1)} | "
                   f"{f(med(by, i, 'ping', 'rtt_avg_ms'), 3)} | "
                   f"{f(med(by, i, 'idle_ping', 'rtt_median_ms'), 3)} | "
                   f"{len(by[i].get('tcp_single', []))} / {len(by[i].get('errors', []))} |")
    if loss:
        out += ["", "Under 1% random loss on the underlay (nftables, both directions):", "",
                "| impl | single Mbit/s | retransmits |", "|---|---:|---:|"]
        for i in loss:
            out.append(f"| {i} | {f(med(loss, i, 'tcp_single', 'mbps'))} | "
                       f"{f(med(loss, i, 'tcp_single', 'retransmits'))} |")
    mb = lambda b, i: med(b, i, "tcp_single", "mbps")  # noqa: E731
    cpu = lambda i: med(by, i, "tcp_single", "tunnel_cpu_s_per_gb")  # noqa: E731
    # RTT: the anchors' average of 20 pings after iperf3, and the median of 100 idle pings
    rtts = {"RTT": lambda i: med(by, i, "ping", "rtt_avg_ms"),
            "idle RTT median": lambda i: med(by, i, "idle_ping", "rtt_median_ms")}
    low = {k: min((r for r in map(get, PEERS) if r is not None), default=None)
           for k, get in rtts.items()}
    goals: list[tuple[str, float | None, str, bool | None]] = []

    def goal(name: str, value: float | None, target: float, op: str) -> None:
        ok = None if value is None else (value >= target if op == ">=" else value <= target)
        goals.append((name, value, f"{op} {target:g}", ok))

    goal("tund-udp-wg / openvpn-udp-aead throughput", ratio(mb(by, "tund-udp-wg"),
         mb(by, "openvpn-udp-aead")), 4, ">=")
    goal("tund-udp-wg / openvpn-udp-aead CPU s/GB", ratio(cpu("tund-udp-wg"),
         cpu("openvpn-udp-aead")), 1 / 3, "<=")
    goal("tund-tcp-plain / pyrelay-tcp throughput", ratio(mb(by, "tund-tcp-plain"),
         mb(by, "pyrelay-tcp")), 1.5, ">=")
    goal("tund-wggo / wireguard-go throughput", ratio(mb(by, "tund-wggo"),
         mb(by, "wireguard-go")), 0.9, ">=")
    goal(f"tund-udp-wg / {WGGO_BEST} throughput", ratio(mb(by, "tund-udp-wg"),
         mb(by, WGGO_BEST)), 1.5, ">=")
    goal(f"tund-wggo-trixie / {WGGO_BEST} throughput", ratio(mb(by, "tund-wggo-trixie"),
         mb(by, WGGO_BEST)), 0.9, ">=")
    floor_idle = med(by, FLOOR, "idle_ping", "rtt_median_ms")
    goal(f"tund-udp-wg idle RTT median / {FLOOR} idle RTT median",
         ratio(med(by, "tund-udp-wg", "idle_ping", "rtt_median_ms"), floor_idle), 1.2, "<=")
    for k, get in rtts.items():
        for t in TUND:
            if get(t) is not None:
                goal(f"{t} {k} / lowest peer {k}", ratio(get(t), low[k]), 1.2, "<=")
    if loss:
        goal("1% loss: tund-udp-wg / openvpn-udp-aead throughput",
             ratio(mb(loss, "tund-udp-wg"), mb(loss, "openvpn-udp-aead")), 1, ">=")
        goal(f"1% loss: tund-udp-wg / {WGGO_BEST} throughput",
             ratio(mb(loss, "tund-udp-wg"), mb(loss, WGGO_BEST)), 1, ">=")
    if a.scale and Path(a.scale).exists():
        s = json.loads(Path(a.scale).read_text())
        n = s.get("tunnels")
        goal(f"scale: {n} tunnels up (s)", s.get("startup_s"), 10, "<=")
        goal("scale: PSS MiB per tunnel", s.get("pss_mib_per_tunnel"), 8, "<=")
        goal("scale: reload changing one tunnel (s)", s.get("reload_s"), 1, "<=")
    out += ["", "| goal | measured | target | met |", "|---|---:|---|---|"]
    for name, value, target, ok in goals:
        out.append(f"| {name} | {f(value, 2)} | {target} | "
                   f"{'-' if ok is None else ('yes' if ok else 'NO')} |")
    if any(get(FLOOR) is not None for get in rtts.values()):
        out += ["", "The Python floor of the RTT goal (what a Python data path with this AEAD "
                "can reach at best, and what tund adds to it):", "",
                "| ratio | measured |", "|---|---:|"]
        for k, get in rtts.items():
            floor = get(FLOOR)
            if floor is None:
                continue
            out.append(f"| {FLOOR} {k} / lowest peer {k} | {f(ratio(floor, low[k]), 2)} |")
            out += [f"| {t} {k} / {FLOOR} {k} | {f(ratio(get(t), floor), 2)} |"
                    for t in TUND if get(t) is not None]
    errs = [e for b in (by, loss) for i in b for e in b[i].get("errors", [])]
    if errs:
        out += ["", "Errors:"] + [f"- {e['impl']} rep {e['rep']}: {e['error'][:200]}"
                                  for e in errs]
    print("\n".join(out))


if __name__ == "__main__":
    main()
