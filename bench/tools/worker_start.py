#!/usr/bin/env python3
"""What a forked worker's start costs: CPU and page faults per step, no root needed.

Prepares a fork server in this process as ``tund.relay.process.zygote.serve`` does
(command line, ``preload``, ``warm_up``, ``gc.freeze``), then forks ``--workers`` children
one after the other. Each child runs a WireGuard worker's start on socketpairs (a
"device") and an unbound UDP socket, step by step as ``tund.relay.process.worker.run``
does (logging, start message, process name, pump build, privilege drop, a ping and a
stop through the loop; no root: the drop keeps uid 0), and reports the CPU seconds and
minor faults of each step. Prints one JSON object: per step the mean ms and faults, and
``total`` as ``wait4`` saw each child (its fork and exit included).

  worker_start.py [--workers 20] [--role listen|remote]
"""

from __future__ import annotations

import argparse
import base64
import gc
import itertools
import json
import logging
import os
import resource
import socket
import sys
from typing import Literal, cast

Role = Literal["listen", "remote"]


def _mark(out: list[tuple[str, float, int]], name: str) -> None:
    r = resource.getrusage(resource.RUSAGE_SELF)
    out.append((name, r.ru_utime + r.ru_stime, r.ru_minflt))


def _child(report: int, role: Role, key: str, peer: str) -> None:
    """One worker's start, step by step; its marks go to ``report``; never returns."""
    from tund.relay.process import build, privileges
    from tund.relay.process import worker as relay_worker
    from tund.workerapi.messages import Ping, Start, Stop
    from tund.workerapi.spec import WorkerSpec

    out: list[tuple[str, float, int]] = []
    _mark(out, "fork")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    _dev, dev_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spec = WorkerSpec(tunnel="t1", interface="t1", mode="tun", transport="udp", role=role,
                      host="127.0.0.1", port=9, device_fd=dev_worker.fileno(),
                      socket_fd=udp.fileno(), mtu=1420, vnet_hdr=True,
                      encryption="wireguard", private_key=key, peer_public_key=peer)
    ours.send(Start(spec).encode())
    _mark(out, "fds")
    relay_worker.setup_logging("?")
    got = relay_worker.receive_start(theirs)
    _mark(out, "start message")
    relay_worker.setup_logging(got.tunnel, interface=got.interface)
    relay_worker.set_process_name(got.tunnel, got.interface)
    relay_worker.keep_heap()
    relay_worker.log.info("starting: %s", json.dumps(got.redacted(), sort_keys=True))
    _mark(out, "logging, name")
    pump = build.build(got, theirs)
    udp.detach()
    _mark(out, "build")
    privileges.drop_privileges(None)
    _mark(out, "privileges")
    ours.send(Ping(1).encode())
    ours.send(Stop().encode())
    pump.run()
    _mark(out, "run to stop")
    os.write(report, json.dumps(out).encode())
    os._exit(0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--role", choices=("listen", "remote"), default="listen")
    a = ap.parse_args()
    from tund import proctitle
    from tund.keyformat import public_from_private
    from tund.relay.process import zygote

    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO)  # noqa: SIM115
    proctitle.set_title(proctitle.FORK_SERVER_TITLE, zygote.ZYGOTE_COMM)
    zygote.preload()
    zygote.warm_up()
    gc.collect()
    gc.freeze()
    key = base64.b64encode(os.urandom(32)).decode()
    peer = base64.b64encode(public_from_private(os.urandom(32))).decode()
    steps: dict[str, list[float]] = {}
    for _ in range(a.workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the worker's log lines
            _child(w, cast(Role, a.role), key, peer)
        os.close(w)
        _, status, ru = os.wait4(pid, 0)
        data = json.loads(os.read(r, 1 << 16) or b"[]")
        os.close(r)
        if status != 0 or not data:
            print(f"worker start failed (status {status})", file=sys.stderr)
            return 1
        for (_, cpu0, flt0), (name, cpu1, flt1) in itertools.pairwise(data):
            got = steps.setdefault(name, [0.0, 0.0])
            got[0] += cpu1 - cpu0
            got[1] += flt1 - flt0
        total = steps.setdefault("total", [0.0, 0.0])
        total[0] += ru.ru_utime + ru.ru_stime
        total[1] += ru.ru_minflt
    n = a.workers
    print(json.dumps({"workers": n, "role": a.role,
                      "steps": {k: {"ms": round(v[0] / n * 1000, 2), "faults": round(v[1] / n)}
                                for k, v in steps.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
