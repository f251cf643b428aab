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
from enum import StrEnum


class ErrorCode(StrEnum):
    """Every error code tund gives (a reply's ``error.code``, an exception's ``code``).

    The codes are the stable part of an error: scripts match on them. The control
    protocol's reply codes are documented in :data:`tund.control.protocol.ERROR_CODES`.
    """

    BAD_REQUEST = "bad-request"
    TOO_LARGE = "too-large"
    UNKNOWN_COMMAND = "unknown-command"
    VERSION_MISMATCH = "version-mismatch"
    INVALID_CONFIG = "invalid-config"
    RELOAD_FAILED = "reload-failed"
    BUSY = "busy"
    NOT_FOUND = "not-found"
    DENIED = "denied"
    INTERNAL = "internal"
    KERNEL = "kernel"
    RELAY = "relay"
    UNREACHABLE = "unreachable"
    CONTROL_SOCKET = "control-socket"


class TundError(Exception):
    """Base of every error tund raises on purpose."""

    code: str = ErrorCode.INTERNAL


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

    code = ErrorCode.INVALID_CONFIG

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class KernelError(TundError):
    """A kernel object could not be created, read or changed."""

    code = ErrorCode.KERNEL


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

    code = ErrorCode.RELOAD_FAILED


class ControlError(TundError):
    """The daemon answered a control request with an error (client side)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
