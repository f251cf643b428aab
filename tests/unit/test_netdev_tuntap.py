"""tuntap without a kernel: ifreq packing, flags, sysfs reading, mismatch messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tund.errors import TunError
from tund.netdev import tuntap
from tund.netdev.tuntap import DeviceInfo


def test_ioctl_numbers_match_linux_if_tun_h() -> None:
    # _IOW('T', 202, int): dir=1 (write) << 30 | size 4 << 16 | 'T' << 8 | nr
    def iow(nr: int) -> int:
        return (1 << 30) | (4 << 16) | (ord("T") << 8) | nr

    ours = {n: getattr(tuntap, n) for n in
            ("TUNSETIFF", "TUNSETPERSIST", "TUNSETOWNER", "TUNSETGROUP", "TUNGETIFF")}
    assert ours == {"TUNSETIFF": iow(202), "TUNSETPERSIST": iow(203), "TUNSETOWNER": iow(204),
                    "TUNSETGROUP": iow(206),
                    "TUNGETIFF": (2 << 30) | (4 << 16) | (ord("T") << 8) | 210}


def test_pack_ifreq_layout() -> None:
    raw = tuntap.pack_ifreq("tun0", 0x1001)
    assert len(raw) == 40
    assert raw[:16] == b"tun0" + b"\0" * 12
    assert raw[16:18] == (0x1001).to_bytes(2, "little")
    assert raw[18:] == b"\0" * 22
    assert tuntap.unpack_ifreq(raw) == ("tun0", 0x1001)


@pytest.mark.parametrize("name", ["", "a" * 16])
def test_pack_ifreq_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="1 to 15 bytes"):
        tuntap.pack_ifreq(name, 0)


def test_pack_ifreq_longest_name() -> None:
    assert tuntap.unpack_ifreq(tuntap.pack_ifreq("a" * 15, 2)) == ("a" * 15, 2)


def test_device_flags() -> None:
    assert tuntap.device_flags("tun", packet_info=False, multi_queue=False) == 0x1001
    assert tuntap.device_flags("tap", packet_info=True, multi_queue=False) == 0x0002
    assert tuntap.device_flags("tap", packet_info=False, multi_queue=True) == 0x1102


def _sysfs(root: Path, name: str, flags: str, owner: str = "-1", group: str = "-1",
           ifindex: str = "7") -> None:
    d = root / name
    d.mkdir()
    for f, v in (("tun_flags", flags), ("owner", owner), ("group", group),
                 ("ifindex", ifindex)):
        (d / f).write_text(v + "\n")


def test_read_device_from_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuntap, "SYSFS_NET", tmp_path)
    _sysfs(tmp_path, "tap1", "0x1902", owner="1000", group="100", ifindex="12")
    _sysfs(tmp_path, "tun1", "0x0001")
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "ifindex").write_text("2\n")
    assert tuntap.read_device("tap1") == DeviceInfo(
        "tap1", "tap", packet_info=False, multi_queue=True, persist=True, owner=1000,
        group=100, ifindex=12)
    assert tuntap.read_device("tun1") == DeviceInfo(
        "tun1", "tun", packet_info=True, multi_queue=False, persist=False, owner=None,
        group=None, ifindex=7)
    assert tuntap.read_device("none0") is None
    with pytest.raises(TunError, match="device eth0: exists but is not a tun/tap device"):
        tuntap.read_device("eth0")
    with pytest.raises(TunError, match="interface name"):
        tuntap.read_device("../etc")


def test_mismatch_messages_name_found_and_expected() -> None:
    found = DeviceInfo("tun0", "tap", packet_info=False, multi_queue=False, persist=True,
                       owner=1000, group=None, ifindex=3)
    assert tuntap.mismatches(found, "tun", packet_info=False, multi_queue=False,
                             owner=None, group=None) == [
        "mode is tap, config says tun", "owner is 1000, config says unset (root)"]
    assert tuntap.mismatches(found, "tap", packet_info=True, multi_queue=False,
                             owner=1000, group=None) == ["packet_info is off, config says on"]
    assert tuntap.mismatches(found, "tap", packet_info=False, multi_queue=False,
                             owner=1000, group=None) == []


def test_a_device_without_owner_or_group_gets_root_as_its_owner() -> None:
    """The kernel lets any user attach to a device with neither owner nor group."""
    assert tuntap.effective_owner(None, None) == 0
    assert tuntap.effective_owner(1000, None) == 1000
    assert tuntap.effective_owner(None, 100) is None  # the group alone restricts it
    mine = DeviceInfo("tun0", "tun", packet_info=False, multi_queue=False, persist=True,
                      owner=0, group=None, ifindex=3)
    ownerless = DeviceInfo("tun0", "tun", packet_info=False, multi_queue=False, persist=True,
                           owner=None, group=None, ifindex=3)
    for found in (mine, ownerless):  # adopted as is (the ownerless one is then fixed)
        assert tuntap.mismatches(found, "tun", packet_info=False, multi_queue=False,
                                 owner=None, group=None) == []
    assert tuntap.mismatches(mine, "tun", packet_info=False, multi_queue=False,
                             owner=None, group=100) == [
        "owner is 0, config says unset", "group is unset, config says 100"]


def test_open_device_mismatch_raises_before_any_ioctl(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuntap, "SYSFS_NET", tmp_path)
    monkeypatch.setattr(tuntap, "TUN_PATH", str(tmp_path / "no-tun-here"))
    _sysfs(tmp_path, "tun0", "0x1802")
    with pytest.raises(TunError, match=r"^device tun0: mode is tap, config says tun$"):
        tuntap.open_device("tun0", "tun")
