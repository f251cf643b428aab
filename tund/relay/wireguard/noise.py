"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses it (sans-IO, no clocks).

The generic pattern (any prologue and payloads, checked against the cacophony test
vector); :mod:`.codec` wraps the bodies in WireGuard's message headers. ``mode="tun"``
uses WireGuard's identifier as the prologue (interoperates with wireguard-go and the
kernel); ``mode="tap"`` uses :data:`TAP_IDENTIFIER`, so a tap peer and a tun peer never
complete a handshake (dropped as ``"decrypt"``). Errors:
:class:`~.primitives.DecryptError` when an encrypted field does not open or a DH yields
zero. The tokens and why tap has its own prologue: docs/design.md, "The handshake".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tund.keyformat import public_from_private
from tund.relay.wireguard.primitives import TAG_LEN, aead_decrypt, aead_encrypt, dh, hash_, kdf

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
TAP_IDENTIFIER = b"tund-tap v1 WireGuard v1 zx2c4 Jason@zx2c4.com"
ZERO_PSK = bytes(32)

Mode = Literal["tun", "tap"]


def prologue_for(mode: Mode) -> bytes:
    """The Noise prologue (WireGuard's IDENTIFIER) for a tunnel mode."""
    if mode == "tun":
        return IDENTIFIER
    if mode == "tap":
        return TAP_IDENTIFIER
    raise ValueError(f"noise: mode must be 'tun' or 'tap' (got {mode!r})")


class SymmetricState:
    """Noise's SymmetricState + CipherState: chaining key, handshake hash, current key."""

    __slots__ = ("chain", "hash", "key", "nonce")

    def __init__(self, protocol_name: bytes, prologue: bytes) -> None:
        h = hash_(protocol_name) if len(protocol_name) > 32 else protocol_name.ljust(32, b"\0")
        self.chain = h
        self.hash = h
        self.key: bytes | None = None
        self.nonce = 0
        self.mix_hash(prologue)

    def copy(self) -> SymmetricState:
        other = SymmetricState.__new__(SymmetricState)
        other.chain, other.hash = self.chain, self.hash
        other.key, other.nonce = self.key, self.nonce
        return other

    def mix_hash(self, data: bytes) -> None:
        self.hash = hash_(self.hash, data)

    def mix_key(self, ikm: bytes) -> None:
        self.chain, self.key = kdf(2, self.chain, ikm)
        self.nonce = 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.chain, temp_h, self.key = kdf(3, self.chain, ikm)
        self.mix_hash(temp_h)
        self.nonce = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.key is None:
            out = plaintext
        else:
            out = aead_encrypt(self.key, self.nonce, plaintext, self.hash)
            self.nonce += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.key is None:
            out = ciphertext
        else:
            out = aead_decrypt(self.key, self.nonce, ciphertext, self.hash)
            self.nonce += 1
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[bytes, bytes]:
        """(initiator->responder key, responder->initiator key)."""
        k1, k2 = kdf(2, self.chain, b"")
        return k1, k2


def initial_state(prologue: bytes, responder_static_pub: bytes) -> SymmetricState:
    """The state both sides start from: name, prologue and the responder's static key."""
    ss = SymmetricState(CONSTRUCTION, prologue)
    ss.mix_hash(responder_static_pub)
    return ss


@dataclass(frozen=True, slots=True)
class ReadInitiation:
    """What a responder learns from a first message."""

    peer_static: bytes
    peer_ephemeral: bytes
    payload: bytes


def write_initiation(ss: SymmetricState, s_priv: bytes, e_priv: bytes, rs_pub: bytes,
                     payload: bytes, *, static_static: bytes | None = None) -> bytes:
    """Tokens e, es, s, ss, payload; returns ``e.pub || enc(s.pub) || enc(payload)``.

    ``static_static`` may carry a precomputed DH(s, rs).
    """
    e_pub = public_from_private(e_priv)
    ss.mix_hash(e_pub)
    ss.mix_key(e_pub)
    ss.mix_key(dh(e_priv, rs_pub))
    enc_s = ss.encrypt_and_hash(public_from_private(s_priv))
    ss.mix_key(static_static if static_static is not None else dh(s_priv, rs_pub))
    return e_pub + enc_s + ss.encrypt_and_hash(payload)


def read_initiation(ss: SymmetricState, s_priv: bytes, body: bytes) -> ReadInitiation:
    """Responder side of :func:`write_initiation`; ``body`` as written there."""
    e_pub, enc_s, enc_payload = body[:32], body[32:32 + 32 + TAG_LEN], body[32 + 32 + TAG_LEN:]
    ss.mix_hash(e_pub)
    ss.mix_key(e_pub)
    ss.mix_key(dh(s_priv, e_pub))
    peer_static = ss.decrypt_and_hash(enc_s)
    ss.mix_key(dh(s_priv, peer_static))
    payload = ss.decrypt_and_hash(enc_payload)
    return ReadInitiation(peer_static, e_pub, payload)


def write_response(ss: SymmetricState, e_priv: bytes, re_pub: bytes, rs_pub: bytes,
                   psk: bytes, payload: bytes) -> bytes:
    """Tokens e, ee, se, psk, payload; returns ``e.pub || enc(payload)``."""
    e_pub = public_from_private(e_priv)
    ss.mix_hash(e_pub)
    ss.mix_key(e_pub)
    ss.mix_key(dh(e_priv, re_pub))
    ss.mix_key(dh(e_priv, rs_pub))
    ss.mix_key_and_hash(psk)
    return e_pub + ss.encrypt_and_hash(payload)


def read_response(ss: SymmetricState, e_priv: bytes, s_priv: bytes, psk: bytes,
                  body: bytes) -> bytes:
    """Initiator side of :func:`write_response`; returns the payload."""
    re_pub, enc_payload = body[:32], body[32:]
    ss.mix_hash(re_pub)
    ss.mix_key(re_pub)
    ss.mix_key(dh(e_priv, re_pub))
    ss.mix_key(dh(s_priv, re_pub))
    ss.mix_key_and_hash(psk)
    return ss.decrypt_and_hash(enc_payload)
