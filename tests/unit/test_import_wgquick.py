"""``tundctl import`` (issue 18.7): real-world-style wg-quick files become a tund config
that ``tundctl check`` accepts, with the same keys, peers and allowed ips, and
``peer-config --format wg-quick`` of it reads back the same; malformed files are refused
line by line as ``FILE:LINE: message``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tund import config, keys
from tund.ctl import main as ctl
from tund.ctl.wgimport import WgSyntaxError, parse

K = [keys.generate_private_key() for _ in range(6)]
P = [keys.public_key(k) for k in K]
PSK = keys.generate_psk()

SERVER = f"""# wg0 of a small office, as wg-quick writes it
[Interface]
Address = 10.8.0.1/24, fd08::1/64
ListenPort = 51820
PrivateKey = {K[0]}
MTU = 1420
PostUp = iptables -A FORWARD -i %i -j ACCEPT
PostDown = iptables -D FORWARD -i %i -j ACCEPT
SaveConfig = false

[Peer]
# Name = alice-laptop
PublicKey = {P[1]}
PresharedKey = {PSK}
AllowedIPs = 10.8.0.2/32, fd08::2/128

[Peer]
# Name = bob phone
PublicKey = {P[2]}
AllowedIPs = 10.8.0.3/32
AllowedIPs = 192.168.50.0/24
PersistentKeepalive = 25
"""

CLIENT = f"""[Interface]
PrivateKey = {K[3]}
Address = 10.8.0.2/24
DNS = 10.8.0.1, 1.1.1.1

[Peer]
PublicKey = {P[0]}
Endpoint = vpn.example.org:51820
AllowedIPs = 10.8.0.0/24
PersistentKeepalive = 25
"""

SHOWCONF = f"""[Interface]
ListenPort = 41414
FwMark = 0xca6c
PrivateKey = {K[4]}

[Peer]
PublicKey = {P[1]}
AllowedIPs = 10.9.0.2/32
Endpoint = 198.51.100.7:51820

[Peer]
PublicKey = {P[2]}
AllowedIPs = 10.9.0.3/32, fd09::3/128
Endpoint = [2001:db8::3]:51820
"""

ODD = f"""   [interface]
privatekey={K[5]}     # trailing comment
address   =   10.10.0.1/16 ,fd10::1/48
LISTENPORT = 51000
Table = off
PreUp = echo hi
DNS =

[PEER]
#name=  carol
publickey = {P[3]}
allowedips = 10.10.5.0/24
endpoint=carol.example.net:51820
persistentkeepalive = off
"""

REAL = {"server": (SERVER, ["alice-laptop", "bob-phone"],
                   ["PostUp", "PostDown", "SaveConfig"]),
        "client": (CLIENT, ["peer1"], ["DNS"]),
        "showconf": (SHOWCONF, ["peer1", "peer2"], ["FwMark"]),
        "odd": (ODD, ["carol"], ["Table", "PreUp", "DNS"])}


def _import(tmp: Path, text: str, capsys: pytest.CaptureFixture[str],
            *extra: str) -> tuple[int, str, str]:
    src = tmp / "wg0.conf"
    src.write_text(text)
    capsys.readouterr()
    rc = ctl.main(["import", str(src), "--key-dir", str(tmp / "keys"), *extra])
    got = capsys.readouterr()
    return rc, got.out, got.err


@pytest.mark.parametrize("case", sorted(REAL))
def test_real_world_files_import_to_a_valid_config(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, names, dropped = REAL[case]
    rc, toml, err = _import(tmp_path, text, capsys, "--interface", "ten-imp")
    assert rc == 0, err
    main = tmp_path / "tunnels.toml"
    main.write_text(toml)
    cfg = config.load(main)
    t = cfg.tunnels["wg0"]
    assert list(t.peers or {}) == names
    src = parse("x", text)
    for name, p in zip(names, src.peers, strict=True):
        got = (t.peers or {})[name]
        assert got.public_key == p.public_key
        assert list(got.allowed_ips) == p.allowed_ips
        assert got.endpoint == p.endpoint and got.keepalive == p.keepalive
        if p.preshared_key:
            assert Path(got.preshared_key_file or "").read_text().strip() == p.preshared_key
    assert keys.load_private_key_file(t.private_key_file or "") == keys.decode_key(
        src.private_key or "", "key")
    for key in dropped:  # every key tund cannot express is named on stderr
        assert re.search(rf"wg0\.conf:\d+: {key} = .*not imported: ", err), (key, err)


@pytest.mark.parametrize("case", sorted(REAL))
def test_import_then_peer_config_wg_quick_round_trips(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = REAL[case][0]
    rc, toml, err = _import(tmp_path, text, capsys, "--interface", "ten-imp")
    assert rc == 0, err
    main = tmp_path / "tunnels.toml"
    main.write_text(toml)
    assert ctl.main(["peer-config", "wg0", str(main), "--format", "wg-quick"]) == 0
    back = capsys.readouterr().out
    # the placeholders name the key files: fill them in, as the user would
    back = re.sub(r"\(the (?:private|preshared) key in (\S+)\)",
                  lambda m: Path(m.group(1)).read_text().strip(), back)
    a, b = parse("orig", text), parse("back", back)
    assert b.private_key == a.private_key and b.listen_port == (a.listen_port or None)
    assert b.addresses == a.addresses and b.mtu == a.mtu
    assert [(p.public_key, p.preshared_key, p.allowed_ips, p.endpoint, p.keepalive)
            for p in b.peers] == [(p.public_key, p.preshared_key, p.allowed_ips, p.endpoint,
                                   p.keepalive) for p in a.peers]


def test_an_existing_key_file_with_another_key_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "wg0.key").write_text(keys.generate_private_key() + "\n")
    rc, out, err = _import(tmp_path, CLIENT, capsys)
    assert rc == 1 and out == "" and "exists with another key" in err


IFACE = f"[Interface]\nPrivateKey = {K[0]}\n"
PEER = f"[Peer]\nPublicKey = {P[1]}\n"

MALFORMED = [
    ("no section", "PrivateKey = x\n", 1, "PrivateKey before any [Interface] or [Peer]"),
    ("no equals", IFACE + "ListenPort 51820\n", 3, "Line unrecognized: 'ListenPort 51820'"),
    ("unknown key", IFACE + "Foo = 1\n", 3, "unknown key 'Foo' in [Interface]"),
    ("peer key in interface", IFACE + f"PublicKey = {P[1]}\n", 3,
     "unknown key 'PublicKey' in [Interface]"),
    ("interface key in peer", IFACE + PEER + "ListenPort = 1\n", 5,
     "unknown key 'ListenPort' in [Peer]"),
    ("unknown section", IFACE + "[Peers]\n", 3, "unknown section '[Peers]'"),
    ("short key", "[Interface]\nPrivateKey = abc\n", 2, "PrivateKey must be 44 characters"),
    ("not base64", "[Interface]\nPrivateKey = " + "!" * 43 + "=\n", 2,
     "PrivateKey must be 44 characters"),
    ("bad port", IFACE + "ListenPort = 70000\n", 3, "ListenPort must be a number from 0"),
    ("port word", IFACE + "ListenPort = auto\n", 3, "ListenPort must be a number"),
    ("bad mtu", IFACE + "MTU = 20\n", 3, "MTU must be a number from 68 to 65535"),
    ("bad address", IFACE + "Address = 10.0.0.300/24\n", 3, "is not an IP address"),
    ("bad allowed", IFACE + PEER + "AllowedIPs = 10.0.0.0/33\n", 5, "is not an IP network"),
    ("bad endpoint", IFACE + PEER + "Endpoint = 2001:db8::1:51820\n", 5,
     "IPv6 address must be written in brackets"),
    ("endpoint no port", IFACE + PEER + "Endpoint = host.example\n", 5, "expected"),
    ("bad keepalive", IFACE + PEER + "PersistentKeepalive = -1\n", 5,
     "PersistentKeepalive must be a number from 0 to 65535"),
    ("twice", IFACE + "ListenPort = 1\nListenPort = 2\n", 4, "ListenPort given twice"),
    ("second interface", IFACE + IFACE, 3, "a second [Interface] section"),
    ("peer without key", IFACE + "[Peer]\nAllowedIPs = 10.0.0.2/32\n", 3,
     "[Peer] without a PublicKey"),
    ("same peer twice", IFACE + PEER + PEER, 5, "[Peer] with the PublicKey of the [Peer] of "
     "line 3"),
    ("no private key", PEER, 1, "no [Interface] with a PrivateKey"),
    ("empty value", IFACE + "MTU =\n", 3, "MTU has no value"),
    ("empty key", IFACE + "= 5\n", 3, "Line unrecognized"),
]


@pytest.mark.parametrize(("case", "text", "line", "message"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_files_are_located(case: str, text: str, line: int, message: str,
                                     tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(WgSyntaxError) as e:
        parse("bad.conf", text)
    assert any(p.startswith(f"bad.conf:{line}: ") and message in p for p in e.value.problems), \
        e.value.problems
    rc, out, err = _import(tmp_path, text, capsys)
    assert rc == 1 and out == ""
    assert f"wg0.conf:{line}: " in err and "nothing was written" in err
    assert not (tmp_path / "keys").exists()


def test_every_problem_is_reported_not_only_the_first() -> None:
    with pytest.raises(WgSyntaxError) as e:
        parse("f", IFACE + "MTU = 1\nFoo = 2\nbar\n")
    assert [p.split(":")[1] for p in e.value.problems] == ["3", "4", "5"]
