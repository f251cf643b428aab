"""Configuration as text: the effective config (``tundctl config``) and the other end's
config (``tundctl peer-config``). Pure: a validated :class:`~tund.config.Config` in, TOML
text out; nothing here reads key files except through the ``public_key`` argument the
caller passes (so key contents can never reach the output).

* :func:`effective_toml` every section and key with its value after drop-ins are merged
  and defaults filled in, written with tomli-w. Keys whose value is unset (no default:
  ``mtu``, ``owner``, ``remote`` ...) are left out, since TOML has no null. The config holds
  no secrets (keys live in files; the file *paths* are shown, never their contents).
* :func:`peer_toml` what the peer of one tunnel needs, ready to paste: the same interface
  and tunnel names, ``listen`` and ``remote`` swapped, addresses mirrored into the same
  subnets, this end's public key as ``peer_public_key``. What cannot be known here is a
  placeholder that ``tundctl check`` refuses until it is filled in. A tunnel with
  ``peers`` is refused (ValueError) for now.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import tomli_w

from tund.config import Config, InterfaceConfig, TunnelConfig, render_path

PLACEHOLDER_HOST = "FILL_IN_THIS_HOSTS_ADDRESS"  # "_": not a valid host name, check refuses it


def _plain(value: Any) -> Any:
    """Model dump -> TOML-able: tuples to lists, None dropped (recursively)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# keys a tunnel with peers must not have (set per peer); their defaults are not shown
_SINGLE_PEER_KEYS = ("peer_public_key", "remote", "preshared_key_file", "keepalive")


def effective_toml(cfg: Config, sources: list[str]) -> str:
    """The effective configuration as TOML, with a comment naming the files it came from.

    A tunnel with ``peers`` shows them as ``[tunnels.T.peers.NAME]`` tables (drop-ins
    merged) and not the single-peer keys, so that the output is itself a valid config."""
    data = _plain(cfg.model_dump(mode="python"))
    for name, t in cfg.tunnels.items():
        if t.peers is not None:
            for key in _SINGLE_PEER_KEYS:
                data["tunnels"][name].pop(key, None)
    head = ["# tund effective configuration (drop-ins merged, defaults filled in;",
            "# keys without a value are not shown). Read from:"]
    head += [f"#   {s}" for s in sources]
    return "\n".join(head) + "\n\n" + tomli_w.dumps(data)


# --------------------------------------------------------------------------- peer config


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def mirror_address(address: str, taken: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
                   *, before: bool = False) -> str:
    """Another host address in the same subnet as ``address`` (``A/N``): the next free one
    after it (``before``: the free one before it), wrapping around, skipping network and
    broadcast addresses and ``taken``. A /31 (/127) gives the other address; a /32 (/128)
    the next (previous) address, same prefix.

    peer-config pairs the addresses so that the listening end has the lower one: run on
    the listener (``.1``) it proposes the next (``.2``), run on the connecting end
    (``.2``) the one before (``.1``), so each end's proposal is the other's address."""
    iface = ipaddress.ip_interface(address)
    net, ip = iface.network, iface.ip
    sign = -1 if before else 1
    if net.num_addresses == 1:
        return f"{ip + sign}/{net.prefixlen}"
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.num_addresses > 2 and net.version == 4:
        first, last = first + 1, last - 1  # no network / broadcast address
    elif net.num_addresses > 2:
        first += 1  # IPv6: the subnet-router anycast address
    size = last - first + 1
    for step in range(1, min(size, 65536) + 1):
        cand = ipaddress.ip_address(first + (int(ip) - first + sign * step) % size)
        if cand != ip and cand not in taken:
            return f"{cand}/{net.prefixlen}"
    raise ValueError(f"no free address left in {net} for the peer")


def _endpoint_lines(t: TunnelConfig, endpoint: str | None) -> list[str]:
    host, port = t.endpoint
    if t.role == "remote":  # we connect: the peer listens on the port we connect to
        wildcard = "[::]" if ":" in host else "0.0.0.0"
        return [f"listen = {_q(f'{wildcard}:{port}')}   # this host connects to {t.remote}"]
    if endpoint:
        addr = f"[{endpoint}]" if ":" in endpoint and not endpoint.startswith("[") else endpoint
        return [f"remote = {_q(f'{addr}:{port}')}"]
    if host not in ("0.0.0.0", "::"):
        addr = f"[{host}]" if ":" in host else host
        return [f"remote = {_q(f'{addr}:{port}')}"]
    return ["# FILL IN: the address (or name) the peer reaches this host at, "
            "or rerun with --endpoint HOST",
            f"remote = {_q(f'{PLACEHOLDER_HOST}:{port}')}"]


def _interface_lines(name: str, iface: InterfaceConfig, theirs_routes: tuple[str, ...],
                     *, we_connect: bool = False) -> list[str]:
    lines = [f"[{render_path(['interfaces', name])}]",
             f"mode = {_q(iface.mode)}"]
    if iface.mtu is not None:
        lines.append(f"mtu = {iface.mtu}")
    taken = {ipaddress.ip_interface(a).ip for a in iface.addresses}
    mirrored = []
    for a in iface.addresses:
        m = mirror_address(a, taken, before=we_connect)
        taken.add(ipaddress.ip_interface(m).ip)
        mirrored.append(m)
    if mirrored:
        lines.append(f"addresses = {_list(mirrored)}   # this host: {', '.join(iface.addresses)}")
    if theirs_routes:
        lines.append(f"# This host routes {', '.join(theirs_routes)} through the tunnel: "
                     "those networks should be")
        lines.append("# behind the peer. List here the networks behind this host, if any:")
    lines.append("#routes = []")
    if iface.mode == "tap":
        lines.append('#bridge = "br0"   # to join the peer\'s LAN: an existing bridge there')
    return lines


def peer_toml(cfg: Config, tunnel: str, *, endpoint: str | None = None,
              public_key: str | None = None, key_hint: str = "") -> str:
    """The config of the other end of ``tunnel`` (raises KeyError if there is none).

    ``endpoint``: the address or name the peer should connect to when this end listens on
    a wildcard address. ``public_key``: this end's public key (derived by the caller from
    ``private_key_file``); without it the output has a placeholder and ``key_hint`` says why.
    """
    t = cfg.tunnels[tunnel]
    if t.peers is not None:
        raise ValueError(f"tunnel {tunnel!r} has a peers table: the config of one of its "
                         "peers cannot be made yet (issue 18)")
    iface = cfg.interfaces[t.interface]
    lines = [f"# tund configuration for the other end of tunnel {tunnel!r},",
             "# made by `tundctl peer-config`. Fill in anything marked FILL IN, then run",
             "# `tundctl check` on it.", ""]
    lines += _interface_lines(t.interface, iface, iface.routes, we_connect=t.role == "remote")
    lines += ["", f"[{render_path(['tunnels', tunnel])}]", f"interface = {_q(t.interface)}",
              f"transport = {_q(t.transport)}"]
    lines += _endpoint_lines(t, endpoint)
    lines.append(f"encryption = {_q(t.encryption)}")
    if t.encryption == "wireguard":
        lines.append("# FILL IN: the peer's private key file; its public key must be "
                     f"{t.peer_public_key}")
        lines.append("# (this host's peer_public_key). For a new pair: tundctl genkey > FILE, "
                     "and put")
        lines.append("# `tundctl pubkey < FILE` as peer_public_key into this host's config.")
        lines.append(f"private_key_file = {_q(f'/etc/tund/keys/{tunnel}.key')}")
        if public_key:
            lines.append(f"peer_public_key = {_q(public_key)}   # this host's public key")
        else:
            why = f" ({key_hint})" if key_hint else ""
            lines.append(f"# FILL IN: this host's public key{why}: "
                         "tundctl pubkey < " + str(t.private_key_file))
            lines.append('peer_public_key = "FILL_IN_THIS_HOSTS_PUBLIC_KEY"')
        if t.preshared_key_file:
            lines.append(f"# the same preshared key on both ends: copy {t.preshared_key_file}")
            lines.append(f"preshared_key_file = {_q(t.preshared_key_file)}")
    if t.keepalive:
        lines.append(f"keepalive = {t.keepalive}")
    if t.role == "listen" and t.transport == "tcp":
        lines.append(f"#reconnect_min = {t.reconnect_min}")
        lines.append(f"#reconnect_max = {t.reconnect_max}")
    return "\n".join(lines) + "\n"
