"""Throwaway network namespaces for privileged tests.

Every name carries a per-run suffix so parallel or aborted runs never collide, and
everything made here is removed on exit (also when the test fails). Processes started
inside a namespace are tracked by PID and stopped by PID, never by name.

Typical use (see the ``sites`` fixture in conftest)::

    a, b = Netns.make("a"), Netns.make("b")
    veth(a, "10.201.0.1/24", b, "10.201.0.2/24")
    a.run("ping", "-c1", "10.201.0.2")
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN_ID = os.environ.get("TUND_TEST_RUN_ID") or secrets.token_hex(2)


def unique(prefix: str) -> str:
    """A short name (fits IFNAMSIZ) unique to this run: ``prefix`` + run id + counter."""
    unique.counter += 1  # type: ignore[attr-defined]
    name = f"{prefix}{RUN_ID}{unique.counter:x}"  # type: ignore[attr-defined]
    assert len(name) <= 15, name
    return name


unique.counter = 0  # type: ignore[attr-defined]


@dataclass
class Netns:
    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def make(cls, prefix: str = "t") -> Netns:
        ns = cls(unique(f"tn{prefix}"))
        subprocess.run(["ip", "netns", "add", ns.name], check=True)
        ns.run("ip", "link", "set", "lo", "up")
        _ALL.append(ns)
        return ns

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside; raise with its output if it fails and ``check``."""
        p = subprocess.run(self.argv(*cmd), capture_output=True, timeout=timeout,
                           input=input.decode() if input is not None else None, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} in {self.name} failed ({p.returncode}):\n"
                                 f"{p.stdout}\n{p.stderr}")
        return p

    def spawn(self, *cmd: str, log: Path | None = None, env: dict[str, str] | None = None,
              stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """Start a command inside in the background; it is stopped (by PID) at cleanup."""
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        p = subprocess.Popen(self.argv(*cmd), stdout=out, stderr=subprocess.STDOUT, stdin=stdin,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append(p)
        return p

    def ping(self, addr: str, count: int = 1, timeout: float = 1, interval: float = 0.2) -> bool:
        p = self.run("ping", "-n", "-q", "-c", str(count), "-W", str(timeout),
                     "-i", str(interval), addr, check=False, timeout=count * (timeout + 1) + 5)
        return p.returncode == 0

    def wait_ping(self, addr: str, within: float = 20) -> float:
        """Ping until one answer comes back; return the seconds it took or fail."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            if self.ping(addr, timeout=1):
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"no ping reply from {addr} in {self.name} within {within}s")

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                             text=True).stdout
        return [int(x) for x in out.split()]

    def destroy(self) -> None:
        for p in self.procs:
            stop(p)
        for pid in self.pids():  # anything else left inside our own namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


_ALL: list[Netns] = []


def stop(p: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM, bounded wait, then SIGKILL; by PID."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)
        except ProcessLookupError:
            pass


def veth(a: Netns, addr_a: str, b: Netns, addr_b: str, *, prefix: str = "v") -> tuple[str, str]:
    """Join two namespaces with a veth pair carrying the given addresses; return the names
    (``prefix`` + ``a`` in ``a``, ``prefix`` + ``b`` in ``b``, each + the run id)."""
    na, nb = unique(f"{prefix}a"), unique(f"{prefix}b")
    subprocess.run(["ip", "link", "add", na, "netns", a.name, "type", "veth", "peer", "name", nb,
                    "netns", b.name], check=True)
    for ns, dev, addr in ((a, na, addr_a), (b, nb, addr_b)):
        ns.run("ip", "addr", "add", addr, "dev", dev)
        ns.run("ip", "link", "set", dev, "up")
    return na, nb


def cleanup_all() -> None:
    while _ALL:
        _ALL.pop().destroy()


def have_privileges() -> str | None:
    """Why privileged tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "needs `ip netns`"
    return None


def tool_missing(*names: str) -> str | None:
    from shutil import which
    missing = [n for n in names if which(n) is None]
    return f"needs {', '.join(missing)} installed" if missing else None

