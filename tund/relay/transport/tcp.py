"""TCP transport: messages framed by :mod:`tund.relay.transport.framing` over one connection.

Role ``listen``: accept on the pre-bound listening socket (a source outside
``allowed_sources``, when given, is closed at once and counted as ``"source_refused"``).
With no current connection the new one is used at once. Otherwise it waits as *pending*
(at most ``PENDING_MAX``, the oldest closed beyond that; each closed after
``PENDING_LIFETIME`` s) and takes over only when:

* ``authenticates`` (WireGuard): a message on it is authenticated by the codec (the
  pump then calls :meth:`TcpTransport.set_peer` with its address): its sender holds the
  peer's key. Until then its messages go to the codec with its own address as source
  (replies that are not authenticated, cookie replies, go back on it); the current
  connection keeps the tunnel;
* not ``authenticates`` (plaintext): the current connection is dead, no frame came on
  it for ``dead_after`` s (3 x ``keepalive``, or 30 s without one): then at once, on
  accept or on the pending connection's next frame. A frame on a pending connection
  while the current one is alive is dropped as ``"pending_connection"``, and nothing is
  ever sent on a pending connection;
* the current connection is lost: the newest pending one takes over.

Every take-over is logged. Plaintext is for trusted networks (see README).

Role ``remote``: connect to ``host:port`` (resolved at each attempt, off the loop), retrying
with a capped exponential backoff between ``reconnect_min`` and ``reconnect_max`` (jittered);
the backoff restarts from the minimum once a connection came up.

Sending appends frames to one outbound buffer flushed once per loop iteration (one
``send`` for a whole batch). Above ``HIGH_WATER`` bytes the transport is ``backlogged``
and the pump stops reading the device (the kernel's device queue then drops), until the
buffer falls under ``LOW_WATER``. Memory is bounded: a message that would take the buffer
past ``HARD_LIMIT`` is dropped as ``"queue_full"``.

Size: one class on purpose: connection, pending connections and framing share its
buffers on the per-packet path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tund.relay.codec.base import Address
from tund.relay.loop.counters import Counters
from tund.relay.loop.poller import Registry
from tund.relay.transport.base import Backoff, Link, SourceFilter, format_peer
from tund.relay.transport.framing import MAX_FRAME, FrameDecoder
from tund.relay.transport.resolver import Resolver, Result, literal

log = logging.getLogger("tund.relay.transport.tcp")

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
HARD_LIMIT = 4 * 1024 * 1024
RECV_SIZE = 256 * 1024
RECV_BATCH = 16  # recv calls per readiness event
CONNECT_TIMEOUT = 10.0
PENDING_MAX = 8  # connections waiting to take over the current one
PENDING_LIFETIME = 10.0  # seconds a pending connection may wait
DEAD_AFTER = 30.0  # plaintext without keepalive: no frame this long -> may be displaced
_pack_len = struct.Struct("!H").pack


@dataclass
class _Pending:
    """An accepted connection waiting to take over (see the module docstring)."""

    sock: socket.socket
    addr: Any
    decoder: FrameDecoder
    expires: float


class TcpTransport:
    """See the module docstring; implements :class:`tund.relay.transport.base.Transport`.

    ``authenticates``: the codec authenticates its peer (WireGuard); ``allowed_sources``:
    networks (``"198.51.100.0/24"``) a listener accepts connections from (empty: all)."""

    kind = "tcp"

    def __init__(self, counters: Counters, *, role: str, host: str, port: int,
                 max_message: int, listen_sock: socket.socket | None = None,
                 keepalive: int = 0, reconnect_min: float = 0.2,
                 reconnect_max: float = 10.0, authenticates: bool = False,
                 allowed_sources: Sequence[str] = ()) -> None:
        if role == "listen" and listen_sock is None:
            raise ValueError("tcp: role listen needs a listening socket")
        self.authenticates = authenticates
        self.sources = SourceFilter(allowed_sources) if allowed_sources else None
        self.dead_after = 3.0 * keepalive if keepalive > 0 else DEAD_AFTER
        self.pending: list[_Pending] = []
        self._last_frame = 0.0  # monotonic time of the current connection's latest read
        self._max_message = min(max_message, MAX_FRAME)
        self.c = counters
        self.role = role
        self.host, self.port = host, port
        self.keepalive = keepalive
        self.listen_sock = listen_sock
        self.state = "connecting"
        self.peer: Address | None = None
        self.problem: str | None = None  # why there is no connection (resolve, connect)
        self.conn: socket.socket | None = None
        self.decoder = FrameDecoder(min(max_message, MAX_FRAME), counters.drops)
        self.out = bytearray()
        self.backoff = Backoff(reconnect_min, reconnect_max)
        self._connecting = False  # a non-blocking connect is in flight
        self._target: Any = None  # where it goes
        self._deadline: float | None = None  # next reconnect attempt / connect timeout
        self._writing = False  # EVENT_WRITE registered for the connection
        self._paused = False  # told the pump we are backlogged
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._sel: Registry | None = None
        self._link: Link | None = None
        self._resolver: Resolver | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, sel: Registry, link: Link, now: float) -> None:
        self._sel, self._link = sel, link
        if self.listen_sock is not None and self.role == "listen":
            self.listen_sock.setblocking(False)
            self.listen_sock.listen(8)
            sel.register(self.listen_sock, selectors.EVENT_READ, self._on_accept)
            log.info("listening on %s", format_peer(self.listen_sock.getsockname()))
        else:
            self._connect()

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.close()
            self._resolver = None
        for p in list(self.pending):
            self._close_pending(p)
        self._drop_conn(notify=False)
        if self.listen_sock is not None:
            if self._sel is not None:
                self._sel.unregister(self.listen_sock)
            self.listen_sock.close()
            self.listen_sock = None

    # ------------------------------------------------------------------ remote role

    def _connect(self) -> None:
        """Connect to the endpoint: an IP literal at once, a host name once the resolver's
        thread answers (:mod:`tund.relay.transport.resolver`: the loop never waits)."""
        assert self._sel is not None
        found = literal(self.host, self.port, socket.SOCK_STREAM)
        if found is not None:
            self._connect_to(found)
            return
        if self._resolver is None:
            self._resolver = Resolver(self.host, self.port, socket.SOCK_STREAM, self._sel,
                                      self._connect_to)
        self._deadline = None  # the answer wakes the loop
        self._resolver.start()

    def _connect_to(self, result: Result) -> None:
        assert self._sel is not None
        try:
            if isinstance(result, OSError):
                raise result
            family, addr = result
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            self._retry_later(f"{e.strerror or e}")
            return
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self._retry_later(f"connect to {format_peer(addr)}: {errno.errorcode.get(err, err)}")
            return
        self.conn, self._target = s, addr
        self._connecting = True
        self._deadline = time.monotonic() + CONNECT_TIMEOUT
        self._sel.register(s, selectors.EVENT_WRITE, self._on_connect_done)

    def _on_connect_done(self, mask: int) -> None:
        s = self.conn
        assert s is not None and self._sel is not None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            peer = format_peer(self._target)
            self._drop_conn()
            self._retry_later(f"connect to {peer}: {errno.errorcode.get(err, err)}")
            return
        self._sel.unregister(s)
        self._connecting = False
        self._deadline = None
        self.backoff.reset()
        self._use(s, self._target)

    def _retry_later(self, why: str) -> None:
        self.problem = why
        delay = self.backoff.next_delay()
        log.warning("%s; retrying in %.2fs", why, delay)
        self._deadline = time.monotonic() + delay

    def tick(self, now: float) -> None:
        for p in [p for p in self.pending if p.expires <= now]:
            log.info("pending connection from %s closed: it did not take over within %.0fs",
                     format_peer(p.addr), PENDING_LIFETIME)
            self._close_pending(p)
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self._connecting:  # connect timed out
            peer = format_peer(self._target)
            self._drop_conn()
            self._retry_later(f"connect to {peer}: timed out after {CONNECT_TIMEOUT:.0f}s")
        elif self.conn is None and self.role == "remote":
            self._connect()

    def next_deadline(self) -> float | None:
        if not self.pending:
            return self._deadline
        first = min(p.expires for p in self.pending)
        return first if self._deadline is None else min(first, self._deadline)

    # ------------------------------------------------------------------ listen role

    def _on_accept(self, mask: int) -> None:
        assert self.listen_sock is not None
        for _ in range(8):
            try:
                s, addr = self.listen_sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ECONNABORTED, EMFILE: not fatal
                self.c.errors += 1
                log.warning("accept failed: %s", e)
                return
            if self.sources is not None and not self.sources.allows(addr[0]):
                self.c.drop("source_refused")
                log.debug("connection from %s refused: not in allowed_sources",
                          format_peer(addr))
                s.close()
                continue
            s.setblocking(False)
            if self.conn is None:
                log.info("connection from %s", format_peer(addr))
                self._use(s, addr)
            elif not self.authenticates and self._current_dead(time.monotonic()):
                self._take_over(s, addr, None, f"the old one passed no frame for "
                                f"{self.dead_after:.0f}s", True)
            else:
                self._add_pending(s, addr)

    # ------------------------------------------------------------------ pending connections

    def _add_pending(self, s: socket.socket, addr: Any) -> None:
        assert self._sel is not None
        if len(self.pending) >= PENDING_MAX:
            oldest = self.pending[0]
            log.info("pending connection from %s closed: more than %d pending",
                     format_peer(oldest.addr), PENDING_MAX)
            self._close_pending(oldest)
        p = _Pending(s, addr, FrameDecoder(self._max_message, self.c.drops),
                     time.monotonic() + PENDING_LIFETIME)
        self.pending.append(p)
        self._sel.register(s, selectors.EVENT_READ, lambda mask: self._read_pending(p))
        log.info("connection from %s waits: the one from %s is current (%s)",
                 format_peer(addr), format_peer(self.peer),
                 "a handshake with the peer's key takes over" if self.authenticates
                 else "it is alive")

    def _close_pending(self, p: _Pending) -> None:
        self.pending.remove(p)
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(p.sock)
        p.sock.close()

    def _current_dead(self, now: float) -> bool:
        return self.conn is None or now - self._last_frame >= self.dead_after

    def _read_pending(self, p: _Pending) -> None:
        assert self._link is not None
        try:
            data = p.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_pending(p)
            return
        frames = p.decoder.feed(data)
        if not frames:
            return
        if not self.authenticates:
            if not self._current_dead(time.monotonic()):
                self.c.drop("pending_connection", len(frames))
                return
            self._take_over(p.sock, p.addr, p, f"the old one passed no frame for "
                            f"{self.dead_after:.0f}s", True)
        deliver = self._link.deliver
        for m in frames:  # (WireGuard: an authenticated one makes the pump call set_peer)
            deliver(m, p.addr)

    def _take_over(self, s: socket.socket, addr: Any, p: _Pending | None, why: str,
                   new_path: bool) -> None:
        """``s`` (pending ``p``, or just accepted) becomes the current connection."""
        if p is not None:
            self.pending.remove(p)
            assert self._sel is not None
            self._sel.unregister(s)
        log.warning("connection from %s replaces the one from %s (%s)",
                    format_peer(addr), format_peer(self.peer), why)
        self._drop_conn(notify=False)
        self._use(s, addr, p.decoder if p is not None else None, new_path)

    # ------------------------------------------------------------------ connection

    def _arm_keepalive(self, s: socket.socket) -> None:
        if self.keepalive > 0:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.keepalive)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, self.keepalive)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)

    def set_keepalive(self, seconds: int) -> None:
        """Use ``seconds`` for this connection (if any) and the next ones; 0: the kernel's.
        The plaintext dead-connection window (3 x keepalive) follows."""
        self.keepalive = seconds
        self.dead_after = 3.0 * seconds if seconds > 0 else DEAD_AFTER
        if self.conn is not None and seconds > 0:
            self._arm_keepalive(self.conn)

    def _use(self, s: socket.socket, addr: Any, decoder: FrameDecoder | None = None,
             new_path: bool = True) -> None:
        """``s`` is now the connection to the peer: set options, go up (``decoder``: the
        one that already read from it; ``new_path``: the codec's on_connected runs)."""
        assert self._sel is not None and self._link is not None
        self.problem = None
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._arm_keepalive(s)
        self.conn, self.peer = s, addr
        if decoder is not None:
            self.decoder = decoder
        else:
            self.decoder.reset()
        self._last_frame = time.monotonic()
        self.out.clear()
        self._writing = False
        self._sel.register(s, selectors.EVENT_READ, self._on_conn_event)
        self.state = "up"
        if self.role == "remote":
            log.info("connected to %s", format_peer(addr))
        self._link.on_state(new_path)
        self._check_drained()

    def _drop_conn(self, notify: bool = True) -> None:
        """Close the connection (if any); back to "connecting"."""
        s = self.conn
        if s is None:
            return
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
        s.close()
        self.conn = None
        self._connecting = False
        self._writing = False
        self.out.clear()
        self.decoder.reset()
        if self.state != "connecting" or self.peer is not None:
            self.state, self.peer = "connecting", None
            if notify and self._link is not None:
                self._link.on_state(False)
        self._check_drained()

    def _lost(self, why: str) -> None:
        log.warning("connection to %s lost: %s", format_peer(self.peer), why)
        if self.pending:  # the newest waiting one takes over
            p = self.pending[-1]
            self._take_over(p.sock, p.addr, p, "the old one was lost", True)
            return
        self._drop_conn()
        if self.role == "remote":
            self._deadline = time.monotonic() + self.backoff.next_delay()

    def _on_conn_event(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._write()
        if mask & selectors.EVENT_READ and self.conn is not None:
            self._read()

    def _read(self) -> None:
        s, view, link = self.conn, self._rview, self._link
        assert s is not None and link is not None
        deliver, feed, peer = link.deliver, self.decoder.feed, self.peer
        self._last_frame = time.monotonic()  # (a read with no whole frame counts too)
        for _ in range(RECV_BATCH):
            try:
                n = s.recv_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._lost(e.strerror or str(e))
                return
            if n == 0:
                self._lost("closed by the peer")
                return
            for m in feed(view[:n]):
                deliver(m, peer)
            if self.conn is not s:  # replaced from inside deliver (should not happen)
                return
            if n < RECV_SIZE:
                return

    # ------------------------------------------------------------------ sending

    def send(self, message: bytes) -> bool:
        n = len(message)
        if self.conn is None or self.state != "up":
            self.c.drop("no_peer")
            return False
        if not 0 < n <= MAX_FRAME:
            self.c.drop("oversize" if n else "malformed")
            return False
        out = self.out
        if len(out) + n > HARD_LIMIT:
            self.c.drop("queue_full")
            return False
        out += _pack_len(n)
        out += message
        return True

    def send_now(self, message: bytes) -> bool:
        ok = self.send(message)
        if ok and not self._writing:
            self._write()  # (send() saw a connection that is up)
        return ok

    def reply_to(self, message: bytes, source: Address) -> bool:
        """On the connection ``source`` is the other end of: a pending one, or the current."""
        for p in self.pending:
            if p.addr == source:
                if not 0 < len(message) <= MAX_FRAME:
                    return False
                try:
                    p.sock.send(_pack_len(len(message)) + message)  # small; else dropped
                except OSError:
                    self.c.drop("queue_full")
                    return False
                return True
        return self.send(message)

    def flush(self) -> None:
        if self.out and not self._writing and self.conn is not None and self.state == "up":
            self._write()

    def _write(self) -> None:
        s, out = self.conn, self.out
        assert s is not None and self._sel is not None
        try:
            n = s.send(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._lost(e.strerror or str(e))
            return
        if n == len(out):
            out.clear()
        elif n:
            del out[:n]
        want = bool(out)
        if want != self._writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._sel.modify(s, events, self._on_conn_event)
            self._writing = want
        self._check_drained()

    @property
    def backlogged(self) -> bool:
        if len(self.out) >= HIGH_WATER:
            self._paused = True
        return self._paused

    def _check_drained(self) -> None:
        if self._paused and len(self.out) < LOW_WATER:
            self._paused = False
            if self._link is not None:
                self._link.on_drained()

    def set_peer(self, addr: Address) -> None:
        """The codec authenticated a message from ``addr``: a pending connection from
        there takes over (see the module docstring); otherwise nothing changes."""
        for p in self.pending:
            if p.addr == addr:
                self._take_over(p.sock, p.addr, p, "it completed a handshake with the "
                                "peer's key", False)
                return


if TYPE_CHECKING:
    from tund.relay.transport.base import Transport

    _: Transport = TcpTransport(Counters(), role="remote", host="", port=0, max_message=1)
