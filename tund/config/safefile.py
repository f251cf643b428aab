"""Open a config file once, judge what was opened, read from that descriptor.

Contract: :func:`open_trusted` walks the path from ``/`` one component at a time, each
opened with ``O_NOFOLLOW`` relative to the directory opened before it; a symbolic link is
read from its own descriptor and followed by the walk (at most 40, as the kernel allows).
Every node met (each directory, each link, the file) is ``fstat()``-ed through the
descriptor that the next step uses, so a swap between check and use changes nothing: what
was judged is what is read. A root process refuses (:class:`UnsafeFile`, with the reason
and the fix) a node owned by another user, and a file or directory writable by group or
others (a sticky directory, like /tmp, excepted: nobody can replace what they do not own
in it). A non-root process does not judge: it protects no privilege.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_LINKS = 40
_NODE = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class UnsafeFile(Exception):
    """A config file, or a directory or link on the way to it, that another user could change."""


def why_unsafe(st: os.stat_result, what: str, where: str) -> str | None:
    """Why a root process must not trust the node ``st`` (a ``what`` at ``where``), or None."""
    if st.st_uid != 0:
        fix = f"chown -h root {where}" if what == "symlink" else f"chown root {where}"
        return (f"unsafe: the {what} {where} is owned by uid {st.st_uid}, not root, so that "
                f"user could change what root runs; {fix}")
    mode = st.st_mode & 0o7777
    if what == "symlink" or (what == "directory" and mode & stat.S_ISVTX):
        return None
    if mode & 0o022:
        return (f"unsafe: the {what} {where} is writable by group or others (mode "
                f"{mode:04o}); chmod go-w {where}")
    return None


def open_trusted(path: Path, euid: int | None = None) -> int:
    """A descriptor open for reading on the regular file ``path`` names, judged on the way.

    Raises :class:`UnsafeFile` (root only) or OSError (``strerror`` says what: no such
    file, permission denied, is a directory, not a regular file, too many links).
    """
    judge = (os.geteuid() if euid is None else euid) == 0
    stack = [(os.open("/", _NODE | os.O_DIRECTORY), "/")]
    todo = _parts(str(path.absolute()))
    links = 0
    try:
        _judge(judge, os.fstat(stack[0][0]), "directory", "/")
        while todo:
            name = todo.pop()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            dirfd, dirpath = stack[-1]
            where = os.path.join(dirpath, name)
            fd = _open_node(name, dirfd, last=not todo)
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                try:
                    _judge(judge, st, "symlink", where)
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                todo.extend(_parts(target))
            elif todo:  # a directory on the way
                if not stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where)
                stack.append((fd, where))
                _judge(judge, st, "directory", where)
            else:
                return _the_file(fd, st, judge, where)
        # the walk ended on a directory ("/", "..", a link to a directory)
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    finally:
        for fd, _ in stack:
            os.close(fd)


def read_trusted(path: Path, euid: int | None = None) -> bytes:
    """The bytes of ``path``, read from the one descriptor :func:`open_trusted` judged."""
    fd = open_trusted(path, euid)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _parts(path: str) -> list[str]:
    """Components still to walk, the next one last (``""`` and ``.`` dropped)."""
    return [p for p in reversed(path.split("/")) if p not in ("", ".")]


def _open_node(name: str, dirfd: int, *, last: bool) -> int:
    """``name`` in ``dirfd`` without following it: for reading if ``last``, else O_PATH."""
    if not last:
        return os.open(name, _NODE, dir_fd=dirfd)
    try:
        return os.open(name, _FILE, dir_fd=dirfd)
    except OSError as e:
        if e.errno != errno.ELOOP:  # ELOOP: it is a symlink; open the link itself
            raise
        return os.open(name, _NODE, dir_fd=dirfd)


def _the_file(fd: int, st: os.stat_result, judge: bool, where: str) -> int:
    try:
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), where)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", where)
        _judge(judge, st, "file", where)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _judge(judge: bool, st: os.stat_result, what: str, where: str) -> None:
    if judge and (why := why_unsafe(st, what, where)):
        raise UnsafeFile(why)
