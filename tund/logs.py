"""Where tund's log messages go: journald under systemd, stderr otherwise.

Contract:

* :func:`setup` installs exactly one handler on the root logger (calling it again replaces
  it) and sets the level.  It picks journald (``systemd.journal.JournalHandler``, with
  ``SYSLOG_IDENTIFIER=tund``) only when journald is really there: systemd-python imports
  AND ``/run/systemd/journal/socket`` exists AND we were started with our stderr connected
  to the journal (``JOURNAL_STREAM``) or stderr is not a terminal.  JournalHandler without
  a journald drops every message silently, hence the socket check; a terminal user running
  ``tund`` by hand sees the messages on the terminal.  ``TUND_LOG_TARGET=stderr|journal``
  overrides the choice (``journal`` still falls back to stderr when journald is absent).
* :func:`fields` is the ``extra=`` of one message about an interface and/or a tunnel; every
  message about a device (created, adopted, ``[#] ...``, removed) carries ``TUND_INTERFACE``,
  one about a tunnel ``TUND_TUNNEL`` (both when it is about both).
* :func:`tunnel_logger` returns an adapter whose records carry ``TUND_TUNNEL`` and
  ``TUND_INTERFACE``.  JournalHandler sends every attribute of a record as a journal field
  of the same name (journald keeps those named in upper case), so ``journalctl
  TUND_TUNNEL=wan0`` finds them; both handlers also show them as a ``[tunnel/interface]``
  message prefix.
* :class:`Throttle` rate-limits identical warnings (one line per key per interval, with the
  number suppressed in between).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Literal

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "tund"
TUNNEL_FIELD = "TUND_TUNNEL"
INTERFACE_FIELD = "TUND_INTERFACE"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
_STDERR_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(tund_prefix)s%(message)s"
_JOURNAL_FORMAT = "%(tund_prefix)s%(message)s"

Target = Literal["journal", "stderr"]


def parse_level(level: str) -> int:
    """``"info"`` (any case) -> ``logging.INFO``; ValueError naming the value otherwise."""
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)} (got {level!r})") from None


def _journal_importable() -> bool:
    try:
        from systemd.journal import JournalHandler  # noqa: F401
    except ImportError:
        return False
    return True


def choose_target(env: Mapping[str, str], *, journal_socket: bool, journal_importable: bool,
                  stderr_is_tty: bool) -> Target:
    """Decide between journald and stderr (pure; see the module docstring for the rule)."""
    if not (journal_socket and journal_importable):
        return "stderr"
    wanted = env.get("TUND_LOG_TARGET", "").strip().lower()
    if wanted in ("stderr", "journal"):
        return "journal" if wanted == "journal" else "stderr"
    if env.get("JOURNAL_STREAM") or not stderr_is_tty:
        return "journal"
    return "stderr"


class _PrefixFormatter(logging.Formatter):
    """Adds ``tund_prefix`` (``[tunnel/interface] `` or empty) to every record it formats."""

    def format(self, record: logging.LogRecord) -> str:
        tunnel = getattr(record, TUNNEL_FIELD, None)
        iface = getattr(record, INTERFACE_FIELD, None)
        if tunnel and iface:
            record.tund_prefix = f"[{tunnel}/{iface}] "
        elif tunnel or iface:
            record.tund_prefix = f"[{tunnel or iface}] "
        else:
            record.tund_prefix = ""
        return super().format(record)


_installed: logging.Handler | None = None


def _make_handler(target: Target) -> logging.Handler:
    if target == "journal":
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        handler.setFormatter(_PrefixFormatter(_JOURNAL_FORMAT))
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrefixFormatter(_STDERR_FORMAT))
    return handler


def current_target(env: Mapping[str, str] | None = None) -> Target:
    """:func:`choose_target` for this process (its environment, journald, stderr)."""
    socket_there = os.path.exists(JOURNAL_SOCKET)  # first: no import where it is not
    return choose_target(os.environ if env is None else env,
                         journal_socket=socket_there,
                         journal_importable=socket_there and _journal_importable(),
                         stderr_is_tty=sys.stderr.isatty())


def object_journal_handler(fields: Mapping[str, str]) -> logging.Handler:
    """A JournalHandler whose every message carries ``fields`` (``TUND_TUNNEL``, ...) and
    the ``[tunnel/interface]`` prefix; for a process about one object (a tunnel's worker).
    Call only when :func:`current_target` is ``"journal"``.

    The journal socket is opened (by libsystemd, once per process) at the first message:
    a process that forks others keeping some fd numbers (the fork server) must never log
    through it, or its children would inherit that fd under a number they reuse."""
    from systemd.journal import JournalHandler

    tunnel, iface = fields.get(TUNNEL_FIELD, ""), fields.get(INTERFACE_FIELD, "")
    prefix = f"[{tunnel}/{iface}] " if tunnel and iface else (
        f"[{tunnel or iface}] " if tunnel or iface else "")
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER, **fields)
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))
    return handler


def setup(level: str, *, env: Mapping[str, str] | None = None) -> Target:
    """Route all logging to journald or stderr at ``level``; returns the target chosen.

    Raises ValueError for an unknown level (before changing anything).
    """
    global _installed
    levelno = parse_level(level)
    target = current_target(env)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed.close()
    _installed = _make_handler(target)
    root.addHandler(_installed)
    root.setLevel(levelno)
    return target


class TunnelLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds ``TUND_TUNNEL``/``TUND_INTERFACE`` to every record (caller's ``extra`` kept)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def fields(*, interface: str | None = None, tunnel: str | None = None) -> dict[str, str]:
    """The journal fields of a message about ``interface`` and/or ``tunnel`` (``extra=``):
    ``TUND_INTERFACE`` / ``TUND_TUNNEL`` for those given, nothing for the others."""
    out: dict[str, str] = {}
    if interface:
        out[INTERFACE_FIELD] = interface
    if tunnel:
        out[TUNNEL_FIELD] = tunnel
    return out


def tunnel_logger(tunnel: str, interface: str, name: str = "tund.tunnel") -> TunnelLogger:
    """A logger for one tunnel: messages carry its name and interface as structured fields."""
    return TunnelLogger(logging.getLogger(name), {TUNNEL_FIELD: tunnel, INTERFACE_FIELD: interface})


class Throttle:
    """Rate-limits identical warnings: per ``key``, at most one line per ``interval`` seconds.

    :meth:`log` writes the first occurrence of a key at once; later ones within
    ``interval`` are counted, not written, and the next line written for that key says
    how many were suppressed. ``clock`` is injectable for tests. Keys are kept at most
    ``max_keys`` (the oldest is forgotten), so a flood of distinct keys cannot grow memory.
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 256) -> None:
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None if ``key`` is to be suppressed now, else how many were suppressed before."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last.pop(key, None)
        self._last[key] = now
        if len(self._last) > self._max_keys:
            oldest = next(iter(self._last))
            del self._last[oldest]
            self._suppressed.pop(oldest, None)
        return self._suppressed.pop(key, 0)

    def log(self, logger: logging.Logger | logging.LoggerAdapter[logging.Logger], level: int,
            key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged within ``interval``;
        True if written. No traceback is ever attached."""
        suppressed = self.allow(key)
        if suppressed is None:
            return False
        if suppressed:
            msg += " (%d more like this in the last %.0fs not logged)"
            args = (*args, suppressed, self.interval)
        logger.log(level, msg, *args)
        return True
