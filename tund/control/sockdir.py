"""Is a control socket's place safe? Used by the daemon before it binds and by tundctl
before it connects (issue 16.7: a socket in a user's directory may be that user's fake).

A directory is *trusted* for a process of effective uid ``euid`` when it is owned by root
or by ``euid``, and is not group/other-writable unless it is sticky and owned by root
(like ``/tmp``: others may add names, never remove or rename ours). Every directory on the
way to the socket must be trusted: each prefix of the path as written (following links)
and each prefix of the path with its links resolved. tundctl also wants the socket itself
to be a socket owned by root or by ``euid`` (``lstat``: a link is refused).

:func:`dir_problem` / :func:`socket_problem` return None when safe, else a sentence that
names the path and what is wrong with it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _trusted_owners(euid: int) -> set[int]:
    return {0, euid}


def _dir_chain(path: Path) -> list[Path]:
    """``path`` and its ancestors, as written and with links resolved (absolute)."""
    chains: list[Path] = []
    for p in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        chains.extend([p, *p.parents])
    return list(dict.fromkeys(chains))


def _one_dir(d: Path, euid: int) -> str | None:
    try:
        st = os.stat(d)
    except FileNotFoundError:
        return None  # not made yet: its nearest existing ancestor is judged instead
    except PermissionError:
        return None  # not reachable for us: connect() fails and says so
    except OSError as e:
        return f"directory {d} cannot be checked: {e.strerror or e}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{d} is not a directory"
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in _trusted_owners(euid):
        return (f"directory {d} is owned by uid {st.st_uid}, not root"
                + ("" if euid == 0 else f" or uid {euid}") + " (its owner could put a fake "
                "socket there)")
    if mode & 0o022 and not (mode & stat.S_ISVTX and st.st_uid == 0):
        who = " and ".join(w for bit, w in ((0o020, "group-"), (0o002, "other-")) if mode & bit)
        return (f"directory {d} is {who}writable "
                f"(mode {mode:04o}) without being sticky and root's (anyone who may write "
                "there could replace the socket)")
    return None


def dir_problem(socket_path: str | os.PathLike[str], euid: int | None = None) -> str | None:
    """Why the directories leading to ``socket_path`` are unsafe, or None."""
    euid = os.geteuid() if euid is None else euid
    for d in _dir_chain(Path(socket_path).parent):
        problem = _one_dir(d, euid)
        if problem is not None:
            return problem
    return None


def socket_problem(socket_path: str | os.PathLike[str],
                   euid: int | None = None) -> str | None:
    """Why tundctl must not talk to ``socket_path``, or None (also None when it is missing:
    connecting then says so)."""
    euid = os.geteuid() if euid is None else euid
    problem = dir_problem(socket_path, euid)
    if problem is not None:
        return problem
    try:
        st = os.lstat(socket_path)
    except (FileNotFoundError, PermissionError):
        return None  # connect() says "missing" or "permission denied"
    except OSError as e:
        return f"{socket_path} cannot be checked: {e.strerror or e}"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{socket_path} is not a socket" + (
            " (a symbolic link)" if stat.S_ISLNK(st.st_mode) else "")
    if st.st_uid not in _trusted_owners(euid):
        return (f"{socket_path} is owned by uid {st.st_uid}, not root"
                + ("" if euid == 0 else f" or uid {euid}") + " (not a socket tund made)")
    return None
