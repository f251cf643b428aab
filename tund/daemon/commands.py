"""The control commands: name -> handler and the right it needs (see tund.control.auth).

Contract: :data:`COMMANDS` is the table; :func:`authorized` looks a command up and checks
the peer's right against a :class:`~tund.control.auth.Policy` (a refusal is logged with the
peer's uid and pid); the caller runs the handler it returns on the engine. Arguments are
checked by the handlers: a wrong one raises :class:`BadRequest` naming it; an unknown
command raises :class:`UnknownCommand`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tund.control import auth
from tund.control.server import PeerCred
from tund.errors import ErrorCode, TundError

if TYPE_CHECKING:
    from tund.daemon.engine import Engine

log = logging.getLogger("tund.daemon.commands")

Handler = Callable[["Engine", dict[str, Any]], Awaitable[dict[str, Any]]]


class BadRequest(TundError):
    code = ErrorCode.BAD_REQUEST


class UnknownCommand(TundError):
    code = ErrorCode.UNKNOWN_COMMAND


def _tunnel_arg(args: dict[str, Any]) -> str:
    name = args.get("tunnel")
    if not isinstance(name, str) or not name:
        raise BadRequest("this command needs a tunnel name (args.tunnel)")
    return name


def _opt_tunnel_arg(args: dict[str, Any]) -> str | None:
    """``args.tunnel`` when given (a non-empty string), else None (all tunnels)."""
    name = args.get("tunnel")
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise BadRequest(f"args.tunnel must be a tunnel name (a string), "
                         f"not {type(name).__name__}")
    return name


def _flag_arg(args: dict[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"args.{key} must be true or false (got {type(value).__name__})")
    return value


#: command -> (handler, right needed: "read" or "admin"; see tund.control.auth)
COMMANDS: dict[str, tuple[Handler, auth.Right]] = {
    "status": (lambda e, a: e.status(_opt_tunnel_arg(a)), "read"),
    "reload": (lambda e, a: e.reload(_flag_arg(a, "dry_run")), "admin"),
    "up": (lambda e, a: e.tunnel_up(_tunnel_arg(a)), "admin"),
    "down": (lambda e, a: e.tunnel_down(_tunnel_arg(a)), "admin"),
    "restart": (lambda e, a: e.tunnel_restart(_tunnel_arg(a)), "admin"),
}


def authorized(cmd: str, peer: PeerCred | None,
               policy: Callable[[], auth.Policy]) -> Handler:
    """The handler of ``cmd`` if ``peer`` may run it (None: the daemon itself, e.g. SIGHUP).

    Raises UnknownCommand, or :class:`~tund.control.auth.Denied` (logged with the peer's
    uid and pid) when the peer lacks the command's right under ``policy()``.
    """
    entry = COMMANDS.get(cmd)
    if entry is None:
        raise UnknownCommand(f"unknown command {cmd!r} (known: {', '.join(sorted(COMMANDS))})")
    handler, right = entry
    if peer is not None:
        try:
            auth.authorize(cmd, right, peer.uid, peer.gid, policy())
        except auth.Denied as e:
            log.warning("control: denied %r to uid %d (pid %d, gid %d): %s",
                        cmd, peer.uid, peer.pid, peer.gid, e)
            raise
    return handler
