"""Control-socket rights against a real ``python -m tund``, with clients of other identities.

Groups are numeric gids made up for the test (no change to the user database): the
daemon's ``control_group`` is READ_GID, its ``admin_group`` ADMIN_GID. Clients are forked
children that switch to uid ``nobody`` with chosen groups, then call the daemon:

* supplementary READ_GID only (so the socket's mode lets it connect) but primary gid
  nobody's: the daemon itself refuses, showing it does not rely on the file mode alone;
* primary gid READ_GID: may read status, may not reload;
* primary gid ADMIN_GID: may reload;
* no group at all: the socket (0660 root:READ_GID) refuses the connection.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control_support import Daemon, group_daemon
from tund.control import client
from tund.errors import ControlError

pytestmark = pytest.mark.usefixtures("privileged")

READ_GID, ADMIN_GID = 60237, 60238
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with group_daemon(READ_GID, ADMIN_GID, "sc-ctl-") as d:
        yield d


def call_as(sock: Path, cmd: str, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    """Run ``cmd`` from a forked child with the given identity; its outcome as a dict."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become the client, call, report, exit without cleanup
        os.close(r)
        out: dict[str, Any]
        try:
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                out = {"ok": True, "result": client.call(str(sock), cmd, timeout=5),
                       "pid": os.getpid()}
            except ControlError as e:
                out = {"ok": False, "code": e.code, "message": str(e), "pid": os.getpid()}
        except BaseException as e:
            out = {"ok": False, "code": "child", "message": repr(e), "pid": os.getpid()}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


def test_socket_is_0660_root_and_control_group(daemon: Daemon) -> None:
    st = daemon.sock.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, READ_GID)


def test_reader_may_read_status_but_not_change_things(daemon: Daemon) -> None:
    got = call_as(daemon.sock, "status", NOBODY.pw_uid, READ_GID, [])
    assert got["ok"], got
    assert "daemon" in got["result"]
    for cmd in ("reload", "up", "down", "restart"):
        got = call_as(daemon.sock, cmd, NOBODY.pw_uid, READ_GID, [])
        assert got["code"] == "denied", got
        assert got["message"] == (f"{cmd} needs admin rights: root or a member of group "
                                  f"'{ADMIN_GID}'")
    log = daemon.log.read_text()
    assert f"denied 'restart' to uid {NOBODY.pw_uid} (pid {got['pid']}, gid {READ_GID})" in log


def test_admin_may_reload(daemon: Daemon) -> None:
    got = call_as(daemon.sock, "reload", NOBODY.pw_uid, ADMIN_GID, [READ_GID])
    assert got["ok"], got
    assert got["result"]["dry_run"] is False


def test_daemon_refuses_a_connected_non_member(daemon: Daemon) -> None:
    """File access via a supplementary group is not membership: the daemon says no."""
    got = call_as(daemon.sock, "status", NOBODY.pw_uid, NOBODY.pw_gid, [READ_GID])
    assert got["code"] == "denied", got
    assert got["message"].startswith("status needs read rights: root or a member of group")
    log = daemon.log.read_text()
    assert f"denied 'status' to uid {NOBODY.pw_uid} (pid {got['pid']}" in log, log


def test_stranger_cannot_even_connect(daemon: Daemon) -> None:
    got = call_as(daemon.sock, "status", NOBODY.pw_uid, NOBODY.pw_gid, [])
    assert not got["ok"]
    assert got["code"] != "denied"  # refused by the kernel (socket mode), not the daemon
    assert "ermission" in got["message"], got


def test_root_may_do_everything(daemon: Daemon) -> None:
    assert "daemon" in client.call(str(daemon.sock), "status")
    assert client.call(str(daemon.sock), "reload")["dry_run"] is False


FAKE_SERVER = r"""
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8); s.settimeout(0.2)
print("ready", flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        c, _ = s.accept()
    except TimeoutError:
        continue
    print("connected", flush=True)
    c.recv(65536)
    c.sendall(b'{"v": 1, "id": 1, "ok": true, "result": {"actions": ["pwned"]}}\n')
    c.close()
"""


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory that ``nobody`` owns (mode 0755), as a user's own would be."""
    base = Path(tempfile.mkdtemp(prefix="sc-spoof-", dir="/var/tmp"))
    base.chmod(0o755)
    d = base / "run"
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    try:
        yield d
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_root_tundctl_refuses_a_spoofed_socket_in_a_users_dir(user_dir: Path) -> None:
    """issue 16.7: nobody's fake socket answers 'ok' to anything; root's tundctl must not
    even connect (it used to, and printed the fake's reload result)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to run the fake as nobody")
    sock = user_dir / "control.sock"
    fake = subprocess.Popen([setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}",
                             "--clear-groups", sys.executable, "-c", FAKE_SERVER, str(sock)],
                            stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "ready"
        assert sock.lstat().st_uid == NOBODY.pw_uid
        for cmd in ("reload", "status"):
            p = subprocess.run([sys.executable, "-m", "tund.ctl.main", "--socket", str(sock),
                                cmd], capture_output=True, text=True, timeout=30)
            assert p.returncode == 3, (p.stdout, p.stderr)
            assert f"refusing to talk to control socket {sock}" in p.stderr, p.stderr
            assert f"directory {user_dir} is owned by uid {NOBODY.pw_uid}" in p.stderr
            assert "pwned" not in p.stdout
    finally:
        fake.kill()
        out, _ = fake.communicate(timeout=10)
    assert "connected" not in out  # the fake never had a client


def test_daemon_refuses_a_socket_path_in_a_users_dir(user_dir: Path) -> None:
    cfg = user_dir.parent / "tunnels.toml"
    cfg.write_text("[daemon]\n")
    sock = user_dir / "control.sock"
    p = subprocess.run([sys.executable, "-m", "tund", "--config", str(cfg),
                        "--control-socket", str(sock)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 1, p.stderr
    assert f"refusing control socket {sock}: directory {user_dir} is owned by uid" in p.stderr
    assert not os.path.lexists(sock)
