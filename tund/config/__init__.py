"""Configuration: ``tunnels.toml`` plus drop-ins -> one validated, frozen :class:`Config`.

Contract:

* :func:`load` reads the main file and ``tunnels.d/*.toml`` (name order), merges them
  (a name defined in two files is an error naming both), validates everything and
  returns a :class:`Config`, or raises :class:`~tund.errors.ConfigError` carrying *every*
  problem at once, each located as ``FILE:LINE: key.path: what is wrong (got VALUE)``.
  File-level problems (unreadable, not UTF-8, not TOML) are reported for every file,
  and then stop: validating the rest would only add noise.
* :func:`parse_text` does the same for in-memory TOML (tests, fuzzers).
* Run as root (the daemon, ``tundctl check`` by root), :func:`load` refuses a file that
  someone else could change: owned by another user, or group/other-writable, or in such a
  directory (:func:`unsafe_ownership`); one error per file, saying why and how to fix it.
* Nothing here touches the kernel or the network; user and group names are resolved
  with the local user database. Further checks (key files) are added by other modules
  with :func:`register_check`.
* Nothing raises anything but :class:`~tund.errors.ConfigError` for bad input, whatever
  the bytes (deep nesting, huge integers, invalid UTF-8 included).

Messages say what was expected and, where a value was given, end with ``(got VALUE)``,
the value written the TOML way (``"tun"``, ``true``, ``[1, 2]``). Key paths are dotted,
with array indices in brackets and unusual names quoted: ``interfaces."a/b".addresses[0]``.

Models are pydantic v2, ``frozen`` and ``extra="forbid"``; equal configs compare equal,
which is what reload planning relies on.
"""

from __future__ import annotations

import datetime
import difflib
import grp
import ipaddress
import json
import math
import os
import pwd
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tund.errors import ConfigError, ConfigIssue

DEFAULT_CONFIG = Path("/etc/tund/tunnels.toml")
DEFAULT_CONTROL_SOCKET = "/run/tund/control.sock"
DEFAULT_PORT = 55555
IFNAMSIZ = 16  # the kernel's limit includes the trailing NUL: names are at most 15 bytes

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_IFNAME_BAD = re.compile(r"[\s/:]")
_TUNNEL_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")

KeyPath = tuple[str | int, ...]


# --------------------------------------------------------------------------- helpers


def parse_endpoint(text: str, *, allow_hostname: bool) -> tuple[str, int]:
    """Split ``"host:port"`` / ``"[v6]:port"`` into ``(host, port)``.

    ``allow_hostname`` False (listen addresses) accepts IP addresses only.
    Raises ValueError with a message saying what was expected (never the value itself).
    """
    form = '"HOST:PORT" or "[IPv6]:PORT"' if allow_hostname else '"IPv4:PORT" or "[IPv6]:PORT"'
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError('expected "[IPv6]:PORT"')
        host, port_s = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_quote(host)} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected {form}")
        if ":" in host:
            raise ValueError('an IPv6 address must be written in brackets, as "[ADDR]:PORT"')
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not allow_hostname:
                raise ValueError(f"{_quote(host)} is not an IP address; a listen address "
                                 f"cannot be a host name (expected {form})") from None
            if not _HOSTNAME_RE.match(host):
                raise ValueError(f"{_quote(host)} is neither an IP address nor a host name"
                                 ) from None
    if not (port_s.isascii() and port_s.isdigit()) or not 1 <= int(port_s) <= 65535:
        raise ValueError("port must be a number from 1 to 65535")
    return host, int(port_s)


def check_ifname(name: str) -> str | None:
    """Return why ``name`` is not an interface name the kernel accepts, or None.

    The kernel (``dev_valid_name``) wants 1 to 15 bytes, not ``.`` or ``..``, and no
    ``/``, ``:`` or whitespace.
    """
    raw = name.encode("utf-8", "surrogatepass")
    if not raw:
        return "must not be empty"
    if len(raw) >= IFNAMSIZ:
        return f"must be at most {IFNAMSIZ - 1} bytes (is {len(raw)})"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if _IFNAME_BAD.search(name):
        return "must not contain whitespace, '/' or ':'"
    return None


def _resolve_id(value: str | int, kind: Literal["user", "group"]) -> int:
    if isinstance(value, int):
        if not 0 <= value < 2**32 - 1:
            raise ValueError(f"{kind} id must be from 0 to 4294967294")
        return value
    if value.isascii() and value.isdigit():
        return _resolve_id(int(value), kind)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "user" else grp.getgrnam(value).gr_gid
    except (KeyError, ValueError):  # ValueError: embedded NUL
        raise ValueError(f"no such {kind} on this system") from None


def _check_principal(value: Any, kind: Literal["user", "group"]) -> str | int:
    """Before-validator for owner/group: a name or a numeric id that exists/is in range."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a {kind} name (string) or a numeric {kind[0]}id")
    _resolve_id(value, kind)
    return value


def _check_address(a: str) -> str:
    if "/" not in a:
        raise ValueError("expected ADDRESS/PREFIXLEN, like 10.0.0.1/24 or fd00::1/64")
    try:
        return str(ipaddress.ip_interface(a))
    except ValueError:
        raise ValueError("is not an IP address with a prefix length "
                         "(expected ADDRESS/PREFIXLEN)") from None


def _check_route(r: str) -> str:
    try:
        return str(ipaddress.ip_network(r, strict=True))
    except ValueError as e:
        if "host bits set" in str(e):
            try:
                net = ipaddress.ip_network(r, strict=False)
            except ValueError:
                pass
            else:
                raise ValueError(f"has host bits set (expected a network, like {net})") from None
        raise ValueError("is not an IP network (expected NETWORK/PREFIXLEN, "
                         "like 10.0.0.0/24)") from None


def _no_duplicates(what: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    def check(v: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for item in v:
            if item in seen:
                raise ValueError(f"lists the {what} {item} twice")
            seen.add(item)
        return v
    return check


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


Mtu = Annotated[int, Field(ge=68, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
Address = Annotated[str, AfterValidator(_check_address)]
Route = Annotated[str, AfterValidator(_check_route)]


class DaemonConfig(_Model):
    """``[daemon]``: process-wide settings."""

    control_socket: str = DEFAULT_CONTROL_SOCKET
    control_group: str | None = None
    admin_group: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # supervision: a crashed worker is restarted after a capped exponential backoff;
    # more than crash_limit crashes within crash_window seconds puts the tunnel in `failed`.
    restart_backoff_min: Seconds = 0.2
    restart_backoff_max: Seconds = 10.0
    crash_limit: Annotated[int, Field(ge=1, le=10000)] = 10
    crash_window: Annotated[float, Field(gt=0, le=86400)] = 60.0
    # liveness: the daemon pings each worker; no pong within ping_timeout -> killed, replaced.
    ping_interval: Seconds = 1.0
    ping_timeout: Seconds = 5.0
    # Prometheus metrics over HTTP at "IP:PORT" ("[IPv6]:PORT"); None (default): off.
    metrics_listen: str | None = None
    # control socket bounds: concurrent clients, seconds a client may stay silent (also
    # mid-line), longest request line in bytes.
    control_max_clients: Annotated[int, Field(ge=1, le=4096)] = 32
    control_timeout: Seconds = 30.0
    control_max_request: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    # the user (name or uid) workers run as, without capabilities; a name that does not
    # exist falls back to "nobody" (logged). "root" keeps workers privileged (not advised).
    worker_user: str = "tund"
    # each tunnel's workers run as a uid (and gid) of their own from [worker_uid_base,
    # worker_uid_base + worker_uid_count), numbers no user or group database names; count 0:
    # every worker runs as worker_user (as does a root worker_user, or a non-root daemon).
    worker_uid_base: Annotated[int, Field(ge=1, le=2**32 - 2)] = 2_100_000_000
    worker_uid_count: Annotated[int, Field(ge=0, le=1 << 24)] = 65536

    @field_validator("worker_user")
    @classmethod
    def _worker_user(cls, v: str) -> str:
        if not v or "\0" in v or ":" in v or "/" in v or v != v.strip():
            raise ValueError("must be a user name or a numeric uid")
        if v.isascii() and v.isdigit():
            _resolve_id(int(v), "user")
        return v

    @field_validator("worker_uid_count")
    @classmethod
    def _uid_range(cls, v: int, info: ValidationInfo) -> int:
        base = info.data.get("worker_uid_base")
        if isinstance(base, int) and base + v > 2**32 - 1:
            raise ValueError(f"worker_uid_base + worker_uid_count must be at most "
                             f"{2**32 - 1} (got {base} + {v})")
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v, allow_hostname=False)
        return v

    @field_validator("control_socket")
    @classmethod
    def _abs_socket(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path (starting with /)")
        if len(v.encode("utf-8", "surrogatepass")) > 107:
            raise ValueError("must be at most 107 bytes (the Unix socket path limit)")
        return v

    @field_validator("control_group", "admin_group")
    @classmethod
    def _group_exists(cls, v: str | None) -> str | None:
        if v is not None:
            _resolve_id(v, "group")
        return v


class InterfaceConfig(_Model):
    """``[interfaces.NAME]``: one persistent TUN/TAP device and its addressing."""

    mode: Literal["tun", "tap"]
    owner: str | int | None = None
    group: str | int | None = None
    persist: bool = True
    packet_info: bool = False
    multi_queue: bool = False
    mtu: Mtu | None = None
    txqueuelen: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    addresses: Annotated[tuple[Address, ...], AfterValidator(_no_duplicates("address"))] = ()
    routes: Annotated[tuple[Route, ...], AfterValidator(_no_duplicates("route"))] = ()
    mac: str | None = None
    bridge: str | None = None

    @field_validator("owner", mode="before")
    @classmethod
    def _owner(cls, v: Any) -> str | int:
        return _check_principal(v, "user")

    @field_validator("group", mode="before")
    @classmethod
    def _group(cls, v: Any) -> str | int:
        return _check_principal(v, "group")

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _MAC_RE.match(v):
            raise ValueError("expected six hex octets like 02:00:00:00:00:01")
        if int(v[:2], 16) & 1:
            raise ValueError("must be a unicast address (this one is multicast: the lowest "
                             "bit of the first octet is set; try 02:...)")
        if v.lower() == "00:00:00:00:00:00":
            raise ValueError("must not be all zeros")
        return v.lower()

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v: str | None) -> str | None:
        if v is not None and (why := check_ifname(v)):
            raise ValueError(f"bridge name {why}")
        return v

    @property
    def uid(self) -> int | None:
        """Owner as a numeric uid (resolved now), or None."""
        return None if self.owner is None else _resolve_id(self.owner, "user")

    @property
    def gid(self) -> int | None:
        """Group as a numeric gid (resolved now), or None."""
        return None if self.group is None else _resolve_id(self.group, "group")


class TunnelConfig(_Model):
    """``[tunnels.NAME]``: a relay between an interface and one remote peer."""

    interface: str
    transport: Literal["tcp", "udp"] = "udp"
    listen: str | None = None
    remote: str | None = None
    encryption: Literal["none", "wireguard"] = "wireguard"
    private_key_file: str | None = None
    peer_public_key: str | None = None
    preshared_key_file: str | None = None
    keepalive: Annotated[int, Field(ge=0, le=65535)] = 0
    # Negotiate TSO super-packets with a tund peer (tun mode without packet_info;
    # tund.relay.codec.offload). Over UDP they travel in MTU-sized chunks (tund.relay.codec.chunks),
    # so a lost datagram costs one chunk. Other peers get plain packets. On by default.
    offload: bool = True
    reconnect_min: Seconds = 0.2
    reconnect_max: Seconds = 10.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v, allow_hostname=False)
        return v

    @field_validator("remote")
    @classmethod
    def _remote(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v, allow_hostname=True)
        return v

    @property
    def role(self) -> Literal["listen", "remote"]:
        """``"listen"`` when ``listen`` is set (we wait for the peer), else ``"remote"``."""
        return "listen" if self.listen is not None else "remote"

    @property
    def endpoint(self) -> tuple[str, int]:
        """``(host, port)`` of the listen address or the remote peer."""
        text = self.listen if self.listen is not None else self.remote
        assert text is not None
        return parse_endpoint(text, allow_hostname=self.role == "remote")


class Config(_Model):
    """The whole validated configuration."""

    daemon: DaemonConfig = DaemonConfig()
    interfaces: dict[str, InterfaceConfig] = {}
    tunnels: dict[str, TunnelConfig] = {}

    def tunnel_for(self, interface: str) -> tuple[str, TunnelConfig] | None:
        """The (name, config) of the tunnel using ``interface``, if any."""
        for name, t in self.tunnels.items():
            if t.interface == interface:
                return name, t
        return None


# --------------------------------------------------------------------------- rendering


_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _quote(text: str) -> str:
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
            key = part if _BARE_KEY_RE.match(part) else _quote(part)
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
        return _quote(value if len(value) <= 60 else value[:57] + "...")
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


def _got(value: Any) -> str:
    text = _toml_value(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- locating


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
class _Source:
    """One TOML file's text, parsed data and key lines."""

    name: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int:
        keys = tuple(p for p in path if isinstance(p, str))
        keys = keys[: next((i for i, p in enumerate(path) if isinstance(p, int)), len(path))]
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.lines:
                return self.lines[keys[:n]]
        return 0


class _Locator:
    """Tells which file (and line) defined a key path of the merged config."""

    def __init__(self, sources: list[_Source]) -> None:
        self.sources = sources
        self.owner: dict[tuple[str, ...], _Source] = {}

    def source_of(self, path: KeyPath) -> _Source:
        keys = tuple(str(p) for p in path)
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.owner:
                return self.owner[keys[:n]]
        return self.sources[0] if self.sources else _Source("<config>", "")

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        src = self.source_of(path)
        return ConfigIssue(src.name, src.line_of(path), render_path(path), message)


# --------------------------------------------------------------------------- merging


def _merge(sources: Iterable[_Source], loc: _Locator, issues: list[ConfigIssue]) -> dict[str, Any]:
    """Merge the files' data: tables of named entries and ``[daemon]`` key by key."""
    merged: dict[str, Any] = {}
    for src in sources:
        for top, value in src.data.items():
            if top in merged and isinstance(value, dict) and isinstance(merged[top], dict):
                # interfaces/tunnels merge by name, daemon (and unknown tables) by key.
                for name, body in value.items():
                    if name in merged[top]:
                        first = loc.owner[(top, name)]
                        what = "key" if top == "daemon" else "name"
                        issues.append(ConfigIssue(
                            src.name, src.line_of((top, name)), render_path((top, name)),
                            f"{what} defined twice: first in {first.name}:"
                            f"{first.line_of((top, name))}, again in {src.name}"))
                        continue
                    merged[top][name] = body
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
                    for key in value:
                        loc.owner[(top, key)] = src
    return merged


# --------------------------------------------------------------------------- validation


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
        choices = [_quote(str(c)) for c in get_args(f.annotation)]
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


def _pydantic_issues(err: ValidationError, raw: Mapping[str, Any],
                     loc: _Locator) -> list[ConfigIssue]:
    issues = []
    for e in err.errors(include_url=False):
        # Keep only the loc elements that index into the raw data (drops union tags),
        # plus the offending key itself for unknown and missing keys.
        path = _raw_path(e["loc"], raw, keep_key=e["type"] in ("extra_forbidden", "missing"))
        if e["type"] == "extra_forbidden":
            issues.append(loc.issue(tuple(path), _unknown_key_message(path)))
        elif e["type"] == "missing":
            issues.append(loc.issue(tuple(path), _missing_key_message(path)))
        else:
            issues.append(loc.issue(tuple(path), f"{_message(e)} (got {_got(e['input'])})"))
    return issues


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cross_issues(raw: Mapping[str, Any], loc: _Locator) -> list[ConfigIssue]:
    """Checks across entries, made on the raw data so they run even when types are wrong."""
    issues: list[ConfigIssue] = []
    daemon = raw.get("daemon", {})
    ifaces = raw.get("interfaces", {})
    tunnels = raw.get("tunnels", {})
    daemon = daemon if isinstance(daemon, Mapping) else {}
    ifaces = ifaces if isinstance(ifaces, Mapping) else {}
    tunnels = tunnels if isinstance(tunnels, Mapping) else {}

    bmin, bmax = daemon.get("restart_backoff_min", 0.2), daemon.get("restart_backoff_max", 10.0)
    if _number(bmin) and _number(bmax) and bmin > bmax:
        issues.append(loc.issue(("daemon", "restart_backoff_min"),
                                f"must not exceed restart_backoff_max = {_got(bmax)} "
                                f"(got {_got(bmin)})"))

    for name, body in ifaces.items():
        if why := check_ifname(name):
            issues.append(loc.issue(("interfaces", name),
                                    f"interface name {why} (got {_got(name)})"))
        if isinstance(body, Mapping) and body.get("mode") == "tun":
            for key in ("mac", "bridge"):
                if key in body:
                    issues.append(loc.issue(
                        ("interfaces", name, key),
                        f'only valid with mode = "tap" (this interface is "tun") '
                        f"(got {_got(body[key])})"))

    used: dict[str, str] = {}
    for name, body in tunnels.items():
        if not _TUNNEL_NAME_RE.match(name):
            issues.append(loc.issue(("tunnels", name),
                                    "tunnel name must be 1 to 64 of A-Z a-z 0-9 _ . @ - "
                                    f"(got {_got(name)})"))
        if not isinstance(body, Mapping):
            continue
        issues.extend(_tunnel_issues(name, body, ifaces, used, loc))
    _register_builtin_checks()
    for hook in _EXTRA_CHECKS:
        try:
            issues.extend(hook(raw, loc.issue))
        except Exception as e:  # a bug in a hook must not turn into a traceback for the user
            issues.append(loc.issue((), f"internal error in check {hook.__qualname__}: "
                                        f"{type(e).__name__}: {e}"))
    return issues


def _tunnel_issues(name: str, body: Mapping[str, Any], ifaces: Mapping[str, Any],
                   used: dict[str, str], loc: _Locator) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    iface = body.get("interface")
    if isinstance(iface, str):
        if iface not in ifaces:
            known = (f"expected one of: {', '.join(sorted(ifaces))}" if ifaces
                     else "no [interfaces] are defined")
            issues.append(loc.issue(("tunnels", name, "interface"),
                                    f"no interface of that name ({known}) (got {_got(iface)})"))
        elif iface in used:
            issues.append(loc.issue(("tunnels", name, "interface"),
                                    f"already used by tunnel {_quote(used[iface])} (one tunnel "
                                    f"per interface) (got {_got(iface)})"))
        else:
            used[iface] = name
    has_listen, has_remote = "listen" in body, "remote" in body
    if has_listen and has_remote:
        issues.append(loc.issue(("tunnels", name, "remote"),
                                "set either listen or remote, not both "
                                f"(got listen = {_got(body['listen'])}, "
                                f"remote = {_got(body['remote'])})"))
    elif not has_listen and not has_remote:
        issues.append(loc.issue(("tunnels", name),
                                'needs listen = "ADDRESS:PORT" (wait for the peer) or '
                                'remote = "HOST:PORT" (connect to it); got neither'))
    if body.get("encryption", "wireguard") == "wireguard":
        for key in ("private_key_file", "peer_public_key"):
            if key not in body:
                issues.append(loc.issue(("tunnels", name, key),
                                        'required with encryption = "wireguard" (the '
                                        'default); set encryption = "none" for plaintext'))
    elif body.get("encryption") == "none":
        for key in ("private_key_file", "peer_public_key", "preshared_key_file"):
            if key in body:
                issues.append(loc.issue(("tunnels", name, key),
                                        'only valid with encryption = "wireguard" '
                                        f"(got {_got(body[key])})"))
    rmin, rmax = body.get("reconnect_min", 0.2), body.get("reconnect_max", 10.0)
    if _number(rmin) and _number(rmax) and rmin > rmax:
        issues.append(loc.issue(("tunnels", name, "reconnect_min"),
                                f"must not exceed reconnect_max = {_got(rmax)} "
                                f"(got {_got(rmin)})"))
    return issues


IssueFactory = Callable[[KeyPath, str], ConfigIssue]
#: Further checks registered by other modules (e.g. key files for encryption); each gets the
#: raw merged data and a factory that turns (key path, message) into a located ConfigIssue.
_EXTRA_CHECKS: list[Callable[[Mapping[str, Any], IssueFactory], list[ConfigIssue]]] = []


_builtins_registered = False


def _register_builtin_checks() -> None:
    """Register, once, the checks every load runs: the key-file check of tund.keys (imported
    here, not at the top, so loading config without encryption needs no crypto library)."""
    global _builtins_registered
    if not _builtins_registered:
        from tund.keys import check_tunnel_keys

        register_check(check_tunnel_keys)
        _builtins_registered = True


def register_check(hook: Callable[[Mapping[str, Any], IssueFactory], list[ConfigIssue]]) -> None:
    """Add a cross-entry check run by every load (idempotent per hook).

    The hook gets the raw merged data (types NOT yet validated: check before use) and must
    return issues, not raise; an exception it raises anyway is reported as an issue.
    """
    if hook not in _EXTRA_CHECKS:
        _EXTRA_CHECKS.append(hook)


def _as_tuples(raw: dict[str, Any]) -> None:
    """TOML arrays arrive as lists; the (strict, frozen) models hold tuples."""
    ifaces = raw.get("interfaces")
    if isinstance(ifaces, dict):
        for body in ifaces.values():
            if isinstance(body, dict):
                for k in ("addresses", "routes"):
                    if isinstance(body.get(k), list):
                        body[k] = tuple(body[k])


def _validate(sources: list[_Source], issues: list[ConfigIssue]) -> Config:
    loc = _Locator(sources)
    raw = _merge(sources, loc, issues)
    _as_tuples(raw)
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        issues.extend(_pydantic_issues(err, raw, loc))
    issues.extend(_cross_issues(raw, loc))
    if issues or config is None:
        raise ConfigError(_sorted_unique(issues, [s.name for s in sources]))
    return config


def _sorted_unique(issues: Iterable[ConfigIssue], order: Sequence[str]) -> list[ConfigIssue]:
    """Drop repeated issues; sort by file (in load order), line, key path."""
    rank = {name: i for i, name in enumerate(order)}
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (rank.get(i.file, len(rank)), i.file, i.line, i.path))


# --------------------------------------------------------------------------- parsing


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


def _parse_source(name: str, text: str, issues: list[ConfigIssue]) -> _Source | None:
    src = _Source(name, text)
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
    return src


def _decode(name: str, data: bytes, issues: list[ConfigIssue]) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        issues.append(ConfigIssue(name, line, "",
                                  f"not UTF-8 text: byte 0x{data[e.start]:02x} at column "
                                  f"{column} ({e.reason})"))
        return None


def parse_text(text: str, name: str = "<config>") -> Config:
    """Validate one TOML document held in memory; raise ConfigError listing all issues."""
    issues: list[ConfigIssue] = []
    src = _parse_source(name, text, issues)
    if src is None:
        raise ConfigError(issues)
    return _validate([src], issues)


def config_files(path: Path) -> list[Path]:
    """The main file followed by its drop-ins (``<dir>/tunnels.d/*.toml`` in name order)."""
    dropins = path.parent / (path.stem + ".d")
    extra = sorted(dropins.glob("*.toml")) if dropins.is_dir() else []
    return [path, *extra]


def unsafe_ownership(path: Path, euid: int | None = None) -> str | None:
    """Why ``path`` (a config file) is unsafe for a process of ``euid`` to trust, or None.

    Only a root process checks (a non-root one has no privileges to protect): the file and
    the directory holding it must be owned by root and not writable by group or others
    (a directory with the sticky bit, like /tmp, may be). The reason names the fix.
    """
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    for target, what in ((path, "file"), (path.parent, "directory")):
        try:
            st = target.stat()
        except OSError:
            continue  # reading it reports the problem
        mode = st.st_mode & 0o7777
        if st.st_uid != 0:
            return (f"unsafe: the {what} {target} is owned by uid {st.st_uid}, not root, so "
                    f"that user could change what root runs; chown root {target}")
        sticky_dir = what == "directory" and mode & 0o1000
        if mode & 0o022 and not sticky_dir:
            return (f"unsafe: the {what} {target} is writable by group or others (mode "
                    f"{mode:04o}); chmod go-w {target}")
    return None


def load(path: Path = DEFAULT_CONFIG) -> Config:
    """Read, merge and validate ``path`` and its drop-ins; raise ConfigError listing all issues.

    Run as root, also refuses files that others could change (:func:`unsafe_ownership`).
    """
    issues: list[ConfigIssue] = []
    sources: list[_Source] = []
    for f in config_files(Path(path)):
        if why := unsafe_ownership(f):
            issues.append(ConfigIssue(str(f), 0, "", why))
            continue
        try:
            data = f.read_bytes()
        except OSError as e:
            issues.append(ConfigIssue(str(f), 0, "", f"cannot read: {e.strerror or e}"))
            continue
        text = _decode(str(f), data, issues)
        if text is not None and (src := _parse_source(str(f), text, issues)) is not None:
            sources.append(src)
    if issues:
        raise ConfigError(issues)
    return _validate(sources, issues)


def default_config_path() -> Path:
    """``$TUND_CONFIG`` if set, else /etc/tund/tunnels.toml."""
    return Path(os.environ.get("TUND_CONFIG", str(DEFAULT_CONFIG)))
