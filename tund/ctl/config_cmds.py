"""tundctl commands on configuration files: check, config, peer-config. They read the
files themselves (pydantic is imported only here, late); ``config`` and ``peer-config``
default to the file of the daemon on the control socket."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tund.control import client
from tund.control.client import DaemonUnreachable
from tund.ctl.common import EXIT_OK, EXIT_REFUSED, Context, count, err, make_parser, out
from tund.errors import ControlError, TundError

_PATH_HELP = "config file (default: $TUND_CONFIG or /etc/tund/tunnels.toml)"
_DAEMON_PATH_HELP = ("config file (default: --config, else $TUND_CONFIG, else the one the "
                     "running daemon reads, else /etc/tund/tunnels.toml)")


def daemon_config_path(ctx: Context, ns: argparse.Namespace) -> Path | None:
    """The main config file of the daemon on the control socket (its ``status`` reply's
    ``daemon.config``), or None when no daemon answers or it does not say. When the socket
    was named (``--socket``) and cannot be asked, a note on stderr says so."""
    named = getattr(ns, "socket", None) or ctx.socket
    path = client.default_socket_path(named)
    try:
        reply = client.call(path, "status")
    except (DaemonUnreachable, ControlError, TundError, OSError, ValueError) as e:
        if named:
            err(f"note: cannot ask the daemon on {path} for its configuration ({e}); "
                 "reading the default")
        return None
    daemon = reply.get("daemon") if isinstance(reply, dict) else None
    found = daemon.get("config") if isinstance(daemon, dict) else None
    return Path(found) if isinstance(found, str) and found else None


def config_path_for(ctx: Context, ns: argparse.Namespace) -> Path | None:
    """Which file ``config`` / ``peer-config`` read: ``PATH``, ``--config``,
    ``$TUND_CONFIG``, the running daemon's, else None (the default)."""
    import os

    explicit = getattr(ns, "path", None) or getattr(ns, "config", None)
    if explicit:
        return Path(explicit)
    if os.environ.get("TUND_CONFIG"):
        return Path(os.environ["TUND_CONFIG"])
    return daemon_config_path(ctx, ns)


def _load_config(name: str, path_arg: str | Path | None) -> tuple[Path, Any] | int:
    """Load and validate offline: (path, Config), or report every problem and return 1."""
    from tund import config  # late: pydantic is not needed by the daemon commands
    from tund.errors import ConfigError

    path = Path(path_arg) if path_arg else config.default_config_path()
    try:
        return path, config.load(path)
    except ConfigError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        err(f"{name}: {path}: {count(len(e.issues), 'problem')}")
    except TundError as e:
        err(f"{name}: {path}: {e}")
    except Exception as e:  # a bug in a validator must still not print a traceback
        err(f"{name}: {path}: validation failed unexpectedly: {type(e).__name__}: {e}")
    return EXIT_REFUSED


def cmd_check(ctx: Context, argv: list[str]) -> int:
    parser = make_parser("check", "Validate a configuration file offline (no daemon needed).",
                     daemon=False, json_flag=False)
    parser.add_argument("path", nargs="?", help=_PATH_HELP)
    ns = parser.parse_args(argv)
    from tund import config

    loaded = _load_config("check", ns.path)
    if isinstance(loaded, int):
        return loaded
    path, cfg = loaded
    files = config.config_files(path)
    extra = f" + {count(len(files) - 1, 'drop-in')}" if len(files) > 1 else ""
    peers = sum(len(t.peers) for t in cfg.tunnels.values() if t.peers is not None)
    with_peers = f", {count(peers, 'peer')}" if any(
        t.peers is not None for t in cfg.tunnels.values()) else ""
    out(f"{path}{extra}: ok ({count(len(cfg.interfaces), 'interface')}, "
        f"{count(len(cfg.tunnels), 'tunnel')}{with_peers})")
    return EXIT_OK


def cmd_config(ctx: Context, argv: list[str]) -> int:
    parser = make_parser("config", "Print the effective configuration as TOML: drop-ins merged, "
                     "defaults filled in (from the files, like `check`; by default those of "
                     "the running daemon). Key files are named, never read.", json_flag=False)
    parser.add_argument("path", nargs="?", help=_DAEMON_PATH_HELP)
    parser.add_argument("--config", metavar="PATH", help="config file (as PATH)")
    ns = parser.parse_args(argv)
    from tund import config
    from tund.ctl import confout

    loaded = _load_config("config", config_path_for(ctx, ns))
    if isinstance(loaded, int):
        return loaded
    path, cfg = loaded
    sys.stdout.write(confout.effective_toml(cfg, [str(f) for f in config.config_files(path)]))
    return EXIT_OK


def _own_public_key(private_key_file: str | None) -> tuple[str | None, str]:
    """This end's public key from its private key file, or (None, why not)."""
    if not private_key_file:
        return None, "no private_key_file"
    try:
        import base64

        from tund import keys

        private = base64.b64encode(keys.load_private_key_file(private_key_file)).decode()
        return keys.public_key(private), ""
    except (OSError, ValueError, TundError) as e:
        return None, str(e)


def cmd_peer_config(ctx: Context, argv: list[str]) -> int:
    parser = make_parser("peer-config", "Print the config the other end of TUNNEL needs "
                     "(--format tund: TOML, listen and remote swapped, addresses mirrored, "
                     "this end's public key), or the client config of its PEER, or with "
                     "--format wg-quick the same in wg-quick format (for a tunnel with peers "
                     "and no PEER: this host's own side). From the running daemon's config "
                     "unless PATH or --config names one.", json_flag=False)
    parser.add_argument("tunnel", help="tunnel name")
    parser.add_argument("rest", nargs="*", metavar="PEER | PATH",
                        help="a peer of the tunnel and/or a config file (one with / or .toml)")
    parser.add_argument("--config", metavar="PATH", help="config file (as PATH)")
    parser.add_argument("--endpoint", metavar="HOST",
                        help="this host's address or name as the peer reaches it (for a "
                             "tunnel that listens on 0.0.0.0 or [::])")
    parser.add_argument("--format", choices=("tund", "wg-quick"), default="tund",
                        help="tund TOML (default) or wg-quick")
    parser.add_argument("--qr", action="store_true", help="as a QR code (wg-quick)")
    ns = parser.parse_args(argv)
    ns.path, ns.peer = _peer_or_path(parser, ns.rest)
    loaded = _load_config("peer-config", config_path_for(ctx, ns))
    if isinstance(loaded, int):
        return loaded
    _path, cfg = loaded
    if ns.tunnel not in cfg.tunnels:
        known = ", ".join(sorted(cfg.tunnels)) or "none"
        err(f"peer-config: no tunnel named {ns.tunnel!r} (configured: {known})")
        return EXIT_REFUSED
    t = cfg.tunnels[ns.tunnel]
    if ns.peer is not None and ns.peer not in (t.peers or {}):
        known = ", ".join(sorted(t.peers or {})) or "none"
        err(f"peer-config: tunnel {ns.tunnel!r} has no peer {ns.peer!r} (peers: {known})")
        return EXIT_REFUSED
    pub, why = (_own_public_key(t.private_key_file) if t.encryption == "wireguard"
                else (None, ""))
    if why:
        err(f"peer-config: {why}; the output has a placeholder for this host's public key")
    try:
        text = _peer_config_text(cfg, ns, pub, why)
    except ValueError as e:
        err(f"peer-config: {e}")
        return EXIT_REFUSED
    if ns.qr:
        from tund.ctl.qr import terminal

        sys.stdout.write(terminal(text))
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _peer_or_path(parser: Any, rest: list[str]) -> tuple[str | None, str | None]:
    """Split the words after TUNNEL into (PATH, PEER): a word with ``/`` or ending in
    ``.toml`` is the config file, another the peer."""
    path = peer = None
    for word in rest:
        if "/" in word or word.endswith(".toml"):
            if path is not None:
                parser.error(f"two config files given ({path!r}, {word!r})")
            path = word
        else:
            if peer is not None:
                parser.error(f"two peers given ({peer!r}, {word!r})")
            peer = word
    return path, peer


def _peer_config_text(cfg: Any, ns: argparse.Namespace, pub: str | None, why: str) -> str:
    """The text ``peer-config`` prints (notes for stderr printed here)."""
    from tund.ctl import confout, wgconf

    t = cfg.tunnels[ns.tunnel]
    if ns.format == "tund":
        if ns.peer is not None:
            raise ValueError(f"the config of peer {ns.peer!r} comes in wg-quick format: "
                             "add --format wg-quick")
        return confout.peer_toml(cfg, ns.tunnel, endpoint=ns.endpoint, public_key=pub,
                                 key_hint=why)
    if ns.peer is not None:
        res = wgconf.peer_client(cfg, ns.tunnel, ns.peer, endpoint=ns.endpoint,
                                 server_public_key=pub)
    elif t.peers is not None:
        res = wgconf.own(cfg, ns.tunnel)
    else:
        res = wgconf.other_end(cfg, ns.tunnel, endpoint=ns.endpoint, public_key=pub)
    for note in res.notes:
        err(f"peer-config: note: {note}")
    return res.text
