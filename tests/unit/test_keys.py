"""tund.keys: wg-compatible key formats, key-file safety, the config hook."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tund import config, keys
from tund.errors import ConfigError


def test_formats_match_wg() -> None:
    priv = keys.generate_private_key()
    raw = base64.b64decode(priv)
    assert len(priv) == 44 and len(raw) == 32
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40  # clamped
    assert len(base64.b64decode(keys.generate_psk())) == 32
    assert keys.public_key(priv) != keys.public_key(keys.generate_private_key())


@pytest.mark.skipif(shutil.which("wg") is None, reason="wg (wireguard-tools) not installed")
def test_public_key_equals_wg_pubkey() -> None:
    for priv in (keys.generate_private_key(), subprocess.run(
            ["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()):
        wg = subprocess.run(["wg", "pubkey"], input=priv + "\n", capture_output=True,
                            text=True, check=True).stdout.strip()
        assert keys.public_key(priv) == wg


@pytest.mark.parametrize("text,why", [("not base64!", "not valid base64"),
                                      (base64.b64encode(bytes(31)).decode(), "31 bytes"),
                                      (base64.b64encode(bytes(33)).decode(), "33 bytes")])
def test_decode_key_errors(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as e:
        keys.decode_key(text, "peer_public_key")
    assert "peer_public_key" in str(e.value)


def _key_file(tmp: Path, text: str, mode: int = 0o600, name: str = "k") -> Path:
    p = tmp / name
    p.write_text(text)
    p.chmod(mode)
    return p


def test_load_key_files(tmp_path: Path) -> None:
    priv = keys.generate_private_key()
    p = _key_file(tmp_path, priv + "\n")
    assert keys.load_private_key_file(str(p)) == base64.b64decode(priv)
    assert keys.load_psk_file(str(_key_file(tmp_path, keys.generate_psk(), 0o400, "p")))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_modes_are_refused(tmp_path: Path, mode: int) -> None:
    p = _key_file(tmp_path, keys.generate_private_key(), mode)
    with pytest.raises(ValueError, match=f"mode {mode:04o} lets group/others read it; chmod 600"):
        keys.load_private_key_file(str(p))


def test_other_refusals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot open"):
        keys.load_private_key_file(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="decodes to 16 bytes"):
        keys.load_psk_file(str(_key_file(tmp_path, base64.b64encode(bytes(16)).decode())))
    link = tmp_path / "link"
    link.symlink_to(_key_file(tmp_path, keys.generate_psk(), name="real"))
    with pytest.raises(ValueError, match="cannot open"):
        keys.load_psk_file(str(link))
    if os.geteuid() == 0:
        p = _key_file(tmp_path, keys.generate_psk(), name="owned")
        os.chown(p, 12345, -1)
        with pytest.raises(ValueError, match="owned by uid 12345"):
            keys.load_psk_file(str(p))


def test_config_hook_reports_located_issues(tmp_path: Path) -> None:
    priv = keys.generate_private_key()
    good = _key_file(tmp_path, priv, name="good")
    loose = _key_file(tmp_path, priv, 0o644, name="loose")
    text = f"""
[interfaces.wgt0]
mode = "tun"
[interfaces.wgt1]
mode = "tun"
[interfaces.wgt2]
mode = "tun"
[tunnels.ok]
interface = "wgt0"
remote = "10.230.0.1:51820"
private_key_file = "{good}"
peer_public_key = "{keys.public_key(keys.generate_private_key())}"
[tunnels.bad]
interface = "wgt1"
remote = "10.230.0.1:51820"
private_key_file = "{loose}"
peer_public_key = "short"
preshared_key_file = "{tmp_path / 'nope'}"
[tunnels.self]
interface = "wgt2"
remote = "10.230.0.1:51820"
private_key_file = "{good}"
peer_public_key = "{keys.public_key(priv)}"
"""
    config.register_check(keys.check_tunnel_keys)  # what importing tund.keys does
    with pytest.raises(ConfigError) as e:
        config.parse_text(text, "t.toml")
    msgs = [str(i) for i in e.value.issues]
    assert any("tunnels.bad.private_key_file" in m and "mode 0644" in m for m in msgs), msgs
    assert any("tunnels.bad.peer_public_key" in m and "base64" in m for m in msgs), msgs
    assert any("tunnels.bad.preshared_key_file" in m and "cannot open" in m for m in msgs)
    assert any("tunnels.self.peer_public_key" in m and "own public key" in m for m in msgs)
    assert not any("tunnels.ok" in m for m in msgs), msgs
    assert all(m.startswith("t.toml:") for m in msgs)
