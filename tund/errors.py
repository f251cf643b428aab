"""Exceptions raised by tund, each with a stable ``code`` and a human message.

The tree::

    TundError                      code "internal"
      + ConfigError                code "invalid-config"   (carries every ConfigIssue at once)
      + KernelError                code "kernel"
      |   + TunError               ioctl on /dev/net/tun failed or found a mismatch
      |   + IpCommandError         an ``ip`` command exited non-zero (argv, rc, stderr)
      + ControlError               code given by the daemon's reply (client side)
      + ReloadError                code "reload-failed" (which step failed and why)

Messages name the place and the value: ``FILE:LINE: key.path: what is wrong (got VALUE)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class TundError(Exception):
    """Base of every error tund raises on purpose."""

    code = "internal"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, located as precisely as we can.

    ``line`` is 0 when unknown; ``path`` is the dotted key path
    (``interfaces.tun0.mtu``), empty for file-level problems.
    """

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(TundError):
    """The configuration is invalid; ``issues`` lists every problem found."""

    code = "invalid-config"

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class KernelError(TundError):
    """A kernel object could not be created, read or changed."""

    code = "kernel"


class TunError(KernelError):
    """An ioctl on /dev/net/tun failed, or an existing device does not match its config."""


class IpCommandError(KernelError):
    """An ``ip`` command failed; carries its argv, exit status and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"`{' '.join(self.argv)}` failed (exit {returncode}): {self.stderr}")


class ReloadError(TundError):
    """A reload step failed; the steps before it were undone."""

    code = "reload-failed"


class ControlError(TundError):
    """The daemon answered a control request with an error (client side)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
