"""A bulk TCP transfer through a tunnel, checked byte-exact with sha256.

Run as a script inside namespaces (``python -m tests.transfer recv|send ...``) or drive it
with :func:`transfer`, which starts the receiver in one namespace and the sender in the other
and returns (bytes received, sender sha256, receiver sha256, seconds).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import subprocess
import sys
import time

from tests.netns import Netns

CHUNK = 1 << 20


def _recv(host: str, port: int, timeout: float) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(1)
    ls.settimeout(timeout)
    print("listening", flush=True)
    c, _ = ls.accept()
    c.settimeout(timeout)
    h, n = hashlib.sha256(), 0
    while data := c.recv(1 << 16):
        h.update(data)
        n += len(data)
    print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)


def _send(host: str, port: int, total: int, timeout: float) -> None:
    rng = random.Random(total)
    s = socket.create_connection((host, port), timeout=timeout)
    h, sent = hashlib.sha256(), 0
    t0 = time.monotonic()
    while sent < total:
        block = rng.randbytes(min(CHUNK, total - sent))
        s.sendall(block)
        h.update(block)
        sent += len(block)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print(json.dumps({"bytes": sent, "sha256": h.hexdigest(),
                      "seconds": time.monotonic() - t0}), flush=True)


def transfer(src: Netns, dst: Netns, dst_addr: str, total: int, port: int = 5009,
             timeout: float = 120) -> tuple[int, str, str, float]:
    recv = subprocess.Popen(dst.argv(sys.executable, "-m", "tests.transfer", "recv", dst_addr,
                                     str(port), str(timeout)),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == "listening"
        sent = src.run(sys.executable, "-m", "tests.transfer", "send", dst_addr, str(port),
                       str(total), str(timeout), timeout=timeout + 10)
        out, _ = recv.communicate(timeout=timeout)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    s, r = json.loads(sent.stdout), json.loads(out)
    return r["bytes"], s["sha256"], r["sha256"], s["seconds"]


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "recv":
        _recv(host, port, float(sys.argv[4]))
    else:
        _send(host, port, int(sys.argv[4]), float(sys.argv[5]))
