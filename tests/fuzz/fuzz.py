"""Coverage-guided fuzzing of one target with atheris (libFuzzer) — see tests/fuzz/run.sh.

Usage::

    python -m tests.fuzz.fuzz TARGET [CORPUS_DIR] [libFuzzer flags...]

``TARGET`` is a name from :data:`tests.fuzz.targets.TARGETS`. tund's modules are
instrumented for coverage. An empty ``CORPUS_DIR`` is first filled with the seeds of
:mod:`tests.fuzz.seeds`. A crash (an exception other than the target's documented error
types, or a broken invariant), a per-input timeout (``-timeout``) or going over the memory
limit (``-rss_limit_mb``) makes libFuzzer stop with a non-zero exit status and write the
offending input as ``crash-*``/``timeout-*``/``oom-*`` (``-artifact_prefix``).
At the end libFuzzer prints ``Done N runs in S second(s)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped,unused-ignore]

with atheris.instrument_imports(include=["tund"]):
    from tests.fuzz import seeds, targets


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in targets.TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.fuzz TARGET [CORPUS_DIR] [flags]; "
                 f"targets: {', '.join(targets.TARGETS)}")
    name, rest = argv[1], argv[2:]
    corpus = [a for a in rest if not a.startswith("-")]
    for d in corpus[:1]:
        path = Path(d)
        path.mkdir(parents=True, exist_ok=True)
        if not any(path.iterdir()):
            for i, seed in enumerate(seeds.seeds(name)):
                (path / f"seed-{i}").write_bytes(seed)
    targets.quiet()
    atheris.Setup([argv[0], *rest], targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
