"""Config files that others could change are refused, with the reason and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tund.config import load, unsafe_ownership
from tund.errors import ConfigError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    f = d / "tunnels.toml"
    f.write_text("[daemon]\n")
    f.chmod(0o644)
    return f


def test_a_non_root_process_does_not_judge(conf: Path) -> None:
    conf.chmod(0o666)
    assert unsafe_ownership(conf, euid=1000) is None


@root_only
def test_root_owned_0644_in_a_0755_directory_is_fine(conf: Path) -> None:
    assert unsafe_ownership(conf, euid=0) is None
    assert load(conf).daemon.worker_user == "tund"


@root_only
@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_other_writable_file_is_refused(conf: Path, mode: int) -> None:
    conf.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load(conf)
    [issue] = info.value.issues
    assert issue.file == str(conf)
    assert issue.message == (f"unsafe: the file {conf} is writable by group or others "
                             f"(mode {mode:04o}); chmod go-w {conf}")


@root_only
def test_file_owned_by_another_user_is_refused(conf: Path) -> None:
    os.chown(conf, 65534, -1)
    with pytest.raises(ConfigError, match=rf"owned by uid 65534, not root.*chown root {conf}"):
        load(conf)


@root_only
def test_writable_directory_is_refused_but_a_sticky_one_is_not(conf: Path) -> None:
    conf.parent.chmod(0o777)
    with pytest.raises(ConfigError, match=r"the directory .* is writable by group or others "
                                          r"\(mode 0777\)"):
        load(conf)
    conf.parent.chmod(0o1777)
    assert unsafe_ownership(conf, euid=0) is None


@root_only
def test_an_unsafe_drop_in_is_named(conf: Path) -> None:
    dropins = conf.parent / "tunnels.d"
    dropins.mkdir(mode=0o755)
    bad = dropins / "10-bad.toml"
    bad.write_text("")
    bad.chmod(0o666)
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert [i.file for i in info.value.issues] == [str(bad)]


@root_only
def test_tundctl_check_and_the_daemon_both_refuse(conf: Path) -> None:
    conf.chmod(0o666)
    check = subprocess.run([sys.executable, "-m", "tund.ctl.main", "check", str(conf)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0
    assert f"{conf}: unsafe: the file {conf} is writable" in check.stdout + check.stderr
    daemon = subprocess.run([sys.executable, "-m", "tund", "--config", str(conf),
                             "--control-socket", str(conf.parent / "c.sock")],
                            capture_output=True, text=True, timeout=60)
    assert daemon.returncode == 1
    assert "chmod go-w" in daemon.stderr
