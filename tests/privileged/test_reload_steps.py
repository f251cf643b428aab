"""A reload is one list of steps: the dry run lists them, the apply logs exactly those lines.

Also: binding a new listening tunnel's socket is one of those steps, so a port that is
taken fails the reload (undone, old config in force) instead of a worker backing off.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from tests.netns import Netns
from tests.sites import Site, new_ifname

pytestmark = pytest.mark.usefixtures("privileged")

_CLONE_NEWNET = 0x40000000
_ENV = {"TUND_LOG_TARGET": "stderr"}  # the log file is read back: no journald


def _udp_socket_in(ns: Netns, port: int) -> socket.socket:
    """A UDP socket of this test bound to 127.0.0.1:``port`` inside ``ns``.

    Made in a short-lived thread that joins the namespace (setns acts on the calling
    thread only), so the test's own threads stay where they are.
    """
    made: list[socket.socket | BaseException] = []

    def inside() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            made.append(s)
        except BaseException as e:
            made.append(e)

    t = threading.Thread(target=inside)
    t.start()
    t.join(10)
    assert made, "the setns thread did not finish"
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def _iface(name: str, *addrs: str, extra: str = "") -> str:
    return f'\n[interfaces.{name}]\nmode = "tun"\naddresses = {json.dumps(addrs)}\n{extra}\n'


def _tunnel(name: str, iface: str, port: int, extra: str = "") -> str:
    return (f'\n[tunnels.{name}]\ninterface = "{iface}"\ntransport = "udp"\n'
            f'listen = "127.0.0.1:{port}"\nencryption = "none"\n{extra}\n')


def test_reload_fails_when_a_new_tunnels_port_is_taken(tmp_path: Path) -> None:
    ns = Netns.make("rs")
    site = Site(ns, tmp_path / "s", "s")
    i1, i2 = new_ifname(), new_ifname()
    old = _iface(i1, "10.79.1.1/24") + _tunnel("one", i1, 56201)
    site.write(old)
    try:
        site.start(extra_env=_ENV)
        before = site.status()
        held = _udp_socket_in(ns, 56202)
        try:
            site.write(old + _iface(i2, "10.79.2.1/24") + _tunnel("two", i2, 56202))
            p = site.reload(check=False)
            assert p.returncode == 1, p.stdout + p.stderr
            msg = p.stdout + p.stderr
            assert "cannot bind udp 127.0.0.1:56202: Address already in use" in msg, msg
            assert "undone" in msg, msg
            after = site.status()
            assert after["tunnels"].keys() == {"one"}
            assert after["tunnels"]["one"]["pid"] == before["tunnels"]["one"]["pid"]
            assert after["interfaces"].keys() == {i1}
            assert after["daemon"]["last_reload"]["ok"] is False
            # the device the reload created before the bind failed is gone again
            assert ns.run("ip", "link", "show", i2, check=False).returncode != 0
        finally:
            held.close()
        ok = json.loads(site.reload().stdout)
        assert ok["added"]["tunnels"] == ["two"]
        st = site.wait_state("two", "connecting")  # listening; no peer has spoken yet
        assert st["last_error"] is None and st["restarts"] == 0, st
    finally:
        site.stop()


def _logged_steps(log: Path, start: int) -> list[str]:
    """The step lines a daemon logged (at info, by the reload or by ``ip``) from ``start``."""
    # the "[interface] " prefix shows a journal field: it is not part of the step's line
    pat = re.compile(r"^\S+ \S+ INFO\s+(tund\.daemon\.reload|tund\.netdev\.ip): "
                     r"(?:\[[^\]#][^\]]*\] )?(.*)$")
    text = log.read_text()[start:]
    return [m.group(2) for line in text.splitlines() if (m := pat.match(line))]


def test_dry_run_lists_exactly_the_lines_the_apply_logs(tmp_path: Path) -> None:
    ns = Netns.make("rs")
    site = Site(ns, tmp_path / "s", "s")
    keep, gone, new, chg = (new_ifname() for _ in range(4))
    site.write(_iface(keep, "10.79.1.1/24") + _tunnel("keep", keep, 56211)
               + _iface(gone, "10.79.2.1/24") + _tunnel("gone", gone, 56212)
               + _iface(chg, "10.79.3.1/24", "10.79.6.1/24") + _tunnel("chg", chg, 56213))
    try:
        site.start(extra_env=_ENV)
        site.write(_iface(keep, "10.79.1.1/24") + _tunnel("keep", keep, 56211)
                   + _iface(chg, "10.79.3.1/24", "10.79.4.1/24",
                            extra='mtu = 1300\nroutes = ["10.80.0.0/16"]')
                   + _tunnel("chg", chg, 56213, "reconnect_max = 5.0")
                   + _iface(new, "10.79.5.1/24") + _tunnel("new", new, 56214))
        dry = json.loads(site.ctl("reload", "--dry-run", "--json").stdout)
        assert dry["dry_run"] is True
        text = site.ctl("reload", "--dry-run").stdout.splitlines()  # what a person reads
        assert [line.strip() for line in text[text.index("actions:") + 1:]] == dry["actions"]
        mark = len(site.log.read_text())
        done = json.loads(site.reload().stdout)
        logged = _logged_steps(site.log, mark)
        assert done["actions"] == dry["actions"] == logged, (dry["actions"], logged)
        assert done["added"] == {"interfaces": [new], "tunnels": ["new"]}
        assert done["removed"] == {"interfaces": [gone], "tunnels": ["gone"]}
        assert done["changed"] == {"interfaces": [chg], "tunnels": ["chg"]}
        acts = done["actions"]
        assert f"[#] ip addr add 10.79.5.1/24 dev {new}" in acts
        assert f"[#] ip link set {chg} mtu 1300" in acts
        assert f"[#] ip addr add 10.79.4.1/24 dev {chg}" in acts
        assert f"[#] ip addr del 10.79.6.1/24 dev {chg}" in acts
        assert any(a.startswith("[#] ip route ") and "10.80.0.0/16" in a for a in acts), acts
        assert f"create device {new} (mode tun)" in acts
        assert "stop worker of tunnel gone" in acts and "start worker of tunnel new" in acts
        assert acts.index("stop worker of tunnel chg (changed: reconnect_max)") < \
            acts.index("bind udp 127.0.0.1:56213 for tunnel chg") < \
            acts.index("start worker of tunnel chg")
        assert acts[-1] == f"delete device {gone}"
        for name in ("new", "chg"):
            st = site.wait_state(name, "connecting")  # listening; no peer has spoken yet
            assert st["last_error"] is None and st["restarts"] == 0, st
    finally:
        site.stop()
