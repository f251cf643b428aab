"""Test support: a :class:`ControlServer` running in a background thread.

For tests of anything that talks to the control socket (the CLI, the client) without
a daemon: pass a ``dispatch`` coroutine function, get a live socket::

    async def dispatch(cmd, args, peer):
        return {"tunnels": {}}

    with ServerThread(tmp_path / "control.sock", dispatch) as server:
        assert client.call(str(server.path), "status") == {"tunnels": {}}

The thread owns its own event loop; ``__exit__`` closes the server (unlinking the
socket) and joins the thread, bounded by ``timeout`` seconds.

For tests of the socket's rights against a real daemon, :func:`group_daemon` runs
``python -m tund`` with a ``control_group`` and an ``admin_group`` and no tunnels.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tund.control import client
from tund.control.server import ControlServer, Dispatch


class ServerThread:
    """Run ``ControlServer(path, dispatch, **kwargs)`` on a private loop in a thread."""

    def __init__(self, path: str | os.PathLike[str], dispatch: Dispatch,
                 timeout: float = 10.0, **kwargs: Any) -> None:
        self.path = Path(path)
        self.server = ControlServer(path, dispatch, **kwargs)
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="control-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the thread; re-raise the server's start-up error, if any."""
        self._thread.start()
        if not self._ready.wait(self._timeout):
            raise TimeoutError(f"control server on {self.path} did not start "
                               f"within {self._timeout}s")
        if self._error is not None:
            self._thread.join(self._timeout)
            raise self._error

    def stop(self) -> None:
        """Close the server and join the thread."""
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self._timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"control server thread on {self.path} did not stop")

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as e:  # handed to the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    sock: Path
    log: Path


@contextlib.contextmanager
def group_daemon(control_gid: int, admin_gid: int, prefix: str) -> Iterator[Daemon]:
    """A real ``python -m tund`` whose control socket ``control_gid`` may read and
    ``admin_gid`` administer, in a fresh ``/var/tmp/PREFIX*`` directory others may enter
    (the socket's own mode decides). Yielded once it answers ``status`` (15 s at most);
    terminated by PID and its directory removed on exit, also on failure."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    d.chmod(0o755)  # others may reach the socket; its own mode decides
    cfg, sock, log = d / "tunnels.toml", d / "control.sock", d / "tund.log"
    cfg.write_text(f'[daemon]\ncontrol_group = "{control_gid}"\nadmin_group = "{admin_gid}"\n')
    cfg.chmod(0o644)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tund", "--config", str(cfg),
                                 "--control-socket", str(sock)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "daemon did not come up:\n" + log.read_text()
            try:
                client.call(str(sock), "status", timeout=2)
                break
            except Exception:
                time.sleep(0.1)
        yield Daemon(proc, sock, log)
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(d, ignore_errors=True)
