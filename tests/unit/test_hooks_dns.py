"""Hooks (tund.netdev.hooks), DNS (tund.netdev.dns) and the keys of issue 19 in the config."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from tund import dnsbackend
from tund.config import parse_text
from tund.config.files import load
from tund.errors import ConfigError
from tund.netdev import dns, hooks

PY = sys.executable


def test_expand_replaces_percent_i_and_keeps_double_percent() -> None:
    assert hooks.expand(["nft", "add", "rule", "oifname", "%i", "100%%", "a%ib"], "wg0") == \
        ["nft", "add", "rule", "oifname", "wg0", "100%", "awg0b"]


def test_phase_runs_in_order_logs_output_and_stops_at_first_failure(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "order"
    cmds = [[PY, "-c", f"open({str(out)!r}, 'a').write('one %i\\n'); print('said one')"],
            [PY, "-c", "import sys; sys.exit(3)"],
            [PY, "-c", f"open({str(out)!r}, 'a').write('three\\n')"]]
    caplog.set_level(logging.INFO, "tund.netdev.hooks")
    with pytest.raises(hooks.HookError) as e:
        asyncio.run(hooks.run_phase("tun9", "post_up", cmds, 10))
    assert out.read_text() == "one tun9\n"  # the third never ran
    assert "interfaces.tun9.post_up[1]" in str(e.value) and "exit status 3" in str(e.value)
    text = caplog.text
    assert text.index("[#] hook post_up of tun9") < text.index("said one")
    assert "exit status 3" in text and "sys.exit(3)" in text  # argv and status logged


def test_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    # the hook starts a child that would outlive it, then hangs
    cmd = [PY, "-c", "import subprocess, sys, time; "
           f"p = subprocess.Popen(['sleep', '60']); open({str(pidfile)!r}, 'w').write(str(p.pid));"
           " time.sleep(60)"]
    t0 = time.monotonic()
    with pytest.raises(hooks.HookError) as e:
        asyncio.run(hooks.run_phase("tun9", "pre_up", [cmd], 0.5))
    assert time.monotonic() - t0 < 5
    assert "still running after 0.5s" in str(e.value)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # a zombie reparented to init is reaped soon; check its state
        try:
            if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the hook's child outlived the timeout")


def test_missing_program_is_a_located_error() -> None:
    with pytest.raises(hooks.HookError, match=r"interfaces.tun9.pre_down\[0\]: cannot run"):
        asyncio.run(hooks.run_phase("tun9", "pre_down", [["/nonexistent/tro-hook"]], 5))


HOOKED = """
[interfaces.tun0]
mode = "tun"
pre_up = [["true", "%i"]]
post_up = [["nft", "list", "tables"], ["echo", "%i"]]
pre_down = []
post_down = [["echo", "down"]]
hook_timeout = 2.5
"""


def test_config_takes_hooks_as_tuples() -> None:
    cfg = parse_text(HOOKED)
    iface = cfg.interfaces["tun0"]
    assert iface.post_up == (("nft", "list", "tables"), ("echo", "%i"))
    assert iface.hook_timeout == 2.5 and iface.pre_down == ()


@pytest.mark.parametrize("bad, where", [
    ('pre_up = [[]]', "interfaces.tun0.pre_up[0]"),
    ('post_up = ["echo hi"]', "interfaces.tun0.post_up[0]"),
    ('hook_timeout = 0', "interfaces.tun0.hook_timeout"),
    ('dns = ["not a domain!"]', "interfaces.tun0.dns[0]"),
])
def test_bad_hook_and_dns_values_are_located(bad: str, where: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnsbackend, "backend", lambda: "resolvectl")
    with pytest.raises(ConfigError) as e:
        parse_text(f'[interfaces.tun0]\nmode = "tun"\n{bad}\n')
    assert any(i.path == where for i in e.value.issues), e.value.issues


def test_hooks_in_a_file_another_user_owns_are_refused_as_root(tmp_path: Path) -> None:
    """The unsafe-file check covers hooks: a root daemon does not load them."""
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    d = tmp_path / "etc"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    main = d / "tunnels.toml"
    main.write_text("")
    dropins = d / "tunnels.d"
    dropins.mkdir()
    evil = dropins / "evil.toml"
    evil.write_text(HOOKED)
    os.chown(evil, 1000, 1000)
    with pytest.raises(ConfigError) as e:
        load(main)
    assert any("owned by uid 1000" in i.message for i in e.value.issues)
    os.chown(evil, 0, 0)
    os.chmod(evil, 0o666)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load(main)
    os.chmod(evil, 0o644)
    assert load(main).interfaces["tun0"].pre_up == (("true", "%i"),)


def test_fwmark_on_a_tcp_remote_tunnel_is_refused_on_a_udp_one_taken() -> None:
    """The daemon makes (and marks) a connecting UDP tunnel's socket; a connecting TCP
    tunnel's worker opens a socket per reconnect, which it may not mark."""
    tcp = ('[interfaces.tun0]\nmode = "tun"\n[tunnels.t]\ninterface = "tun0"\n'
           'remote = "192.0.2.1:5"\nencryption = "none"\nfwmark = 7\ntransport = "tcp"\n')
    with pytest.raises(ConfigError) as e:
        parse_text(tcp)
    assert [i.path for i in e.value.issues] == ["tunnels.t.fwmark"]
    why = e.value.issues[0].message
    assert 'transport = "tcp"' in why and "CAP_NET_ADMIN" in why and "(got 7)" in why, why
    assert 'use transport = "udp"' in why, why
    udp = parse_text(tcp.replace('transport = "tcp"\n', ""))
    assert udp.tunnels["t"].fwmark == 7 and udp.tunnels["t"].role == "remote"
    cfg = parse_text('[interfaces.tun0]\nmode = "tun"\n[tunnels.t]\ninterface = "tun0"\n'
                     'listen = "127.0.0.1:5"\nencryption = "none"\nfwmark = 7\n')
    assert cfg.tunnels["t"].fwmark == 7


# --------------------------------------------------------------------------- dns


def fake_tool(tmp_path: Path, name: str) -> Path:
    """A fake ``name`` on PATH that appends its argv (and stdin) to ``calls``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!{PY}\nimport sys\n"
                    f"stdin = '' if sys.stdin.isatty() else sys.stdin.read()\n"
                    f"open({str(tmp_path / 'calls')!r}, 'a').write(repr((sys.argv[1:], stdin)) "
                    "+ '\\n')\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def calls(tmp_path: Path) -> list[tuple[list[str], str]]:
    import ast
    f = tmp_path / "calls"
    return [ast.literal_eval(x) for x in f.read_text().splitlines()] if f.exists() else []


def test_dns_through_resolvectl_when_resolved_runs(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_tool(tmp_path, "resolvectl")))
    running = tmp_path / "resolv.conf"
    running.write_text("")
    monkeypatch.setattr(dnsbackend, "RESOLVED_RUNNING", (str(running),))
    dns.set_dns("tro0", ("10.8.0.53", "fd08::53", "vpn.example.org", "~corp"))
    dns.revert("tro0")
    assert [c[0] for c in calls(tmp_path)] == [
        ["dns", "tro0", "10.8.0.53", "fd08::53"], ["domain", "tro0", "vpn.example.org", "~corp"],
        ["revert", "tro0"]]


def test_dns_through_resolvconf_otherwise(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = fake_tool(tmp_path, "resolvconf")
    fake_tool(tmp_path, "resolvectl")  # installed, but resolved does not run
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(dnsbackend, "RESOLVED_RUNNING", (str(tmp_path / "absent"),))
    dns.set_dns("tro0", ("10.8.0.53", "vpn.example.org"))
    dns.revert("tro0")
    assert calls(tmp_path) == [
        (["-a", "tro0", "-m", "0", "-x"], "nameserver 10.8.0.53\nsearch vpn.example.org\n"),
        (["-d", "tro0", "-f"], "")]


def test_dns_with_neither_tool_is_a_located_check_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        parse_text('[interfaces.tun0]\nmode = "tun"\ndns = ["10.0.0.53"]\n')
    [issue] = e.value.issues
    assert issue.path == "interfaces.tun0.dns"
    assert "systemd-resolved is not running" in issue.message
    assert "resolvconf is not installed" in issue.message
    with pytest.raises(dns.DnsError, match=r"interfaces\.tro0\.dns"):
        dns.set_dns("tro0", ("10.0.0.53",))


def test_failing_resolvectl_names_the_command(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "resolvectl").write_text("#!/bin/sh\necho 'Failed to set DNS' >&2\nexit 1\n")
    (bin_dir / "resolvectl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(dnsbackend, "RESOLVED_RUNNING", ("/",))
    with pytest.raises(dns.DnsError, match=r"resolvectl dns tro0 10.0.0.53 failed \(exit "
                                           r"status 1\): Failed to set DNS"):
        dns.set_dns("tro0", ("10.0.0.53",))
