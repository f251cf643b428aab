"""Known answers for the WireGuard primitives and the Noise layer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tund.keyformat import public_from_private
from tund.relay.wireguard import noise
from tund.relay.wireguard.primitives import (
    DecryptError,
    aead_encrypt,
    hchacha20,
    hmac_,
    kdf,
    tai64n,
    xaead_decrypt,
    xaead_encrypt,
)

DATA = Path(__file__).parent / "data"


def test_hchacha20_matches_the_xchacha_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


def test_xchacha20poly1305_matches_the_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, appendix A.3.1
    pt = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
          b"for the future, sunscreen would be it.")
    ad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    expected = (
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa644"
        "0bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e"
        "3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49")
    sealed = xaead_encrypt(key, nonce, pt, ad)
    assert sealed.hex() == expected
    assert xaead_decrypt(key, nonce, sealed, ad) == pt
    with pytest.raises(DecryptError):
        xaead_decrypt(key, nonce, sealed, ad + b"x")


def _rfc2104(key: bytes, msg: bytes) -> bytes:
    """HMAC written out from RFC 2104 with BLAKE2s-256 (block 64), independent of `hmac`."""
    if len(key) > 64:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in key) + msg).digest()
    return hashlib.blake2s(bytes(b ^ 0x5C for b in key) + inner).digest()


@pytest.mark.parametrize("key,msg", [(b"", b""), (bytes(32), b"abc"), (b"k" * 100, b"m" * 300)])
def test_hmac_blake2s_is_rfc2104(key: bytes, msg: bytes) -> None:
    assert hmac_(key, msg) == _rfc2104(key, msg)


def test_kdf_chain_matches_its_definition() -> None:
    key, ikm = bytes(range(32)), b"input keying material"
    t0 = _rfc2104(key, ikm)
    t1 = _rfc2104(t0, b"\x01")
    t2 = _rfc2104(t0, t1 + b"\x02")
    t3 = _rfc2104(t0, t2 + b"\x03")
    assert kdf(1, key, ikm) == [t1]
    assert kdf(2, key, ikm) == [t1, t2]
    assert kdf(3, key, ikm) == [t1, t2, t3]


def test_tai64n_orders_like_time_and_whitens() -> None:
    a, b = tai64n(1_700_000_000.0), tai64n(1_700_000_000.1)
    assert len(a) == 12 and a < b
    assert tai64n(1_700_000_000.001) == a  # within one 2^24 ns whitening step
    assert a[:8] == (0x400000000000000A + 1_700_000_000).to_bytes(8, "big")


def test_initial_chain_key_and_hash_match_wireguard_definition() -> None:
    ss = noise.SymmetricState(noise.CONSTRUCTION, noise.IDENTIFIER)
    ck = hashlib.blake2s(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s").digest()
    assert ss.chain == ck
    assert ss.hash == hashlib.blake2s(ck + b"WireGuard v1 zx2c4 Jason@zx2c4.com").digest()


def test_cacophony_ikpsk2_vector() -> None:
    """Every ciphertext of the cacophony Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s vector.

    Also the handshake hash: the data file explains why its ``handshake_hash`` is the value
    cross-checked with snow rather than the one in an older copy of the vector file.
    """
    v = json.loads((DATA / "cacophony_IKpsk2_25519_ChaChaPoly_BLAKE2s.json").read_text())
    h = bytes.fromhex
    m = v["messages"]
    rs = public_from_private(h(v["resp_static"]))
    ini = noise.initial_state(h(v["init_prologue"]), rs)
    res = noise.initial_state(h(v["resp_prologue"]), rs)
    m0 = noise.write_initiation(ini, h(v["init_static"]), h(v["init_ephemeral"]), rs,
                                h(m[0]["payload"]))
    assert m0.hex() == m[0]["ciphertext"]
    got = noise.read_initiation(res, h(v["resp_static"]), m0)
    assert got.payload == h(m[0]["payload"])
    assert got.peer_static == public_from_private(h(v["init_static"]))
    m1 = noise.write_response(res, h(v["resp_ephemeral"]), got.peer_ephemeral, got.peer_static,
                              h(v["resp_psk"]), h(m[1]["payload"]))
    assert m1.hex() == m[1]["ciphertext"]
    assert noise.read_response(ini, h(v["init_ephemeral"]), h(v["init_static"]),
                               h(v["init_psk"]), m1) == h(m[1]["payload"])
    assert ini.hash == res.hash == h(v["handshake_hash"])
    k_i, k_r = ini.split()
    assert (k_i, k_r) == res.split()
    counters = [0, 0]
    for i, msg in enumerate(m[2:]):
        side = i % 2  # initiator, responder, initiator, ...
        sealed = aead_encrypt((k_i, k_r)[side], counters[side], h(msg["payload"]), b"")
        counters[side] += 1
        assert sealed.hex() == msg["ciphertext"], i + 2


def test_wrong_psk_fails_the_response() -> None:
    s_i, e_i, s_r, e_r = (bytes([n]) * 32 for n in (1, 2, 3, 4))
    rs = public_from_private(s_r)
    ini, res = noise.initial_state(b"p", rs), noise.initial_state(b"p", rs)
    got = noise.read_initiation(res, s_r, noise.write_initiation(ini, s_i, e_i, rs, b""))
    m1 = noise.write_response(res, e_r, got.peer_ephemeral, got.peer_static, bytes(32), b"")
    with pytest.raises(DecryptError):
        noise.read_response(ini, e_i, s_i, b"\x01" * 32, m1)
