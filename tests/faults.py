"""Shared helpers for the fault-injection suite (``tests/privileged/test_fault_*.py``).

* :func:`fault_sites`: two namespaces (prefix ``fi``) joined by an ``fi`` veth underlay,
  a :class:`~tests.sites.Site` in each (underlay 10.76.0.0/24, tunnel 10.77.0.0/24).
* :class:`Probe`: a sequence-numbered UDP sender (one datagram every ``interval``) in one
  namespace and a receiver in the other, both ``python -m tests.faults``; the
  :class:`ProbeResult` gives loss and the longest interruption (the longest time between
  two consecutive arrivals, and the longest run of missing sequence numbers).
* Leak checks from ``/proc``: relay workers (:func:`relay_workers`, :func:`workers_in`;
  the fork server is not one, see :func:`fork_servers`),
  which device each one holds (:func:`tun_ifaces`), fd counts, children, CPU time, and
  :func:`teardown_checked`, which stops both daemons and proves nothing is left behind
  (no process in either namespace, no process in their netns after deletion, no
  namespace, no ``fi`` device).

Every wait is bounded in time; processes are stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netns import Netns, unique
from tests.sites import Site, TwoSites, plain_tunnel
from tests.wg_helpers import KeyPair, wg_tunnel, write_key
from tund.relay.process.zygote import ZYGOTE_COMM

PREFIX = "fi"
UNDERLAY_NET = 76  # 10.76.0.0/24 underlay; TwoSites.inner() gives 10.77.0.x inside
PROBE_PORT = 47000
_PKT = struct.Struct("!Qd")  # sequence number, sender's CLOCK_MONOTONIC


# --------------------------------------------------------------------------- sites


def fi_name(kind: str = "") -> str:
    """A device name with this suite's prefix, unique to the run (fits IFNAMSIZ)."""
    return unique(PREFIX + kind)


@dataclass
class FaultSites(TwoSites):
    """:class:`~tests.sites.TwoSites` plus the names of the underlay veth ends."""

    va: str = ""
    vb: str = ""


def fault_sites(tmp: Path) -> FaultSites:
    """Namespaces ``tnfia…``/``tnfib…`` joined by a veth ``fiu…``/``fiv…`` pair."""
    na, nb = Netns.make(PREFIX + "a"), Netns.make(PREFIX + "b")
    ua, ub = f"10.{UNDERLAY_NET}.0.1", f"10.{UNDERLAY_NET}.0.2"
    va, vb = fi_name("u"), fi_name("v")
    subprocess.run(["ip", "link", "add", va, "netns", na.name, "type", "veth", "peer", "name",
                    vb, "netns", nb.name], check=True)
    for ns, dev, addr in ((na, va, ua), (nb, vb, ub)):
        ns.run("ip", "addr", "add", f"{addr}/24", "dev", dev)
        ns.run("ip", "link", "set", dev, "up")
    return FaultSites(Site(na, tmp / "a", "a"), Site(nb, tmp / "b", "b"), ua, ub,
                      UNDERLAY_NET, va, vb)


def start_pair(ts: TwoSites, transport: str, *, daemon_a: str = "", daemon_b: str = "",
               extra_tun_a: str = "", extra_tun_b: str = "", port: int = 55555,
               tunnel: str = "t1", encryption: str = "none") -> tuple[str, str]:
    """One TUN tunnel: ``a`` listens on its underlay address, ``b`` connects.

    ``encryption``: ``"none"`` (plaintext) or ``"wireguard"`` (keys written to each site's
    directory). Starts both daemons and waits until a ping crosses (b -> a); returns the
    device names.
    """
    ia, ib = fi_name(), fi_name()
    ts.a.write(daemon_a + tunnel_config(ts, "a", ia, transport, port, tunnel, encryption,
                                        extra_tun_a))
    ts.b.write(daemon_b + tunnel_config(ts, "b", ib, transport, port, tunnel, encryption,
                                        extra_tun_b))
    ts.a.start()
    ts.b.start()
    ts.b.ns.wait_ping(ts.inner("a"), within=20)
    return ia, ib


def tunnel_config(ts: TwoSites, side: str, ifname: str, transport: str, port: int,
                  tunnel: str, encryption: str, extra_tun: str = "") -> str:
    """Side ``side``'s config of the pair (``a`` listens on ``ts.ua:port``, ``b`` connects).

    With WireGuard, both key pairs are made once per pair (kept in ``a``'s directory, so a
    rewritten config of either side keeps its keys).
    """
    role = "listen" if side == "a" else "remote"
    endpoint = f"{ts.ua}:{port}"
    if encryption == "none":
        return plain_tunnel(ifname, "tun", ts.inner(side), transport, role, endpoint,
                            tunnel=tunnel, extra_tun=extra_tun)
    keys = _pair_keys(ts)
    me, other = (keys[0], keys[1]) if side == "a" else (keys[1], keys[0])
    site = ts.a if side == "a" else ts.b
    priv = write_key(site.dir / f"{side}.key", me.priv)
    return wg_tunnel(ifname, "tun", ts.inner(side), transport, role, endpoint, priv, other.pub,
                     tunnel=tunnel, extra_tun=extra_tun)


def _pair_keys(ts: TwoSites) -> tuple[KeyPair, KeyPair]:
    saved = ts.a.dir / "pair-keys.json"
    if saved.exists():
        a, b = json.loads(saved.read_text())
        return KeyPair(*a), KeyPair(*b)
    pair = KeyPair.new(), KeyPair.new()
    saved.write_text(json.dumps([[k.priv, k.pub] for k in pair]))
    return pair


def daemon_section(**keys: float | int) -> str:
    """A ``[daemon]`` table with the given supervision keys."""
    return "[daemon]\n" + "".join(f"{k} = {v!r}\n" for k, v in keys.items())


def status(site: Site, tunnel: str | None = None, timeout: float = 10) -> dict[str, Any]:
    """``status`` over the control socket from this process (faster than tundctl)."""
    from tund.control import client

    return client.call(str(site.sock), "status", {"tunnel": tunnel} if tunnel else None,
                       timeout=timeout)


def call(site: Site, cmd: str, args: dict[str, Any] | None = None,
         timeout: float = 60) -> dict[str, Any]:
    from tund.control import client

    return client.call(str(site.sock), cmd, args, timeout=timeout)


def wait_until(what: str, cond: Any, within: float, step: float = 0.02) -> float:
    """Poll ``cond()`` until true; return the seconds it took, or fail naming ``what``."""
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(step)


# --------------------------------------------------------------------------- probe


@dataclass
class ProbeResult:
    """What the receiver saw of the sender's sequence."""

    sent: int
    seqs: list[int]
    arrivals: list[float]
    interval: float
    stopped_at: float  # monotonic time the sender was told to stop

    @property
    def received(self) -> int:
        return len(set(self.seqs))

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def duplicates(self) -> int:
        return len(self.seqs) - self.received

    @property
    def longest_gap(self) -> float:
        """The longest time (s) between two consecutive arrivals (the interruption)."""
        if len(self.arrivals) < 2:
            return float("inf")
        return max(b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False))

    @property
    def gap_at(self) -> float:
        """Monotonic time at which the longest gap began."""
        gaps = [(b - a, a) for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]
        return max(gaps)[1] if gaps else 0.0

    @property
    def longest_missing_run(self) -> int:
        """The longest run of sequence numbers that never arrived (between or at the end)."""
        got = sorted(set(self.seqs))
        runs = [b - a - 1 for a, b in zip([-1, *got], [*got, self.sent], strict=False)]
        return max(runs) if runs else self.sent

    @property
    def recovered(self) -> bool:
        """Traffic flowed again before the sender stopped (the last 0.5 s mostly arrived)."""
        tail = int(0.5 / self.interval)
        last = set(range(max(0, self.sent - tail - int(0.3 / self.interval)),
                         self.sent - int(0.3 / self.interval)))
        return len(last & set(self.seqs)) >= 0.8 * max(1, len(last))

    def summary(self) -> str:
        pct = 100.0 * self.lost / max(1, self.sent)
        return (f"sent {self.sent}, lost {self.lost} ({pct:.1f}%), dup {self.duplicates}, "
                f"longest gap {self.longest_gap * 1000:.0f} ms, longest missing run "
                f"{self.longest_missing_run} x {self.interval * 1000:.0f} ms")


@dataclass
class Probe:
    """Sequence-numbered UDP datagrams from ``src`` to ``dst_addr`` (in ``dst``).

    Use as a context manager or :meth:`start` / :meth:`stop`; :meth:`stop` returns the
    :class:`ProbeResult`. Send errors (no route while a device is gone) are ignored:
    the datagram simply counts as lost.
    """

    src: Netns
    dst: Netns
    dst_addr: str
    port: int = PROBE_PORT
    interval: float = 0.01
    _recv: subprocess.Popen[str] | None = field(default=None, init=False)
    _send: subprocess.Popen[str] | None = field(default=None, init=False)

    def start(self) -> Probe:
        self._recv = subprocess.Popen(
            self.dst.argv(sys.executable, "-m", "tests.faults", "recv", self.dst_addr,
                          str(self.port)), stdout=subprocess.PIPE, text=True,
            cwd=_repo_root())
        assert self._recv.stdout is not None
        if not _readline(self._recv.stdout, 10).startswith("ready"):
            self._kill()
            raise AssertionError("probe receiver did not start")
        self._send = subprocess.Popen(
            self.src.argv(sys.executable, "-m", "tests.faults", "send", self.dst_addr,
                          str(self.port), str(self.interval)), stdout=subprocess.PIPE,
            text=True, cwd=_repo_root())
        return self

    def stop(self, drain: float = 0.5) -> ProbeResult:
        assert self._send is not None and self._recv is not None
        stopped_at = time.monotonic()
        self._send.send_signal(signal.SIGTERM)
        sout, _ = self._send.communicate(timeout=10)
        time.sleep(drain)
        self._recv.send_signal(signal.SIGTERM)
        rout, _ = self._recv.communicate(timeout=10)
        s, r = json.loads(sout.strip().splitlines()[-1]), json.loads(rout.strip().splitlines()[-1])
        return ProbeResult(s["sent"], r["seqs"], r["t"], self.interval, stopped_at)

    def _kill(self) -> None:
        for p in (self._send, self._recv):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._kill()


def _repo_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _readline(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return str(stream.readline()) if ready else ""


class _Stop:
    flag = False


def _on_term(signum: int, frame: object) -> None:
    _Stop.flag = True


def _probe_send(host: str, port: int, interval: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq, t0 = 0, time.monotonic()
    while not _Stop.flag:
        # no route / unreachable: the datagram is lost, which is what we measure
        with contextlib.suppress(OSError):
            s.sendto(_PKT.pack(seq, time.monotonic()), (host, port))
        seq += 1
        delay = t0 + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"sent": seq}), flush=True)


def _probe_recv(host: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((host, port))
    s.settimeout(0.1)
    seqs: list[int] = []
    times: list[float] = []
    print("ready", flush=True)
    while not _Stop.flag:
        try:
            data = s.recv(64)
        except (TimeoutError, InterruptedError):
            continue
        if len(data) >= _PKT.size:
            seqs.append(_PKT.unpack_from(data)[0])
            times.append(time.monotonic())
    print(json.dumps({"seqs": seqs, "t": times}), flush=True)


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    netns: int  # inode of /proc/PID/ns/net
    cmdline: str
    comm: str = ""  # /proc/PID/comm: "tund-zygote" for the fork server, "relay:<tunnel>" ...


def _proc(pid: int, netns: int | None = None) -> Proc | None:
    """The process ``pid`` (None if gone, or not in network namespace ``netns``)."""
    try:
        ns = os.stat(f"/proc/{pid}/ns/net").st_ino
        if netns is not None and ns != netns:
            return None
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except (OSError, ValueError):
        return None
    rest = stat.rsplit(")", 1)[1].split()
    comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
    return Proc(pid, int(rest[1]), rest[0], ns, cmd, comm)


def processes(netns: int | None = None) -> list[Proc]:
    """All processes, or those in the network namespace with inode ``netns``."""
    out: list[Proc] = []
    for d in os.listdir("/proc"):
        if d.isdigit() and (p := _proc(int(d), netns)) is not None:
            out.append(p)
    return out


#: command-line starts (tund.proctitle) of the fork server / a worker, and of the daemon
RELAY_TITLES = ("tund: fork server", "tund: worker ")
DAEMON_TITLE = "tund: daemon "


def _relay_processes(netns: int | None) -> list[Proc]:
    return [p for p in processes(netns) if p.state != "Z" and (
        "-m tund.relay" in p.cmdline or p.cmdline.startswith(RELAY_TITLES))]


def relay_workers(netns: int | None = None) -> list[Proc]:
    """Live (not zombie) relay workers (in ``netns`` if given): ``python -m tund.relay``
    processes, spawned or forked by the fork server, but not the fork server itself
    (nor its short-lived middle processes, which carry its thread name too)."""
    return [p for p in _relay_processes(netns) if p.comm != ZYGOTE_COMM]


def fork_servers(netns: int | None = None) -> list[Proc]:
    """Live fork servers (``python -m tund.relay --fork-server``, thread name
    ``tund-zygote``), in ``netns`` if given."""
    return [p for p in _relay_processes(netns) if p.comm == ZYGOTE_COMM]


def netns_inode(ns: Netns) -> int:
    return os.stat(f"/run/netns/{ns.name}").st_ino


def workers_in(ns: Netns | int) -> list[Proc]:
    """Live relay workers whose network namespace is ``ns``."""
    return relay_workers(ns if isinstance(ns, int) else netns_inode(ns))


def orphan_workers(inodes: set[int]) -> list[Proc]:
    """Relay workers and fork servers in our namespaces whose parent is not a live tund
    daemon (forked workers are re-parented to the daemon, a child subreaper)."""
    out = []
    for p in _relay_processes(None):
        if p.netns not in inodes:
            continue
        parent = _proc(p.ppid)
        if parent is None or p.ppid == 1 or not (
                "-m tund " in parent.cmdline + " " or parent.cmdline.startswith(DAEMON_TITLE)):
            out.append(p)
    return out


def tun_ifaces(pid: int) -> list[str]:
    """The TUN/TAP devices ``pid`` holds open (from ``iff:`` in /proc/PID/fdinfo)."""
    out: list[str] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "/dev/net/tun":
                continue
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("iff:"):
                    out.append(line.split(None, 1)[1].strip())
        except OSError:
            continue
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> Counter[str]:
    """What the fds of ``pid`` are: socket, pipe, anon_inode:…, /dev/net/tun, files."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds[target.split(":[")[0] if ":[" in target else target] += 1
    return kinds


def stable_fd_count(pid: int, within: float = 5.0) -> int:
    """The fd count once it has not changed for 0.5 s (transient control connections)."""
    deadline = time.monotonic() + within
    last, since = fd_count(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        n = fd_count(pid)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
    return last


def children(pid: int, fork_server: bool = False) -> list[Proc]:
    """Live (not zombie) direct children of ``pid``; of a daemon, its workers (its fork
    server too only with ``fork_server``)."""
    return [p for p in processes() if p.ppid == pid and p.state != "Z"
            and (fork_server or p.comm != ZYGOTE_COMM)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` from /proc/PID/stat."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- kernel state


def links(ns: Netns, prefix: str = PREFIX) -> dict[str, dict[str, Any]]:
    """``ip -j link`` of ``ns``, by name, for names starting with ``prefix``."""
    out = json.loads(ns.run("ip", "-j", "link", "show").stdout)
    return {x["ifname"]: x for x in out if x["ifname"].startswith(prefix)}


def ip_state(ns: Netns, dev: str) -> dict[str, Any]:
    """The stable part of a device's kernel state: ifindex, mtu, addresses, routes."""
    link = json.loads(ns.run("ip", "-j", "addr", "show", "dev", dev).stdout)[0]
    routes = json.loads(ns.run("ip", "-j", "route", "show", "dev", dev).stdout)
    return {
        "ifindex": link["ifindex"], "mtu": link["mtu"], "link_type": link.get("link_type"),
        "addresses": sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])),
        "routes": sorted(f"{r['dst']} proto {r.get('protocol', '?')} scope "
                         f"{r.get('scope', '?')}" for r in routes),
    }


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key: before -> after`` for each key that differs."""
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


# --------------------------------------------------------------------------- teardown


@dataclass
class Leftovers:
    """What :func:`teardown_checked` found; empty lists mean nothing was left behind."""

    processes: list[str]
    namespaces: list[str]
    devices: list[str]

    def clean(self) -> bool:
        return not (self.processes or self.namespaces or self.devices)

    def summary(self) -> str:
        if self.clean():
            return "nothing left behind (processes, namespaces, devices)"
        return f"LEFT BEHIND: {self.processes} {self.namespaces} {self.devices}"


def teardown_checked(ts: TwoSites, within: float = 10.0) -> Leftovers:
    """Stop both daemons (SIGTERM), then prove nothing of ours remains.

    Checks, in order: no process left in either namespace once the daemons exited (also
    workers); after ``ip netns del`` no process anywhere still in those namespaces (by
    inode), the namespaces are gone and no ``fi`` device is visible in the root namespace.
    """
    inodes = {netns_inode(s.ns): s.ns for s in (ts.a, ts.b)}
    for site in (ts.a, ts.b):
        site.stop()
    left: list[str] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [f"{p.pid} {p.cmdline}" for p in processes() if p.netns in inodes
                and p.state != "Z"]
        if not left:
            break
        time.sleep(0.05)
    for ns in inodes.values():
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    gone_ns = [ns.name for ns in inodes.values() if ns.name in names]
    time.sleep(0.1)
    left += [f"{p.pid} {p.cmdline} (after netns del)" for p in processes()
             if p.netns in inodes and p.state != "Z"]
    root_links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True,
                                           text=True).stdout)
    devs = [x["ifname"] for x in root_links if x["ifname"].startswith(PREFIX)]
    return Leftovers(left, gone_ns, devs)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_term)
    if sys.argv[1] == "send":
        _probe_send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        _probe_recv(sys.argv[2], int(sys.argv[3]))
