"""Real tund daemons in throwaway namespaces: two sites joined by a veth underlay.

``Site`` runs ``python -m tund`` inside a namespace with its own config and control socket
and talks to it with ``python -m tund.ctl.main``; logs go to a file attached to failures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netns import Netns, stop, unique, veth


@dataclass
class Site:
    ns: Netns
    dir: Path
    label: str
    proc: subprocess.Popen[bytes] | None = None
    config: Path = field(init=False)
    sock: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "tunnels.toml"
        self.sock = self.dir / "control.sock"
        self.log = self.dir / "tund.log"

    def write(self, text: str) -> None:
        self.config.write_text(textwrap.dedent(text))

    def start(self, *, wait: float = 15, extra_env: dict[str, str] | None = None,
              extra_args: tuple[str, ...] = ()) -> None:
        self.proc = self.ns.spawn(sys.executable, "-m", "tund", "--config", str(self.config),
                                  "--control-socket", str(self.sock), "--log-level", "debug",
                                  *extra_args, log=self.log, env=extra_env)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tund ({self.label}) exited {self.proc.returncode}:\n"
                                     + self.log.read_text())
            if self.sock.exists() and self.ctl("status", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"tund ({self.label}) did not answer within {wait}s:\n"
                             + self.log.read_text())

    def ctl(self, *args: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(self.ns.argv(sys.executable, "-m", "tund.ctl.main", "--socket",
                                        str(self.sock), *args),
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"tundctl {' '.join(args)} -> {p.returncode}\n{p.stdout}\n"
                                 f"{p.stderr}\n--- log ---\n{self.log_tail()}")
        return p

    def status(self) -> dict[str, Any]:
        return json.loads(self.ctl("status", "--json").stdout)  # type: ignore[no-any-return]

    def tunnel(self, name: str) -> dict[str, Any]:
        return self.status()["tunnels"][name]  # type: ignore[no-any-return]

    def reload(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ctl("reload", "--json", check=check)

    def wait_state(self, tunnel: str, state: str, within: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + within
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.tunnel(tunnel)
            if last["state"] == state:
                return last
            time.sleep(0.1)
        raise AssertionError(f"{self.label}: tunnel {tunnel} not {state} within {within}s: "
                             f"{last}\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if sig == signal.SIGTERM:
            stop(self.proc, timeout=15)
        else:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        code = self.proc.returncode
        self.proc = None
        return code

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"


@dataclass
class TwoSites:
    """Namespaces ``a`` and ``b`` joined by a veth (underlay ``ua`` <-> ``ub``)."""

    a: Site
    b: Site
    ua: str
    ub: str
    net: int

    def inner(self, side: str) -> str:
        return f"10.{self.net + 1}.0.{1 if side == 'a' else 2}"


_NET = [100 + (os.getpid() % 50) * 2]


def two_sites(tmp: Path) -> TwoSites:
    """Make two namespaces with an underlay veth; addresses are private to those namespaces."""
    _NET[0] += 2
    net = 200 + (_NET[0] % 50)
    na, nb = Netns.make("a"), Netns.make("b")
    ua, ub = f"10.{net}.0.1", f"10.{net}.0.2"
    veth(na, f"{ua}/24", nb, f"{ub}/24")
    return TwoSites(Site(na, tmp / "a", "a"), Site(nb, tmp / "b", "b"), ua, ub, net)


def plain_tunnel(ifname: str, mode: str, inner: str, transport: str, endpoint_key: str,
                 endpoint: str, tunnel: str = "t1", extra_if: str = "",
                 extra_tun: str = "") -> str:
    """A config with one plaintext tunnel over one interface."""
    return f"""
[interfaces.{ifname}]
mode = "{mode}"
addresses = ["{inner}/24"]
{extra_if}

[tunnels.{tunnel}]
interface = "{ifname}"
transport = "{transport}"
{endpoint_key} = "{endpoint}"
encryption = "none"
{extra_tun}
"""


def new_ifname(prefix: str = "td") -> str:
    return unique(prefix)
