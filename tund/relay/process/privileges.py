"""Least privilege for relay workers: the drop itself (who to: :mod:`tund.workerapi.run_as`).

:func:`drop_privileges` runs in ``python -m tund.relay`` once the worker has
its fds (opened by the daemon and inherited) and has built its pump, and before it reads a
single packet. In this order:

0. modules the packet loop imports lazily (:data:`PRELOAD`) are imported now: the
   worker user may not be able to read Python's library (e.g. under /root);
1. ``RLIMIT_CORE`` 0 (no core file, whatever happens later);
2. with a :class:`RunAs` and uid 0: every capability dropped from the bounding set,
   ``setgroups([])``, ``setresgid``, ``setresuid`` (which clears the permitted,
   effective and ambient sets: ``PR_SET_KEEPCAPS`` is never set);
3. every capability set emptied explicitly (``capset`` to zero, ambient cleared), so a
   worker that stays at its uid holds none either (except the configured ``root``);
4. ``PR_SET_NO_NEW_PRIVS`` (no exec can gain privileges again);
5. ``PR_SET_DUMPABLE`` 0, last, since changing credentials resets it: no core dump, and no
   other process of the same user (another tunnel's worker) may ptrace it or read its
   memory or fds through /proc;
6. :func:`verify` reads ``/proc/self/status`` back and raises :class:`PrivilegeError`
   unless every field is as intended and ``setuid(0)`` fails;
7. a seccomp filter (:mod:`tund.relay.process.seccomp`): no exec, ptrace, mounts,
   namespaces, ..., and no ioctl that re-owns or re-points the worker's TUN device.

Every step is logged before it is made. Any failure raises :class:`PrivilegeError`; the
worker then refuses to run (it never falls back to running privileged).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import resource
from pathlib import Path

from tund import libc
from tund.relay.errors import RelayError
from tund.relay.process import seccomp
from tund.workerapi.run_as import RunAs

log = logging.getLogger("tund.relay.process.privileges")

#: Imported before the drop: the stdlib imports these lazily (getaddrinfo needs "idna").
PRELOAD = ("encodings.idna",)

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522
_CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


class PrivilegeError(RelayError):
    """Privileges could not be dropped, or the result is not what was asked for."""


# --------------------------------------------------------------------------- worker side


_LAST_CAP: int | None = None
_libc = libc.libc


def prepare() -> None:
    """Load libc and read the kernel's last capability now, changing nothing: the fork
    server calls it once, so each worker's :func:`drop_privileges` has less to do."""
    libc = _libc()
    _prctl(libc, _PR_GET_DUMPABLE, 0, "PR_GET_DUMPABLE")
    _ = libc.capset
    _last_cap()


def _prctl(lib: ctypes.CDLL, option: int, arg: int = 0, what: str = "") -> int:
    try:
        return libc.prctl(option, arg, what=what)
    except OSError as e:
        raise PrivilegeError(str(e.strerror)) from None


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _clear_capabilities(libc: ctypes.CDLL) -> None:
    log.info("[#] capset: effective, permitted, inheritable = none; ambient cleared")
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset(0) failed: {os.strerror(ctypes.get_errno())}")
    _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")


def _last_cap() -> int:
    """The highest capability number this kernel knows (read once per process image)."""
    global _LAST_CAP
    if _LAST_CAP is None:
        try:
            _LAST_CAP = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        except (OSError, ValueError):
            _LAST_CAP = 40
    return _LAST_CAP


def _drop_bounding_set(libc: ctypes.CDLL) -> None:
    last = _last_cap()
    log.info("[#] prctl PR_CAPBSET_DROP 0..%d (empty bounding set)", last)
    for cap in range(last + 1):
        _prctl(libc, _PR_CAPBSET_DROP, cap, f"PR_CAPBSET_DROP {cap}")


def _switch_user(run_as: RunAs) -> None:
    log.info("[#] setgroups [] ; setresgid %d ; setresuid %d", run_as.gid, run_as.uid)
    try:
        os.setgroups([])
        os.setresgid(run_as.gid, run_as.gid, run_as.gid)
        os.setresuid(run_as.uid, run_as.uid, run_as.uid)
    except OSError as e:
        raise PrivilegeError(f"cannot switch to uid {run_as.uid} gid {run_as.gid}: "
                             f"{e.strerror or e}") from None


def drop_privileges(run_as: RunAs | None) -> None:
    """Drop everything a relay worker does not need (see the module docstring).

    ``run_as`` None keeps the current uid (still: no capabilities unless uid 0, no new
    privileges, not dumpable, no core). Raises PrivilegeError.
    """
    for name in PRELOAD:
        importlib.import_module(name)
    libc = _libc()
    log.info("[#] setrlimit RLIMIT_CORE 0")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    switching = run_as is not None and os.geteuid() == 0 and run_as.uid != 0
    if switching:
        assert run_as is not None
        _drop_bounding_set(libc)
        _switch_user(run_as)
    if os.geteuid() != 0:
        _clear_capabilities(libc)
    log.info("[#] prctl PR_SET_NO_NEW_PRIVS 1")
    _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    log.info("[#] prctl PR_SET_DUMPABLE 0")
    _prctl(libc, _PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    verify(run_as if switching else None)
    try:
        seccomp.install()  # last: verify's setuid(0) probe is the kernel's answer
    except OSError as e:
        raise PrivilegeError(f"cannot install the seccomp filter: {e.strerror or e}") from None
    status = read_status()
    log.info("privileges dropped: uid %s gid %s, CapEff %s, NoNewPrivs %s, Seccomp %s",
             status.get("Uid"), status.get("Gid"), status.get("CapEff"),
             status.get("NoNewPrivs"), status.get("Seccomp"))


def read_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status`` as a dict of field -> value text (whitespace normalised)."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = " ".join(value.split())
    return out


def problems(status: dict[str, str], run_as: RunAs | None) -> list[str]:
    """What in a ``/proc/PID/status`` falls short of a dropped worker; empty if nothing.

    ``run_as`` None only checks what holds for every worker whose uid is not 0: no
    capabilities, NoNewPrivs 1.
    """
    found: list[str] = []
    if run_as is not None:
        for field, want in (("Uid", run_as.uid), ("Gid", run_as.gid)):
            ids = status.get(field, "").split()
            if len(ids) != 4 or any(int(i) != want for i in ids):
                found.append(f"{field} is {status.get(field)!r}, expected {want} four times")
        if status.get("Groups", ""):
            found.append(f"Groups is {status['Groups']!r}, expected none")
        if int(status.get("CapBnd", "0"), 16) != 0:
            found.append(f"CapBnd is {status['CapBnd']}, expected 0")
    uid_fields = status.get("Uid", "0").split()
    if not uid_fields or uid_fields[1] != "0":
        for field in _CAP_FIELDS:
            if int(status.get(field, "1"), 16) != 0:
                found.append(f"{field} is {status.get(field)}, expected 0")
    if status.get("NoNewPrivs") != "1":
        found.append(f"NoNewPrivs is {status.get('NoNewPrivs')!r}, expected 1")
    return found


def verify(run_as: RunAs | None) -> None:
    """Raise PrivilegeError unless this process is as :func:`drop_privileges` left it."""
    found = problems(read_status(), run_as)
    if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):
        found.append(f"RLIMIT_CORE is {resource.getrlimit(resource.RLIMIT_CORE)}, expected 0")
    if _prctl(_libc(), _PR_GET_DUMPABLE, 0, "PR_GET_DUMPABLE") != 0:
        found.append("still dumpable")
    if run_as is not None:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            found.append("setuid(0) succeeded")
    if found:
        raise PrivilegeError("privilege drop incomplete: " + "; ".join(found))
