"""``tundctl peer add|remove|enable|disable`` offline (issue 18.1-18.4): address allocation,
the drop-in, the client's wg-quick config, the lock, and no half-added peer on failure.
(The same against a running daemon with wireguard-go clients:
tests/privileged/test_enroll_server.py.)"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tund import config, keys
from tund.ctl import main as ctl
from tund.ctl.enroll import PrefixFull, next_free

SERVER_KEY = keys.generate_private_key()


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_next_free_skips_network_own_and_peers() -> None:
    taken = [_net("10.0.0.1/32"), _net("10.0.0.2/32"), _net("10.0.0.4/31")]
    assert str(next_free(_net("10.0.0.0/29"), taken)) == "10.0.0.3"
    taken.append(_net("10.0.0.3/32"))
    assert str(next_free(_net("10.0.0.0/29"), taken)) == "10.0.0.6"


def test_nearly_full_slash29_then_full() -> None:
    taken = [_net(f"10.0.0.{i}/32") for i in range(1, 6)]  # .1 own, .2-.5 peers
    assert str(next_free(_net("10.0.0.0/29"), taken)) == "10.0.0.6"   # never .7 (broadcast)
    taken.append(_net("10.0.0.6/32"))
    with pytest.raises(PrefixFull, match=r"no free address left in 10\.0\.0\.0/29"):
        next_free(_net("10.0.0.0/29"), taken)


def test_ipv6_and_a_wide_peer_prefix() -> None:
    taken = [_net("fd00::1/128"), _net("fd00::/125")]
    assert str(next_free(_net("fd00::/64"), taken)) == "fd00::8"
    assert str(next_free(_net("10.1.0.0/24"), [_net("10.1.0.0/25")])) == "10.1.0.128"


def _setup(tmp: Path, addresses: str = '"10.50.0.1/29", "fd50::1/64"') -> Path:
    key = tmp / "server.key"
    key.write_text(SERVER_KEY + "\n")
    key.chmod(0o600)
    main = tmp / "tunnels.toml"
    main.write_text(f'[interfaces.ten0]\nmode = "tun"\naddresses = [{addresses}]\nmtu = 1420\n\n'
                    f'[tunnels.vpn]\ninterface = "ten0"\nlisten = "0.0.0.0:51820"\n'
                    f'private_key_file = "{key}"\npublic_endpoint = "vpn.example.org:51820"\n\n'
                    '[tunnels.vpn.peers]\n')
    return main


def _add(main: Path, name: str, *extra: str) -> int:
    return ctl.main(["peer", "add", "vpn", name, "--config", str(main), "--no-reload",
                     *extra])


def test_add_writes_a_private_dropin_and_a_client_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _setup(tmp_path)
    assert _add(main, "alice", "--dns", "10.50.0.1", "--keepalive", "25", "--psk") == 0
    conf = capsys.readouterr().out
    dropin = tmp_path / "tunnels.d" / "vpn-peer-alice.toml"
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o600
    cfg = config.load(main)
    peer = cfg.tunnels["vpn"].peers["alice"]
    assert peer.allowed_ips == ("10.50.0.2/32", "fd50::2/128")
    priv = next(ln.split(" = ", 1)[1] for ln in conf.splitlines() if ln.startswith("PrivateKey"))
    assert keys.public_key(priv) == peer.public_key
    assert priv not in dropin.read_text()
    assert "Address = 10.50.0.2/29, fd50::2/64" in conf
    assert "DNS = 10.50.0.1" in conf and "PersistentKeepalive = 25" in conf
    assert f"PublicKey = {keys.public_key(SERVER_KEY)}" in conf
    assert "Endpoint = vpn.example.org:51820" in conf
    assert "AllowedIPs = 10.50.0.0/29, fd50::/64" in conf
    psk = Path(peer.preshared_key_file or "")
    assert stat.S_IMODE(psk.stat().st_mode) == 0o600
    assert f"PresharedKey = {psk.read_text().strip()}" in conf


def test_add_refuses_duplicates_full_prefix_and_no_endpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _setup(tmp_path, '"10.50.0.1/30"')
    assert _add(main, "a") == 0
    assert _add(main, "a") == 1
    assert "already has a peer 'a'" in capsys.readouterr().err
    assert _add(main, "b") == 1
    assert "no free address left in 10.50.0.0/30" in capsys.readouterr().err
    assert _add(main, "c", "--address", "10.50.0.2") == 1
    assert "already the interface's or a peer's" in capsys.readouterr().err
    assert _add(main, "e", "--address", "10.60.0.9", "--allowed-ips", "10.0.0.0/33") == 1
    assert "--allowed-ips: '10.0.0.0/33' is not valid here" in capsys.readouterr().err
    assert _add(main, "e", "--address", "10.60.0.9", "--dns", "dns.example") == 1
    assert "--dns: 'dns.example' is not valid here" in capsys.readouterr().err
    main.write_text(main.read_text().replace('public_endpoint = "vpn.example.org:51820"\n', ""))
    assert _add(main, "d", "--address", "10.60.0.9") == 1
    assert "pass --endpoint HOST:PORT" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "tunnels.d").glob("*.toml")) == ["vpn-peer-a.toml"]


def test_failed_reload_leaves_no_half_added_peer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _setup(tmp_path)
    rc = ctl.main(["peer", "add", "vpn", "bob", "--config", str(main),
                   "--socket", str(tmp_path / "no.sock"), "--psk"])
    assert rc == 3
    assert "the change was taken back" in capsys.readouterr().err
    assert list((tmp_path / "tunnels.d").glob("vpn-peer-*")) == []


def test_two_enrollments_at_once_get_two_addresses(tmp_path: Path) -> None:
    main = _setup(tmp_path, '"10.50.0.1/24"')
    procs = [subprocess.Popen([sys.executable, "-m", "tund.ctl.main", "peer", "add", "vpn",
                               f"c{i}", "--config", str(main), "--no-reload"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    peers = config.load(main).tunnels["vpn"].peers or {}
    ips = [p.allowed_ips[0] for p in peers.values()]
    assert len(set(ips)) == 4, ips


def test_remove_enable_disable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _setup(tmp_path)
    assert _add(main, "a", "--psk") == 0 and _add(main, "b") == 0
    base = ["--config", str(main), "--no-reload"]
    assert ctl.main(["peer", "disable", "vpn", "a", *base]) == 0
    assert config.load(main).tunnels["vpn"].enabled_peers.keys() == {"b"}
    assert ctl.main(["peer", "enable", "vpn", "a", *base]) == 0
    assert config.load(main).tunnels["vpn"].enabled_peers.keys() == {"a", "b"}
    assert ctl.main(["peer", "remove", "vpn", "a", *base]) == 0
    assert (config.load(main).tunnels["vpn"].peers or {}).keys() == {"b"}
    assert not list((tmp_path / "tunnels.d").glob("vpn-peer-a.*"))
    # a peer written by hand: the command names its file and line
    main.write_text(main.read_text() + '\n[tunnels.vpn.peers.hand]\npublic_key = "'
                    + keys.public_key(keys.generate_private_key()) + '"\n')
    capsys.readouterr()
    assert ctl.main(["peer", "disable", "vpn", "hand", *base]) == 1
    assert f"is defined in {main}:" in capsys.readouterr().err
    assert ctl.main(["peer", "remove", "vpn", "nobody", *base]) == 1


@pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbarimg (zbar-tools) missing")
def test_qr_decodes_to_exactly_the_config(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tund.ctl import qr

    main = _setup(tmp_path)
    out = tmp_path / "client.conf"
    assert _add(main, "phone", "--qr", "--output", str(out), "--psk") == 0
    shown = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    text = out.read_text()
    assert qr.terminal(text) in shown  # the terminal shows the code of exactly that text
    png = tmp_path / "qr.png"
    qr.save_png(text, str(png))
    p = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sbinary", str(png)],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().rstrip("\n") == text.rstrip("\n")


def test_peer_config_wg_quick_is_the_enrolled_config_without_the_secrets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _setup(tmp_path)
    assert _add(main, "alice", "--psk") == 0
    enrolled = capsys.readouterr().out
    rc = ctl.main(["peer-config", "vpn", "alice", "--config", str(main), "--format", "wg-quick"])
    got = capsys.readouterr()
    assert rc == 0, got.err
    assert "PrivateKey = (the client's own)" in got.out
    assert "note: PrivateKey is left as (the client's own)" in got.err
    psk = tmp_path / "tunnels.d" / "vpn-peer-alice.psk"
    expect = [("PrivateKey = (the client's own)" if ln.startswith("PrivateKey") else
               f"PresharedKey = (the preshared key in {psk})"
               if ln.startswith("PresharedKey") else ln) for ln in enrolled.splitlines()]
    assert got.out.splitlines() == expect
    # a peer named with a path; the tund format for a peer says to use wg-quick
    assert ctl.main(["peer-config", "vpn", "alice", str(main)]) == 1
    assert "add --format wg-quick" in capsys.readouterr().err
    assert ctl.main(["peer-config", "vpn", "bob", str(main), "--format", "wg-quick"]) == 1
    assert "has no peer 'bob'" in capsys.readouterr().err


def test_peer_config_wg_quick_of_a_single_peer_tunnel(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "a.key"
    key.write_text(SERVER_KEY + "\n")
    key.chmod(0o600)
    other = keys.public_key(keys.generate_private_key())
    main = tmp_path / "tunnels.toml"
    main.write_text('[interfaces.ten1]\nmode = "tun"\naddresses = ["10.70.0.1/24"]\n\n'
                    '[tunnels.t]\ninterface = "ten1"\nlisten = "0.0.0.0:51821"\n'
                    f'private_key_file = "{key}"\npeer_public_key = "{other}"\nkeepalive = 15\n')
    assert ctl.main(["peer-config", "t", str(main), "--format", "wg-quick",
                     "--endpoint", "a.example.org"]) == 0
    got = capsys.readouterr()
    assert got.out.splitlines() == [
        "[Interface]", "PrivateKey = (the client's own)", "Address = 10.70.0.2/24", "",
        "[Peer]", f"PublicKey = {keys.public_key(SERVER_KEY)}",
        "Endpoint = a.example.org:51821", "AllowedIPs = 10.70.0.0/24",
        "PersistentKeepalive = 15"]
    assert f"its public key must be {other}" in got.err
    assert ctl.main(["peer-config", "t", str(main), "--format", "wg-quick", "--qr",
                     "--endpoint", "a.example.org"]) == 0
    from tund.ctl import qr

    assert capsys.readouterr().out == qr.terminal(got.out)
