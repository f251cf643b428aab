"""tundctl key commands: genkey, pubkey, genpsk (``tund.keys``, imported late)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from tund.ctl.common import EXIT_OK, EXIT_REFUSED, Context, err, make_parser, out
from tund.errors import TundError


def _keys_function(name: str) -> Callable[..., str] | None:
    """``tund.keys.<name>``, imported late; None (after saying why) if unavailable."""
    try:
        keys = importlib.import_module("tund.keys")
    except ImportError as e:
        err(f"key commands are not available: cannot import tund.keys ({e})")
        return None
    fn = getattr(keys, name, None)
    if not callable(fn):
        err(f"key commands are not available: tund.keys has no {name}()")
        return None
    return fn  # type: ignore[no-any-return]  # checked callable; returns str by contract


def key_command(name: str, function: str, description: str) -> Callable[[Context, list[str]],
                                                                          int]:
    def run(ctx: Context, argv: list[str]) -> int:
        make_parser(name, description, daemon=False, json_flag=False).parse_args(argv)
        fn = _keys_function(function)
        if fn is None:
            return EXIT_REFUSED
        try:
            key = fn(sys.stdin.read().strip()) if function == "public_key" else fn()
        except (ValueError, TundError) as e:
            err(f"{name}: {e}")
            return EXIT_REFUSED
        out(key)
        return EXIT_OK

    run.__name__ = f"cmd_{name}"
    return run
