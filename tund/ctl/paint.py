"""Colour for ``tundctl``'s human output: the escape codes, :class:`Painter` (which applies
them only when colour is on) and :func:`use_colour` (which decides: ``TUND_COLOR=always|never``
wins, then ``NO_COLOR``, then whether the stream is a tty)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TextIO

RESET = "\x1b[0m"
BOLD = "\x1b[1m"
GREEN = "\x1b[1;32m"
YELLOW = "\x1b[1;33m"
RED = "\x1b[1;31m"
DIM = "\x1b[2m"

STATE_COLOURS = {"up": GREEN, "starting": YELLOW, "connecting": YELLOW,
                 "handshaking": YELLOW, "unverified": YELLOW, "failing": RED,
                 "backoff": YELLOW, "failed": RED, "stopped": DIM}


def use_colour(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour output to ``stream``: TUND_COLOR, then NO_COLOR, then isatty."""
    env = os.environ if environ is None else environ
    mode = env.get("TUND_COLOR", "").lower()
    if mode == "always":
        return True
    if mode == "never" or env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Painter:
    """Wraps text in an escape code and :data:`RESET` when ``colour`` is on, else returns it."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def paint(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.colour and code else text

    def header(self, kind: str, name: str) -> str:
        return f"{self.paint(BOLD, kind + ':')} {self.paint(GREEN, name)}"

    def field(self, key: str, value: str) -> str:
        return f"  {self.paint(BOLD, key + ':')} {value}"

    def state(self, state: str) -> str:
        return self.paint(STATE_COLOURS.get(state, ""), state)
