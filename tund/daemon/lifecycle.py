"""What goes with an interface's life besides the device (issue 19): its hooks, its dns,
its policy routing (a full tunnel's rules and table) and the mark of its tunnel's socket.
A mixin of :class:`tund.daemon.engine.Engine` (through :class:`tund.daemon.targets.Targets`),
which owns the state named below; the kernel changes go through :mod:`tund.netdev`
(hooks, dns, policy), each logged before it is made.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from tund import logs
from tund.config import Config, InterfaceConfig
from tund.errors import KernelError
from tund.netdev import dns, hooks, policy, reconcile, sysctl, tuntap
from tund.netdev.ip import Ip

log = logging.getLogger("tund.daemon.engine")


def run_steps(ip: Ip, name: str, steps: Sequence[reconcile.Step]) -> None:
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


class Lifecycle:
    """Hooks, dns, policy routing and socket marks of the engine's interfaces."""

    ip: Ip
    config: Config | None
    devices: dict[str, tuntap.OpenedDevice]
    device_errors: dict[str, str]
    listeners: dict[str, socket.socket]
    dns_set: set[str]
    sysctl: sysctl.Sysctl

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

    async def _revert_all_dns(self) -> None:
        """At stop: revert every dns tund set (failures logged)."""
        for name in sorted(self.dns_set):
            try:
                await asyncio.to_thread(self.revert_dns, name)
            except KernelError as e:
                log.error("interface %s: %s", name, e, extra={"TUND_INTERFACE": name})

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
            steps = policy.add_steps(p, policy.read(self.ip, p))
            if policy.needs_src_valid_mark(p):
                self.src_valid_mark()
            run_steps(self.ip, name, steps)

    def src_valid_mark(self) -> None:
        """``net.ipv4.conf.all.src_valid_mark = 1`` (:mod:`tund.netdev.sysctl`, logged if
        changed; never reverted), so strict rp_filter keeps a full tunnel's replies."""
        self.sysctl.ensure(*sysctl.SRC_VALID_MARK)

    def remove_policy(self, name: str, cfg: Config, keep: Sequence[str] = ()) -> None:
        """Delete interface ``name``'s policy routing of ``cfg`` (rules, table routes); the
        suppress rule stays for a family that the policy of an interface in ``keep`` has."""
        p = policy.of(cfg, name)
        if p is None:
            return
        fams = {f for k in keep if (q := policy.of(cfg, k)) is not None and q.rules
                for f in q.families}
        run_steps(self.ip, name, policy.remove_steps(p, policy.read(self.ip, p), tuple(fams)))

    async def _remove_all_policies(self) -> None:
        """At stop: every interface's policy routing goes (failures logged)."""
        if self.config is None:
            return
        names = list(self.config.interfaces)
        for i, name in enumerate(names):
            try:
                await asyncio.to_thread(self.remove_policy, name, self.config, names[i + 1:])
            except KernelError as e:
                log.error("interface %s: %s", name, e, extra={"TUND_INTERFACE": name})

    async def _tunnel_policy(self, tunnel: str, up: bool) -> None:
        """A tunnel taken down takes its interface's policy routing (a full tunnel's rules)
        with it, so the host's traffic is not sent into a tunnel nobody serves; up puts it
        back. A failure is logged (the tunnel's state says the rest)."""
        assert self.config is not None
        iface = self.config.tunnels[tunnel].interface
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
