"""README.md's "two sites over a tun tunnel" walk-through, run for real in two namespaces.

The blocks marked ``<!-- test: two-sites/... -->`` are taken verbatim, with three
rewrites: the example addresses (192.0.2.1 for site A's public address, 10.0.0.x inside
the tunnel) become this test's private 10.235.x addresses; ``/etc/tund/tunnels.toml`` is
the site's own file ($TUND_CONFIG) and the control socket the site's own
($TUND_CONTROL_SOCKET); and ``systemctl start tund`` starts ``tund`` in the foreground in
the namespace, tracked by PID (there is no systemd inside a namespace). Every other line
of the shell blocks runs as written, in the site's namespace, and must exit 0.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.netns import Netns, veth
from tests.sites import Site

pytestmark = pytest.mark.usefixtures("privileged")

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK_RE = re.compile(r"^<!-- test: (\S+) -->\n```\w+\n(.*?)^```", re.M | re.S)
REWRITES = (("192.0.2.1", "10.235.0.1"), ("10.0.0.", "10.235.1."))


def blocks() -> dict[str, str]:
    found = {m.group(1): m.group(2) for m in BLOCK_RE.finditer(README.read_text())}
    assert {"two-sites/a.toml", "two-sites/b.toml", "two-sites/a.sh",
            "two-sites/b.sh"} <= set(found), sorted(found)
    return found


def rewrite(text: str) -> str:
    for old, new in REWRITES:
        text = text.replace(old, new)
    return text


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
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, module in (("tundctl", "tund.ctl.main"), ("tund", "tund")):
        exe = bindir / name
        exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m {module} \"$@\"\n")
        exe.chmod(0o755)
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
