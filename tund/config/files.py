"""Reading the main file and its drop-ins, and the file safety check.

Contract: :func:`load` reads ``FILE`` and ``FILE.d/*.toml`` (name order); every file-level
problem (unsafe, unreadable, not UTF-8, not TOML) is reported for every file, then the
load stops. Run as root, a file someone else could change is refused
(:func:`unsafe_ownership`).
"""

from __future__ import annotations

import os
from pathlib import Path

from tund.config.locate import Source
from tund.config.model import DEFAULT_CONFIG, Config
from tund.config.parse import parse_source, validate
from tund.config.safefile import UnsafeFile, open_trusted, read_trusted
from tund.errors import ConfigError, ConfigIssue


def decode(name: str, data: bytes, issues: list[ConfigIssue]) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        issues.append(ConfigIssue(name, line, "",
                                  f"not UTF-8 text: byte 0x{data[e.start]:02x} at column "
                                  f"{column} ({e.reason})"))
        return None


def config_files(path: Path) -> list[Path]:
    """The main file followed by its drop-ins (``<dir>/tunnels.d/*.toml`` in name order)."""
    dropins = path.parent / (path.stem + ".d")
    extra = sorted(dropins.glob("*.toml")) if dropins.is_dir() else []
    return [path, *extra]


def unsafe_ownership(path: Path, euid: int | None = None) -> str | None:
    """Why ``path`` (a config file) is unsafe for a process of ``euid`` to trust, or None.

    Only a root process judges: every directory from ``/``, every link and the file must be
    owned by root, the file and directories not writable by group or others (a sticky
    directory, like /tmp, may be); see :mod:`tund.config.safefile`. The reason names the
    fix. A path that cannot be read gives None (reading it reports the problem).
    """
    try:
        os.close(open_trusted(path, euid))
    except UnsafeFile as e:
        return str(e)
    except OSError:
        return None
    return None


def load(path: Path = DEFAULT_CONFIG) -> Config:
    """Read, merge and validate ``path`` and its drop-ins; raise ConfigError listing all issues.

    Run as root, also refuses files that others could change (:func:`unsafe_ownership`).
    """
    issues: list[ConfigIssue] = []
    sources: list[Source] = []
    for f in config_files(Path(path)):
        try:
            data = read_trusted(f)  # judged and read through one descriptor
        except UnsafeFile as e:
            issues.append(ConfigIssue(str(f), 0, "", str(e)))
            continue
        except OSError as e:
            issues.append(ConfigIssue(str(f), 0, "", f"cannot read: {e.strerror or e}"))
            continue
        text = decode(str(f), data, issues)
        if text is not None and (src := parse_source(str(f), text, issues)) is not None:
            src.directory = str(Path(f).absolute().parent)
            sources.append(src)
    if issues:
        raise ConfigError(issues)
    return validate(sources, issues)


def default_config_path() -> Path:
    """``$TUND_CONFIG`` if set, else /etc/tund/tunnels.toml."""
    return Path(os.environ.get("TUND_CONFIG", str(DEFAULT_CONFIG)))
