"""The packet loop of one worker: one epoll, readiness -> bounded batches -> counters.

Outbound (device -> peer)::

    device fd --read_one--> size check --codec.seal_one--> transport.send_now
              (not a stream: the latency path; None from seal_one -> as below;
               b"": the codec sent it, to one of its many peers)
    device fd --read_batch(64)--> size check --codec.seal--> transport.send
        (drops: "oversize")   (a stream: ready in the turn before too, busy)
                                                              (drops: "no_peer",
                                                               "queue_full")
    ... once per loop iteration: transport.flush()   (TCP: one send for the batch)
    transport.backlogged -> stop watching the device until on_drained()

Inbound (peer -> device)::

    socket --recv--> [TCP: FrameDecoder] --> deliver --codec.open_one--> device.write
                        (drops: "oversize",        (drops: codec causes;  (drops: "oversize",
                         "malformed")               replies -> send;       "device_full")
                                                    authenticated -> set_peer)

Data first: a message whose first byte is in the codec's ``handshake_types`` (WireGuard
handshakes, which cost a Diffie-Hellman) is not opened on arrival but queued (at most
``HANDSHAKE_QUEUE``; beyond, dropped as ``"handshake_queue_full"``) and opened after the
turn's callbacks, at most ``HANDSHAKES_PER_TURN`` per turn; while some wait the loop does
not sleep. A handshake flood then delays the data path by at most that many handshake
openings per turn.

``open_one`` gives the common result (one packet, authenticated, no reply) bare; the rest
comes as an ``Opened``. After an idle wait a transport reads one message per readiness
event (``busy`` is False, see :class:`tund.relay.transport.base.Link`); the loop then polls
without waiting, so more that arrived are taken at once, and in a busy loop in batches.

With a vnet device over UDP the codec rebuilds super-packets from chunks; one whose
missing chunks never came is written in pieces when the codec's deadline passes. With a
vnet device, what a busy turn yields for the device (after an idle wait: only TCP
segments that could start a run, :func:`tund.relay.device.coalesce.may_lead`, or anything behind
one) is held until the end of the loop iteration (or ``RX_HOLD`` frames) and written
through :func:`tund.relay.device.coalesce.coalesce`: runs of plain TCP segments go in as one
super-frame; other frames after an idle wait are written at once.

Control: the daemon's SEQPACKET socket is watched by the same epoll, so a ``ping``
is answered only by a loop that is really turning. ``stop`` ends the loop after the
current batch; a closed control socket (the daemon died) ends it too. Every change of
``(state, peer, why)`` is reported with a ``state`` message: the state is
:func:`tund.states.link_state` of what the transport and the codec know (judged again at
least every ``CHECK_EVERY`` seconds, at once after a handshake), ``why`` explains a state
short of ``up`` and goes out as the message's ``why``. ``stats()["warnings"]`` lists what
works but will hurt (an MTU larger than the underlay path carries, see
:mod:`tund.relay.loop.health`).

No per-packet logging; per-packet work is a length check, the codec call and a syscall.

Size: one class on purpose: the loop's per-packet paths read its attributes and locals
directly; split into helpers, every packet would pay the extra calls.
"""

from __future__ import annotations

import collections
import logging
import select
import selectors
import socket
import time
from typing import Any

from tund.relay.codec.base import Address, Codec, Opened
from tund.relay.device.coalesce import coalesce, may_lead
from tund.relay.device.tun import BATCH, PacketDevice
from tund.relay.loop.counters import Counters
from tund.relay.loop.health import mtu_warning
from tund.relay.loop.poller import Poller
from tund.relay.transport.base import Transport, format_peer
from tund.states import Link, TunnelState, link_state
from tund.workerapi.channel import recv_message
from tund.workerapi.messages import (
    TO_WORKER,
    Message,
    MessageError,
    Peers,
    Ping,
    Pong,
    State,
    Stats,
    Stop,
    Update,
    decode,
)

log = logging.getLogger("tund.relay.loop.pump")

MAX_WAIT = 1.0  # the loop wakes at least this often, even with nothing to do
RECHECK = 0.00025  # a busy loop reads the timers' deadlines at least this often
RX_HOLD = 256  # vnet: frames held for coalescing before a write even within one batch
CHECK_EVERY = 0.25  # s: the state is judged again at least this often (session age, ...)
HANDSHAKE_QUEUE = 1024  # handshake messages waiting behind data
HANDSHAKES_PER_TURN = 64  # handshake messages opened per loop turn
_EPOLLIN = select.EPOLLIN  # its own selectors mask (see Poller.parts)


class Pump:
    """Moves packets between ``device`` and ``transport`` through ``codec``.

    ``max_packet``: the largest device packet (MTU + Ethernet header for tap + 4 for
    packet info); larger ones in either direction are dropped as ``"oversize"``.
    ``vnet``: the device gives and takes vnet frames and ``codec`` is an
    :class:`~tund.relay.codec.offload.OffloadCodec` (``max_packet`` is then the largest frame;
    an MTU update goes to the codec's ``max_packet``).
    ``underlay``: ``(tunnel MTU, bytes a frame adds to it (14 for tap), bytes the codec
    adds)`` for the MTU warning, or None for no check (TCP carries any size).
    """

    def __init__(self, *, control: socket.socket, device: PacketDevice,
                 transport: Transport, codec: Codec, counters: Counters,
                 max_packet: int, mtu: int | None = None, vnet: bool = False,
                 underlay: tuple[int, int, int] | None = None) -> None:
        self.control = control
        self.device = device
        self.transport = transport
        self.codec = codec
        self.c = counters
        self.max_packet = max_packet
        self.mtu = mtu if mtu is not None else max_packet  # max_packet - mtu = header room
        self.vnet = vnet  # device frames carry a vnet header; the codec checks the MTU
        self.sel = Poller()
        self.now = time.monotonic()
        self._running = False
        self._device_watched = False
        self._reported: tuple[str, str | None, str | None] | None = None
        self._health = getattr(codec, "health", None)  # an encrypting codec's (see Codec)
        self._heard = False  # an authenticated message came on this path (plaintext)
        self._rx_mark = 0  # rx_packets when the path began: more means heard
        self._underlay = underlay
        self.warnings: list[str] = []
        self._rx: list[bytes] = []  # vnet: frames for the device, written once per batch
        self._hs_types: frozenset[int] = getattr(codec, "handshake_types", frozenset())
        #: the codec's ``open_train`` (vnet only: its frames are held for coalescing)
        self._open_train = getattr(codec, "open_train", None) if vnet else None
        self._handshakes: collections.deque[tuple[bytes, Address | None]] = (
            collections.deque())
        self.busy = False  # see tund.relay.transport.base.Link.busy
        self.turn = 0  # loop turns that handled events
        self._device_turn = -2  # the last turn that read the device
        self.exit_code = 0
        # a datagram transport without a peer drops what the device gives before the codec
        self._datagram = getattr(transport, "kind", "") == "udp"

    # ------------------------------------------------------------------ the loop

    # Size: long on purpose: the loop keeps its hot names in locals and calls nothing it need not;
    # splitting it would add a call and attribute lookups to every turn.
    def run(self) -> int:
        """Run until ``stop`` or the control socket closes; return the exit code.

        After a turn that did work the loop first polls without waiting, and reads the
        timers' deadlines only when nothing is ready or ``RECHECK`` has passed since its
        last wait or read: a packet that arrives while one is being handled (the reply to
        what was just sent) is taken at once. The loop only ever waits with fresh
        deadlines; a deadline moved earlier by a busy turn is seen within ``RECHECK``."""
        self.control.settimeout(2.0)  # sends may wait briefly; reads follow readiness
        self.sel.register(self.control, selectors.EVENT_READ, self._on_control)
        self._watch_device(True)
        self._running = True
        self.transport.start(self.sel, self, self.now)
        self.report()
        self.transport.flush()  # what a new path said first (hello, handshake)
        codec, transport, mono = self.codec, self.transport, time.monotonic
        poll, callbacks, mask_of = self.sel.parts()  # dispatched here: no Poller.poll call
        cd = td = None
        recheck = 0.0
        busy = False
        check = self.now + CHECK_EVERY
        try:
            while self._running:
                now = mono()
                if busy and now < recheck:
                    ready = poll(0.0)
                    if not ready and not self._handshakes:
                        busy = False
                        continue
                    self.now = now  # a poll that does not wait: still now
                else:
                    cd, td = codec.next_deadline(), transport.next_deadline()
                    wait = MAX_WAIT
                    if cd is not None and cd - now < wait:
                        wait = cd - now
                    if td is not None and td - now < wait:
                        wait = td - now
                    if self._handshakes:
                        wait = 0.0
                    # a busy loop at RECHECK looks first: only a poll that finds nothing
                    # ready makes the loop idle (and the turn after a wait not busy)
                    ready = poll(0.0) if busy else []
                    if not ready:
                        busy = False
                        ready = poll(wait if wait > 0.0 else 0.0)
                    # nothing ran while it waited: the deadlines hold until RECHECK after
                    self.now = now = mono()
                    recheck = now + RECHECK
                self.busy = busy  # this turn follows one that did work (Link.busy)
                self.turn += 1
                busy = bool(ready)
                for fd, ev in ready:
                    callback = callbacks.get(fd)  # None: unregistered by an earlier one
                    if callback is not None:
                        callback(ev if ev == _EPOLLIN else mask_of(fd, ev))
                    if not self._running:
                        break
                if self._handshakes and self._running:
                    self._open_handshakes()
                    busy = True
                if self._rx:
                    self._flush_rx()
                if td is not None and now >= td:
                    transport.tick(now)
                    recheck = 0.0  # the next turn reads the new deadlines
                if cd is not None and now >= cd:
                    self._codec_timers(now)
                    recheck = 0.0
                if now >= check:
                    check = now + CHECK_EVERY
                    self.report()
                transport.flush()
        finally:
            try:
                transport.flush()  # best effort: what the last batch queued
            finally:
                transport.close()
            self.sel.close()
        return self.exit_code

    def _codec_timers(self, now: float) -> None:
        for m in self.codec.tick(now):
            self.transport.send(m)
        self.report()  # a handshake retry may change the state
        if self.vnet:  # frames rebuilt from chunks whose companions were lost
            self._rx += self.codec.expired(now)
            self._flush_rx()

    def _watch_device(self, on: bool) -> None:
        if on == self._device_watched:
            return
        if on:
            self.sel.register(self.device.fileno(), selectors.EVENT_READ, self._on_device)
        else:
            self.sel.unregister(self.device.fileno())
        self._device_watched = on

    # ------------------------------------------------------------------ device -> peer

    def _on_device(self, mask: int) -> None:
        # A stream (the device was ready in the turn before too, in a busy loop) is read
        # in batches. Otherwise one packet goes out by the shortest path the codec and
        # transport offer (seal_one, send_now), and the next poll, which does not wait
        # after work, says whether more are there: a lone packet (a request, or the
        # answer to what just arrived) leaves no read behind it.
        device, transport = self.device, self.transport
        if transport.peer is None and self._datagram:
            self._drop_unsendable()
            return
        again, self._device_turn = self._device_turn == self.turn - 1, self.turn
        if again and self.busy:
            self._send_packets(device.read_batch(BATCH))
            transport.flush()
        else:
            p = device.read_one()
            if p is None:
                return
            message = self.codec.seal_one(p, self.now) if len(p) <= self.max_packet else None
            if message is None:
                self._send_packets([p])
                transport.flush()
            elif not message or transport.send_now(message):  # b"": the codec sent it
                c = self.c
                c.tx_packets += 1
                c.tx_bytes += len(p)
                c.last_tx = self.now
        if transport.backlogged:
            self._watch_device(False)  # backpressure: the kernel's device queue drops

    def _drop_unsendable(self) -> None:
        """No peer to send to (a UDP listener before its first peer, an endpoint that does
        not resolve): each packet the device gives is one ``no_peer`` drop, and the codec
        never sees it, so no handshake, hello or staged packet is made for nobody (each of
        those used to add a drop of its own: two for one packet)."""
        n = len(self.device.read_batch(BATCH))
        if n:
            self.c.drop("no_peer", n)

    def _send_packets(self, packets: list[bytes]) -> None:
        seal, send, now, maxp = self.codec.seal, self.transport.send, self.now, self.max_packet
        n = nbytes = 0
        for p in packets:
            size = len(p)
            if size > maxp:
                self.c.drop("oversize")
                continue
            ok = True
            for m in seal(p, now):
                ok = send(m) and ok
            if ok:
                n += 1
                nbytes += size
        if n:
            c = self.c
            c.tx_packets += n
            c.tx_bytes += nbytes
            c.last_tx = self.now

    def on_drained(self) -> None:
        self._watch_device(True)

    # ------------------------------------------------------------------ peer -> device

    def deliver(self, message: bytes, source: Address | None) -> None:
        if message and message[0] in self._hs_types:  # opened after the data (docstring)
            if len(self._handshakes) >= HANDSHAKE_QUEUE:
                self.c.drop("handshake_queue_full")
            else:
                self._handshakes.append((message, source))
            return
        opened = self.codec.open_one(message, source, self.now)
        if not isinstance(opened, bytes):
            self._deliver_opened(opened, source)
            return
        # the common case: authenticated, one packet, no reply
        transport = self.transport
        if source is not None and source != transport.peer:
            self._heard = True
            transport.set_peer(source)
        if self.vnet and (self.busy or self._rx or may_lead(opened)):  # _to_device, inline
            self._hold(opened)
        else:
            self._write_one(opened)

    def deliver_train(self, data: bytes, size: int, source: Address | None) -> None:
        """A train of ``size``-byte datagrams from ``source`` (the last may be shorter), as
        :meth:`deliver` of each in order; with a vnet device the codec's ``open_train``
        takes the leading plain data messages in one call, held for coalescing."""
        off = 0
        if self._open_train is not None:
            frames, off = self._open_train(data, size, self.now)
            if frames:
                transport = self.transport
                if source is not None and source != transport.peer:
                    self._heard = True
                    transport.set_peer(source)
                self._rx += frames
                if len(self._rx) >= RX_HOLD:
                    self._flush_rx()
        deliver = self.deliver
        for at in range(off, len(data), size):
            deliver(data[at:at + size], source)

    def _open_handshakes(self) -> None:
        """Open up to HANDSHAKES_PER_TURN queued handshake messages, oldest first."""
        queue, open_, now = self._handshakes, self.codec.open, self.now
        for _ in range(min(len(queue), HANDSHAKES_PER_TURN)):
            message, source = queue.popleft()
            self._deliver_opened(open_(message, source, now), source)

    def _deliver_opened(self, op: Opened, source: Address | None) -> None:
        if op.drop is not None:
            self.c.drop(op.drop)
            return
        if op.authenticated:
            if source is not None and source != self.transport.peer:
                self._heard = True
                self.transport.set_peer(source)
            elif not self._heard:
                self._heard = True
                self.report()
        for p in op.packets:
            self._to_device(p)
        if op.authenticated or source is None:
            for r in op.replies:
                self.transport.send(r)
        else:  # e.g. a cookie reply: back to whoever asked, the peer may be elsewhere
            for r in op.replies:
                self.transport.reply_to(r, source)
        if self._health is not None and (self._reported is None
                                         or self._reported[0] != TunnelState.UP):
            self.report()  # a handshake may have completed

    def _to_device(self, p: bytes) -> None:
        """Write ``p`` now, or (vnet) hold it for coalescing: in a busy turn, behind held
        frames, or when later segments could join it."""
        if self.vnet and (self.busy or self._rx or may_lead(p)):
            self._hold(p)
        else:
            self._write_one(p)

    def _hold(self, frame: bytes) -> None:
        """vnet: keep ``frame`` for :func:`~tund.relay.device.coalesce.coalesce` at the end of
        the loop iteration (or once ``RX_HOLD`` frames wait)."""
        rx = self._rx
        rx.append(frame)
        if len(rx) >= RX_HOLD:
            self._flush_rx()

    def _flush_rx(self) -> None:
        rx, self._rx = self._rx, []
        if len(rx) == 1:  # nothing to join it with (a lone packet in a busy turn)
            self._write_one(rx[0])
            return
        for p in coalesce(rx):
            self._write_one(p)

    def _write_one(self, p: bytes) -> None:
        c = self.c
        if len(p) > self.max_packet:
            c.drop("oversize")
            return
        try:
            if not self.device.write(p):
                c.drop("device_full")
                return
        except OSError:
            c.errors += 1
            return
        c.rx_packets += 1
        c.rx_bytes += len(p)
        c.last_rx = self.now

    # ------------------------------------------------------------------ state, control

    def on_state(self, new_path: bool) -> None:
        transport = self.transport
        if new_path and getattr(transport, "role", "") != "listen":
            # a path we made ourselves: nothing has come back on it yet (a listener's
            # path comes from a message, so it has been heard)
            self._heard, self._rx_mark = False, self.c.rx_packets
        if transport.peer is not None:
            self._check_underlay()
        if new_path and transport.state == "up":
            for m in self.codec.on_connected(self.now):
                transport.send(m)
        self.report()

    def link(self) -> Link:
        """What :func:`tund.states.link_state` judges, as of now."""
        t = self.transport
        health = self._health
        endpoint = format_peer(t.peer)
        host = getattr(t, "host", None) if getattr(t, "role", "") == "remote" else None
        if host and endpoint and host not in endpoint:  # a name: say which address it was
            endpoint = f"{host} ({endpoint})"
        return Link(getattr(t, "kind", "tcp"), t.state == "up",
                    self._heard or self.c.rx_packets > self._rx_mark,
                    health(self.now) if health is not None else None,
                    endpoint, getattr(t, "problem", None))

    def state(self) -> tuple[str, str | None]:
        """The state to report and why it is short of ``up`` (None: nothing to say)."""
        state, why = link_state(self.link(), self.now)
        return str(state), why

    def report(self, error: str | None = None) -> None:
        """Send a ``state`` message if ``(state, peer, why)`` changed, or always with
        ``error`` (fatal: the worker is about to exit)."""
        state, why = self.state()
        key = (state, format_peer(self.transport.peer), why)
        if key == self._reported and error is None:
            return
        self._reported = key
        if why:
            log.warning("state %s, peer %s: %s", key[0], key[1], why)
        else:
            log.info("state %s, peer %s", key[0], key[1])
        self.send_control(State(key[0], key[1], error, Stats.of(self.stats()), why))

    def _check_underlay(self) -> None:
        """The MTU warning for the current peer (see :mod:`tund.relay.loop.health`)."""
        if self._underlay is None or self.transport.peer is None:
            return
        mtu, frame_extra, codec_extra = self._underlay
        warning = mtu_warning(mtu, frame_extra, codec_extra, self.transport.peer)
        self.warnings = [warning] if warning else []
        if warning:
            log.warning("%s", warning)

    def stats(self) -> dict[str, Any]:
        s = self.c.as_dict()
        s["peer"] = format_peer(self.transport.peer)
        s["state"] = self._reported[0] if self._reported else self.transport.state
        s["warnings"] = list(self.warnings)
        extra = dict(self.codec.stats())
        drops = s["drops"]
        for cause, n in (extra.pop("drops", None) or {}).items():  # the codec's own drops
            drops[cause] = drops.get(cause, 0) + n
        s.update(extra)
        return s

    def send_control(self, msg: Message) -> None:
        try:
            self.control.send(msg.encode())
        except TimeoutError:
            log.warning("control socket full: %s message lost", msg.OP)
        except OSError as e:
            log.warning("control socket: %s; exiting", e)
            self._running = False

    def _on_control(self, mask: int) -> None:
        try:
            raw = recv_message(self.control)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError as e:
            raw = b""
            log.warning("control socket: %s", e)
        if not raw:
            log.warning("control socket closed (the daemon is gone); exiting")
            self._running = False
            return
        try:
            msg = decode(raw, TO_WORKER)
        except MessageError as e:
            log.warning("ignoring a malformed control message: %s", e)
            return
        if isinstance(msg, Ping):
            self.send_control(Pong(msg.seq, Stats.of(self.stats())))
        elif isinstance(msg, Update):
            if msg.keepalive is not None:
                self.codec.set_keepalive(float(msg.keepalive), self.now)
                self.transport.set_keepalive(msg.keepalive)
                log.info("keepalive now %d s", msg.keepalive)
            if msg.mtu is not None:
                self._set_mtu(msg.mtu)
        elif isinstance(msg, Peers):
            self._apply_peers(msg)
        elif isinstance(msg, Stop):
            log.info("stop requested")
            self._running = False
        else:
            log.warning("ignoring control op %r after the start", msg.OP)

    def _apply_peers(self, msg: Peers) -> None:
        """A reload changed the peers (a codec with many peers has ``apply_peers``)."""
        apply = getattr(self.codec, "apply_peers", None)
        if apply is None:
            log.warning("a peers update for a tunnel without peers: ignored")
            return
        try:
            done = apply(msg.peers, self.now)
        except ValueError as e:
            log.error("peers update refused: %s", e)
            return
        log.info("peers: added %s, removed %s, changed %s", done["added"] or "none",
                 done["removed"] or "none", done["changed"] or "none")
        self.transport.flush()

    def _set_mtu(self, new_mtu: int) -> None:
        """The device MTU changed in place (reload): adjust the oversize limit, keep running."""
        if self.vnet:  # frames stay up to 64 KB; plain packets obey the MTU (the codec)
            self.codec.mtu_changed(self.mtu, new_mtu)
        else:
            self.max_packet = self.max_packet - self.mtu + new_mtu
        self.mtu = new_mtu
        if self._underlay is not None:
            self._underlay = (new_mtu, *self._underlay[1:])
            self._check_underlay()
        log.info("mtu now %d (largest packet %d)", new_mtu, self.max_packet)
