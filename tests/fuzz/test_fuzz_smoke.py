"""CI smoke run of the atheris fuzzers: every target for a few seconds, all in parallel.

Skips (with the reason) where atheris is not installed; CI on this machine has it (the
``test`` extra). The budget is FUZZ_SECONDS per target (default 5); longer runs by hand:
``bash tests/fuzz/run.sh 600``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("FUZZ_SECONDS", "5"))


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install atheris; the 'test' extra "
                           "has it where a wheel exists)")
def test_every_fuzzer_runs_clean_for_a_short_budget(tmp_path: Path) -> None:
    procs = {}
    for name in TARGETS:
        corpus = tmp_path / name
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.fuzz", name, str(corpus),
             f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=1024",
             f"-artifact_prefix={tmp_path}/"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "TMPDIR": str(tmp_path)})  # libFuzzer exits without atexit
    report, failures = [], []
    for name, p in procs.items():
        out, _ = p.communicate(timeout=SECONDS + 60)
        m = re.search(r"^Done (\d+) runs in (\d+) second", out, re.M)
        runs = int(m.group(1)) if m else 0
        report.append(f"{name}: {runs} inputs")
        if p.returncode != 0 or runs < 100:
            failures.append(f"{name}: exit {p.returncode}, {runs} inputs\n{out[-3000:]}")
    print("\n".join(report))
    assert not failures, "\n\n".join(failures)
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
