"""UDP transport: one message per datagram.

Role ``listen``: the pre-bound socket from the daemon. The peer is unknown ("connecting")
until a datagram is accepted by the codec as authenticated (see
:class:`tund.relay.codec.base.Opened`); the pump then calls :meth:`UdpTransport.set_peer`,
and later authenticated datagrams from elsewhere move it (roaming). Until then, sends are
dropped as ``"no_peer"``.

Role ``listen`` on a wildcard address (``0.0.0.0`` / ``[::]``): every datagram's local
destination address is read with it (:mod:`tund.relay.transport.pktinfo`) and the replies
to a sender, and everything sent to the peer, go out from the address the peer's latest
datagram came to (kept per sender for the latest ``SOURCES`` senders, so a handshake
opened later still answers from the right one). A datagram from the current peer to
another of our addresses moves it. A socket bound to one address uses none of this.

``allowed_sources`` (role listen): a datagram from outside those networks is dropped as
``"source_refused"`` before the codec sees it.

Role ``remote``: the socket the daemon made (``sock``: it carries the tunnel's mark and
outlives the worker; never replaced, as a socket of our own would lack the mark), else
one of our own; ``connect()``-ed to the resolved endpoint (the kernel then filters other
senders and reports ICMP errors). An IPv4 address is reached from a given IPv6 socket as
``::ffff:a.b.c.d``; an IPv6 address from a given IPv4 socket cannot be: a problem,
retried. A host name is resolved again every ``RESOLVE_EVERY`` seconds and the socket
re-pointed if the address changed; an unresolvable name is retried with backoff. Lookups
run off the loop (:mod:`tund.relay.transport.resolver`): traffic to the old address goes
on meanwhile.

Batching: :meth:`UdpTransport.send` queues; :meth:`UdpTransport.flush` (once per loop
iteration, or when the queue holds ``FLUSH_BYTES``) sends each run of equal-sized
datagrams (the last of a run may be shorter) with one ``sendmsg`` and ``UDP_SEGMENT``
(generic segmentation offload: one trip through the stack for up to ``GSO_SEGMENTS``
datagrams), and everything else one datagram per call. Order is kept. A kernel or route
that refuses UDP_SEGMENT turns it off for this socket and the datagrams go one by one;
datagrams larger than the path MTU (EMSGSIZE in a train) are from then on sent alone, so
the kernel may fragment them.
The socket asks for ``UDP_GRO``: the kernel may then hand over a train of datagrams of
one size in one read, with their size in a control message; they are split again here.
A train of a larger message (:mod:`tund.relay.transport.segments`, from a tund peer) is
joined here instead, and the message delivered once; a header that makes no sense is
dropped as ``"segment_malformed"``, a message given up unfinished counts as
``"segments_incomplete"``, the rest of one whose first datagram was lost as
``"segment_orphaned"``. Sending, a queued message that starts with the train marker
is such a train (the codec built it): one UDP_SEGMENT send (two for the largest).

ICMP errors (ECONNREFUSED, EHOSTUNREACH, ...) on send or receive count as ``errors`` and
are not fatal; a full socket buffer drops the datagram as ``"queue_full"``.

Size: one class on purpose: receive and send (GRO, GSO trains, sticky source addresses)
are its per-packet paths.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import logging
import selectors
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from tund.relay.codec.base import Address
from tund.relay.loop.counters import Counters
from tund.relay.loop.poller import Registry
from tund.relay.transport import pktinfo, segments
from tund.relay.transport.base import Backoff, Link, SourceFilter, format_peer
from tund.relay.transport.gso import (
    GRO_SPACE,
    GSO_BYTES,
    GSO_SEGMENTS,
    enable_gro,
    gro_size,
    segment_option,
)
from tund.relay.transport.resolver import Resolver, Result, literal
from tund.relay.transport.segments import HEAD_LEN, MAGIC_PARITY, MARK, sends, train_size
from tund.relay.transport.unconnect import disconnect

log = logging.getLogger("tund.relay.transport.udp")


class Recovered(Protocol):
    """Told of ``n`` datagrams of a train with parity rebuilt (``source``: their sender,
    given with many peers)."""

    def __call__(self, n: int, source: Address | None = ...) -> object: ...

RECV_BATCH = 64
RESOLVE_EVERY = 30.0
RECV_SIZE = 65536
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>; not in the socket module
SOCKET_BUFFER = 4 * 1024 * 1024  # bursts wait in the kernel instead of being dropped
FLUSH_BYTES = 1 << 20  # send queued datagrams once this many bytes wait
SOURCES = 1024  # wildcard listener: senders whose local address is remembered
SENDERS = 256  # many peers: senders whose train being joined is kept


def _grow_buffers(sock: socket.socket) -> None:
    """Ask for SOCKET_BUFFER each way; ``*FORCE`` (root) passes the sysctl limits."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF),
                         (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def _is_mapped(addr: Address) -> bool:
    return addr[0].startswith("::ffff:")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class UdpTransport:
    """See the module docstring; implements :class:`tund.relay.transport.base.Transport`."""

    kind = "udp"

    def __init__(self, counters: Counters, *, role: str, host: str, port: int,
                 sock: socket.socket | None = None, reconnect_min: float = 0.2,
                 reconnect_max: float = 10.0, known_peer: Address | None = None,
                 multi: bool = False, allowed_sources: Sequence[str] = (),
                 resolve_every: float = RESOLVE_EVERY) -> None:
        """``known_peer`` (role listen): the previous worker's peer, contacted at start."""
        if role == "listen" and sock is None:
            raise ValueError("udp: role listen needs a bound socket")
        self._given = role == "remote" and sock is not None  # the daemon's: kept
        # role listen: datagrams from elsewhere are dropped before the codec sees them
        self.sources = (SourceFilter(allowed_sources)
                        if allowed_sources and role == "listen" else None)
        self.c = counters
        self.role = role
        self.host, self.port = host, port
        self.sock = sock
        self.state = "connecting"
        self.peer: Address | None = None
        self.problem: str | None = None  # why there is no path (the name does not resolve)
        self._known_peer = known_peer
        # many peers (tund.relay.wireguard.multi): no single peer; the codec sends each
        # message with reply_to(message, address); up as soon as the socket listens
        self.multi = multi
        if multi:
            self.kind = "udp-peers"
        self.backlogged = False  # datagrams are never queued in user space
        self.backoff = Backoff(reconnect_min, reconnect_max)
        self._deadline: float | None = None
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rviews = [self._rview]  # recvmsg_into's buffer list, made once
        self._sel: Registry | None = None
        self._link: Link | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self.gso = True  # False once the kernel refused UDP_SEGMENT on this socket
        self._train_max = 1 << 16  # datagrams this large are sent alone (path MTU; EMSGSIZE)
        self._gro = False
        self.sticky = False  # wildcard listener: send from the address the peer sent to
        self._src: pktinfo.Option | None = None  # that address, as a sendmsg option
        self._srcs: dict[Address, pktinfo.Option | None] = {}  # sender -> local address
        self._anc_space = GRO_SPACE
        self._segs = segments.Reassembler(counters.drop)
        # many peers: one reassembler per sender (two tund clients' trains interleave)
        self._segs_by: dict[Address, segments.Reassembler] = {}
        self._recovered: Recovered | None = None
        self._resolver: Resolver | None = None
        self.resolve_every = resolve_every

    def on_recovered(self, callback: Recovered) -> None:
        """``callback(n)``: ``n`` lost datagrams of a train with parity were rebuilt
        (many peers: ``callback(n, source=address)``, the sender's)."""
        self._recovered = self._segs.recovered = callback
        for addr, segs in self._segs_by.items():
            segs.recovered = functools.partial(callback, source=addr)

    def _segs_of(self, addr: Address) -> segments.Reassembler:
        """The train reassembler of sender ``addr`` (many peers; at most
        :data:`SENDERS`, the longest known forgotten first)."""
        segs = self._segs_by.get(addr)
        if segs is None:
            if len(self._segs_by) >= SENDERS:
                del self._segs_by[next(iter(self._segs_by))]
            segs = self._segs_by[addr] = segments.Reassembler(self.c.drop)
            if self._recovered is not None:
                segs.recovered = functools.partial(self._recovered, source=addr)
        return segs

    def start(self, sel: Registry, link: Link, now: float) -> None:
        self._sel, self._link = sel, link
        if self.role == "listen":
            assert self.sock is not None
            self.sock.setblocking(False)
            _grow_buffers(self.sock)
            self._gro = enable_gro(self.sock)
            if pktinfo.is_wildcard(self.sock) and pktinfo.enable(self.sock):
                self.sticky = True
                self._anc_space = GRO_SPACE + pktinfo.SPACE
            sel.register(self.sock, selectors.EVENT_READ, self._on_readable)
            log.info("listening on %s%s", format_peer(self.sock.getsockname()),
                     " (replies from the address each peer sent to)" if self.sticky else "")
            if self.multi:  # up at once; peers with an endpoint and a keepalive initiate
                self.state = "up"
                link.on_state(True)
            if self._known_peer is not None:
                log.info("the previous worker's peer was %s: contacting it now",
                         format_peer(self._known_peer))
                self.set_peer(self._known_peer)
        else:
            if self.sock is not None:  # the daemon's
                self._adopt(self.sock)
            self._resolve()

    def _adopt(self, sock: socket.socket) -> None:
        """Make ``sock`` this transport's (non-blocking, large buffers, GRO, polled)."""
        assert self._sel is not None
        sock.setblocking(False)
        _grow_buffers(sock)
        self._gro = enable_gro(sock)
        self._sel.register(sock, selectors.EVENT_READ, self._on_readable)

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.close()
            self._resolver = None
        self.close_socket()

    def close_socket(self) -> None:
        self._out.clear()
        if self.sock is not None:
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(self.sock)
            self.sock.close()
            self.sock = None

    # ------------------------------------------------------------------ remote role

    def _resolve(self) -> None:
        """(Re)resolve the endpoint: an IP literal at once, a host name in the resolver's
        thread (:mod:`tund.relay.transport.resolver`: the loop never waits for DNS)."""
        assert self._sel is not None
        found = literal(self.host, self.port, socket.SOCK_DGRAM)
        if found is not None:
            self._resolved(found)
            return
        if self._resolver is None:
            self._resolver = Resolver(self.host, self.port, socket.SOCK_DGRAM, self._sel,
                                      self._resolved)
        self._deadline = None  # the answer wakes the loop
        self._resolver.start()

    def _resolved(self, result: Result) -> None:
        """The answer: (re)create or re-point the socket when the address changed; an
        error is retried with backoff (the old address stays in use meanwhile)."""
        assert self._sel is not None and self._link is not None
        if isinstance(result, OSError):
            delay = self.backoff.next_delay()
            self.problem = str(result.strerror or result)
            log.warning("%s; retrying in %.2fs", self.problem, delay)
            self._deadline = time.monotonic() + delay
            return
        self.problem = None
        family, addr = result
        self.backoff.reset()
        self._deadline = None if _is_ip(self.host) else time.monotonic() + self.resolve_every
        if self._given:
            assert self.sock is not None
            mapped = self._reachable(addr, family)
            if mapped is None or mapped == self.peer:
                return
            self.flush()  # what was queued for the old address
            if self.peer is not None and _is_mapped(self.peer) != _is_mapped(mapped):
                disconnect(self.sock)  # the kernel re-connects across families only so
            addr = mapped
        elif addr == self.peer:
            return
        elif self.sock is not None and self.sock.family != family:
            self.close_socket()
        else:
            self.flush()  # what was queued for the old address
        if self.sock is None:
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self._adopt(self.sock)
        if self.peer is not None:
            log.warning("%s now resolves to %s (was %s)", self.host, format_peer(addr),
                        format_peer(self.peer))
        self.sock.connect(addr)
        self.peer, self.state = addr, "up"
        log.info("sending to %s", format_peer(addr))
        self._link.on_state(True)

    def _reachable(self, addr: Address, family: int) -> Address | None:
        """``addr`` as the daemon's socket sends to it (an IPv4 address from an IPv6
        socket: mapped); None, with the problem noted and a retry set, if it cannot."""
        assert self.sock is not None
        if self.sock.family == family:
            return addr
        if self.sock.family == socket.AF_INET6:
            return (f"::ffff:{addr[0]}", addr[1])
        delay = self.backoff.next_delay()
        self.problem = (f"{self.host} resolves to {format_peer(addr)}, an IPv6 address, and "
                        "the tunnel's socket is IPv4")
        log.warning("%s; retrying in %.2fs", self.problem, delay)
        self._deadline = time.monotonic() + delay
        return None

    def tick(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline and self.role == "remote":
            self._resolve()

    def next_deadline(self) -> float | None:
        return self._deadline

    # ------------------------------------------------------------------ both roles

    def set_keepalive(self, seconds: int) -> None:
        """Nothing to do: UDP keepalives are the codec's."""

    def set_peer(self, addr: Address) -> None:
        if self.multi or self.role != "listen" or addr == self.peer:
            return
        assert self._link is not None
        if self.peer is None:
            log.info("peer is %s", format_peer(addr))
        else:
            log.info("peer moved from %s to %s", format_peer(self.peer), format_peer(addr))
        first = self.peer is None
        self.peer, self.state = addr, "up"
        if self.sticky:
            self._src = self._srcs.get(addr)
            log.info("sending to %s from %s", format_peer(addr), pktinfo.describe(self._src))
        self._link.on_state(first)

    def _on_readable(self, mask: int) -> None:
        sock, view, link = self.sock, self._rview, self._link
        assert sock is not None and link is not None
        deliver, gro, views, sources = link.deliver, self._gro, self._rviews, self.sources
        sticky, space, segs = self.sticky, self._anc_space, self._segs
        multi, segs_addr = self.multi, None
        train = getattr(link, "deliver_train", None)  # (optional: Link.deliver_train)
        recv = sock.recvmsg_into if gro or sticky else None
        for _ in range(RECV_BATCH if link.busy else 1):  # (see Link.busy)
            size = 0
            try:
                if recv is not None:
                    n, anc, _flags, addr = recv(views, space)
                    if anc:
                        size = gro_size(anc)
                        if sticky:
                            self._note_local(addr, pktinfo.reply_option(anc))
                else:
                    n, addr = sock.recvfrom_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # a queued ICMP error
                self.c.errors += 1
                log.debug("receive error: %s", e)
                continue
            if sources is not None and not sources.allows(addr[0]):
                self.c.drop("source_refused")
                continue
            if multi and addr != segs_addr:
                segs, segs_addr = self._segs_of(addr), addr
            if (n > HEAD_LEN and view[0] == MARK and view[1] == MAGIC_PARITY
                    and not segs.need and not 0 < size < n):  # one of a train with parity
                if (m := segs.parity(view, 0, n, addr)) is not None:
                    deliver(m, addr)
            elif (segs.need or (n and view[0] == MARK)  # a train (from a tund peer)
                    or (segs.sole is not None and addr == segs.sole[0])):
                for m in segs.add(view, n, size if 0 < size < n else n, addr):
                    deliver(m, addr)
                    if self.sock is not sock:
                        return
            elif 0 < size < n:  # a train of datagrams of ``size`` bytes (the last may be short)
                data = view[:n].tobytes()  # one copy, sliced: half the cost of a copy each
                if train is not None:
                    train(data, size, addr)
                else:
                    for off in range(0, n, size):
                        deliver(data[off:off + size], addr)
                        if self.sock is not sock:
                            return
            else:
                deliver(bytes(view[:n]), addr)
            if self.sock is not sock:
                return

    def _note_local(self, addr: Address, option: pktinfo.Option | None) -> None:
        """``addr`` sent to the local address in ``option`` (wildcard listener)."""
        srcs = self._srcs
        if srcs.get(addr, False) != option:
            if len(srcs) >= SOURCES:
                srcs.clear()
            srcs[addr] = option
            if addr == self.peer and option != self._src:
                log.info("peer %s now sends to %s: replying from there", format_peer(addr),
                         pktinfo.describe(option))
                self._src = option

    def send(self, message: bytes) -> bool:
        """Queue ``message`` for :meth:`flush`; False (counted as ``no_peer``) while
        there is no peer. A send that fails later is counted then, by its cause."""
        if self.peer is None or self.sock is None:
            self.c.drop("no_peer")
            return False
        self._out.append(message)
        self._out_bytes += len(message)
        if self._out_bytes >= FLUSH_BYTES:
            self.flush()
        return True

    def send_now(self, message: bytes) -> bool:
        if self._out or (message and message[0] == MARK):
            ok = self.send(message)
            self.flush()
            return ok
        return self._send_to(message, self.peer)

    def flush(self) -> None:
        """Send what :meth:`send` queued, in order (see the module docstring)."""
        out = self._out
        if not out:
            return
        self._out, self._out_bytes = [], 0
        i, n = 0, len(out)
        while i < n:
            size, j = len(out[i]), i + 1
            if size and out[i][0] == MARK:  # a train of segments, built by the codec
                self._send_segments(out[i])
                i = j
                continue
            if self.gso and 0 < size < self._train_max:
                most = min(GSO_SEGMENTS, GSO_BYTES // size)
                limit = min(n, i + most)
                while j < limit and len(out[j]) == size:
                    j += 1
                if (j < n and j - i < GSO_SEGMENTS and 0 < len(out[j]) < size
                        and (j - i) * size + len(out[j]) <= GSO_BYTES):
                    j += 1  # a shorter datagram may end the train
            if j - i > 1:
                self._send_train(out[i:j], size)
            else:
                self._send_to(out[i], self.peer)
            i = j

    def _send_segments(self, train: bytes) -> None:
        """A train of segments: one UDP_SEGMENT send; its datagrams one by one when the
        socket cannot (``gso`` off) or the path is narrower than them."""
        size = train_size(train)
        for start, end in sends(train):
            piece = train[start:end]
            if self.gso and size < self._train_max:
                self._send_train([piece], size)
            else:
                self._singly([piece], size, self.peer)

    def _singly(self, batch: list[bytes], size: int, peer: Address | None) -> None:
        """A train's datagrams (each ``size`` bytes but the last) one send each."""
        for m in batch:
            for off in range(0, len(m), size):
                self._send_to(m[off:off + size], peer)

    def _send_train(self, batch: list[bytes], size: int) -> None:
        sock, peer = self.sock, self.peer
        if sock is None or peer is None:
            self.c.drop("no_peer", len(batch))
            return
        anc = [segment_option(size)]
        if self._src is not None:
            anc.append(self._src)
        data = [b"".join(batch)]
        try:
            if self.role == "remote":
                sock.sendmsg(data, anc)
            else:
                sock.sendmsg(data, anc, 0, peer)
        except (BlockingIOError, InterruptedError):
            self.c.drop("queue_full", len(batch))
        except OSError as e:
            if e.errno == errno.EMSGSIZE:  # larger than the path MTU: the kernel fragments
                self._train_max = min(self._train_max, size)  # lone datagrams only
                self._singly(batch, size, peer)
                return
            if self._src is not None and e.errno in (errno.EINVAL, errno.EADDRNOTAVAIL):
                self._lost_local()
                self._singly(batch, size, peer)
                return
            if e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                log.info("UDP_SEGMENT refused (%s): sending datagrams one by one", e)
                self.gso = False
                self._singly(batch, size, peer)
                return
            self.c.errors += 1
            log.debug("send to %s failed: %s", format_peer(peer), e)

    def _lost_local(self) -> None:
        log.warning("cannot send from %s any more (the address is gone?): replies go out "
                    "from the routing table's choice until the peer sends again",
                    pktinfo.describe(self._src))
        self._src = None
        self._srcs.clear()

    def _send_to(self, message: bytes, dest: Address | None,
                 src: pktinfo.Option | bool | None = True) -> bool:
        """One datagram; ``src``: the local address option (True: the peer's)."""
        sock = self.sock
        if sock is None or dest is None:
            self.c.drop("no_peer")
            return False
        if src is True:
            src = self._src
        try:
            if self.role == "remote":
                sock.send(message)
            elif src:
                try:
                    sock.sendmsg([message], [src], 0, dest)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.EADDRNOTAVAIL):
                        raise
                    if src is self._src:
                        self._lost_local()
                    sock.sendto(message, dest)
            else:
                sock.sendto(message, dest)
        except (BlockingIOError, InterruptedError):
            self.c.drop("queue_full")
            return False
        except OSError as e:  # ICMP errors, EMSGSIZE, unreachable routes
            self.c.errors += 1
            log.debug("send to %s failed: %s", format_peer(dest), e)
            return False
        return True

    def reply_to(self, message: bytes, source: Address) -> bool:
        """To ``source`` (listen role); a connected (remote role) socket only hears its peer."""
        if self.role == "remote" or self.sock is None:
            return self.send(message)
        self.flush()  # keep the order of what was queued before
        return self._send_to(message, source, self._srcs.get(source) if self.sticky else None)


if TYPE_CHECKING:
    from tund.relay.transport.base import Transport

    _: Transport = UdpTransport(Counters(), role="remote", host="", port=0)
