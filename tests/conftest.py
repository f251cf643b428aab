"""Test tiers and their gates.

* ``tests/unit``: pure code, no root, no network.
* ``tests/component``: real sockets and processes on loopback, no root.
* ``tests/privileged``: real TUN/TAP, ``ip`` and throwaway network namespaces (root).
* ``tests/system``: real systemd as PID 1 in a systemd-nspawn container.

Privileged and system tests skip with a reason when a requirement is missing; CI has them
all (``TUND_REQUIRE_ALL=1`` turns those skips into failures).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import netns


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/tests/privileged/" in path:
            item.add_marker(pytest.mark.privileged)
        if "/tests/system/" in path:
            item.add_marker(pytest.mark.system)


def require(reason: str | None) -> None:
    """Skip (or fail, under TUND_REQUIRE_ALL=1) when ``reason`` says something is missing."""
    if reason is None:
        return
    if os.environ.get("TUND_REQUIRE_ALL") == "1":
        pytest.fail(f"requirement missing in a run that requires all: {reason}")
    pytest.skip(reason)


@pytest.fixture
def privileged() -> Iterator[None]:
    """Gate for tests that need root, /dev/net/tun and ip netns; cleans namespaces up."""
    require(netns.have_privileges())
    try:
        yield
    finally:
        netns.cleanup_all()
