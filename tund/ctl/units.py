"""Values of a daemon result made readable: sizes, durations, times, drops by cause; and
the guards that read a result's numbers and mappings without ever raising."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_num(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def count(value: Any) -> int:
    """``value`` as an int if it is a number, else 0."""
    return int(value) if is_num(value) else 0


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def human_bytes(n: int | float) -> str:
    """``1234567`` -> ``"1.18 MiB"`` (binary units, two decimals, like ``wg show``)."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.2f} {unit}"


def human_duration(seconds: float) -> str:
    """``3725`` -> ``"1 hour, 2 minutes, 5 seconds"``; under a second -> ``"0 seconds"``."""
    left = max(0, int(seconds))
    parts = []
    for name, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600),
                       ("minute", 60), ("second", 1)):
        n, left = divmod(left, size)
        if n:
            parts.append(f"{n} {name}{'' if n == 1 else 's'}")
    return ", ".join(parts) or "0 seconds"


def ago(timestamp: float, now: float) -> str:
    """``"N seconds ago"`` for a unix time; ``"Now"`` within a second; future -> ``"in ..."``."""
    delta = now - timestamp
    if abs(delta) < 1:
        return "Now"
    if delta < 0:
        return f"in {human_duration(-delta)} (clock skew?)"
    return f"{human_duration(delta)} ago"


def elapsed(timestamp: float, now: float) -> str:
    """``"12 seconds ago"``, ``"1 minute, 3 seconds ago"``, also within the first second
    (``"0 seconds ago"``, never ``"Now"``): for when a state began, read as ``since ...``;
    future -> ``"in ..."`` as :func:`ago`."""
    delta = now - timestamp
    if delta <= -1:
        return f"in {human_duration(-delta)} (clock skew?)"
    return f"{human_duration(delta)} ago"


def drops_text(drops: Any) -> str | None:
    """``"cause n, ..."`` of the nonzero drops (cause order); ``"none"`` if all are zero;
    None if there are no drop counters at all."""
    if not isinstance(drops, Mapping) or not drops:
        return None
    nonzero = {k: v for k, v in drops.items() if v}
    if not nonzero:
        return "none"
    return ", ".join(f"{cause} {n}" for cause, n in sorted(nonzero.items()))
