"""Boot a Debian rootfs with systemd as PID 1 in systemd-nspawn and run commands inside.

This machine's PID 1 is not systemd, so nspawn runs without machined or a host bus:

* ``--register=no --keep-unit``: nothing to register with.
* its own cgroup per container (made here, removed at stop): with ``--keep-unit`` nspawn
  nests the container under the cgroup it starts in, and two containers in the same one
  break each other's units.
* ``unshare --mount`` + a tmpfs on /run: nspawn's scratch state under /run must be on a
  tmpfs or it refuses to clean it up.
* ``--volatile=overlay``: writes go to a tmpfs, so the cached rootfs stays pristine.
* ``--private-network``: an own network namespace with only ``lo`` (and CAP_NET_ADMIN
  plus /dev/net/tun inside); :meth:`Container.netns_pid` lets a test move a veth end in.

Commands go in with ``nsenter -t LEADER -a`` (no machinectl).  Everything is stopped by
PID: the nspawn process gets SIGTERM (a clean poweroff), a second one if it hangs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NAME_PREFIX = "tsys"
INNER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _cgroup_roots() -> list[Path]:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # pure cgroup v2
        return [Path("/sys/fs/cgroup")]
    return [p for p in (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
            if p.is_dir()]


class ContainerError(AssertionError):
    """The container did not boot, or a command inside failed (with its output)."""


@dataclass
class Container:
    """One booted container; create with :meth:`boot`, end with :meth:`stop`."""

    name: str
    rootfs: Path
    share: Path                       # host dir, bind-mounted read-write at /share inside
    console_log: Path
    proc: subprocess.Popen[bytes] | None = None
    leader: int = 0
    cgroups: list[Path] = field(default_factory=list)

    @classmethod
    def boot(cls, rootfs: Path, name: str, share: Path, *, timeout: float = 60,
             extra_args: tuple[str, ...] = ()) -> Container:
        """Start the container and wait until ``systemctl is-system-running`` settles."""
        share.mkdir(parents=True, exist_ok=True)
        ct = cls(name=name, rootfs=rootfs, share=share,
                 console_log=Path(f"/var/tmp/{name}.console.log"))
        ct.cgroups = [root / name for root in _cgroup_roots()]
        for cg in ct.cgroups:
            cg.mkdir(exist_ok=True)
        procs = " ".join(shlex.quote(str(cg / "cgroup.procs")) for cg in ct.cgroups)
        script = (f"for f in {procs}; do echo $$ > \"$f\"; done; "
                  "mount -t tmpfs -o mode=755 tmpfs /run && exec \"$@\"")
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                "systemd-nspawn", "-q", "-D", str(rootfs), "-M", name, "--boot",
                "--register=no", "--keep-unit", "--volatile=overlay", "--private-network",
                "--console=pipe", f"--bind={share}:/share", *extra_args]
        with open(ct.console_log, "wb") as log:
            ct.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT)
        try:
            ct._wait_booted(timeout)
        except BaseException:
            ct.stop()
            raise
        return ct

    def _wait_booted(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise ContainerError(f"nspawn for {self.name} exited ({self.proc.returncode}):\n"
                                     f"{self.console()}")
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.name}: no systemd leader after {timeout} s")
            self.leader = self._find_leader()
            if not self.leader:
                time.sleep(0.05)
        while self.run("test -S /run/dbus/system_bus_socket", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.name}: no D-Bus socket after {timeout} s")
            time.sleep(0.05)
        left = max(1.0, deadline - time.monotonic())
        state = self.run("systemctl is-system-running --wait", check=False, timeout=left)
        if state.stdout.strip() not in ("running", "degraded"):
            raise ContainerError(f"{self.name}: system state {state.stdout.strip()!r}\n"
                                 f"{self.run('systemctl --failed --no-pager', check=False).stdout}")

    def _find_leader(self) -> int:
        """The container's PID 1 as seen from here: nspawn's child named ``systemd``."""
        assert self.proc is not None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            comm = text[text.index("(") + 1 : text.rindex(")")]
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            if ppid == self.proc.pid and comm == "systemd":
                return int(stat.parent.name)
        return 0

    def run(self, script: str, *, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a bash ``script`` inside (clean environment); raise with output if it fails."""
        argv = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", f"PATH={INNER_PATH}",
                "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "LC_ALL=C.UTF-8",
                "bash", "-c", script]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                           check=False)
        if check and p.returncode != 0:
            raise ContainerError(f"in {self.name}: `{script}` exited {p.returncode}\n"
                                 f"--- stdout\n{p.stdout}--- stderr\n{p.stderr}")
        return p

    def wait_for(self, script: str, *, within: float = 20, interval: float = 0.2) -> str:
        """Run ``script`` until it succeeds; return its stdout or raise with the last output."""
        deadline = time.monotonic() + within
        while True:
            p = self.run(script, check=False, timeout=max(5.0, within))
            if p.returncode == 0:
                return p.stdout
            if time.monotonic() > deadline:
                raise ContainerError(f"in {self.name}: `{script}` did not succeed within "
                                     f"{within} s; last exit {p.returncode}\n{p.stdout}{p.stderr}")
            time.sleep(interval)

    def put(self, name: str, data: bytes | str) -> str:
        """Write a file into the shared directory; return its path inside (/share/NAME)."""
        path = self.share / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return f"/share/{name}"

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no console log)"

    def stop(self) -> None:
        """Power off (SIGTERM to nspawn), force after 10 s, remove the cgroups."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()        # a second SIGTERM: nspawn kills immediately
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        for cg in self.cgroups:
            for sub in sorted(cg.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    _rmdir(sub)
            _rmdir(cg)
        if self.proc is not None and self.proc.returncode == 0:
            self.console_log.unlink(missing_ok=True)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
