"""``journalctl TUND_INTERFACE=NAME`` tells a device's whole story under real systemd, also
for an interface that no tunnel uses (issue 15.12): its creation, its ``[#] ip`` lines and
its removal all carry the field."""

from __future__ import annotations

import json

from tests.system.container import Container
from tests.system.test_service import ALPHA, configure, start_with

LONE = """
[interfaces.tsys5]
mode = "tun"
addresses = ["10.231.5.1/30"]
"""


def journal(ct: Container, match: str) -> list[str]:
    out = ct.run(f"journalctl -u tund -o json --no-pager {match}").stdout
    return [json.loads(line)["MESSAGE"] for line in out.splitlines() if line.strip()]


def test_interface_without_tunnel_has_its_whole_story(installed: Container) -> None:
    ct = installed
    start_with(ct, ALPHA + LONE)
    ct.run("ip link show tsys5")
    configure(ct, ALPHA)
    ct.run("systemctl reload tund", timeout=60)
    ct.wait_for("! ip link show tsys5", within=15)
    messages = journal(ct, "TUND_INTERFACE=tsys5")
    text = "\n".join(messages)
    assert any("creating tun device tsys5" in m for m in messages), text
    assert any("[#] ip " in m and "addr add 10.231.5.1/30 dev tsys5" in m for m in messages), text
    assert any("[#] ip " in m and "link set tsys5 up" in m for m in messages), text
    assert any("delete device tsys5" in m for m in messages), text
    # nothing of the other interface, or of the tunnel, is among them
    assert "tsys0" not in text and "alpha" not in text, text
    # and nothing about tsys5 went out without the field
    every = journal(ct, "SYSLOG_IDENTIFIER=tund")
    assert [m for m in every if "tsys5" in m and m not in messages] == []


def test_a_workers_own_messages_carry_its_tunnel(installed: Container) -> None:
    ct = installed
    start_with(ct, ALPHA)
    ct.wait_for("journalctl -u tund -o json --no-pager TUND_TUNNEL=alpha"
                " LOGGER=tund.relay.process.worker | grep -q starting", within=15)
    messages = journal(ct, "TUND_TUNNEL=alpha TUND_INTERFACE=tsys0")
    assert any("starting: " in m for m in messages), messages
    # also after the worker dropped to its own user (logged just before the last step)
    assert any("PR_SET_DUMPABLE 0" in m for m in messages), messages
    # no line of the worker reached the journal untagged through its stderr
    assert not [m for m in journal(ct, "SYSLOG_IDENTIFIER=tund _TRANSPORT=stdout")
                if "tund-relay[" in m], "worker lines went to stderr"
