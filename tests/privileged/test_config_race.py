"""The symlink-swap race on a drop-in finds nothing accepted (issue 16.6).

A drop-in in root's safe directory is a link to a file in a directory an unprivileged user
owns; that user swaps the file, as fast as it can, between a link to a root-owned, safe
file and a file of its own that would make workers run as root. Root loads the config for
10 s. Before the fix (stat() the path, then read_bytes() it again; only the link's own
directory checked) loads accepted the user's bytes thousands of times; now every load is
refused, because the user's directory is on the way to the file.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import require
from tund.config import load
from tund.errors import ConfigError

SECONDS = 10.0
#: the swapper runs as the user: the system python (a venv under /root is out of its reach)
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

SWAPPER = """
import os, sys, time
here, safe, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.chdir(here)
with open("evil", "w") as f:
    f.write('[daemon]\\nworker_user = "root"\\n')
swaps, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    os.symlink(safe, "t1")
    os.rename("t1", "x.toml")  # x.toml -> the root-owned safe file
    os.link("evil", "t2")
    os.rename("t2", "x.toml")  # x.toml is the user's own file
    swaps += 2
print(swaps)
"""


def _user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("tund")
    except KeyError:
        return None


def test_symlink_swap_race_gets_nothing_accepted() -> None:
    require(None if os.geteuid() == 0 else "needs root (chown, a second user)")
    user = _user()
    require(None if user is not None else "needs the 'tund' system user")
    require(None if os.access(PYTHON, os.X_OK) else "needs /usr/bin/python3")
    assert user is not None
    top = Path(tempfile.mkdtemp(prefix="tcf-race-"))
    try:
        top.chmod(0o755)
        etc, theirs, safe_dir = top / "etc", top / "theirs", top / "safe"
        for d in (etc, etc / "tunnels.d", theirs, safe_dir):
            d.mkdir(mode=0o755)
        (etc / "tunnels.toml").write_text("[daemon]\n")
        safe = safe_dir / "ok.toml"
        safe.write_text("")
        for f in (etc / "tunnels.toml", safe):
            f.chmod(0o644)
        os.chown(theirs, user.pw_uid, user.pw_gid)
        (etc / "tunnels.d" / "50-x.toml").symlink_to(theirs / "x.toml")
        swapper = subprocess.Popen(
            [PYTHON, "-I", "-c", SWAPPER, str(theirs), str(safe), str(SECONDS)],
            user=user.pw_uid, group=user.pw_gid, extra_groups=[],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            loads, accepted, evil, reasons = 0, 0, 0, set()
            end = time.monotonic() + SECONDS
            while time.monotonic() < end and swapper.poll() is None:
                loads += 1
                try:
                    cfg = load(etc / "tunnels.toml")
                except ConfigError as e:
                    reasons.update(i.message for i in e.issues)
                    continue
                accepted += 1
                evil += cfg.daemon.worker_user == "root"
            out, err = swapper.communicate(timeout=SECONDS + 30)
        finally:
            if swapper.poll() is None:
                swapper.kill()
                swapper.wait(timeout=10)
        assert swapper.returncode == 0, err
        swaps = int(out)
        print(f"{loads} loads, {swaps} swaps, {accepted} accepted, {evil} with the user's bytes")
        assert loads > 100 and swaps > 1000
        assert (accepted, evil) == (0, 0)
        assert reasons == {f"unsafe: the directory {theirs} is owned by uid {user.pw_uid}, "
                           f"not root, so that user could change what root runs; "
                           f"chown root {theirs}"}
    finally:
        shutil.rmtree(top, ignore_errors=True)
