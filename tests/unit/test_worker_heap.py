"""A worker keeps its freed heap: moving 64 KB buffers faults in no fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tund.libc import M_TRIM_THRESHOLD, mallopt

CHURN = """
import os, resource, sys
if sys.argv[1] == "keep":
    from tund.relay.process.worker import keep_heap
    keep_heap()
src = os.urandom(65536)
def batch():  # a batch of super-packets in flight, then freed, as the pump does
    return [bytes(memoryview(src)[:60000 + i]) + b"x" for i in range(8)]
for _ in range(50):
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(1000):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True,
                         text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not mallopt(M_TRIM_THRESHOLD, 128 * 1024),  # (glibc's default)
                    reason="not glibc: no mallopt")
def test_64k_buffers_fault_pages_in_without_keep_heap_and_not_with_it() -> None:
    default, kept = _faults("plain"), _faults("keep")
    assert default > 10_000  # glibc hands the heap top back and zeroes it again each time
    assert kept < 100, (default, kept)
