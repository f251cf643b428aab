"""The configuration's pydantic models and the value checks they use.

Contract: models are ``frozen``, ``strict`` and ``extra="forbid"``; equal configs compare
equal (reload planning relies on it). A field validator raises ValueError with what was
expected, never the value (messages add ``(got VALUE)``). User and group names are
resolved with the local user database (:func:`resolve_id`), nothing else is looked up.

Size: one schema, read as the file nests: the five models and the value checks their
validators call (locating keys, messages and cross-entry checks are already modules of their
own).
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from tund.config.nets import network
from tund.config.render import quote

DEFAULT_CONFIG = Path("/etc/tund/tunnels.toml")
DEFAULT_CONTROL_SOCKET = "/run/tund/control.sock"
DEFAULT_PORT = 55555
IFNAMSIZ = 16  # the kernel's limit includes the trailing NUL: names are at most 15 bytes

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_IFNAME_BAD = re.compile(r"[\s/:]")
TUNNEL_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")

KeyPath = tuple[str | int, ...]


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
            raise ValueError(f"{quote(host)} in brackets is not an IPv6 address") from None
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
                raise ValueError(f"{quote(host)} is not an IP address; a listen address "
                                 f"cannot be a host name (expected {form})") from None
            if not _HOSTNAME_RE.match(host):
                raise ValueError(f"{quote(host)} is neither an IP address nor a host name"
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


def resolve_id(value: str | int, kind: Literal["user", "group"]) -> int:
    if isinstance(value, int):
        if not 0 <= value < 2**32 - 1:
            raise ValueError(f"{kind} id must be from 0 to 4294967294")
        return value
    if value.isascii() and value.isdigit():
        return resolve_id(int(value), kind)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "user" else grp.getgrnam(value).gr_gid
    except (KeyError, ValueError):  # ValueError: embedded NUL
        raise ValueError(f"no such {kind} on this system") from None


def _check_principal(value: Any, kind: Literal["user", "group"]) -> str | int:
    """Before-validator for owner/group: a name or a numeric id that exists/is in range."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a {kind} name (string) or a numeric {kind[0]}id")
    resolve_id(value, kind)
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
        return str(network(r))
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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _check_command(c: tuple[str, ...]) -> tuple[str, ...]:
    if not c:
        raise ValueError("a command must not be empty (expected [\"PROGRAM\", \"ARG\", ...])")
    if any("\0" in a for a in c):
        raise ValueError("an argument must not contain a NUL byte")
    return c


def _check_dns(v: str) -> str:
    """A name server address, or a search domain (``~`` prefix: a routing-only domain)."""
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        pass
    name = v[1:] if v.startswith("~") else v
    if name in ("", ".") and v.startswith("~"):
        return v
    if not _HOSTNAME_RE.match(name.rstrip(".")):
        raise ValueError("each entry must be an IP address (a name server) or a domain name "
                         "(a search domain; ~DOMAIN: a routing-only domain)")
    return v


Mtu = Annotated[int, Field(ge=68, le=65535)]
#: one hook: argv strings, ``%i`` expanded to the interface name (tund.netdev.hooks)
Command = Annotated[tuple[str, ...], AfterValidator(_check_command)]
Commands = tuple[Command, ...]
#: the hook keys of ``[interfaces.X]``, in the order an interface's life runs them
HOOK_PHASES = ("pre_up", "post_up", "pre_down", "post_down")
DnsEntry = Annotated[str, AfterValidator(_check_dns)]
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
    # the user (name or uid) workers run as, without capabilities; one that does not exist
    # stops the daemon from starting (no fallback to the shared "nobody"; "nobody" set
    # here is allowed, with a warning). "root" keeps workers privileged (not advised).
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
            resolve_id(int(v), "user")
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
            resolve_id(v, "group")
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
    # hooks, run by the daemon as root (tund.netdev.hooks): pre_up before the device is
    # created (a failure keeps the interface down), post_up after it is configured,
    # pre_down / post_down before and after it is removed (also at daemon stop)
    pre_up: Commands = ()
    post_up: Commands = ()
    pre_down: Commands = ()
    post_down: Commands = ()
    hook_timeout: Seconds = 30.0  # a hook still running after this long is killed
    # where the routes of `routes` and of the peers' allowed_ips go: "auto" the main table,
    # but a default route (0.0.0.0/0, ::/0) the wg-quick way (tund.netdev.policy); "off"
    # no routes at all; N that table (1 to 4294967295)
    table: Literal["auto", "off"] | Annotated[int, Field(ge=1, le=2**32 - 1)] = "auto"
    # name servers and search domains for this link (tund.netdev.dns: resolvectl/resolvconf)
    dns: Annotated[tuple[DnsEntry, ...], AfterValidator(_no_duplicates("entry"))] = ()

    @field_validator("owner", mode="before")
    @classmethod
    def _owner(cls, v: Any) -> str | int:
        return _check_principal(v, "user")

    @field_validator("group", mode="before")
    @classmethod
    def _group(cls, v: Any) -> str | int:
        return _check_principal(v, "group")

    @field_validator("table")
    @classmethod
    def _table(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v in (253, 254, 255):
            raise ValueError('must not be 253, 254 or 255 (the kernel\'s default, main and '
                             'local tables; "auto" routes into main)')
        return v

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
        return None if self.owner is None else resolve_id(self.owner, "user")

    @property
    def gid(self) -> int | None:
        """Group as a numeric gid (resolved now), or None."""
        return None if self.group is None else resolve_id(self.group, "group")


class PeerConfig(_Model):
    """``[tunnels.T.peers.NAME]``: one of several WireGuard peers of a tunnel.

    ``public_key`` (base64 of 32 bytes) is checked with the key files (``tund.keys``);
    ``allowed_ips`` are networks without host bits; ``endpoint`` is parsed like ``remote``.
    Checks across peers (one key per peer, no overlapping prefixes) are in
    :mod:`tund.config.checks` and :func:`tund.keys.check_tunnel_keys`.
    """

    public_key: str
    allowed_ips: Annotated[tuple[Route, ...], AfterValidator(_no_duplicates("prefix"))] = ()
    endpoint: str | None = None
    preshared_key_file: str | None = None
    keepalive: Annotated[int, Field(ge=0, le=65535)] = 0
    enabled: bool = True

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v, allow_hostname=True)
        return v

    @property
    def endpoint_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of ``endpoint``, or None for a roaming peer."""
        return None if self.endpoint is None else parse_endpoint(self.endpoint,
                                                                 allow_hostname=True)


#: Where a tunnel with ``peers`` and no ``listen`` binds: all IPv4 addresses, a port the
#: kernel picks (its peers with an ``endpoint`` are contacted from it).
ANY_PORT = ("0.0.0.0", 0)


class TunnelConfig(_Model):
    """``[tunnels.NAME]``: a relay between an interface and one remote peer (``listen`` or
    ``remote`` with ``peer_public_key``), or several (``peers``, WireGuard over UDP)."""

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
    # listeners only: networks ("198.51.100.0/24", "2001:db8::/32") the underlay takes
    # traffic from (TCP: on accept; UDP: on receive, before any decryption); () = any
    allowed_sources: Annotated[tuple[Route, ...],
                               AfterValidator(_no_duplicates("network"))] = ()
    # None: the single-peer form; a table (possibly empty): peers by name (issue 17)
    peers: dict[str, PeerConfig] | None = None
    # "HOST:PORT" clients reach this listener at (behind NAT, a name); the Endpoint that
    # `tundctl peer add` / `peer-config --format wg-quick` write when --endpoint is not given
    public_endpoint: str | None = None
    # SO_MARK of the underlay socket (0: none), set by the daemon, which makes it (listen,
    # peers, or remote over UDP); tund.config.checks refuses it on a remote TCP tunnel
    fwmark: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v, allow_hostname=False)
        return v

    @field_validator("remote", "public_endpoint")
    @classmethod
    def _remote(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v, allow_hostname=True)
        return v

    @property
    def role(self) -> Literal["listen", "remote"]:
        """``"listen"`` when ``listen`` is set (we wait for the peer) or the tunnel has
        ``peers`` (one bound socket serves them all), else ``"remote"``."""
        return "listen" if self.listen is not None or self.peers is not None else "remote"

    @property
    def endpoint(self) -> tuple[str, int]:
        """``(host, port)`` of the listen address or the remote peer; with ``peers`` and no
        ``listen``: :data:`ANY_PORT` (``("0.0.0.0", 0)``, the kernel picks the port)."""
        if self.listen is None and self.peers is not None:
            return ANY_PORT
        text = self.listen if self.listen is not None else self.remote
        assert text is not None
        return parse_endpoint(text, allow_hostname=self.role == "remote")

    @property
    def endpoint_text(self) -> str:
        """``listen`` or ``remote`` as written; ``"0.0.0.0:0"`` for a tunnel with ``peers``
        and no ``listen`` (for status: always a string)."""
        text = self.listen if self.listen is not None else self.remote
        return text if text is not None else "{}:{}".format(*ANY_PORT)

    @property
    def enabled_peers(self) -> dict[str, PeerConfig]:
        """The peers with ``enabled = true`` (none for the single-peer form)."""
        return {n: p for n, p in (self.peers or {}).items() if p.enabled}


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
