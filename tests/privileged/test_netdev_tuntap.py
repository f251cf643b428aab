"""tuntap against the real /dev/net/tun, inside throwaway network namespaces.

Each scenario runs as a small Python snippet under ``ip netns exec`` (so the device and the
sysfs it is read from belong to the namespace) and prints one JSON line back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from tests.netns import Netns, unique
from tund.netdev import tuntap

PRELUDE = """
import json
from dataclasses import asdict
from tund.netdev import tuntap
from tund.errors import TunError

def out(v):
    print(json.dumps(v))

def info(name):
    d = tuntap.read_device(name)
    return None if d is None else asdict(d)
"""


def in_ns(ns: Netns, code: str) -> Any:
    """Run ``code`` (after PRELUDE) in ``ns``; the JSON it printed last."""
    p = ns.run(sys.executable, "-c", PRELUDE + textwrap.dedent(code))
    return json.loads(p.stdout.strip().splitlines()[-1])


def kernel_view(ns: Netns, name: str) -> dict[str, Any]:
    """What ``ip -d`` says about the device: an independent check of our sysfs reading."""
    (link,) = json.loads(ns.run("ip", "-d", "-json", "link", "show", "dev", name).stdout)
    data: dict[str, Any] = link["linkinfo"]["info_data"]
    data["ifindex"] = link["ifindex"]
    return data


@pytest.fixture
def ns(privileged: None) -> Netns:
    return Netns.make("nd")


def test_create_tun_and_tap_persistent(ns: Netns) -> None:
    tun, tap = unique("nd"), unique("nd")
    got = in_ns(ns, f"""
        a = tuntap.open_device({tun!r}, "tun")
        b = tuntap.open_device({tap!r}, "tap", packet_info=True, multi_queue=True)
        tuntap.close(a.fd); tuntap.close(b.fd)
        out([a.created, b.created, info({tun!r}), info({tap!r})])
    """)
    created_a, created_b, a, b = got
    assert created_a and created_b
    assert a | {"ifindex": 0} == dict(name=tun, mode="tun", packet_info=False,
                                      multi_queue=False, persist=True, owner=0, group=None,
                                      ifindex=0)
    assert b["mode"] == "tap" and b["packet_info"] and b["multi_queue"] and b["persist"]
    ka, kb = kernel_view(ns, tun), kernel_view(ns, tap)
    assert (ka["type"], ka["pi"], ka["multi_queue"], ka["persist"]) == ("tun", False, False, True)
    assert (kb["type"], kb["pi"], kb["multi_queue"], kb["persist"]) == ("tap", True, True, True)
    assert (ka["ifindex"], kb["ifindex"]) == (a["ifindex"], b["ifindex"])


def test_non_persistent_device_goes_with_its_fd(ns: Netns) -> None:
    name = unique("nd")
    got = in_ns(ns, f"""
        d = tuntap.open_device({name!r}, "tun", persist=False)
        during = info({name!r})
        tuntap.close(d.fd)
        out([during, info({name!r})])
    """)
    assert got[0]["persist"] is False and got[1] is None


def test_adopt_existing_keeps_ifindex(ns: Netns) -> None:
    name = unique("nd")
    got = in_ns(ns, f"""
        first = tuntap.open_device({name!r}, "tap")
        tuntap.close(first.fd)
        again = tuntap.open_device({name!r}, "tap")
        out([first.info.ifindex, again.created, again.info.ifindex])
    """)
    assert got[1] is False
    assert got[0] == got[2] == kernel_view(ns, name)["ifindex"]


def test_mismatch_names_device_found_and_expected(ns: Netns) -> None:
    name = unique("nd")
    got = in_ns(ns, f"""
        d = tuntap.open_device({name!r}, "tun"); tuntap.close(d.fd)
        try:
            tuntap.open_device({name!r}, "tap")
            msg = None
        except TunError as e:
            msg = str(e)
        out([msg, d.info.ifindex, info({name!r})])
    """)
    msg, ifindex, after = got
    assert msg == f"device {name}: mode is tun, config says tap"
    assert after["mode"] == "tun" and after["ifindex"] == ifindex  # left untouched


def test_busy_device_raises_with_errno_text(ns: Netns) -> None:
    name = unique("nd")
    msg = in_ns(ns, f"""
        held = tuntap.open_device({name!r}, "tun")
        try:
            tuntap.open_device({name!r}, "tun")
            out(None)
        except TunError as e:
            out(str(e))
    """)
    assert msg.startswith(f"device {name}: ioctl TUNSETIFF failed: Device or resource busy")


def test_owner_and_group_set_and_read_back(ns: Netns) -> None:
    name = unique("nd")
    got = in_ns(ns, f"""
        d = tuntap.open_device({name!r}, "tap", owner=65534, group=65534)
        out(info({name!r}))
    """)
    assert (got["owner"], got["group"]) == (65534, 65534)
    k = kernel_view(ns, name)
    assert (k["user"], k["group"]) in ((65534, 65534), ("nobody", "nogroup"))


def test_delete_device(ns: Netns) -> None:
    name = unique("nd")
    got = in_ns(ns, f"""
        d = tuntap.open_device({name!r}, "tun"); tuntap.close(d.fd)
        before = info({name!r})
        existed = tuntap.delete_device({name!r})
        out([before is not None, existed, info({name!r}), tuntap.delete_device({name!r})])
    """)
    assert got == [True, True, None, False]


def _attach_as(ns: Netns, name: str, uid: int, extra_flags: int = 0) -> tuple[int, str]:
    """As ``uid`` (no groups, no capabilities), TUNSETIFF ``name`` on a /dev/net/tun fd.

    /dev/net/tun is 0600 here, so the shell opens it as root on fd 3 and setpriv drops to
    ``uid`` before Python makes the ioctl: the permission check is the device's owner.
    """
    code = (f"import fcntl, struct; fcntl.ioctl(3, {tuntap.TUNSETIFF}, "
            f"struct.pack('16sH22x', {name.encode()!r}, "
            f"{tuntap.IFF_TUN | tuntap.IFF_NO_PI | extra_flags}));"
            " print('attached')")
    p = ns.run("sh", "-c", f'exec 3<>/dev/net/tun; exec setpriv --reuid={uid} --regid={uid} '
                           f'--clear-groups /usr/bin/python3 -I -c "{code}"', check=False)
    return p.returncode, p.stdout + p.stderr


def test_non_root_owner_can_attach(ns: Netns) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    name = unique("nd")
    in_ns(ns, f"""
        d = tuntap.open_device({name!r}, "tun", owner=65534); tuntap.close(d.fd)
        out(True)
    """)
    rc, text = _attach_as(ns, name, 65533)
    assert rc != 0 and "Operation not permitted" in text
    rc, text = _attach_as(ns, name, 65534)
    assert rc == 0 and "attached" in text, text


def test_no_other_user_can_attach_to_a_device_tund_made(ns: Netns) -> None:
    """Without owner or group a device gets owner root; an ownerless one is fixed on adoption.

    Before: a device with neither owner nor group let any user attach (and read the
    tunnel's traffic while tund was stopped, or at any time with multi_queue)."""
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    made, multi, foreign = unique("nd"), unique("nd"), unique("nd")
    flags = tuntap.IFF_TUN | tuntap.IFF_NO_PI
    code = PRELUDE + textwrap.dedent(f"""
        import fcntl, os, struct, sys
        a = tuntap.open_device({made!r}, "tun"); tuntap.close(a.fd)
        m = tuntap.open_device({multi!r}, "tun", multi_queue=True)   # stays attached
        fd = os.open("/dev/net/tun", os.O_RDWR)  # someone else's device: no owner, no group
        fcntl.ioctl(fd, tuntap.TUNSETIFF, struct.pack("16sH22x", {foreign.encode()!r}, {flags}))
        fcntl.ioctl(fd, tuntap.TUNSETPERSIST, 1); os.close(fd)
        before = info({foreign!r})
        b = tuntap.open_device({foreign!r}, "tun"); tuntap.close(b.fd)
        out([info({made!r})["owner"], info({multi!r})["owner"], before["owner"],
             info({foreign!r})["owner"]])
        sys.stdout.flush()
        sys.stdin.read()   # until the test is done
    """)
    holder = subprocess.Popen(ns.argv(sys.executable, "-c", code), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert json.loads(holder.stdout.readline()) == [0, 0, None, 0]
        for name in (made, foreign):  # tund stopped: persistent devices nobody holds
            rc, text = _attach_as(ns, name, 65533)
            assert rc != 0 and "Operation not permitted" in text, (name, text)
        rc, text = _attach_as(ns, multi, 65533, tuntap.IFF_MULTI_QUEUE)  # tund holds it
        assert rc != 0 and "Operation not permitted" in text, text
        rc, text = _attach_as(ns, made, 0)  # root still can
        assert rc == 0 and "attached" in text, text
    finally:
        holder.communicate("", timeout=10)


def test_adopt_follows_persist_and_set_persist(ns: Netns) -> None:
    name, other = unique("nd"), unique("nd")
    got = in_ns(ns, f"""
        d = tuntap.open_device({name!r}, "tun"); tuntap.close(d.fd)
        adopted = tuntap.open_device({name!r}, "tun", persist=False)
        held = info({name!r})
        tuntap.close(adopted.fd)
        e = tuntap.open_device({other!r}, "tap", persist=False)
        tuntap.set_persist(e.fd, True)
        tuntap.close(e.fd)
        out([held["persist"], info({name!r}), info({other!r})["persist"]])
    """)
    assert got == [False, None, True]
