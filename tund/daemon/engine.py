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
plans with :func:`tund.daemon.plan.diff`, and touches only what changed. Reloads are serialized.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from tund import __version__, config
from tund.config import Config, InterfaceConfig, TunnelConfig
from tund.control.status_schema import SCHEMA_VERSION as STATUS_SCHEMA_VERSION
from tund.daemon import plan
from tund.errors import ConfigError, ConfigIssue, KernelError, ReloadError, TundError
from tund.netdev import reconcile, tuntap
from tund.netdev.ip import IpRunner
from tund.supervise.forkserver import ForkServer, ForkServerError, Launcher, SpawnLauncher
from tund.supervise.runner import Limits, TunnelRunner
from tund.supervise.worker import WorkerProcess, worker_class
from tund.workerapi import underlay
from tund.workerapi.run_as import resolve_worker_user
from tund.workerapi.spec import WorkerSpec

log = logging.getLogger("tund.daemon.engine")


class NotFound(TundError):
    code = "not-found"


class KeyMaterial:
    """A tunnel's secrets as read from its key files (kept out of every log and reply)."""

    def __init__(self, private_key: str | None, peer_public_key: str | None,
                 preshared_key: str | None) -> None:
        self.private_key = private_key
        self.peer_public_key = peer_public_key
        self.preshared_key = preshared_key

    def fingerprint(self) -> str:
        h = hashlib.blake2s(digest_size=16)
        for part in (self.private_key, self.peer_public_key, self.preshared_key):
            h.update((part or "-").encode() + b"\0")
        return h.hexdigest()


def read_keys(t: TunnelConfig) -> KeyMaterial:
    """Read a tunnel's key files (wireguard) or nothing (plaintext). Raises ValueError."""
    if t.encryption == "none":
        return KeyMaterial(None, None, None)
    import base64

    from tund import keys

    assert t.private_key_file is not None
    priv = base64.b64encode(keys.load_private_key_file(t.private_key_file)).decode()
    psk = None
    if t.preshared_key_file:
        psk = base64.b64encode(keys.load_psk_file(t.preshared_key_file)).decode()
    return KeyMaterial(priv, t.peer_public_key, psk)


def _vnet_hdr(iface: InterfaceConfig) -> bool:
    """Tun devices without packet info carry a vnet header (offloads: tund.relay.codec.offload)."""
    return iface.mode == "tun" and not iface.packet_info


def _sysfs_mtu(name: str) -> int | None:
    """The link MTU the kernel reports for ``name``; None if there is no such link.

    Plain ``open`` (no pathlib): a status of many interfaces reads one file per interface.
    """
    try:
        with open(f"/sys/class/net/{name}/mtu", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def bind_underlay(t: TunnelConfig) -> socket.socket:
    """Open the listening (TCP) or bound (UDP) socket of a ``listen`` tunnel."""
    host, port = t.endpoint
    return underlay.bind_underlay(t.transport, host, port)


class Engine:
    """Devices, listeners and tunnel runners for one configuration at a time."""

    def __init__(self, config_path: Path, ip: IpRunner | None = None,
                 fork_server: bool = True) -> None:
        """``fork_server`` False: every worker is spawned as a fresh interpreter."""
        self.config_path = config_path
        self.ip = ip or IpRunner()
        self.config: Config | None = None
        self.devices: dict[str, tuntap.OpenedDevice] = {}
        self.device_errors: dict[str, str] = {}
        self.listeners: dict[str, socket.socket] = {}
        self.runners: dict[str, TunnelRunner] = {}
        self.keys: dict[str, KeyMaterial] = {}
        self.key_errors: dict[str, str] = {}
        self.started = time.time()
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._worker_user: str | None = None
        self._worker_cls: type[WorkerProcess] = WorkerProcess
        self.fork_server: ForkServer | None = ForkServer() if fork_server else None
        self._launcher: Launcher = SpawnLauncher()

    # ------------------------------------------------------------------ start / stop

    async def start(self, cfg: Config) -> None:
        """Bring up every interface and start every tunnel of ``cfg``."""
        async with self._lock:
            self.config = cfg
            self._start_fork_server()
            self._set_worker_user(cfg.daemon.worker_user)
            self._read_all_keys(cfg)
            self._bind_listeners(cfg)
            await self._bring_up_all(cfg)
            # yield to the loop between tunnels: with many, status requests and the
            # workers already started are served while the rest comes up
            for name in cfg.tunnels:
                self._start_tunnel(name)
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
                    self.listeners[name] = bind_underlay(t)
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
            await asyncio.gather(*(r.stop() for r in self.runners.values()))
            self.runners.clear()
            for s in self.listeners.values():
                s.close()
            self.listeners.clear()
            for name, dev in list(self.devices.items()):
                persistent = self.config is not None and self.config.interfaces[name].persist
                log.info("[#] close %s (%s)", name,
                         "persistent: stays" if persistent else "not persistent: removed")
                tuntap.close(dev.fd)
            self.devices.clear()
            if self.fork_server is not None:
                self.fork_server.close()

    # ------------------------------------------------------------------ interfaces

    def _open_and_configure(self, name: str, iface: InterfaceConfig) -> None:
        """Open (create or adopt) device ``name`` and apply its ``ip`` config; raises."""
        if name not in self.devices:
            self.devices[name] = tuntap.open_device(
                name, iface.mode, packet_info=iface.packet_info,
                multi_queue=iface.multi_queue, persist=iface.persist,
                owner=iface.uid, group=iface.gid, vnet_hdr=_vnet_hdr(iface))
        reconcile.apply(self.ip, name, iface)
        self.device_errors.pop(name, None)

    def _bring_up(self, name: str, iface: InterfaceConfig) -> None:
        """At start: like _open_and_configure, but a failure is recorded, not raised, so
        the other interfaces and tunnels still come up."""
        try:
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
        opened: list[tuple[str, InterfaceConfig]] = []
        for name, iface in cfg.interfaces.items():
            try:
                if name not in self.devices:
                    self.devices[name] = tuntap.open_device(
                        name, iface.mode, packet_info=iface.packet_info,
                        multi_queue=iface.multi_queue, persist=iface.persist,
                        owner=iface.uid, group=iface.gid, vnet_hdr=_vnet_hdr(iface))
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
        results = await asyncio.to_thread(reconcile.apply_many, self.ip, opened, states)
        for name, res in results.items():
            if isinstance(res, KernelError):
                self.device_errors[name] = str(res)
                log.error("interface %s: %s", name, res, extra={"TUND_INTERFACE": name})
            else:
                self.device_errors.pop(name, None)

    def _remove_device(self, name: str) -> None:
        dev = self.devices.pop(name, None)
        self.device_errors.pop(name, None)
        if dev is not None:
            log.info("[#] delete device %s", name, extra={"TUND_INTERFACE": name})
            tuntap.delete_device(name, dev.fd)

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
                "endpoint": t.listen if t.listen is not None else t.remote,
                "encryption": t.encryption}

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
                self.listeners[name] = bind_underlay(t)
            sock_fd = self.listeners[name].fileno()
        host, port = t.endpoint
        return WorkerSpec(
            tunnel=name, interface=t.interface, mode=iface.mode, transport=t.transport,
            role=t.role, host=host, port=port, device_fd=dev.fd, socket_fd=sock_fd,
            mtu=iface.mtu or _sysfs_mtu(t.interface) or 1500, packet_info=iface.packet_info,
            vnet_hdr=_vnet_hdr(iface), offload=t.offload,
            keepalive=t.keepalive, reconnect_min=t.reconnect_min,
            reconnect_max=t.reconnect_max, encryption=t.encryption,
            private_key=km.private_key, peer_public_key=km.peer_public_key,
            preshared_key=km.preshared_key, timers=_test_timers())

    def _set_worker_user(self, user: str) -> None:
        """Workers started from now on run as ``user`` (see tund.relay.process.privileges)."""
        if user != self._worker_user:
            self._worker_user = user
            self._worker_cls = worker_class(resolve_worker_user(user), self._launcher)

    def _start_tunnel(self, name: str) -> None:
        assert self.config is not None
        t = self.config.tunnels[name]
        runner = TunnelRunner(name, lambda: self._make_spec(name),
                              Limits.from_config(self.config.daemon), self._describe(name, t),
                              spawn=self._worker_cls)
        self.runners[name] = runner
        runner.start()

    async def _stop_tunnel(self, name: str) -> None:
        runner = self.runners.pop(name, None)
        if runner is not None:
            await runner.stop()
        s = self.listeners.pop(name, None)
        if s is not None:
            s.close()

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
                r.start()
            return {"tunnel": name, "state": str(r.state)}

    async def tunnel_down(self, name: str) -> dict[str, Any]:
        async with self._lock:
            r = self.runner(name)
            await r.stop()
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
            p = plan.diff(self.config, new,
                          {n: k.fingerprint() for n, k in self.keys.items()},
                          {n: k.fingerprint() for n, k in new_keys.items()})
            if dry_run:
                return {**p.summary(), "actions": self._predict(p, new), "dry_run": True,
                        "notes": list(p.daemon_notes)}
            try:
                actions = await self._apply(p, new, new_keys)
            except ReloadError as e:
                self._note_reload(False, str(e))
                raise
            self._note_reload(True, "applied" if actions else "nothing to do")
            return {**p.summary(), "actions": actions, "dry_run": False,
                    "notes": list(p.daemon_notes)}

    def _note_reload(self, ok: bool, message: str) -> None:
        self.reloads += 1
        self.last_reload = {"time": time.time(), "ok": ok, "message": message}

    def _predict(self, p: plan.Plan, new: Config) -> list[str]:
        out: list[str] = []
        for t in p.tunnels:
            if t.action in ("remove", "restart"):
                why = f" ({t.reason})" if t.reason else ""
                out.append(f"stop worker of tunnel {t.name}{why}")
        for c in p.interfaces:
            if c.action == "remove":
                out.append(f"delete device {c.name}")
            elif c.action == "recreate":
                out.append(f"recreate device {c.name} ({c.reason})")
            elif c.action == "retag":
                out.append(f"ioctl on {c.name} ({c.reason})")
            if c.action in ("add", "recreate"):
                out.append(f"create device {c.name} (mode {new.interfaces[c.name].mode})")
            if c.action in ("add", "recreate", "reconfigure"):
                state = (reconcile.read_state(self.ip, c.name)
                         if c.action == "reconfigure" else reconcile.LinkState(name=c.name))
                for step in reconcile.plan_steps(c.name, new.interfaces[c.name], state):
                    out.append("[#] " + " ".join(step.argv))
        for t in p.tunnels:
            if t.action in ("add", "restart"):
                out.append(f"start worker of tunnel {t.name}")
        return out

    async def _apply(self, p: plan.Plan, new: Config,
                     new_keys: dict[str, KeyMaterial]) -> list[str]:
        """Apply ``p`` as a transaction: on a failed step, undo what was done and re-raise.

        Order keeps traffic flowing as long as possible and leaves the irreversible step
        (deleting removed devices) for last:

        1. in-place changes and additions (reconfigure, retag, add) while every worker runs;
        2. stop the workers of removed and restarted tunnels;
        3. recreate devices whose mode/owner changed;
        4. commit: switch to the new config, start added and restarted tunnels;
        5. delete devices no longer configured.
        """
        old, old_keys = self.config, self.keys
        assert old is not None
        actions: list[str] = []
        undo: list[tuple[str, Callable[[], object]]] = []
        stopped: list[str] = []
        step = ""
        try:
            for c in p.interfaces:  # 1
                if c.action == "reconfigure":
                    assert c.new is not None
                    step = f"configure {c.name}"
                    done = reconcile.apply(self.ip, c.name, c.new)
                    undo.append((f"undo configure {c.name}",
                                 partial(reconcile.rollback, self.ip, done)))
                    actions += ["[#] ip " + " ".join(s.argv) for s in done]
                    self._push_mtu(c.name, new)
                elif c.action == "retag":
                    assert c.new is not None and c.old is not None
                    step = f"set persist={c.new.persist} on {c.name}"
                    dev = self.devices[c.name]
                    tuntap.set_persist(dev.fd, c.new.persist)
                    undo.append((f"undo persist on {c.name}",
                                 partial(tuntap.set_persist, dev.fd, c.old.persist)))
                    actions.append(step)
                elif c.action == "add":
                    assert c.new is not None
                    step = f"create {c.name}"
                    self._open_and_configure(c.name, c.new)
                    undo.append((f"delete {c.name}", partial(self._remove_device, c.name)))
                    actions.append(f"created device {c.name}")
            for t in p.tunnels:  # 2
                if t.action in ("remove", "restart"):
                    step = f"stop tunnel {t.name}"
                    await self._stop_tunnel(t.name)
                    stopped.append(t.name)
                    actions.append(f"stopped worker of tunnel {t.name}")
            for c in p.interfaces:  # 3
                if c.action == "recreate":
                    assert c.new is not None and c.old is not None
                    step = f"recreate {c.name}"
                    self._remove_device(c.name)
                    undo.append((f"restore {c.name}",
                                 partial(self._open_and_configure, c.name, c.old)))
                    self._open_and_configure(c.name, c.new)
                    undo.append((f"delete new {c.name}", partial(self._remove_device, c.name)))
                    actions.append(f"recreated device {c.name} ({c.reason})")
        except (KernelError, OSError) as e:
            log.error("reload: step %r failed: %s; undoing %d step(s)", step, e, len(undo))
            for what, fn in reversed(undo):
                try:
                    log.info("reload rollback: %s", what)
                    fn()
                except (KernelError, OSError) as ue:
                    log.error("reload rollback: %s failed: %s", what, ue)
            self.config, self.keys = old, old_keys
            for name in stopped:  # the old config is still in force: bring them back
                self._start_tunnel(name)
            raise ReloadError(f"reload failed at step {step!r}: {e}; the {len(undo)} step(s) "
                              "before it were undone and the previous configuration stays in "
                              "force") from e
        self.config, self.keys, self.key_errors = new, new_keys, {}  # 4
        self._set_worker_user(new.daemon.worker_user)
        for t in p.tunnels:
            if t.action in ("add", "restart"):
                self._start_tunnel(t.name)
                actions.append(f"started worker of tunnel {t.name}")
        for c in p.interfaces:  # 5
            if c.action == "remove":
                try:
                    self._remove_device(c.name)
                    actions.append(f"deleted device {c.name}")
                except (KernelError, OSError) as e:
                    log.error("reload: could not delete %s: %s", c.name, e)
                    actions.append(f"could not delete device {c.name}: {e}")
        return actions

    def _push_mtu(self, iface: str, new: Config) -> None:
        found = new.tunnel_for(iface)
        if found and found[0] in self.runners:
            mtu = new.interfaces[iface].mtu or _sysfs_mtu(iface) or 1500
            self.runners[found[0]].send({"op": "update", "mtu": mtu})

    # ------------------------------------------------------------------ status

    async def status(self, tunnel: str | None = None) -> dict[str, Any]:
        runners = [self.runner(tunnel)] if tunnel else list(self.runners.values())
        await asyncio.gather(*(r.refresh() for r in runners))
        cfg = self.config
        ifaces: dict[str, Any] = {}
        if cfg is not None and tunnel is None:
            for name, iface in cfg.interfaces.items():
                dev = self.devices.get(name)
                mtu = _sysfs_mtu(name)
                ifaces[name] = {
                    "mode": iface.mode, "persist": iface.persist,
                    "exists": mtu is not None or os.path.exists(f"/sys/class/net/{name}"),
                    "ifindex": dev.info.ifindex if dev else None,
                    "mtu": mtu, "addresses": list(iface.addresses),
                    "owner": iface.owner, "group": iface.group,
                    "error": self.device_errors.get(name),
                }
        return {
            "schema": STATUS_SCHEMA_VERSION,  # the layout, documented in tund.control.status_schema
            "daemon": {"version": __version__, "pid": os.getpid(),
                       "config": str(self.config_path), "started": self.started,
                       "reloads": self.reloads, "last_reload": self.last_reload},
            "interfaces": ifaces,
            "tunnels": {r.name: r.status() for r in runners},
        }

    def counts(self) -> tuple[int, int]:
        """(tunnels up, tunnels configured), for the systemd STATUS= line."""
        up = sum(1 for r in self.runners.values() if str(r.state) == "up")
        return up, len(self.runners)


def _test_timers() -> dict[str, float]:
    """Test-only timer overrides from $TUND_TEST_TIMERS ("name=seconds,..."); empty normally."""
    raw = os.environ.get("TUND_TEST_TIMERS", "")
    out: dict[str, float] = {}
    for part in filter(None, raw.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = float(v)
    return out
