"""Name resolution off the packet loop: ``getaddrinfo`` in a helper thread (issue 15.9).

Contract: :meth:`Resolver.start` begins resolving ``host`` (at most one lookup at a time;
a call while one runs does nothing) and returns at once. When the lookup ends, the
resolver's pipe turns readable in the worker's poller and ``on_done`` is called from the
loop with ``(family, sockaddr)`` or the OSError naming the host. A resolver that never
answers leaves the loop turning: the lookup only holds its thread. An IP literal needs no
lookup: :func:`literal` gives its address at once, and the transports use it directly.
:meth:`Resolver.close` stops listening; a lookup still running is abandoned (its thread
is a daemon thread, and its result is dropped).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

from tund.relay.loop.poller import Registry
from tund.relay.transport.base import resolve

Result = tuple[int, Any] | OSError
Done = Callable[[Result], None]


def literal(host: str, port: int, socktype: int) -> tuple[int, Any] | None:
    """``(family, sockaddr)`` of an IP literal ``host`` (``AI_NUMERICHOST``: no lookup is
    made), or None for a host name."""
    try:
        infos = socket.getaddrinfo(host, port, type=socktype, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    if not infos:
        return None
    family, _, _, _, sockaddr = infos[0]
    return int(family), sockaddr


class Resolver:
    """Resolves one endpoint in a helper thread; see the module docstring."""

    def __init__(self, host: str, port: int, socktype: int, sel: Registry,
                 on_done: Done) -> None:
        self.host, self.port, self.socktype = host, port, socktype
        self._sel, self._on_done = sel, on_done
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._result: Result | None = None
        self.pending = False  # a lookup runs
        sel.register(self._r, selectors.EVENT_READ, self._on_readable)

    def start(self) -> None:
        """Begin a lookup unless one runs; never blocks."""
        if self.pending or self._r < 0:
            return
        self.pending = True
        threading.Thread(target=self._lookup, name="tund-resolve", daemon=True).start()

    def _lookup(self) -> None:
        try:
            result: Result = resolve(self.host, self.port, self.socktype)
        except OSError as e:
            result = e
        except Exception as e:  # e.g. UnicodeError from idna: still an answer
            result = OSError(0, f"cannot resolve {self.host!r}: {e}")
        with self._lock:
            if self._w < 0:
                return  # closed meanwhile
            self._result = result
            with contextlib.suppress(OSError):
                os.write(self._w, b"x")

    def _on_readable(self, mask: int) -> None:
        with contextlib.suppress(OSError):
            os.read(self._r, 64)
        with self._lock:
            result, self._result = self._result, None
        if result is None:
            return
        self.pending = False
        self._on_done(result)

    def close(self) -> None:
        if self._r < 0:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(self._r)
        with self._lock:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1
