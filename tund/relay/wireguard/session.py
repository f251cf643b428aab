"""Transport keypairs and their rotation (current / previous / next, like wireguard-go).

* The *initiator* of a handshake uses its new keypair at once: it becomes ``current``,
  the old current becomes ``previous`` (an unconfirmed ``next`` is moved to previous).
* The *responder* may not send on a new keypair until the initiator proved it has it
  (key confirmation), so it parks it in ``next``; the first message that opens with
  ``next`` rotates: previous <- current <- next (:meth:`Keypairs.received_with`).

Messages are accepted on any of the three (reordering across a rekey); only ``current``
sends. Counters and the replay window live in :class:`Keypair`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tund.relay.wireguard.primitives import AEAD_NONCE, DecryptError
from tund.relay.wireguard.replay import ReplayWindow

_nonce = AEAD_NONCE.pack


class Keypair:
    """One direction pair of transport keys with our/their receiver index.

    ``seal`` / ``open`` are the AEAD's own bound ``encrypt`` / ``decrypt`` (nonce,
    data, None), for the codec's per-packet paths; ``open`` raises InvalidTag.
    """

    __slots__ = ("created", "is_initiator", "local_index", "open", "remote_index", "replay",
                 "seal", "send_counter")

    def __init__(self, send_key: bytes, recv_key: bytes, local_index: int, remote_index: int,
                 created: float, is_initiator: bool) -> None:
        self.seal = ChaCha20Poly1305(send_key).encrypt
        self.open = ChaCha20Poly1305(recv_key).decrypt
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.is_initiator = is_initiator
        self.send_counter = 0
        self.replay = ReplayWindow()

    def encrypt(self, plaintext: bytes) -> tuple[int, bytes]:
        """Encrypt with the next send counter; returns (counter, ciphertext || tag)."""
        counter = self.send_counter
        self.send_counter += 1
        return counter, self.seal(_nonce(counter), plaintext, None)

    def decrypt(self, counter: int, ciphertext: bytes) -> bytes:
        """Open a transport payload; raise DecryptError on a bad tag. No replay check."""
        try:
            return self.open(_nonce(counter), ciphertext, None)
        except InvalidTag:
            raise DecryptError("transport tag mismatch") from None


class Keypairs:
    """current / previous / next; see the module docstring."""

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None

    def begin(self, keypair: Keypair) -> None:
        """Install a freshly derived keypair (its ``is_initiator`` decides where)."""
        if keypair.is_initiator:
            if self.next is not None:
                self.previous, self.next = self.next, None
            else:
                self.previous = self.current
            self.current = keypair
        else:
            self.next = keypair
            self.previous = None

    def lookup(self, local_index: int) -> Keypair | None:
        for kp in (self.current, self.next, self.previous):
            if kp is not None and kp.local_index == local_index:
                return kp
        return None

    def received_with(self, keypair: Keypair) -> bool:
        """Note that ``keypair`` opened a message; rotate if it was ``next`` (returns True)."""
        if keypair is not self.next:
            return False
        self.previous, self.current, self.next = self.current, keypair, None
        return True

    def indexes(self) -> set[int]:
        return {kp.local_index for kp in (self.current, self.next, self.previous) if kp}

    def clear(self) -> None:
        self.current = self.previous = self.next = None
