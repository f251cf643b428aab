"""TUNSETOFFLOAD on a vnet-header tun: the kernel side of the offload extension
(:mod:`tund.relay.codec.offload` decides when)."""

from __future__ import annotations

import fcntl
import logging

log = logging.getLogger("tund.relay.device.offload")

# <linux/if_tun.h>
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN

def set_device_offload(fd: int, on: bool) -> bool:
    """TUNSETOFFLOAD on the device behind ``fd``; False (logged) if the kernel refuses."""
    flags = OFFLOADS if on else 0
    log.info("[#] ioctl TUNSETOFFLOAD fd %d 0x%02x", fd, flags)
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError as e:
        log.warning("TUNSETOFFLOAD 0x%02x on fd %d failed: %s", flags, fd, e)
        return False
    return True
