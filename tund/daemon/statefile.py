"""The daemon's own small JSON state files (peers.json, counters.json): read safely,
written atomically.

Contract: :func:`read_json` opens without following links and returns the parsed JSON of
a regular file owned by this uid and at most ``max_bytes`` long, else None with a
warning saying why (``what`` names the file's purpose); a missing file is None, warned
only with ``missing``. :func:`write_json` replaces the file atomically (a temporary file
of mode 0600 beside it, then ``rename``); an error is logged, never raised. State files
are hints: callers start without them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("tund.daemon.statefile")


def read_json(path: Path, what: str, max_bytes: int, missing: str = "") -> object | None:
    """See the module docstring."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing:
            log.warning("%s: no %s yet; %s", what, path, missing)
        return None
    except OSError as e:
        log.warning("%s: cannot open %s: %s; starting without it", what, path, e)
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            log.warning("%s: %s is not a regular file owned by uid %d; ignored",
                        what, path, os.geteuid())
            return None
        raw = f.read(max_bytes + 1)
    try:
        if len(raw) <= max_bytes:
            data: object = json.loads(raw)
            return data
    except ValueError:
        pass
    log.warning("%s: %s is not the JSON tund writes (or over %d bytes); ignored",
                what, path, max_bytes)
    return None


def write_json(path: Path, data: object, what: str) -> None:
    """See the module docstring."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("%s: cannot write %s: %s", what, path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()
