"""Enrolling clients (issue 18), the pure part: the next free address, the drop-in that
holds one peer, and the client's wg-quick config. Text in, text out; nothing here reads
or writes a file.

* :func:`next_free` the lowest host address of a prefix that nobody holds: not the
  interface's own addresses, not inside any peer's ``allowed_ips`` (enabled or not), not
  the network or (IPv4) broadcast address. A full prefix raises :class:`PrefixFull`.
* :func:`dropin_text` one ``[tunnels.T.peers.N]`` table, headed by :data:`MARKER` so that
  ``peer remove|enable|disable`` know tundctl wrote it.
* :func:`wg_quick` a client config in wg-quick format (``[Interface]`` and one ``[Peer]``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tund.config import PeerConfig

MARKER = "# made by tundctl peer add"
CLIENT_KEY_PLACEHOLDER = "(the client's own)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PrefixFull(ValueError):
    """No free host address is left in a prefix."""


def dropin_name(tunnel: str, peer: str) -> str:
    return f"{tunnel}-peer-{peer}.toml"


def taken_networks(own: Iterable[str], peers: Iterable[PeerConfig]) -> list[IPNetwork]:
    """What nobody else may get: the interface's addresses (as /32, /128) and every
    peer's ``allowed_ips``."""
    nets: list[IPNetwork] = [ipaddress.ip_network(ipaddress.ip_interface(a).ip)
                             for a in own]
    for p in peers:
        nets += [ipaddress.ip_network(n) for n in p.allowed_ips]
    return nets


def next_free(prefix: IPNetwork, taken: Sequence[IPNetwork], limit: int = 1 << 20) -> IPAddress:
    """The lowest usable host address of ``prefix`` inside none of ``taken``.

    Skips the network address and, for IPv4, the broadcast address (a /31 or /32 has
    neither); looks at the first ``limit`` addresses only (an IPv6 /64 is never searched
    to its end). Raises PrefixFull naming the prefix."""
    first, last = int(prefix.network_address), int(prefix.broadcast_address)
    if prefix.num_addresses > 2:
        first += 1
        if prefix.version == 4:
            last -= 1
    same = [n for n in taken if n.version == prefix.version and n.overlaps(prefix)]
    spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in same)
    cand = first
    for lo, hi in spans:  # jump over each taken span in address order
        if cand > last or cand - first >= limit:
            break
        if lo <= cand <= hi:
            cand = hi + 1
    if cand > last or cand - first >= limit:
        raise PrefixFull(f"no free address left in {prefix} (every host address is the "
                         "interface's own or a peer's); pass --address or widen the prefix")
    return ipaddress.ip_address(cand)


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def dropin_text(tunnel: str, peer: str, public_key: str, allowed_ips: Sequence[str],
                psk_file: str | None = None, enabled: bool = True) -> str:
    """The drop-in of one peer (``enabled`` written only when false)."""
    from tund.config import render_path

    lines = [f"{MARKER}; `tundctl peer remove {tunnel} {peer}` deletes it.",
             "# The client's private key is not kept on this host.",
             f"[{render_path(['tunnels', tunnel, 'peers', peer])}]",
             f"public_key = {_q(public_key)}",
             f"allowed_ips = {_list(allowed_ips)}"]
    if psk_file:
        lines.append(f"preshared_key_file = {_q(psk_file)}")
    if not enabled:
        lines.append("enabled = false")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ClientConfig:
    """What a client's wg-quick file holds."""

    private_key: str            # base64, or CLIENT_KEY_PLACEHOLDER
    addresses: Sequence[str]    # ADDRESS/PREFIXLEN
    server_public_key: str
    endpoint: str               # HOST:PORT
    allowed_ips: Sequence[str]
    dns: Sequence[str] = ()
    keepalive: int = 0
    preshared_key: str | None = None
    mtu: int | None = None
    name: str = ""


def wg_quick(c: ClientConfig) -> str:
    """The client's config in wg-quick format; ``wg-quick strip`` of it is ``wg setconf``
    input once ``PrivateKey`` holds a key."""
    lines = ["[Interface]"]
    if c.name:
        lines.append(f"# Name = {c.name}")
    lines.append(f"PrivateKey = {c.private_key}")
    lines.append(f"Address = {', '.join(c.addresses)}")
    if c.dns:
        lines.append(f"DNS = {', '.join(c.dns)}")
    if c.mtu:
        lines.append(f"MTU = {c.mtu}")
    lines += ["", "[Peer]", f"PublicKey = {c.server_public_key}"]
    if c.preshared_key:
        lines.append(f"PresharedKey = {c.preshared_key}")
    lines.append(f"Endpoint = {c.endpoint}")
    lines.append(f"AllowedIPs = {', '.join(c.allowed_ips)}")
    if c.keepalive:
        lines.append(f"PersistentKeepalive = {c.keepalive}")
    return "\n".join(lines) + "\n"


def endpoint_text(given: str, default_port: int) -> str:
    """``given`` as HOST:PORT: a bare host (or IPv6 address) gets ``default_port``.
    Raises ValueError saying what was expected."""
    from tund.config import parse_endpoint

    try:
        host, port = parse_endpoint(given, allow_hostname=True)
    except ValueError:
        bare = given[1:-1] if given.startswith("[") and given.endswith("]") else given
        text = f"[{bare}]:{default_port}" if ":" in bare else f"{bare}:{default_port}"
        host, port = parse_endpoint(text, allow_hostname=True)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
