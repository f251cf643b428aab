"""Presentation of daemon replies, apart from the transport (like ``wg show``).

Every function here takes the daemon's result dict and returns text; nothing here
talks to the daemon or decides exit codes. Results are rendered as far as they go:
a missing key drops its line, it never raises. This module is the one the commands
import; the larger renderings live beside it:

* :func:`render_json`   the result as the daemon sent it, for scripts;
* :func:`render_status` :mod:`~tund.ctl.status_view` (tunnels, interfaces) and
  :mod:`~tund.ctl.peer_view` (a peer's block; ``status TUNNEL PEER``);
* :func:`render_reload` the added / changed / removed / unchanged names and actions;
* :func:`render_action` the answer to ``up`` / ``down`` / ``restart``;
* :func:`render_dump`   :mod:`~tund.ctl.dump`, tab-separated and stable;
* :func:`watch_header`  the first line of ``status --watch``.

Colour and :func:`use_colour` are :mod:`~tund.ctl.paint`'s; sizes and times are
:mod:`~tund.ctl.units`'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from tund.ctl.dump import DUMP_COLUMNS, PEER_DUMP_COLUMNS, dump_row, peer_dump_row, render_dump
from tund.ctl.paint import BOLD, YELLOW, Painter, use_colour
from tund.ctl.peer_view import NoSuchPeer
from tund.ctl.status_view import render_status
from tund.ctl.units import ago, elapsed, human_bytes, human_duration

__all__ = [
    "CLEAR", "DUMP_COLUMNS", "PEER_DUMP_COLUMNS", "NoSuchPeer", "ago", "dump_row", "elapsed",
    "human_bytes", "human_duration", "peer_dump_row", "render_action", "render_dump",
    "render_json", "render_reload", "render_status", "use_colour", "watch_header",
]


def render_json(result: Mapping[str, Any]) -> str:
    """The daemon's result as indented JSON (keys sorted, stable for diffs)."""
    return json.dumps(result, indent=2, sort_keys=True)


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
    p = Painter(colour)
    lines = []
    if result.get("dry_run"):
        lines.append(p.paint(YELLOW, "dry run: nothing was changed; a reload would do this:"))
    for section in ("added", "changed", "removed", "unchanged"):
        names = _names(result.get(section))
        if names:
            lines.append(p.paint(BOLD, f"{section}:"))
            lines.extend(f"  {n}" for n in names)
        else:
            lines.append(f"{p.paint(BOLD, section + ':')} none")
    actions = result.get("actions")
    if isinstance(actions, list) and actions:
        lines.append(p.paint(BOLD, "actions:"))
        lines.extend(f"  {a}" for a in actions)
    notes = result.get("notes")
    if isinstance(notes, list) and notes:
        lines.append(p.paint(BOLD, "notes:"))
        lines.extend(f"  {p.paint(YELLOW, str(n))}" for n in notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------- up/down


def render_action(command: str, tunnel: str, result: Mapping[str, Any], *,
                  colour: bool = False) -> str:
    """One line for ``up`` / ``down`` / ``restart``: the message, else the new state."""
    p = Painter(colour)
    if result.get("message"):
        return str(result["message"])
    if result.get("state"):
        return f"tunnel {tunnel}: {p.state(str(result['state']))}"
    return f"tunnel {tunnel}: {command} done"


# --------------------------------------------------------------------------- watch

CLEAR = "\x1b[H\x1b[2J"


def watch_header(interval: float, now: float, command: str = "tundctl status") -> str:
    """``Every 2s: tundctl status    2024-01-01 12:00:00`` (like watch(1))."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    return f"Every {interval:g}s: {command}    {stamp}"
