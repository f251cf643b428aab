"""``tundctl``: ask the running daemon for status, reloads and tunnel actions.

Usage and behaviour come from :data:`COMMANDS`, a table of (name, function, help).
A bare ``tundctl`` runs ``status``. The control socket is ``--socket PATH``, else
``$TUND_CONTROL_SOCKET``, else /run/tund/control.sock.

Exit codes: 0 ok; 1 refused or invalid (the daemon said no, the config is invalid,
no such tunnel); 2 usage error; 3 the daemon could not be reached (the message says
whether the socket is missing, refused the connection, or is not accessible).

Run as ``tundctl`` (console script) or ``python -m tund.ctl.main``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from tund.control import client
from tund.control.client import DaemonUnreachable
from tund.ctl import render
from tund.errors import ControlError, TundError

PROG = "tundctl"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
RELOAD_TIMEOUT = 120.0


class UsageError(Exception):
    """Bad command line; main prints it with ``usage`` (default: the global one), exits 2."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        self.usage = usage
        super().__init__(message)


@dataclass
class Context:
    """What a command needs besides its own arguments."""

    socket: str | None = None

    @property
    def socket_path(self) -> str:
        return client.default_socket_path(self.socket)


@dataclass(frozen=True)
class Command:
    """One row of the command table: ``run(ctx, argv) -> exit code``."""

    name: str
    run: Callable[[Context, list[str]], int]
    help: str


# --------------------------------------------------------------------------- output


def _out(text: str) -> None:
    if text:
        print(text, file=sys.stdout)


def _err(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _colour() -> bool:
    return render.use_colour(sys.stdout)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting (so main owns exit codes)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", self.format_usage().rstrip())


def _parser(name: str, description: str, *, daemon: bool = True,
            json_flag: bool = True) -> _Parser:
    parser = _Parser(prog=f"{PROG} {name}", description=description)
    if daemon:
        parser.add_argument("--socket", metavar="PATH",
                            help="control socket (default: $TUND_CONTROL_SOCKET or "
                                 f"{client.DEFAULT_CONTROL_SOCKET})")
    if json_flag:
        parser.add_argument("--json", action="store_true",
                            help="print the daemon's answer as JSON")
    return parser


def _ask(ctx: Context, ns: argparse.Namespace, cmd: str, args: dict[str, Any] | None = None,
         timeout: float = client.DEFAULT_TIMEOUT) -> dict[str, Any] | int:
    """Call the daemon; on failure report it and return the exit code instead."""
    path = client.default_socket_path(getattr(ns, "socket", None) or ctx.socket)
    as_json = getattr(ns, "json", False)
    try:
        return client.call(path, cmd, args, timeout=timeout)
    except DaemonUnreachable as e:
        if as_json:
            _out(render.render_json({"ok": False, "error": {"code": e.code, "reason": e.reason,
                                                            "message": str(e)}}))
        _err(str(e))
        return EXIT_UNREACHABLE
    except ControlError as e:
        if as_json:
            _out(render.render_json({"ok": False, "error": {"code": e.code,
                                                            "message": str(e)}}))
        _report_refusal(cmd, e)
        return EXIT_REFUSED


def _report_refusal(cmd: str, e: ControlError) -> None:
    lines = str(e).splitlines() or [e.code]
    if e.code == "invalid-config":
        for line in lines:
            print(line, file=sys.stderr)
        _err(f"{cmd}: the configuration is invalid; nothing was changed")
        return
    _err(f"{cmd}: {lines[0]} ({e.code})")
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)


# --------------------------------------------------------------------------- commands


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (got {text!r})") from None
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be from 0.1 to 86400 seconds (got {text})")
    return value


def _status_once(ctx: Context, ns: argparse.Namespace) -> tuple[int, str]:
    """One status frame: (exit code, text); errors were already reported on stderr."""
    result = _ask(ctx, ns, "status", {"tunnel": ns.tunnel} if ns.tunnel else None)
    if isinstance(result, int):
        return result, ""
    if ns.json:
        return EXIT_OK, render.render_json(result)
    try:
        return EXIT_OK, render.render_status(result, colour=_colour(), tunnel=ns.tunnel)
    except KeyError:
        _err(f"status: no tunnel named {ns.tunnel!r}")
        return EXIT_REFUSED, ""


def _watch(ctx: Context, ns: argparse.Namespace) -> int:
    """Refresh every ``ns.interval`` s until Ctrl-C (or ``ns.count`` frames); on a tty the
    screen is cleared for each frame, elsewhere frames follow each other under a header."""
    tty = sys.stdout.isatty()
    code, frames = EXIT_OK, 0
    try:
        while ns.count is None or frames < ns.count:
            if frames:
                time.sleep(ns.interval)
            code, text = _status_once(ctx, ns)
            header = render.watch_header(ns.interval, time.time())
            prefix = render.CLEAR if tty else ("\n" if frames else "")
            sys.stdout.write(f"{prefix}{header}\n\n{text}\n")
            sys.stdout.flush()
            frames += 1
    except KeyboardInterrupt:
        return EXIT_OK
    return code


def cmd_status(ctx: Context, argv: list[str]) -> int:
    parser = _parser("status", "Show the daemon, its tunnels and interfaces.")
    parser.add_argument("tunnel", nargs="?", help="show only this tunnel")
    parser.add_argument("--watch", action="store_true",
                        help="refresh in place until Ctrl-C")
    parser.add_argument("--interval", type=_positive, default=2.0, metavar="S",
                        help="seconds between refreshes with --watch (default 2)")
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="with --watch: stop after N refreshes")
    ns = parser.parse_args(argv)
    if ns.count is not None and ns.count < 1:
        parser.error(f"--count must be at least 1 (got {ns.count})")
    if ns.watch:
        return _watch(ctx, ns)
    code, text = _status_once(ctx, ns)
    _out(text)
    return code


def cmd_dump(ctx: Context, argv: list[str]) -> int:
    parser = _parser("dump", "One tab-separated line per tunnel, for scripts: "
                     + " ".join(render.DUMP_COLUMNS) + ". Empty fields are (none), "
                     "numbers and times 0, no encryption off.", json_flag=False)
    parser.add_argument("tunnel", nargs="?", help="only this tunnel")
    ns = parser.parse_args(argv)
    result = _ask(ctx, ns, "status", {"tunnel": ns.tunnel} if ns.tunnel else None)
    if isinstance(result, int):
        return result
    try:
        _out(render.render_dump(result, tunnel=ns.tunnel))
    except KeyError:
        _err(f"dump: no tunnel named {ns.tunnel!r}")
        return EXIT_REFUSED
    return EXIT_OK


def cmd_reload(ctx: Context, argv: list[str]) -> int:
    parser = _parser("reload", "Re-read the configuration and apply the difference.")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and show what would change, change nothing")
    ns = parser.parse_args(argv)
    result = _ask(ctx, ns, "reload", {"dry_run": True} if ns.dry_run else None,
                  timeout=RELOAD_TIMEOUT)
    if isinstance(result, int):
        return result
    _out(render.render_json(result) if ns.json else render.render_reload(result,
                                                                         colour=_colour()))
    return EXIT_OK


def _tunnel_action(name: str, description: str) -> Callable[[Context, list[str]], int]:
    def run(ctx: Context, argv: list[str]) -> int:
        parser = _parser(name, description)
        parser.add_argument("tunnel", help="tunnel name")
        ns = parser.parse_args(argv)
        result = _ask(ctx, ns, name, {"tunnel": ns.tunnel}, timeout=RELOAD_TIMEOUT)
        if isinstance(result, int):
            return result
        _out(render.render_json(result) if ns.json
             else render.render_action(name, ns.tunnel, result, colour=_colour()))
        return EXIT_OK

    run.__name__ = f"cmd_{name}"
    return run


_PATH_HELP = "config file (default: $TUND_CONFIG or /etc/tund/tunnels.toml)"
_DAEMON_PATH_HELP = ("config file (default: --config, else $TUND_CONFIG, else the one the "
                     "running daemon reads, else /etc/tund/tunnels.toml)")


def daemon_config_path(ctx: Context, ns: argparse.Namespace) -> Path | None:
    """The main config file of the daemon on the control socket (its ``status`` reply's
    ``daemon.config``), or None when no daemon answers or it does not say."""
    path = client.default_socket_path(getattr(ns, "socket", None) or ctx.socket)
    try:
        reply = client.call(path, "status")
    except (DaemonUnreachable, ControlError, TundError, OSError, ValueError):
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
        _err(f"{name}: {path}: {_count(len(e.issues), 'problem')}")
    except TundError as e:
        _err(f"{name}: {path}: {e}")
    except Exception as e:  # a bug in a validator must still not print a traceback
        _err(f"{name}: {path}: validation failed unexpectedly: {type(e).__name__}: {e}")
    return EXIT_REFUSED


def cmd_check(ctx: Context, argv: list[str]) -> int:
    parser = _parser("check", "Validate a configuration file offline (no daemon needed).",
                     daemon=False, json_flag=False)
    parser.add_argument("path", nargs="?", help=_PATH_HELP)
    ns = parser.parse_args(argv)
    from tund import config

    loaded = _load_config("check", ns.path)
    if isinstance(loaded, int):
        return loaded
    path, cfg = loaded
    files = config.config_files(path)
    extra = f" + {_count(len(files) - 1, 'drop-in')}" if len(files) > 1 else ""
    _out(f"{path}{extra}: ok ({_count(len(cfg.interfaces), 'interface')}, "
         f"{_count(len(cfg.tunnels), 'tunnel')})")
    return EXIT_OK


def cmd_config(ctx: Context, argv: list[str]) -> int:
    parser = _parser("config", "Print the effective configuration as TOML: drop-ins merged, "
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
    parser = _parser("peer-config", "Print the TOML the other end of TUNNEL needs: listen "
                     "and remote swapped, addresses mirrored, this end's public key (from "
                     "the running daemon's config unless PATH or --config names one).",
                     json_flag=False)
    parser.add_argument("tunnel", help="tunnel name")
    parser.add_argument("path", nargs="?", help=_DAEMON_PATH_HELP)
    parser.add_argument("--config", metavar="PATH", help="config file (as PATH)")
    parser.add_argument("--endpoint", metavar="HOST",
                        help="this host's address or name as the peer reaches it (for a "
                             "tunnel that listens on 0.0.0.0 or [::])")
    ns = parser.parse_args(argv)
    from tund.ctl import confout

    loaded = _load_config("peer-config", config_path_for(ctx, ns))
    if isinstance(loaded, int):
        return loaded
    _path, cfg = loaded
    if ns.tunnel not in cfg.tunnels:
        known = ", ".join(sorted(cfg.tunnels)) or "none"
        _err(f"peer-config: no tunnel named {ns.tunnel!r} (configured: {known})")
        return EXIT_REFUSED
    t = cfg.tunnels[ns.tunnel]
    pub, why = (_own_public_key(t.private_key_file) if t.encryption == "wireguard"
                else (None, ""))
    if why:
        _err(f"peer-config: {why}; the output has a placeholder for this host's public key")
    try:
        text = confout.peer_toml(cfg, ns.tunnel, endpoint=ns.endpoint, public_key=pub,
                                 key_hint=why)
    except ValueError as e:
        _err(f"peer-config: {e}")
        return EXIT_REFUSED
    sys.stdout.write(text)
    return EXIT_OK


def _keys_function(name: str) -> Callable[..., str] | None:
    """``tund.keys.<name>``, imported late; None (after saying why) if unavailable."""
    try:
        keys = importlib.import_module("tund.keys")
    except ImportError as e:
        _err(f"key commands are not available: cannot import tund.keys ({e})")
        return None
    fn = getattr(keys, name, None)
    if not callable(fn):
        _err(f"key commands are not available: tund.keys has no {name}()")
        return None
    return fn  # type: ignore[no-any-return]  # checked callable; returns str by contract


def _key_command(name: str, function: str, description: str) -> Callable[[Context, list[str]],
                                                                          int]:
    def run(ctx: Context, argv: list[str]) -> int:
        _parser(name, description, daemon=False, json_flag=False).parse_args(argv)
        fn = _keys_function(function)
        if fn is None:
            return EXIT_REFUSED
        try:
            key = fn(sys.stdin.read().strip()) if function == "public_key" else fn()
        except (ValueError, TundError) as e:
            _err(f"{name}: {e}")
            return EXIT_REFUSED
        _out(key)
        return EXIT_OK

    run.__name__ = f"cmd_{name}"
    return run


def cmd_help(ctx: Context, argv: list[str]) -> int:
    _out(usage())
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command("status", cmd_status, "Show the daemon, its tunnels and interfaces "
            "([TUNNEL] [--json] [--watch [--interval S]])"),
    Command("dump", cmd_dump, "One tab-separated line per tunnel, for scripts ([TUNNEL])"),
    Command("reload", cmd_reload, "Re-read the configuration and apply the difference "
            "([--dry-run] [--json])"),
    Command("up", _tunnel_action("up", "Start a stopped tunnel."),
            "Start a stopped tunnel (TUNNEL)"),
    Command("down", _tunnel_action("down", "Stop a tunnel (it stays down until `up`)."),
            "Stop a tunnel until `up` (TUNNEL)"),
    Command("restart", _tunnel_action("restart", "Restart a tunnel's worker."),
            "Restart a tunnel's worker (TUNNEL)"),
    Command("check", cmd_check, "Validate a configuration offline ([PATH])"),
    Command("config", cmd_config, "Print the effective configuration as TOML "
            "([PATH | --config PATH]; default: the running daemon's)"),
    Command("peer-config", cmd_peer_config, "Print the other end's config of a tunnel "
            "(TUNNEL [PATH | --config PATH] [--endpoint HOST])"),
    Command("genkey", _key_command("genkey", "generate_private_key",
                                   "Print a new private key (base64)."),
            "Print a new private key"),
    Command("pubkey", _key_command("pubkey", "public_key",
                                   "Read a private key on stdin, print its public key."),
            "Read a private key on stdin, print its public key"),
    Command("genpsk", _key_command("genpsk", "generate_psk",
                                   "Print a new preshared key (base64)."),
            "Print a new preshared key"),
    Command("help", cmd_help, "Show this help"),
)


def usage() -> str:
    """The usage text, generated from :data:`COMMANDS`."""
    width = max(len(c.name) for c in COMMANDS)
    lines = [f"Usage: {PROG} [--socket PATH] [<command> [<args>]]", "",
             f"Commands (a bare `{PROG}` runs `status`):"]
    lines += [f"  {c.name:<{width}}  {c.help}" for c in COMMANDS]
    lines += ["", f"`{PROG} <command> --help` shows a command's options.",
              f"The control socket is --socket PATH, else $TUND_CONTROL_SOCKET, else "
              f"{client.DEFAULT_CONTROL_SOCKET}.",
              "",
              "Exit status:",
              "  0  ok",
              "  1  refused or invalid: the daemon said no, the configuration is invalid,",
              "     no such tunnel",
              "  2  usage error",
              "  3  the daemon could not be reached: no socket (not running), stale socket,",
              "     permission denied (not root nor in the control group), no answer",
              "",
              "Colour only on a terminal; TUND_COLOR=always|never or NO_COLOR override."]
    return "\n".join(lines)


def _split_global(argv: list[str]) -> tuple[Context, list[str]]:
    """Take the options before the command name (only --socket and --help)."""
    ctx = Context()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg == "--socket":
            if i + 1 >= len(argv):
                raise UsageError("--socket needs a PATH")
            ctx.socket = argv[i + 1]
            i += 2
        elif arg.startswith("--socket="):
            ctx.socket = arg.split("=", 1)[1]
            i += 1
        elif arg in ("-h", "--help"):
            return ctx, ["help"]
        elif arg == "--json":  # `tundctl --json` = `tundctl status --json`
            return ctx, ["status", *argv[i:]]
        else:
            raise UsageError(f"unknown option {arg!r}")
    return ctx, argv[i:]


def main(argv: Sequence[str] | None = None) -> int:
    """Run tundctl with ``argv`` (default: sys.argv[1:]); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        ctx, rest = _split_global(args)
        name, cmd_args = (rest[0], rest[1:]) if rest else ("status", [])
        table = {c.name: c for c in COMMANDS}
        if name not in table:
            raise UsageError(f"unknown command {name!r}")
        return table[name].run(ctx, cmd_args)
    except UsageError as e:
        text = str(e)
        print(text if text.startswith(PROG) else f"{PROG}: {text}", file=sys.stderr)
        print(e.usage or f"\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # argparse --help exits 0 after printing
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
