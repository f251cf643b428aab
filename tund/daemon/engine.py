"""The running state of the daemon: devices, underlay listeners, tunnel runners; reload.

Contract: :class:`Engine` is what control commands act on. It owns

* one held fd per configured interface (the daemon keeps the device attached, so a
  non-persistent device lives exactly as long as the daemon, and a restarted worker gets
  the same device and the packets queued meanwhile);
* one pre-bound underlay socket per listening tunnel and per tunnel that connects over
  UDP (survives worker restarts; carries the tunnel's mark, which a worker may not set);
* one :class:`~tund.supervise.runner.TunnelRunner` per tunnel;
* the fork server (:mod:`tund.supervise.forkserver`) that starts their workers, started
  first at :meth:`Engine.start` so its imports overlap the device setup, stopped last.

At start every listening socket is bound, every device is opened, then all of them are
configured together (:func:`tund.netdev.reconcile.apply_many`: three reads and one
``ip -batch``, run off the event loop), then every tunnel is started.

:meth:`reload` validates the whole new config first (nothing changes if it is invalid),
plans with :func:`tund.daemon.plan.diff`, and touches only what changed: the steps of
:mod:`tund.daemon.reload` (the same list for a dry run and for the apply), which act on
the engine through the methods under "reload targets". Reloads (and up/down/restart) are
serialized. The status reply is assembled by :mod:`tund.daemon.status`.

``timers`` (test-only: ``tund --test-timers``) go into every worker's spec unchanged.

Size: one class, the daemon's running state: devices, listeners and runners are changed
together by the reload steps and read together by status, so their bookkeeping stays in one
place (the steps are in reload, status in status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tund import config
from tund.config import Config, DaemonConfig
from tund.daemon import plan, specs, status
from tund.daemon import reload as reloading
from tund.daemon.counterstore import CounterStore
from tund.daemon.keyfiles import KeyMaterial, read_keys
from tund.daemon.peerstore import PeerStore
from tund.daemon.reresolve import TEST_TIMERS, Reresolver, apply_overrides
from tund.daemon.targets import Targets
from tund.errors import ConfigError, ConfigIssue, ErrorCode, KernelError, ReloadError, TundError
from tund.netdev import policy, tuntap
from tund.netdev.ip import Ip, IpRunner
from tund.netdev.sysctl import NoSysctl, ProcSysctl, Sysctl
from tund.supervise.forkserver import ForkServer, ForkServerError, Launcher, SpawnLauncher
from tund.supervise.runner import Limits, TunnelRunner
from tund.supervise.worker import WorkerProcess, worker_class
from tund.workerapi.messages import Peers
from tund.workerapi.run_as import WorkerIds, WorkerUserError, group_ids, resolve_worker_user
from tund.workerapi.spec import WorkerSpec

log = logging.getLogger("tund.daemon.engine")


class NotFound(TundError):
    code = ErrorCode.NOT_FOUND


#: Seconds a status request at start-up waits for the tunnels to be started.
STARTUP_STATUS_WAIT = 5.0


class Engine(Targets):
    """Devices, listeners and tunnel runners for one configuration at a time."""

    def __init__(self, config_path: Path, ip: Ip | None = None,
                 fork_server: bool = True, timers: Mapping[str, float] | None = None,
                 test_malformed: int = 0, peers_file: Path | None = None,
                 counters_file: Path | None = None, sysctl: Sysctl | None = None) -> None:
        """``fork_server`` False: every worker is spawned as a fresh interpreter.
        ``timers``: test-only timer overrides passed to every worker (see WorkerSpec).
        ``test_malformed``: test-only, the first this many workers send a malformed
        message (``tund --test-malformed-state``).
        ``peers_file``: where the listeners' last peer endpoints outlive the daemon.
        ``counters_file``: where per-peer lifetime counters outlive it (issue 18.5).
        ``sysctl``: what sets /proc/sys; default the real one, but none at all (a
        recorder) for an engine given an ``ip`` of its own (a test's fake)."""
        self.config_path = config_path
        self.ip: Ip = ip or IpRunner()
        self.sysctl: Sysctl = (sysctl if sysctl is not None
                               else ProcSysctl() if ip is None else NoSysctl())
        given = dict(timers or {})
        self.timers = {k: v for k, v in given.items() if k not in TEST_TIMERS}  # workers'
        self.test_malformed = test_malformed
        self.config: Config | None = None
        self.devices: dict[str, tuntap.OpenedDevice] = {}
        self.device_errors: dict[str, str] = {}
        self.listeners: dict[str, socket.socket] = {}
        self.dns_set: set[str] = set()  # interfaces whose dns tund set (reverted at stop)
        self.runners: dict[str, TunnelRunner] = {}
        self.keys: dict[str, KeyMaterial] = {}
        self.key_errors: dict[str, str] = {}
        self.started = time.time()
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None
        self.peers = PeerStore(peers_file)
        self.counters = CounterStore(counters_file)
        self.reresolver = Reresolver(
            stale_after=given.get("reresolve_stale", TEST_TIMERS["reresolve_stale"]),
            every=given.get("reresolve_every", TEST_TIMERS["reresolve_every"]))
        self._lock = asyncio.Lock()
        self._worker_user: tuple[object, ...] | None = None
        self._worker_cls: type[WorkerProcess] = WorkerProcess
        self._ids: WorkerIds | None = None
        self.started_tunnels = asyncio.Event()  # start() began starting tunnels
        self._starting = False
        self.fork_server: ForkServer | None = ForkServer() if fork_server else None
        self._launcher: Launcher = SpawnLauncher()

    # ------------------------------------------------------------------ start / stop

    async def start(self, cfg: Config) -> None:
        """Bring up every interface and start every tunnel of ``cfg``."""
        self._starting = True
        try:
            async with self._lock:
                await self._start(cfg)
        finally:
            self._starting = False
            self.started_tunnels.set()

    async def _start(self, cfg: Config) -> None:
        self._set_worker_user(cfg.daemon)  # ConfigError: nothing started
        self.config = cfg
        self.peers.keep_only(set(cfg.tunnels))
        self.counters.keep_only(set(cfg.tunnels))
        self._start_fork_server()
        self._read_all_keys(cfg)
        self._bind_listeners(cfg)
        await self._bring_up_all(cfg)
        if self.fork_server is not None:  # its imports overlapped the devices' set-up
            await self.fork_server.wait_ready()
        # yield to the loop between tunnels: with many, status requests and the
        # workers already started are served while the rest comes up
        for name in cfg.tunnels:
            self.start_tunnel(name)
            self.started_tunnels.set()
            await asyncio.sleep(0)

    def _bind_listeners(self, cfg: Config) -> None:
        """Bind every listening tunnel's socket (and every connecting UDP tunnel's) before
        starting any worker, so that what peers send meanwhile (handshakes) waits in the
        socket instead of being refused.

        A socket that cannot be bound is left for :meth:`_make_spec`, which tries again
        and reports the error as the tunnel's own.
        """
        for name, t in cfg.tunnels.items():
            if specs.daemon_binds(t) and name not in self.listeners:
                try:
                    self.listeners[name] = specs.bind_underlay(t, policy.mark(cfg, name))
                except OSError:
                    continue  # reported by _make_spec when the tunnel starts

    def _start_fork_server(self) -> None:
        """Start the zygote (not waiting for it); spawn workers if it cannot start."""
        if self.fork_server is None:
            return
        try:
            self.fork_server.start()
        except ForkServerError as e:
            log.warning("%s; workers are spawned one by one instead", e)
            self.fork_server = None
            return
        self._launcher = self.fork_server

    async def shutdown(self) -> None:
        """Stop workers; keep persistent devices (with addresses); drop the rest."""
        async with self._lock:
            # fresh counters first: what a worker counted since its last pong is kept too
            await asyncio.gather(*(r.refresh() for r in self.runners.values()))
            up = [(n, self.config.interfaces[n]) for n in self.devices
                  if self.config is not None and n in self.config.interfaces
                  and n not in self.device_errors]
            for name, iface in up:
                await self._hooks(name, iface, "pre_down")
            await asyncio.gather(*(r.stop() for r in self.runners.values()))
            self.save_counters(force=True)
            self.peers.flush()
            self.runners.clear()
            await self._remove_all_policies()
            for s in self.listeners.values():
                s.close()
            self.listeners.clear()
            await self._revert_all_dns()
            for name, dev in list(self.devices.items()):
                persistent = self.config is not None and self.config.interfaces[name].persist
                log.info("[#] close %s (%s)", name,
                         "persistent: stays" if persistent else "not persistent: removed",
                         extra=self._fields_of_interface(name))
                tuntap.close(dev.fd)
            self.devices.clear()
            for name, iface in up:
                await self._hooks(name, iface, "post_down")
            if self.fork_server is not None:
                self.fork_server.close()

    # ------------------------------------------------------------------ tunnels

    def _read_all_keys(self, cfg: Config) -> None:
        self.keys.clear()
        self.key_errors.clear()
        for name, t in cfg.tunnels.items():
            try:
                self.keys[name] = read_keys(t)
            except (OSError, ValueError) as e:
                self.key_errors[name] = str(e)

    def _make_spec(self, name: str) -> WorkerSpec:
        assert self.config is not None
        self.reresolver.forget(name)  # a new worker resolves the endpoint names itself
        t = self.config.tunnels[name]
        if t.interface in self.device_errors:
            raise KernelError(f"interface {t.interface}: {self.device_errors[t.interface]}")
        dev = self.devices.get(t.interface)
        if dev is None:
            raise KernelError(f"interface {t.interface} is not open")
        if name in self.key_errors:
            raise ValueError(self.key_errors[name])
        km = self.keys.get(name, KeyMaterial(None, None, None))
        sock_fd = None
        if specs.daemon_binds(t):
            if name not in self.listeners:
                self.listeners[name] = specs.bind_underlay(t, policy.mark(self.config, name))
            sock_fd = self.listeners[name].fileno()
        malformed, self.test_malformed = self.test_malformed > 0, max(0, self.test_malformed - 1)
        return specs.worker_spec(name, self.config, dev.fd, sock_fd, km,
                                 known_peer=self.peers.get(name), timers=self.timers,
                                 test_malformed=malformed)

    def _set_worker_user(self, d: DaemonConfig) -> None:
        """Tunnels started from now on get their identities from ``d``: a uid of their own
        from the worker uid range, else ``worker_user`` (see :class:`WorkerIds`).

        Raises ConfigError (located at ``daemon.worker_user``) when ``worker_user`` does
        not exist; nothing is changed then."""
        key = (d.worker_user, d.worker_uid_base, d.worker_uid_count, d.control_group,
               d.admin_group)
        if key == self._worker_user:
            return
        try:
            fallback = resolve_worker_user(d.worker_user)
        except WorkerUserError as e:
            raise ConfigError([ConfigIssue(str(self.config_path), 0, "daemon.worker_user",
                                           str(e))]) from None
        self._worker_user = key
        avoid = group_ids(d.control_group, d.admin_group)
        held = self._ids.held if self._ids is not None else {}
        self._ids = WorkerIds(d.worker_uid_base, d.worker_uid_count, fallback, avoid)
        self._ids.held.update(held)  # live tunnels keep theirs
        self._worker_cls = worker_class(fallback, self._launcher)

    def _spawn_class(self, name: str) -> tuple[type[WorkerProcess], str | None]:
        """The worker class of tunnel ``name`` (its identity), or the error saying why
        there is none."""
        if self._ids is None:
            return self._worker_cls, None
        try:
            return worker_class(self._ids.for_tunnel(name), self._launcher), None
        except OSError as e:
            return self._worker_cls, str(e)

    def runner(self, name: str) -> TunnelRunner:
        try:
            return self.runners[name]
        except KeyError:
            known = ", ".join(sorted(self.runners)) or "none"
            raise NotFound(f"no tunnel named {name!r} (configured: {known})") from None

    # up/down/restart take the reload lock: they never interleave with a reload.

    async def tunnel_up(self, name: str) -> dict[str, Any]:
        async with self._lock:
            r = self.runner(name)
            if r.worker is None:
                await self._tunnel_policy(name, up=True)
                r.start()
            return {"tunnel": name, "state": str(r.state)}

    async def tunnel_down(self, name: str) -> dict[str, Any]:
        async with self._lock:
            r = self.runner(name)
            await r.stop()
            await self._tunnel_policy(name, up=False)
            return {"tunnel": name, "state": str(r.state)}

    async def tunnel_restart(self, name: str) -> dict[str, Any]:
        async with self._lock:
            r = self.runner(name)
            await r.stop()
            r.start()
            return {"tunnel": name, "state": str(r.state)}

    # ------------------------------------------------------------------ reload

    async def reload(self, dry_run: bool = False) -> dict[str, Any]:
        """Validate, plan, apply. Raises ConfigError (nothing changed) or ReloadError."""
        async with self._lock:
            try:
                new = config.load(self.config_path)
            except ConfigError as e:
                self._note_reload(False, f"invalid config: {len(e.issues)} problem(s)")
                raise
            new_keys: dict[str, KeyMaterial] = {}
            for name, t in new.tunnels.items():
                try:
                    new_keys[name] = read_keys(t)
                except (OSError, ValueError) as e:
                    self._note_reload(False, f"tunnel {name}: {e}")
                    raise ConfigError([ConfigIssue(
                        str(self.config_path), 0, f"tunnels.{name}", str(e))]) from None
            try:  # a reload whose worker_user does not exist is refused
                resolve_worker_user(new.daemon.worker_user)
            except WorkerUserError as e:
                self._note_reload(False, str(e))
                raise ConfigError([ConfigIssue(str(self.config_path), 0,
                                               "daemon.worker_user", str(e))]) from None
            p = plan.diff(self.config, new,
                          {n: k.fingerprint() for n, k in self.keys.items()},
                          {n: k.fingerprint() for n, k in new_keys.items()},
                          {n: k.peer_fingerprints() for n, k in self.keys.items()},
                          {n: k.peer_fingerprints() for n, k in new_keys.items()},
                          failed=dict(self.device_errors))
            if dry_run:
                return {**p.summary(), "actions": reloading.lines(self._steps(p, new, new_keys)),
                        "dry_run": True, "notes": list(p.daemon_notes)}
            try:
                actions = await self._apply(p, new, new_keys)
            except ReloadError as e:
                self._note_reload(False, str(e))
                raise
            for warning in config.skipped_default_routes(new):
                log.info("%s", warning)
            self._note_reload(True, "applied" if actions else "nothing to do")
            return {**p.summary(), "actions": actions, "dry_run": False,
                    "notes": list(p.daemon_notes)}

    def _note_reload(self, ok: bool, message: str) -> None:
        self.reloads += 1
        self.last_reload = {"time": time.time(), "ok": ok, "message": message}

    def _steps(self, p: plan.Plan, new: Config,
               new_keys: dict[str, KeyMaterial]) -> list[reloading.Step]:
        """The reload's steps (:func:`tund.daemon.reload.build`); ReloadError if the links
        cannot be read (nothing was changed)."""
        try:
            return reloading.build(self, p, new, new_keys)
        except KernelError as e:
            raise ReloadError(f"reload failed while planning: {e}; nothing was changed") from e

    async def _apply(self, p: plan.Plan, new: Config,
                     new_keys: dict[str, KeyMaterial]) -> list[str]:
        """Run the steps of ``p`` as a transaction (:func:`tund.daemon.reload.run`)."""
        return await reloading.run(self._steps(p, new, new_keys))

    # reload targets (tund.daemon.reload.Target): what the steps of a reload do and undo;
    # the device, listener and "tell worker" ones are tund.daemon.targets.Targets'

    async def stop_tunnel(self, name: str) -> None:
        """Stop the tunnel's worker, drop its runner, close its listening socket."""
        runner = self.runners.pop(name, None)
        if runner is not None:
            await runner.stop()
        if self._ids is not None:
            self._ids.release(name)
        self.close_listener(name)

    def start_tunnel(self, name: str) -> None:
        """A new runner for tunnel ``name`` of the config in force; its worker starts now."""
        assert self.config is not None
        t = self.config.tunnels[name]
        spawn, error = self._spawn_class(name)

        def make_spec() -> WorkerSpec:
            if error is not None:
                raise OSError(error)
            return self._make_spec(name)

        runner = TunnelRunner(name, make_spec, Limits.from_config(self.config.daemon),
                              specs.describe(t), spawn=spawn,
                              on_peer=lambda peer: self.peers.remember(name, peer),
                              peer_base=self.counters.base(name),
                              on_counters=self.save_counters)
        self.runners[name] = runner
        runner.start()

    def save_counters(self, force: bool = False) -> None:
        """Write every tunnel's per-peer lifetime counters (throttled unless ``force``)."""
        self.counters.save({n: r.lifetime() for n, r in self.runners.items()}, force)

    async def reresolve(self) -> None:
        """Look up again the endpoint names of peers without a handshake for a while
        (:mod:`tund.daemon.reresolve`); tell a worker whose peer moved."""
        cfg = self.config
        if cfg is None:
            return
        for name, runner in list(self.runners.items()):
            t = cfg.tunnels.get(name)
            if t is None or t.peers is None or runner.worker is None:
                continue
            if not await self.reresolver.check(cfg, name, runner.live_peers(),
                                               runner.worker_since):
                continue
            async with self._lock:  # no reload in between: the same config and runner
                if self.config is not cfg or self.runners.get(name) is not runner:
                    continue
                entries = apply_overrides(specs.peer_entries(t, self.keys.get(name)),
                                          self.reresolver.overrides.get(name, {}))
                runner.send(Peers(tuple(entries)))

    def switch(self, cfg: Config, keys: Mapping[str, KeyMaterial],
               key_errors: Mapping[str, str]) -> None:
        """Put ``cfg`` and its tunnels' key material in force (workers started later)."""
        self.config = cfg
        self.peers.keep_only(set(cfg.tunnels))
        self.counters.keep_only(set(cfg.tunnels))
        self.keys = dict(keys)
        self.key_errors = dict(key_errors)
        self._set_worker_user(cfg.daemon)

    # ------------------------------------------------------------------ status

    async def status(self, tunnel: str | None = None) -> dict[str, Any]:
        if self._starting:  # not before the first tunnel (the fork server's imports come
            # first); the loop turns meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.started_tunnels.wait(), STARTUP_STATUS_WAIT)
        runners = [self.runner(tunnel)] if tunnel else list(self.runners.values())
        await asyncio.gather(*(r.refresh() for r in runners))
        ifaces = ({} if tunnel is not None
                  else status.interfaces(self.config, self.devices, self.device_errors))
        now = time.time()
        tunnels = {}
        for r in runners:
            st = r.status()
            cfg = self.config.tunnels.get(r.name) if self.config is not None else None
            st["peers"] = status.tunnel_peers(cfg, st.get("peers") or {}, now)
            tunnels[r.name] = st
        return status.reply(config_path=self.config_path, started=self.started,
                            reloads=self.reloads, last_reload=self.last_reload, ifaces=ifaces,
                            tunnels=tunnels)

    def counts(self) -> tuple[int, int]:
        """(tunnels up, tunnels configured), for the systemd STATUS= line."""
        up = sum(1 for r in self.runners.values() if str(r.state) == "up")
        return up, len(self.runners)
