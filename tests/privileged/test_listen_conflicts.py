"""A UDP port another program holds is a bind error for the tunnel (issue 15.3).

The other program set SO_REUSEADDR, as many do. Before, tund's UDP listener set it too, so
both bound 0.0.0.0/127.0.0.1:P and the tunnel silently shared (lost) its traffic; now the
tunnel reports the bind error and binds once the port is free.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netns
from tests.netns import Netns, unique
from tests.sites import Site, new_ifname

pytestmark = pytest.mark.usefixtures("privileged")

_HOLD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
time.sleep(120)
"""


def make_ns() -> Netns:
    """A namespace named with this suite's prefix, removed by the privileged fixture."""
    ns = Netns(unique("tcf"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    netns._ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def test_a_udp_port_another_program_holds_is_the_tunnels_bind_error(tmp_path: Path) -> None:
    ns = make_ns()
    port = 56311
    holder = subprocess.Popen(ns.argv(sys.executable, "-c", _HOLD, "0.0.0.0", str(port)),
                              stdout=subprocess.PIPE, text=True)
    site = Site(ns, tmp_path / "s", "s")
    iface = new_ifname("tcf")
    site.write(f'[interfaces.{iface}]\nmode = "tun"\naddresses = ["10.79.31.1/24"]\n'
               f'[tunnels.t]\ninterface = "{iface}"\nlisten = "127.0.0.1:{port}"\n'
               f'encryption = "none"\n')
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        site.start(extra_env={"TUND_LOG_TARGET": "stderr"})
        want = f"cannot bind udp 127.0.0.1:{port}: Address already in use"
        deadline, st = time.monotonic() + 20, site.tunnel("t")
        while want not in (st["last_error"] or "") and time.monotonic() < deadline:
            time.sleep(0.2)
            st = site.tunnel("t")
        assert want in (st["last_error"] or ""), (st, site.log_tail())
        holder.kill()
        holder.wait(10)
        site.ctl("restart", "t")
        st = site.wait_state("t", "connecting", within=20)  # bound, waiting for a peer
        assert st["pid"] is not None, st
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        site.stop()
