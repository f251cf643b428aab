"""``tundctl peer add|remove|enable|disable TUNNEL NAME`` (issue 18): clients of a tunnel
with ``peers``, each a drop-in ``TUNNEL-peer-NAME.toml`` (mode 0600) in the running
daemon's drop-in directory (``STEM.d/`` beside its config; ``--config PATH`` overrides).

Contract: every change runs under a lock file in the drop-in directory (two runs at once
never pick the same address or name), is validated offline with the whole configuration
before the daemon sees it, and is then reloaded over the control socket; when the check
or the reload fails, the files are put back as they were (no half-added peer is left).
``add`` prints the client's wg-quick config (stdout, or ``--output FILE`` mode 0600; a QR
code on the terminal with ``--qr``); the client's private key is never stored here.

Size: the four commands share one transaction (lock, drop-in, offline check, reload, undo)
and its helpers; the enrollment text is in enroll and wgconf.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tund.ctl.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    RELOAD_TIMEOUT,
    Context,
    UsageError,
    ask,
    err,
    make_parser,
    out,
)
from tund.ctl.config_cmds import _load_config, _own_public_key, config_path_for
from tund.ctl.enroll import (
    MARKER,
    ClientConfig,
    PrefixFull,
    dropin_name,
    dropin_text,
    endpoint_text,
    next_free,
    taken_networks,
    wg_quick,
)

LOCK_NAME = ".tundctl-peer.lock"


class Refused(Exception):
    """A peer command cannot go on; the message says why (exit 1)."""


# --------------------------------------------------------------------------- files


def config_path(ctx: Context, ns: argparse.Namespace) -> Path:
    from tund import config

    return config_path_for(ctx, ns) or config.default_config_path()


def dropin_dir(path: Path) -> Path:
    """``STEM.d`` beside the main config file (as :func:`tund.config.config_files`)."""
    return path.parent / (path.stem + ".d")


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.tundctl-peer.lock`` (made if missing)."""
    import fcntl

    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` mode 0600, atomically (a temporary file renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load(name: str, path: Path) -> Any:
    loaded = _load_config(name, path)
    if isinstance(loaded, int):
        raise Refused(f"{path}: the configuration is invalid (see above); nothing was changed")
    return loaded[1]


def _tunnel(cfg: Any, tunnel: str) -> Any:
    if tunnel not in cfg.tunnels:
        known = ", ".join(sorted(cfg.tunnels)) or "none"
        raise Refused(f"no tunnel named {tunnel!r} (configured: {known})")
    t = cfg.tunnels[tunnel]
    if t.peers is None:
        raise Refused(f"tunnel {tunnel!r} has one peer (peer_public_key), not a peers table; "
                      f"add `[tunnels.{tunnel}.peers]` (and move its peer there) to enroll "
                      "clients")
    return t


def where_defined(path: Path, tunnel: str, peer: str) -> str:
    """``FILE:LINE`` of ``[tunnels.T.peers.N]`` among the config files, or ``""``."""
    from tund import config

    for f in config.config_files(path):
        try:
            lines = config.key_lines(f.read_text())
        except (OSError, UnicodeDecodeError):
            continue
        if (line := lines.get(("tunnels", tunnel, "peers", peer))) is not None:
            return f"{f}:{line}"
    return ""


# --------------------------------------------------------------------------- apply


def apply(ctx: Context, ns: argparse.Namespace, cmd: str, path: Path,
          changes: dict[Path, str | None]) -> int:
    """Write (text) or delete (None) each file, check the whole config offline, reload;
    on any failure put every file back as it was and return the exit code."""
    before: dict[Path, str | None] = {}
    for f in changes:
        before[f] = f.read_text() if f.exists() else None
    try:
        _put(changes)
        if isinstance(_load_config(cmd, path), int):
            raise Refused("the configuration with this change is invalid (see above)")
        if not ns.no_reload:
            result = ask(ctx, ns, "reload", timeout=RELOAD_TIMEOUT)
            if isinstance(result, int):
                _put(before)
                err(f"{cmd}: the reload failed; the change was taken back")
                return result
            actions = result.get("actions") if isinstance(result, dict) else None
            for a in actions if isinstance(actions, list) else []:
                print(f"reload: {a}", file=sys.stderr)
    except Refused as e:
        _put(before)
        err(f"{cmd}: {e}; nothing was changed")
        return EXIT_REFUSED
    except BaseException:
        _put(before)
        raise
    return EXIT_OK


def _put(files: dict[Path, str | None]) -> None:
    for f, text in files.items():
        if text is None:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        else:
            write_private(f, text)


# --------------------------------------------------------------------------- add


def _allocate(cfg: Any, t: Any, wanted: str | None) -> list[str]:
    """The client's addresses as ADDRESS/PREFIXLEN of the interface's prefixes: ``wanted``
    (comma-separated IPs), else the next free IPv4 and IPv6 address."""
    iface = cfg.interfaces[t.interface]
    prefixes = [ipaddress.ip_interface(a).network for a in iface.addresses]
    taken = taken_networks(iface.addresses, (t.peers or {}).values())
    if wanted:
        result = []
        for item in (w.strip() for w in wanted.split(",") if w.strip()):
            try:
                ip = ipaddress.ip_address(item.split("/")[0])
            except ValueError:
                raise Refused(f"--address: {item!r} is not an IP address") from None
            if any(ip in n for n in taken):
                raise Refused(f"--address: {ip} is already the interface's or a peer's")
            net = next((p for p in prefixes if ip in p), None)
            result.append(f"{ip}/{net.prefixlen if net else ip.max_prefixlen}")
        return result
    if not prefixes:
        raise Refused(f"interface {t.interface!r} has no addresses to allocate from; "
                      "pass --address")
    result = []
    for version in (4, 6):
        net = next((p for p in prefixes if p.version == version), None)
        if net is None:
            continue
        try:
            result.append(f"{next_free(net, taken)}/{net.prefixlen}")
        except PrefixFull as e:
            raise Refused(str(e)) from None
    return result


def _host_routes(addresses: list[str]) -> list[str]:
    return [str(ipaddress.ip_network(ipaddress.ip_interface(a).ip)) for a in addresses]


def _client_endpoint(t: Any, given: str | None, tunnel: str) -> str:
    text = given or t.public_endpoint
    if not text:
        raise Refused(f"no endpoint for the client: pass --endpoint HOST:PORT (this host as "
                      f"the client reaches it) or set public_endpoint in [tunnels.{tunnel}]")
    try:
        return endpoint_text(text, t.endpoint[1] or 51820)
    except ValueError as e:
        raise Refused(f"--endpoint {text!r}: {e}") from None


def add_parser() -> argparse.ArgumentParser:
    p = make_parser("peer add", "Enroll a client: make its keys, take the next free "
                    "address, write TUNNEL-peer-NAME.toml, reload, print its wg-quick config.",
                    json_flag=False)
    p.add_argument("tunnel")
    p.add_argument("name")
    p.add_argument("--config", metavar="PATH", help="config file (default: the daemon's)")
    p.add_argument("--address", metavar="IP", help="the client's address(es), comma-separated "
                   "(default: the next free of each interface prefix)")
    p.add_argument("--allowed-ips", metavar="CIDR,...", help="what the client routes into "
                   "the tunnel (default: the interface's prefixes)")
    p.add_argument("--endpoint", metavar="HOST:PORT", help="where the client reaches this "
                   "host (default: the tunnel's public_endpoint)")
    p.add_argument("--dns", metavar="IP,...", help="DNS servers for the client")
    p.add_argument("--keepalive", metavar="S", type=int, default=0,
                   help="the client's PersistentKeepalive in seconds")
    p.add_argument("--psk", action="store_true", help="also a preshared key")
    p.add_argument("--qr", action="store_true", help="show the config as a QR code")
    p.add_argument("--output", metavar="FILE", help="write the config here (mode 0600)")
    p.add_argument("--no-reload", action="store_true",
                   help="write and check only (no daemon)")
    return p


# Size: one transaction read top to bottom under the lock (check, allocate, keys, write,
# reload), then the client's config.
def peer_add(ctx: Context, argv: list[str]) -> int:
    from tund import keys
    from tund.config.model import TUNNEL_NAME_RE

    ns = add_parser().parse_args(argv)
    if not TUNNEL_NAME_RE.match(ns.name):
        raise UsageError(f"peer add: peer name must be 1 to 64 of A-Z a-z 0-9 _ . @ - "
                         f"(got {ns.name!r})")
    if not 0 <= ns.keepalive <= 65535:
        raise UsageError(f"peer add: --keepalive must be 0 to 65535 (got {ns.keepalive})")
    path = config_path(ctx, ns)
    ddir = dropin_dir(path)
    with locked(ddir):
        cfg = _load("peer add", path)
        t = _tunnel(cfg, ns.tunnel)
        dropin = ddir / dropin_name(ns.tunnel, ns.name)
        if ns.name in t.peers:
            where = where_defined(path, ns.tunnel, ns.name) or "the configuration"
            raise Refused(f"tunnel {ns.tunnel!r} already has a peer {ns.name!r} ({where})")
        if dropin.exists():
            raise Refused(f"{dropin} exists already")
        server_pub, why = _own_public_key(t.private_key_file)
        if server_pub is None:
            raise Refused(f"cannot read this host's public key: {why}")
        endpoint = _client_endpoint(t, ns.endpoint, ns.tunnel)
        addresses = _allocate(cfg, t, ns.address)
        iface = cfg.interfaces[t.interface]
        allowed = (_checked(_split(ns.allowed_ips), "--allowed-ips", ipaddress.ip_network)
                   if ns.allowed_ips else
                   [str(ipaddress.ip_interface(a).network) for a in iface.addresses])
        dns = _checked(_split(ns.dns), "--dns", ipaddress.ip_address)
        private = keys.generate_private_key()
        psk = keys.generate_psk() if ns.psk else None
        psk_file = ddir / f"{ns.tunnel}-peer-{ns.name}.psk" if psk else None
        changes: dict[Path, str | None] = {}
        if psk_file is not None and psk is not None:
            changes[psk_file] = psk + "\n"
        changes[dropin] = dropin_text(ns.tunnel, ns.name, keys.public_key(private),
                                      _host_routes(addresses),
                                      str(psk_file) if psk_file else None)
        rc = apply(ctx, ns, "peer add", path, changes)
        if rc != EXIT_OK:
            return rc
    text = wg_quick(ClientConfig(private_key=private, addresses=addresses,
                                 server_public_key=server_pub, endpoint=endpoint,
                                 allowed_ips=allowed, dns=dns,
                                 keepalive=ns.keepalive, preshared_key=psk, mtu=iface.mtu,
                                 name=ns.name))
    print(f"tundctl: peer {ns.name} of tunnel {ns.tunnel}: {', '.join(addresses)} "
          f"({dropin})", file=sys.stderr)
    return emit(text, ns.output, ns.qr)


def _checked(items: list[str], option: str, parse: Callable[[str], object]) -> list[str]:
    """``items`` normalised by ``parse`` (ip_network, ip_address); Refused naming the bad one."""
    out = []
    for item in items:
        try:
            out.append(str(parse(item)))
        except ValueError:
            raise Refused(f"{option}: {item!r} is not valid here") from None
    return out


def _split(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def emit(text: str, output: str | None, qr: bool) -> int:
    """The config to ``output`` (0600) or stdout; with ``qr`` a QR code on stdout too
    (instead of the text when there is no ``output``)."""
    if output:
        write_private(Path(output), text)
    elif not qr:
        sys.stdout.write(text)
    if qr:
        from tund.ctl.qr import terminal

        sys.stdout.write(terminal(text))
    return EXIT_OK


# --------------------------------------------------------------------------- remove, enable


def _own_dropin(path: Path, tunnel: str, name: str, cmd: str) -> Path:
    """The tundctl-made drop-in of the peer, or Refused naming where it is defined."""
    dropin = dropin_dir(path) / dropin_name(tunnel, name)
    if dropin.exists():
        if not dropin.read_text().startswith(MARKER):
            raise Refused(f"{dropin} was not made by tundctl peer add; edit it by hand")
        return dropin
    where = where_defined(path, tunnel, name)
    if where:
        raise Refused(f"peer {name!r} of tunnel {tunnel!r} is defined in {where}, not in a "
                      f"drop-in of tundctl; {cmd} it there")
    raise Refused(f"tunnel {tunnel!r} has no peer {name!r}")


def simple_parser(verb: str, what: str) -> argparse.ArgumentParser:
    p = make_parser(f"peer {verb}", what, json_flag=False)
    p.add_argument("tunnel")
    p.add_argument("name")
    p.add_argument("--config", metavar="PATH", help="config file (default: the daemon's)")
    p.add_argument("--no-reload", action="store_true", help="write and check only")
    return p


def peer_remove(ctx: Context, argv: list[str]) -> int:
    ns = simple_parser("remove", "Remove a client's drop-in and reload: its session ends "
                       "at once.").parse_args(argv)
    path = config_path(ctx, ns)
    with locked(dropin_dir(path)):
        dropin = _own_dropin(path, ns.tunnel, ns.name, "remove")
        changes: dict[Path, str | None] = {dropin: None}
        psk = dropin.with_suffix(".psk")
        if psk.exists():
            changes[psk] = None
        return apply(ctx, ns, "peer remove", path, changes)


def set_enabled(enabled: bool) -> Callable[[Context, list[str]], int]:
    verb = "enable" if enabled else "disable"

    def run(ctx: Context, argv: list[str]) -> int:
        ns = simple_parser(verb, f"Set enabled = {str(enabled).lower()} on a client and "
                           "reload.").parse_args(argv)
        path = config_path(ctx, ns)
        with locked(dropin_dir(path)):
            dropin = _own_dropin(path, ns.tunnel, ns.name, verb)
            lines = [ln for ln in dropin.read_text().splitlines()
                     if not ln.replace(" ", "").startswith("enabled=")]
            if not enabled:
                lines.append("enabled = false")
            return apply(ctx, ns, f"peer {verb}", path, {dropin: "\n".join(lines) + "\n"})
    return run


VERBS: dict[str, Callable[[Context, list[str]], int]] = {
    "add": peer_add, "remove": peer_remove, "enable": set_enabled(True),
    "disable": set_enabled(False)}

USAGE = ("usage: tundctl peer add TUNNEL NAME [--address IP] [--allowed-ips CIDR,...] "
         "[--endpoint HOST:PORT] [--dns IP,...] [--keepalive S] [--psk] [--qr] "
         "[--output FILE] [--config PATH] [--no-reload]\n"
         "       tundctl peer remove|enable|disable TUNNEL NAME [--config PATH] [--no-reload]")


def cmd_peer(ctx: Context, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        if argv:
            out(USAGE + "\n\n(options: --address --allowed-ips --endpoint --dns --keepalive "
                "--psk --qr --output --config --no-reload)")
            return EXIT_OK
        raise UsageError("peer: which of add, remove, enable, disable?", USAGE)
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        raise UsageError(f"peer: unknown verb {verb!r} (add, remove, enable, disable)", USAGE)
    try:
        return VERBS[verb](ctx, rest)
    except Refused as e:
        err(f"peer {verb}: {e}")
        return EXIT_REFUSED
    except OSError as e:
        err(f"peer {verb}: {e}")
        return EXIT_REFUSED


__all__ = ["EXIT_USAGE", "VERBS", "cmd_peer"]
