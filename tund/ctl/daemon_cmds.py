"""tundctl commands answered by the running daemon: status, dump, reload, up, down,
restart (each ``cmd_*(ctx, argv) -> exit code``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from tund.ctl import render
from tund.ctl.common import (
    EXIT_OK,
    EXIT_REFUSED,
    RELOAD_TIMEOUT,
    Context,
    ask,
    colour,
    err,
    make_parser,
    out,
    positive_seconds,
)


def _status_once(ctx: Context, ns: argparse.Namespace) -> tuple[int, str]:
    """One status frame: (exit code, text); errors were already reported on stderr."""
    result = ask(ctx, ns, "status", {"tunnel": ns.tunnel} if ns.tunnel else None)
    if isinstance(result, int):
        return result, ""
    peer = getattr(ns, "peer", None)
    try:
        if ns.json:
            return EXIT_OK, render.render_json(
                result if peer is None else _only_peer(result, ns.tunnel, peer))
        return EXIT_OK, render.render_status(result, colour=colour(), tunnel=ns.tunnel,
                                             peer=peer)
    except render.NoSuchPeer as e:
        err(f"status: {e}")
        return EXIT_REFUSED, ""
    except KeyError:
        err(f"status: no tunnel named {ns.tunnel!r}")
        return EXIT_REFUSED, ""


def _only_peer(result: dict[str, Any], tunnel: str, peer: str) -> dict[str, Any]:
    """The reply with only ``peer`` left in ``tunnel``'s ``peers`` (NoSuchPeer, KeyError)."""
    t = dict(result.get("tunnels", {})[tunnel])
    peers = t.get("peers") or {}
    if peer not in peers:
        raise render.NoSuchPeer(tunnel, peer, sorted(peers))
    t["peers"] = {peer: peers[peer]}
    return {**result, "tunnels": {tunnel: t}}


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
    parser = make_parser("status", "Show the daemon, its tunnels and interfaces.")
    parser.add_argument("tunnel", nargs="?", help="show only this tunnel")
    parser.add_argument("peer", nargs="?", help="show only this peer of the tunnel")
    parser.add_argument("--watch", action="store_true",
                        help="refresh in place until Ctrl-C")
    parser.add_argument("--interval", type=positive_seconds, default=2.0, metavar="S",
                        help="seconds between refreshes with --watch (default 2)")
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="with --watch: stop after N refreshes")
    ns = parser.parse_args(argv)
    if ns.count is not None and ns.count < 1:
        parser.error(f"--count must be at least 1 (got {ns.count})")
    if ns.watch:
        return _watch(ctx, ns)
    code, text = _status_once(ctx, ns)
    out(text)
    return code


def cmd_dump(ctx: Context, argv: list[str]) -> int:
    parser = make_parser("dump", "One tab-separated line per tunnel, for scripts: "
                     + " ".join(render.DUMP_COLUMNS) + "; after it one per peer: "
                     + " ".join(render.PEER_DUMP_COLUMNS) + ". Empty fields are (none), "
                     "numbers and times 0, no encryption off.", json_flag=False)
    parser.add_argument("tunnel", nargs="?", help="only this tunnel")
    ns = parser.parse_args(argv)
    result = ask(ctx, ns, "status", {"tunnel": ns.tunnel} if ns.tunnel else None)
    if isinstance(result, int):
        return result
    try:
        out(render.render_dump(result, tunnel=ns.tunnel))
    except KeyError:
        err(f"dump: no tunnel named {ns.tunnel!r}")
        return EXIT_REFUSED
    return EXIT_OK


def cmd_reload(ctx: Context, argv: list[str]) -> int:
    parser = make_parser("reload", "Re-read the configuration and apply the difference.")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and show what would change, change nothing")
    ns = parser.parse_args(argv)
    result = ask(ctx, ns, "reload", {"dry_run": True} if ns.dry_run else None,
                  timeout=RELOAD_TIMEOUT)
    if isinstance(result, int):
        return result
    out(render.render_json(result) if ns.json else render.render_reload(result,
                                                                         colour=colour()))
    return EXIT_OK


def tunnel_action(name: str, description: str) -> Callable[[Context, list[str]], int]:
    def run(ctx: Context, argv: list[str]) -> int:
        parser = make_parser(name, description)
        parser.add_argument("tunnel", help="tunnel name")
        ns = parser.parse_args(argv)
        result = ask(ctx, ns, name, {"tunnel": ns.tunnel}, timeout=RELOAD_TIMEOUT)
        if isinstance(result, int):
            return result
        out(render.render_json(result) if ns.json
             else render.render_action(name, ns.tunnel, result, colour=colour()))
        return EXIT_OK

    run.__name__ = f"cmd_{name}"
    return run
