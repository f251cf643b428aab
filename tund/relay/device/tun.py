"""The device end of the data path: packets in and out of a TUN/TAP fd.

:class:`PacketDevice` is the contract the pump relies on; :class:`FdDevice` wraps any fd
that gives one packet per ``read`` and takes one per ``write``: a TUN/TAP fd, or in
tests a ``SOCK_SEQPACKET`` / ``SOCK_DGRAM`` socketpair end. With packet info enabled the
4-byte PI header is simply part of each packet (as simpletun relays it).
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import TYPE_CHECKING, Protocol

from tund.relay.errors import RelayError

BATCH = 64  # packets per read batch: bounds the work done per readiness event


class PacketDevice(Protocol):
    """One packet per read / write; non-blocking."""

    def fileno(self) -> int: ...

    def read_batch(self, limit: int = BATCH) -> list[bytes]:
        """Up to ``limit`` packets, fewer when the device has no more (never blocks).

        A packet longer than ``read_size - 1`` comes back truncated to ``read_size``
        bytes, so callers detect it by length. Raises RelayError when the device is gone.
        """
        ...

    def read_one(self) -> bytes | None:
        """One packet, or None when the device has none (as :meth:`read_batch`)."""
        ...

    def write(self, packet: bytes) -> bool:
        """Write one packet; False when the device queue is full (the packet is lost).

        Raises OSError when the kernel refuses the packet (e.g. EINVAL for a malformed
        one); that is not fatal.
        """
        ...

    def close(self) -> None: ...


def _gone(fd: int) -> RelayError:
    return RelayError(f"device fd {fd}: end of file (the device is gone)")


def _check_read_error(fd: int, e: OSError) -> None:
    """A read error other than "no packet now" (EAGAIN, EINTR) means the device is gone."""
    if e.errno not in (errno.EAGAIN, errno.EINTR):
        raise RelayError(f"device fd {fd}: read failed: {e.strerror} (errno {e.errno})") from e


class FdDevice:
    """A :class:`PacketDevice` over an fd passed in by the daemon (made non-blocking)."""

    def __init__(self, fd: int, read_size: int) -> None:
        self.fd = fd
        self.read_size = read_size
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def read_batch(self, limit: int = BATCH) -> list[bytes]:
        out: list[bytes] = []
        read, fd, size = os.read, self.fd, self.read_size
        try:
            for _ in range(limit):
                p = read(fd, size)
                if not p:
                    raise _gone(fd)
                out.append(p)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            _check_read_error(fd, e)
        return out

    def read_one(self) -> bytes | None:
        try:
            p = os.read(self.fd, self.read_size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            _check_read_error(self.fd, e)
            return None
        if not p:
            raise _gone(self.fd)
        return p

    def write(self, packet: bytes) -> bool:
        try:
            os.write(self.fd, packet)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


if TYPE_CHECKING:
    _: PacketDevice = FdDevice(0, 0)
