"""Shared helpers for the WireGuard end-to-end tests (tund daemons, wireguard-go, hostile input).

* key material: :class:`KeyPair`, :func:`write_key` (mode 0600 files as tund requires);
* configs: :func:`wg_tunnel` (one encrypted tunnel over one interface);
* wireguard-go: :class:`WireGuardGo` runs ``wireguard-go -f`` in a namespace, configures it
  with ``wg set`` and stops it by PID (its UAPI socket lives in /var/run/wireguard, shared
  by every namespace, so interface names come from :func:`tests.netns.unique`);
* the kernel's view: :func:`link_stats` (a device's counters in a namespace),
  :func:`disable_ipv6` (no router solicitations muddying the counters);
* sockets inside a namespace from this very process: :func:`ns_socket` (setns around the
  ``socket()`` call; the socket stays in that namespace), :class:`Sniffer` (an AF_PACKET
  socket collecting the UDP payloads of one port, tcpdump-free).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netns import Netns, stop, unique
from tests.sites import TwoSites

CLONE_NEWNET = 0x40000000
ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    priv: str
    pub: str

    @classmethod
    def new(cls) -> KeyPair:
        from tund.keys import generate_private_key, public_key
        priv = generate_private_key()
        return cls(priv, public_key(priv))


def new_psk() -> str:
    from tund.keys import generate_psk
    return generate_psk()


def write_key(path: Path, key: str, mode: int = 0o600) -> Path:
    """Write one base64 key (and a newline) to ``path`` with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def wg_tunnel(ifname: str, mode: str, inner: str, transport: str, endpoint_key: str,
              endpoint: str, private_key_file: Path, peer_public_key: str,
              preshared_key_file: Path | None = None, tunnel: str = "t1",
              extra_tun: str = "", mtu: int | None = None) -> str:
    """A config with one WireGuard tunnel (the default encryption) over one interface."""
    psk = f'preshared_key_file = "{preshared_key_file}"' if preshared_key_file else ""
    mtu_line = f"mtu = {mtu}" if mtu else ""
    return f"""
[interfaces.{ifname}]
mode = "{mode}"
addresses = ["{inner}/24"]
{mtu_line}

[tunnels.{tunnel}]
interface = "{ifname}"
transport = "{transport}"
{endpoint_key} = "{endpoint}"
private_key_file = "{private_key_file}"
peer_public_key = "{peer_public_key}"
{psk}
{extra_tun}
"""


# --------------------------------------------------------------------------- waiting


def wait_for(pred: Callable[[], Any], within: float, what: str, every: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy (returned) or fail after ``within``."""
    end = time.monotonic() + within
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(every)


# --------------------------------------------------------------------------- kernel view


def link_stats(ns: Netns, ifname: str) -> dict[str, int]:
    """rx/tx packets and bytes of ``ifname`` in ``ns`` (/sys/class/net/X/statistics)."""
    base = f"/sys/class/net/{ifname}/statistics"
    names = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes")
    out = ns.run("cat", *(f"{base}/{n}" for n in names)).stdout.split()
    return dict(zip(names, map(int, out), strict=True))


def disable_ipv6(*nss: Netns) -> None:
    for ns in nss:
        for scope in ("all", "default"):
            ns.run("sysctl", "-q", "-w", f"net.ipv6.conf.{scope}.disable_ipv6=1")


def dev_with_addr(ns: Netns, addr: str) -> str:
    """The name of the device in ``ns`` that carries IPv4 ``addr``."""
    for link in json.loads(ns.run("ip", "-j", "-4", "addr", "show").stdout):
        if any(a.get("local") == addr for a in link.get("addr_info", [])):
            return str(link["ifname"])
    raise AssertionError(f"no device with {addr} in {ns.name}")


# --------------------------------------------------------------------------- sockets in a netns


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: Netns) -> Iterator[None]:
    """Run the body (this thread only) inside ``ns``; always switch back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def ns_socket(ns: Netns, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``ns`` (it stays there, whatever this thread does next)."""
    with in_netns(ns):
        return socket.socket(family, kind, proto)


@dataclass
class Captured:
    """One UDP datagram seen on the wire."""

    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


@dataclass
class Sniffer:
    """Collects the UDP datagrams to or from ``port`` crossing ``ifname`` in ``ns``.

    The AF_PACKET socket buffers in the kernel (4 MiB) until :meth:`drain` reads it, so
    open it before the traffic of interest and drain it whenever convenient.
    """

    ns: Netns
    ifname: str
    port: int
    seen: list[Captured] = field(default_factory=list)

    def __post_init__(self) -> None:
        # ETH_P_ALL: a socket bound to one protocol does not see outgoing packets
        self.sock = ns_socket(self.ns, socket.AF_PACKET, socket.SOCK_DGRAM,
                              socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
        self.sock.bind((self.ifname, ETH_P_ALL))
        self.sock.setblocking(False)

    def drain(self) -> list[Captured]:
        while True:
            try:
                pkt, addr = self.sock.recvfrom(70000)
            except BlockingIOError:
                return self.seen
            if addr[1] != ETH_P_IP or len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != 17:
                continue
            ihl = (pkt[0] & 15) * 4
            sport, dport, _ulen = struct.unpack_from("!HHH", pkt, ihl)
            if self.port not in (sport, dport):
                continue
            src = (socket.inet_ntoa(pkt[12:16]), sport)
            dst = (socket.inet_ntoa(pkt[16:20]), dport)
            self.seen.append(Captured(src, dst, bytes(pkt[ihl + 8:])))

    def first(self, kind: int, to_port: bool = True) -> Captured:
        """The first captured WireGuard message of type ``kind`` going to (or from) port."""
        for c in self.drain():
            if c.payload[:1] == bytes([kind]) and (c.dst[1] == self.port) == to_port:
                return c
        seen = [(c.src, c.dst, c.payload[:4].hex(), len(c.payload)) for c in self.seen]
        raise AssertionError(f"no message of type {kind} {'to' if to_port else 'from'} "
                             f"port {self.port} captured: {seen}")

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- wireguard-go


@dataclass
class WireGuardGo:
    """``wireguard-go -f IFNAME`` in ``ns``, configured for one peer; stop() by PID."""

    ns: Netns
    dir: Path
    keys: KeyPair
    listen_port: int
    ifname: str = field(default_factory=lambda: unique("wiwg"))
    binary: str = "wireguard-go"  # another build: its path (e.g. Debian 13's, with offloads)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / f"{self.ifname}.log"
        self.sock = Path(f"/var/run/wireguard/{self.ifname}.sock")
        self.proc = self.ns.spawn(
            self.binary, "-f", self.ifname, log=self.log,
            env={"LOG_LEVEL": "debug", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
        wait_for(lambda: self.sock.exists() or self.proc.poll() is not None, 10,
                 f"{self.sock}")
        if self.proc.poll() is not None:
            raise AssertionError(f"wireguard-go exited {self.proc.returncode}:\n"
                                 + self.log.read_text())
        key = write_key(self.dir / f"{self.ifname}.key", self.keys.priv)
        self.ns.run("wg", "set", self.ifname, "private-key", str(key),
                    "listen-port", str(self.listen_port))

    def set_peer(self, pub: str, allowed_ips: str, endpoint: str | None = None,
                 psk: str | None = None, keepalive: int = 0) -> None:
        argv = ["wg", "set", self.ifname, "peer", pub, "allowed-ips", allowed_ips]
        if endpoint:
            argv += ["endpoint", endpoint]
        if psk:
            argv += ["preshared-key", str(write_key(self.dir / f"{self.ifname}.psk", psk))]
        if keepalive:
            argv += ["persistent-keepalive", str(keepalive)]
        self.ns.run(*argv)

    def up(self, addr: str, mtu: int = 1420) -> None:
        self.ns.run("ip", "addr", "add", addr, "dev", self.ifname)
        self.ns.run("ip", "link", "set", self.ifname, "mtu", str(mtu), "up")

    def latest_handshake(self) -> int:
        """Unix seconds of the latest handshake with the (one) peer, 0 if none."""
        out = self.ns.run("wg", "show", self.ifname, "latest-handshakes").stdout.split()
        return int(out[1]) if len(out) == 2 else 0

    def stop(self) -> None:
        stop(self.proc)
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"


# --------------------------------------------------------------------------- two tund sites


@dataclass
class WgPair:
    """Two tund sites joined by one WireGuard tunnel ``t1`` (a listens, b connects)."""

    ts: TwoSites
    ia: str
    ib: str
    ka: KeyPair
    kb: KeyPair
    psk: str | None
    net: int

    def inner(self, side: str) -> str:
        """The tunnel address of site ``a`` or ``b`` (10.231.NET.1 / .2)."""
        return f"10.231.{self.net}.{1 if side == 'a' else 2}"

    def logs(self) -> str:
        return (f"--- a ---\n{self.ts.a.log_tail()}\n--- b ---\n{self.ts.b.log_tail()}\n"
                f"--- a status ---\n{self.ts.a.ctl('status', '--json', check=False).stdout}")

    def stop(self) -> None:
        self.ts.a.stop()
        self.ts.b.stop()


_NET = [os.getpid() % 200]


def wg_pair(ts: TwoSites, *, mode: str = "tun", transport: str = "udp", psk: bool = False,
            port: int = 51900, env: dict[str, str] | None = None, start: bool = True) -> WgPair:
    """Write keys and configs for both sites of ``ts`` (and start both daemons)."""
    ka, kb = KeyPair.new(), KeyPair.new()
    shared = new_psk() if psk else None
    ia, ib = unique("wia"), unique("wib")
    _NET[0] = _NET[0] % 250 + 1
    net = _NET[0]
    for site, me, other, ifname, key, ep_key, ep in (
            (ts.a, ka, kb, ia, "a", "listen", f"{ts.ua}:{port}"),
            (ts.b, kb, ka, ib, "b", "remote", f"{ts.ua}:{port}")):
        priv = write_key(site.dir / f"{key}.key", me.priv)
        psk_file = write_key(site.dir / "shared.psk", shared) if shared else None
        inner = f"10.231.{net}.{1 if key == 'a' else 2}"
        site.write(wg_tunnel(ifname, mode, inner, transport, ep_key, ep, priv, other.pub,
                             psk_file))
    pair = WgPair(ts, ia, ib, ka, kb, shared, net)
    if start:
        ts.a.start(extra_env=env)
        ts.b.start(extra_env=env)
    return pair
