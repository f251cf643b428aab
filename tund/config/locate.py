"""Which file and line defined a key path, and the merge of several files.

Contract: :func:`key_lines` maps a TOML text's keys to lines; a :class:`Locator` turns
(key path, message) into a located :class:`~tund.errors.ConfigIssue`; :func:`merge`
joins the files' data (named entries by name, ``[daemon]`` by key), reporting a name
defined twice with both places. A tunnel's peers merge by peer name: a file may hold only
``[tunnels.T.peers.NAME]`` tables of a tunnel defined in another (a drop-in per peer); a
peer name defined twice is reported with both places.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tund.config.model import KeyPath
from tund.config.render import render_path
from tund.errors import ConfigIssue

_HEADER_RE = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
                     r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_KEYPART_RE = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(_key_part(p) for p in _KEYPART_RE.findall(text))


def _key_part(part: str) -> str:
    """One key part as TOML reads it: quotes removed, escapes of basic strings decoded."""
    if part.startswith('"'):
        try:
            return str(tomllib.loads(f"k = {part}")["k"])
        except (tomllib.TOMLDecodeError, ValueError):
            return part[1:-1]
    return part[1:-1] if part.startswith("'") else part


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every table header and key path in TOML ``text`` to its first line (1-based).

    Dotted keys also register their prefixes (``a.b = 1`` under ``[t]`` registers
    ``t.a`` and ``t.a.b``). A line-oriented scan, good enough for locating errors;
    multi-line strings may produce spurious entries but never wrong ones for real keys
    defined earlier.
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    # split on "\n" only: str.splitlines() also breaks at \x85, \u2028 ..., which TOML
    # allows inside strings and keys, and which would shift every later line number.
    for no, line in enumerate(text.split("\n"), 1):
        if m := _HEADER_RE.match(line):
            table = _split_key(m.group(1))
            lines.setdefault(table, no)
        elif m := _KEY_RE.match(line):
            key = _split_key(m.group(1))
            for n in range(1, len(key) + 1):
                lines.setdefault(table + key[:n], no)
    return lines


@dataclass
class Source:
    """One TOML file's text, parsed data and key lines; ``directory`` (absolute) is where
    it lies, for relative paths in it (None for text that is not a file)."""

    name: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    directory: str | None = None

    def line_of(self, path: KeyPath) -> int:
        keys = tuple(p for p in path if isinstance(p, str))
        keys = keys[: next((i for i, p in enumerate(path) if isinstance(p, int)), len(path))]
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.lines:
                return self.lines[keys[:n]]
        return 0


class Locator:
    """Tells which file (and line) defined a key path of the merged config."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.owner: dict[tuple[str, ...], Source] = {}

    def source_of(self, path: KeyPath) -> Source:
        keys = tuple(str(p) for p in path)
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.owner:
                return self.owner[keys[:n]]
        return self.sources[0] if self.sources else Source("<config>", "")

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        src = self.source_of(path)
        return ConfigIssue(src.name, src.line_of(path), render_path(path), message)


def merge(sources: Iterable[Source], loc: Locator, issues: list[ConfigIssue]) -> dict[str, Any]:
    """Merge the files' data: tables of named entries and ``[daemon]`` key by key."""
    merged: dict[str, Any] = {}
    for src in sources:
        for top, value in src.data.items():
            if top in merged and isinstance(value, dict) and isinstance(merged[top], dict):
                # interfaces/tunnels merge by name, daemon (and unknown tables) by key.
                for name, body in value.items():
                    if top == "tunnels" and _merge_tunnel(merged[top], name, body, src,
                                                          loc, issues):
                        continue
                    if name in merged[top]:
                        first = loc.owner[(top, name)]
                        what = "key" if top == "daemon" else "name"
                        issues.append(ConfigIssue(
                            src.name, src.line_of((top, name)), render_path((top, name)),
                            f"{what} defined twice: first in {first.name}:"
                            f"{first.line_of((top, name))}, again in {src.name}"))
                        continue
                    merged[top][name] = (_own_peers(name, body, src, loc) if top == "tunnels"
                                         else body)
                    loc.owner[(top, name)] = src
            elif top in merged:
                first = loc.owner[(top,)]
                issues.append(ConfigIssue(
                    src.name, src.line_of((top,)), render_path((top,)),
                    f"defined twice: first in {first.name}:{first.line_of((top,))}, "
                    f"again in {src.name}"))
            else:
                merged[top] = dict(value) if isinstance(value, dict) else value
                loc.owner[(top,)] = src
                if isinstance(value, dict):
                    for key, body in value.items():
                        loc.owner[(top, key)] = src
                        if top == "tunnels":
                            merged[top][key] = _own_peers(key, body, src, loc)
    return merged


def _own_peers(name: str, body: Any, src: Source, loc: Locator) -> Any:
    """Record ``src`` as the owner of each peer of tunnel ``name``; a copy of ``body`` whose
    ``peers`` table is a copy too (so that merging peers into it leaves ``src`` intact)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if isinstance(body.get("peers"), dict):
        body["peers"] = dict(body["peers"])
        for peer in body["peers"]:
            loc.owner[("tunnels", name, "peers", str(peer))] = src
    return body


def _merge_tunnel(tunnels: dict[str, Any], name: str, body: Any, src: Source, loc: Locator,
                  issues: list[ConfigIssue]) -> bool:
    """Merge tunnel ``name`` of ``src`` peer by peer when one of its two definitions holds
    only ``peers`` (a drop-in per peer). True when handled here (merged, or a peer name
    defined twice reported); False leaves the tunnel to the name-twice rule."""
    old = tunnels.get(name)
    if not (isinstance(old, dict) and isinstance(body, dict)):
        return False
    if not (set(old) <= {"peers"} or set(body) <= {"peers"}):
        return False
    if not (isinstance(old.get("peers", {}), dict) and isinstance(body.get("peers", {}), dict)):
        return False
    old_peers, new_peers = old.get("peers"), body.get("peers", {})
    merged = {**old, **{k: v for k, v in body.items() if k != "peers"}}
    if old_peers is not None or "peers" in body:
        merged["peers"] = dict(old_peers or {})
    if set(body) - {"peers"}:  # this file holds the tunnel itself, the other only peers
        loc.owner[("tunnels", name)] = src
    for peer, pbody in new_peers.items():
        path = ("tunnels", name, "peers", str(peer))
        if peer in merged["peers"]:
            first = loc.owner[path]
            issues.append(ConfigIssue(
                src.name, src.line_of(path), render_path(path),
                f"peer defined twice: first in {first.name}:{first.line_of(path)}, "
                f"again in {src.name}"))
            continue
        merged["peers"][peer] = pbody
        loc.owner[path] = src
    tunnels[name] = merged
    return True
