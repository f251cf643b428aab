"""``tundctl status`` for people: a daemon block, one block per tunnel (``tunnel: NAME``
then indented ``key: value`` lines, then its peers' blocks from :mod:`~tund.ctl.peer_view`),
then one short line per interface. Rendered as far as it goes: a missing key drops its
line, it never raises (except for an unknown tunnel or peer asked for by name)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from tund.ctl.paint import BOLD, GREEN, RED, YELLOW, Painter
from tund.ctl.peer_view import peer_blocks, render_peer
from tund.ctl.units import ago, drops_text, elapsed, human_bytes, is_num, mapping


def _daemon_block(d: Mapping[str, Any], p: Painter, now: float) -> list[str]:
    version = d.get("version")
    lines = [p.header("daemon", f"tund {version}" if version else "tund")]
    if d.get("pid") is not None:
        lines.append(p.field("pid", str(d["pid"])))
    if d.get("config"):
        lines.append(p.field("config", str(d["config"])))
    if is_num(d.get("started")):
        lines.append(p.field("started", elapsed(d["started"], now)))
    reloads = d.get("reloads")
    last = d.get("last_reload")
    if reloads is not None or isinstance(last, Mapping):
        text = str(reloads if reloads is not None else "?")
        if isinstance(last, Mapping):
            outcome = "ok" if last.get("ok") else "failed"
            when = f" {ago(last['time'], now)}" if is_num(last.get("time")) else ""
            msg = f": {last['message']}" if last.get("message") else ""
            text += f" (last{when}: {outcome}{msg})"
        lines.append(p.field("reloads", text))
    return lines


def _transport_text(t: Mapping[str, Any]) -> str | None:
    parts = [str(t["transport"])] if t.get("transport") else []
    role, endpoint = t.get("role"), t.get("endpoint")
    if role and endpoint:
        parts.append(f"{role} {endpoint}")
    elif role or endpoint:
        parts.append(str(role or endpoint))
    return ", ".join(parts) or None


def _session_text(session: Any) -> str:
    if isinstance(session, Mapping):
        return ", ".join(f"{k} {v}" for k, v in session.items()) or "(none)"
    return str(session)


def _tunnel_block(name: str, t: Mapping[str, Any], p: Painter, now: float) -> list[str]:
    lines = [p.header("tunnel", name)]

    def add(key: str, value: Any) -> None:
        if value is not None and value != "":
            lines.append(p.field(key, str(value)))

    add("interface", t.get("interface"))
    state = str(t.get("state") or "unknown")
    since = f" (since {elapsed(t['since'], now)})" if is_num(t.get("since")) else ""
    add("state", p.state(state) + since)
    add("transport", _transport_text(t))
    add("encryption", t.get("encryption"))
    add("peer", t.get("peer"))
    add("peer public key", t.get("peer_public_key"))
    if is_num(t.get("latest_handshake")) and t["latest_handshake"] > 0:
        add("latest handshake", ago(t["latest_handshake"], now))
    elif "latest_handshake" in t:  # an encrypted tunnel's live worker, no handshake yet
        add("latest handshake", "(none yet)")
    if "session" in t and t["session"] is not None:
        add("session", _session_text(t["session"]))
    add("pid", t.get("pid"))
    add("restarts", t.get("restarts"))
    lines += _traffic_lines(t, p, now)
    add("drops", drops_text(t.get("drops")))
    if t.get("errors"):
        add("errors", t["errors"])
    if t.get("last_error"):
        add("last error", p.paint(RED, str(t["last_error"])))
    for warning in t.get("warnings") or ():
        add("warning", p.paint(YELLOW, str(warning)))
    return lines + peer_blocks(t, p, now)


def _traffic_lines(t: Mapping[str, Any], p: Painter, now: float) -> list[str]:
    """A tunnel's ``transfer``, ``packets`` and ``last packet`` lines, those it has data for."""
    lines = []
    if is_num(t.get("rx_bytes")) or is_num(t.get("tx_bytes")):
        lines.append(p.field("transfer", f"{human_bytes(t.get('rx_bytes') or 0)} received, "
                                         f"{human_bytes(t.get('tx_bytes') or 0)} sent"))
    if is_num(t.get("rx_packets")) or is_num(t.get("tx_packets")):
        lines.append(p.field("packets", f"{t.get('rx_packets') or 0} received, "
                                        f"{t.get('tx_packets') or 0} sent"))
    last = [f"{what} {ago(t[key], now)}" for what, key in (("received", "last_rx"),
                                                           ("sent", "last_tx"))
            if is_num(t.get(key))]
    if last:
        lines.append(p.field("last packet", ", ".join(last)))
    return lines


def _interface_line(name: str, i: Mapping[str, Any], p: Painter) -> str:
    parts = []
    if i.get("mode"):
        parts.append(str(i["mode"]))
    if i.get("exists") is False:
        parts.append(p.paint(RED, "missing"))
    if i.get("ifindex") is not None:
        parts.append(f"ifindex {i['ifindex']}")
    if i.get("mtu") is not None:
        parts.append(f"mtu {i['mtu']}")
    if i.get("persist") is True:
        parts.append("persistent")
    addresses = i.get("addresses")
    if isinstance(addresses, list) and addresses:
        parts.append(" ".join(str(a) for a in addresses))
    for key in ("owner", "group"):
        if i.get(key) is not None:
            parts.append(f"{key} {i[key]}")
    return f"  {p.paint(GREEN, name)}: {', '.join(parts) or '(no details)'}"


def render_status(result: Mapping[str, Any], *, colour: bool = False, now: float | None = None,
                  tunnel: str | None = None, peer: str | None = None) -> str:
    """Human status: daemon, tunnel blocks, interface lines (see the module docstring).

    With ``tunnel``, only that tunnel and its interface; raises KeyError if the result
    has no tunnel of that name. With ``peer`` too, only that peer of it (``peer: NAME``
    and ``tunnel: NAME`` then its fields); :class:`~tund.ctl.peer_view.NoSuchPeer` if the
    tunnel has none so named.
    """
    p = Painter(colour)
    now = time.time() if now is None else now
    tunnels = {k: mapping(v) for k, v in mapping(result.get("tunnels")).items()}
    if tunnel is not None and peer is not None:
        return render_peer(tunnels, tunnel, peer, p, now)
    interfaces = {k: mapping(v) for k, v in mapping(result.get("interfaces")).items()}
    blocks: list[list[str]] = []
    if tunnel is not None:
        if tunnel not in tunnels:
            raise KeyError(tunnel)
        tunnels = {tunnel: tunnels[tunnel]}
        wanted = tunnels[tunnel].get("interface")
        interfaces = {k: v for k, v in interfaces.items() if k == wanted}
    elif isinstance(result.get("daemon"), Mapping):
        blocks.append(_daemon_block(result["daemon"], p, now))
    for name in sorted(tunnels):
        blocks.append(_tunnel_block(name, tunnels[name], p, now))
    if interfaces:
        blocks.append([p.paint(BOLD, "interfaces:")]
                      + [_interface_line(n, interfaces[n], p) for n in sorted(interfaces)])
    if tunnel is None and not tunnels:
        blocks.append(["no tunnels configured"])
    return "\n\n".join("\n".join(b) for b in blocks)
