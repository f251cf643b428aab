"""The cryptographic primitives of WireGuard, as thin wrappers over ``cryptography``/hashlib.

Nothing here is home-made cryptography: BLAKE2s comes from :mod:`hashlib`, HMAC from
:mod:`hmac` (RFC 2104 over BLAKE2s-256, block size 64), X25519 and ChaCha20-Poly1305
from ``cryptography``. The one construction assembled here is XChaCha20-Poly1305
(needed only for cookie replies), built as draft-irtf-cfrg-xchacha specifies:

    subkey = HChaCha20(key, nonce[0:16])
    XAEAD(key, nonce, m, ad) = ChaCha20-Poly1305(subkey, 0^32 || nonce[16:24], m, ad)

HChaCha20 is the ChaCha20 block function *without* the final feed-forward addition,
keeping words 0..3 and 12..15. ``cryptography`` exposes only the keystream, i.e.
``block = rounds(state) + state`` word-wise mod 2^32; since every input word (constants,
key, the 16-byte counter||nonce) is known, ``rounds(state) = block - state`` word-wise.
:func:`hchacha20` does exactly that and is checked against the draft's test vector.

Contract: every function is pure (no clock, no global state apart from the OS RNG in
:func:`random_private_key`); AEAD failures raise :class:`DecryptError`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

TAG_LEN = 16
MAC_LEN = 16
TIMESTAMP_LEN = 12

_SIGMA = b"expand 32-byte k"
_WORDS16 = struct.Struct("<16I")
#: ``AEAD_NONCE.pack(counter)`` is :func:`aead_nonce` in one C call (the per-packet form).
AEAD_NONCE = struct.Struct("<4xQ")
_TAI64_BASE = 0x400000000000000A  # TAI64 label of 1970-01-01 00:00:10 TAI (= 00:00:00 UTC)
_WHITEN = 0xFFFFFF  # nanoseconds rounded down to 2^24 ns, like wireguard-go, to blur clocks


class DecryptError(Exception):
    """An AEAD tag did not verify (wrong key, wrong associated data, or tampering)."""


def hash_(*parts: bytes) -> bytes:
    """HASH: BLAKE2s-256 of the concatenation of ``parts``."""
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC: keyed BLAKE2s with a 16-byte output (key 16 or 32 bytes)."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """HMAC: RFC 2104 HMAC over BLAKE2s-256."""
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf(n: int, key: bytes, data: bytes) -> list[bytes]:
    """KDF_n: HKDF-style chain, ``t0 = HMAC(key, data)``, ``t_i = HMAC(t0, t_{i-1} || i)``."""
    t0 = hmac_(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac_(t0, prev + bytes([i]))
        out.append(prev)
    return out


def aead_nonce(counter: int) -> bytes:
    """The 96-bit ChaCha20-Poly1305 nonce for a 64-bit counter: 32 zero bits || LE64."""
    return AEAD_NONCE.pack(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD: ChaCha20-Poly1305 with :func:`aead_nonce`; returns ciphertext || tag."""
    return ChaCha20Poly1305(key).encrypt(aead_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`; raise DecryptError when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise DecryptError("AEAD tag mismatch") from None


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20(key, 16-byte input) -> 32-byte subkey (see the module docstring)."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError(f"hchacha20: need a 32-byte key and 16-byte input "
                         f"(got {len(key)} and {len(nonce16)})")
    enc = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    block = _WORDS16.unpack(enc.update(bytes(64)))
    state = _WORDS16.unpack(_SIGMA + key + nonce16)
    rounds = [(b - s) & 0xFFFFFFFF for b, s in zip(block, state, strict=True)]
    return struct.pack("<8I", *rounds[0:4], *rounds[12:16])


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XAEAD: XChaCha20-Poly1305 (24-byte nonce); returns ciphertext || tag."""
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\x00" * 4 + nonce24[16:24], plaintext, ad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`xaead_encrypt`; raise DecryptError when the tag does not verify."""
    sub = hchacha20(key, nonce24[:16])
    try:
        return ChaCha20Poly1305(sub).decrypt(b"\x00" * 4 + nonce24[16:24], ciphertext, ad)
    except InvalidTag:
        raise DecryptError("XAEAD tag mismatch") from None








def dh(private: bytes, public: bytes) -> bytes:
    """X25519(private, public); raise DecryptError on a low-order (all-zero) result."""
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise DecryptError("X25519 produced the all-zero shared secret") from None


def tai64n(wall: float) -> bytes:
    """TAI64N label (12 bytes, big-endian, so byte order = time order) of a unix time."""
    ns = time_ns(wall)
    secs, nanos = divmod(ns, 1_000_000_000)
    return struct.pack(">QI", _TAI64_BASE + secs, nanos & ~_WHITEN)


def time_ns(wall: float) -> int:
    """``wall`` (unix seconds, float) in integer nanoseconds."""
    return round(wall * 1_000_000_000)



