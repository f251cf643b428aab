"""Least privilege in the data path, shown on two real daemons in throwaway namespaces.

Site a listens, site b connects; each runs two tunnels (WireGuard over UDP with a preshared
key, plaintext over TCP). With traffic flowing, the test reads every worker's
/proc/PID/{status,limits,fd,fdinfo}, then runs the checks *as the worker user*: it cannot
open the key files, attach to a tunnel device, or look into another worker. Finally it
greps logs, status JSON and ``tundctl`` output for the base64 secrets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sites import Site, TwoSites, new_ifname, two_sites
from tund.keys import generate_private_key, generate_psk, public_key
from tund.workerapi.run_as import DEFAULT_UID_BASE, DEFAULT_UID_COUNT

pytestmark = pytest.mark.usefixtures("privileged")

WG_PORT, TCP_PORT = 51237, 51238


@pytest.fixture
def keydir() -> Iterator[Path]:
    """A directory others may traverse (0755), so only the key files' own modes protect them."""
    d = Path(tempfile.mkdtemp(prefix="sc-keys-", dir="/var/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_key(path: Path, key: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return str(path)


def site_config(side: str, ts: TwoSites, keys: dict[str, str], kd: Path,
                ifs: tuple[str, str]) -> str:
    other = "b" if side == "a" else "a"
    n = 1 if side == "a" else 2
    if side == "a":
        ends = (f'listen = "{ts.ua}:{WG_PORT}"', f'listen = "{ts.ua}:{TCP_PORT}"')
    else:
        ends = (f'remote = "{ts.ua}:{WG_PORT}"', f'remote = "{ts.ua}:{TCP_PORT}"')
    return textwrap.dedent(f"""
        [interfaces.{ifs[0]}]
        mode = "tun"
        addresses = ["10.237.1.{n}/24"]

        [interfaces.{ifs[1]}]
        mode = "tun"
        addresses = ["10.237.2.{n}/24"]

        [tunnels.wg]
        interface = "{ifs[0]}"
        transport = "udp"
        {ends[0]}
        private_key_file = "{write_key(kd / f"{side}.key", keys[side])}"
        peer_public_key = "{public_key(keys[other])}"
        preshared_key_file = "{write_key(kd / f"{side}.psk", keys["psk"])}"

        [tunnels.plain]
        interface = "{ifs[1]}"
        transport = "tcp"
        {ends[1]}
        encryption = "none"
        """)


@pytest.fixture
def sites(tmp_path: Path, keydir: Path) -> Iterator[tuple[TwoSites, dict[str, str]]]:
    ts = two_sites(tmp_path)
    keys = {"a": generate_private_key(), "b": generate_private_key(), "psk": generate_psk()}
    try:
        for side, site in (("a", ts.a), ("b", ts.b)):
            site.write(site_config(side, ts, keys, keydir, (new_ifname("sc"), new_ifname("sc"))))
        ts.a.start()
        ts.b.start()
        try:
            ts.b.ns.wait_ping("10.237.1.1", within=20)
            ts.b.ns.wait_ping("10.237.2.1", within=20)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- a ---\n{ts.a.log_tail()}\n--- b ---\n"
                                 f"{ts.b.log_tail()}") from None
        yield ts, keys
    finally:
        ts.a.stop()
        ts.b.stop()


def worker_pids(site: Site) -> dict[str, int]:
    pids = {name: t["pid"] for name, t in site.status()["tunnels"].items()}
    assert all(isinstance(p, int) for p in pids.values()), pids
    return pids


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = " ".join(v.split())
    return out


def worker_ids(pid: int) -> tuple[int, int]:
    """The worker's (uid, gid), from /proc."""
    st = proc_status(pid)
    return int(st["Uid"].split()[0]), int(st["Gid"].split()[0])


def test_every_worker_runs_unprivileged(sites: tuple[TwoSites, dict[str, str]]) -> None:
    ts, _ = sites
    for site in (ts.a, ts.b):
        daemon_pid = site.status()["daemon"]["pid"]
        assert proc_status(daemon_pid)["Uid"].split()[0] == "0"  # the daemon itself is root
        uids = set()
        for tunnel, pid in worker_pids(site).items():
            st = proc_status(pid)
            where = f"{site.label}/{tunnel} (pid {pid})"
            # a uid of its own (issue 16.4): from the worker uid range, no passwd entry,
            # gid the same number, no supplementary groups
            uid = int(st["Uid"].split()[0])
            assert DEFAULT_UID_BASE <= uid < DEFAULT_UID_BASE + DEFAULT_UID_COUNT, where
            uids.add(uid)
            assert st["Uid"].split() == [str(uid)] * 4, where
            assert st["Gid"].split() == [str(uid)] * 4, where
            assert st["Groups"] == "", where
            for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(st[field], 16) == 0, f"{where}: {field} {st[field]}"
            assert st["NoNewPrivs"] == "1", where
            limits = Path(f"/proc/{pid}/limits").read_text()
            core = next(line for line in limits.splitlines() if line.startswith("Max core"))
            assert core.split()[4:6] == ["0", "0"], f"{where}: {core}"
            # not dumpable: /proc/PID files belong to root, not to the worker user
            assert os.stat(f"/proc/{pid}/mem").st_uid == 0, where
        assert len(uids) == len(worker_pids(site)), uids  # one uid per tunnel


def tun_fds(pid: int) -> dict[int, str]:
    """fd -> interface name, for each /dev/net/tun fd the process holds."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/net/tun":
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            iff = [line.split()[1] for line in info.splitlines() if line.startswith("iff:")]
            out[int(fd)] = iff[0] if iff else "?"
    return out


def test_each_worker_holds_only_its_own_device_and_sockets(
        sites: tuple[TwoSites, dict[str, str]]) -> None:
    ts, _ = sites
    for site in (ts.a, ts.b):
        status = site.status()
        for tunnel, pid in worker_pids(site).items():
            own = status["tunnels"][tunnel]["interface"]
            assert list(tun_fds(pid).values()) == [own], f"{site.label}/{tunnel}"
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                ok = (target == "/dev/net/tun" or target.startswith(("socket:", "anon_inode:"))
                      or int(fd) <= 2)
                assert ok, f"{site.label}/{tunnel} pid {pid} holds fd {fd} -> {target}"


PROBE = r"""
import errno, fcntl, json, os, resource, signal, socket, struct, sys
from tund.relay.process.privileges import drop_privileges
from tund.workerapi.run_as import RunAs
uid, gid = int(sys.argv[1]), int(sys.argv[2])
keys, ifname, worker = sys.argv[3].split(","), sys.argv[4], int(sys.argv[5])
drop_privileges(RunAs(uid, gid))   # become exactly what a worker is
out = {}
def attempt(what, fn):
    try:
        fn()
        out[what] = "ok"
    except OSError as e:
        out[what] = errno.errorcode.get(e.errno, str(e.errno))
for k in keys:
    attempt("read " + k, lambda k=k: open(k, "rb").read())
def attach():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", ifname.encode(), 0x0001 | 0x1000))
    finally:
        os.close(fd)
attempt("attach " + ifname, attach)
attempt("worker environ", lambda: open(f"/proc/{worker}/environ", "rb").read())
attempt("worker mem", lambda: open(f"/proc/{worker}/mem", "rb").read(1))
attempt("worker fd", lambda: os.listdir(f"/proc/{worker}/fd"))
attempt("setuid 0", lambda: os.setuid(0))
attempt("kill -STOP worker", lambda: os.kill(worker, signal.SIGSTOP))
attempt("prlimit worker", lambda: resource.prlimit(worker, resource.RLIMIT_NOFILE, (64, 64)))
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sys.argv[6])
    finally:
        s.close()
attempt("connect control socket", connect)
print(json.dumps(out))
"""


def test_worker_user_cannot_reach_keys_devices_or_other_workers(
        sites: tuple[TwoSites, dict[str, str]], keydir: Path) -> None:
    ts, _ = sites
    keyfiles = sorted(str(p) for p in keydir.iterdir())
    assert len(keyfiles) == 4
    for k in keyfiles:
        assert stat.S_IMODE(os.stat(k).st_mode) == 0o600
    status = ts.a.status()
    plain_if = status["tunnels"]["plain"]["interface"]
    # as each tunnel's worker in turn (its exact uid and gid), against the other one
    for me, other in (("plain", "wg"), ("wg", "plain")):
        target = status["tunnels"][other]["pid"]
        uid, gid = worker_ids(status["tunnels"][me]["pid"])
        p = ts.a.ns.run(sys.executable, "-c", PROBE, str(uid), str(gid), ",".join(keyfiles),
                        plain_if, str(target), str(ts.a.sock), check=False)
        if '"kill -STOP worker": "ok"' in p.stdout:
            os.kill(target, signal.SIGCONT)
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout.strip().splitlines()[-1])
        for k in keyfiles:
            assert got[f"read {k}"] == "EACCES", got
        assert got[f"attach {plain_if}"] in ("EPERM", "EACCES"), got  # open or TUNSETIFF
        for what in ("worker environ", "worker mem", "worker fd"):
            assert got[what] == "EACCES", (what, got)
        assert got["setuid 0"] == "EPERM", got
        # one tunnel's worker cannot stop or prlimit another's (a uid of its own, 16.4),
        # nor open the control socket (no group of the socket's)
        assert got["kill -STOP worker"] == "EPERM", (me, got)
        assert got["prlimit worker"] == "EPERM", (me, got)
        assert got["connect control socket"] in ("EACCES", "EPERM"), (me, got)
        sock = os.stat(ts.a.sock)
        assert sock.st_uid != uid and gid != sock.st_gid, (me, uid, gid, sock)
    # and the tunnels still work after all this
    assert ts.b.ns.ping("10.237.1.1") and ts.b.ns.ping("10.237.2.1")


def test_secrets_never_leave(sites: tuple[TwoSites, dict[str, str]], keydir: Path) -> None:
    ts, keys = sites
    secrets = {"private a": keys["a"], "private b": keys["b"], "psk": keys["psk"]}
    # an error that involves a key file: it names the file and the mode, not the key
    (keydir / "a.psk").chmod(0o644)
    refused = ts.a.reload(check=False)
    assert refused.returncode != 0
    assert "a.psk" in refused.stdout + refused.stderr
    (keydir / "a.psk").chmod(0o600)
    outputs = {"reload error": refused.stdout + refused.stderr}
    for site in (ts.a, ts.b):
        outputs[f"{site.label} status --json"] = site.ctl("status", "--json").stdout
        outputs[f"{site.label} status"] = site.ctl("status").stdout
        outputs[f"{site.label} dump"] = site.ctl("dump", check=False).stdout
        outputs[f"{site.label} log"] = site.log.read_text()
    shown = json.loads(outputs["a status --json"])["tunnels"]["wg"]
    assert shown["peer_public_key"] == public_key(keys["b"])  # public keys are shown
    for what, text in outputs.items():
        assert text, f"{what} is empty: nothing was checked"
        for name, secret in secrets.items():
            assert secret not in text, f"{name} key appears in {what}"
            assert secret.rstrip("=") not in text, f"{name} key appears in {what}"
