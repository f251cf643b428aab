"""UDP transport: one message per datagram.

Role ``listen``: the pre-bound socket from the daemon. The peer is unknown ("connecting")
until a datagram is accepted by the codec as authenticated (see
:class:`tund.relay.codec.Opened`); the pump then calls :meth:`UdpTransport.set_peer`,
and later authenticated datagrams from elsewhere move it (roaming). Until then, sends are
dropped as ``"no_peer"``.

Role ``remote``: a socket of our own, ``connect()``-ed to the resolved endpoint (the
kernel then filters other senders and reports ICMP errors). A host name is resolved
again every ``RESOLVE_EVERY`` seconds and the socket re-pointed if the address changed;
an unresolvable name is retried with backoff.

ICMP errors (ECONNREFUSED, EHOSTUNREACH, ...) on send or receive count as ``errors`` and
are not fatal; a full socket buffer drops the datagram as ``"queue_full"``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import selectors
import socket
import time
from typing import TYPE_CHECKING

from tund.relay.codec import Address
from tund.relay.counters import Counters
from tund.relay.transport import Backoff, Link, format_peer, resolve

log = logging.getLogger("tund.relay.udp")

RECV_BATCH = 64
RESOLVE_EVERY = 30.0
RECV_SIZE = 65536
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>; not in the socket module
SOCKET_BUFFER = 4 * 1024 * 1024  # bursts wait in the kernel instead of being dropped


def _grow_buffers(sock: socket.socket) -> None:
    """Ask for SOCKET_BUFFER each way; ``*FORCE`` (root) passes the sysctl limits."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF),
                         (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class UdpTransport:
    """See the module docstring; implements :class:`tund.relay.transport.Transport`."""

    def __init__(self, counters: Counters, *, role: str, host: str, port: int,
                 sock: socket.socket | None = None, reconnect_min: float = 0.2,
                 reconnect_max: float = 10.0) -> None:
        if role == "listen" and sock is None:
            raise ValueError("udp: role listen needs a bound socket")
        self.c = counters
        self.role = role
        self.host, self.port = host, port
        self.sock = sock
        self.state = "connecting"
        self.peer: Address | None = None
        self.backlogged = False  # datagrams are never queued in user space
        self.backoff = Backoff(reconnect_min, reconnect_max)
        self._deadline: float | None = None
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._sel: selectors.BaseSelector | None = None
        self._link: Link | None = None

    def start(self, sel: selectors.BaseSelector, link: Link, now: float) -> None:
        self._sel, self._link = sel, link
        if self.role == "listen":
            assert self.sock is not None
            self.sock.setblocking(False)
            _grow_buffers(self.sock)
            sel.register(self.sock, selectors.EVENT_READ, self._on_readable)
            log.info("listening on %s", format_peer(self.sock.getsockname()))
        else:
            self._resolve()

    def close(self) -> None:
        if self.sock is not None:
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(self.sock)
            self.sock.close()
            self.sock = None

    # ------------------------------------------------------------------ remote role

    def _resolve(self) -> None:
        """(Re)resolve the endpoint; (re)create or re-point the socket when it changed."""
        assert self._sel is not None and self._link is not None
        try:
            family, addr = resolve(self.host, self.port, socket.SOCK_DGRAM)
        except OSError as e:
            delay = self.backoff.next_delay()
            log.warning("%s; retrying in %.2fs", e.strerror or e, delay)
            self._deadline = time.monotonic() + delay
            return
        self.backoff.reset()
        self._deadline = None if _is_ip(self.host) else time.monotonic() + RESOLVE_EVERY
        if addr == self.peer:
            return
        if self.sock is not None and self.sock.family != family:
            self.close()
        if self.sock is None:
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
            _grow_buffers(self.sock)
            self._sel.register(self.sock, selectors.EVENT_READ, self._on_readable)
        if self.peer is not None:
            log.warning("%s now resolves to %s (was %s)", self.host, format_peer(addr),
                        format_peer(self.peer))
        self.sock.connect(addr)
        self.peer, self.state = addr, "up"
        log.info("sending to %s", format_peer(addr))
        self._link.on_state(True)

    def tick(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline and self.role == "remote":
            self._resolve()

    def next_deadline(self) -> float | None:
        return self._deadline

    # ------------------------------------------------------------------ both roles

    def set_peer(self, addr: Address) -> None:
        if self.role != "listen" or addr == self.peer:
            return
        assert self._link is not None
        if self.peer is None:
            log.info("peer is %s", format_peer(addr))
        else:
            log.info("peer moved from %s to %s", format_peer(self.peer), format_peer(addr))
        first = self.peer is None
        self.peer, self.state = addr, "up"
        self._link.on_state(first)

    def _on_readable(self, mask: int) -> None:
        sock, view, link = self.sock, self._rview, self._link
        assert sock is not None and link is not None
        recv, deliver = sock.recvfrom_into, link.deliver
        for _ in range(RECV_BATCH):
            try:
                n, addr = recv(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # a queued ICMP error
                self.c.errors += 1
                log.debug("receive error: %s", e)
                continue
            deliver(bytes(view[:n]), addr)
            if self.sock is not sock:
                return

    def send(self, message: bytes) -> bool:
        sock, peer = self.sock, self.peer
        if peer is None or sock is None:
            self.c.drop("no_peer")
            return False
        try:
            if self.role == "remote":
                sock.send(message)
            else:
                sock.sendto(message, peer)
        except (BlockingIOError, InterruptedError):
            self.c.drop("queue_full")
            return False
        except OSError as e:  # ICMP errors, EMSGSIZE, unreachable routes
            self.c.errors += 1
            log.debug("send to %s failed: %s", format_peer(peer), e)
            return False
        return True

    def reply_to(self, message: bytes, source: Address) -> bool:
        """To ``source`` (listen role); a connected (remote role) socket only hears its peer."""
        sock = self.sock
        if self.role == "remote" or sock is None:
            return self.send(message)
        try:
            sock.sendto(message, source)
        except (BlockingIOError, InterruptedError):
            self.c.drop("queue_full")
            return False
        except OSError as e:
            self.c.errors += 1
            log.debug("reply to %s failed: %s", format_peer(source), e)
            return False
        return True

    def flush(self) -> None:
        pass


if TYPE_CHECKING:
    from tund.relay.transport import Transport

    _: Transport = UdpTransport(Counters(), role="remote", host="", port=0)
