"""Reading wg-quick (and ``wg showconf``) files for ``tundctl import`` (issue 18). Pure:
text in, a :class:`WgFile` or :class:`WgSyntaxError` out.

Contract: sections and keys are case-insensitive as in wg(8) and wg-quick(8); ``#`` starts
a comment, except that ``# Name = X`` inside a ``[Peer]`` names that peer. ``Address``,
``AllowedIPs`` and ``DNS`` may repeat (their lists join); any other key given twice in one
section, an unknown section or key, a key outside a section, a line without ``=`` and
every bad value are errors ``FILE:LINE: message`` (all of them, in line order). Keys tund
does not import (hooks, DNS, Table, FwMark: each with what to set by hand; SaveConfig) are
kept in ``unexpressible``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field

INTERFACE_KEYS = ("privatekey", "listenport", "fwmark", "address", "dns", "mtu", "table",
                  "preup", "postup", "predown", "postdown", "saveconfig")
PEER_KEYS = ("publickey", "presharedkey", "allowedips", "endpoint", "persistentkeepalive")
LISTS = ("address", "allowedips", "dns")
UNEXPRESSIBLE = {
    "preup": "a hook: not imported; set [interfaces.X] pre_up = [[\"PROGRAM\", \"ARG\"]] "
             "(argv lists, %i is the interface)",
    "postup": "a hook: not imported; set [interfaces.X] post_up = [[...]] (argv lists)",
    "predown": "a hook: not imported; set [interfaces.X] pre_down = [[...]] (argv lists)",
    "postdown": "a hook: not imported; set [interfaces.X] post_down = [[...]] (argv lists)",
    "dns": "not imported; set [interfaces.X] dns = [...] (resolvectl or resolvconf)",
    "table": 'not imported; set [interfaces.X] table = "auto", "off" or a number',
    "fwmark": "not imported; set [tunnels.X] fwmark = N (a default route in allowed_ips "
              "marks the socket with 51820 by itself)",
    "saveconfig": "tund's files are the configuration; change peers with tundctl peer",
}
_NAME_RE = re.compile(r"^#\s*name\s*=\s*(.+?)\s*$", re.I)


@dataclass
class WgPeer:
    line: int
    name: str | None = None
    public_key: str | None = None
    preshared_key: str | None = None
    allowed_ips: list[str] = field(default_factory=list)
    endpoint: str | None = None
    keepalive: int = 0


@dataclass
class WgFile:
    private_key: str | None = None
    listen_port: int | None = None
    addresses: list[str] = field(default_factory=list)
    mtu: int | None = None
    peers: list[WgPeer] = field(default_factory=list)
    unexpressible: list[tuple[int, str, str]] = field(default_factory=list)  # line, Key, value
    notes: list[str] = field(default_factory=list)


class WgSyntaxError(ValueError):
    """Every problem of a file, each ``FILE:LINE: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _key(value: str, what: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or len(value) != 44:
        raise ValueError(f"{what} must be 44 characters of base64 (32 bytes)")
    return value


def _int(value: str, lo: int, hi: int, what: str) -> int:
    if not (value.isascii() and value.isdigit()) or not lo <= int(value) <= hi:
        raise ValueError(f"{what} must be a number from {lo} to {hi}")
    return int(value)


def _address(value: str) -> str:
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError("is not an IP address (with an optional /PREFIXLEN)") from None
    return str(iface) if "/" in value else f"{iface.ip}/{iface.ip.max_prefixlen}"


def _network(value: str, notes: list[str], line: int) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("is not an IP network (NETWORK/PREFIXLEN)") from None
    if "/" in value and ipaddress.ip_interface(value).ip != net.network_address:
        notes.append(f"line {line}: AllowedIPs {value} has host bits set; imported as {net} "
                     "(as wg does)")
    return str(net)


def _endpoint(value: str) -> str:
    from tund.config import parse_endpoint

    parse_endpoint(value, allow_hostname=True)
    return value


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# Size: one pass over the lines with the section state in locals; each branch is one
# rule, and split up the state would have to travel between the parts.
def parse(name: str, text: str) -> WgFile:
    """Parse wg-quick ``text`` (file ``name``, for messages); raise WgSyntaxError."""
    out = WgFile()
    problems: list[str] = []
    section: str | None = None
    seen: set[str] = set()
    have_interface = False
    peer: WgPeer | None = None
    for no, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if peer is not None and (m := _NAME_RE.match(line)) and peer.name is None:
            peer.name = m.group(1)
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{name}:{no}"
        if line.startswith("["):
            title = line.lower()
            if title == "[interface]":
                if have_interface:
                    problems.append(f"{where}: a second [Interface] section")
                section, seen, have_interface, peer = "interface", set(), True, None
            elif title == "[peer]":
                section, seen = "peer", set()
                peer = WgPeer(no)
                out.peers.append(peer)
            else:
                problems.append(f"{where}: unknown section {line!r} (expected [Interface] "
                                "or [Peer])")
                section, peer = "unknown", None
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            problems.append(f"{where}: Line unrecognized: {raw.strip()!r} (expected Key = Value)")
            continue
        lkey = key.lower()
        if section is None:
            problems.append(f"{where}: {key} before any [Interface] or [Peer] section")
            continue
        if section == "unknown":
            continue
        allowed = INTERFACE_KEYS if section == "interface" else PEER_KEYS
        if lkey not in allowed:
            title = "Interface" if section == "interface" else "Peer"
            problems.append(f"{where}: unknown key {key!r} in [{title}]")
            continue
        if lkey in seen and lkey not in LISTS:
            problems.append(f"{where}: {key} given twice in one section")
            continue
        seen.add(lkey)
        if value == "" and lkey not in ("dns",):
            problems.append(f"{where}: {key} has no value")
            continue
        try:
            _apply(out, peer, lkey, key, value, no)
        except ValueError as e:
            problems.append(f"{where}: {key} = {value!r}: {e}")
    _check_whole(name, out, problems)
    if problems:
        raise WgSyntaxError(problems)
    return out


def _apply(out: WgFile, peer: WgPeer | None, lkey: str, key: str, value: str,
           no: int) -> None:
    if lkey in UNEXPRESSIBLE:
        out.unexpressible.append((no, key, value))
    elif lkey == "privatekey":
        out.private_key = _key(value, "PrivateKey")
    elif lkey == "listenport":
        out.listen_port = _int(value, 0, 65535, "ListenPort")
    elif lkey == "address":
        out.addresses += [_address(a) for a in _split(value)]
    elif lkey == "mtu":
        out.mtu = _int(value, 68, 65535, "MTU")
    assert peer is not None or lkey in INTERFACE_KEYS
    if peer is None:
        return
    if lkey == "publickey":
        peer.public_key = _key(value, "PublicKey")
    elif lkey == "presharedkey":
        peer.preshared_key = _key(value, "PresharedKey")
    elif lkey == "allowedips":
        peer.allowed_ips += [_network(a, out.notes, no) for a in _split(value)]
    elif lkey == "endpoint":
        peer.endpoint = _endpoint(value)
    elif lkey == "persistentkeepalive":
        peer.keepalive = 0 if value == "off" else _int(value, 0, 65535, "PersistentKeepalive")


def _check_whole(name: str, out: WgFile, problems: list[str]) -> None:
    if out.private_key is None and not problems:
        problems.append(f"{name}:1: no [Interface] with a PrivateKey")
    keys: dict[str, int] = {}
    for p in out.peers:
        if p.public_key is None:
            problems.append(f"{name}:{p.line}: [Peer] without a PublicKey")
        elif p.public_key in keys:
            problems.append(f"{name}:{p.line}: [Peer] with the PublicKey of the [Peer] of "
                            f"line {keys[p.public_key]}")
        else:
            keys[p.public_key] = p.line
