"""``tundctl import FILE.conf [--tunnel NAME] [--interface NAME] [--key-dir DIR]``
(issue 18): a wg-quick or ``wg showconf`` file as tund TOML on stdout.

Contract: the private key (and each preshared key) is written to a key file in
``--key-dir`` (default /etc/tund/keys; mode 0600; an existing file with another key is
refused) whose path the TOML names; nothing else is written. Every ``[Peer]`` becomes a
named peer (``# Name =`` comment, else ``peer1``, ``peer2`` ...). Keys tund does not import
are listed on stderr with what to do instead; malformed files are ``FILE:LINE:`` errors
(exit 1).
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from pathlib import Path

from tund.ctl.common import EXIT_OK, EXIT_REFUSED, Context, err, make_parser
from tund.ctl.wgimport import UNEXPRESSIBLE, WgFile, WgSyntaxError, parse

DEFAULT_KEY_DIR = "/etc/tund/keys"
_BAD_NAME = re.compile(r"[^A-Za-z0-9_.@-]")


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def peer_names(wg: WgFile) -> list[str]:
    """A valid, unique tund name for each peer: its ``# Name``, cleaned, else ``peerN``."""
    names: list[str] = []
    for i, p in enumerate(wg.peers, 1):
        base = _BAD_NAME.sub("-", p.name)[:60] if p.name else f"peer{i}"
        name, n = base or f"peer{i}", 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        if p.name and name != p.name:
            wg.notes.append(f"line {p.line}: peer {p.name!r} is named {name!r} (tund names "
                            "are A-Z a-z 0-9 _ . @ -)")
        names.append(name)
    return names


def to_toml(wg: WgFile, source: str, tunnel: str, interface: str,
            key_dir: Path) -> tuple[str, dict[Path, str]]:
    """(TOML text, {key file: base64 key}) for ``wg``."""
    from tund.config import render_path

    files: dict[Path, str] = {}
    key_file = key_dir / f"{tunnel}.key"
    assert wg.private_key is not None
    files[key_file] = wg.private_key
    nets = [ipaddress.ip_interface(a).network for a in wg.addresses]
    routes: list[str] = []
    lines = [f"# tund configuration imported from {source} by `tundctl import`", "",
             f"[{render_path(['interfaces', interface])}]", 'mode = "tun"',
             f"addresses = {_list(wg.addresses)}"]
    if wg.mtu:
        lines.append(f"mtu = {wg.mtu}")
    routes_at = len(lines)
    lines += ["", f"[{render_path(['tunnels', tunnel])}]", f"interface = {_q(interface)}",
              'transport = "udp"']
    if wg.listen_port:
        lines.append(f'listen = "0.0.0.0:{wg.listen_port}"')
    lines += [f"private_key_file = {_q(str(key_file))}", "",
              f"[{render_path(['tunnels', tunnel, 'peers'])}]"]
    for name, p in zip(peer_names(wg), wg.peers, strict=True):
        lines += ["", f"[{render_path(['tunnels', tunnel, 'peers', name])}]",
                  f"public_key = {_q(p.public_key or '')}",
                  f"allowed_ips = {_list(p.allowed_ips)}"]
        if p.endpoint:
            lines.append(f"endpoint = {_q(p.endpoint)}")
        if p.preshared_key:
            psk_file = key_dir / f"{tunnel}-{name}.psk"
            files[psk_file] = p.preshared_key
            lines.append(f"preshared_key_file = {_q(str(psk_file))}")
        if p.keepalive:
            lines.append(f"keepalive = {p.keepalive}")
        for a in p.allowed_ips:
            net = ipaddress.ip_network(a)
            if net.prefixlen == 0:
                wg.notes.append(f"line {p.line}: AllowedIPs {a}: wg-quick would route "
                                "everything through the tunnel; tund adds no default route "
                                "(add it yourself if wanted)")
            elif not any(net.subnet_of(n) for n in nets if n.version == net.version):  # type: ignore[arg-type]
                routes.append(a)
    if routes:
        lines.insert(routes_at, f"routes = {_list(routes)}   # the peers' AllowedIPs "
                                "beyond the addresses (as wg-quick routes them)")
    return "\n".join(lines) + "\n", files


def _write_key(path: Path, key: str) -> None:
    from tund.ctl.peer_cmds import write_private

    if path.exists():
        if path.read_text().strip() != key:
            raise ValueError(f"{path} exists with another key; remove it or pass --key-dir")
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, key + "\n")


def cmd_import(ctx: Context, argv: list[str]) -> int:
    from tund.config import check_ifname
    from tund.config.model import TUNNEL_NAME_RE

    parser = make_parser("import", "Print a wg-quick (or `wg showconf`) file as tund TOML; "
                         "its keys go to key files in --key-dir.", daemon=False,
                         json_flag=False)
    parser.add_argument("file", metavar="FILE.conf")
    parser.add_argument("--tunnel", metavar="NAME", help="tunnel name (default: FILE's stem)")
    parser.add_argument("--interface", metavar="NAME",
                        help="interface name (default: FILE's stem)")
    parser.add_argument("--key-dir", metavar="DIR", default=DEFAULT_KEY_DIR,
                        help=f"where the key files go (default: {DEFAULT_KEY_DIR})")
    ns = parser.parse_args(argv)
    stem = Path(ns.file).stem
    tunnel, interface = ns.tunnel or stem, ns.interface or stem
    if not TUNNEL_NAME_RE.match(tunnel):
        parser.error(f"tunnel name must be 1 to 64 of A-Z a-z 0-9 _ . @ - (got {tunnel!r}); "
                     "pass --tunnel NAME")
    if why := check_ifname(interface):
        parser.error(f"interface name {why} (got {interface!r}); pass --interface NAME")
    try:
        text = Path(ns.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        err(f"import: {ns.file}: cannot read: {e}")
        return EXIT_REFUSED
    try:
        wg = parse(ns.file, text)
    except WgSyntaxError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        err(f"import: {ns.file}: {len(e.problems)} problem(s); nothing was written")
        return EXIT_REFUSED
    toml, files = to_toml(wg, ns.file, tunnel, interface, Path(ns.key_dir))
    try:
        for path, key in files.items():
            _write_key(path, key)
    except (OSError, ValueError) as e:
        err(f"import: {e}")
        return EXIT_REFUSED
    for no, key, value in wg.unexpressible:
        print(f"{ns.file}:{no}: {key} = {value}: not imported: {UNEXPRESSIBLE[key.lower()]}",
              file=sys.stderr)
    for note in wg.notes:
        print(f"{ns.file}: {note}", file=sys.stderr)
    for path in files:
        print(f"{ns.file}: key written to {path} (mode 0600)", file=sys.stderr)
    sys.stdout.write(toml)
    return EXIT_OK
