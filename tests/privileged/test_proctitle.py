"""What ps/top/systemctl status show for a real daemon, its fork server and its workers (issue
15.11): ``/proc/PID/cmdline`` names each process and its tunnel, and ``comm`` tells two
tunnels apart even when their names share the first 15 bytes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.netns import Netns
from tests.sites import Site, new_ifname
from tund.relay.process.zygote import ZYGOTE_COMM

pytestmark = pytest.mark.usefixtures("privileged")

NAMES = ("office-berlin-primary", "office-berlin-backup")


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def worker_pid(site: Site, tunnel: str, within: float = 20) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pid = site.tunnel(tunnel)["pid"]
        if isinstance(pid, int):
            return pid
        time.sleep(0.1)
    raise AssertionError(f"tunnel {tunnel}: no worker pid within {within}s\n{site.log_tail()}")


def test_daemon_fork_server_and_workers_have_titles(tmp_path: Path) -> None:
    ns = Netns.make("ttl")
    site = Site(ns, tmp_path / "s", "s")
    ifaces = [new_ifname("ttl") for _ in NAMES]
    site.write("\n".join(f"""
[interfaces.{iface}]
mode = "tun"
addresses = ["10.77.{i}.1/24"]

[tunnels.{name}]
interface = "{iface}"
transport = "udp"
listen = "127.0.0.1:{51900 + i}"
encryption = "none"
""" for i, (name, iface) in enumerate(zip(NAMES, ifaces, strict=True))))
    try:
        site.start()
        assert site.proc is not None
        daemon = site.proc.pid
        assert cmdline(daemon) == f"tund: daemon {site.config}"
        workers = {name: worker_pid(site, name) for name in NAMES}
        time.sleep(0.5)  # the title is set once the start message came
        for name, iface in zip(NAMES, ifaces, strict=True):
            assert cmdline(workers[name]) == f"tund: worker {name} ({iface})"
        comms = {comm(pid) for pid in workers.values()}
        assert len(comms) == 2 and all(c.startswith("relay:offi") for c in comms), comms
        zygotes = [p for p in children(daemon) if comm(p) == ZYGOTE_COMM]
        assert len(zygotes) == 1 and cmdline(zygotes[0]) == "tund: fork server"
    finally:
        site.stop()
