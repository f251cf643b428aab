"""What every tundctl command shares: the context, argument parsing without exits,
output, and asking the daemon (errors reported, the exit code returned).

Exit codes: 0 ok; 1 refused or invalid; 2 usage error; 3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from tund.control import client
from tund.control.client import DaemonUnreachable
from tund.ctl import render
from tund.errors import ControlError

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


def out(text: str) -> None:
    if text:
        print(text, file=sys.stdout)


def err(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def colour() -> bool:
    return render.use_colour(sys.stdout)


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting (so main owns exit codes)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", self.format_usage().rstrip())


def make_parser(name: str, description: str, *, daemon: bool = True,
                json_flag: bool = True) -> Parser:
    parser = Parser(prog=f"{PROG} {name}", description=description)
    if daemon:
        parser.add_argument("--socket", metavar="PATH",
                            help="control socket (default: $TUND_CONTROL_SOCKET or "
                                 f"{client.DEFAULT_CONTROL_SOCKET})")
    if json_flag:
        parser.add_argument("--json", action="store_true",
                            help="print the daemon's answer as JSON")
    return parser


def ask(ctx: Context, ns: argparse.Namespace, cmd: str, args: dict[str, Any] | None = None,
         timeout: float = client.DEFAULT_TIMEOUT) -> dict[str, Any] | int:
    """Call the daemon; on failure report it and return the exit code instead."""
    path = client.default_socket_path(getattr(ns, "socket", None) or ctx.socket)
    as_json = getattr(ns, "json", False)
    try:
        return client.call(path, cmd, args, timeout=timeout)
    except DaemonUnreachable as e:
        if as_json:
            out(render.render_json({"ok": False, "error": {"code": e.code, "reason": e.reason,
                                                            "message": str(e)}}))
        err(str(e))
        return EXIT_UNREACHABLE
    except ControlError as e:
        if as_json:
            out(render.render_json({"ok": False, "error": {"code": e.code,
                                                            "message": str(e)}}))
        report_refusal(cmd, e)
        return EXIT_REFUSED


def report_refusal(cmd: str, e: ControlError) -> None:
    lines = str(e).splitlines() or [e.code]
    if e.code == "invalid-config":
        for line in lines:
            print(line, file=sys.stderr)
        err(f"{cmd}: the configuration is invalid; nothing was changed")
        return
    err(f"{cmd}: {lines[0]} ({e.code})")
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (got {text!r})") from None
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be from 0.1 to 86400 seconds (got {text})")
    return value
