"""``tund``: the daemon's composition root.

config -> :class:`~tund.daemon.engine.Engine` (devices, workers) -> control socket -> systemd.
Runs in the foreground. Signal handlers only queue work for the loop: SIGHUP reloads,
SIGTERM/SIGINT stop cleanly (workers stopped, persistent devices kept).

Exit status: 0 after a clean stop; 1 when the config is invalid at start (every problem
printed, located) or the control socket cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any

from tund import __version__, config, proctitle, sdnotify
from tund.config import Config
from tund.config.model import DEFAULT_CONTROL_SOCKET
from tund.control import auth
from tund.control.server import ControlServer, PeerCred
from tund.daemon import commands, counterstore
from tund.daemon.engine import Engine
from tund.errors import ConfigError, TundError

log = logging.getLogger("tund.daemon.main")

#: commands after which /metrics must not serve the snapshot taken before them
CHANGING = frozenset({"reload", "up", "down", "restart"})


#: Seconds a peer's admin_group membership is remembered for the control socket's slots.
ADMIN_CACHE_TTL = 5.0


class Daemon:
    """The loop-side glue: control socket, signals, systemd notifications."""

    def __init__(self, cfg: Config, config_path: Path, socket_path: str,
                 timers: Mapping[str, float] | None = None, test_malformed: int = 0) -> None:
        """``timers``: test-only timer overrides for every worker (``--test-timers``);
        ``test_malformed``: test-only (``--test-malformed-state``, see Engine)."""
        self.cfg = cfg
        self.engine = Engine(config_path, timers=timers, test_malformed=test_malformed,
                             peers_file=Path(socket_path).with_name("peers.json"),
                             counters_file=counterstore.state_dir(
                                 socket_path, DEFAULT_CONTROL_SOCKET) / "counters.json")
        self.socket_path = socket_path
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._admin_cache: dict[tuple[int, int], tuple[float, bool]] = {}
        self._metrics: Any = None  # tund.daemon.metrics.MetricsServer when [daemon] metrics_listen

    def policy(self) -> auth.Policy:
        """Who may do what: the groups of the configuration in force (reloads included)."""
        d = self.engine.config.daemon if self.engine.config is not None else self.cfg.daemon
        return auth.Policy.current(d.control_group, d.admin_group)

    async def dispatch(self, cmd: str, args: dict[str, Any],
                       peer: PeerCred | None = None) -> dict[str, Any]:
        """Run ``cmd`` for ``peer`` (None: the daemon itself, e.g. SIGHUP).

        Raises what :func:`tund.daemon.commands.authorized` raises, or the handler's
        TundError. A reload that changes things is announced to systemd (RELOADING=1).
        """
        handler = commands.authorized(cmd, peer, self.policy)
        try:
            if cmd == "reload" and not args.get("dry_run"):
                sdnotify.notify("RELOADING=1", "STATUS=reloading")
                try:
                    return await handler(self.engine, args)
                finally:
                    sdnotify.notify("READY=1", self._status_line())
            return await handler(self.engine, args)
        finally:
            if cmd in CHANGING and self._metrics is not None:
                self._metrics.invalidate()  # a scrape after it shows the change

    def _is_admin(self, peer: PeerCred) -> bool:
        """Whether ``peer`` holds admin rights (a member of admin_group), for the control
        socket's reserved slots; cached per (uid, gid) for ADMIN_CACHE_TTL seconds, since
        it is asked for every connection (a flood included)."""
        key, now = (peer.uid, peer.gid), time.monotonic()
        hit = self._admin_cache.get(key)
        if hit is not None and now - hit[0] < ADMIN_CACHE_TTL:
            return hit[1]
        ok = auth.has_right("admin", peer.uid, peer.gid, self.policy())
        if len(self._admin_cache) >= 1024:
            self._admin_cache.clear()
        self._admin_cache[key] = (now, ok)
        return ok

    def _status_line(self) -> str:
        up, total = self.engine.counts()
        return f"STATUS={up} of {total} tunnels up"

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.engine.config_path)
        try:
            result = await self.dispatch("reload", {})
            log.info("reload done: %s", result.get("actions"))
        except ConfigError as e:
            log.error("reload refused, running config kept:\n%s", e)
        except TundError as e:
            log.error("reload failed: %s", e)

    async def _watchdog(self, interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)

    async def _status_updates(self) -> None:
        last = ""
        while True:
            line = self._status_line()
            if line != last:
                sdnotify.notify(line)
                last = line
            await asyncio.sleep(1.0)

    async def _reresolve(self) -> None:
        """Every ``reresolver.every`` seconds: peers' endpoint names looked up again when
        due (:mod:`tund.daemon.reresolve`)."""
        while True:
            await asyncio.sleep(self.engine.reresolver.every)
            try:
                await self.engine.reresolve()
            except Exception:  # a bug here must not stop the daemon; it is logged
                log.exception("re-resolving peer endpoints failed")

    async def _start_metrics(self) -> None:
        """Serve /metrics if configured; a failure is logged, the tunnels run on regardless."""
        listen = self.cfg.daemon.metrics_listen
        if not listen:
            return
        try:
            from tund.daemon import metrics  # late: prometheus_client only when metrics are on

            host, port = metrics.parse_listen(listen)
            server = metrics.MetricsServer(host, port, lambda: self.engine.status())
            await server.start()
        except (ImportError, OSError, ValueError) as e:
            log.error("metrics: cannot serve on %s: %s", listen, e)
            return
        self._metrics = server

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        d = self.cfg.daemon
        # The socket's group: control_group, else admin_group (whose members could not even
        # connect otherwise). With both set, admins must also be in control_group to connect.
        server = ControlServer(self.socket_path, self.dispatch,
                               group=d.control_group or d.admin_group,
                               max_request=d.control_max_request,
                               idle_timeout=d.control_timeout,
                               max_clients=d.control_max_clients,
                               reserved=self._is_admin)
        try:
            await server.start()
        except (OSError, TundError) as e:
            log.error("cannot open control socket %s: %s", self.socket_path, e)
            return 1
        try:
            try:
                await self.engine.start(self.cfg)
            except ConfigError as e:
                log.error("not starting:\n%s", e)
                return 1
            await self._start_metrics()
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._sighup()))
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            sdnotify.notify("READY=1", self._status_line())
            log.info("tund %s ready: %d interface(s), %d tunnel(s), control socket %s",
                     __version__, len(self.cfg.interfaces), len(self.cfg.tunnels),
                     self.socket_path)
            wd = sdnotify.watchdog_interval()
            if wd:
                self._spawn(self._watchdog(wd))
            self._spawn(self._status_updates())
            self._spawn(self._reresolve())
            await self._stop.wait()
            log.info("stopping")
            sdnotify.notify("STOPPING=1", "STATUS=stopping")
        finally:
            for t in list(self._tasks):
                t.cancel()
            await server.close()
            if self._metrics is not None:
                await self._metrics.close()
            await self.engine.shutdown()
        return 0


def parse_timers(text: str) -> dict[str, float]:
    """``name=seconds,...`` -> ``{name: seconds}`` (the names are checked by the workers)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected name=seconds[,name=seconds...] (got {part!r})") from None
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="tund", description="TUN/TAP tunnel daemon (foreground).")
    ap.add_argument("--config", type=Path, default=None,
                    help=f"configuration file (default {config.DEFAULT_CONFIG}, "
                         "plus drop-ins in tunnels.d/)")
    ap.add_argument("--control-socket", default=None,
                    help="control socket path (overrides [daemon] control_socket)")
    ap.add_argument("--log-level", default=None,
                    choices=["debug", "info", "warning", "error"],
                    help="log level (overrides [daemon] log_level)")
    ap.add_argument("--version", action="version", version=f"tund {__version__}")
    # For tests only (e.g. rekey_after_time=3 makes WireGuard rekey every 3 s): timer
    # overrides passed to every worker, see tund.relay.wireguard.timers. Not in --help.
    ap.add_argument("--test-timers", type=parse_timers, default={}, metavar="NAME=SECONDS,...",
                    help=argparse.SUPPRESS)
    # For tests only: the first N workers send one malformed state message (a compromised
    # worker); the daemon must kill and replace each. Not in --help.
    ap.add_argument("--test-malformed-state", type=int, default=0, metavar="N",
                    help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tund import logs

    path = (args.config or config.default_config_path()).absolute()  # status names it
    try:
        cfg = config.load(path)
    except ConfigError as e:
        logs.setup(args.log_level or "info")
        for issue in e.issues:
            print(f"tund: {issue}", file=sys.stderr)
        print(f"tund: {len(e.issues)} problem(s) in the configuration; not starting",
              file=sys.stderr)
        return 1
    logs.setup(args.log_level or cfg.daemon.log_level)
    proctitle.set_title(proctitle.daemon_title(str(path)), "tund")
    socket_path = args.control_socket or cfg.daemon.control_socket
    return asyncio.run(Daemon(cfg, path, socket_path, timers=args.test_timers,
                              test_malformed=args.test_malformed_state).run())


if __name__ == "__main__":
    sys.exit(main())
