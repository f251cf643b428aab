"""The packet loop of one worker: one selector, readiness -> bounded batches -> counters.

Outbound (device -> peer)::

    device fd --read_batch(64)--> size check --codec.seal--> transport.send
        (drops: "oversize")                                   (drops: "no_peer",
                                                               "queue_full")
    ... once per loop iteration: transport.flush()   (TCP: one send for the batch)
    transport.backlogged -> stop watching the device until on_drained()

Inbound (peer -> device)::

    socket --recv--> [TCP: FrameDecoder] --> deliver --codec.open--> device.write
                        (drops: "oversize",        (drops: codec causes;  (drops: "oversize",
                         "malformed")               replies -> send;       "device_full")
                                                    authenticated -> set_peer)

With a vnet device over UDP the codec rebuilds super-packets from chunks; one whose
missing chunks never came is written in pieces when the codec's deadline passes. With a
vnet device, what a batch of messages yields for the device is held until the end of the
loop iteration (or ``RX_HOLD`` frames) and written through
:func:`tund.relay.coalesce.coalesce`: runs of plain TCP segments go in as one super-frame.

Control: the daemon's SEQPACKET socket is watched by the same selector, so a ``ping``
is answered only by a loop that is really turning. ``stop`` ends the loop after the
current batch; a closed control socket (the daemon died) ends it too. Every change of
``(state, peer)`` is reported with a ``state`` message.

No per-packet logging; per-packet work is a length check, the codec call and a syscall.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import time
from typing import Any

from tund.relay.coalesce import coalesce
from tund.relay.codec import Address, Codec
from tund.relay.counters import Counters
from tund.relay.device import BATCH, PacketDevice
from tund.relay.transport import Transport, format_peer

log = logging.getLogger("tund.relay.pump")

MAX_WAIT = 1.0  # the loop wakes at least this often, even with nothing to do
RX_HOLD = 256  # vnet: frames held for coalescing before a write even within one batch


class Pump:
    """Moves packets between ``device`` and ``transport`` through ``codec``.

    ``max_packet``: the largest device packet (MTU + Ethernet header for tap + 4 for
    packet info); larger ones in either direction are dropped as ``"oversize"``.
    ``vnet``: the device gives and takes vnet frames and ``codec`` is an
    :class:`~tund.relay.offload.OffloadCodec` (``max_packet`` is then the largest frame;
    an MTU update goes to the codec's ``max_packet``).
    """

    def __init__(self, *, control: socket.socket, device: PacketDevice,
                 transport: Transport, codec: Codec, counters: Counters,
                 max_packet: int, mtu: int | None = None, vnet: bool = False) -> None:
        self.control = control
        self.device = device
        self.transport = transport
        self.codec = codec
        self.c = counters
        self.max_packet = max_packet
        self.mtu = mtu if mtu is not None else max_packet  # max_packet - mtu = header room
        self.vnet = vnet  # device frames carry a vnet header; the codec checks the MTU
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()
        self.now = time.monotonic()
        self.wall = time.time()
        self._running = False
        self._device_watched = False
        self._reported: tuple[str, str | None] | None = None
        self._rx: list[bytes] = []  # vnet: frames for the device, written once per batch
        self.exit_code = 0

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Run until ``stop`` or the control socket closes; return the exit code."""
        self.control.settimeout(2.0)  # sends may wait briefly; reads follow readiness
        self.sel.register(self.control, selectors.EVENT_READ, self._on_control)
        self._watch_device(True)
        self._running = True
        self.transport.start(self.sel, self, self.now)
        self.report()
        self.transport.flush()  # what a new path said first (hello, handshake)
        codec, transport, select = self.codec, self.transport, self.sel.select
        try:
            while self._running:
                # deadlines are read once per turn; one that moved during the turn is
                # seen at the next (ticks that come early are harmless by contract)
                cd, td = codec.next_deadline(), transport.next_deadline()
                now = time.monotonic()
                wait = MAX_WAIT
                if cd is not None and cd - now < wait:
                    wait = cd - now
                if td is not None and td - now < wait:
                    wait = td - now
                events = select(wait if wait > 0.0 else 0.0)
                self.now = now = time.monotonic()
                self.wall = time.time()
                for key, mask in events:
                    key.data(mask)
                    if not self._running:
                        break
                if self._rx:
                    self._flush_rx()
                if td is not None and now >= td:
                    transport.tick(now)
                if cd is not None and now >= cd:
                    self._codec_timers(now)
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
        if self.vnet:  # frames rebuilt from chunks whose companions were lost
            codec: Any = self.codec
            self._rx += codec.expired(now)
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
        packets = self.device.read_batch(BATCH)
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
            c.last_tx = self.wall
        self.transport.flush()
        if self.transport.backlogged:
            self._watch_device(False)  # backpressure: the kernel's device queue drops

    def on_drained(self) -> None:
        self._watch_device(True)

    # ------------------------------------------------------------------ peer -> device

    def deliver(self, message: bytes, source: Address | None) -> None:
        op = self.codec.open(message, source, self.now)
        c = self.c
        if op.drop is not None:
            c.drop(op.drop)
            return
        if op.authenticated and source is not None and source != self.transport.peer:
            self.transport.set_peer(source)
        if op.packets:
            if self.vnet:  # written at the end of the batch, coalesced (tund.relay.coalesce)
                self._rx += op.packets
                if len(self._rx) >= RX_HOLD:
                    self._flush_rx()
            else:
                self._write(op.packets)
        if op.authenticated or source is None:
            for r in op.replies:
                self.transport.send(r)
        else:  # e.g. a cookie reply: back to whoever asked, the peer may be elsewhere
            for r in op.replies:
                self.transport.reply_to(r, source)

    def _flush_rx(self) -> None:
        rx, self._rx = self._rx, []
        self._write(coalesce(rx))

    def _write(self, packets: list[bytes]) -> None:
        write, maxp, c = self.device.write, self.max_packet, self.c
        for p in packets:
            if len(p) > maxp:
                c.drop("oversize")
                continue
            try:
                if not write(p):
                    c.drop("device_full")
                    continue
            except OSError:
                c.errors += 1
                continue
            c.rx_packets += 1
            c.rx_bytes += len(p)
            c.last_rx = self.wall

    # ------------------------------------------------------------------ state, control

    def on_state(self, new_path: bool) -> None:
        if new_path and self.transport.state == "up":
            for m in self.codec.on_connected(self.now):
                self.transport.send(m)
        self.report()

    def report(self, error: str | None = None) -> None:
        """Send a ``state`` message if ``(state, peer)`` changed, or always with ``error``."""
        key = (self.transport.state, format_peer(self.transport.peer))
        if key == self._reported and error is None:
            return
        self._reported = key
        log.info("state %s, peer %s", key[0], key[1])
        self.send_control({"op": "state", "state": key[0], "peer": key[1], "error": error,
                           "stats": self.stats()})

    def stats(self) -> dict[str, Any]:
        s = self.c.as_dict()
        s["peer"] = format_peer(self.transport.peer)
        s["state"] = self.transport.state
        extra = dict(self.codec.stats())
        drops = s["drops"]
        for cause, n in (extra.pop("drops", None) or {}).items():  # the codec's own drops
            drops[cause] = drops.get(cause, 0) + n
        s.update(extra)
        return s

    def send_control(self, msg: dict[str, Any]) -> None:
        try:
            self.control.send(json.dumps(msg, separators=(",", ":")).encode())
        except TimeoutError:
            log.warning("control socket full: %s message lost", msg.get("op"))
        except OSError as e:
            log.warning("control socket: %s; exiting", e)
            self._running = False

    def _on_control(self, mask: int) -> None:
        try:
            raw = self.control.recv(65536)
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
            msg = json.loads(raw)
            op = msg["op"]
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed control message: %r", raw[:200])
            return
        if op == "ping":
            self.send_control({"op": "pong", "seq": msg.get("seq"), "stats": self.stats()})
        elif op == "update":
            # the device MTU changed in place (reload): adjust the oversize limit, keep running
            new_mtu = msg.get("mtu")
            if isinstance(new_mtu, int) and 68 <= new_mtu <= 65535:
                if self.vnet:  # frames stay up to 64 KB; plain packets obey the MTU
                    codec: Any = self.codec
                    codec.max_packet = codec.max_packet - self.mtu + new_mtu
                else:
                    self.max_packet = self.max_packet - self.mtu + new_mtu
                self.mtu = new_mtu
                log.info("mtu now %d (largest packet %d)", new_mtu, self.max_packet)
        elif op == "stop":
            log.info("stop requested")
            self._running = False
        else:
            log.warning("ignoring unknown control op %r", op)
