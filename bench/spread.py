#!/usr/bin/env python3
"""The spread of the goals over several full runs of bench/run.sh, as Markdown.

Usage: spread.py RUN_DIR [RUN_DIR ...]   (each holds the summary.md that run.sh wrote)

Reads each run's goal table (``| goal | measured | target | met |``) and prints, per
goal, the value of every run, the lowest and highest, and in how many runs it was met:
a goal is met "in every run" only if that count equals the number of runs.
"""

from __future__ import annotations

import sys
from pathlib import Path


def goals(summary: str) -> dict[str, tuple[float | None, str, str]]:
    """goal -> (measured or None, target, met) from one summary.md's goal table."""
    out: dict[str, tuple[float | None, str, str]] = {}
    in_table = False
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:4] == ["goal", "measured", "target", "met"]:
            in_table = True
            continue
        if not in_table:
            continue
        if len(cells) != 4 or not line.startswith("|"):
            in_table = False
            continue
        if set(cells[1]) <= set("-:"):
            if cells[1] == "-":
                out[cells[0]] = (None, cells[2], cells[3])
            continue  # the separator row
        out[cells[0]] = (float(cells[1].replace(",", "")), cells[2], cells[3])
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    runs = [goals((Path(d) / "summary.md").read_text()) for d in argv]
    names = list(dict.fromkeys(n for r in runs for n in r))
    head = " | ".join(f"run {i + 1}" for i in range(len(runs)))
    print(f"| goal | target | {head} | lowest | highest | met in |")
    print("|---|---|" + "---:|" * (len(runs) + 3))
    for n in names:
        vals = [r.get(n, (None, "", "-"))[0] for r in runs]
        target = next((r[n][1] for r in runs if n in r), "")
        met = sum(1 for r in runs if n in r and r[n][2] == "yes")
        have = [v for v in vals if v is not None]
        cells = " | ".join("-" if v is None else f"{v:,.2f}" for v in vals)
        lo = f"{min(have):,.2f}" if have else "-"
        hi = f"{max(have):,.2f}" if have else "-"
        print(f"| {n} | {target} | {cells} | {lo} | {hi} | {met}/{len(runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
