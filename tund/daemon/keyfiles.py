"""A tunnel's key material as read from its key files (WireGuard), kept apart from its config.

Contract: :func:`read_keys` reads the files a :class:`~tund.config.TunnelConfig` names (none
for a plaintext tunnel) and raises OSError or ValueError naming the file; the secrets go
into worker specs only, never into a log or a reply. :meth:`KeyMaterial.fingerprint` is
what :func:`tund.daemon.plan.diff` compares, so a rewritten key file restarts its tunnel;
the preshared keys of a ``peers`` table are fingerprinted per peer
(:meth:`KeyMaterial.peer_fingerprints`): a rewritten PSK file changes only its peer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from tund.config import TunnelConfig


class KeyMaterial:
    """A tunnel's secrets as read from its key files (kept out of every log and reply)."""

    def __init__(self, private_key: str | None, peer_public_key: str | None,
                 preshared_key: str | None,
                 peer_preshared_keys: Mapping[str, str | None] | None = None) -> None:
        self.private_key = private_key
        self.peer_public_key = peer_public_key
        self.preshared_key = preshared_key
        #: peer name -> its preshared key (base64) or None, for a tunnel with ``peers``
        self.peer_preshared_keys = dict(peer_preshared_keys or {})

    def fingerprint(self) -> str:
        """The tunnel's own key material (not its peers' PSKs: :meth:`peer_fingerprints`)."""
        return _digest(self.private_key, self.peer_public_key, self.preshared_key)

    def peer_fingerprints(self) -> dict[str, str]:
        """Peer name -> a fingerprint of that peer's preshared key (or of its absence)."""
        return {name: _digest(psk) for name, psk in self.peer_preshared_keys.items()}


def _digest(*parts: str | None) -> str:
    h = hashlib.blake2s(digest_size=16)
    for part in parts:
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

    def psk(path: str | None) -> str | None:
        return base64.b64encode(keys.load_psk_file(path)).decode() if path else None

    peers = {name: psk(p.preshared_key_file) for name, p in (t.peers or {}).items()}
    return KeyMaterial(priv, t.peer_public_key, psk(t.preshared_key_file), peers)
