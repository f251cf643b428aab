"""WireGuard key formats, shared by the control plane (key files, ``tundctl genkey``) and
the data path (the handshake): 32-byte X25519 keys, printed as ``wg`` prints them.

Pure apart from the OS RNG in :func:`random_private_key`; decoding errors are ValueError
naming what was decoded, never echoing the key.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_LEN = 32


def random_private_key() -> bytes:
    """32 random bytes clamped as X25519 private keys are (like ``wg genkey``)."""
    return clamp(os.urandom(KEY_LEN))


def clamp(raw: bytes) -> bytes:
    """Clamp a 32-byte X25519 scalar: clear bits 0-2 and 255, set bit 254."""
    k = bytearray(raw)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def public_from_private(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def decode_key(text: str, what: str) -> bytes:
    """Decode a base64 key as ``wg`` prints it (44 characters) into 32 bytes.

    Raise ValueError naming ``what`` and saying what is wrong (never echoing the key).
    """
    stripped = text.strip()
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64 ({len(stripped)} characters); "
                         "expected 44 characters as `wg genkey` prints") from None
    if len(raw) != KEY_LEN:
        raise ValueError(f"{what} decodes to {len(raw)} bytes (must be {KEY_LEN})")
    return raw


def encode_key(raw: bytes) -> str:
    """Base64 of a 32-byte key, as ``wg`` prints it."""
    return base64.b64encode(raw).decode("ascii")
