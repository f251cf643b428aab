"""WireGuard keys: generation, decoding, and safe loading of key files.

Formats are ``wg``'s: a private key is 32 random bytes clamped for X25519, printed as
44-character base64 (``wg genkey``); :func:`public_key` is ``wg pubkey``;
:func:`generate_psk` is ``wg genpsk`` (32 random bytes, unclamped).

Key files (:func:`load_private_key_file`, :func:`load_psk_file`) must be regular files
of mode 0600 or stricter (no group/other bits) owned by root or the user running tund,
and hold one base64 key. Every refusal is a ValueError naming the file and the reason,
e.g. ``/etc/tund/a.key: mode 0644 lets group/others read it; chmod 600 /etc/tund/a.key``.

:func:`check_tunnel_keys` is the config check of key material; ``tund.config`` registers it
(this module does not import config, so the two form no circle).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from tund.errors import ConfigIssue
from tund.keyformat import (
    decode_key,
    encode_key,
    public_from_private,
    random_private_key,
)

__all__ = ["check_tunnel_keys", "decode_key", "generate_private_key", "generate_psk",
           "load_private_key_file", "load_psk_file", "public_key"]

_MAX_KEY_FILE = 4096


def generate_private_key() -> str:
    """A new private key, base64, like ``wg genkey``."""
    return encode_key(random_private_key())


def public_key(private_b64: str) -> str:
    """The public key of a base64 private key, like ``wg pubkey``."""
    return encode_key(public_from_private(decode_key(private_b64, "private key")))


def generate_psk() -> str:
    """A new preshared key, base64, like ``wg genpsk``."""
    return encode_key(os.urandom(32))


def _load_key_file(path: str, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise ValueError(f"{path}: cannot open {what}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: {what} must be a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ValueError(f"{path}: mode {mode:04o} lets group/others read it; "
                             f"chmod 600 {path}")
        euid = os.geteuid()
        if st.st_uid not in (0, euid):
            raise ValueError(f"{path}: owned by uid {st.st_uid}, not by root or the user "
                             f"running tund (uid {euid}); chown it")
        data = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise ValueError(f"{path}: too large for a {what} file (one base64 key expected)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {what} file is not ASCII base64") from None
    try:
        return decode_key(text, f"{path}: {what}")
    except ValueError as e:
        raise ValueError(str(e)) from None


def load_private_key_file(path: str) -> bytes:
    """Read a private key file (see the module docstring); 32 bytes or ValueError."""
    return _load_key_file(path, "private key")


def load_psk_file(path: str) -> bytes:
    """Read a preshared key file (see the module docstring); 32 bytes or ValueError."""
    return _load_key_file(path, "preshared key")


IssueFactory = Callable[[tuple[str | int, ...], str], ConfigIssue]


def check_tunnel_keys(raw: Mapping[str, Any], issue: IssueFactory) -> list[ConfigIssue]:
    """Config hook: key material of every tunnel with ``encryption = "wireguard"``.

    Checks ``private_key_file`` (readable, mode, owner, a 32-byte key),
    ``peer_public_key`` (base64 of 32 bytes, not our own public key) and
    ``preshared_key_file`` when given, and the same of every peer of a ``peers`` table
    (plus: no public key shared by two enabled peers). Missing keys are reported by config
    itself.
    """
    issues: list[ConfigIssue] = []
    tunnels = raw.get("tunnels")
    if not isinstance(tunnels, Mapping):
        return issues
    for name, body in tunnels.items():
        if not isinstance(body, Mapping) or body.get("encryption", "wireguard") != "wireguard":
            continue
        own: bytes | None = None
        priv = body.get("private_key_file")
        if isinstance(priv, str):
            try:
                own = public_from_private(load_private_key_file(priv))
            except ValueError as e:
                issues.append(issue(("tunnels", name, "private_key_file"), str(e)))
        peer = body.get("peer_public_key")
        if isinstance(peer, str):
            try:
                if decode_key(peer, "peer_public_key") == own:
                    issues.append(issue(("tunnels", name, "peer_public_key"),
                                        "is this tunnel's own public key (from "
                                        "private_key_file); it must be the peer's"))
            except ValueError as e:
                issues.append(issue(("tunnels", name, "peer_public_key"), str(e)))
        psk = body.get("preshared_key_file")
        if isinstance(psk, str):
            try:
                load_psk_file(psk)
            except ValueError as e:
                issues.append(issue(("tunnels", name, "preshared_key_file"), str(e)))
        peers = body.get("peers")
        if isinstance(peers, Mapping):
            issues.extend(_check_peer_keys(str(name), peers, own, issue))
    return issues


def _check_peer_keys(tunnel: str, peers: Mapping[str, Any], own: bytes | None,
                     issue: IssueFactory) -> list[ConfigIssue]:
    """Each peer's ``public_key`` (base64 of 32 bytes, not ours, not another enabled peer's)
    and ``preshared_key_file`` (as the tunnel's). Keys compare decoded, not as text."""
    issues: list[ConfigIssue] = []
    owners: dict[bytes, str] = {}
    for peer, body in peers.items():
        if not isinstance(body, Mapping):
            continue
        where = ("tunnels", tunnel, "peers", str(peer))
        key = body.get("public_key")
        if isinstance(key, str):
            try:
                raw = decode_key(key, "public_key")
            except ValueError as e:
                issues.append(issue((*where, "public_key"), str(e)))
            else:
                if raw == own:
                    issues.append(issue((*where, "public_key"),
                                        "is this tunnel's own public key (from "
                                        "private_key_file); it must be the peer's"))
                elif body.get("enabled", True) is not False:
                    if raw in owners:
                        issues.append(issue((*where, "public_key"),
                                            f"is also the public key of peer "
                                            f"\"{owners[raw]}\" of this tunnel: each peer "
                                            f"needs its own key pair (got \"{key}\")"))
                    else:
                        owners[raw] = str(peer)
        psk = body.get("preshared_key_file")
        if isinstance(psk, str):
            try:
                load_psk_file(psk)
            except ValueError as e:
                issues.append(issue((*where, "preshared_key_file"), str(e)))
    return issues

