"""README.md's walk-throughs, run for real in throwaway namespaces.

"Two sites over a tun tunnel": the blocks marked ``<!-- test: two-sites/... -->`` are taken
verbatim, with three rewrites: the example addresses (192.0.2.1 for site A's public
address, 10.0.0.x inside the tunnel) become this test's private 10.235.x addresses;
``/etc/tund/tunnels.toml`` is the site's own file ($TUND_CONFIG) and the control socket the
site's own ($TUND_CONTROL_SOCKET); and ``systemctl start tund`` starts ``tund`` in the
foreground in the namespace, tracked by PID (there is no systemd inside a namespace). Every
other line of the shell blocks runs as written, in the site's namespace, and must exit 0.

"Two LANs bridged over tap": each site namespace has a LAN port named ``eth1`` (a veth
whose other end is a LAN host in a namespace of its own); the section's bridge commands
run as written in both sites, the ``lan-bridge/...`` configs are used with only 192.0.2.1
rewritten (to 10.236.0.1), and tund is checked and started as the first walk-through does
it. Then a LAN host of site A pings one of site B through the tap tunnel, resolves its MAC
by ARP across it, and ``tap0`` is a port of ``br0``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.netns import Netns, unique, veth
from tests.sites import Site

pytestmark = pytest.mark.usefixtures("privileged")

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK_RE = re.compile(r"^<!-- test: (\S+) -->\n```\w+\n(.*?)^```", re.M | re.S)
REWRITES = (("192.0.2.1", "10.235.0.1"), ("10.0.0.", "10.235.1."))
LAN_REWRITES = (("192.0.2.1", "10.236.0.1"),)
LAN_SECTION = "Walk-through: two LANs bridged over tap"
#: how the first walk-through has a site check its file and start tund
CHECK_AND_START = "tundctl check\nsystemctl start tund\n"


def blocks() -> dict[str, str]:
    found = {m.group(1): m.group(2) for m in BLOCK_RE.finditer(README.read_text())}
    assert {"two-sites/a.toml", "two-sites/b.toml", "two-sites/a.sh", "two-sites/b.sh",
            "lan-bridge/a.toml", "lan-bridge/b.toml"} <= set(found), sorted(found)
    return found


def section_block(heading: str, lang: str = "sh") -> str:
    """The first ```lang block of README.md's ``## heading`` section (fails if none)."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    m = re.search(rf"^```{lang}\n(.*?)^```", text[start:end if end >= 0 else None],
                  re.M | re.S)
    assert m, f"README.md section {heading!r} has no ```{lang} block"
    return m.group(1)


def rewrite(text: str, rewrites: tuple[tuple[str, str], ...] = REWRITES) -> str:
    for old, new in rewrites:
        text = text.replace(old, new)
    return text


def shims(tmp_path: Path) -> Path:
    """A directory with ``tundctl`` and ``tund`` running this checkout's modules."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, module in (("tundctl", "tund.ctl.main"), ("tund", "tund")):
        exe = bindir / name
        exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m {module} \"$@\"\n")
        exe.chmod(0o755)
    return bindir


def run_block(site: Site, script: str, bindir: Path) -> list[str]:
    """Run each command line of ``script`` in the site's namespace; return their outputs."""
    env = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "TUND_CONFIG": str(site.config), "TUND_CONTROL_SOCKET": str(site.sock),
           "TUND_COLOR": "never"}
    outputs = []
    for line in script.splitlines():
        command = line.split("#", 1)[0].strip()
        if not command:
            continue
        if command == "systemctl start tund":
            site.start()
            outputs.append("(started)")
            continue
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        p = site.ns.run("bash", "-c", f"export {exports}; {command}", check=False,
                        timeout=60)
        assert p.returncode == 0, (f"README line {line!r} in {site.label} exited "
                                   f"{p.returncode}:\n{p.stdout}\n{p.stderr}\n"
                                   f"--- log ---\n{site.log_tail()}")
        outputs.append(p.stdout)
    return outputs


def test_two_sites_walkthrough(tmp_path: Path) -> None:
    b = blocks()
    bindir = shims(tmp_path)
    na, nb = Netns.make("opwa"), Netns.make("opwb")
    veth(na, "10.235.0.1/24", nb, "10.235.0.2/24")
    a, b_site = Site(na, tmp_path / "a", "a"), Site(nb, tmp_path / "b", "b")
    a.write(rewrite(b["two-sites/a.toml"]))
    b_site.write(rewrite(b["two-sites/b.toml"]))
    try:
        out_a = run_block(a, rewrite(b["two-sites/a.sh"]), bindir)
        assert "ok (1 interface, 1 tunnel)" in out_a[0]
        assert "tunnel: to-b" in out_a[-1]
        out_b = run_block(b_site, rewrite(b["two-sites/b.sh"]), bindir)
        assert "3 packets transmitted" in out_b[2]
        status = out_b[-1]
        assert "tunnel: to-a" in status and "state: up" in status
        assert "transport: tcp, remote 10.235.0.1:55555" in status
        a_end = a.wait_state("to-b", "up")
        assert a_end["rx_packets"] >= 1 and a_end["tx_packets"] >= 1
    finally:
        a.stop()
        b_site.stop()


def lan_host(site: Netns, label: str, address: str) -> tuple[Netns, str]:
    """Give ``site`` an up LAN port ``eth1`` whose far end is a host with ``address``.

    Returns the host's namespace and the MAC address of its LAN interface.
    """
    host = Netns.make(f"rwh{label}")
    port = unique("rwl")
    site.run("ip", "link", "add", "eth1", "type", "veth", "peer", "name", port)
    site.run("ip", "link", "set", port, "netns", host.name)
    site.run("ip", "link", "set", "eth1", "up")
    host.run("ip", "addr", "add", address, "dev", port)
    host.run("ip", "link", "set", port, "up")
    mac = json.loads(host.run("ip", "-j", "link", "show", "dev", port).stdout)[0]["address"]
    return host, str(mac)


def test_lan_bridge_walkthrough(tmp_path: Path) -> None:
    b = blocks()
    bridge_sh = section_block(LAN_SECTION)
    assert "master br0" in bridge_sh, bridge_sh
    bindir = shims(tmp_path)
    na, nb = Netns.make("rwa"), Netns.make("rwb")
    veth(na, "10.236.0.1/24", nb, "10.236.0.2/24")
    host_a, _ = lan_host(na, "a", "10.236.2.1/24")
    _, mac_b = lan_host(nb, "b", "10.236.2.2/24")
    a, b_site = Site(na, tmp_path / "a", "a"), Site(nb, tmp_path / "b", "b")
    a.write(rewrite(b["lan-bridge/a.toml"], LAN_REWRITES))
    b_site.write(rewrite(b["lan-bridge/b.toml"], LAN_REWRITES))
    try:
        for site in (a, b_site):
            run_block(site, bridge_sh, bindir)
            out = run_block(site, CHECK_AND_START, bindir)
            assert "ok (1 interface, 1 tunnel)" in out[0]
        b_end = b_site.wait_state("lan", "up")
        assert b_end["peer"] == "10.236.0.1:55556", b_end
        host_a.wait_ping("10.236.2.2", within=20)
        neigh = json.loads(host_a.run("ip", "-j", "neigh", "show", "10.236.2.2").stdout)
        assert [n.get("lladdr") for n in neigh] == [mac_b], neigh
        for site in (a, b_site):
            tap = json.loads(site.ns.run("ip", "-j", "link", "show", "dev", "tap0").stdout)[0]
            assert tap.get("master") == "br0", tap
            assert "UP" in tap["flags"], tap
            end = site.tunnel("lan")
            assert end["rx_packets"] >= 1 and end["tx_packets"] >= 1, end
    finally:
        a.stop()
        b_site.stop()
