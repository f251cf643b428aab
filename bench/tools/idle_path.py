#!/usr/bin/env python3
"""The idle round trip of two relay workers, without a kernel device: time and calls.

Two children, each one end of a tunnel over loopback UDP, with a socketpair as its
"device": ``tund`` runs real WireGuard workers (``tund.relay.process.build``: the pump,
codec and transport a deployed tunnel gets, vnet header and offloads on as negotiated
between tund peers; the TUNSETOFFLOAD a socketpair refuses is reported as done),
``floor`` runs the Python floor's loop (``pyfloor.relay``: read, AEAD, send). This
process plays both kernels: it writes an ICMP echo request into A's device, reads it
from B's, writes the echo reply into B's and reads it from A's, ``--count`` times,
``--interval`` s apart (idle: the workers sleep in between, as under ``ping``).

Prints one JSON object: the RTT median / p10 / p90 in µs, each worker's CPU per round
trip (``/proc/PID/schedstat``) and, with ``--calls``, the
Python calls per round trip in each worker (``sys.setprofile``, counted only during the
measured pings; functions and C functions, the most frequent first; with ``--opcodes``
the bytecodes executed per function, ``sys.settrace``). With ``--calls``
the times are the profiler's, not the relay's: measure time without it. With ``--perf
FILE``, ``perf record`` samples both workers during the measured pings (then ``perf report
-i FILE``). No root needed (but for perf).

  idle_path.py [--impl tund|floor] [--count 200] [--interval 0.02] [--calls] [--perf FILE]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
A_ADDR, B_ADDR = bytes([10, 98, 0, 1]), bytes([10, 98, 0, 2])
VNET_NONE = bytes(10)  # struct virtio_net_hdr with no offload: flags 0, gso_type NONE


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def icmp_echo(src: bytes, dst: bytes, kind: int, seq: int) -> bytes:
    """An IPv4 ICMP echo request (``kind`` 8) or reply (0) with 56 bytes of payload."""
    body = struct.pack("!BBHHH", kind, 0, 0, 0x7475, seq) + bytes(56)
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), seq, 0, 64, 1, 0, src, dst)
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + body


# ---------------------------------------------------------------------- the children

_counts: Counter[str] = Counter()


def _profile(frame: FrameType, event: str, arg: Any) -> None:
    if event == "call":
        code = frame.f_code
        _counts[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
    elif event == "c_call":
        _counts[f"C:{getattr(arg, '__qualname__', arg)}"] += 1


def _opcodes(frame: FrameType, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    if event == "opcode":
        code = frame.f_code
        _counts[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
    return _opcodes


def _trace_signals(out: str, opcodes: bool) -> None:
    """SIGUSR1: count calls (or bytecodes) from now; SIGUSR2: stop counting and write
    them to ``out``."""
    def start(_sig: int, _frame: FrameType | None) -> None:
        _counts.clear()
        if opcodes:
            sys.settrace(_opcodes)
        else:
            sys.setprofile(_profile)

    def stop(_sig: int, _frame: FrameType | None) -> None:
        sys.setprofile(None)
        sys.settrace(None)
        Path(out).write_text(json.dumps(dict(_counts)))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def _tund_end(role: str, dev: socket.socket, udp: socket.socket, control: socket.socket,
              keys: tuple[str, str], port: int) -> None:
    from tund.keyformat import public_from_private
    from tund.relay.process import build
    from tund.workerapi.spec import WorkerSpec

    build.set_device_offload = lambda fd, on: True  # type: ignore[assignment]
    dev.setblocking(False)
    mine, theirs = keys
    peer = base64.b64encode(public_from_private(base64.b64decode(theirs))).decode()
    spec = WorkerSpec(tunnel=f"idle-{role}", interface=f"idle-{role}", mode="tun",
                      transport="udp", role=role, host="127.0.0.1", port=port,  # type: ignore[arg-type]
                      device_fd=dev.fileno(), socket_fd=udp.fileno(), mtu=1420,
                      vnet_hdr=True, offload=True, encryption="wireguard",
                      private_key=mine, peer_public_key=peer)
    pump = build.build(spec, control)
    udp.detach()
    pump.run()


def _floor_end(dev: socket.socket, udp: socket.socket, peer: tuple[str, int]) -> None:
    sys.path.insert(0, str(HERE))
    from pyfloor import relay

    udp.connect(peer)
    udp.setblocking(False)
    dev.setblocking(False)
    relay(dev.fileno(), udp, b"k" * 32)


# ---------------------------------------------------------------------- this process

def _cpu_s(pid: int) -> float:
    """CPU time ``pid`` has run (s; ``/proc/PID/schedstat``, ns)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def _drain(socks: list[socket.socket]) -> None:
    for s in socks:
        while select.select([s], [], [], 0)[0]:
            if not s.recv(1 << 20):
                break


def _through(into: socket.socket, out: socket.socket, packet: bytes, vnet: bool,
             timeout: float = 1.0) -> bytes | None:
    """Write ``packet`` into one device, return what comes out of the other (no vnet
    header), or None after ``timeout``."""
    into.send(VNET_NONE + packet if vnet else packet)
    if not select.select([out], [], [], timeout)[0]:
        return None
    got = out.recv(1 << 16)
    return got[10:] if vnet else got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=("tund", "floor"), default="tund")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--calls", action="store_true")
    ap.add_argument("--opcodes", action="store_true",
                    help="with --calls: count bytecodes executed per function instead")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--perf", metavar="FILE",
                    help="perf record (cpu-clock, call graphs) of both workers during the "
                         "measured pings into FILE")
    a = ap.parse_args()
    vnet = a.impl == "tund"
    udp_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_a.bind(("127.0.0.1", 0))
    udp_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_b.bind(("127.0.0.1", 0))
    keys = [base64.b64encode(os.urandom(32)).decode() for _ in range(2)]
    ends: list[tuple[int, socket.socket, socket.socket, str]] = []
    for i, role in enumerate(("listen", "remote")):
        ours, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ctl_ours, ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        trace = f"/tmp/idle_path.{os.getpid()}.{role}.json"
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
                _trace_signals(trace, a.opcodes)
                udp, other = (udp_a, udp_b) if i == 0 else (udp_b, udp_a)
                if a.impl == "tund":
                    _tund_end(role, dev, udp, ctl, (keys[i], keys[1 - i]),
                              udp_a.getsockname()[1])
                else:
                    _floor_end(dev, udp, other.getsockname())
            finally:
                os._exit(0)
        dev.close()
        ctl.close()
        ends.append((pid, ours, ctl_ours, trace))
    (pid_a, dev_a, ctl_a, trace_a), (pid_b, dev_b, ctl_b, trace_b) = ends
    udp_a.close()
    udp_b.close()
    try:
        return _measure(a, vnet, dev_a, dev_b, [ctl_a, ctl_b], (pid_a, pid_b),
                        (trace_a, trace_b))
    finally:
        for pid in (pid_a, pid_b):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _measure(a: argparse.Namespace, vnet: bool, dev_a: socket.socket, dev_b: socket.socket,
             controls: list[socket.socket], pids: tuple[int, int],
             traces: tuple[str, str]) -> int:
    deadline = time.monotonic() + 10.0
    seq = 0
    while True:  # until the handshake is done and a packet goes through
        seq += 1
        _drain(controls)
        if _through(dev_a, dev_b, icmp_echo(A_ADDR, B_ADDR, 8, seq), vnet, 0.2) is not None:
            break
        if time.monotonic() > deadline:
            print("no packet got through in 10 s", file=sys.stderr)
            return 1
    for _ in range(20):  # warm: both directions, a few times
        seq += 1
        _through(dev_a, dev_b, icmp_echo(A_ADDR, B_ADDR, 8, seq), vnet)
        _through(dev_b, dev_a, icmp_echo(B_ADDR, A_ADDR, 0, seq), vnet)
    if a.calls:
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)
        time.sleep(0.1)
    rtts: list[float] = []
    lost = 0
    perf = None
    if a.perf:
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "20000", "-e", "cpu-clock",
                                 "-g", "-p", ",".join(map(str, pids)), "-o", a.perf],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf attached
    cpu0 = [_cpu_s(pid) for pid in pids]
    for _ in range(a.count):
        seq += 1
        time.sleep(a.interval)
        _drain(controls)
        t0 = time.perf_counter()
        there = _through(dev_a, dev_b, icmp_echo(A_ADDR, B_ADDR, 8, seq), vnet)
        back = None if there is None else _through(dev_b, dev_a,
                                                   icmp_echo(B_ADDR, A_ADDR, 0, seq), vnet)
        t1 = time.perf_counter()
        if back is None:
            lost += 1
        else:
            rtts.append((t1 - t0) * 1e6)
    cpu = [_cpu_s(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
    out: dict[str, Any] = {"impl": a.impl, "count": a.count, "lost": lost,
                           "interval_s": a.interval,
                           "cpu_us_per_rtt": [round(c / a.count * 1e6, 1) for c in cpu]}
    if rtts:
        r = sorted(rtts)
        out.update(rtt_median_us=round(statistics.median(r), 1),
                   rtt_p10_us=round(r[len(r) // 10], 1),
                   rtt_p90_us=round(r[len(r) * 9 // 10], 1))
    if a.calls:
        for pid in pids:
            os.kill(pid, signal.SIGUSR2)
        time.sleep(0.3)
        n = a.count
        for side, path in zip(("A", "B"), traces, strict=True):
            counts = json.loads(Path(path).read_text())
            Path(path).unlink()
            out[f"calls_per_rtt_{side}"] = round(sum(counts.values()) / n, 1)
            out[f"top_{side}"] = {k: round(v / n, 2) for k, v in
                                  Counter(counts).most_common(a.top)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
