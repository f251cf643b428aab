"""``tundctl peer-config --format wg-quick`` (issue 18): configs in wg-quick format made
from a validated :class:`~tund.config.Config`. Pure: no key file is read here; secrets
tund holds only in files are placeholders naming the file, and each placeholder adds a
note for stderr.

* :func:`peer_client` the client of one peer of a tunnel with ``peers``
  (``PrivateKey = (the client's own)``).
* :func:`other_end` the other end of a single-peer tunnel.
* :func:`own` this host's side of a tunnel (what ``wg showconf`` would show, with the
  private key a placeholder): the form ``tundctl import`` reads back.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tund.config import Config, TunnelConfig
from tund.ctl.confout import PLACEHOLDER_HOST, mirror_address
from tund.ctl.enroll import CLIENT_KEY_PLACEHOLDER, endpoint_text


@dataclass
class Text:
    """A rendered config and the notes (for stderr) on what it leaves to the user."""

    text: str = ""
    notes: list[str] = field(default_factory=list)


def _section(title: str, pairs: list[tuple[str, str]]) -> list[str]:
    return [f"[{title}]", *(f"{k} = {v}" if k != "#" else f"# {v}" for k, v in pairs if v)]


def _peer(pairs: list[tuple[str, str]]) -> list[str]:
    return ["", *_section("Peer", pairs)]


def _in_file(what: str, path: str) -> str:
    return f"(the {what} in {path})"


def _server_endpoint(t: TunnelConfig, given: str | None, notes: list[str]) -> str:
    """Where the other end reaches this listener: ``given``, ``public_endpoint``, the
    listen address when it is not a wildcard, else a placeholder (noted)."""
    host, port = t.endpoint
    text = given or t.public_endpoint
    if text:
        return endpoint_text(text, port)
    if host not in ("0.0.0.0", "::") and port:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    notes.append("Endpoint is a placeholder: pass --endpoint HOST:PORT or set "
                 "public_endpoint")
    return f"{PLACEHOLDER_HOST}:{port or 51820}"


def _prefixes(cfg: Config, t: TunnelConfig) -> list[str]:
    return [str(ipaddress.ip_interface(a).network)
            for a in cfg.interfaces[t.interface].addresses]


def peer_client(cfg: Config, tunnel: str, peer: str, *, endpoint: str | None,
                server_public_key: str | None) -> Text:
    """The wg-quick config of the client ``peer`` of ``tunnel`` (KeyError if none)."""
    t = cfg.tunnels[tunnel]
    p = (t.peers or {})[peer]
    iface = cfg.interfaces[t.interface]
    res = Text(notes=["PrivateKey is left as (the client's own): tund does not hold it; "
                      "put the client's private key there"])
    nets = [ipaddress.ip_interface(a).network for a in iface.addresses]
    addresses = []
    for a in p.allowed_ips:
        n = ipaddress.ip_network(a)
        inside = next((x for x in nets if n.num_addresses == 1 and n.network_address in x),
                      None)
        addresses.append(f"{n.network_address}/{inside.prefixlen}" if inside else a)
    psk = ""
    if p.preshared_key_file:
        psk = _in_file("preshared key", p.preshared_key_file)
        res.notes.append(f"PresharedKey: copy the key in {p.preshared_key_file}")
    pub = server_public_key or "(this host's public key: tundctl pubkey < "\
        f"{t.private_key_file})"
    if not server_public_key:
        res.notes.append("PublicKey is a placeholder: this host's key file cannot be read")
    lines = _section("Interface", [("#", f"Name = {peer}"),
                                   ("PrivateKey", CLIENT_KEY_PLACEHOLDER),
                                   ("Address", ", ".join(addresses)),
                                   ("MTU", str(iface.mtu or ""))])
    lines += _peer([("PublicKey", pub), ("PresharedKey", psk),
                                      ("Endpoint", _server_endpoint(t, endpoint, res.notes)),
                                      ("AllowedIPs", ", ".join(_prefixes(cfg, t))),
                                      ("PersistentKeepalive", str(p.keepalive or ""))])
    res.text = "\n".join(lines) + "\n"
    return res


def other_end(cfg: Config, tunnel: str, *, endpoint: str | None,
              public_key: str | None) -> Text:
    """The other end of the single-peer ``tunnel`` in wg-quick format."""
    t = cfg.tunnels[tunnel]
    iface = cfg.interfaces[t.interface]
    res = Text(notes=["PrivateKey is left as (the client's own): put the other end's "
                      f"private key there (its public key must be {t.peer_public_key})"])
    taken = {ipaddress.ip_interface(a).ip for a in iface.addresses}
    mirrored = [mirror_address(a, taken, before=t.role == "remote") for a in iface.addresses]
    port = t.endpoint[1]
    listen_port = str(port) if t.role == "remote" else ""
    peer_endpoint = "" if t.role == "remote" else _server_endpoint(t, endpoint, res.notes)
    psk = _in_file("preshared key", t.preshared_key_file) if t.preshared_key_file else ""
    if psk:
        res.notes.append(f"PresharedKey: copy the key in {t.preshared_key_file}")
    pub = public_key or f"(this host's public key: tundctl pubkey < {t.private_key_file})"
    lines = _section("Interface", [("PrivateKey", CLIENT_KEY_PLACEHOLDER),
                                   ("ListenPort", listen_port),
                                   ("Address", ", ".join(mirrored)),
                                   ("MTU", str(iface.mtu or ""))])
    lines += _peer([("PublicKey", pub), ("PresharedKey", psk),
                                      ("Endpoint", peer_endpoint),
                                      ("AllowedIPs", ", ".join(_prefixes(cfg, t))),
                                      ("PersistentKeepalive", str(t.keepalive or ""))])
    res.text = "\n".join(lines) + "\n"
    return res


def own(cfg: Config, tunnel: str) -> Text:
    """This host's side of ``tunnel`` in wg-quick format (every peer, by name)."""
    t = cfg.tunnels[tunnel]
    iface = cfg.interfaces[t.interface]
    res = Text(notes=[f"PrivateKey is a placeholder naming {t.private_key_file}: "
                      "tund keeps it in that file"])
    port = t.endpoint[1]
    lines = _section("Interface", [
        ("PrivateKey", _in_file("private key", str(t.private_key_file))),
        ("ListenPort", str(port) if t.role == "listen" and port else ""),
        ("Address", ", ".join(iface.addresses)), ("MTU", str(iface.mtu or ""))])
    if t.peers is None and t.peer_public_key:  # the single-peer form: it takes everything
        lines += _peer([
            ("PublicKey", t.peer_public_key),
            ("PresharedKey", _in_file("preshared key", t.preshared_key_file)
             if t.preshared_key_file else ""),
            ("Endpoint", t.remote or ""), ("AllowedIPs", "0.0.0.0/0, ::/0"),
            ("PersistentKeepalive", str(t.keepalive or ""))])
    for name, p in (t.peers or {}).items():
        lines += _peer([
            ("#", f"Name = {name}"), ("PublicKey", p.public_key),
            ("PresharedKey", _in_file("preshared key", p.preshared_key_file)
             if p.preshared_key_file else ""),
            ("Endpoint", p.endpoint or ""), ("AllowedIPs", ", ".join(p.allowed_ips)),
            ("PersistentKeepalive", str(p.keepalive or ""))])
        if not p.enabled:
            res.notes.append(f"peer {name} is disabled in tund; wg-quick has no such key "
                             "(it is listed anyway)")
    res.text = "\n".join(lines) + "\n"
    return res
