"""A reload as data: one ordered list of :class:`Step`, each saying what it does, doing it
and undoing it.

Contract:

* :func:`build` (reads link states with ``ip -json``; changes nothing) turns a
  :class:`~tund.daemon.plan.Plan` into the steps. The order keeps traffic flowing as long as
  possible and leaves the irreversible part for last:

  1. in place, while every worker runs, interface by interface: reconfigure (``[#] ip ...``,
     then the new MTU told to its tunnel's worker, then a changed ``dns``), retag (the
     persist flag), add (its ``pre_up`` hooks, one step per command: a failing one fails
     the reload; create the device, then its ``[#] ip ...``, its ``dns``, its ``post_up``
     hooks, best effort), retry (a failed interface: pre_up, open, configure, dns, post_up
     in one step, best effort: if it fails again it stays failed, the reload goes on).
     Before an interface's addresses are added, an unlisted step fails the reload if
     another interface of the host, one tund does not manage, has one of them
     (:mod:`tund.netdev.conflicts`);
  2. stop the workers of removed and restarted tunnels;
  3. recreate the devices whose mode, owner, ... changed (delete, create, ``[#] ip ...``);
  4. bind the sockets of added and restarted listening tunnels and connecting UDP tunnels
     (a port in use fails here);
  5. commit (switch to the new config and keys; bookkeeping, not listed), tell the
     workers of updated tunnels their new settings (``keepalive``), start the workers of
     added and restarted tunnels;
  6. per interface no longer configured, all best effort (a failure is reported, not
     undone): its ``pre_down`` hooks, revert its ``dns``, delete the device, its
     ``post_down`` hooks. A recreated interface runs no hooks (its dns is set again).

* :func:`lines` is what ``tundctl reload --dry-run`` shows: the description of each step.
* :func:`run` runs the steps in order and logs each description just before its step (an
  ``ip`` step's line is the one :class:`~tund.netdev.ip.IpRunner` logs as it runs it), so
  the log shows exactly the dry run's lines. When a step fails, the steps that ran are
  undone in reverse order (best effort, each logged) and :class:`~tund.errors.ReloadError`
  names the step and the reason; the previous configuration stays in force.

Size: a reload's whole order in one file (issue 14.1): build() and the step makers it calls,
read top to bottom in the order they run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from tund import logs
from tund.config import Config, InterfaceConfig, TunnelConfig
from tund.daemon.plan import InterfaceChange, Plan
from tund.daemon.specs import daemon_binds
from tund.errors import KernelError, ReloadError
from tund.netdev import conflicts, hooks, policy, reconcile, sysctl
from tund.netdev.ip import Ip, IpRunner

log = logging.getLogger("tund.daemon.reload")

#: what a step runs to do or undo itself; an awaitable it returns is awaited
Action = Callable[[], object]


@dataclass(frozen=True)
class Step:
    """One action of a reload (compare :class:`tund.netdev.reconcile.Step`)."""

    describe: str  # the line logged just before it runs, and the dry run's line
    do: Action
    undo: Action | None = None  # None: nothing to undo
    part: str = ""  # what it belongs to, for the error message: "configure tun0", ...
    listed: bool = True  # False: bookkeeping (the commit), neither listed nor logged at info
    self_logged: bool = False  # ``do`` logs ``describe`` itself (IpRunner.run does)
    best_effort: bool = False  # a failure is logged and reported; nothing is undone
    #: journal fields of its messages (TUND_INTERFACE / TUND_TUNNEL, see tund.logs.fields)
    fields: Mapping[str, str] = field(default_factory=dict)


class Target(Protocol):
    """What the steps act on: the daemon's running state (:class:`~tund.daemon.engine.Engine`)."""

    @property
    def ip(self) -> Ip: ...

    @property
    def config(self) -> Config | None: ...

    @property
    def keys(self) -> Mapping[str, Any]: ...

    @property
    def key_errors(self) -> Mapping[str, str]: ...

    def open_device(self, name: str, iface: InterfaceConfig) -> None: ...

    def restore_device(self, name: str, iface: InterfaceConfig) -> None: ...

    def retry_device(self, name: str, iface: InterfaceConfig) -> object: ...

    def set_dns(self, name: str, entries: tuple[str, ...]) -> None: ...

    def revert_dns(self, name: str) -> None: ...

    def remove_device(self, name: str) -> None: ...

    def set_persist(self, name: str, on: bool) -> None: ...

    def push_mtu(self, iface: str, cfg: Config) -> None: ...

    def push_keepalive(self, tunnel: str, seconds: int) -> None: ...

    def push_peers(self, tunnel: str, cfg: Config, keys: Mapping[str, Any]) -> None: ...

    def stop_tunnel(self, name: str) -> Awaitable[None]: ...

    def start_tunnel(self, name: str) -> None: ...

    def bind_listener(self, name: str, t: TunnelConfig, mark: int = 0) -> None: ...

    def set_mark(self, name: str, mark: int) -> None: ...

    def src_valid_mark(self) -> None: ...

    def close_listener(self, name: str) -> None: ...

    def switch(self, cfg: Config, keys: Mapping[str, Any],
               key_errors: Mapping[str, str]) -> None: ...


# --------------------------------------------------------------------------- building


def _ip_step(ip: Ip, s: reconcile.Step, part: str, link: str) -> Step:
    """An ``ip`` command as a reload step; undone by its reverting command."""
    if isinstance(ip, IpRunner):  # it logs the line as it runs it: say exactly that line
        line, self_logged = "[#] " + shlex.join(ip.command(s.argv)), True
    else:
        line, self_logged = "[#] " + shlex.join(("ip", *s.argv)), False
    return Step(line, partial(ip.run, s.argv), partial(reconcile.rollback, ip, [s]), part,
                self_logged=self_logged, fields=logs.fields(interface=link))


def _link_state(ip: Ip, name: str) -> reconcile.LinkState:
    """The link as it is (a device that is adopted), or as a new device starts out."""
    if os.path.exists(f"/sys/class/net/{name}"):
        return reconcile.read_state(ip, name)
    return reconcile.LinkState(name=name)


def _address_check(t: Target, name: str, ip_steps: Sequence[reconcile.Step], new: Config,
                   part: str) -> list[Step]:
    """Before ``ip_steps`` add addresses: a step that fails if another interface of the host
    (one tund does not manage) has one of them (:mod:`tund.netdev.conflicts`). Not listed:
    it changes nothing."""
    adds = [s.argv[2] for s in ip_steps if s.argv[:2] == ("addr", "add")]
    routes = [s.argv[2] for s in ip_steps if s.argv[:2] == ("route", "replace")]
    managed = {*new.interfaces, *(t.config.interfaces if t.config is not None else ())}
    out = []
    if adds:
        out.append(Step(f"check that no other interface has {', '.join(adds)}",
                        partial(conflicts.check, t.ip, name, adds, managed), None, part,
                        listed=False, fields=logs.fields(interface=name)))
    if routes:
        out.append(Step(f"check that no other interface routes {', '.join(routes)}",
                        partial(conflicts.check_routes, t.ip, name, routes, managed), None,
                        part, listed=False, fields=logs.fields(interface=name)))
    return out


def _hook_steps(name: str, iface: InterfaceConfig, phase: str, part: str,
                best_effort: bool) -> list[Step]:
    """One step per command of a hook phase (it logs its own line: tund.netdev.hooks)."""
    return [Step(hooks.describe(name, phase, argv),
                 partial(hooks.run_one, name, phase, i, argv, iface.hook_timeout), None, part,
                 self_logged=True, best_effort=best_effort, fields=logs.fields(interface=name))
            for i, argv in enumerate(getattr(iface, phase))]


def _dns_step(t: Target, name: str, new: tuple[str, ...], old: tuple[str, ...],
              part: str) -> list[Step]:
    """Set (or, with none, revert) an interface's dns, off the event loop; undone by the
    old entries."""
    if new == old:
        return []
    what = f"set dns of {name}: {' '.join(new)}" if new else f"revert dns of {name}"
    return [Step(what, partial(asyncio.to_thread, t.set_dns, name, new),
                 partial(asyncio.to_thread, t.set_dns, name, old), part,
                 fields=logs.fields(interface=name))]


def _create(t: Target, name: str, iface: InterfaceConfig, part: str,
            state: reconcile.LinkState, new: Config, hooked: bool = True) -> list[Step]:
    """pre_up hooks (a failure fails the reload), create, ``ip``, dns, post_up hooks (best
    effort). ``hooked`` False (a recreate): no hooks."""
    create = Step(f"create device {name} (mode {iface.mode})", partial(t.open_device, name, iface),
                  partial(t.remove_device, name), part, fields=logs.fields(interface=name))
    ip_steps = reconcile.plan_steps(name, policy.main_routes(iface), state)
    return [*(_hook_steps(name, iface, "pre_up", part, False) if hooked else []),
            create, *_address_check(t, name, ip_steps, new, part),
            *(_ip_step(t.ip, s, part, name) for s in ip_steps),
            *_dns_step(t, name, iface.dns, (), part),
            *(_hook_steps(name, iface, "post_up", part, True) if hooked else [])]


def _remove(t: Target, name: str, iface: InterfaceConfig) -> list[Step]:
    """Phase 6 for one interface, all best effort: pre_down, revert dns, delete, post_down."""
    part = f"remove {name}"
    revert = ([Step(f"revert dns of {name}", partial(asyncio.to_thread, t.revert_dns, name),
                    None, part, best_effort=True, fields=logs.fields(interface=name))]
              if iface.dns else [])
    return [*_hook_steps(name, iface, "pre_down", part, True), *revert,
            Step(f"delete device {name}", partial(t.remove_device, name), best_effort=True,
                 fields=logs.fields(interface=name)),
            *_hook_steps(name, iface, "post_down", part, True)]


def _in_place(t: Target, c: InterfaceChange, p: Plan, new: Config) -> list[Step]:
    """Phase 1 for one interface: reconfigure, retag or add (else nothing)."""
    if c.action == "add":
        assert c.new is not None
        return _create(t, c.name, c.new, f"create {c.name}", _link_state(t.ip, c.name), new)
    if c.action == "retry":
        assert c.new is not None
        return [Step(f"retry interface {c.name} ({c.reason})",
                     partial(t.retry_device, c.name, c.new), None, f"retry {c.name}",
                     best_effort=True)]
    if c.action == "retag":
        assert c.new is not None and c.old is not None
        flag = f"persist={str(c.new.persist).lower()}"
        return [Step(f"set {flag} on device {c.name}",
                     partial(t.set_persist, c.name, c.new.persist),
                     partial(t.set_persist, c.name, c.old.persist),
                     fields=logs.fields(interface=c.name))]
    if c.action != "reconfigure":
        return []
    assert c.new is not None and t.config is not None
    part = f"configure {c.name}"
    ip_steps = reconcile.plan_steps(c.name, policy.main_routes(c.new),
                                    reconcile.read_state(t.ip, c.name))
    out = [*_address_check(t, c.name, ip_steps, new, part),
           *(_ip_step(t.ip, s, part, c.name) for s in ip_steps)]
    assert c.old is not None
    out += _dns_step(t, c.name, c.new.dns, c.old.dns, part)
    found = new.tunnel_for(c.name)
    kept = found is not None and found[0] in p.of("tunnels", "unchanged")
    if kept and c.new.mtu is not None and any(s.argv[3:4] == ("mtu",) for s in ip_steps):
        assert found is not None
        out.append(Step(f"tell worker of tunnel {found[0]}: mtu {c.new.mtu}",
                        partial(t.push_mtu, c.name, new), partial(t.push_mtu, c.name, t.config),
                        part, fields=logs.fields(interface=c.name, tunnel=found[0])))
    return out


def _recreate(t: Target, c: InterfaceChange, new: Config) -> list[Step]:
    assert c.new is not None and c.old is not None
    part = f"recreate {c.name}"
    delete = Step(f"delete device {c.name} to recreate it ({c.reason})",
                  partial(t.remove_device, c.name), partial(t.restore_device, c.name, c.old), part,
                  fields=logs.fields(interface=c.name))
    return [delete, *_create(t, c.name, c.new, part, reconcile.LinkState(name=c.name), new,
                             hooked=False)]


def _bind(t: Target, name: str, tc: TunnelConfig, new: Config) -> Step:
    host, port = tc.endpoint
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    mark = policy.mark(new, name)
    what = (f"bind a {tc.transport} socket for tunnel {name} (to reach {tc.remote})"
            if tc.role == "remote" else f"bind {tc.transport} {where} for tunnel {name}")
    return Step(what + (f" (fwmark {mark})" if mark else ""),
                partial(t.bind_listener, name, tc, mark), partial(t.close_listener, name),
                f"bind tunnel {name}", fields=logs.fields(interface=tc.interface, tunnel=name))


def _policy_adds(t: Target, p: policy.Policy, st: policy.State, part: str) -> list[Step]:
    """The steps adding what ``st`` lacks of ``p``; before IPv4 rules, src_valid_mark."""
    ip_steps = policy.add_steps(p, st)
    out = [_ip_step(t.ip, s, part, p.iface) for s in ip_steps]
    if policy.needs_src_valid_mark(p) and any(s.argv[:3] == ("-4", "rule", "add")
                                             for s in ip_steps):
        key, value = sysctl.SRC_VALID_MARK
        out.insert(0, Step(f"set sysctl {key}={value} (if it is not)", t.src_valid_mark,
                           None, part, fields=logs.fields(interface=p.iface)))
    return out


def _policy_steps(t: Target, p: Plan, old: Config, new: Config) -> list[Step]:
    """Policy routing (:mod:`tund.netdev.policy`) as ``old`` -> ``new`` changes it: first
    the new marks of running tunnels' sockets (so their traffic skips the new table before
    any rule sends traffic there), then per interface the old policy's rules and table
    routes deleted and the new one's added (what exists already is adopted), last the
    marks dropped."""
    steps: list[Step] = []
    unmark: list[Step] = []  # a mark dropped goes last, once no rule needs it
    restarted = set(p.of("tunnels", "add", "restart", "remove"))
    for name in sorted(old.tunnels.keys() & new.tunnels.keys() - restarted):
        m_old, m_new = policy.mark(old, name), policy.mark(new, name)
        if m_old != m_new:
            (steps if m_new else unmark).append(Step(
                f"set fwmark {m_new} on the socket of tunnel {name}",
                partial(t.set_mark, name, m_new), partial(t.set_mark, name, m_old),
                f"update {name}", fields=logs.fields(tunnel=name)))
    gone = set(p.of("interfaces", "remove"))
    recreated = set(p.of("interfaces", "recreate"))
    for name in sorted(old.interfaces.keys() | new.interfaces.keys()):
        p_old, p_new = policy.of(old, name), policy.of(new, name)
        part = f"route {name}"
        if p_old is not None and p_old != p_new:
            others = [n for n in new.interfaces if n != name]
            fams = {f for k in others if (q := policy.of(new, k)) is not None and q.rules
                    for f in q.families}
            st = policy.read(t.ip, p_old)
            if name in recreated:  # its routes went with the old device (phase 3)
                st = dataclasses.replace(st, routes=frozenset())
            steps += [_ip_step(t.ip, s, part, name)
                      for s in policy.remove_steps(p_old, st, tuple(fams))]
            if p_new is not None:  # what exists of it once the removal ran
                now = policy.read(t.ip, p_new)
                if name in recreated:
                    now = dataclasses.replace(now, routes=frozenset())
                same = p_new.table == p_old.table
                left = policy.State(
                    now.routes - st.routes if same else now.routes,
                    now.rule - st.rule if same else now.rule,
                    now.suppress - (st.suppress - fams))
                steps += _policy_adds(t, p_new, left, part)
        elif p_new is not None and name not in gone:
            now = policy.read(t.ip, p_new)
            if name in recreated:  # its routes go with the old device
                now = dataclasses.replace(now, routes=frozenset())
            steps += _policy_adds(t, p_new, now, part)
    return steps + unmark


def build(t: Target, p: Plan, new: Config, new_keys: Mapping[str, Any]) -> list[Step]:
    """The steps that move ``t`` from its config to ``new`` (see the module docstring).

    Reads the links to be reconfigured or adopted; raises KernelError if that fails.
    """
    assert t.config is not None
    old = t.config

    def of_tunnel(name: str) -> dict[str, str]:
        tc = new.tunnels.get(name) or old.tunnels.get(name)
        return logs.fields(interface=tc.interface if tc else None, tunnel=name)

    steps = [s for c in p.interfaces for s in _in_place(t, c, p, new)]  # 1
    for tc in p.tunnels:  # 2
        if tc.action in ("remove", "restart"):
            why = f" ({tc.reason})" if tc.reason else ""
            steps.append(Step(f"stop worker of tunnel {tc.name}{why}",
                              partial(t.stop_tunnel, tc.name), partial(t.start_tunnel, tc.name),
                              f"stop tunnel {tc.name}", fields=of_tunnel(tc.name)))
    steps += [s for c in p.interfaces if c.action == "recreate" for s in _recreate(t, c, new)]  # 3
    starting = [tc.name for tc in p.tunnels if tc.action in ("add", "restart")]
    steps += _policy_steps(t, p, old, new)  # 3b
    steps += [_bind(t, n, new.tunnels[n], new) for n in starting  # 4
              if daemon_binds(new.tunnels[n])]
    steps.append(Step("switch to the new configuration",  # 5
                      partial(t.switch, new, new_keys, {}),
                      partial(t.switch, t.config, dict(t.keys), dict(t.key_errors)),
                      listed=False))
    for tc in p.tunnels:
        if tc.action != "update":
            continue
        changed = [pc for pc in tc.peers if pc.action != "unchanged"]
        if changed:
            sign = {"add": "+", "remove": "-", "change": "~"}
            what = " ".join(f"{sign[pc.action]}{pc.name}" for pc in changed)
            steps.append(Step(f"tell worker of tunnel {tc.name}: peers {what}",
                              partial(t.push_peers, tc.name, new, new_keys),
                              partial(t.push_peers, tc.name, t.config, dict(t.keys)),
                              f"update {tc.name}", fields=of_tunnel(tc.name)))
        k_new, k_old = new.tunnels[tc.name].keepalive, t.config.tunnels[tc.name].keepalive
        if k_new != k_old:
            steps.append(Step(f"tell worker of tunnel {tc.name}: keepalive {k_new}",
                              partial(t.push_keepalive, tc.name, k_new),
                              partial(t.push_keepalive, tc.name, k_old),
                              f"update {tc.name}"))
    steps += [Step(f"start worker of tunnel {n}", partial(t.start_tunnel, n),
                   partial(t.stop_tunnel, n), fields=of_tunnel(n)) for n in starting]
    steps += [s for c in p.interfaces if c.action == "remove" and c.old is not None  # 6
              for s in _remove(t, c.name, c.old)]
    return steps


def lines(steps: Sequence[Step]) -> list[str]:
    """The dry run's actions: what each listed step says."""
    return [s.describe for s in steps if s.listed]


# --------------------------------------------------------------------------- running


async def _call(action: Action) -> None:
    result = action()
    if inspect.isawaitable(result):
        await result


def _why(e: BaseException) -> str:
    """An error's reason: an OSError's own text without the ``[Errno N]`` prefix."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


async def _undo(done: Sequence[Step]) -> None:
    """Undo ``done`` in reverse order, best effort: a failing undo is logged, the rest go on."""
    for step in reversed(done):
        if step.undo is None:
            continue
        extra = dict(step.fields)
        log.info("reload rollback: undo %r", step.describe, extra=extra)
        try:
            await _call(step.undo)
        except (KernelError, OSError) as e:
            log.error("reload rollback: undo of %r failed: %s", step.describe, _why(e),
                      extra=extra)


async def run(steps: Sequence[Step]) -> list[str]:
    """Run ``steps`` in order; return the lines of those run (see the module docstring)."""
    done: list[Step] = []
    actions: list[str] = []
    for step in steps:
        extra = dict(step.fields)
        if not step.listed:
            log.debug("reload: %s", step.describe, extra=extra)
        elif not step.self_logged:
            log.info("%s", step.describe, extra=extra)
        try:
            await _call(step.do)
        except (KernelError, OSError) as e:
            if step.best_effort:
                log.error("reload: could not %s: %s", step.describe, _why(e), extra=extra)
                actions.append(f"could not {step.describe}: {_why(e)}")
                continue
            n = sum(1 for s in done if s.listed)
            log.error("reload: step %r failed: %s; undoing %d step(s)", step.describe,
                      _why(e), n, extra=extra)
            await _undo(done)
            where = f"{step.part!r} ({step.describe})" if step.part else repr(step.describe)
            raise ReloadError(f"reload failed at step {where}: {_why(e)}; the {n} step(s) "
                              "before it were undone and the previous configuration stays in "
                              "force") from e
        done.append(step)
        if step.listed:
            actions.append(step.describe)
    return actions
