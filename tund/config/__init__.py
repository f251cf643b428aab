"""Configuration: ``tunnels.toml`` plus drop-ins -> one validated, frozen :class:`Config`.

Contract:

* :func:`load` reads the main file and ``tunnels.d/*.toml`` (name order), merges them
  (a name defined in two files is an error naming both), validates everything and
  returns a :class:`Config`, or raises :class:`~tund.errors.ConfigError` carrying *every*
  problem at once, each located as ``FILE:LINE: key.path: what is wrong (got VALUE)``.
  File-level problems (unreadable, not UTF-8, not TOML) are reported for every file,
  and then stop: validating the rest would only add noise.
* A relative ``*_file`` path is made absolute against the directory of the file that
  names it (main file or drop-in), never the current directory.
* :func:`parse_text` does the same for in-memory TOML (tests, fuzzers).
* Run as root (the daemon, ``tundctl check`` by root), :func:`load` refuses a file that
  someone else could change (:func:`unsafe_ownership`); one error per file, saying why and
  how to fix it.
* Nothing here touches the kernel or the network; user and group names are resolved
  with the local user database. Further checks (key files) are added with
  :func:`register_check`.
* Nothing raises anything but :class:`~tund.errors.ConfigError` for bad input, whatever
  the bytes (deep nesting, huge integers, invalid UTF-8 included).

Messages say what was expected and, where a value was given, end with ``(got VALUE)``,
the value written the TOML way. Key paths are dotted, with array indices in brackets and
unusual names quoted: ``interfaces."a/b".addresses[0]``.

The package, one concern a module: :mod:`~tund.config.model` (pydantic models),
:mod:`~tund.config.render` (values and key paths as TOML), :mod:`~tund.config.locate`
(key paths -> file and line; merging files), :mod:`~tund.config.messages` (pydantic errors
-> located messages), :mod:`~tund.config.checks` (cross-entry checks, the registry),
:mod:`~tund.config.parse` (TOML text -> validated Config), :mod:`~tund.config.files`
(files, drop-ins, file safety), :mod:`~tund.config.routes` (the routes of peers'
``allowed_ips``).
"""

from __future__ import annotations

from tund.config.checks import IssueFactory, register_check
from tund.config.files import config_files, default_config_path, load, unsafe_ownership
from tund.config.locate import key_lines
from tund.config.model import (
    ANY_PORT,
    DEFAULT_CONFIG,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_PORT,
    IFNAMSIZ,
    Config,
    DaemonConfig,
    InterfaceConfig,
    KeyPath,
    PeerConfig,
    TunnelConfig,
    check_ifname,
    parse_endpoint,
)
from tund.config.parse import parse_text
from tund.config.render import render_path
from tund.config.routes import (
    PeerRoutes,
    effective_interface,
    effective_interfaces,
    peer_routes,
    skipped_default_routes,
)

__all__ = [
    "ANY_PORT",
    "DEFAULT_CONFIG",
    "DEFAULT_CONTROL_SOCKET",
    "DEFAULT_PORT",
    "IFNAMSIZ",
    "Config",
    "DaemonConfig",
    "InterfaceConfig",
    "IssueFactory",
    "KeyPath",
    "PeerConfig",
    "PeerRoutes",
    "TunnelConfig",
    "check_ifname",
    "config_files",
    "default_config_path",
    "effective_interface",
    "effective_interfaces",
    "key_lines",
    "load",
    "parse_endpoint",
    "parse_text",
    "peer_routes",
    "register_check",
    "render_path",
    "skipped_default_routes",
    "unsafe_ownership",
]
