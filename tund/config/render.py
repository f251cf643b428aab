"""Values and key paths written the TOML way, for messages.

Contract: :func:`render_path` writes a key path as TOML does (``interfaces."a/b".addresses[0]``);
:func:`got` writes a parsed value short and bounded (``"tun"``, ``[1, 2]``, ``12...(5000 digits)``),
as the ``(got VALUE)`` end of a message. Pure functions.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def quote(text: str) -> str:
    """``text`` as a TOML basic string: double quotes, escapes for what does not print."""
    body = json.dumps(text, ensure_ascii=False)[1:-1]
    return '"' + "".join(c if c.isprintable() else _escape(c) for c in body) + '"'


def _escape(c: str) -> str:
    return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"


def render_path(path: Sequence[str | int]) -> str:
    """``("interfaces", "a/b", "addresses", 0)`` -> ``interfaces."a/b".addresses[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY_RE.match(part) else quote(part)
            out += f".{key}" if out else key
    return out


def _toml_value(value: Any, depth: int = 0) -> str:
    """A short TOML rendering of a parsed value (bounded in depth and width)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return quote(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        if depth >= 2:
            return "[...]" if value else "[]"
        items = [_toml_value(v, depth + 1) for v in value[:6]]
        return "[" + ", ".join(items) + (", ..." if len(value) > 6 else "") + "]"
    if isinstance(value, Mapping):
        if depth >= 2 or not value:
            return "{...}" if value else "{}"
        pairs = [f"{render_path([str(k)])} = {_toml_value(v, depth + 1)}"
                 for k, v in list(value.items())[:4]]
        return "{ " + ", ".join(pairs) + (", ..." if len(value) > 4 else "") + " }"
    return type(value).__name__


def got(value: Any) -> str:
    text = _toml_value(value)
    return text if len(text) <= 80 else text[:77] + "..."
