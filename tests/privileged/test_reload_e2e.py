"""Reload against real daemons: only what changed is touched; a bad config changes nothing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.sites import TwoSites, new_ifname, plain_tunnel, two_sites

pytestmark = pytest.mark.usefixtures("privileged")


class Pair:
    """Matching configs for both sites, tunnel by tunnel."""

    def __init__(self, ts: TwoSites) -> None:
        self.ts = ts
        self.ifs: dict[str, tuple[str, str]] = {}

    def addr(self, idx: int, side: str) -> str:
        return f"10.{self.ts.net + 1}.{idx}.{1 if side == 'a' else 2}"

    def conf(self, side: str, tunnels: dict[str, int], extra: dict[str, str] | None = None,
             extra_if: dict[str, str] | None = None) -> str:
        parts = []
        for name, idx in tunnels.items():
            ia, ib = self.ifs.setdefault(name, (new_ifname(), new_ifname()))
            port = 56000 + idx
            ifname, key = (ia, "listen") if side == "a" else (ib, "remote")
            parts.append(plain_tunnel(ifname, "tun", self.addr(idx, side), "tcp", key,
                                      f"{self.ts.ua}:{port}", tunnel=name,
                                      extra_if=(extra_if or {}).get(name, ""),
                                      extra_tun=(extra or {}).get(name, "")))
        return "\n".join(parts)


def _loss(ping_output: str) -> float:
    m = re.search(r"([\d.]+)% packet loss", ping_output)
    assert m, ping_output
    return float(m.group(1))


def test_reload_touches_only_what_changed(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    pair = Pair(ts)
    ts.a.write(pair.conf("a", {"keep": 0, "gone": 1, "new": 2}))
    ts.b.write(pair.conf("b", {"keep": 0, "gone": 1}))
    try:
        ts.a.start()
        ts.b.start()
        ts.b.ns.wait_ping(pair.addr(0, "a"))
        keep_pid = ts.b.wait_state("keep", "up")["pid"]
        # continuous ping through the untouched tunnel while we reload three times
        pinger = subprocess.Popen(ts.b.ns.argv("ping", "-n", "-q", "-i", "0.02", "-c", "400",
                                               "-W", "1", pair.addr(0, "a")),
                                  stdout=subprocess.PIPE, text=True)

        # 1: add "new", remove "gone"
        ts.b.write(pair.conf("b", {"keep": 0, "new": 2}))
        r1 = json.loads(ts.b.reload().stdout)
        assert r1["added"]["tunnels"] == ["new"]
        assert r1["removed"]["tunnels"] == ["gone"]
        assert r1["unchanged"]["tunnels"] == ["keep"]
        assert ts.b.ns.run("ip", "link", "show", pair.ifs["gone"][1], check=False).returncode != 0
        ts.b.wait_state("new", "up")

        # 2: change "new" (a tunnel setting: its worker restarts; nothing else does)
        new_pid = ts.b.tunnel("new")["pid"]
        ts.b.write(pair.conf("b", {"keep": 0, "new": 2}, extra={"new": "reconnect_max = 5.0"}))
        r2 = json.loads(ts.b.reload().stdout)
        assert r2["changed"]["tunnels"] == ["new"]
        assert r2["unchanged"]["tunnels"] == ["keep"]
        assert ts.b.wait_state("new", "up")["pid"] != new_pid

        # 3: an address change on "new"'s interface is applied in place: same worker
        new_pid = ts.b.tunnel("new")["pid"]
        ts.b.write(pair.conf("b", {"keep": 0, "new": 2}, extra={"new": "reconnect_max = 5.0"},
                             extra_if={"new": "mtu = 1300"}))
        r3 = json.loads(ts.b.reload().stdout)
        assert r3["changed"]["interfaces"] == [pair.ifs["new"][1]]
        assert r3["changed"]["tunnels"] == []
        assert ts.b.tunnel("new")["pid"] == new_pid
        link = json.loads(ts.b.ns.run("ip", "-j", "link", "show", pair.ifs["new"][1]).stdout)[0]
        assert link["mtu"] == 1300

        out, _ = pinger.communicate(timeout=60)
        assert _loss(out) == 0.0, out
        assert ts.b.tunnel("keep")["pid"] == keep_pid
    finally:
        ts.a.stop()
        ts.b.stop()


def test_invalid_reload_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    pair = Pair(ts)
    ts.a.write(pair.conf("a", {"keep": 0}))
    good = pair.conf("b", {"keep": 0})
    ts.b.write(good)
    try:
        ts.a.start()
        ts.b.start()
        ts.b.ns.wait_ping(pair.addr(0, "a"))
        before = ts.b.status()
        ts.b.write(good + '\n[tunnels.bad]\ninterface = "nosuch0"\nremote = "1.2.3.4"\n')
        p = ts.b.reload(check=False)
        assert p.returncode == 1
        text = p.stdout + p.stderr
        assert f"{ts.b.config}:" in text
        assert "tunnels.bad.interface" in text and "tunnels.bad.remote" in text
        after = ts.b.status()
        assert after["tunnels"].keys() == before["tunnels"].keys()
        assert after["tunnels"]["keep"]["pid"] == before["tunnels"]["keep"]["pid"]
        assert ts.b.ns.ping(pair.addr(0, "a"), count=3)
        assert after["daemon"]["last_reload"]["ok"] is False
    finally:
        ts.a.stop()
        ts.b.stop()
