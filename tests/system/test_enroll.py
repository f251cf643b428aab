"""Enrollment and lifetime counters under systemd (issue 18.5): a client enrolled with
``tundctl peer add`` on the server container, its wg-quick config turned into the client
container's tund config with ``tundctl import``, pings through; the server's per-peer
lifetime counters survive ``systemctl restart tund`` (kept in /var/lib/tund, the unit's
StateDirectory).

Underlay: a veth between the two containers' private network namespaces
(10.231.100.1/24 <-> .2); overlay 10.231.2.0/24. Nothing touches the host's network.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.system.conftest import BootFn, install
from tests.system.container import Container
from tests.system.test_tunnel import _veth_between

SERVER = """
[interfaces.tsys0]
mode = "tun"
addresses = ["10.231.2.1/24"]

[tunnels.vpn]
interface = "tsys0"
listen = "10.231.100.1:51820"
private_key_file = "/etc/tund/keys/vpn.key"
public_endpoint = "10.231.100.1:51820"

[tunnels.vpn.peers]
"""


def _lifetime(ct: Container) -> tuple[dict[str, int], dict[str, int]]:
    peer = json.loads(ct.run("tundctl status --json").stdout)["tunnels"]["vpn"]["peers"]["c"]
    return peer["lifetime"], {k: peer[k] for k in ("rx_packets", "tx_packets")}


def test_enrolled_client_counters_survive_systemctl_restart(boot: BootFn,
                                                            tund_deb: Path) -> None:
    a, b = boot(), boot()
    _veth_between(a.leader, b.leader)
    for ct in (a, b):
        install(ct, tund_deb)
    a.run("install -d -m 0700 /etc/tund/keys && (umask 077; tundctl genkey "
          "> /etc/tund/keys/vpn.key)")
    a.run("cat > /etc/tund/tunnels.toml", input=SERVER)
    a.run("systemctl restart tund", timeout=60)
    a.wait_for("systemctl is-active tund", within=15)
    conf = a.run("tundctl peer add vpn c --keepalive 5").stdout
    assert "Endpoint = 10.231.100.1:51820" in conf and "Address = 10.231.2.2/24" in conf
    assert a.run("stat -c %a /etc/tund/tunnels.d/vpn-peer-c.toml").stdout.strip() == "600"

    b.put("c.conf", conf)
    imported = b.run("tundctl import /share/c.conf --tunnel vpn --interface tsys1").stdout
    b.run("cat > /etc/tund/tunnels.toml", input=imported)
    b.run("systemctl restart tund", timeout=60)
    b.wait_for("ping -n -c1 -W1 10.231.2.1", within=30, interval=0.5)
    b.run("ping -n -q -c20 -i0.05 -W2 10.231.2.1")
    before, run1 = _lifetime(a)
    assert before["rx_packets"] >= 21, before

    a.run("systemctl restart tund", timeout=60)
    a.wait_for("systemctl is-active tund", within=15)
    assert a.run("stat -c %a /var/lib/tund/counters.json").stdout.strip() == "600"
    b.wait_for("ping -n -c1 -W1 10.231.2.1", within=40, interval=0.5)
    b.run("ping -n -q -c5 -i0.05 -W2 10.231.2.1")
    after, run2 = _lifetime(a)
    assert after["rx_packets"] >= before["rx_packets"] + 6, (before, after)
    assert run2["rx_packets"] < after["rx_packets"], (run2, after)
    print(f"\n[system enroll] lifetime rx packets of c: {before['rx_packets']} before "
          f"`systemctl restart tund`, {after['rx_packets']} after (this run {run2}, the "
          f"first {run1})")
