"""simpletun's stream framing, sans-IO: a 2-byte big-endian length, then the packet.

Contract:

* :func:`encode` / :func:`encode_into` frame one packet (1..65535 bytes) as a single
  buffer, so a transport sends header and body in one ``send`` (no Nagle stall between
  them).
* :class:`FrameDecoder` turns an arbitrarily split byte stream back into packets.
  Any length from 0 to 65535 is parseable, so the stream never loses sync: a frame
  longer than ``max_size`` is skipped and counted as ``"oversize"``, a zero-length frame
  is skipped and counted as ``"malformed"``; decoding goes on with the next frame.
"""

from __future__ import annotations

import struct

MAX_FRAME = 0xFFFF
_LEN = struct.Struct("!H")
_pack = _LEN.pack
_unpack_from = _LEN.unpack_from


def encode(packet: bytes) -> bytes:
    """Return ``length || packet``; raise ValueError unless ``1 <= len(packet) <= 65535``."""
    n = len(packet)
    if not 0 < n <= MAX_FRAME:
        raise ValueError(f"framing: a packet must be 1..{MAX_FRAME} bytes long (got {n})")
    return _pack(n) + packet


def encode_into(out: bytearray, packet: bytes) -> None:
    """Append ``length || packet`` to ``out`` (same checks as :func:`encode`)."""
    n = len(packet)
    if not 0 < n <= MAX_FRAME:
        raise ValueError(f"framing: a packet must be 1..{MAX_FRAME} bytes long (got {n})")
    out += _pack(n)
    out += packet


class FrameDecoder:
    """Incremental decoder; :meth:`feed` returns the packets completed by ``data``.

    ``drops`` is a cause -> count dict that the decoder increments (pass the worker's
    own dict to count into it directly).
    """

    __slots__ = ("_buf", "_skip", "drops", "max_size")

    def __init__(self, max_size: int, drops: dict[str, int] | None = None) -> None:
        if not 0 < max_size <= MAX_FRAME:
            raise ValueError(f"framing: max_size must be 1..{MAX_FRAME} (got {max_size})")
        self.max_size = max_size
        self.drops = drops if drops is not None else {}
        self._buf = bytearray()  # an incomplete frame carried over from the last feed
        self._skip = 0  # bytes still to discard of an oversize frame

    def reset(self) -> None:
        """Forget any partial frame (a new connection starts a new stream)."""
        self._buf.clear()
        self._skip = 0

    @property
    def pending(self) -> int:
        """Bytes buffered of an incomplete frame."""
        return len(self._buf)

    def _count(self, cause: str) -> None:
        self.drops[cause] = self.drops.get(cause, 0) + 1

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Consume ``data`` (any split of the stream) and return the completed packets."""
        out: list[bytes] = []
        src: bytes | bytearray | memoryview = data
        if self._skip:
            n = len(data)
            if n <= self._skip:
                self._skip -= n
                return out
            src = memoryview(data)[self._skip :]
            self._skip = 0
        buf = self._buf
        if buf:
            buf += src
            src = buf
        end = len(src)
        pos = 0
        maxs = self.max_size
        with memoryview(src) as mv:
            while end - pos >= 2:
                (n,) = _unpack_from(src, pos)
                start = pos + 2
                if n > end - start:
                    if n > maxs:  # skip what we have of it, then the rest as it arrives
                        self._count("oversize")
                        self._skip = n - (end - start)
                        pos = end
                    break
                pos = start + n
                if 0 < n <= maxs:
                    out.append(bytes(mv[start:pos]))
                else:
                    self._count("oversize" if n else "malformed")
        if src is buf:
            del buf[:pos]
        elif pos < end:
            buf += memoryview(src)[pos:]
        return out
