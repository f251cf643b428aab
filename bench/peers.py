#!/usr/bin/env python3
"""Many peers on one tunnel through the real daemon (issues 17 and 20), printed as ratios.

Three throwaway namespaces: the server ``tpts<id>``, a client ``tptc<id>`` joined to it by
a veth (10.208.0.1 <-> 10.208.0.2) and a second client ``tfc<id>`` by another veth
(10.208.1.1 <-> 10.208.1.2). The server's tund has one tunnel ``vpn`` (WireGuard over
UDP, the default) with N peers (one ``[tunnels.vpn.peers.pI]`` each, allowed_ips
10.99.X.Y/32); peer ``p0`` is real: a tund client (single-peer form) in the first client
namespace; with N >= 2 so is ``p1``, in the second; the others are idle (keys only).
Run as root with the venv's python (``$VENV/bin/python bench/peers.py``). Measures, for
N = 1, N = 2 and N = 1,000 (``-n``):

* ``start_s``: from spawning the server daemon until its status shows the tunnel ``up``
  with N peers (asked over the control socket from this process every 20 ms);
* ``worker_pss_kib``: Pss of the tunnel's worker (``/proc/PID/smaps_rollup``) after the
  real peer's handshake and a transfer; per peer = (Pss(1000) - Pss(1)) / 999;
* ``mbps``: one iperf3 single-stream TCP transfer client -> server through the tunnel
  (``--reps`` runs of ``--seconds`` s, the median); also for the server's tunnel in the
  single-peer form (``peer_public_key``, no peers tables: offloads negotiated with the
  tund client, as users deploy one peer), ``single``: the other reading of "a one-peer
  tunnel" in issue 20's goal;
* with N >= 2, ``pair_runs``: p0 and p1 each run one iperf3 single-stream TCP transfer to
  the server at the same time for the same ``--seconds`` (one iperf3 server per client,
  ports 5201 and 5202), ``--reps`` times: each one's Mbit/s, ``pair_fairness`` (min / max,
  per run; goal >= 0.8) and ``pair_sum_over_one`` (their sum over p0 alone with the same
  N configured, alternating with it run by run; goal >= 0.9); ``alone_cpu_share`` and
  ``pair_cpu_share``: CPU seconds per wall second of the server's worker and each real
  peer's (1.0 = one core) and the machine's idle CPU (``idle``), alone and at once
  (which one is the bottleneck; ``pair_cpu_share_runs``: per pair run);
  ``server_udp_rcvbuf_errors_runs``: datagrams the server's kernel dropped per run (alone,
  pair) for a full receive buffer (where the TCP flows' losses come from when the
  server's worker is the bottleneck); ``tcp_retransmits_runs``: the iperf3 senders'
  retransmitted segments per run (alone; pair: p0, p1); ``tunnel_drops``: each tund's
  drops by cause (its status) after the transfers;
* ``--rounds`` times (default 2), alternating the single-peer form, N = 1, 2 and 1,000
  (medians; the largest reload time; pings lost summed);
* ``cpu_s_per_run``: CPU seconds the server's daemon and its worker used per iperf3 run,
  and ``worker_cpu_s_per_gb`` (the worker's CPU per GB carried: what the idle peers cost
  per byte, steadier than throughput on a shared machine);
* with N = 1,000 only, ``reload_ms``: a drop-in adding peer 1,001 is written and
  ``reload`` asked over the control socket, wall time until the reply (the worker kept:
  PID unchanged), while the real peer pings the server every 10 ms: ``ping_lost``.

Prints a Markdown table and one JSON object (also written to --out). Removes what it
created (namespaces, daemons stopped by PID), also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peers_bed import (  # bench/, the script's own directory
    CpuMeter,
    Daemon,
    in_ns,
    iperf_result,
    key_file,
    pss_kib,
    sh,
    stop_proc,
    wait,
)

from tund.keyformat import encode_key, public_from_private, random_private_key

RID = secrets.token_hex(2)
NS_S, NS_C = f"tpts{RID}", f"tptc{RID}"
VETH_S, VETH_C = f"tptvs{RID}", f"tptvc{RID}"
OUTER_S, OUTER_C = "10.208.0.1", "10.208.0.2"
NS_C1, VETH_S1, VETH_C1 = f"tfc{RID}", f"tfvs{RID}", f"tfvc{RID}"  # the second client
OUTER_S1, OUTER_C1 = "10.208.1.1", "10.208.1.2"
PORT = 51820
IPERF_PORTS = (5201, 5202)  # one iperf3 server per real peer
SINGLE = 0  # as N: the single-peer form (peer_public_key, no peers tables; offloads on)


def testbed_up() -> None:
    """The namespaces and one veth per client into the server's (a /24 each)."""
    for n in (NS_S, NS_C, NS_C1):
        print(f"[#] ip netns add {n}", file=sys.stderr)
        sh("ip", "netns", "add", n)
        sh(*in_ns(n, "ip", "link", "set", "lo", "up"))
        for scope in ("all", "default"):
            sh(*in_ns(n, "sysctl", "-q", "-w", f"net.ipv6.conf.{scope}.disable_ipv6=1"))
    for ns_c, vs, vc, a_s, a_c in ((NS_C, VETH_S, VETH_C, OUTER_S, OUTER_C),
                                   (NS_C1, VETH_S1, VETH_C1, OUTER_S1, OUTER_C1)):
        print(f"[#] ip link add {vs} netns {NS_S} type veth peer name {vc} netns {ns_c}",
              file=sys.stderr)
        sh("ip", "link", "add", vs, "netns", NS_S, "type", "veth", "peer", "name", vc,
           "netns", ns_c)
        for n, dev, addr in ((NS_S, vs, a_s), (ns_c, vc, a_c)):
            sh(*in_ns(n, "ip", "addr", "add", f"{addr}/24", "dev", dev))
            sh(*in_ns(n, "ip", "link", "set", dev, "up"))


def testbed_down() -> None:
    listed = sh("ip", "netns", "list").stdout.split()
    for n in (NS_S, NS_C, NS_C1):
        if n in listed:
            for pid in sh("ip", "netns", "pids", n, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", n, check=False)


def inner(i: int) -> str:
    return f"10.99.{(i + 2) >> 8}.{(i + 2) & 255}"


def peer_toml(i: int, pub: str) -> str:
    return f'[tunnels.vpn.peers.p{i}]\npublic_key = "{pub}"\nallowed_ips = ["{inner(i)}/32"]\n'


def iperf_clients(clients: list[str], seconds: int) -> list[tuple[float, int]]:
    """Single-stream TCP runs from each client namespace to the server through the tunnel,
    all started together for ``seconds`` (one iperf3 server each, on IPERF_PORTS);
    (Mbit/s each server received, segments its sender retransmitted), in the order of
    ``clients``."""
    ports = IPERF_PORTS[:len(clients)]
    servers = [subprocess.Popen(in_ns(NS_S, "iperf3", "-s", "-1", "-B", "10.99.0.1",
                                      "-p", str(port)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for port in ports]
    procs: list[subprocess.Popen[str]] = []
    try:
        time.sleep(0.3)
        procs = [subprocess.Popen(in_ns(ns, "iperf3", "-c", "10.99.0.1", "-p", str(port),
                                        "-t", str(seconds), "-J"),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for ns, port in zip(clients, ports, strict=True)]
        deadline = time.monotonic() + seconds + 30
        outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
                for p in procs]
        return [iperf_result(out, ns) for out, ns in zip(outs, clients, strict=True)]
    finally:
        for c in procs:  # done, unless something above failed
            stop_proc(c, 0)
        for srv in servers:  # each ends after its one client (-1)
            stop_proc(srv, 5)


def iperf(seconds: int) -> tuple[float, int]:
    """One single-stream TCP run client -> server through the tunnel; (Mbit/s received,
    segments retransmitted)."""
    return iperf_clients([NS_C], seconds)[0]


def client_daemon(a: argparse.Namespace, ns: str, d: Path, ifname: str, address: str,
                  remote: str, key: Path, server_pub: str) -> Daemon:
    """A tund client (the single-peer form) of the server's tunnel, in ``ns``."""
    return Daemon(a.venv, ns, d,
                  f'[interfaces.{ifname}]\nmode = "tun"\naddresses = ["{address}/16"]\n'
                  f'mtu = 1420\n\n[tunnels.t]\ninterface = "{ifname}"\n'
                  f'transport = "udp"\nremote = "{remote}:{PORT}"\n'
                  f'private_key_file = "{key}"\npeer_public_key = "{server_pub}"\n'
                  f'keepalive = 5\n')


def pair_figures(runs: list[list[float]], alone: float) -> dict[str, Any]:
    """Pair runs (p0, p1 Mbit/s each) as issue 20's figures; ``alone``: p0 by itself."""
    fair = [min(r) / max(r) if max(r) > 0 else 0.0 for r in runs]
    sums = [sum(r) for r in runs]
    return {"pair_runs": runs, "pair_fairness_runs": [round(f, 3) for f in fair],
            "pair_fairness": round(statistics.median(fair), 3),
            "pair_mbps": [statistics.median(r[i] for r in runs) for i in (0, 1)],
            "pair_sum_mbps": round(statistics.median(sums), 1),
            "pair_sum_over_one": round(statistics.median(sums) / alone, 3) if alone else 0.0}


def udp_rcvbuf_errors(ns: str) -> int:
    """Datagrams the kernel dropped in ``ns`` for a full socket receive buffer so far
    (``Udp: RcvbufErrors`` of /proc/net/snmp, read inside the namespace)."""
    rows = [line.split() for line in sh(*in_ns(ns, "cat", "/proc/net/snmp")).stdout.splitlines()
            if line.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])


def transfers(a: argparse.Namespace, res: dict[str, Any], pids: dict[str, int],
              daemon: int) -> None:
    """``--reps`` times: p0 alone, then (``pids`` has p1) p0 and p1 at once, so that the
    machine's load falls on both alike; the figures into ``res``."""
    alone, both = CpuMeter(pids | {"daemon": daemon}), CpuMeter(pids)
    mbps: list[float] = []
    pairs: list[list[float]] = []
    drops: dict[str, list[int]] = {"alone": [], "pair": []}
    retrans: dict[str, list[Any]] = {"alone": [], "pair": []}
    for _ in range(a.reps):
        d0 = udp_rcvbuf_errors(NS_S)
        m, r = alone.call(lambda: iperf(a.seconds))
        mbps.append(round(m, 1))
        retrans["alone"].append(r)
        d1 = udp_rcvbuf_errors(NS_S)
        drops["alone"].append(d1 - d0)
        if "p1" in pids:
            got = both.call(lambda: iperf_clients([NS_C, NS_C1], a.seconds))
            pairs.append([round(m, 1) for m, _ in got])
            retrans["pair"].append([r for _, r in got])
            drops["pair"].append(udp_rcvbuf_errors(NS_S) - d1)
    res["server_udp_rcvbuf_errors_runs"] = drops
    res["tcp_retransmits_runs"] = retrans
    res["mbps_runs"] = mbps
    res["mbps"] = statistics.median(mbps)
    res["cpu_s_per_run"] = {"daemon": round(alone.cpu["daemon"] / a.reps, 3),
                            "worker": round(alone.cpu["server"] / a.reps, 3)}
    gb = sum(mbps) * a.seconds / 8 / 1000
    res["worker_cpu_s_per_gb"] = round(alone.cpu["server"] / gb, 3)
    res["alone_cpu_share"] = {k: v for k, v in alone.shares().items() if k != "daemon"}
    if pairs:
        res["pair_cpu_share"] = both.shares()
        res["pair_cpu_share_runs"] = both.each
        res.update(pair_figures(pairs, res["mbps"]))


def run(n: int, a: argparse.Namespace, base: Path, keys: list[tuple[str, str]],
        server_key: tuple[str, str]) -> dict[str, Any]:
    """The server with ``n`` peers (p0 real; p1 too when ``n`` >= 2; ``SINGLE``: p0 in
    the single-peer form), the tund clients; the figures for ``n``."""
    d = base / (f"n{n}" if n != SINGLE else "single")
    d.mkdir(parents=True, exist_ok=True)
    skey = key_file(d / "s.key", server_key[0])
    ckey = key_file(d / "c.key", keys[0][0])
    server = Daemon(a.venv, NS_S, d / "s",
                    f'[daemon]\nping_interval = {a.ping_interval}\n'
                    f'ping_timeout = {max(5.0, 3 * a.ping_interval)}\n\n'
                    f'[interfaces.tptsv{RID}]\nmode = "tun"\naddresses = ["10.99.0.1/16"]\n'
                    f'mtu = 1420\n\n[tunnels.vpn]\ninterface = "tptsv{RID}"\n'
                    f'transport = "udp"\nlisten = "0.0.0.0:{PORT}"\n'
                    f'private_key_file = "{skey}"\n'
                    + (f'peer_public_key = "{keys[0][1]}"\n' if n == SINGLE else
                       "\n" + "\n".join(peer_toml(i, keys[i][1]) for i in range(n))))
    clients = [client_daemon(a, NS_C, d / "c", f"tptcv{RID}", inner(0), OUTER_S, ckey,
                             server_key[1])]
    if n >= 2:
        clients.append(client_daemon(a, NS_C1, d / "c1", f"tfcv{RID}", inner(1), OUTER_S1,
                                     key_file(d / "c1.key", keys[1][0]), server_key[1]))
    res: dict[str, Any] = {"peers": max(n, 1), "form": "single" if n == SINGLE else "peers"}
    try:
        t0 = server.start()
        if n == SINGLE:  # "connecting" until its peer writes (or "handshaking" with the
            # peer a previous round's daemon remembered): a worker is enough
            wait(lambda: server.vpn().get("pid"), 60, "the single-peer listener's worker")
        else:
            wait(lambda: (v := server.vpn()).get("state") == "up"
                 and len(v.get("peers", {})) == n, 60, f"the tunnel up with {n} peers")
        res["start_s"] = round(time.monotonic() - t0, 3)
        for client in clients:
            client.start()
        for client in clients:
            ping = in_ns(client.ns, "ping", "-n", "-q", "-c1", "-W1", "10.99.0.1")
            wait(lambda: sh(*ping, check=False).returncode == 0, 30,  # noqa: B023 (now)
                 f"a real peer's ping from {client.ns}", 0.1)
        worker = server.vpn()["pid"]
        assert server.proc is not None
        daemon = server.proc.pid  # ip netns exec execs tund: the same process
        pids = {"server": worker} | {f"p{i}": c.vpn("t")["pid"] for i, c in enumerate(clients)}
        transfers(a, res, pids, daemon)
        res["tunnel_drops"] = {"server": server.vpn().get("drops")} | {
            f"p{i}": c.vpn("t").get("drops") for i, c in enumerate(clients)}
        res["worker_pss_kib"] = pss_kib(worker)
        if n == a.n:
            res.update(reload_one(server, n, keys, worker))
    finally:
        for client in clients:
            client.stop()
        server.stop()
    return res


def reload_one(server: Daemon, n: int, keys: list[tuple[str, str]],
               worker: int) -> dict[str, Any]:
    """Add peer ``n`` by a drop-in and reload while p0 pings every 10 ms."""
    count = 300
    pinger = subprocess.Popen(in_ns(NS_C, "ping", "-n", "-q", "-i", "0.01", "-W", "1",
                                    "-c", str(count), "10.99.0.1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        (server.d / "tunnels.d" / "60-new.toml").write_text(peer_toml(n, keys[n][1]))
        t1 = time.monotonic()
        reply = server.ask("reload", timeout=30)
        ms = (time.monotonic() - t1) * 1000
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    got = [line for line in out.splitlines() if "received" in line]
    received = int(got[0].split(",")[1].split()[0]) if got else 0
    vpn = server.vpn()
    return {"reload_ms": round(ms, 1), "reload_ok": bool(reply and reply.get("ok")),
            "reload_actions": (reply or {}).get("result", {}).get("actions"),
            "worker_kept": vpn.get("pid") == worker,
            "peers_after": len(vpn.get("peers", {})),
            "pings": count, "ping_lost": count - received}


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one configuration: medians (throughput over every iperf3 run,
    the pairs' figures over every pair run), the largest reload time, the pings lost
    summed."""
    out = dict(runs[0])
    out["mbps"] = statistics.median(m for r in runs for m in r["mbps_runs"])
    for key in ("start_s", "worker_pss_kib", "worker_cpu_s_per_gb"):
        out[key] = statistics.median(r[key] for r in runs)
    for key in ("alone_cpu_share", "pair_cpu_share"):
        if key in out:
            out[key] = {k: statistics.median(r[key][k] for r in runs) for k in out[key]}
    if "pair_runs" in out:
        out.update(pair_figures([p for r in runs for p in r["pair_runs"]], out["mbps"]))
        out["pair_cpu_share_runs"] = [c for r in runs for c in r["pair_cpu_share_runs"]]
    for key in ("server_udp_rcvbuf_errors_runs", "tcp_retransmits_runs"):
        out[key] = {k: [x for r in runs for x in r[key][k]] for k in ("alone", "pair")}
    if "reload_ms" in out:
        out["reload_ms"] = max(r["reload_ms"] for r in runs)
        out["reload_ok"] = all(r["reload_ok"] and r["worker_kept"] for r in runs)
        out["worker_kept"] = out["reload_ok"]
        out["pings"] = sum(r["pings"] for r in runs)
        out["ping_lost"] = sum(r["ping_lost"] for r in runs)
    return out


Row = tuple[str, str, str, bool | None]


def pair_rows(m: dict[str, Any], one: dict[str, Any]) -> list[Row]:
    """Issue 20's two goals for two peers streaming at once, with ``m['peers']`` configured."""
    n, (p0, p1) = m["peers"], m["pair_mbps"]
    worst = min(m["pair_fairness_runs"])
    return [
        (f"two peers at once, {n} configured: min / max", f"{m['pair_fairness']:.2f} "
         f"(p0 {p0:.0f}, p1 {p1:.0f} Mbit/s; worst run {worst:.2f})", ">= 0.8",
         m["pair_fairness"] >= 0.8),
        (f"two peers at once, {n} configured: sum / one peer alone",
         f"{m['pair_sum_over_one']:.2f} ({m['pair_sum_mbps']:.0f} / {m['mbps']:.0f} Mbit/s; "
         f"{m['pair_sum_mbps'] / one['mbps']:.2f}x the 1-peer tunnel)", ">= 0.9",
         m["pair_sum_over_one"] >= 0.9),
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default=str(Path(sys.executable).parent.parent))
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ping-interval", type=float, default=1.0,
                    help="the server daemon's ping_interval (each pong carries every "
                         "peer's stats)")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.n < 3:
        ap.error(f"-n {a.n}: at least 3 (N = 1 and N = 2 are measured anyway)")
    base = Path(f"/tmp/tpt-bench-peers-{RID}")
    privs = [random_private_key() for _ in range(a.n + 2)]
    keys = [(encode_key(p), encode_key(public_from_private(p))) for p in privs]
    server_key = keys.pop()
    testbed_up()
    rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    rounds_two: list[dict[str, Any]] = []
    rounds_single: list[dict[str, Any]] = []
    try:  # alternating, so that the machine's other load falls on all alike
        for _ in range(a.rounds):
            rounds_single.append(run(SINGLE, a, base, keys, server_key))
            one_run = run(1, a, base, keys, server_key)
            rounds_two.append(run(2, a, base, keys, server_key))
            rounds.append((one_run, run(a.n, a, base, keys, server_key)))
    finally:
        testbed_down()
    one, many = merge([r[0] for r in rounds]), merge([r[1] for r in rounds])
    two, single = merge(rounds_two), merge(rounds_single)
    results: dict[str, Any] = {"one": one, "many": many, "rounds": rounds, "two": two,
                               "rounds_two": rounds_two, "single": single,
                               "rounds_single": rounds_single}
    per_peer = (many["worker_pss_kib"] - one["worker_pss_kib"]) / (a.n - 1)
    ratio = many["mbps"] / one["mbps"]
    vs_single = many["mbps"] / single["mbps"]
    cpu_ratio = many["worker_cpu_s_per_gb"] / one["worker_cpu_s_per_gb"]
    rows: list[Row] = [
        (f"start to tunnel up, {a.n} peers (s)", f"{many['start_s']:.2f}", "<= 2",
         many["start_s"] <= 2),
        ("start to tunnel up, 1 peer (s)", f"{one['start_s']:.2f}", "-", None),
        ("worker PSS, 1 / N peers (MiB)",
         f"{one['worker_pss_kib'] / 1024:.1f} / {many['worker_pss_kib'] / 1024:.1f}", "-", None),
        ("worker memory per peer (KiB)", f"{per_peer:.1f}", "<= 20", per_peer <= 20),
        (f"throughput {a.n - 1} idle + 1 / 1 peer", f"{ratio:.2f} ({many['mbps']:.0f} / "
         f"{one['mbps']:.0f} Mbit/s)", ">= 0.95", ratio >= 0.95),
        (f"throughput {a.n - 1} idle + 1 / the single-peer form (offloads on)",
         f"{vs_single:.2f} ({many['mbps']:.0f} / {single['mbps']:.0f} Mbit/s)", ">= 0.95",
         vs_single >= 0.95),
        *pair_rows(two, one),
        *pair_rows(many, one),
        (f"worker CPU per GB through the real peer, {a.n} / 1 peer",
         f"{cpu_ratio:.2f} ({many['worker_cpu_s_per_gb']:.2f} / "
         f"{one['worker_cpu_s_per_gb']:.2f} s/GB)", "-", None),
        (f"reload adding 1 peer to {a.n} (ms)", f"{many['reload_ms']:.0f}", "<= 100",
         many["reload_ms"] <= 100 and many["reload_ok"] and many["worker_kept"]),
        ("pings lost during that reload", f"{many['ping_lost']} / {many['pings']}", "0",
         many["ping_lost"] == 0),
    ]
    print("| figure | measured | goal | met |\n|---|---:|---|---|")
    for name, got, goal, met in rows:
        print(f"| {name} | {got} | {goal} | {'-' if met is None else 'yes' if met else 'NO'} |")
    results["per_peer_kib"] = round(per_peer, 1)
    results["throughput_ratio"] = round(ratio, 3)
    results["throughput_ratio_vs_single_form"] = round(vs_single, 3)
    results["worker_cpu_per_gb_ratio"] = round(cpu_ratio, 3)
    for name, m in (("two", two), ("many", many)):
        results[f"pair_fairness_{name}"] = m["pair_fairness"]
        results[f"pair_sum_over_one_{name}"] = m["pair_sum_over_one"]
        results[f"pair_sum_over_tunnel_{name}"] = round(m["pair_sum_mbps"] / one["mbps"], 3)
    print(json.dumps(results), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
