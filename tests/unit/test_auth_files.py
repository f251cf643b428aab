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


# ------------------------------------------------ the whole chain, judged through one walk
# (issue 16.6: the check used to stat() the path, then read_bytes() opened it again, and
# only the directory holding the link was checked)


@root_only
def test_a_link_into_a_user_owned_directory_is_refused(conf: Path, tmp_path: Path) -> None:
    """The link sits in a safe directory; the file it names is root's, but another user owns
    the directory holding it and could swap it. Accepted before (only the link's own
    directory was checked)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    target = theirs / "x.toml"
    target.write_text("")
    target.chmod(0o644)
    os.chown(theirs, 65534, -1)
    dropins = conf.parent / "tunnels.d"
    dropins.mkdir(mode=0o755)
    (dropins / "50-x.toml").symlink_to(target)
    with pytest.raises(ConfigError) as info:
        load(conf)
    [issue] = info.value.issues
    assert issue.file == str(dropins / "50-x.toml")
    assert issue.message == (f"unsafe: the directory {theirs} is owned by uid 65534, not "
                             f"root, so that user could change what root runs; "
                             f"chown root {theirs}")


@root_only
def test_a_writable_directory_further_up_is_refused(conf: Path) -> None:
    """Whoever can write the grandparent can rename the parent away and put theirs there.
    Accepted before (only the parent was checked)."""
    up = conf.parent.parent
    up.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"the directory {up} is writable by group or "
                                          rf"others \(mode 0777\); chmod go-w {up}$"):
        load(conf)


@root_only
def test_a_link_owned_by_another_user_is_refused(conf: Path) -> None:
    link = conf.parent / "link.toml"
    link.symlink_to(conf.name)
    os.chown(link, 65534, -1, follow_symlinks=False)
    assert unsafe_ownership(link, euid=0) == (
        f"unsafe: the symlink {link} is owned by uid 65534, not root, so that user could "
        f"change what root runs; chown -h root {link}")


@root_only
def test_safe_links_are_followed_and_the_target_is_read(conf: Path) -> None:
    """Relative links, ``..`` after a link, and absolute links walk as the kernel would."""
    conf.write_text('[daemon]\nlog_level = "debug"\n')
    sub = conf.parent / "sub"
    sub.mkdir(mode=0o755)
    (sub / "up").symlink_to("..")
    (conf.parent / "rel.toml").symlink_to("sub/up/sub/../tunnels.toml")
    (conf.parent / "abs.toml").symlink_to(conf)
    for name in ("rel.toml", "abs.toml"):
        assert load(conf.parent / name).daemon.log_level == "debug"


def test_a_link_loop_and_a_fifo_are_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO used to block the reader forever (read_bytes on a pipe nobody writes)."""
    (tmp_path / "a.toml").symlink_to("b.toml")
    (tmp_path / "b.toml").symlink_to("a.toml")
    os.mkfifo(tmp_path / "fifo.toml")
    code = ("import sys; from pathlib import Path; from tund.config import load\n"
            "from tund.errors import ConfigError\n"
            "for name in sys.argv[1:]:\n"
            "    try: load(Path(name))\n"
            "    except ConfigError as e: print(e.issues[0].message)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.toml"),
                          str(tmp_path / "fifo.toml")],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines() == ["cannot read: Too many levels of symbolic links",
                                       "cannot read: not a regular file"], out.stderr


def test_a_non_root_process_walks_without_judging(conf: Path, tmp_path: Path) -> None:
    conf.parent.chmod(0o777)
    (tmp_path / "link.toml").symlink_to(conf)
    assert unsafe_ownership(tmp_path / "link.toml", euid=1000) is None
    conf.parent.chmod(0o755)


def test_what_is_read_is_what_was_judged(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is opened once: swapping the path right after the check changes nothing."""
    from tund.config import safefile

    judged = []
    real = safefile._judge

    def judge_then_swap(judge: bool, st: os.stat_result, what: str, where: str) -> None:
        real(judge, st, what, where)
        if what == "file":
            judged.append(where)
            other = conf.parent / "other"
            other.write_text('[daemon]\nworker_user = "root"\n')
            other.replace(conf)  # the path now names other bytes
    monkeypatch.setattr(safefile, "_judge", judge_then_swap)
    assert load(conf).daemon.worker_user == "tund"  # the bytes of the file judged
    assert judged == [str(conf)]
