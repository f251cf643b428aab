"""``systemctl status tund`` names each of tund's processes (issue 15.11), with the Debian
package's python3-setproctitle: the daemon with its config, the fork server, each worker
with its tunnel and interface."""

from __future__ import annotations

from tests.system.container import Container
from tests.system.test_service import ALPHA, start_with


def test_systemctl_status_names_every_process(installed: Container) -> None:
    ct = installed
    start_with(ct, ALPHA)
    out = ct.wait_for("systemctl status tund --no-pager -l | grep -F 'tund: worker alpha (tsys0)'"
                      " && systemctl status tund --no-pager -l", within=15)
    assert "tund: daemon /etc/tund/tunnels.toml" in out, out
    assert "tund: fork server" in out, out
    assert "-m tund.relay" not in out, out
    comms = ct.run("ps -e -o comm=").stdout.split()  # workers have uids of their own
    assert "relay:alpha" in comms and "tund-zygote" in comms, comms
