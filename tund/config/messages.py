"""pydantic's validation errors -> located messages in the config's own words.

Contract: :func:`pydantic_issues` gives one issue per pydantic error, located at the raw
key path (union tags dropped), saying what was expected and ending ``(got VALUE)``;
unknown keys name the known ones (and the closest), missing keys their choices; keys
missing from a tunnel that only has peers are left to :mod:`~tund.config.checks`, which
says that the tunnel is defined nowhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ValidationError,
)

from tund.config.locate import Locator
from tund.config.model import Config
from tund.config.render import got, quote
from tund.errors import ConfigIssue

_TYPE_MESSAGES = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be an array of strings",
    "list_type": "must be an array",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
}
_BOUND_MESSAGES = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "greater_than": ("gt", "must be greater than {}"),
    "less_than": ("lt", "must be less than {}"),
}


def _model_at(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that validates the table at ``path`` (walking the schema)."""
    node: Any = Config
    for part in path:
        if isinstance(node, type) and issubclass(node, BaseModel):
            f = node.model_fields.get(str(part))
            if f is None:
                return None
            node = f.annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return None
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _unknown_key_message(path: Sequence[str | int]) -> str:
    model = _model_at(path[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    hint = ""
    if close := difflib.get_close_matches(str(path[-1]), known, n=1):
        hint = f"; did you mean {close[0]!r}?".replace("'", '"')
    return f"unknown key{hint} (expected one of: {', '.join(known)})"


def _missing_key_message(path: Sequence[str | int]) -> str:
    model = _model_at(path[:-1])
    f = model.model_fields.get(str(path[-1])) if model is not None else None
    if f is not None and get_origin(f.annotation) is Literal:
        choices = [quote(str(c)) for c in get_args(f.annotation)]
        return f"required key is missing (expected {', '.join(choices[:-1])} or {choices[-1]})"
    return "required key is missing"


def _message(e: Any) -> str:
    """What is wrong, for one pydantic error (without the ``(got ...)`` part)."""
    kind: str = e["type"]
    ctx: dict[str, Any] = e.get("ctx") or {}
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    if kind in _BOUND_MESSAGES:
        key, fmt = _BOUND_MESSAGES[kind]
        bound = ctx.get(key, "?")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return fmt.format(bound)
    if kind == "literal_error":
        return f"must be {str(ctx.get('expected', '?')).replace(chr(39), chr(34))}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    msg = str(e["msg"]).removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _raw_path(pyloc: Sequence[str | int], raw: Mapping[str, Any], *,
              keep_key: bool) -> list[str | int]:
    """The prefix of a pydantic ``loc`` that indexes into ``raw`` (drops union tags).

    ``keep_key`` also keeps the first part that is absent from its table (the unknown or
    missing key itself).
    """
    path: list[str | int] = []
    node: Any = raw
    for part in pyloc:
        in_table = isinstance(node, Mapping) and part in node
        in_array = (isinstance(node, list | tuple) and isinstance(part, int)
                    and 0 <= part < len(node))
        if in_table or in_array:
            path.append(part)
            node = node[part]
            continue
        if keep_key and isinstance(node, Mapping):
            path.append(part)
        break
    return path


def peers_only(raw: Mapping[str, Any], path: Sequence[str | int]) -> bool:
    """Whether ``path`` is ``("tunnels", NAME)`` and that tunnel's merged table holds only
    ``peers``: its peers are defined (in drop-ins) but the tunnel itself is not."""
    tunnels = raw.get("tunnels")
    if len(path) != 2 or path[0] != "tunnels" or not isinstance(tunnels, Mapping):
        return False
    body = tunnels.get(path[1])
    return isinstance(body, Mapping) and set(body) == {"peers"}


def pydantic_issues(err: ValidationError, raw: Mapping[str, Any],
                     loc: Locator) -> list[ConfigIssue]:
    issues = []
    for e in err.errors(include_url=False):
        # Keep only the loc elements that index into the raw data (drops union tags),
        # plus the offending key itself for unknown and missing keys.
        path = _raw_path(e["loc"], raw, keep_key=e["type"] in ("extra_forbidden", "missing"))
        if e["type"] == "missing" and len(path) == 3 and peers_only(raw, path[:2]):
            continue  # checks.cross_issues says the tunnel itself is defined nowhere
        if e["type"] == "extra_forbidden":
            issues.append(loc.issue(tuple(path), _unknown_key_message(path)))
        elif e["type"] == "missing":
            issues.append(loc.issue(tuple(path), _missing_key_message(path)))
        else:
            issues.append(loc.issue(tuple(path), f"{_message(e)} (got {got(e['input'])})"))
    return issues
