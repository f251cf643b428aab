"""The control socket itself: who is connected (``SO_PEERCRED``) and binding it safely.

:func:`bind_control_socket`:

* the directories leading to the socket must be root's (or the daemon's user's) and not
  writable by others unless sticky and root's (:mod:`tund.control.sockdir`); otherwise
  start fails, before anything is created; the parent directory is created (0755) when
  missing;
* an existing path is probed: if something answers, start fails ("another tund is
  running"); a dead socket is unlinked; anything that is not a socket is left alone
  and start fails;
* bind under umask 117, so the socket is born 0660 (no chmod by path afterwards), then,
  with ``group``, chgrp to that group with ``lchown`` (never following a link), before
  ``listen``; ``lstat`` checks the result is our socket. Only the owner (root) and the
  control group can connect;

Errors are :class:`ControlSocketError`, saying what is wrong and where.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from tund.control import sockdir
from tund.errors import ErrorCode, TundError

log = logging.getLogger("tund.control.server")

SOCKET_MODE = 0o660
DIR_MODE = 0o755
#: Pending connects the kernel queues for us (capped by net.core.somaxconn): a flood of
#: connects must not leave root's connect() without room while we work through it.
BACKLOG = 128
_PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class PeerCred:
    """Who is on the other end of a connection, from ``SO_PEERCRED``."""

    pid: int
    uid: int
    gid: int


class ControlSocketError(TundError):
    """The control socket could not be set up (in use, not a socket, bad group ...)."""

    code = ErrorCode.CONTROL_SOCKET


def peer_credentials(sock: socket.socket) -> PeerCred:
    """Read ``SO_PEERCRED`` (pid, uid, gid) from a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def resolve_group(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(f"control socket group {group!r}: no such group") from None


def _socket_answers(path: Path) -> bool:
    """True if a server accepts connections on ``path`` (a dead socket refuses)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # a live but busy listener: a full backlog still means "in use"
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ControlSocketError(f"cannot probe existing control socket {path}: "
                                 f"{e.strerror or e}") from None
    finally:
        probe.close()
    return True


def _clear_stale(path: Path) -> None:
    """Remove a dead socket at ``path``; refuse if it is live or not a socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to replace it")
    if _socket_answers(path):
        raise ControlSocketError(f"another tund is running on {path}")
    log.info("removing stale control socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _check_dir(path: Path) -> None:
    problem = sockdir.dir_problem(path)
    if problem is not None:
        raise ControlSocketError(f"refusing control socket {path}: {problem}")


def _check_bound(path: Path, gid: int | None) -> None:
    """The path is still the socket just bound: ours, 0660, of group ``gid``."""
    st = path.lstat()
    if (not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid()
            or stat.S_IMODE(st.st_mode) != SOCKET_MODE
            or (gid is not None and st.st_gid != gid)):
        raise ControlSocketError(
            f"control socket {path} is not as bound (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"uid {st.st_uid}, gid {st.st_gid}; expected a socket {SOCKET_MODE:04o} of uid "
            f"{os.geteuid()}" + ("" if gid is None else f", gid {gid}")
            + "): something replaced it")


def bind_control_socket(path: Path, gid: int | None) -> socket.socket:
    """Create, bind and listen on the control socket at ``path`` (see module docstring)."""
    _check_dir(path)
    if not path.parent.is_dir():
        log.info("creating control socket directory %s (mode %o)", path.parent, DIR_MODE)
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        _check_dir(path)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o777 & ~SOCKET_MODE)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        if gid is not None:
            log.info("[#] chgrp %d %s (not following links)", gid, path)
            os.chown(path, -1, gid, follow_symlinks=False)
        _check_bound(path, gid)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except ControlSocketError:
        sock.close()
        raise
    except OSError as e:
        sock.close()
        raise ControlSocketError(f"cannot listen on control socket {path}: "
                                 f"{e.strerror or e}") from None
    return sock
