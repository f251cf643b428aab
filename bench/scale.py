#!/usr/bin/env python3
"""Scale figures: N tunnels in one daemon (default 256), WireGuard over UDP.

Two throwaway namespaces ``pfsA`` / ``pfsB`` joined by a veth (10.206.0.1 <-> 10.206.0.2);
each runs one tund daemon with N tunnels (A listens on ports 40000+i, B connects), inner
addresses 10.207.i.1 / 10.207.i.2 (i < 256; the third octet wraps). Measures, on daemon A:

* ``startup_s``: from spawning both daemons until every tunnel of A is ``up`` with an
  established session (both daemons start at once on the same CPUs, cold: no state
  left by an earlier run), as A's log dates its last ``handshaking -> up``; A's status
  is polled every ``POLL`` s over its control socket until all are up
  (``startup_polled_s``: when a poll saw it; ``progress``: the tunnels up at each poll;
  at 0.5 s the polls' exact counters cost the workers as much CPU as their start);
* ``pss_mib_per_tunnel``: Pss (``/proc/PID/smaps_rollup``) of daemon A and all its
  descendants, divided by N;
* ``reload_s``: B's config changes one tunnel in a way its worker restarts for
  (``reconnect_max`` 10 -> 9; a keepalive change no longer restarts anything),
  ``tundctl reload`` runs, until that tunnel has a new worker with an established session
  (a new ``latest_handshake``); ``reload_cmd_s``: until ``tundctl reload`` answered.

Prints one JSON object (also written to --out). Run as root. Removes what it created.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (run.sh --rev sets PYTHONSAFEPATH)
from peers_bed import control_request  # bench/ is the script's own folder

NS_A, NS_B = "pfsA", "pfsB"
#: seconds between status polls while the tunnels come up: an exact status asks every
#: worker for its counters (256 wake-ups a poll), so polling fast slows what it measures
POLL = 2.0
VETH_A, VETH_B = "pfsvA", "pfsvB"
OUTER_A, OUTER_B = "10.206.0.1", "10.206.0.2"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def ns(name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", name, *cmd, check=check)


def testbed_down() -> None:
    for n in (NS_A, NS_B):
        if n in sh("ip", "netns", "list").stdout.split():
            for pid in sh("ip", "netns", "pids", n, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", n, check=False)


def testbed_up() -> None:
    testbed_down()
    sh("ip", "netns", "add", NS_A)
    sh("ip", "netns", "add", NS_B)
    sh("ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B,
       "netns", NS_B)
    for n, dev, addr in ((NS_A, VETH_A, OUTER_A), (NS_B, VETH_B, OUTER_B)):
        ns(n, "ip", "link", "set", "lo", "up")
        ns(n, "ip", "addr", "add", f"{addr}/24", "dev", dev)
        ns(n, "ip", "link", "set", dev, "up")


def control(sd: Path, side: str) -> Path:
    """Daemon ``side``'s control socket, in a directory of its own: a daemon keeps its
    state files (peers.json, counters.json) beside its socket, and two daemons must not
    share them (A would read B's peers as its own)."""
    return sd / side / "control.sock"


def config(side: str, n: int, sd: Path, keys: dict[str, str], changed0: bool = False) -> str:
    lines = [f'[daemon]\ncontrol_socket = "{control(sd, side)}"\n']
    other = "B" if side == "A" else "A"
    for i in range(n):
        host = 1 if side == "A" else 2
        lines.append(f'[interfaces.pfs{side}{i}]\nmode = "tun"\npersist = false\nmtu = 1420\n'
                     f'addresses = ["10.207.{i % 256}.{host}/24"]\n')
        endpoint = (f'listen = "{OUTER_A}:{40000 + i}"' if side == "A"
                    else f'remote = "{OUTER_A}:{40000 + i}"')
        rmax = 9.0 if changed0 and i == 0 else 10.0
        lines.append(f'[tunnels.t{i}]\ninterface = "pfs{side}{i}"\ntransport = "udp"\n'
                     f'{endpoint}\nencryption = "wireguard"\nreconnect_max = {rmax}\n'
                     f'private_key_file = "{sd}/{side}.key"\n'
                     f'peer_public_key = "{keys[other]}"\n')
    return "\n".join(lines)


def status(venv: str, nsname: str, sock: Path) -> dict | None:
    """The daemon's ``status`` (what ``tundctl status --json`` prints), asked over its
    control socket from this process. None if no answer."""
    reply = control_request(sock, "status", timeout=15)
    return reply.get("result") if reply and reply.get("ok") else None


def steal_s() -> float:
    """CPU seconds the hypervisor has taken from this machine's CPUs since boot (the
    ``steal`` column of /proc/stat): a start-up that ran while the host took many is slower
    for that, not for tund."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def last_up(log: Path) -> float | None:
    """The unix time of the daemon's last "handshaking -> up" transition in ``log`` (its
    log lines start with the local time, to the millisecond)."""
    last = None
    for line in log.read_text(errors="replace").splitlines():
        if "handshaking -> up" in line:
            t = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            last = t if last is None else max(last, t)
    return last


def all_up(st: dict | None, n: int) -> int:
    if st is None:
        return 0
    return sum(1 for t in st["tunnels"].values()
               if t.get("state") == "up" and t.get("session") == "established")


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` used so far."""
    total = 0
    for p in pids:
        try:
            rest = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(rest[11]) + int(rest[12])
    return total / os.sysconf("SC_CLK_TCK")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def pss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", required=True)
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--out")
    a = ap.parse_args()
    sd = Path("/tmp/pf-bench/scale")
    sd.mkdir(parents=True, exist_ok=True)
    keys = {}
    for side in "AB":
        priv = sh(f"{a.venv}/bin/tundctl", "genkey").stdout.strip()
        (sd / f"{side}.key").write_text(priv + "\n")
        os.chmod(sd / f"{side}.key", 0o600)
        keys[side] = subprocess.run([f"{a.venv}/bin/tundctl", "pubkey"], input=priv,
                                    capture_output=True, text=True, check=True).stdout.strip()
    for side in "AB":
        (sd / f"{side}.toml").write_text(config(side, a.n, sd, keys))
        # a cold start: no peers or counters left by an earlier run (its peers' ports are
        # gone; a worker would first contact a stale address)
        (sd / side).mkdir(exist_ok=True)
        for stale in ("peers.json", "counters.json"):
            (sd / side / stale).unlink(missing_ok=True)
    res: dict[str, object] = {"tunnels": a.n}
    procs: list[subprocess.Popen[bytes]] = []
    testbed_up()
    try:
        t0, wall0, steal0 = time.monotonic(), time.time(), steal_s()
        for side, nsname in (("A", NS_A), ("B", NS_B)):
            log = open(sd / f"{side}.log", "wb")  # noqa: SIM115 (the daemon's, for its life)
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", nsname, f"{a.venv}/bin/tund", "--config",
                 str(sd / f"{side}.toml"), "--control-socket", str(control(sd, side))],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        up = 0
        progress: list[tuple[float, int]] = []  # (s, tunnels up): a late straggler shows
        while time.monotonic() - t0 < a.timeout:
            up = all_up(status(a.venv, NS_A, control(sd, "A")), a.n)
            progress.append((round(time.monotonic() - t0, 1), up))
            if up == a.n:
                break
            time.sleep(POLL)
        res["progress"] = progress
        res["startup_polled_s"] = round(time.monotonic() - t0, 2) if up == a.n else None
        last = last_up(sd / "A.log") if up == a.n else None
        res["startup_s"] = round(last - wall0, 2) if last is not None else None
        res["steal_s"] = round(steal_s() - steal0, 2)  # CPU time the host took meanwhile
        res["up"] = up
        print(f"startup: {up}/{a.n} up after {time.monotonic() - t0:.1f}s", file=sys.stderr,
              flush=True)
        time.sleep(2.0)  # settle: imports done, first handshakes over
        pids = descendants(procs[0].pid)
        kib = pss_kib(pids)
        res["processes"] = len(pids)
        res["pss_mib_total"] = round(kib / 1024, 1)
        res["pss_mib_per_tunnel"] = round(kib / 1024 / a.n, 2)
        # where it goes: the daemon, its fork server (comm tund-zygote), the workers
        root = procs[0].pid
        zyg = [p for p in pids if comm(p) == "tund-zygote"]
        workers = [p for p in pids if p != root and p not in zyg]
        res["pss_mib"] = {"daemon": round(pss_kib([root]) / 1024, 1),
                          "fork_server": round(pss_kib(zyg) / 1024, 1),
                          "worker_avg": round(pss_kib(workers) / 1024 / max(1, len(workers)),
                                              2)}
        res["cpu_s"] = {"daemon": cpu_s([root]), "fork_server": cpu_s(zyg),
                        "workers": round(cpu_s(workers), 2)}
        # reload: one tunnel of B changes (reconnect_max), its worker restarts, re-handshakes
        before = (status(a.venv, NS_B, control(sd, "B")) or {}).get("tunnels", {}).get("t0", {})
        (sd / "B.toml").write_text(config("B", a.n, sd, keys, changed0=True))
        t1 = time.monotonic()
        try:
            r = ns(NS_B, f"{a.venv}/bin/tundctl", "--socket", str(control(sd, "B")), "reload",
                   check=False)
            res["reload_output"] = (r.stdout + r.stderr).strip()[-300:]
        except subprocess.TimeoutExpired:
            res["reload_output"] = "tundctl reload: no answer within 60 s"
        res["reload_cmd_s"] = round(time.monotonic() - t1, 3)
        done = None
        while time.monotonic() - t1 < 60:
            t = (status(a.venv, NS_B, control(sd, "B")) or {}).get("tunnels", {}).get("t0", {})
            if (t.get("session") == "established" and t.get("pid") != before.get("pid")
                    and t.get("latest_handshake") != before.get("latest_handshake")):
                done = time.monotonic() - t1
                break
            time.sleep(0.05)
        res["reload_s"] = round(done, 3) if done is not None else None
    finally:
        print(json.dumps(res), flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(res) + "\n")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:  # closing 256 devices takes a while on a busy machine
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(30)
        testbed_down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
