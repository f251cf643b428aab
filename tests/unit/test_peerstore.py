"""The listeners' last peer endpoints: kept in a file, read back only when it is sound."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tund.daemon.peerstore import PeerStore, load, valid_endpoint


@pytest.mark.parametrize("text,ok", [
    ("192.0.2.1:51820", True), ("[2001:db8::1]:51820", True), ("192.0.2.1:0", False),
    ("192.0.2.1:65536", False), ("2001:db8::1:51820", False), ("[192.0.2.1]:5", False),
    ("host.example:51820", False), ("192.0.2.1", False), (51820, False), (None, False),
])
def test_valid_endpoint(text: object, ok: bool) -> None:
    assert valid_endpoint(text) is ok


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    store = PeerStore(path)
    store.remember("vpn", "192.0.2.7:40000")
    store.remember("site", "[2001:db8::2]:51820")
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = PeerStore(path)
    assert again.get("vpn") == "192.0.2.7:40000"
    assert again.get("site") == "[2001:db8::2]:51820"
    again.keep_only({"site"})
    assert load(path) == {"site": "[2001:db8::2]:51820"}
    again.remember("site", None)
    assert load(path) == {}


def test_bad_entries_and_bad_files_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"ok": "192.0.2.1:1", "bad": "x:1", "num": 5}))
    assert load(path) == {"ok": "192.0.2.1:1"}
    path.write_text("not json")
    assert load(path) == {}
    path.write_text("[1, 2]")
    assert load(path) == {}
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert load(link) == {}  # a link is not followed
    assert load(tmp_path / "absent.json") == {}


def test_a_malformed_endpoint_is_not_remembered(tmp_path: Path) -> None:
    store = PeerStore(tmp_path / "peers.json")
    store.remember("vpn", "not an endpoint")
    assert store.get("vpn") is None


def test_a_burst_of_changes_in_a_loop_is_one_write_at_the_end_of_the_gap(
        tmp_path: Path) -> None:
    """In the daemon's loop the first change is written at once, the changes within
    SAVE_GAP after it together once the gap ends, and flush() writes what waits (256
    tunnels coming up used to rewrite the file 256 times)."""
    import asyncio

    from tund.daemon import peerstore
    path = tmp_path / "peers.json"
    writes: list[dict[str, str]] = []

    async def scenario() -> None:
        store = PeerStore(path)
        real = peerstore.statefile.write_json

        def counted(p: Path, data: object, what: str) -> None:
            writes.append(dict(data))  # type: ignore[call-overload]
            real(p, data, what)

        peerstore.statefile.write_json = counted  # type: ignore[assignment]
        try:
            store.remember("t0", "192.0.2.1:1")  # at once
            for i in range(1, 50):
                store.remember(f"t{i}", f"192.0.2.1:{i + 1}")
            assert len(writes) == 1 and load(path) == {"t0": "192.0.2.1:1"}
            await asyncio.sleep(peerstore.SAVE_GAP + 0.2)
            assert len(writes) == 2 and len(load(path)) == 50
            store.remember("t0", None)
            store.remember("t1", None)  # within the gap of the write before: waits
            assert len(load(path)) == 50
            store.flush()
            assert len(writes) == 3 and len(load(path)) == 48
            await asyncio.sleep(peerstore.SAVE_GAP + 0.2)
            assert len(writes) == 3  # flush() took the waiting write
        finally:
            peerstore.statefile.write_json = real  # type: ignore[assignment]

    asyncio.run(scenario())
