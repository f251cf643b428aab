"""Interfaces at start, and the reload targets that act on one device, listener or
running worker (the rest of :class:`tund.daemon.reload.Target` is the engine's): a mixin
of :class:`tund.daemon.engine.Engine`, which owns the state named below. Each kernel
change goes through :mod:`tund.netdev` (logged before it is made).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping

from tund import config, logs
from tund.config import Config, InterfaceConfig, TunnelConfig
from tund.daemon import specs
from tund.daemon.keyfiles import KeyMaterial
from tund.daemon.lifecycle import Lifecycle
from tund.daemon.reresolve import Reresolver
from tund.daemon.status import sysfs_mtu
from tund.errors import KernelError
from tund.netdev import conflicts, hooks, policy, reconcile, tuntap
from tund.netdev.ip import Ip
from tund.supervise.runner import TunnelRunner
from tund.workerapi.messages import Peers, Update

log = logging.getLogger("tund.daemon.engine")


class Targets(Lifecycle):
    """Device, listener and worker-update steps of a reload (and their undo)."""

    ip: Ip
    config: Config | None
    devices: dict[str, tuntap.OpenedDevice]
    device_errors: dict[str, str]
    listeners: dict[str, socket.socket]
    runners: dict[str, TunnelRunner]
    reresolver: Reresolver

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

    # ------------------------------------------------------------------ reload steps

    def open_device(self, name: str, iface: InterfaceConfig) -> None:
        """Create (or adopt) device ``name`` and hold it; its ``ip`` config is other steps."""
        if name not in self.devices:
            self.devices[name] = tuntap.open_device(
                name, iface.mode, packet_info=iface.packet_info,
                multi_queue=iface.multi_queue, persist=iface.persist,
                owner=iface.uid, group=iface.gid, vnet_hdr=specs.vnet_hdr(iface))
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
            entries = specs.peer_entries(cfg.tunnels[tunnel], keys.get(tunnel))
            self.reresolver.forget(tunnel)  # the worker resolves the names afresh
            runner.send(Peers(tuple(entries)))

    def push_keepalive(self, tunnel: str, seconds: int) -> None:
        """Tell tunnel's running worker its new keepalive (a reload step; no restart)."""
        runner = self.runners.get(tunnel)
        if runner is not None:
            runner.describe["keepalive"] = seconds
            runner.send(Update(keepalive=seconds))

    def bind_listener(self, name: str, t: TunnelConfig, mark: int = 0) -> None:
        """Bind tunnel ``name``'s listening socket now (with SO_MARK ``mark``); OSError
        names the address."""
        self.close_listener(name)
        self.listeners[name] = specs.bind_underlay(t, mark)

    def close_listener(self, name: str) -> None:
        s = self.listeners.pop(name, None)
        if s is not None:
            s.close()
