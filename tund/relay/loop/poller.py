"""The worker's readiness loop primitive: one epoll, callbacks by fd.

:class:`Poller` offers the part of :class:`selectors.BaseSelector` that transports use
(``register``, ``unregister``, ``modify`` with ``selectors.EVENT_READ`` / ``EVENT_WRITE``
and a callback as ``data``), so a transport works with either. The pump polls it
directly: :meth:`Poller.poll` returns ``(callback, mask)`` pairs, without the
per-event key objects that ``selectors`` builds. That is a handful of Python steps
fewer per wake-up, which is what an idle tunnel's round-trip time is made of.

A mask passed to a callback is a ``selectors`` mask: readiness the callback asked for,
and for hang-up or error the directions it registered (as ``selectors`` reports them).
"""

from __future__ import annotations

import select
import selectors
from collections.abc import Callable
from typing import Any, Protocol

Callback = Callable[[int], None]

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
assert _IN == _READ  # Poller.parts: an EPOLLIN-only event is its own mask


class Registry(Protocol):
    """What a transport needs from its pump's loop (``selectors`` selectors have it)."""

    def register(self, fileobj: Any, events: int, data: Any) -> Any: ...

    def unregister(self, fileobj: Any) -> Any: ...

    def modify(self, fileobj: Any, events: int, data: Any) -> Any: ...


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class Poller:
    """See the module docstring. Not thread-safe; one per worker."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._callbacks: dict[int, Callback] = {}
        self._events: dict[int, int] = {}  # fd -> selectors mask it registered

    def register(self, fileobj: Any, events: int, data: Callback) -> None:
        fd = _fd(fileobj)
        if fd in self._callbacks:
            raise KeyError(f"fd {fd} is already registered")
        self._ep.register(fd, _epoll_mask(events))
        self._callbacks[fd], self._events[fd] = data, events

    def unregister(self, fileobj: Any) -> None:
        fd = _fd(fileobj)
        del self._callbacks[fd], self._events[fd]  # KeyError if unknown, as selectors
        self._ep.unregister(fd)

    def modify(self, fileobj: Any, events: int, data: Callback) -> None:
        fd = _fd(fileobj)
        if fd not in self._callbacks:
            raise KeyError(f"fd {fd} is not registered")
        if events != self._events[fd]:
            self._ep.modify(fd, _epoll_mask(events))
        self._callbacks[fd], self._events[fd] = data, events

    def is_registered(self, fileobj: Any) -> bool:
        return _fd(fileobj) in self._callbacks

    def parts(self) -> tuple[Callable[[float], list[tuple[int, int]]], dict[int, Callback],
                             Callable[[int, int], int]]:
        """What :meth:`poll` is made of, for a loop that dispatches itself (the pump, one
        Python call fewer per wake-up): the epoll's ``poll(timeout)`` giving ``(fd,
        epoll events)``, the live ``fd -> callback`` map, and ``mask(fd, events)``, the
        callback's mask for events other than ``EPOLLIN`` (whose mask is ``EPOLLIN``
        itself, which equals ``selectors.EVENT_READ``)."""
        return self._ep.poll, self._callbacks, self.mask

    def mask(self, fd: int, ev: int) -> int:
        """The ``selectors`` mask of epoll events ``ev`` on registered ``fd``."""
        if ev == _IN:
            return _READ
        mask = 0
        if ev & ~_OUT:
            mask |= _READ
        if ev & ~_IN:
            mask |= _WRITE
        return mask & self._events[fd]

    def poll(self, timeout: float) -> list[tuple[Callback, int]]:
        """Wait up to ``timeout`` seconds (0: do not wait); the callbacks to run."""
        ready = self._ep.poll(timeout)
        if not ready:
            return []
        callbacks = self._callbacks
        return [(cb, self.mask(fd, ev)) for fd, ev in ready
                if (cb := callbacks.get(fd)) is not None]

    def close(self) -> None:
        self._ep.close()
        self._callbacks.clear()
        self._events.clear()


def _epoll_mask(events: int) -> int:
    if not events or events & ~(_READ | _WRITE):
        raise ValueError(f"invalid events: {events!r}")
    return (_IN if events & _READ else 0) | (_OUT if events & _WRITE else 0)
