"""Configuration: ``tunnels.toml`` plus drop-ins -> one validated, frozen :class:`Config`.

Contract:

* :func:`load` reads the main file and ``tunnels.d/*.toml`` (name order), merges them
  (a name defined in two files is an error naming both), validates everything and
  returns a :class:`Config`, or raises :class:`~tund.errors.ConfigError` carrying *every*
  problem at once, each located as ``FILE:LINE: key.path: what is wrong (got VALUE)``.
* :func:`parse_text` does the same for in-memory TOML (tests, fuzzers).
* Nothing here touches the kernel or the network; user and group names are resolved
  with the local user database, and key files are read and checked (mode, owner, length).

Models are pydantic v2, ``frozen`` and ``extra="forbid"``; equal configs compare equal,
which is what reload planning relies on.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


# --------------------------------------------------------------------------- helpers


def parse_endpoint(text: str, *, allow_hostname: bool) -> tuple[str, int]:
    """Split ``"host:port"`` / ``"[v6]:port"`` into ``(host, port)``.

    Raises ValueError with a message saying what was expected.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError('expected "[IPv6]:PORT"')
        host, port_s = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError('expected "HOST:PORT" (IPv6 as "[ADDR]:PORT")')
        if ":" in host:
            raise ValueError('an IPv6 address must be written in brackets, as "[ADDR]:PORT"')
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not allow_hostname:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
            if not _HOSTNAME_RE.match(host):
                raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError("port must be a number from 1 to 65535")
    return host, int(port_s)


def check_ifname(name: str) -> str | None:
    """Return why ``name`` is not an interface name the kernel accepts, or None."""
    raw = name.encode()
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
    if value.isdigit():
        return _resolve_id(int(value), kind)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "user" else grp.getgrnam(value).gr_gid
    except KeyError:
        raise ValueError(f"no such {kind} on this system") from None


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Mtu = Annotated[int, Field(ge=68, le=65535)]


class DaemonConfig(_Model):
    """``[daemon]``: process-wide settings."""

    control_socket: str = DEFAULT_CONTROL_SOCKET
    control_group: str | None = None
    admin_group: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # supervision: a crashed worker is restarted after a capped exponential backoff;
    # more than crash_limit crashes within crash_window seconds puts the tunnel in `failed`.
    restart_backoff_min: Annotated[float, Field(gt=0, le=3600)] = 0.2
    restart_backoff_max: Annotated[float, Field(gt=0, le=3600)] = 10.0
    crash_limit: Annotated[int, Field(ge=1, le=10000)] = 10
    crash_window: Annotated[float, Field(gt=0, le=86400)] = 60.0
    # liveness: the daemon pings each worker; no pong within ping_timeout -> killed, replaced.
    ping_interval: Annotated[float, Field(gt=0, le=3600)] = 1.0
    ping_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0

    @field_validator("control_socket")
    @classmethod
    def _abs_socket(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        if len(v.encode()) > 107:
            raise ValueError("is longer than a Unix socket path may be (107 bytes)")
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
    addresses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    mac: str | None = None
    bridge: str | None = None

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            _resolve_id(v, "user")
        return v

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            _resolve_id(v, "group")
        return v

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for i, a in enumerate(v):
            if "/" not in a:
                raise ValueError(f"[{i}] {a!r}: expected ADDRESS/PREFIXLEN")
            try:
                out.append(str(ipaddress.ip_interface(a)))
            except ValueError:
                raise ValueError(f"[{i}] {a!r} is not an IP address with a prefix length") from None
        if len(set(out)) != len(out):
            raise ValueError("lists an address twice")
        return tuple(out)

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for i, r in enumerate(v):
            try:
                out.append(str(ipaddress.ip_network(r, strict=True)))
            except ValueError as e:
                raise ValueError(f"[{i}] {r!r} is not an IP network ({e})") from None
        if len(set(out)) != len(out):
            raise ValueError("lists a route twice")
        return tuple(out)

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _MAC_RE.match(v):
            raise ValueError("expected six hex octets like 02:00:00:00:00:01")
        if int(v[:2], 16) & 1:
            raise ValueError("is a multicast address (lowest bit of the first octet set)")
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
    reconnect_min: Annotated[float, Field(gt=0, le=3600)] = 0.2
    reconnect_max: Annotated[float, Field(gt=0, le=3600)] = 10.0

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


# --------------------------------------------------------------------------- locating


_HEADER_RE = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_KEYPART_RE = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _KEYPART_RE.findall(text))


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every table header and key path in TOML ``text`` to its first line (1-based).

    A line-oriented scan, good enough for locating errors; multi-line strings may
    produce spurious entries but never wrong ones for real keys defined earlier.
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for no, line in enumerate(text.splitlines(), 1):
        if m := _HEADER_RE.match(line):
            table = _split_key(m.group(1))
            lines.setdefault(table, no)
        elif m := _KEY_RE.match(line):
            lines.setdefault(table + _split_key(m.group(1)), no)
    return lines


@dataclass
class _Source:
    """One TOML file's text, parsed data and key lines."""

    name: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def line_of(self, path: tuple[str, ...]) -> int:
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return 0


class _Locator:
    """Tells which file (and line) defined a key path of the merged config."""

    def __init__(self) -> None:
        self.sources: list[_Source] = []
        self.owner: dict[tuple[str, ...], _Source] = {}

    def issue(self, path: tuple[str, ...], message: str) -> ConfigIssue:
        src = None
        for n in range(len(path), 0, -1):
            if path[:n] in self.owner:
                src = self.owner[path[:n]]
                break
        if src is None:
            src = self.sources[0] if self.sources else _Source("<config>", "")
        return ConfigIssue(src.name, src.line_of(path), ".".join(path), message)


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- loading


def _merge(sources: Iterable[_Source], loc: _Locator, issues: list[ConfigIssue]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for src in sources:
        for top, value in src.data.items():
            if top in ("interfaces", "tunnels") and isinstance(value, dict):
                bucket = merged.setdefault(top, {})
                if not isinstance(bucket, dict):
                    continue
                for name, body in value.items():
                    if name in bucket:
                        first = loc.owner[(top, name)]
                        issues.append(ConfigIssue(
                            src.name, src.line_of((top, name)), f"{top}.{name}",
                            f"defined twice: first in {first.name}:{first.line_of((top, name))}, "
                            f"again in {src.name}"))
                        continue
                    bucket[name] = body
                    loc.owner[(top, name)] = src
            elif top == "daemon" and isinstance(value, dict) and isinstance(merged.get(top), dict):
                for key, v in value.items():
                    if key in merged[top]:
                        first = loc.owner[(top, key)]
                        issues.append(ConfigIssue(
                            src.name, src.line_of((top, key)), f"{top}.{key}",
                            f"defined twice: first in {first.name}, again in {src.name}"))
                        continue
                    merged[top][key] = v
                    loc.owner[(top, key)] = src
            elif top in merged:
                issues.append(loc.issue((top,), f"defined twice (again in {src.name})"))
            else:
                merged[top] = dict(value) if isinstance(value, dict) else value
                loc.owner[(top,)] = src
                if isinstance(value, dict):
                    for key in value:
                        loc.owner[(top, key)] = src
    return merged


def _pydantic_issues(err: ValidationError, raw: Mapping[str, Any], loc: _Locator) -> list[ConfigIssue]:
    issues = []
    for e in err.errors(include_url=False):
        # Keep only the loc elements that index into the raw data (drops union tags).
        path: list[str] = []
        node: Any = raw
        for part in e["loc"]:
            if isinstance(node, Mapping) and part in node:
                path.append(str(part))
                node = node[part]
            elif isinstance(node, list | tuple) and isinstance(part, int) and part < len(node):
                path.append(str(part))
                node = node[part]
            elif e["type"] == "extra_forbidden" and isinstance(node, Mapping):
                path.append(str(part))
                node = None
                break
            else:
                break
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            issues.append(loc.issue(tuple(path), msg))
            continue
        if e["type"] == "missing":
            issues.append(loc.issue(tuple(path), "required key is missing"))
            continue
        msg = msg.removeprefix("Value error, ").replace("valid tuple", "array")
        msg = msg.replace("valid dictionary", "table")
        msg = msg[:1].lower() + msg[1:]
        issues.append(loc.issue(tuple(path), f"{msg} (got {_got(e['input'])})"))
    return issues


def _cross_issues(raw: Mapping[str, Any], loc: _Locator) -> list[ConfigIssue]:
    """Checks across entries, made on the raw data so they run even when types are wrong."""
    issues: list[ConfigIssue] = []
    ifaces = raw.get("interfaces", {})
    tunnels = raw.get("tunnels", {})
    if not isinstance(ifaces, Mapping):
        ifaces = {}
    if not isinstance(tunnels, Mapping):
        tunnels = {}
    for name, body in ifaces.items():
        if why := check_ifname(name):
            issues.append(loc.issue(("interfaces", name), f"interface name {why} (got {name!r})"))
        if isinstance(body, Mapping) and body.get("mode") == "tun":
            for key in ("mac", "bridge"):
                if key in body:
                    issues.append(loc.issue(("interfaces", name, key),
                                            f"only valid with mode = \"tap\" (got {_got(body[key])})"))
    used: dict[str, str] = {}
    for name, body in tunnels.items():
        if not _TUNNEL_NAME_RE.match(name):
            issues.append(loc.issue(("tunnels", name),
                                    f"tunnel name must be 1-64 of A-Z a-z 0-9 _ . @ - (got {name!r})"))
        if not isinstance(body, Mapping):
            continue
        iface = body.get("interface")
        if isinstance(iface, str):
            if iface not in ifaces:
                known = ", ".join(sorted(ifaces)) or "none defined"
                issues.append(loc.issue(("tunnels", name, "interface"),
                                        f"no interface of that name (defined: {known}) (got {iface!r})"))
            elif iface in used:
                issues.append(loc.issue(("tunnels", name, "interface"),
                                        f"already used by tunnel {used[iface]!r}; one tunnel per "
                                        f"interface (got {iface!r})"))
            else:
                used[iface] = name
        has_listen, has_remote = "listen" in body, "remote" in body
        if has_listen == has_remote:
            issues.append(loc.issue(("tunnels", name),
                                    "needs exactly one of `listen` or `remote` "
                                    f"(got {'both' if has_listen else 'neither'})"))
        if body.get("encryption", "wireguard") == "wireguard":
            for key in ("private_key_file", "peer_public_key"):
                if key not in body:
                    issues.append(loc.issue(("tunnels", name),
                                            f"encryption \"wireguard\" needs `{key}` "
                                            "(or set encryption = \"none\" for plaintext)"))
        else:
            for key in ("private_key_file", "peer_public_key", "preshared_key_file"):
                if key in body:
                    issues.append(loc.issue(("tunnels", name, key),
                                            f"only valid with encryption = \"wireguard\" "
                                            f"(got {_got(body[key])})"))
        rmin, rmax = body.get("reconnect_min", 0.2), body.get("reconnect_max", 10.0)
        if isinstance(rmin, int | float) and isinstance(rmax, int | float) and rmin > rmax:
            issues.append(loc.issue(("tunnels", name, "reconnect_min"),
                                    f"must not exceed reconnect_max ({rmax}) (got {rmin})"))
    for hook in _EXTRA_CHECKS:
        issues.extend(hook(raw, loc.issue))
    return issues


IssueFactory = Callable[[tuple[str, ...], str], ConfigIssue]
#: Further checks registered by other modules (e.g. key files for encryption); each gets the
#: raw merged data and a factory that turns (key path, message) into a located ConfigIssue.
_EXTRA_CHECKS: list[Callable[[Mapping[str, Any], IssueFactory], list[ConfigIssue]]] = []


def register_check(hook: Callable[[Mapping[str, Any], IssueFactory], list[ConfigIssue]]) -> None:
    """Add a cross-entry check run by every load (idempotent per hook)."""
    if hook not in _EXTRA_CHECKS:
        _EXTRA_CHECKS.append(hook)


def _validate(sources: list[_Source], issues: list[ConfigIssue]) -> Config:
    loc = _Locator()
    loc.sources = sources
    raw = _merge(sources, loc, issues)
    # Numbers written as integers are fine where floats are expected.
    _coerce_floats(raw)
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        issues.extend(_pydantic_issues(err, raw, loc))
    issues.extend(_cross_issues(raw, loc))
    if issues or config is None:
        issues.sort(key=lambda i: (i.file, i.line, i.path))
        raise ConfigError(issues)
    return config


_FLOAT_KEYS = {
    "daemon": {"restart_backoff_min", "restart_backoff_max", "crash_window", "ping_interval",
               "ping_timeout"},
    "tunnels": {"reconnect_min", "reconnect_max"},
}


def _coerce_floats(raw: dict[str, Any]) -> None:
    def fix(body: Any, keys: set[str]) -> None:
        if isinstance(body, dict):
            for k in keys & body.keys():
                if isinstance(body[k], int) and not isinstance(body[k], bool):
                    body[k] = float(body[k])

    fix(raw.get("daemon"), _FLOAT_KEYS["daemon"])
    tunnels = raw.get("tunnels")
    if isinstance(tunnels, dict):
        for body in tunnels.values():
            fix(body, _FLOAT_KEYS["tunnels"])
    # TOML arrays arrive as lists; the models hold tuples.
    ifaces = raw.get("interfaces")
    if isinstance(ifaces, dict):
        for body in ifaces.values():
            if isinstance(body, dict):
                for k in ("addresses", "routes"):
                    if isinstance(body.get(k), list):
                        body[k] = tuple(body[k])


def _parse_source(name: str, text: str, issues: list[ConfigIssue]) -> _Source | None:
    src = _Source(name, text)
    try:
        src.data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        issues.append(ConfigIssue(name, int(m.group(1)) if m else 0, "",
                                  f"not valid TOML: {e}"))
        return None
    except (RecursionError, ValueError) as e:  # tomllib traps: deep nesting, huge integers
        issues.append(ConfigIssue(name, 0, "", f"not valid TOML: {type(e).__name__}: {e}"))
        return None
    src.lines = key_lines(text)
    return src


def parse_text(text: str, name: str = "<config>") -> Config:
    """Validate one TOML document held in memory."""
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


def load(path: Path = DEFAULT_CONFIG) -> Config:
    """Read, merge and validate ``path`` and its drop-ins; raise ConfigError listing all issues."""
    issues: list[ConfigIssue] = []
    sources: list[_Source] = []
    for f in config_files(Path(path)):
        try:
            text = f.read_bytes().decode("utf-8")
        except OSError as e:
            issues.append(ConfigIssue(str(f), 0, "", f"cannot read: {e.strerror or e}"))
            continue
        except UnicodeDecodeError as e:
            issues.append(ConfigIssue(str(f), 0, "", f"not UTF-8 text: {e}"))
            continue
        if (src := _parse_source(str(f), text, issues)) is not None:
            sources.append(src)
    if issues:
        raise ConfigError(issues)
    return _validate(sources, issues)


def default_config_path() -> Path:
    """``$TUND_CONFIG`` if set, else /etc/tund/tunnels.toml."""
    return Path(os.environ.get("TUND_CONFIG", str(DEFAULT_CONFIG)))
