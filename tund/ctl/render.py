"""Presentation of daemon replies, apart from the transport (like ``wg show``).

Every function here takes the daemon's result dict and returns text; nothing here
talks to the daemon or decides exit codes. Results are rendered as far as they go:
a missing key drops its line, it never raises.

* :func:`render_json`   the result as the daemon sent it, for scripts;
* :func:`render_status` one block per tunnel (``tunnel: NAME`` then indented
  ``key: value`` lines, then a ``peer: NAME`` block per peer, like ``wg show``), then one
  short line per interface; with ``peer``, that one peer's block;
* :func:`render_reload` the added / changed / removed / unchanged names and actions;
* :func:`render_action` the answer to ``up`` / ``down`` / ``restart``;
* :func:`render_dump`   one tab-separated line per tunnel (:data:`DUMP_COLUMNS`), each
  followed by one per peer (:data:`PEER_DUMP_COLUMNS`), stable.

Colour only when asked (``colour=True``); :func:`use_colour` decides from the stream
and the environment (``TUND_COLOR=always|never`` wins, then ``NO_COLOR``, then isatty).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any, TextIO

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_GREEN = "\x1b[1;32m"
_YELLOW = "\x1b[1;33m"
_RED = "\x1b[1;31m"
_DIM = "\x1b[2m"

_STATE_COLOURS = {"up": _GREEN, "starting": _YELLOW, "connecting": _YELLOW,
                  "handshaking": _YELLOW, "unverified": _YELLOW, "failing": _RED,
                  "backoff": _YELLOW, "failed": _RED, "stopped": _DIM}


def use_colour(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour output to ``stream``: TUND_COLOR, then NO_COLOR, then isatty."""
    env = os.environ if environ is None else environ
    mode = env.get("TUND_COLOR", "").lower()
    if mode == "always":
        return True
    if mode == "never" or env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _Painter:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def paint(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.colour and code else text

    def header(self, kind: str, name: str) -> str:
        return f"{self.paint(_BOLD, kind + ':')} {self.paint(_GREEN, name)}"

    def field(self, key: str, value: str) -> str:
        return f"  {self.paint(_BOLD, key + ':')} {value}"

    def state(self, state: str) -> str:
        return self.paint(_STATE_COLOURS.get(state, ""), state)


# --------------------------------------------------------------------------- units


def human_bytes(n: int | float) -> str:
    """``1234567`` -> ``"1.18 MiB"`` (binary units, two decimals, like ``wg show``)."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.2f} {unit}"


def human_duration(seconds: float) -> str:
    """``3725`` -> ``"1 hour, 2 minutes, 5 seconds"``; under a second -> ``"0 seconds"``."""
    left = max(0, int(seconds))
    parts = []
    for name, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600),
                       ("minute", 60), ("second", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    return ", ".join(parts) or "0 seconds"


def ago(timestamp: float, now: float) -> str:
    """``"N seconds ago"`` for a unix time; ``"Now"`` within a second; future -> ``"in ..."``."""
    delta = now - timestamp
    if abs(delta) < 1:
        return "Now"
    if delta < 0:
        return f"in {human_duration(-delta)} (clock skew?)"
    return f"{human_duration(delta)} ago"


def elapsed(timestamp: float, now: float) -> str:
    """``"12 seconds ago"``, ``"1 minute, 3 seconds ago"``, also within the first second
    (``"0 seconds ago"``, never ``"Now"``): for when a state began, read as ``since ...``;
    future -> ``"in ..."`` as :func:`ago`."""
    delta = now - timestamp
    if delta <= -1:
        return f"in {human_duration(-delta)} (clock skew?)"
    return f"{human_duration(delta)} ago"


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- json


def render_json(result: Mapping[str, Any]) -> str:
    """The daemon's result as indented JSON (keys sorted, stable for diffs)."""
    return json.dumps(result, indent=2, sort_keys=True)


# --------------------------------------------------------------------------- status


def _daemon_block(d: Mapping[str, Any], p: _Painter, now: float) -> list[str]:
    version = d.get("version")
    lines = [p.header("daemon", f"tund {version}" if version else "tund")]
    if d.get("pid") is not None:
        lines.append(p.field("pid", str(d["pid"])))
    if d.get("config"):
        lines.append(p.field("config", str(d["config"])))
    if _num(d.get("started")):
        lines.append(p.field("started", elapsed(d["started"], now)))
    reloads = d.get("reloads")
    last = d.get("last_reload")
    if reloads is not None or isinstance(last, Mapping):
        text = str(reloads if reloads is not None else "?")
        if isinstance(last, Mapping):
            outcome = "ok" if last.get("ok") else "failed"
            when = f" {ago(last['time'], now)}" if _num(last.get("time")) else ""
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


def _drops_text(drops: Any) -> str | None:
    if not isinstance(drops, Mapping) or not drops:
        return None
    nonzero = {k: v for k, v in drops.items() if v}
    if not nonzero:
        return "none"
    return ", ".join(f"{cause} {n}" for cause, n in sorted(nonzero.items()))


def _session_text(session: Any) -> str:
    if isinstance(session, Mapping):
        return ", ".join(f"{k} {v}" for k, v in session.items()) or "(none)"
    return str(session)


def _tunnel_block(name: str, t: Mapping[str, Any], p: _Painter, now: float) -> list[str]:
    lines = [p.header("tunnel", name)]

    def add(key: str, value: Any) -> None:
        if value is not None and value != "":
            lines.append(p.field(key, str(value)))

    add("interface", t.get("interface"))
    state = str(t.get("state") or "unknown")
    since = f" (since {elapsed(t['since'], now)})" if _num(t.get("since")) else ""
    add("state", p.state(state) + since)
    add("transport", _transport_text(t))
    add("encryption", t.get("encryption"))
    add("peer", t.get("peer"))
    add("peer public key", t.get("peer_public_key"))
    if _num(t.get("latest_handshake")) and t["latest_handshake"] > 0:
        add("latest handshake", ago(t["latest_handshake"], now))
    elif "latest_handshake" in t:  # an encrypted tunnel's live worker, no handshake yet
        add("latest handshake", "(none yet)")
    if "session" in t and t["session"] is not None:
        add("session", _session_text(t["session"]))
    add("pid", t.get("pid"))
    add("restarts", t.get("restarts"))
    if _num(t.get("rx_bytes")) or _num(t.get("tx_bytes")):
        add("transfer", f"{human_bytes(t.get('rx_bytes') or 0)} received, "
                        f"{human_bytes(t.get('tx_bytes') or 0)} sent")
    if _num(t.get("rx_packets")) or _num(t.get("tx_packets")):
        add("packets", f"{t.get('rx_packets') or 0} received, {t.get('tx_packets') or 0} sent")
    last = [f"{what} {ago(t[key], now)}" for what, key in (("received", "last_rx"),
                                                           ("sent", "last_tx"))
            if _num(t.get(key))]
    if last:
        add("last packet", ", ".join(last))
    add("drops", _drops_text(t.get("drops")))
    if t.get("errors"):
        add("errors", t["errors"])
    if t.get("last_error"):
        add("last error", p.paint(_RED, str(t["last_error"])))
    for warning in t.get("warnings") or ():
        add("warning", p.paint(_YELLOW, str(warning)))
    return lines + _peer_blocks(t, p, now)


def _peer_block(name: str, peer: Mapping[str, Any], p: _Painter, now: float) -> list[str]:
    """``  peer: NAME`` and its fields indented under it (like ``wg show``'s peer)."""
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
    add("transfer", f"{human_bytes(_count(peer.get('rx_bytes')))} received, "
                    f"{human_bytes(_count(peer.get('tx_bytes')))} sent")
    add("packets", f"{_count(peer.get('rx_packets'))} received, "
                   f"{_count(peer.get('tx_packets'))} sent")
    if _num(peer.get("keepalive")) and peer["keepalive"] > 0:
        add("persistent keepalive", f"every {human_duration(peer['keepalive'])}")
    state = str(peer.get("state") or "unknown")
    colour = {"active": _GREEN, "idle": _YELLOW, "never": _DIM}.get(state, "")
    add("state", p.paint(colour, state) + ("" if peer.get("enabled", True) else " (disabled)"))
    add("drops", _drops_text(peer.get("drops")))
    return lines


def _count(value: Any) -> int:
    return int(value) if _num(value) else 0


def _peer_blocks(t: Mapping[str, Any], p: _Painter, now: float) -> list[str]:
    peers = _mapping(t.get("peers"))
    out: list[str] = []
    for name in sorted(peers):
        out += ["", *_peer_block(name, _mapping(peers[name]), p, now)]
    return out


class NoSuchPeer(KeyError):
    """``status TUNNEL PEER`` of a peer the tunnel does not have; str() says which it has."""

    def __init__(self, tunnel: str, peer: str, known: list[str]) -> None:
        super().__init__(peer)
        self.text = (f"tunnel {tunnel} has no peer named {peer!r} "
                     f"(peers: {', '.join(known) or 'none'})")

    def __str__(self) -> str:
        return self.text


def _interface_line(name: str, i: Mapping[str, Any], p: _Painter) -> str:
    parts = []
    if i.get("mode"):
        parts.append(str(i["mode"]))
    if i.get("exists") is False:
        parts.append(p.paint(_RED, "missing"))
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
    return f"  {p.paint(_GREEN, name)}: {', '.join(parts) or '(no details)'}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def render_status(result: Mapping[str, Any], *, colour: bool = False, now: float | None = None,
                  tunnel: str | None = None, peer: str | None = None) -> str:
    """Human status: daemon, tunnel blocks, interface lines (see the module docstring).

    With ``tunnel``, only that tunnel and its interface; raises KeyError if the result
    has no tunnel of that name. With ``peer`` too, only that peer of it (``peer: NAME``
    and ``tunnel: NAME`` then its fields); :class:`NoSuchPeer` if the tunnel has none so
    named.
    """
    p = _Painter(colour)
    now = time.time() if now is None else now
    tunnels = {k: _mapping(v) for k, v in _mapping(result.get("tunnels")).items()}
    if tunnel is not None and peer is not None:
        if tunnel not in tunnels:
            raise KeyError(tunnel)
        peers = _mapping(tunnels[tunnel].get("peers"))
        if peer not in peers:
            raise NoSuchPeer(tunnel, peer, sorted(peers))
        block = _peer_block(peer, _mapping(peers[peer]), p, now)
        return "\n".join([block[0].strip(), f"    {p.paint(_BOLD, 'tunnel:')} {tunnel}",
                          *block[1:]])
    interfaces = {k: _mapping(v) for k, v in _mapping(result.get("interfaces")).items()}
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
        blocks.append([p.paint(_BOLD, "interfaces:")]
                      + [_interface_line(n, interfaces[n], p) for n in sorted(interfaces)])
    if tunnel is None and not tunnels:
        blocks.append(["no tunnels configured"])
    return "\n\n".join("\n".join(b) for b in blocks)


# --------------------------------------------------------------------------- reload


_KINDS = (("interfaces", "interface"), ("tunnels", "tunnel"))


def _names(section: Any) -> list[str]:
    if isinstance(section, Mapping):
        return [f"{single} {name}" for plural, single in _KINDS
                for name in sorted(section.get(plural) or [])]
    if isinstance(section, list):
        return [str(x) for x in section]
    return []


def render_reload(result: Mapping[str, Any], *, colour: bool = False) -> str:
    """Added / changed / removed / unchanged names, then the actions taken (or planned)."""
    p = _Painter(colour)
    lines = []
    if result.get("dry_run"):
        lines.append(p.paint(_YELLOW, "dry run: nothing was changed; a reload would do this:"))
    for section in ("added", "changed", "removed", "unchanged"):
        names = _names(result.get(section))
        if names:
            lines.append(p.paint(_BOLD, f"{section}:"))
            lines.extend(f"  {n}" for n in names)
        else:
            lines.append(f"{p.paint(_BOLD, section + ':')} none")
    actions = result.get("actions")
    if isinstance(actions, list) and actions:
        lines.append(p.paint(_BOLD, "actions:"))
        lines.extend(f"  {a}" for a in actions)
    notes = result.get("notes")
    if isinstance(notes, list) and notes:
        lines.append(p.paint(_BOLD, "notes:"))
        lines.extend(f"  {p.paint(_YELLOW, str(n))}" for n in notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------- up/down


def render_action(command: str, tunnel: str, result: Mapping[str, Any], *,
                  colour: bool = False) -> str:
    """One line for ``up`` / ``down`` / ``restart``: the message, else the new state."""
    p = _Painter(colour)
    if result.get("message"):
        return str(result["message"])
    if result.get("state"):
        return f"tunnel {tunnel}: {p.state(str(result['state']))}"
    return f"tunnel {tunnel}: {command} done"


# --------------------------------------------------------------------------- dump

#: The columns of :func:`render_dump`, in order. Within one status schema version columns
#: are only ever appended at the end (before ``last_error``, which stays last).
DUMP_COLUMNS: tuple[str, ...] = (
    "tunnel", "interface", "state", "transport", "role", "endpoint", "peer", "encryption",
    "latest_handshake", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "drops", "errors",
    "restarts", "pid", "since", "last_error")


#: The columns of a peer's line in :func:`render_dump` (it follows its tunnel's line; tell
#: the two apart by the number of fields). Only ever appended to within a schema version.
PEER_DUMP_COLUMNS: tuple[str, ...] = (
    "tunnel", "peer", "state", "public_key", "endpoint", "allowed_ips", "latest_handshake",
    "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "drops", "keepalive", "enabled")


def _field(value: Any, empty: str = "(none)") -> str:
    if value is None or value == "":
        return empty
    text = str(value)
    return " ".join(text.split()) if any(c in text for c in "\t\n\r") else text


def _int(value: Any) -> str:
    return str(int(value)) if _num(value) else "0"


def dump_row(name: str, t: Mapping[str, Any]) -> list[str]:
    """The :data:`DUMP_COLUMNS` fields of one tunnel, sentinels for what is missing:
    ``(none)`` for text, ``0`` for numbers and times (never), ``off`` for no encryption."""
    drops = _mapping(t.get("drops"))
    encryption = t.get("encryption")
    return [
        _field(name), _field(t.get("interface")), _field(t.get("state"), "unknown"),
        _field(t.get("transport")), _field(t.get("role")), _field(t.get("endpoint")),
        _field(t.get("peer")), "off" if encryption == "none" else _field(encryption),
        _int(t.get("latest_handshake")), _int(t.get("rx_bytes")), _int(t.get("tx_bytes")),
        _int(t.get("rx_packets")), _int(t.get("tx_packets")),
        str(sum(int(n) for n in drops.values() if _num(n))), _int(t.get("errors")),
        _int(t.get("restarts")), _int(t.get("pid")), _int(t.get("since")),
        _field(t.get("last_error")),
    ]


def peer_dump_row(tunnel: str, name: str, peer: Mapping[str, Any]) -> list[str]:
    """The :data:`PEER_DUMP_COLUMNS` fields of one peer: ``allowed_ips`` joined by commas,
    ``enabled`` ``yes``/``no``, sentinels as :func:`dump_row`."""
    drops = _mapping(peer.get("drops"))
    ips = peer.get("allowed_ips")
    return [
        _field(tunnel), _field(name), _field(peer.get("state"), "unknown"),
        _field(peer.get("public_key")), _field(peer.get("endpoint")),
        _field(",".join(str(x) for x in ips) if isinstance(ips, list) else None),
        _int(peer.get("latest_handshake")), _int(peer.get("rx_bytes")),
        _int(peer.get("tx_bytes")), _int(peer.get("rx_packets")), _int(peer.get("tx_packets")),
        str(sum(int(n) for n in drops.values() if _num(n))), _int(peer.get("keepalive")),
        "no" if peer.get("enabled") is False else "yes",
    ]


def render_dump(result: Mapping[str, Any], *, tunnel: str | None = None) -> str:
    """One line per tunnel (name order), fields separated by tabs, no header: see
    :data:`DUMP_COLUMNS` and :func:`dump_row`; after each, one line per peer (name order,
    :func:`peer_dump_row`). Raises KeyError for an unknown ``tunnel``."""
    tunnels = {k: _mapping(v) for k, v in _mapping(result.get("tunnels")).items()}
    if tunnel is not None:
        tunnels = {tunnel: tunnels[tunnel]}
    lines: list[str] = []
    for n in sorted(tunnels):
        lines.append("\t".join(dump_row(n, tunnels[n])))
        peers = _mapping(tunnels[n].get("peers"))
        lines += ["\t".join(peer_dump_row(n, pn, _mapping(peers[pn]))) for pn in sorted(peers)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- watch

CLEAR = "\x1b[H\x1b[2J"


def watch_header(interval: float, now: float, command: str = "tundctl status") -> str:
    """``Every 2s: tundctl status    2024-01-01 12:00:00`` (like watch(1))."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    return f"Every {interval:g}s: {command}    {stamp}"
