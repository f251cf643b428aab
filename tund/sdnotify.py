"""The systemd notification protocol (``sd_notify``), as far as tund uses it.

Contract:

* :func:`notify` sends ``KEY=VALUE`` fields to the service manager and returns True when
  they were sent, False when there is no manager to tell (``NOTIFY_SOCKET`` unset) or the
  send failed.  It never raises: a failure is logged at debug level and otherwise ignored,
  because a daemon must not die over a status message.
* ``RELOADING=1`` is completed with ``MONOTONIC_USEC=<now>`` when the caller did not give
  one: systemd >= 253 (``Type=notify-reload``) requires it, older versions ignore it.
* :func:`watchdog_interval` says how often systemd expects ``WATCHDOG=1`` (None: no
  watchdog for this process); the daemon pings at half of it.

systemd-python's ``systemd.daemon.notify`` is used when importable; otherwise a datagram is
written to ``$NOTIFY_SOCKET`` directly (a filesystem path, or ``@name`` for the abstract
namespace).

Typical daemon use::

    notify(READY, status("2 tunnels up"))
    notify(RELOADING); ...; notify(READY, status("reloaded"))
    notify(STOPPING)
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("tund.sdnotify")

READY = "READY=1"
RELOADING = "RELOADING=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def status(text: str) -> str:
    """A ``STATUS=`` field (shown by ``systemctl status``); newlines become spaces."""
    return "STATUS=" + " ".join(text.splitlines())


def _with_monotonic(fields: tuple[str, ...]) -> tuple[str, ...]:
    if RELOADING in fields and not any(f.startswith("MONOTONIC_USEC=") for f in fields):
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return (*fields, f"MONOTONIC_USEC={usec}")
    return fields


def _socket_address(value: str) -> str:
    """``$NOTIFY_SOCKET`` as an AF_UNIX address (``@name`` -> abstract ``\\0name``)."""
    return "\0" + value[1:] if value.startswith("@") else value


def _send_fallback(message: str, env: Mapping[str, str]) -> bool:
    target = env.get("NOTIFY_SOCKET")
    if not target:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode(), _socket_address(target))
    return True


def _send_systemd(message: str) -> bool | None:
    """Send with systemd-python; None when it is not installed."""
    try:
        from systemd.daemon import notify as sd_notify
    except ImportError:
        return None
    return bool(sd_notify(message))


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``fields`` (each ``KEY=VALUE``) to the service manager; never raises.

    ``env`` is for tests: when given, the fallback sender reads ``NOTIFY_SOCKET`` from it
    and systemd-python is not used.
    """
    if not fields:
        return False
    message = "\n".join(_with_monotonic(fields))
    try:
        if env is None:
            sent = _send_systemd(message)
            if sent is not None:
                return sent
            env = os.environ
        return _send_fallback(message, env)
    except Exception as exc:  # a status message must never kill the daemon
        log.debug("sd_notify %r to NOTIFY_SOCKET=%r failed: %s", message,
                  (env or os.environ).get("NOTIFY_SOCKET"), exc)
        return False


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1`` from this process, or None.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, or ``WATCHDOG_PID`` names
    another process (the variables were inherited from a parent that is being watched).
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000
