"""The transport counter replay window (accepts what RFC 6479's ring would accept).

Contract: :meth:`ReplayWindow.check_and_set` returns True exactly once for each counter
below ``limit`` that is either newer than every counter seen or at most :data:`WINDOW`
behind the newest and not seen before; everything else returns False and changes
nothing. The window is 8128 counters, wireguard-go's ``(128 - 1) * 64`` (a 128-block
ring of 64-bit words with one block kept free), so reordering by up to 8128 packets is
tolerated, as with wireguard-go. Call it only *after* the message authenticated.

Implementation: RFC 6479's ring, as wireguard-go keeps it: a list of :data:`_BLOCKS`
64-bit words; counter ``c`` is bit ``c % 64`` of word ``(c // 64) % 128``. Moving the
newest counter into a new block clears the blocks entered (at most all 128). Every
counter within WINDOW of the newest lies in one of the 128 blocks ending at the newest's
block (``WINDOW = 127 * 64``), so none of them shares a word with another; an older one
is refused by the explicit ``newest - counter > WINDOW`` test before its word is read.
The in-order case costs a few small-integer operations (no big-integer shifts).
"""

from __future__ import annotations

WINDOW = (128 - 1) * 64
_BLOCKS = 128  # ring words; a power of two
_RING_MASK = _BLOCKS - 1


class ReplayWindow:
    __slots__ = ("_newest", "_ring")

    def __init__(self) -> None:
        self._newest = -1
        self._ring = [0] * _BLOCKS

    def check_and_set(self, counter: int, limit: int) -> bool:
        """Accept ``counter`` (record it) or reject it; see the module docstring."""
        if counter < 0 or counter >= limit:
            return False
        newest = self._newest
        ring = self._ring
        if counter > newest:
            block = counter >> 6
            last = newest >> 6  # -1 before the first counter
            if block != last:
                if block - last >= _BLOCKS:
                    ring[:] = [0] * _BLOCKS
                else:
                    for b in range(last + 1, block + 1):
                        ring[b & _RING_MASK] = 0
            self._newest = counter
            ring[block & _RING_MASK] |= 1 << (counter & 63)
            return True
        if newest - counter > WINDOW:
            return False
        i = (counter >> 6) & _RING_MASK
        bit = 1 << (counter & 63)
        word = ring[i]
        if word & bit:
            return False
        ring[i] = word | bit
        return True
