"""Fixtures for the system tier: a trixie rootfs, the tund .deb, booted containers.

Gates (skip with a reason, or fail under TUND_REQUIRE_ALL=1): root, systemd-nspawn,
debootstrap, zstd, unshare, nsenter.  Costs: a cold rootfs is one debootstrap per profile
(about 1.5 min each, run + build); warm, the rootfs is restored or reused in seconds, the
.deb builds in ~10 s once per session, each container boots in ~1-2 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.netns import RUN_ID, unique
from tests.system.container import NAME_PREFIX, Container

REPO = Path(__file__).resolve().parents[2]
MAKE_ROOTFS = REPO / "tests/system/make_rootfs.sh"
BUILD_DEB = REPO / "packaging/build-deb.sh"
NEXT_VERSION_SUFFIX = "+tsys1"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "system tests need root (systemd-nspawn, debootstrap)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"),
                          ("zstd", "zstd"), ("unshare", "util-linux"), ("nsenter", "util-linux"),
                          ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    return None


@pytest.fixture(scope="session")
def system_gate() -> None:
    require(_missing())


def _run_script(argv: list[str], what: str, timeout: float) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise AssertionError(f"{what} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def run_rootfs(system_gate: None) -> Path:
    """The runtime rootfs (systemd + tund's Depends), made or restored from the cache."""
    return Path(_run_script([str(MAKE_ROOTFS), "run"], "make_rootfs.sh run", 900))


@pytest.fixture(scope="session")
def tund_deb(system_gate: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb built from this working tree inside the trixie build rootfs.

    ``TUND_SYSTEM_DEB=PATH`` tests an already built package instead.
    """
    if prebuilt := os.environ.get("TUND_SYSTEM_DEB"):
        return Path(prebuilt)
    out = Path(f"/var/tmp/{NAME_PREFIX}-deb-{RUN_ID}-{os.getpid()}")
    try:
        deb = Path(_run_script([str(BUILD_DEB), str(out)], "packaging/build-deb.sh", 1200))
        kept = tmp_path_factory.mktemp("deb") / deb.name
        shutil.copy2(deb, kept)
        return kept
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def tund_deb_next(tund_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same package with a higher version, to test an upgrade."""
    work = tmp_path_factory.mktemp("repack")
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-R", str(tund_deb), str(tree)], check=True, timeout=60)
    control = tree / "DEBIAN/control"
    lines = control.read_text().splitlines()
    lines = [f"{line}{NEXT_VERSION_SUFFIX}" if line.startswith("Version: ") else line
             for line in lines]
    control.write_text("\n".join(lines) + "\n")
    out = work / tund_deb.name.replace("_all.deb", f"{NEXT_VERSION_SUFFIX}_all.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True,
                   timeout=60, capture_output=True)
    return out


BootFn = Callable[..., Container]


@pytest.fixture
def boot(run_rootfs: Path) -> Iterator[BootFn]:
    """Boot containers (``boot(extra_args=...)``); all are powered off after the test.

    The journal of tund in each container is printed at teardown, so a failing test shows it.
    """
    started: list[Container] = []

    def _boot(extra_args: tuple[str, ...] = ()) -> Container:
        name = unique(NAME_PREFIX)
        share = Path(f"/var/tmp/{name}-share")
        ct = Container.boot(run_rootfs, name, share, extra_args=extra_args)
        started.append(ct)
        return ct

    try:
        yield _boot
    finally:
        for ct in started:
            if ct.proc is not None and ct.proc.poll() is None:
                logs = ct.run("journalctl -u tund --no-pager -n 80 -o short-monotonic",
                              check=False, timeout=20)
                print(f"===== journal of tund in {ct.name}\n{logs.stdout}{logs.stderr}")
            ct.stop()
            shutil.rmtree(ct.share, ignore_errors=True)


def install(ct: Container, deb: Path, name: str = "tund.deb") -> subprocess.CompletedProcess[str]:
    """Copy ``deb`` into the container and ``dpkg -i`` it (raises with output on failure)."""
    shutil.copy2(deb, ct.share / name)
    return ct.run(f"dpkg -i /share/{name} </dev/null", timeout=120)


@pytest.fixture
def installed(boot: BootFn, tund_deb: Path) -> Container:
    """A booted container with the tund package installed."""
    ct = boot()
    install(ct, tund_deb)
    return ct
