"""What ``ps``, ``top`` and ``systemctl status`` show for each of tund's processes.

Contract:

* :func:`set_title` sets the command line (``/proc/PID/cmdline``, what ``ps -f`` and
  ``systemctl status`` print) with the ``setproctitle`` library and then the thread name
  (``/proc/PID/comm``, what ``top`` and ``ps -o comm`` print; ``prctl(PR_SET_NAME)``, 15
  bytes). Best effort: without the library only ``comm`` changes; nothing raises.
* Titles: ``tund: daemon CONFIG`` (:func:`daemon_title`), ``tund: fork server``
  (:data:`FORK_SERVER_TITLE`), ``tund: worker TUNNEL (IFACE)`` (:func:`worker_title`).
* :func:`worker_comm` is ``relay:TUNNEL`` when that fits in 15 bytes; a longer name is cut
  and ends in ``~`` and 4 hex digits of its hash, so two tunnels whose names share their
  first letters still get different ``comm`` (``relay:offi~3c1d``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib

from tund import libc

COMM_MAX = 15  # bytes of /proc/PID/comm (TASK_COMM_LEN - 1)
WORKER_COMM_PREFIX = "relay:"
FORK_SERVER_TITLE = "tund: fork server"
_PR_SET_NAME = 15
_HASH_HEX = 4


def daemon_title(config: str) -> str:
    """``tund: daemon CONFIG``."""
    return f"tund: daemon {config}"


def worker_title(tunnel: str, interface: str) -> str:
    """``tund: worker TUNNEL (IFACE)``."""
    return f"tund: worker {tunnel} ({interface})"


def _cut(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``limit`` bytes."""
    out = text.encode()[:limit]
    return out.decode(errors="ignore")


def short_name(prefix: str, name: str) -> str:
    """``prefix + name`` if it fits in :data:`COMM_MAX` bytes, else ``prefix``, the
    longest start of ``name`` that fits, ``~`` and 4 hex digits of a hash of ``name``."""
    full = prefix + name
    if len(full.encode()) <= COMM_MAX:
        return full
    tag = "~" + hashlib.blake2s(name.encode(), digest_size=4).hexdigest()[:_HASH_HEX]
    room = COMM_MAX - len(prefix.encode()) - len(tag)
    return prefix + _cut(name, max(room, 0)) + tag


def worker_comm(tunnel: str) -> str:
    """The thread name of tunnel ``tunnel``'s worker (see the module docstring)."""
    return short_name(WORKER_COMM_PREFIX, tunnel)


def set_comm(name: str) -> None:
    """``prctl(PR_SET_NAME, name)`` (cut to 15 bytes); best effort."""
    with contextlib.suppress(OSError, AttributeError):
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:COMM_MAX]), what="PR_SET_NAME")


def set_title(title: str, comm: str | None = None) -> bool:
    """Set the command line to ``title`` and, if given, the thread name to ``comm``.

    Returns whether the command line was set (False: ``setproctitle`` is not installed or
    failed; ``comm`` is set regardless).
    """
    done = False
    try:
        import setproctitle

        setproctitle.setproctitle(title)
        done = True
    except (ImportError, OSError):
        pass
    if comm is not None:
        set_comm(comm)  # after: setproctitle may rename the thread as well
    return done
