"""The worker's seccomp filter (issue 16.4): a dropped worker cannot re-own its own TUN
device (``TUNSETOWNER``, ``TUNSETGROUP``, ``TUNSETPERSIST``) nor exec, while what the
packet loop needs (``TUNSETOFFLOAD``, threads, sockets) still works.

A child made exactly like a worker (``drop_privileges`` to a uid of the worker range)
holds a TUN device the test made as root.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.netns import unique
from tests.privileged.test_worker_messages import tms_netns

pytestmark = pytest.mark.usefixtures("privileged")

PROBE = r"""
import errno, fcntl, json, os, socket, struct, sys, threading
from tund.relay.process.privileges import drop_privileges, read_status
from tund.workerapi.run_as import RunAs
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", sys.argv[1].encode(), 0x0001 | 0x1000))
drop_privileges(RunAs(2100000999, 2100000999))
out = {"Seccomp": read_status().get("Seccomp")}
def attempt(what, fn):
    try:
        fn()
        out[what] = "ok"
    except OSError as e:
        out[what] = errno.errorcode.get(e.errno, str(e.errno))
attempt("TUNSETOWNER", lambda: fcntl.ioctl(fd, 0x400454CC, 2100000999))
attempt("TUNSETGROUP", lambda: fcntl.ioctl(fd, 0x400454CE, 2100000999))
attempt("TUNSETPERSIST", lambda: fcntl.ioctl(fd, 0x400454CB, 1))
attempt("TUNSETOFFLOAD", lambda: fcntl.ioctl(fd, 0x400454D0, 0))
attempt("execve", lambda: os.execv(sys.executable, [sys.executable, "-c", "0"]))
t = threading.Thread(target=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
t.start()
t.join()
out["thread"] = "ok"
print(json.dumps(out))
"""


def test_a_dropped_worker_cannot_re_own_its_device_nor_exec() -> None:
    ns = tms_netns()
    dev = unique("tms")
    p = ns.run(sys.executable, "-c", PROBE, dev, check=False)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"\n[16.4] seccomp probe: {got}")
    assert got["Seccomp"] == "2", got
    for what in ("TUNSETOWNER", "TUNSETGROUP", "TUNSETPERSIST", "execve"):
        assert got[what] == "EPERM", (what, got)
    assert got["TUNSETOFFLOAD"] == "ok" and got["thread"] == "ok", got
