"""Per-tunnel supervision: one worker process, its state machine, restarts and counters.

Contract: a :class:`TunnelRunner` owns at most one live :class:`WorkerProcess`. It

* starts the worker (``STARTING``) and follows what it reports (one of
  :data:`tund.states.LIVE`; its ``why`` or ``error`` becomes ``last_error``);
* pings it every ``ping_interval``; no pong within ``ping_timeout`` (the packet loop is
  wedged, or the process is SIGSTOPped) -> SIGKILL, counted as a crash;
* on a crash schedules a restart after a capped exponential backoff (``BACKOFF``); more than
  ``crash_limit`` crashes within ``crash_window`` seconds -> ``FAILED`` with the last error,
  not restarted until :meth:`start` is called again (reload or ``tundctl restart``);
* keeps counters across incarnations (the totals of dead workers plus the live one's),
  the tunnel's and, for a tunnel with ``peers``, each peer's (:func:`merge_peers`).

Time comes from the event loop clock; nothing here touches the kernel.

Size: one class, a tunnel's state machine: its transitions (start, report, crash, backoff,
restart) share the runner's state and read best together.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tund.config import DaemonConfig
from tund.logs import tunnel_logger
from tund.states import LIVE, TunnelState, can_move
from tund.supervise.worker import FromWorker, Malformed, WorkerProcess
from tund.workerapi.messages import PEER_COUNTERS, Message, Ping, Pong, State
from tund.workerapi.spec import WorkerSpec

_COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "errors")
_PEER_LATEST = ("public_key", "endpoint", "latest_handshake")


def merge_peers(base: Mapping[str, Mapping[str, Any]],
                live: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per peer: the counters and drops of ``base`` (dead workers) plus ``live``'s, and
    its latest ``public_key`` / ``endpoint`` / ``latest_handshake`` (live's unless null),
    and live's ``offload``."""
    out: dict[str, dict[str, Any]] = {}
    for name in base.keys() | live.keys():
        b, v = base.get(name, {}), live.get(name, {})
        peer: dict[str, Any] = {k: int(b.get(k, 0)) + int(v.get(k, 0)) for k in PEER_COUNTERS}
        drops = dict(b.get("drops") or {})
        for cause, n in (v.get("drops") or {}).items():
            drops[cause] = drops.get(cause, 0) + int(n)
        peer["drops"] = drops
        for k in _PEER_LATEST:
            peer[k] = v.get(k) if v.get(k) is not None else b.get(k)
        if v.get("offload") is not None:  # the live worker's, never a dead one's
            peer["offload"] = v["offload"]
        out[name] = peer
    return out
STABLE_AFTER = 10.0  # seconds a worker must live for its crash streak to reset
REFRESH_TIMEOUT = 0.05  # seconds status waits for fresh counters (a healthy loop: < 1 ms)
START_GRACE = 15.0  # seconds a new worker may take to start Python and send its first message


@dataclass(frozen=True)
class Limits:
    """Supervision knobs, from ``[daemon]``."""

    backoff_min: float = 0.2
    backoff_max: float = 10.0
    crash_limit: int = 10
    crash_window: float = 60.0
    ping_interval: float = 1.0
    ping_timeout: float = 5.0

    @classmethod
    def from_config(cls, d: DaemonConfig) -> Limits:
        return cls(d.restart_backoff_min, d.restart_backoff_max, d.crash_limit, d.crash_window,
                   d.ping_interval, d.ping_timeout)


SpecFactory = Callable[[], WorkerSpec]


class TunnelRunner:
    """Supervises the worker of one tunnel."""

    def __init__(self, name: str, make_spec: SpecFactory, limits: Limits,
                 describe: dict[str, Any], spawn: type[WorkerProcess] = WorkerProcess,
                 on_change: Callable[[], None] | None = None,
                 on_peer: Callable[[str | None], None] | None = None,
                 peer_base: dict[str, dict[str, int]] | None = None,
                 on_counters: Callable[[bool], None] | None = None) -> None:
        """``on_peer(endpoint)``: called when the worker reports a new peer endpoint.
        ``peer_base``: per-peer totals of ended workers (earlier runs included), folded into
        in place when a worker ends; ``on_counters(force)``: the lifetime counters changed
        (force: a worker ended; else a status, to save now and then)."""
        self.name = name
        self.make_spec = make_spec
        self.limits = limits
        self.describe = describe  # static fields for status: interface, transport, role, ...
        # every message carries TUND_TUNNEL and TUND_INTERFACE (journal fields / stderr prefix)
        self.log = tunnel_logger(name, str(describe.get("interface", "")), "tund.supervise")
        self._spawn_cls = spawn
        self._on_change = on_change or (lambda: None)
        self._on_peer = on_peer or (lambda _peer: None)
        self._peer_base = peer_base if peer_base is not None else {}
        self._on_counters = on_counters or (lambda _force: None)
        self._peer: str | None = None  # the latest peer a worker reported
        self.state = TunnelState.STOPPED
        self.worker: WorkerProcess | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self._why: str | None = None  # last_error came from a worker's why (see _message)
        self._before_why: str | None = None  # last_error before that why (a crash's)
        self.since = time.time()
        self._base: dict[str, Any] = {k: 0 for k in _COUNTERS}
        self._base["drops"] = {}
        self._base["peers"] = {}
        self._live: dict[str, Any] = {}
        self._crashes: collections.deque[float] = collections.deque()
        self._streak = 0
        self._started_at = 0.0
        self.worker_since = 0.0  # unix time the live worker was spawned
        self._stopping = False
        self._kill_reason: str | None = None
        self._reported_error = False
        self._restart_handle: asyncio.TimerHandle | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._seq = 0
        self._outstanding: dict[int, float] = {}  # ping seq -> loop time it was sent
        self._heard = False  # the live worker has sent at least one message
        self._pid_logged = False  # "worker pid N started" was said for the live worker
        self._pong_waiters: dict[int, asyncio.Future[None]] = {}

    # ------------------------------------------------------------------ state

    def _move(self, new: TunnelState, why: str = "") -> None:
        if self.state == new:
            return
        if not can_move(self.state, new):
            self.log.error("tunnel %s: refusing state change %s -> %s", self.name, self.state, new)
            return
        self.log.info("tunnel %s: %s -> %s%s", self.name, self.state, new,
                      f" ({why})" if why else "")
        self.state = new
        self.since = time.time()
        self._on_change()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start (or restart after FAILED/STOPPED) the worker now."""
        self._cancel_restart()
        self._crashes.clear()
        self._streak = 0
        self._spawn()

    def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._started_at = loop.time()
        # STOPPED/FAILED/BACKOFF -> STARTING
        self._move(TunnelState.STARTING)
        try:
            spec = self.make_spec()
        except Exception as e:  # key file unreadable, socket cannot bind, ...
            self.last_error = str(e)
            self.log.error("tunnel %s: cannot start: %s", self.name, e)
            self._crashed(time_now=loop.time())
            return
        worker = self._spawn_cls(spec, self._message, self._exited)
        try:
            worker.spawn(loop)
        except OSError as e:
            self.last_error = f"cannot spawn worker: {e}"
            self._crashed(time_now=loop.time())
            return
        self.worker = worker
        self._live = {}
        self._started_at = loop.time()
        self.worker_since = time.time()
        self._outstanding = {}
        self._heard = False
        # a forked worker's pid comes a moment later (tund.supervise.forkserver): it is
        # logged with the worker's first message, when it is known
        self._pid_logged = worker.pid is not None
        if worker.pid is not None:
            self.log.info("tunnel %s: worker pid %d started", self.name, worker.pid)
        else:
            self.log.info("tunnel %s: worker starting (forked by the fork server)", self.name)
        if self._ping_task is None or self._ping_task.done():
            self._ping_task = loop.create_task(self._pinger())

    async def stop(self) -> None:
        """Stop the worker on purpose (-> STOPPED); no restart follows."""
        self._stopping = True
        self._cancel_restart()
        if self._ping_task is not None:
            self._ping_task.cancel()
            self._ping_task = None
        if self.worker is not None:
            await self.worker.stop()
        self._move(TunnelState.STOPPED)

    def _cancel_restart(self) -> None:
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None

    # ------------------------------------------------------------------ worker events

    def _message(self, msg: FromWorker) -> None:
        """A message from the live worker, already checked (a :class:`Malformed` one kills
        it: it restarts with backoff, and nothing it sent touches the tunnel's state)."""
        if isinstance(msg, Malformed):
            self._refuse(msg.error)
            return
        if not self._pid_logged and self.worker is not None and self.worker.pid is not None:
            self._pid_logged = True
            self.log.info("tunnel %s: worker pid %d started", self.name, self.worker.pid)
        self._heard = True
        self._live = msg.stats.as_dict()
        peer = msg.peer if isinstance(msg, State) else msg.stats.peer
        if peer is not None and peer != self._peer:
            self._peer = peer
            self._on_peer(peer)
        if isinstance(msg, Pong):
            # a pong answers its ping and every older one (the worker handles them in order)
            for old_seq in [k for k in self._outstanding if k <= msg.seq]:
                del self._outstanding[old_seq]
            fut = self._pong_waiters.pop(msg.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(msg, State):
            if msg.error:
                self.last_error = msg.error
                self._reported_error = True
            if msg.why:  # why the state is short of up (not fatal)
                if self._why is None:
                    self._before_why = self.last_error
                self.last_error, self._why = msg.why, msg.why
            try:
                st = TunnelState(msg.state)
            except ValueError:  # not reached: the decoder takes only WORKER_STATES
                return
            if st == TunnelState.UP:
                if self._why is not None and self.last_error == self._why:
                    self.last_error = self._before_why  # the why explained a state now over
                self._why = None
                self._move(st, f"peer {msg.peer}")
            elif st in LIVE:
                self._move(st, msg.why or "")

    def _refuse(self, error: str) -> None:
        w = self.worker
        if w is None:
            return
        self._kill_reason = (f"worker pid {w.pid} sent a malformed control message "
                             f"({error}); killed")
        self.log.error("tunnel %s: %s", self.name, self._kill_reason)
        w.kill()

    def _exited(self, code: int | None) -> None:
        loop = asyncio.get_running_loop()
        self._fold_counters()
        self.worker = None
        if self._stopping:
            return
        if self._kill_reason:
            self.last_error, self._kill_reason = self._kill_reason, None
        elif code is not None and code < 0:
            self.last_error = f"worker killed by signal {-code}"
        elif code not in (None, 0) and not self._reported_error:
            self.last_error = f"worker exited with status {code}"
        self._reported_error = False
        self.log.warning("tunnel %s: worker exited (%s)", self.name, code)
        self._crashed(time_now=loop.time())

    def _crashed(self, time_now: float) -> None:
        """Schedule a restart with backoff, or give up (FAILED) on a crash loop."""
        if time_now - self._started_at > STABLE_AFTER:
            self._streak = 0
        self._streak += 1
        self._crashes.append(time_now)
        while self._crashes and time_now - self._crashes[0] > self.limits.crash_window:
            self._crashes.popleft()
        if len(self._crashes) > self.limits.crash_limit:
            # BACKOFF/STARTING/UP -> FAILED: crash loop
            self._move(TunnelState.FAILED, f"{len(self._crashes)} crashes within "
                                           f"{self.limits.crash_window:g}s")
            return
        delay = min(self.limits.backoff_max,
                    self.limits.backoff_min * 2 ** (self._streak - 1))
        # * -> BACKOFF: restart scheduled
        self._move(TunnelState.BACKOFF, f"restart in {delay:.1f}s")
        self._restart_handle = asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        self._restart_handle = None
        if self._stopping or self.state != TunnelState.BACKOFF:
            return
        self.restarts += 1
        self._spawn()

    # ------------------------------------------------------------------ liveness

    async def _pinger(self) -> None:
        """Ping the worker; kill it when its oldest unanswered ping is too old.

        The age is that of a ping we really sent, so a stall of the daemon's own loop (no
        pings sent meanwhile) never condemns a healthy worker; pending pongs are read before
        judging. Until the worker's first message, it gets ``START_GRACE`` to start Python.
        One ping is in flight at a time: more would not change the oldest one's age, and a
        worker still starting (or busy) would answer each of them later.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limits.ping_interval)
            w = self.worker
            if w is None:
                continue
            w.drain()  # pongs that arrived while the loop was busy count
            if self.worker is not w:
                continue
            now = loop.time()
            limit = self.limits.ping_timeout if self._heard else max(
                self.limits.ping_timeout, START_GRACE)
            oldest = min(self._outstanding.values(), default=None)
            if oldest is not None and now - oldest > limit:
                self._kill_reason = (f"worker pid {w.pid} did not answer pings for "
                                     f"{now - oldest:.1f}s (limit {limit:g}s: hung); killed")
                self.log.error("tunnel %s: %s", self.name, self._kill_reason)
                w.kill()
                continue
            if oldest is not None:
                continue  # the one in flight is judged; another would add nothing
            self._seq += 1
            if w.send(Ping(self._seq)):
                self._outstanding[self._seq] = now

    async def refresh(self, timeout: float = REFRESH_TIMEOUT) -> None:
        """Ask the live worker for fresh counters (for an exact status), waiting at most
        ``timeout``; a worker already behind on its pings (stopped, wedged), or not heard
        from yet, is not waited for: its last counters stand."""
        w = self.worker
        if w is None or not self._heard:  # not started yet: it has no counters
            return
        now = asyncio.get_running_loop().time()
        if any(now - sent > timeout for sent in self._outstanding.values()):
            return
        self._seq += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pong_waiters[self._seq] = fut
        if w.send(Ping(self._seq)):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
        self._pong_waiters.pop(self._seq, None)

    def send(self, msg: Message) -> bool:
        """Forward a control message to the live worker (e.g. an MTU update)."""
        return self.worker.send(msg) if self.worker else False

    # ------------------------------------------------------------------ counters, status

    def _fold_counters(self) -> None:
        for k in _COUNTERS:
            self._base[k] += int(self._live.get(k, 0) or 0)
        for cause, n in (self._live.get("drops") or {}).items():
            self._base["drops"][cause] = self._base["drops"].get(cause, 0) + int(n)
        for k in ("last_rx", "last_tx", "peer"):
            if self._live.get(k) is not None:
                self._base[k] = self._live[k]
        self._base["peers"] = merge_peers(self._base["peers"], self._live.get("peers") or {})
        live_peers = self._live.get("peers") or {}
        for peer, counts in live_peers.items():
            base = self._peer_base.setdefault(peer, {})
            for f in PEER_COUNTERS:
                base[f] = base.get(f, 0) + int(counts.get(f, 0) or 0)
        self._live = {}
        if live_peers:
            self._on_counters(True)

    def live_peers(self) -> dict[str, Any]:
        """The live worker's per-peer report (``{}`` without one or without peers)."""
        peers = self._live.get("peers")
        return dict(peers) if isinstance(peers, dict) else {}

    def lifetime(self) -> dict[str, dict[str, int]]:
        """Peer -> totals over every worker (and earlier daemon runs) plus the live one."""
        out = {peer: dict(c) for peer, c in self._peer_base.items()}
        for peer, counts in (self._live.get("peers") or {}).items():
            mine = out.setdefault(peer, {})
            for f in PEER_COUNTERS:
                mine[f] = mine.get(f, 0) + int(counts.get(f, 0) or 0)
        return out

    def status(self) -> dict[str, Any]:
        """The tunnel's status fields; ``peers``: peer name -> the worker-side fields of
        :func:`merge_peers` (``{}`` if no worker reported peers; the daemon adds the
        configured ones, :func:`tund.daemon.status.tunnel_peers`)."""
        live = self._live
        out: dict[str, Any] = dict(self.describe)
        out.update(state=str(self.state), pid=self.worker.pid if self.worker else None,
                   restarts=self.restarts, last_error=self.last_error, since=self.since)
        for k in _COUNTERS:
            out[k] = self._base[k] + int(live.get(k, 0) or 0)
        drops = dict(self._base["drops"])
        for cause, n in (live.get("drops") or {}).items():
            drops[cause] = drops.get(cause, 0) + int(n)
        out["drops"] = drops
        for k in ("last_rx", "last_tx", "peer"):
            out[k] = live.get(k) if live.get(k) is not None else self._base.get(k)
        out["peers"] = merge_peers(self._base["peers"], live.get("peers") or {})
        out["warnings"] = list(live.get("warnings") or [])
        for k, v in live.items():  # session fields of encrypted tunnels etc.
            if k not in out and k not in ("state",):
                out[k] = v
        if out["peers"]:  # this daemon run's counters and the lifetime's (tund.daemon.counterstore)
            lifetime = self.lifetime()
            out["peers"] = {peer: {**v, "lifetime": lifetime.get(peer, {})}
                            for peer, v in out["peers"].items()}
            self._on_counters(False)
        return out
