"""TOML text -> parsed sources -> one validated :class:`~tund.config.model.Config`.

Contract: :func:`parse_source` reports a file that is not TOML as one located issue
(whatever the bytes: deep nesting and huge integers included) and returns None;
:func:`validate` merges sources and raises ConfigError with every issue, sorted by file
(load order), line and key path. A text parsed before (a reload reads every file again,
most of them unchanged) is not parsed again: its data is copied from the last
:data:`PARSED_KEEP` parses (45 ms of TOML for a file of 1,000 peers).
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import (
    ValidationError,
)

from tund.config.checks import cross_issues
from tund.config.locate import Locator, Source, key_lines, merge
from tund.config.messages import pydantic_issues
from tund.config.model import HOOK_PHASES, Config
from tund.errors import ConfigError, ConfigIssue


def _as_tuples(raw: dict[str, Any]) -> None:
    """TOML arrays arrive as lists; the (strict, frozen) models hold tuples."""
    ifaces = raw.get("interfaces")
    if isinstance(ifaces, dict):
        for body in ifaces.values():
            if isinstance(body, dict):
                for k in ("addresses", "routes", "dns"):
                    if isinstance(body.get(k), list):
                        body[k] = tuple(body[k])
                for k in HOOK_PHASES:  # a list of commands, each a list of argv strings
                    if isinstance(body.get(k), list):
                        body[k] = tuple(tuple(c) if isinstance(c, list) else c
                                        for c in body[k])
    tunnels = raw.get("tunnels")
    if isinstance(tunnels, dict):
        for body in tunnels.values():
            if isinstance(body, dict) and isinstance(body.get("allowed_sources"), list):
                body["allowed_sources"] = tuple(body["allowed_sources"])
    for _path, peer in _peer_bodies(raw):
        if isinstance(peer.get("allowed_ips"), list):
            peer["allowed_ips"] = tuple(peer["allowed_ips"])


def _peer_bodies(raw: dict[str, Any]) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """``(key path, body)`` of every ``[tunnels.T.peers.NAME]`` table in the raw data."""
    out: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    tunnels = raw.get("tunnels")
    for tname, tbody in (tunnels.items() if isinstance(tunnels, dict) else ()):
        peers = tbody.get("peers") if isinstance(tbody, dict) else None
        for pname, pbody in (peers.items() if isinstance(peers, dict) else ()):
            if isinstance(pbody, dict):
                out.append((("tunnels", str(tname), "peers", str(pname)), pbody))
    return out


def _absolute_paths(raw: dict[str, Any], loc: Locator) -> None:
    """A relative ``*_file`` value is made absolute against the directory of the file that
    names it (main file or drop-in), never the current directory (under systemd: ``/``)."""
    entries: list[tuple[tuple[str, ...], Any]] = [(("daemon",), raw.get("daemon"))]
    for top in ("interfaces", "tunnels"):
        if isinstance(table := raw.get(top), dict):
            entries += [((top, str(name)), body) for name, body in table.items()]
    entries += _peer_bodies(raw)
    for path, body in entries:
        if not isinstance(body, dict):
            continue
        for key, value in body.items():
            if key.endswith("_file") and isinstance(value, str) and value \
                    and not value.startswith("/"):
                directory = loc.source_of((*path, key)).directory
                if directory is not None:
                    body[key] = os.path.join(directory, value)


def validate(sources: list[Source], issues: list[ConfigIssue]) -> Config:
    loc = Locator(sources)
    raw = merge(sources, loc, issues)
    _as_tuples(raw)
    _absolute_paths(raw, loc)
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        issues.extend(pydantic_issues(err, raw, loc))
    issues.extend(cross_issues(raw, loc))
    if issues or config is None:
        raise ConfigError(_sorted_unique(issues, [s.name for s in sources]))
    return config


def _sorted_unique(issues: Iterable[ConfigIssue], order: Sequence[str]) -> list[ConfigIssue]:
    """Drop repeated issues; sort by file (in load order), line, key path."""
    rank = {name: i for i, name in enumerate(order)}
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (rank.get(i.file, len(rank)), i.file, i.line, i.path))


_TOML_AT_RE = re.compile(r"^(.*?)\s*\(at (?:line (\d+), column (\d+)|end of document)\)$", re.S)
_DECLARE_RE = re.compile(r"Cannot declare \((.*?),?\) twice")
_LONG_INT_RE = re.compile(r"[0-9][0-9_]{4000,}")


def _toml_error(name: str, text: str, e: tomllib.TOMLDecodeError) -> ConfigIssue:
    """A located issue from tomllib's message ``"What (at line L, column C)"``."""
    m = _TOML_AT_RE.match(str(e))
    if m is None:
        return ConfigIssue(name, 0, "", f"not valid TOML: {e}")
    what = _DECLARE_RE.sub(lambda d: f"cannot declare [{d.group(1).replace(chr(39), '')}] "
                           "twice", m.group(1))
    what = what[:1].lower() + what[1:]
    if m.group(2) is None:
        return ConfigIssue(name, max(1, len(text.rstrip("\n").split("\n"))), "",
                           f"not valid TOML: {what} (at end of file)")
    return ConfigIssue(name, int(m.group(2)), "",
                       f"not valid TOML: {what} (at column {m.group(3)})")


def _deepest_line(text: str, limit: int = 100) -> int:
    """The line where ``[``/``{`` nesting first exceeds ``limit`` (strings roughly skipped)."""
    depth, line, quote = 0, 1, ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\n":
            line += 1
            if quote in ('"', "'"):
                quote = ""
        elif quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            while i + 1 < len(text) and text[i + 1] != "\n":
                i += 1
        elif c in "[{":
            depth += 1
            if depth > limit:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return 0


#: texts of the last parses -> (data, key lines); the data is copied out, never lent (the
#: merge and validation change it in place)
_PARSED: dict[str, tuple[dict[str, Any], dict[tuple[str, ...], int]]] = {}
PARSED_KEEP = 8


def _copy(value: Any) -> Any:
    """A copy of parsed TOML: its tables and arrays new, the scalars (immutable) shared."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def parse_source(name: str, text: str, issues: list[ConfigIssue]) -> Source | None:
    src = Source(name, text)
    if (hit := _PARSED.get(text)) is not None:
        src.data, src.lines = _copy(hit[0]), dict(hit[1])
        return src
    try:
        src.data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        issues.append(_toml_error(name, text, e))
        return None
    except RecursionError:
        issues.append(ConfigIssue(name, _deepest_line(text), "",
                                  "not valid TOML here: arrays or inline tables nested too "
                                  "deeply to parse"))
        return None
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        m = _LONG_INT_RE.search(text)
        line = text.count("\n", 0, m.start()) + 1 if m else 0
        issues.append(ConfigIssue(name, line, "",
                                  "not valid TOML here: an integer too long to parse (more "
                                  f"than {sys.get_int_max_str_digits()} digits)"))
        return None
    src.lines = key_lines(text)
    while len(_PARSED) >= PARSED_KEEP:
        del _PARSED[next(iter(_PARSED))]
    _PARSED[text] = (_copy(src.data), dict(src.lines))
    return src


def parse_text(text: str, name: str = "<config>") -> Config:
    """Validate one TOML document held in memory; raise ConfigError listing all issues."""
    issues: list[ConfigIssue] = []
    src = parse_source(name, text, issues)
    if src is None:
        raise ConfigError(issues)
    return validate([src], issues)
