"""A tunnel's key material as read from its key files (WireGuard), kept apart from its config.

Contract: :func:`read_keys` reads the files a :class:`~tund.config.TunnelConfig` names (none
for a plaintext tunnel) and raises OSError or ValueError naming the file; the secrets go
into worker specs only, never into a log or a reply. :meth:`KeyMaterial.fingerprint` is
what :func:`tund.daemon.plan.diff` compares, so a rewritten key file restarts its tunnel.
"""

from __future__ import annotations

import hashlib

from tund.config import TunnelConfig


class KeyMaterial:
    """A tunnel's secrets as read from its key files (kept out of every log and reply)."""

    def __init__(self, private_key: str | None, peer_public_key: str | None,
                 preshared_key: str | None) -> None:
        self.private_key = private_key
        self.peer_public_key = peer_public_key
        self.preshared_key = preshared_key

    def fingerprint(self) -> str:
        h = hashlib.blake2s(digest_size=16)
        for part in (self.private_key, self.peer_public_key, self.preshared_key):
            h.update((part or "-").encode() + b"\0")
        return h.hexdigest()


def read_keys(t: TunnelConfig) -> KeyMaterial:
    """Read a tunnel's key files (wireguard) or nothing (plaintext). Raises ValueError."""
    if t.encryption == "none":
        return KeyMaterial(None, None, None)
    import base64

    from tund import keys

    assert t.private_key_file is not None
    priv = base64.b64encode(keys.load_private_key_file(t.private_key_file)).decode()
    psk = None
    if t.preshared_key_file:
        psk = base64.b64encode(keys.load_psk_file(t.preshared_key_file)).decode()
    return KeyMaterial(priv, t.peer_public_key, psk)
