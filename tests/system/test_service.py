"""tund as a systemd service: status, reload, invalid reload, stop, watchdog, journal.

Each test boots its own container with the package installed and its own configuration
(addresses from 10.231.0.0/16, inside the container's private network namespace only).
"""

from __future__ import annotations

import json

from tests.system.container import Container

CONFIG = "/etc/tund/tunnels.toml"

ALPHA = """
[interfaces.tsys0]
mode = "tun"
mtu = 1400
addresses = ["10.231.0.1/30"]

[tunnels.alpha]
interface = "tsys0"
listen = "127.0.0.1:55501"
encryption = "none"
"""

BETA = """
[interfaces.tsys1]
mode = "tun"
addresses = ["10.231.0.5/30"]

[tunnels.beta]
interface = "tsys1"
listen = "127.0.0.1:55502"
encryption = "none"
"""


def configure(ct: Container, text: str) -> None:
    ct.run(f"cat > {CONFIG}", input=text)


def start_with(ct: Container, text: str) -> None:
    configure(ct, text)
    ct.run("systemctl restart tund", timeout=60)
    ct.wait_for("systemctl is-active tund", within=15)


def status_json(ct: Container) -> object:
    return json.loads(ct.run("tundctl status --json").stdout)


def test_status_answers(installed: Container) -> None:
    start_with(installed, ALPHA)
    assert "alpha" in installed.run("tundctl status").stdout
    assert "alpha" in json.dumps(status_json(installed))
    installed.run("ip link show tsys0")


def test_reload_applies_a_new_tunnel(installed: Container) -> None:
    ct = installed
    start_with(ct, ALPHA)
    pid = ct.run("systemctl show -P MainPID tund").stdout.strip()
    configure(ct, ALPHA + BETA)
    ct.run("systemctl reload tund", timeout=60)
    ct.run("ip link show tsys1")
    assert "beta" in ct.run("tundctl status").stdout
    assert ct.run("systemctl show -P MainPID tund").stdout.strip() == pid, "reload restarted"


def test_invalid_reload_fails_and_keeps_running_config(installed: Container) -> None:
    ct = installed
    start_with(ct, ALPHA)
    configure(ct, ALPHA.replace("mtu = 1400", "mtu = 70000") + BETA)
    p = ct.run("systemctl reload tund", check=False, timeout=60)
    assert p.returncode != 0, "systemctl reload accepted an invalid configuration"
    assert ct.run("systemctl is-active tund").stdout.strip() == "active"
    ct.run("ip link show tsys0")
    assert ct.run("ip link show tsys1", check=False).returncode != 0
    status = ct.run("tundctl status").stdout
    assert "alpha" in status and "beta" not in status
    assert "1400" in ct.run("ip -o link show tsys0").stdout


def test_stop_leaves_persistent_devices(installed: Container) -> None:
    ct = installed
    start_with(ct, ALPHA)
    ct.run("systemctl stop tund", timeout=60)
    assert ct.run("systemctl is-active tund", check=False).stdout.strip() == "inactive"
    ct.run("ip link show tsys0")


def test_watchdog_restarts_a_hung_daemon(installed: Container) -> None:
    ct = installed
    ct.run("mkdir -p /run/systemd/system/tund.service.d && printf '[Service]\\nWatchdogSec=3s\\n"
           "RestartSec=0.5s\\n' > /run/systemd/system/tund.service.d/tsys-watchdog.conf"
           " && systemctl daemon-reload")
    start_with(ct, ALPHA)
    pid = ct.run("systemctl show -P MainPID tund").stdout.strip()
    assert pid != "0"
    ct.run(f"kill -STOP {pid}")
    ct.wait_for(f"test \"$(systemctl show -P MainPID tund)\" != {pid}"
                " && test \"$(systemctl show -P MainPID tund)\" != 0"
                " && systemctl is-active tund", within=25, interval=0.5)
    assert int(ct.run("systemctl show -P NRestarts tund").stdout) >= 1
    assert "watchdog" in ct.run("journalctl -u tund --no-pager").stdout.lower()


def test_journal_carries_tunnel_fields(installed: Container) -> None:
    ct = installed
    start_with(ct, ALPHA)
    out = ct.wait_for("journalctl -u tund -o verbose --no-pager TUND_TUNNEL=alpha"
                      " | grep -E '^ *TUND_TUNNEL=alpha$'", within=15)
    assert "TUND_TUNNEL=alpha" in out
    entry = ct.run("journalctl -u tund -o verbose --no-pager -n1 TUND_TUNNEL=alpha").stdout
    assert "SYSLOG_IDENTIFIER=tund" in entry and "_TRANSPORT=journal" in entry, entry


def test_journal_carries_interface_field(installed: Container) -> None:
    ct = installed
    start_with(ct, ALPHA)
    ct.wait_for("journalctl -u tund -o verbose --no-pager TUND_TUNNEL=alpha"
                " | grep -E '^ *TUND_INTERFACE=tsys0$'", within=10)
