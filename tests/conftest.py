"""Test tiers and their gates.

* ``tests/unit``: pure code, no root, no network.
* ``tests/component``: real sockets and processes on loopback, no root.
* ``tests/privileged``: real TUN/TAP, ``ip`` and throwaway network namespaces (root).
* ``tests/system``: real systemd as PID 1 in a systemd-nspawn container.

Privileged and system tests skip with a reason when a requirement is missing; CI has them
all (``TUND_REQUIRE_ALL=1`` turns those skips into failures).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
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


#: tund's default ``worker_user``; the daemon refuses to start without it (no fallback).
WORKER_USER = "tund"


@pytest.fixture(scope="session", autouse=True)
def worker_user_exists() -> None:
    """As root: create the ``tund`` system user if missing (fresh CI machines), as the
    Debian package does. Not removed afterwards: it is what an installed tund has."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(WORKER_USER)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        grp.getgrnam(WORKER_USER)
        group = ["--gid", WORKER_USER]  # the group exists (packaging/debian/tund.sysusers)
    except KeyError:
        group = []
    subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    *group, WORKER_USER], check=True, capture_output=True, timeout=30)


@pytest.fixture
def privileged() -> Iterator[None]:
    """Gate for tests that need root, /dev/net/tun and ip netns; cleans namespaces up."""
    require(netns.have_privileges())
    try:
        yield
    finally:
        netns.cleanup_all()
