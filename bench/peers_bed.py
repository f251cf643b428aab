"""What bench/peers.py (and bench/scale.py) drive their namespaces and daemons with (no
topology here).

Commands run with a time limit; processes are stopped by their PID, never by name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def in_ns(name: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", name, *cmd]


class Daemon:
    """One tund daemon in a namespace, its config in ``d``; stopped by PID."""

    def __init__(self, venv: str, ns: str, d: Path, text: str) -> None:
        self.venv, self.ns, self.d = venv, ns, d
        d.mkdir(parents=True, exist_ok=True)
        (d / "tunnels.d").mkdir(exist_ok=True)
        for old in (d / "tunnels.d").iterdir():  # a previous round's added peer
            old.unlink()
        self.config, self.sock = d / "tunnels.toml", d / "control.sock"
        self.config.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Spawn; return the monotonic time it was spawned at."""
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        log = open(self.d / "tund.log", "ab")  # noqa: SIM115 (the daemon's, for its life)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            in_ns(self.ns, f"{self.venv}/bin/tund", "--config", str(self.config),
                  "--control-socket", str(self.sock)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return t0

    def ask(self, cmd: str, args: dict[str, Any] | None = None,
            timeout: float = 30) -> dict[str, Any] | None:
        """One control request from this process (no tundctl start-up in the timing)."""
        return control_request(self.sock, cmd, args, timeout)

    def vpn(self, tunnel: str = "vpn") -> dict[str, Any]:
        r = self.ask("status") or {}
        return (r.get("result") or {}).get("tunnels", {}).get(tunnel, {})  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None


def control_request(sock: Path, cmd: str, args: dict[str, Any] | None = None,
                    timeout: float = 30) -> dict[str, Any] | None:
    """The daemon's whole reply to one request on control socket ``sock``, asked from this
    process (a tundctl process would spend more CPU than the daemons measured); None if
    there is no answer."""
    req = json.dumps({"v": 1, "id": 1, "cmd": cmd, "args": args or {}}).encode() + b"\n"
    buf = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(req)
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    return None
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
    except (OSError, ValueError):
        return None
    return reply


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` used so far."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def idle_s() -> float:
    """Idle + iowait CPU seconds of the whole machine so far (all CPUs; /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def wait(pred: Any, within: float, what: str, every: float = 0.02) -> Any:
    end = time.monotonic() + within
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise RuntimeError(f"timed out after {within}s waiting for {what}")


def iperf_result(out: str, who: str) -> tuple[float, int]:
    """Mbit/s the server received and the segments the sender retransmitted, from one
    ``iperf3 -J`` client's output."""
    try:
        end = json.loads(out)["end"]
        return (float(end["sum_received"]["bits_per_second"]) / 1e6,
                int(end["sum_sent"].get("retransmits", 0)))
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"iperf3 from {who}: no sum_received in its output "
                           f"({e!r}; {out[-300:]!r})") from None


def stop_proc(proc: subprocess.Popen[Any], grace: float) -> None:
    """Wait up to ``grace`` s for ``proc`` to end by itself, then kill it (by its PID)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def key_file(path: Path, key: str) -> Path:
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


class CpuMeter:
    """CPU seconds of some processes (name -> PID) and the machine's idle CPU seconds
    (``idle``), and the wall time, summed over the calls made through :meth:`call`;
    ``each``: every call's shares (see :meth:`shares`)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.read: dict[str, Callable[[], float]] = {
            k: functools.partial(cpu_s, pid) for k, pid in pids.items()}
        self.read["idle"] = idle_s
        self.cpu = dict.fromkeys(self.read, 0.0)
        self.wall = 0.0
        self.each: list[dict[str, float]] = []

    def call(self, fn: Any) -> Any:
        t0, cpu0 = time.monotonic(), {k: read() for k, read in self.read.items()}
        got = fn()
        wall = time.monotonic() - t0
        self.wall += wall
        used = {k: read() - cpu0[k] for k, read in self.read.items()}
        for k, c in used.items():
            self.cpu[k] += c
        self.each.append({k: round(c / wall, 3) for k, c in used.items()})
        return got

    def shares(self) -> dict[str, float]:
        """CPU seconds per wall second of each (1.0: one core)."""
        return {k: round(c / self.wall, 3) if self.wall else 0.0 for k, c in self.cpu.items()}
