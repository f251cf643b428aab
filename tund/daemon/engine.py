"""The running state of the daemon: devices, underlay listeners, tunnel runners; reload.

Contract: :class:`Engine` is what control commands act on. It owns

* one held fd per configured interface (the daemon keeps the device attached, so a
  non-persistent device lives exactly as long as the daemon, and a restarted worker gets
  the same device and the packets queued meanwhile);
* one pre-bound underlay socket per listening tunnel (survives worker restarts);
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
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tund import config, logs
from tund.config import Config, InterfaceConfig, TunnelConfig
from tund.daemon import plan, status
from tund.daemon import reload as reloading
from tund.daemon.keyfiles import KeyMaterial, read_keys
from tund.daemon.peerstore import PeerStore
from tund.daemon.status import sysfs_mtu
from tund.errors import ConfigError, ConfigIssue, ErrorCode, KernelError, ReloadError, TundError
from tund.netdev import conflicts, dns, hooks, policy, reconcile, tuntap
from tund.netdev.ip import Ip, IpRunner
from tund.supervise.forkserver import ForkServer, ForkServerError, Launcher, SpawnLauncher
from tund.supervise.runner import Limits, TunnelRunner
from tund.supervise.worker import WorkerProcess, worker_class
from tund.workerapi import underlay
from tund.workerapi.messages import Peers, Update
from tund.workerapi.run_as import WorkerUserError, resolve_worker_user
from tund.workerapi.spec import WorkerSpec

log = logging.getLogger("tund.daemon.engine")


class NotFound(TundError):
    code = ErrorCode.NOT_FOUND


def _vnet_hdr(iface: InterfaceConfig) -> bool:
    """Tun devices without packet info carry a vnet header (offloads: tund.relay.codec.offload)."""
    return iface.mode == "tun" and not iface.packet_info


def peer_entries(t: TunnelConfig, km: KeyMaterial | None) -> list[dict[str, Any]]:
    """The enabled peers of ``t`` as the worker takes them (tund.workerapi.spec.check_peer),
    with each peer's preshared key from ``km``."""
    psks = km.peer_preshared_keys if km is not None else {}
    return [{"name": name, "public_key": p.public_key, "preshared_key": psks.get(name),
             "allowed_ips": [str(r) for r in p.allowed_ips], "endpoint": p.endpoint,
             "keepalive": p.keepalive}
            for name, p in sorted((t.peers or {}).items()) if p.enabled]


def bind_underlay(t: TunnelConfig, mark: int = 0) -> socket.socket:
    """Open the listening (TCP) or bound (UDP) socket of a ``listen`` tunnel, with its
    mark (:func:`tund.netdev.policy.mark`: SO_MARK needs CAP_NET_ADMIN, which the worker
    has not)."""
    host, port = t.endpoint
    return underlay.bind_underlay(t.transport, host, port, mark=mark)


def _run_steps(ip: Ip, name: str, steps: Sequence[reconcile.Step]) -> None:
    """Run ``steps`` (each logged by ``ip``); on a failure undo those run, re-raise."""
    done: list[reconcile.Step] = []
    for step in steps:
        try:
            ip.run(step.argv)
        except KernelError:
            log.warning("%s: %r failed; undoing %d step(s)", name, step.describe, len(done),
                        extra={"TUND_INTERFACE": name})
            reconcile.rollback(ip, done)
            raise
        done.append(step)


class Engine:
    """Devices, listeners and tunnel runners for one configuration at a time."""

    def __init__(self, config_path: Path, ip: Ip | None = None,
                 fork_server: bool = True, timers: Mapping[str, float] | None = None,
                 test_malformed: int = 0, peers_file: Path | None = None) -> None:
        """``fork_server`` False: every worker is spawned as a fresh interpreter.
        ``timers``: test-only timer overrides passed to every worker (see WorkerSpec).
        ``test_malformed``: test-only, the first this many workers send a malformed
        message (``tund --test-malformed-state``).
        ``peers_file``: where the listeners' last peer endpoints outlive the daemon."""
        self.config_path = config_path
        self.ip: Ip = ip or IpRunner()
        self.timers = dict(timers or {})
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
        self._lock = asyncio.Lock()
        self._worker_user: str | None = None
        self._worker_cls: type[WorkerProcess] = WorkerProcess
        self.fork_server: ForkServer | None = ForkServer() if fork_server else None
        self._launcher: Launcher = SpawnLauncher()

    # ------------------------------------------------------------------ start / stop

    async def start(self, cfg: Config) -> None:
        """Bring up every interface and start every tunnel of ``cfg``."""
        async with self._lock:
            self._set_worker_user(cfg.daemon.worker_user)  # ConfigError: nothing started
            self.config = cfg
            self.peers.keep_only(set(cfg.tunnels))
            self._start_fork_server()
            self._read_all_keys(cfg)
            self._bind_listeners(cfg)
            await self._bring_up_all(cfg)
            # yield to the loop between tunnels: with many, status requests and the
            # workers already started are served while the rest comes up
            for name in cfg.tunnels:
                self.start_tunnel(name)
                await asyncio.sleep(0)

    def _bind_listeners(self, cfg: Config) -> None:
        """Bind every listening tunnel's socket before starting any worker, so that what
        peers send meanwhile (handshakes) waits in the socket instead of being refused.

        A socket that cannot be bound is left for :meth:`_make_spec`, which tries again
        and reports the error as the tunnel's own.
        """
        for name, t in cfg.tunnels.items():
            if t.role == "listen" and name not in self.listeners:
                try:
                    self.listeners[name] = bind_underlay(t, policy.mark(cfg, name))
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
            up = [(n, self.config.interfaces[n]) for n in self.devices
                  if self.config is not None and n in self.config.interfaces
                  and n not in self.device_errors]
            for name, iface in up:
                await self._hooks(name, iface, "pre_down")
            await asyncio.gather(*(r.stop() for r in self.runners.values()))
            self.runners.clear()
            if self.config is not None:
                names = list(self.config.interfaces)
                for i, name in enumerate(names):
                    try:
                        await asyncio.to_thread(self.remove_policy, name, self.config,
                                                names[i + 1:])
                    except KernelError as e:
                        log.error("interface %s: %s", name, e, extra={"TUND_INTERFACE": name})
            for s in self.listeners.values():
                s.close()
            self.listeners.clear()
            for name in sorted(self.dns_set):
                try:
                    await asyncio.to_thread(self.revert_dns, name)
                except KernelError as e:
                    log.error("interface %s: %s", name, e, extra={"TUND_INTERFACE": name})
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

    # ------------------------------------------------------------------ interfaces

    def _fields_of_interface(self, name: str) -> dict[str, str]:
        """Journal fields of a message about device ``name`` (its tunnel's too, if any)."""
        found = self.config.tunnel_for(name) if self.config is not None else None
        return logs.fields(interface=name, tunnel=found[0] if found else None)

    def _open_and_configure(self, name: str, iface: InterfaceConfig) -> None:
        """Open (create or adopt) device ``name`` and apply its ``ip`` config; raises."""
        self.open_device(name, iface)
        reconcile.apply(self.ip, name, policy.main_routes(iface))
        if self.config is not None:
            self.apply_policy(name, self.config)
        self.device_errors.pop(name, None)

    def _bring_up(self, name: str, iface: InterfaceConfig) -> None:
        """At start: like _open_and_configure, but a failure is recorded, not raised, so
        the other interfaces and tunnels still come up."""
        try:
            assert self.config is not None
            conflicts.check(self.ip, name, iface.addresses, self.config.interfaces)
            conflicts.check_routes(self.ip, name, iface.routes, self.config.interfaces)
            self._open_and_configure(name, iface)
        except KernelError as e:
            self.device_errors[name] = str(e)
            log.error("interface %s: %s", name, e, extra={"TUND_INTERFACE": name})

    async def _bring_up_all(self, cfg: Config) -> None:
        """At start: open every device, then configure all of them in one go.

        A device that fails is recorded in ``device_errors`` (its own changes undone) and
        the others still come up. The ``ip`` runs happen in a thread, so the event loop
        keeps serving status requests meanwhile (the reload lock is held).
        """
        for warning in config.skipped_default_routes(cfg):
            log.info("%s", warning)
        opened: list[tuple[str, InterfaceConfig]] = []
        for name, effective in config.effective_interfaces(cfg).items():
            iface = policy.main_routes(effective)  # what reconcile sees (tund.netdev.policy)
            if not await self._hooks(name, iface, "pre_up", fail=True):
                continue  # its error is recorded; the others come up
            try:
                self.open_device(name, iface)
                opened.append((name, iface))
            except KernelError as e:
                self.device_errors[name] = str(e)
                log.error("interface %s: %s", name, e, extra={"TUND_INTERFACE": name})
        if not opened:
            return
        try:
            states = await asyncio.to_thread(reconcile.read_states, self.ip,
                                             [n for n, _ in opened])
        except KernelError as e:
            log.warning("cannot read the links at once (%s); configuring them one by one", e)
            for name, iface in opened:
                self._bring_up(name, iface)
                await asyncio.sleep(0)
            return
        opened, clashes = await asyncio.to_thread(conflicts.screen, self.ip, opened, states,
                                                  set(cfg.interfaces))
        for name, why in clashes.items():  # nothing of these applied: they fail alone
            self.device_errors[name] = why
            log.error("interface %s: %s", name, why, extra={"TUND_INTERFACE": name})
        results = await asyncio.to_thread(reconcile.apply_many, self.ip, opened, states)
        for name, applied in results.items():
            res: object = applied
            if not isinstance(res, KernelError):
                try:
                    await asyncio.to_thread(self.apply_policy, name, cfg)
                except KernelError as e:
                    res = e
            if isinstance(res, KernelError):
                self.device_errors[name] = str(res)
                log.error("interface %s: %s", name, res, extra={"TUND_INTERFACE": name})
            else:
                self.device_errors.pop(name, None)
                await self._after_up(name, cfg.interfaces[name])

    async def _hooks(self, name: str, iface: InterfaceConfig, phase: str,
                     fail: bool = False) -> bool:
        """Run one hook phase of ``name``; False if it failed (logged by tund.netdev.hooks).
        ``fail``: a failure also fails the interface (pre_up: it does not come up)."""
        try:
            await hooks.run_phase(name, phase, getattr(iface, phase), iface.hook_timeout)
        except hooks.HookError as e:
            if fail:
                self.device_errors[name] = str(e)
            return False
        return True

    async def _after_up(self, name: str, iface: InterfaceConfig) -> None:
        """A configured interface: its dns, then its post_up hooks (failures are logged,
        a dns failure recorded as the interface's error)."""
        if iface.dns:
            try:
                await asyncio.to_thread(self.set_dns, name, iface.dns)
            except KernelError as e:
                self.device_errors[name] = str(e)
                log.error("interface %s: %s", name, e, extra={"TUND_INTERFACE": name})
        await self._hooks(name, iface, "post_up")

    # ------------------------------------------------------------------ tunnels

    def _read_all_keys(self, cfg: Config) -> None:
        self.keys.clear()
        self.key_errors.clear()
        for name, t in cfg.tunnels.items():
            try:
                self.keys[name] = read_keys(t)
            except (OSError, ValueError) as e:
                self.key_errors[name] = str(e)

    def _describe(self, name: str, t: TunnelConfig) -> dict[str, Any]:
        return {"interface": t.interface, "transport": t.transport, "role": t.role,
                "endpoint": t.endpoint_text,
                "encryption": t.encryption, "keepalive": t.keepalive}

    def _make_spec(self, name: str) -> WorkerSpec:
        assert self.config is not None
        t = self.config.tunnels[name]
        iface = self.config.interfaces[t.interface]
        if t.interface in self.device_errors:
            raise KernelError(f"interface {t.interface}: {self.device_errors[t.interface]}")
        dev = self.devices.get(t.interface)
        if dev is None:
            raise KernelError(f"interface {t.interface} is not open")
        if name in self.key_errors:
            raise ValueError(self.key_errors[name])
        km = self.keys.get(name, KeyMaterial(None, None, None))
        sock_fd = None
        if t.role == "listen":
            if name not in self.listeners:
                self.listeners[name] = bind_underlay(t, policy.mark(self.config, name))
            sock_fd = self.listeners[name].fileno()
        host, port = t.endpoint
        malformed, self.test_malformed = self.test_malformed > 0, max(0, self.test_malformed - 1)
        resumable = t.role == "listen" and t.transport == "udp"
        return WorkerSpec(
            tunnel=name, interface=t.interface, mode=iface.mode, transport=t.transport,
            role=t.role, host=host, port=port, device_fd=dev.fd, socket_fd=sock_fd,
            mtu=iface.mtu or sysfs_mtu(t.interface) or 1500, packet_info=iface.packet_info,
            vnet_hdr=_vnet_hdr(iface), offload=t.offload,
            keepalive=t.keepalive, reconnect_min=t.reconnect_min,
            reconnect_max=t.reconnect_max, allowed_sources=t.allowed_sources,
            encryption=t.encryption,
            private_key=km.private_key, peer_public_key=km.peer_public_key,
            preshared_key=km.preshared_key,
            known_peer=self.peers.get(name) if resumable and t.peers is None else None,
            peers=peer_entries(t, km) if t.peers is not None else None,
            timers=dict(self.timers),
            test_malformed=malformed)

    def _set_worker_user(self, user: str) -> None:
        """Workers started from now on run as ``user`` (see tund.relay.process.privileges).

        Raises ConfigError (located at ``daemon.worker_user``) when ``user`` does not exist;
        nothing is changed then."""
        if user != self._worker_user:
            try:
                cls = worker_class(resolve_worker_user(user), self._launcher)
            except WorkerUserError as e:
                raise ConfigError([ConfigIssue(str(self.config_path), 0, "daemon.worker_user",
                                               str(e))]) from None
            self._worker_user = user
            self._worker_cls = cls

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

    async def _tunnel_policy(self, name: str, up: bool) -> None:
        """A tunnel taken down takes its interface's policy routing (a full tunnel's rules)
        with it, so the host's traffic is not sent into a tunnel nobody serves; up puts it
        back. A failure is logged (the tunnel's state says the rest)."""
        assert self.config is not None
        iface = self.config.tunnels[name].interface
        if iface in self.device_errors or iface not in self.devices:
            return
        try:
            if up:
                await asyncio.to_thread(self.apply_policy, iface, self.config)
            else:
                others = [n for n in self.config.interfaces if n != iface]
                await asyncio.to_thread(self.remove_policy, iface, self.config, others)
        except KernelError as e:
            log.error("interface %s: %s", iface, e, extra={"TUND_INTERFACE": iface})

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
            if new.daemon.worker_user != self._worker_user:
                try:
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

    # reload targets (tund.daemon.reload.Target): what the steps of a reload do and undo

    def open_device(self, name: str, iface: InterfaceConfig) -> None:
        """Create (or adopt) device ``name`` and hold it; its ``ip`` config is other steps."""
        if name not in self.devices:
            self.devices[name] = tuntap.open_device(
                name, iface.mode, packet_info=iface.packet_info,
                multi_queue=iface.multi_queue, persist=iface.persist,
                owner=iface.uid, group=iface.gid, vnet_hdr=_vnet_hdr(iface))
        self.device_errors.pop(name, None)

    async def retry_device(self, name: str, iface: InterfaceConfig) -> None:
        """Run pre_up, open and configure failed interface ``name`` again, then its dns and
        post_up; on failure it stays failed (its error replaced by the new one) and
        KernelError is raised."""
        try:
            await hooks.run_phase(name, "pre_up", iface.pre_up, iface.hook_timeout)
            self._open_and_configure(name, iface)
        except KernelError as e:
            self.device_errors[name] = str(e)
            raise
        log.info("interface %s: up after retry", name, extra={"TUND_INTERFACE": name})
        await self._after_up(name, iface)
        if name in self.device_errors:
            raise KernelError(self.device_errors[name])

    def set_dns(self, name: str, entries: tuple[str, ...]) -> None:
        """Give interface ``name`` these dns entries (none: revert what tund set)."""
        if not entries:
            self.revert_dns(name)
            return
        dns.set_dns(name, entries)
        self.dns_set.add(name)

    def revert_dns(self, name: str) -> None:
        """Revert the dns tund set on ``name`` (nothing if it set none)."""
        if name in self.dns_set:
            dns.revert(name)
            self.dns_set.discard(name)

    def restore_device(self, name: str, iface: InterfaceConfig) -> None:
        """Open device ``name`` and configure it as ``iface`` (the undo of deleting it)."""
        self._open_and_configure(name, iface)

    def remove_device(self, name: str) -> None:
        """Delete device ``name`` (if held) and forget it."""
        dev = self.devices.pop(name, None)
        self.device_errors.pop(name, None)
        if dev is not None:
            tuntap.delete_device(name, dev.fd)

    def set_persist(self, name: str, on: bool) -> None:
        tuntap.set_persist(self.devices[name].fd, on)

    def push_mtu(self, iface: str, new: Config) -> None:
        found = new.tunnel_for(iface)
        if found and found[0] in self.runners:
            mtu = new.interfaces[iface].mtu or sysfs_mtu(iface) or 1500
            self.runners[found[0]].send(Update(mtu=mtu))

    def push_peers(self, tunnel: str, cfg: Config, keys: Mapping[str, KeyMaterial]) -> None:
        """Tell tunnel's running worker its peers as ``cfg`` and ``keys`` say (a reload
        step, and its undo; the worker keeps running and the others' sessions)."""
        runner = self.runners.get(tunnel)
        if runner is not None:
            entries = peer_entries(cfg.tunnels[tunnel], keys.get(tunnel))
            runner.send(Peers(tuple(entries)))

    def push_keepalive(self, tunnel: str, seconds: int) -> None:
        """Tell tunnel's running worker its new keepalive (a reload step; no restart)."""
        runner = self.runners.get(tunnel)
        if runner is not None:
            runner.describe["keepalive"] = seconds
            runner.send(Update(keepalive=seconds))

    async def stop_tunnel(self, name: str) -> None:
        """Stop the tunnel's worker, drop its runner, close its listening socket."""
        runner = self.runners.pop(name, None)
        if runner is not None:
            await runner.stop()
        self.close_listener(name)

    def start_tunnel(self, name: str) -> None:
        """A new runner for tunnel ``name`` of the config in force; its worker starts now."""
        assert self.config is not None
        t = self.config.tunnels[name]
        runner = TunnelRunner(name, lambda: self._make_spec(name),
                              Limits.from_config(self.config.daemon), self._describe(name, t),
                              spawn=self._worker_cls,
                              on_peer=lambda peer: self.peers.remember(name, peer))
        self.runners[name] = runner
        runner.start()

    def bind_listener(self, name: str, t: TunnelConfig, mark: int = 0) -> None:
        """Bind tunnel ``name``'s listening socket now (with SO_MARK ``mark``); OSError
        names the address."""
        self.close_listener(name)
        self.listeners[name] = bind_underlay(t, mark)

    def set_mark(self, name: str, mark: int) -> None:
        """Set SO_MARK on tunnel ``name``'s bound socket (its worker shares it: no restart)."""
        s = self.listeners.get(name)
        if s is not None:
            log.info("[#] set fwmark %d on the socket of tunnel %s", mark, name,
                     extra=logs.fields(tunnel=name))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)

    def apply_policy(self, name: str, cfg: Config) -> None:
        """Add what is missing of interface ``name``'s policy routing in ``cfg``
        (:mod:`tund.netdev.policy`: adopts what exists); on a failure undo the steps run
        and raise IpCommandError."""
        p = policy.of(cfg, name)
        if p is not None:
            _run_steps(self.ip, name, policy.add_steps(p, policy.read(self.ip, p)))

    def remove_policy(self, name: str, cfg: Config, keep: Sequence[str] = ()) -> None:
        """Delete interface ``name``'s policy routing of ``cfg`` (rules, table routes); the
        suppress rule stays for a family that the policy of an interface in ``keep`` has."""
        p = policy.of(cfg, name)
        if p is None:
            return
        fams = {f for k in keep if (q := policy.of(cfg, k)) is not None and q.rules
                for f in q.families}
        _run_steps(self.ip, name, policy.remove_steps(p, policy.read(self.ip, p),
                                                      tuple(fams)))

    def close_listener(self, name: str) -> None:
        s = self.listeners.pop(name, None)
        if s is not None:
            s.close()

    def switch(self, cfg: Config, keys: Mapping[str, KeyMaterial],
               key_errors: Mapping[str, str]) -> None:
        """Put ``cfg`` and its tunnels' key material in force (workers started later)."""
        self.config = cfg
        self.peers.keep_only(set(cfg.tunnels))
        self.keys = dict(keys)
        self.key_errors = dict(key_errors)
        self._set_worker_user(cfg.daemon.worker_user)

    # ------------------------------------------------------------------ status

    async def status(self, tunnel: str | None = None) -> dict[str, Any]:
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
