"""An address that another interface of the host (one tund does not manage) has is an error
for the tund interface that would get it (issue 15.5, the host's half), in a namespace this
test makes, with a veth interface as the host's. Before, the kernel took the address on
both interfaces and routed it twice, and tund reported nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.privileged.test_listen_conflicts import make_ns
from tests.sites import Site, new_ifname

pytestmark = pytest.mark.usefixtures("privileged")


def _iface(name: str, *addrs: str) -> str:
    return f'\n[interfaces.{name}]\nmode = "tun"\naddresses = {json.dumps(addrs)}\n'


def _tunnel(name: str, iface: str) -> str:
    return (f'\n[tunnels.{name}]\ninterface = "{iface}"\nremote = "127.0.0.1:9"\n'
            f'encryption = "none"\n')


def test_a_host_address_fails_its_interface_at_start_and_a_reload(tmp_path: Path) -> None:
    ns = make_ns()
    host, peer, a, b, c = (new_ifname("tcf") for _ in range(5))
    ns.run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
    ns.run("ip", "addr", "add", "10.79.41.1/24", "dev", host)
    ns.run("ip", "link", "set", host, "up")

    def addrs(name: str) -> list[str]:
        out = json.loads(ns.run("ip", "-json", "addr", "show", "dev", name).stdout)
        return [f"{i['local']}/{i['prefixlen']}" for i in out[0]["addr_info"]
                if i["scope"] == "global"]

    site = Site(ns, tmp_path / "s", "s")
    site.write(_iface(a, "10.79.42.1/24", "10.79.41.1/24") + _tunnel("ta", a)
               + _iface(b, "10.79.43.1/24") + _tunnel("tb", b))
    try:
        site.start(extra_env={"TUND_LOG_TARGET": "stderr"})
        st = site.status()
        why = (f"address 10.79.41.1/24 for {a} is already on interface {host} "
               f"(10.79.41.1/24), which tund does not manage")
        assert why in (st["interfaces"][a]["error"] or ""), st["interfaces"][a]
        assert st["interfaces"][b]["error"] is None
        assert addrs(a) == [] and addrs(b) == ["10.79.43.1/24"]  # nothing of a applied
        assert addrs(host) == ["10.79.41.1/24"]
        assert why in (site.wait_state("ta", "backoff", within=10)["last_error"] or "")

        site.write(_iface(a, "10.79.42.1/24") + _tunnel("ta", a)
                   + _iface(b, "10.79.43.1/24") + _tunnel("tb", b)
                   + _iface(c, "10.79.41.1/32"))
        p = site.reload(check=False)
        out = p.stdout + p.stderr
        assert p.returncode == 1, out
        assert (f"check that no other interface has 10.79.41.1/32): address 10.79.41.1/32 "
                f"for {c} is already on interface {host}") in out, out
        assert "undone" in out, out
        assert ns.run("ip", "link", "show", c, check=False).returncode != 0  # rolled back
        assert site.status()["daemon"]["last_reload"]["ok"] is False
    finally:
        site.stop()
