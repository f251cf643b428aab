"""Where a control socket may live (tund.control.sockdir), judged on real temp dirs.

Ownership by "another user": as root, a chown to uid 4242; else judged as another euid.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tund.control.sockdir import dir_problem, socket_problem

ME = os.geteuid()
OTHER = ME + 4242  # not us, not root: whoever owns our dirs is a stranger to OTHER


def test_own_private_dir_is_safe(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    assert dir_problem(d / "control.sock") is None
    assert dir_problem(tmp_path / "not" / "made" / "yet.sock") is None


def test_dir_of_another_user_is_refused_and_named(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    if ME == 0:  # root's dirs are trusted by everyone: give this one to a stranger
        os.chown(d, 4242, 4242)
        problem = dir_problem(d / "control.sock")
        assert problem is not None and "owned by uid 4242, not root (" in problem
        assert f"directory {d} " in problem
    else:
        problem = dir_problem(d / "control.sock", euid=OTHER)
        assert problem is not None and f"owned by uid {ME}, not root or uid {OTHER}" in problem


def test_group_or_other_writable_dir_is_refused_unless_sticky_and_roots(
        tmp_path: Path) -> None:
    for mode, word in ((0o775, "group-writable"), (0o757, "other-writable")):
        d = tmp_path / f"w{mode:o}"
        d.mkdir()
        d.chmod(mode)
        problem = dir_problem(d / "control.sock")
        assert problem is not None and word in problem and f"{mode:04o}" in problem
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert (dir_problem(sticky / "control.sock") is None) == (ME == 0)
    # /tmp itself: sticky and root's, so fine as an ancestor
    assert dir_problem("/tmp/x/control.sock") is None


def test_a_link_on_the_way_is_judged_at_both_ends(tmp_path: Path) -> None:
    unsafe = tmp_path / "open"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    (unsafe / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to(unsafe / "real")
    problem = dir_problem(link / "control.sock")
    assert problem is not None and str(unsafe) in problem


def test_socket_itself_must_be_a_socket_of_root_or_ours(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    assert socket_problem(path) is None  # missing: connect() reports it
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        assert socket_problem(path) is None
        if ME == 0:
            os.chown(path, 4242, 4242, follow_symlinks=False)
        problem = socket_problem(path, euid=0 if ME == 0 else OTHER)
        assert problem is not None and "owned by uid" in problem
    finally:
        s.close()
    path.unlink()
    path.write_text("")
    assert "is not a socket" in (socket_problem(path) or "")
    path.unlink()
    path.symlink_to("/run/tund/control.sock")
    assert "a symbolic link" in (socket_problem(path) or "")
