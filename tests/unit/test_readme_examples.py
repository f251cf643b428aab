"""Every ```toml block in README.md is a valid tund configuration.

Key files that examples name (``/etc/tund/keys/...``) are generated in a temporary
directory and the paths rewritten to them; nothing else in the examples is changed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tund import keys
from tund.config import parse_text

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE_RE = re.compile(r"^```toml\n(.*?)^```", re.M | re.S)
KEY_FILE_RE = re.compile(r'^(\s*(?:private|preshared)_key_file\s*=\s*")([^"]+)(")', re.M)


def toml_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE_RE.finditer(text)]


def test_readme_has_toml_examples() -> None:
    assert len(toml_blocks()) >= 6


@pytest.mark.parametrize(("line", "block"), toml_blocks(), ids=lambda v: str(v)[:20])
def test_readme_toml_block_is_valid(line: int, block: str, tmp_path: Path) -> None:
    def local_key(m: re.Match[str]) -> str:
        path = tmp_path / Path(m.group(2)).name
        if not path.exists():
            path.write_text((keys.generate_psk() if "preshared" in m.group(1)
                             else keys.generate_private_key()) + "\n")
            path.chmod(0o600)
        return f"{m.group(1)}{path}{m.group(3)}"

    cfg = parse_text(KEY_FILE_RE.sub(local_key, block), f"README.md:{line}")
    assert cfg.interfaces or cfg.daemon.metrics_listen  # the block configures something
