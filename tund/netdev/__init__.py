"""Kernel objects, never packets.

* :mod:`tund.netdev.tuntap`: TUN/TAP devices by ioctl on /dev/net/tun (create, adopt, delete).
* :mod:`tund.netdev.ip`: the only place ``ip`` runs (``IpRunner``; the ``Ip`` Protocol).
* :mod:`tund.netdev.reconcile`: link config as a diff against ``ip -json`` (pure planning,
  apply with rollback).

Every change to the kernel is logged before it is made.
"""
