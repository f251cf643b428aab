"""The .deb in a booted trixie: install, unit hygiene, upgrade, purge."""

from __future__ import annotations

import re
from pathlib import Path

from tests.system.conftest import NEXT_VERSION_SUFFIX, BootFn, install
from tests.system.container import Container

# Exposure from `systemd-analyze security tund.service` must not get worse than this
# (measured 2026-11-26 with systemd 257: see packaging/README.md).
MAX_EXPOSURE = 4.5


def test_install_enables_and_starts_the_service(installed: Container) -> None:
    ct = installed
    assert ct.run("systemctl is-enabled tund").stdout.strip() == "enabled"
    ct.wait_for("systemctl is-active tund", within=15)
    ct.run("test -x /usr/bin/tund && test -x /usr/bin/tundctl")
    ct.run("test -f /usr/share/man/man8/tund.8.gz && test -f /usr/share/man/man8/tundctl.8.gz"
           " && test -f /usr/share/man/man5/tunnels.toml.5.gz")
    ct.run("test -f /usr/share/bash-completion/completions/tundctl")
    ct.run("python3 -c 'import tund.sdnotify, tund.logs, tund.config'")


def test_install_creates_system_user_and_group(installed: Container) -> None:
    group = installed.run("getent group tund").stdout
    user = installed.run("getent passwd tund").stdout.split(":")
    assert group.startswith("tund:")
    assert int(user[2]) < 1000, f"tund is not a system user: {user}"
    assert user[6].strip() in ("/usr/sbin/nologin", "/sbin/nologin")


def test_config_is_a_conffile(installed: Container) -> None:
    conffiles = installed.run("dpkg-query -W -f='${Conffiles}' tund").stdout
    assert "/etc/tund/tunnels.toml" in conffiles


def test_unit_verifies_without_any_output(installed: Container) -> None:
    p = installed.run("systemd-analyze verify /usr/lib/systemd/system/tund.service 2>&1",
                      check=False)
    assert p.returncode == 0 and p.stdout == "", p.stdout


def test_unit_exposure_stays_low(installed: Container) -> None:
    out = installed.run("systemd-analyze security --no-pager tund.service 2>&1",
                        check=False).stdout
    m = re.search(r"Overall exposure level for tund\.service: ([0-9.]+)", out)
    assert m, out[-2000:]
    assert float(m.group(1)) <= MAX_EXPOSURE, out[-2000:]


def test_upgrade_keeps_locally_edited_config(boot: BootFn, tund_deb: Path,
                                             tund_deb_next: Path) -> None:
    ct = boot()
    install(ct, tund_deb)
    ct.run("printf '\\n# edited by the admin\\n' >> /etc/tund/tunnels.toml")
    before = ct.run("cat /etc/tund/tunnels.toml").stdout
    install(ct, tund_deb_next, "tund-next.deb")
    version = ct.run("dpkg-query -W -f='${Version}' tund").stdout
    assert version.endswith(NEXT_VERSION_SUFFIX)
    assert ct.run("cat /etc/tund/tunnels.toml").stdout == before
    ct.run("test ! -e /etc/tund/tunnels.toml.dpkg-new"
           " && test ! -e /etc/tund/tunnels.toml.dpkg-dist")


def test_remove_stops_and_purge_removes_config_and_user(installed: Container) -> None:
    ct = installed
    ct.run("echo '# local' > /etc/tund/tunnels.d/local.toml")
    ct.run("dpkg --remove tund </dev/null", timeout=120)
    assert ct.run("systemctl is-active tund", check=False).stdout.strip() != "active"
    ct.run("test -f /etc/tund/tunnels.toml")          # remove keeps the configuration
    ct.run("dpkg --purge tund </dev/null", timeout=120)
    ct.run("test ! -e /etc/tund")
    assert ct.run("getent passwd tund", check=False).returncode != 0
    assert ct.run("getent group tund", check=False).returncode != 0
