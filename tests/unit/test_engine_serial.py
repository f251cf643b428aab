"""Reloads (and up/down/restart) are serialized: a second one waits, never interleaves."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tund.config import Config
from tund.daemon.engine import Engine
from tund.daemon.plan import Plan

CONF = """
[interfaces.tun0]
mode = "tun"

[tunnels.t]
interface = "tun0"
listen = "127.0.0.1:5000"
encryption = "none"
"""


def test_concurrent_reloads_run_one_after_the_other(tmp_path: Path) -> None:
    path = tmp_path / "tunnels.toml"
    path.write_text(CONF)
    engine = Engine(path)
    events: list[str] = []

    async def fake_apply(p: Plan, new: Config, keys: Any) -> list[str]:
        events.append("enter")
        await asyncio.sleep(0.05)  # a slow reload: others must wait for it
        events.append("exit")
        engine.config = new
        return ["x"]

    engine._apply = fake_apply  # type: ignore[method-assign]
    engine.config = None

    async def go() -> list[dict[str, Any]]:
        return await asyncio.gather(*(engine.reload() for _ in range(4)))

    results = asyncio.run(go())
    assert events == ["enter", "exit"] * 4
    assert engine.reloads == 4
    assert all(r["dry_run"] is False for r in results)
