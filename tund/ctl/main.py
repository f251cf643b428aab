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

import sys
from collections.abc import Sequence

from tund.control import client
from tund.ctl.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    PROG,
    Command,
    Context,
    UsageError,
    out,
)
from tund.ctl.config_cmds import cmd_check, cmd_config, cmd_peer_config
from tund.ctl.daemon_cmds import cmd_dump, cmd_reload, cmd_status, tunnel_action
from tund.ctl.import_cmd import cmd_import
from tund.ctl.key_cmds import key_command

__all__ = ["COMMANDS", "EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_USAGE", "main",
           "usage"]


def cmd_peer(ctx: Context, argv: list[str]) -> int:
    """``tundctl peer``: its module (with the configuration's models, 150 ms of imports) is
    imported for it alone, so that ``status`` and ``reload`` start fast."""
    from tund.ctl.peer_cmds import cmd_peer as run

    return run(ctx, argv)


def cmd_help(ctx: Context, argv: list[str]) -> int:
    out(usage())
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command("status", cmd_status, "Show the daemon, its tunnels and interfaces "
            "([TUNNEL] [--json] [--watch [--interval S]])"),
    Command("dump", cmd_dump, "One tab-separated line per tunnel, for scripts ([TUNNEL])"),
    Command("reload", cmd_reload, "Re-read the configuration and apply the difference "
            "([--dry-run] [--json])"),
    Command("up", tunnel_action("up", "Start a stopped tunnel."),
            "Start a stopped tunnel (TUNNEL)"),
    Command("down", tunnel_action("down", "Stop a tunnel (it stays down until `up`)."),
            "Stop a tunnel until `up` (TUNNEL)"),
    Command("restart", tunnel_action("restart", "Restart a tunnel's worker."),
            "Restart a tunnel's worker (TUNNEL)"),
    Command("check", cmd_check, "Validate a configuration offline ([PATH])"),
    Command("config", cmd_config, "Print the effective configuration as TOML "
            "([PATH | --config PATH]; default: the running daemon's)"),
    Command("peer-config", cmd_peer_config, "Print the other end's config of a tunnel "
            "(TUNNEL [PATH | --config PATH] [--endpoint HOST])"),
    Command("peer", cmd_peer, "Enroll and manage a tunnel's clients: add TUNNEL NAME "
            "[--address IP] [--allowed-ips CIDR,...] [--endpoint HOST:PORT] [--dns IP,...] "
            "[--keepalive S] [--psk] [--qr] [--output FILE]; remove|enable|disable TUNNEL NAME"),
    Command("import", cmd_import, "Print a wg-quick file as tund TOML "
            "(FILE.conf [--tunnel NAME] [--interface NAME] [--key-dir DIR])"),
    Command("genkey", key_command("genkey", "generate_private_key",
                                   "Print a new private key (base64)."),
            "Print a new private key"),
    Command("pubkey", key_command("pubkey", "public_key",
                                   "Read a private key on stdin, print its public key."),
            "Read a private key on stdin, print its public key"),
    Command("genpsk", key_command("genpsk", "generate_psk",
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
