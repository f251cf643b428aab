"""The README's first command, ``sudo bash tests/demo.sh``, runs as a new user would see it:
two sites over WireGuard/UDP (the default), keys from ``tundctl genkey``, a ping through the
tunnel, and ``tundctl status`` with a completed handshake on both ends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("privileged")


def test_demo_runs_the_encrypted_default_end_to_end() -> None:
    out = subprocess.run(["bash", str(REPO / "tests" / "demo.sh")], capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert text.count("encryption wireguard, handshake done") == 2, text
    assert "3 packets transmitted, 3 received, 0% packet loss" in text, text
    assert text.count("latest handshake: ") == 2 and "(none yet)" not in text, text
