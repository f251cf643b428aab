"""Two containers, each running the installed tund service, carry a ping over a tunnel.

Underlay: a veth pair made here whose ends are moved into the two containers' private
network namespaces (10.231.100.1/24 <-> 10.231.100.2/24); nothing touches the host's
network.  Overlay: tsys0 in each container, 10.231.1.1/30 <-> 10.231.1.2/30.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.netns import unique
from tests.system.conftest import BootFn, install
from tests.system.test_service import start_with

LISTENER = """
[interfaces.tsys0]
mode = "tun"
addresses = ["10.231.1.1/30"]

[tunnels.link]
interface = "tsys0"
transport = "{transport}"
listen = "10.231.100.1:55510"
encryption = "none"
"""

CONNECTOR = """
[interfaces.tsys0]
mode = "tun"
addresses = ["10.231.1.2/30"]

[tunnels.link]
interface = "tsys0"
transport = "{transport}"
remote = "10.231.100.1:55510"
encryption = "none"
"""


def _veth_between(leader_a: int, leader_b: int) -> None:
    a, b = unique("tsysv"), unique("tsysv")
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        subprocess.run(["ip", "link", "set", a, "netns", str(leader_a)], check=True)
        subprocess.run(["ip", "link", "set", b, "netns", str(leader_b)], check=True)
    except BaseException:
        subprocess.run(["ip", "link", "del", a], check=False)
        raise
    for leader, dev, addr in ((leader_a, a, "10.231.100.1/24"), (leader_b, b, "10.231.100.2/24")):
        ns = ["nsenter", "-t", str(leader), "-n", "--"]
        subprocess.run([*ns, "ip", "link", "set", dev, "name", "under0"], check=True)
        subprocess.run([*ns, "ip", "addr", "add", addr, "dev", "under0"], check=True)
        subprocess.run([*ns, "ip", "link", "set", "under0", "up"], check=True)


def test_udp_tunnel_between_two_containers_carries_ping(boot: BootFn, tund_deb: Path) -> None:
    a, b = boot(), boot()
    _veth_between(a.leader, b.leader)
    assert a.run("ping -c1 -W2 10.231.100.2", check=False).returncode == 0, "underlay is down"
    assert a.run("ping -c1 -W1 10.231.1.2", check=False).returncode != 0   # no tunnel yet
    for ct, text in ((a, LISTENER), (b, CONNECTOR)):
        install(ct, tund_deb)
        start_with(ct, text.format(transport="udp"))
    a.wait_for("ping -n -c1 -W1 10.231.1.2", within=30, interval=0.5)
    b.run("ping -n -c3 -i0.2 -W2 10.231.1.1")
