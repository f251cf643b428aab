"""TUN/TAP devices by ioctl on ``/dev/net/tun`` (no netlink, no pyroute2).

Contract:

* :func:`read_device` reads an existing device from sysfs (``/sys/class/net/NAME``):
  ``None`` if there is no such device, :class:`~tund.errors.TunError` if it exists but is
  not a TUN/TAP device. sysfs shows the network namespace it was mounted in (``ip netns
  exec`` mounts the right one).
* :func:`open_device` adopts a matching existing device (attaches with the same flags; the
  ifindex does not change) or creates it (``TUNSETIFF``, then ``TUNSETOWNER`` /
  ``TUNSETGROUP`` / ``TUNSETPERSIST`` as asked). A device whose mode, packet_info,
  multi_queue, owner or group differ from the request is never touched: TunError names the
  device, the value found and the value asked for.
* No device is left without an owner: the kernel lets *any* user who can open
  /dev/net/tun attach to a device that has neither owner nor group (and read its
  traffic). Without a configured owner or group a device gets owner 0 (root), and an
  adopted device found without either is given owner 0 (:func:`effective_owner`).
* Every ioctl that changes the kernel is logged (logger ``tund.netdev.tuntap``) *before* it
  is made, as ``[#] ioctl NAME DEVICE VALUE``.
* The returned fd is blocking; the worker makes it non-blocking.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tund.config import check_ifname
from tund.errors import TunError

log = logging.getLogger("tund.netdev.tuntap")

TUN_PATH = "/dev/net/tun"
SYSFS_NET = Path("/sys/class/net")

# <linux/if_tun.h>: _IOW('T', n, int) / _IOR('T', n, unsigned int)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
TUNGETIFF = 0x800454D2

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

IFNAMSIZ = 16
# struct ifreq: char ifr_name[IFNAMSIZ]; union { short ifr_flags; ... } (24 bytes on 64-bit)
_IFREQ = struct.Struct("16sH22x")

Mode = Literal["tun", "tap"]


def pack_ifreq(name: str, flags: int) -> bytes:
    """``struct ifreq`` carrying ``name`` and ``ifr_flags``; ValueError if the name is too long."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    return _IFREQ.pack(raw, flags)


def unpack_ifreq(data: bytes) -> tuple[str, int]:
    """``(name, flags)`` from a ``struct ifreq`` as filled by the kernel."""
    raw, flags = _IFREQ.unpack(data[: _IFREQ.size])
    return raw.split(b"\0", 1)[0].decode(), flags


def device_flags(mode: Mode, *, packet_info: bool, multi_queue: bool,
                 vnet_hdr: bool = False) -> int:
    """The TUNSETIFF flags for a device of this shape.

    ``vnet_hdr``: every packet read or written carries a ``virtio_net_hdr`` (needed for
    offloads, see :mod:`tund.relay.codec.offload`). The kernel keeps this flag per device and
    sets it from each TUNSETIFF, so every attach must ask the same.
    """
    flags = IFF_TUN if mode == "tun" else IFF_TAP
    if not packet_info:
        flags |= IFF_NO_PI
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    return flags


@dataclass(frozen=True)
class DeviceInfo:
    """What the kernel says about one TUN/TAP device. ``owner``/``group`` None = unset."""

    name: str
    mode: Mode
    packet_info: bool
    multi_queue: bool
    persist: bool
    owner: int | None
    group: int | None
    ifindex: int


@dataclass(frozen=True)
class OpenedDevice:
    """An fd attached to ``info.name``; ``created`` is False when an existing one was adopted."""

    fd: int
    info: DeviceInfo
    created: bool


def _field(name: str) -> dict[str, str]:
    """The journal field of messages about device ``name`` (see tund.logs)."""
    return {"TUND_INTERFACE": name}


def _errtext(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


def _ioctl(fd: int, request: int, arg: int | bytes, what: str, name: str) -> int | bytes:
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        hint = ""
        if e.errno == errno.EBUSY:
            hint = " (another process holds it, and it is not multi-queue)"
        elif e.errno == errno.EPERM:
            hint = " (needs CAP_NET_ADMIN, or the device's owner/group)"
        elif e.errno == errno.EINVAL and what == "TUNSETIFF":
            hint = " (the existing device has a different mode or multi_queue)"
        raise TunError(f"device {name}: ioctl {what} failed: {_errtext(e)}{hint}") from e


def _set(fd: int, request: int, what: str, name: str, value: int) -> None:
    log.info("[#] ioctl %s %s %d", what, name, value, extra=_field(name))
    _ioctl(fd, request, value, what, name)


def _read_int(path: Path) -> int:
    text = path.read_text().strip()
    return int(text, 16) if text.startswith("0x") else int(text)


def read_device(name: str) -> DeviceInfo | None:
    """The TUN/TAP device ``name`` as sysfs shows it; None if absent.

    Raises TunError if ``name`` exists but is not a TUN/TAP device.
    """
    if why := check_ifname(name):
        raise TunError(f"device {name!r}: interface name {why}")
    base = SYSFS_NET / name
    if not base.exists():
        return None
    try:
        flags = _read_int(base / "tun_flags")
        owner = _read_int(base / "owner")
        group = _read_int(base / "group")
        ifindex = _read_int(base / "ifindex")
    except FileNotFoundError:
        if base.exists():
            raise TunError(f"device {name}: exists but is not a tun/tap device") from None
        return None  # vanished while we looked
    return DeviceInfo(
        name=name,
        mode="tap" if flags & IFF_TAP else "tun",
        packet_info=not flags & IFF_NO_PI,
        multi_queue=bool(flags & IFF_MULTI_QUEUE),
        persist=bool(flags & IFF_PERSIST),
        owner=None if owner < 0 else owner,
        group=None if group < 0 else group,
        ifindex=ifindex,
    )


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def effective_owner(owner: int | None, group: int | None) -> int | None:
    """The owner a device gets: ``owner``, or root (0) when neither owner nor group is set
    (a device with neither may be attached by any user)."""
    return 0 if owner is None and group is None else owner


def mismatches(found: DeviceInfo, mode: Mode, *, packet_info: bool, multi_queue: bool,
               owner: int | None, group: int | None) -> list[str]:
    """Why ``found`` is not the device asked for, one phrase per differing field.

    ``owner`` is compared as :func:`effective_owner` makes it, except that a device with
    neither owner nor group matches a request for neither (it is then given owner 0).
    """
    ownerless = found.owner is None and found.group is None
    wanted = {"mode": mode, "packet_info": packet_info, "multi_queue": multi_queue,
              "owner": owner if ownerless else effective_owner(owner, group), "group": group}
    shown = {**wanted, "owner": "unset (root)" if owner is None and group is None else owner}
    return [f"{key} is {_show(getattr(found, key))}, config says {_show(shown[key])}"
            for key, want in wanted.items() if getattr(found, key) != want]


def _open_tun(name: str) -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(f"device {name}: cannot open {TUN_PATH}: {_errtext(e)}") from e


def attach(name: str, flags: int) -> int:
    """Open /dev/net/tun and TUNSETIFF ``name`` with ``flags``; the new fd (closed on error)."""
    fd = _open_tun(name)
    log.info("[#] ioctl TUNSETIFF %s flags=0x%04x", name, flags, extra=_field(name))
    try:
        _ioctl(fd, TUNSETIFF, pack_ifreq(name, flags), "TUNSETIFF", name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_device(name: str, mode: Mode, *, packet_info: bool = False, multi_queue: bool = False,
                persist: bool = True, owner: int | None = None,
                group: int | None = None, vnet_hdr: bool = False) -> OpenedDevice:
    """Adopt or create device ``name`` and return an fd attached to it.

    An existing device must match mode, packet_info, multi_queue, owner and group (else
    TunError naming each difference); its persist flag is set to ``persist`` if it differs.
    ``vnet_hdr`` asks for IFF_VNET_HDR (see :func:`device_flags`).
    Errors from the kernel raise TunError with the device name and the errno text.
    """
    flags = device_flags(mode, packet_info=packet_info, multi_queue=multi_queue,
                         vnet_hdr=vnet_hdr)
    found = read_device(name)
    if found is not None:
        if diffs := mismatches(found, mode, packet_info=packet_info, multi_queue=multi_queue,
                               owner=owner, group=group):
            raise TunError(f"device {name}: {'; '.join(diffs)}")
        log.info("adopting existing %s device %s (ifindex %d)", mode, name, found.ifindex,
                 extra=_field(name))
        fd = attach(name, flags)
        try:
            if found.owner is None and found.group is None:
                log.warning("device %s has no owner or group: any user could attach to it; "
                            "giving it owner 0", name, extra=_field(name))
                _set(fd, TUNSETOWNER, "TUNSETOWNER", name, 0)
            if found.persist != persist:
                _set(fd, TUNSETPERSIST, "TUNSETPERSIST", name, int(persist))
        except BaseException:
            os.close(fd)
            raise
        created = False
    else:
        log.info("creating %s device %s", mode, name, extra=_field(name))
        fd = attach(name, flags)
        try:
            if (uid := effective_owner(owner, group)) is not None:
                _set(fd, TUNSETOWNER, "TUNSETOWNER", name, uid)
            if group is not None:
                _set(fd, TUNSETGROUP, "TUNSETGROUP", name, group)
            if persist:
                _set(fd, TUNSETPERSIST, "TUNSETPERSIST", name, 1)
        except BaseException:
            os.close(fd)  # not persistent yet (persist is set last): the device goes with it
            raise
        created = True
    info = read_device(name)
    if info is None:
        os.close(fd)
        raise TunError(f"device {name}: attached but not visible in {SYSFS_NET}")
    return OpenedDevice(fd=fd, info=info, created=created)


def attached_name(fd: int) -> tuple[str, int]:
    """``(name, flags)`` of the device ``fd`` is attached to (TUNGETIFF)."""
    res = _ioctl(fd, TUNGETIFF, bytes(_IFREQ.size), "TUNGETIFF", f"fd {fd}")
    assert isinstance(res, bytes)
    return unpack_ifreq(res)


def set_persist(fd: int, on: bool) -> None:
    """Set or clear the persist flag of the device ``fd`` is attached to."""
    name, _ = attached_name(fd)
    _set(fd, TUNSETPERSIST, "TUNSETPERSIST", name, int(on))


def close(fd: int) -> None:
    """Close a device fd; a non-persistent device disappears with its last fd."""
    os.close(fd)


def delete_device(name: str, fd: int | None = None) -> bool:
    """Remove device ``name``; True if it existed.

    With ``fd`` (an fd already attached to it) clear persist on that fd and close it; this is
    the way for a non-persistent device, or one this process holds (a second attach to a
    non-multi-queue device fails with EBUSY). Without ``fd`` attach with the device's own
    flags, clear persist and close. The device disappears once no other process holds it.
    """
    if fd is not None:
        try:
            set_persist(fd, False)
        finally:
            os.close(fd)
        return True
    found = read_device(name)
    if found is None:
        return False
    fd = attach(name, device_flags(found.mode, packet_info=found.packet_info,
                                   multi_queue=found.multi_queue))
    try:
        if found.persist:
            _set(fd, TUNSETPERSIST, "TUNSETPERSIST", name, 0)
    finally:
        os.close(fd)
    return True
