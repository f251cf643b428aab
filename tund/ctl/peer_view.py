"""A peer's block in ``tundctl status``: ``  peer: NAME`` and its fields indented under it
(like ``wg show``'s peer), the blocks of all of a tunnel's peers, and ``status TUNNEL PEER``
(one peer alone; :class:`NoSuchPeer` when the tunnel has none so named)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tund.ctl.paint import BOLD, DIM, GREEN, YELLOW, Painter
from tund.ctl.units import ago, count, drops_text, human_bytes, human_duration, is_num, mapping


class NoSuchPeer(KeyError):
    """``status TUNNEL PEER`` of a peer the tunnel does not have; str() says which it has."""

    def __init__(self, tunnel: str, peer: str, known: list[str]) -> None:
        super().__init__(peer)
        self.text = (f"tunnel {tunnel} has no peer named {peer!r} "
                     f"(peers: {', '.join(known) or 'none'})")

    def __str__(self) -> str:
        return self.text


def _traffic(rx: Any, tx: Any) -> str:
    return f"{human_bytes(count(rx))} received, {human_bytes(count(tx))} sent"


def peer_block(name: str, peer: Mapping[str, Any], p: Painter, now: float) -> list[str]:
    """``  peer: NAME`` and its fields indented under it; a missing key drops its line."""
    lines = [f"  {p.header('peer', name)}"]

    def add(key: str, value: Any) -> None:
        if value is not None and value != "":
            lines.append("  " + p.field(key, str(value)))

    add("public key", peer.get("public_key"))
    add("endpoint", peer.get("endpoint") or "(none)")
    ips = peer.get("allowed_ips")
    if isinstance(ips, list):
        add("allowed ips", ", ".join(str(x) for x in ips) or "(none)")
    handshake = peer.get("latest_handshake")
    add("latest handshake", ago(float(handshake), now)
        if isinstance(handshake, int | float) and handshake > 0 else "(none yet)")
    add("transfer", _traffic(peer.get("rx_bytes"), peer.get("tx_bytes")))
    add("packets", f"{count(peer.get('rx_packets'))} received, "
                   f"{count(peer.get('tx_packets'))} sent")
    life = peer.get("lifetime")
    if isinstance(life, Mapping) and life:  # over worker and daemon restarts
        add("lifetime", _traffic(life.get("rx_bytes"), life.get("tx_bytes")))
    if is_num(peer.get("keepalive")) and peer["keepalive"] > 0:
        add("persistent keepalive", f"every {human_duration(peer['keepalive'])}")
    state = str(peer.get("state") or "unknown")
    colour = {"active": GREEN, "idle": YELLOW, "never": DIM}.get(state, "")
    add("state", p.paint(colour, state) + ("" if peer.get("enabled", True) else " (disabled)"))
    add("drops", drops_text(peer.get("drops")))
    return lines


def peer_blocks(t: Mapping[str, Any], p: Painter, now: float) -> list[str]:
    """The blocks of tunnel ``t``'s peers in name order, each after an empty line."""
    peers = mapping(t.get("peers"))
    out: list[str] = []
    for name in sorted(peers):
        out += ["", *peer_block(name, mapping(peers[name]), p, now)]
    return out


def render_peer(tunnels: Mapping[str, Mapping[str, Any]], tunnel: str, peer: str,
                p: Painter, now: float) -> str:
    """``peer: NAME``, ``tunnel: NAME``, then the peer's fields. KeyError for an unknown
    ``tunnel``, :class:`NoSuchPeer` for a peer it does not have."""
    if tunnel not in tunnels:
        raise KeyError(tunnel)
    peers = mapping(tunnels[tunnel].get("peers"))
    if peer not in peers:
        raise NoSuchPeer(tunnel, peer, sorted(peers))
    block = peer_block(peer, mapping(peers[peer]), p, now)
    return "\n".join([block[0].strip(), f"    {p.paint(BOLD, 'tunnel:')} {tunnel}", *block[1:]])
