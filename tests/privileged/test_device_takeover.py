"""Device takeover against a real daemon (issue 16.1).

* A throwaway unprivileged user (made with ``useradd`` for this test, removed after)
  cannot attach to any device tund made (tun, tap, multi-queue, not persistent), neither
  while tund runs (it holds them) nor once it has stopped (the persistent ones stay).
  The attempt is a subprocess that opens /dev/net/tun as root (the node is 0600 here; on
  Debian it is 0666, so anyone can open it), switches to the user with setresuid and makes
  the TUNSETIFF: what decides is the device's owner.
* An interface that failed at start with EBUSY because someone held its device comes up
  on the next reload once they let go (it used to stay failed, reload calling it
  "unchanged").
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import _ALL, Netns, unique, veth
from tests.sites import Site, plain_tunnel
from tund.netdev import tuntap

pytestmark = pytest.mark.usefixtures("privileged")

PORT = 55573
UA, UB = "10.236.30.1", "10.236.30.2"
IA, IB = "10.236.31.1", "10.236.31.2"


def make_ns() -> Netns:
    ns = Netns(unique("tse"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    _ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


@pytest.fixture
def stranger() -> Iterator[pwd.struct_passwd]:
    """A fresh unprivileged user with a group of its own; deleted afterwards."""
    useradd, userdel = shutil.which("useradd"), shutil.which("userdel")
    if useradd is None or userdel is None:
        pytest.skip("needs useradd/userdel (passwd)")
    name = unique("tse")
    subprocess.run([useradd, "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "--user-group", name], check=True, capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run([userdel, name], capture_output=True, timeout=30)
        groupdel = shutil.which("groupdel")
        if groupdel:  # usually gone with the user already
            subprocess.run([groupdel, name], capture_output=True, timeout=30)


ATTACH = textwrap.dedent("""
    import fcntl, json, os, struct, sys
    uid, gid, name, flags = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    fd = os.open("/dev/net/tun", os.O_RDWR)
    os.setgroups([]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)
    assert os.getresuid() == (uid, uid, uid)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        print(json.dumps("attached"))
    except OSError as e:
        print(json.dumps(os.strerror(e.errno)))
""").replace("TUNSETIFF", str(tuntap.TUNSETIFF))


def attach_as(ns: Netns, user: pwd.struct_passwd, name: str, flags: int) -> str:
    p = ns.run(sys.executable, "-I", "-c", ATTACH, str(user.pw_uid), str(user.pw_gid), name,
               str(flags))
    return str(json.loads(p.stdout))


def test_a_local_user_cannot_attach_to_any_device_tund_made(
        tmp_path: Path, stranger: pwd.struct_passwd) -> None:
    ns = make_ns()
    site = Site(ns, tmp_path / "a", "a")
    tun, tap, mq, temp = (unique("tse") for _ in range(4))
    site.write(f"""
        [interfaces.{tun}]
        mode = "tun"
        [interfaces.{tap}]
        mode = "tap"
        [interfaces.{mq}]
        mode = "tun"
        multi_queue = true
        [interfaces.{temp}]
        mode = "tun"
        persist = false
    """)
    tun_flags = tuntap.IFF_TUN | tuntap.IFF_NO_PI
    devices = {tun: tun_flags, tap: tuntap.IFF_TAP | tuntap.IFF_NO_PI,
               mq: tun_flags | tuntap.IFF_MULTI_QUEUE, temp: tun_flags}
    try:
        site.start()
        running = {n: attach_as(ns, stranger, n, f) for n, f in devices.items()}
        site.stop()
        stopped = {n: attach_as(ns, stranger, n, f) for n, f in devices.items()}
        owners = {n: ns.run("cat", f"/sys/class/net/{n}/owner").stdout.strip()
                  for n in (tun, tap, mq)}
    finally:
        site.stop()
    assert running == dict.fromkeys(devices, "Operation not permitted"), running
    # after stop: the persistent ones stay (owner root); the other is gone, and making a
    # new device needs CAP_NET_ADMIN
    assert stopped == dict.fromkeys(devices, "Operation not permitted"), stopped
    assert owners == dict.fromkeys((tun, tap, mq), "0"), owners


def test_an_interface_that_failed_with_ebusy_comes_up_on_the_next_reload(
        tmp_path: Path) -> None:
    na, nb = make_ns(), make_ns()
    veth(na, f"{UA}/24", nb, f"{UB}/24")
    a, b = Site(na, tmp_path / "a", "a"), Site(nb, tmp_path / "b", "b")
    ia, ib = unique("tse"), unique("tse")
    a.write(plain_tunnel(ia, "tun", IA, "tcp", "listen", f"{UA}:{PORT}"))
    b.write(plain_tunnel(ib, "tun", IB, "tcp", "remote", f"{UA}:{PORT}"))
    hold = textwrap.dedent(f"""
        import fcntl, os, struct, sys
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, {tuntap.TUNSETIFF}, struct.pack("16sH22x", {ia.encode()!r},
                    {tuntap.IFF_TUN | tuntap.IFF_NO_PI}))
        fcntl.ioctl(fd, {tuntap.TUNSETOWNER}, 0)
        fcntl.ioctl(fd, {tuntap.TUNSETPERSIST}, 1)
        print("holding", flush=True)
        sys.stdin.read()
    """)
    holder = subprocess.Popen(na.argv(sys.executable, "-c", hold), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        a.start()
        b.start()
        st = a.status()
        assert "busy" in (st["interfaces"][ia]["error"] or ""), st["interfaces"]
        assert not b.ns.ping(IA, count=1, timeout=1)
        holder.communicate("", timeout=10)  # they let go; the device stays (persistent)
        reply = json.loads(a.reload().stdout)
        assert ia in reply["changed"]["interfaces"], reply
        assert ia not in reply["unchanged"]["interfaces"]
        assert a.status()["interfaces"][ia]["error"] is None
        b.ns.wait_ping(IA, within=20)
        a.wait_state("t1", "up")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        a.stop()
        b.stop()
        na.run("ip", "link", "del", ia, check=False)
