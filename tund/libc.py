"""The C library, for the few system calls Python's ``os`` lacks (``prctl``, ``capset``,
``connect`` with ``AF_UNSPEC``: :mod:`tund.relay.transport.unconnect`) and the allocator's
``mallopt``.

Contract: :func:`libc` loads it once per process image (a forked worker inherits it
resolved); :func:`prctl` calls ``prctl(2)`` with integer arguments passed as
``unsigned long`` and anything else (a pointer, bytes) as is, and raises OSError naming
the option when the kernel says no. No other module loads libc.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_LIBC: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The process's C library (``use_errno``), loaded on the first call."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def prctl(option: int, *args: Any, what: str = "") -> int:
    """``prctl(option, *args)`` (missing arguments are 0); its result, or OSError
    ``prctl(WHAT) failed: REASON``."""
    padded = [ctypes.c_ulong(a) if isinstance(a, int) else a for a in args]
    padded += [ctypes.c_ulong(0)] * (4 - len(padded))
    rc = int(libc().prctl(ctypes.c_int(option), *padded))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({what or option}) failed: {os.strerror(err)}")
    return rc


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False where it is refused or missing (another
    C library)."""
    fn = getattr(libc(), "mallopt", None)
    return fn is not None and int(fn(ctypes.c_int(param), ctypes.c_int(value))) == 1
