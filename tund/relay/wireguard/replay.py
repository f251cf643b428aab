"""The transport counter replay window (accepts what RFC 6479's ring would accept).

Contract: :meth:`ReplayWindow.check_and_set` returns True exactly once for each counter
below ``limit`` that is either newer than every counter seen or at most :data:`WINDOW`
behind the newest and not seen before; everything else returns False and changes
nothing. The window is 8128 counters, wireguard-go's ``(128 - 1) * 64`` (a 128-block
ring of 64-bit words with one block kept free), so reordering by up to 8128 packets is
tolerated, as with wireguard-go. Call it only *after* the message authenticated.

Implementation: a Python int as the bitmap, bit ``i`` = "counter ``newest - i`` seen".
"""

from __future__ import annotations

WINDOW = (128 - 1) * 64
_MASK = (1 << (WINDOW + 1)) - 1


class ReplayWindow:
    __slots__ = ("_bits", "_newest")

    def __init__(self) -> None:
        self._newest = -1
        self._bits = 0

    def check_and_set(self, counter: int, limit: int) -> bool:
        """Accept ``counter`` (record it) or reject it; see the module docstring."""
        if counter < 0 or counter >= limit:
            return False
        if counter > self._newest:
            shift = counter - self._newest
            self._bits = ((self._bits << shift) | 1) & _MASK if shift <= WINDOW else 1
            self._newest = counter
            return True
        back = self._newest - counter
        if back > WINDOW or (self._bits >> back) & 1:
            return False
        self._bits |= 1 << back
        return True
