"""Rendering of daemon results: pure text, a fixed clock, no sockets."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tund.ctl import render

NOW = 1_700_000_000.0

STATUS: dict[str, Any] = {
    "daemon": {"version": "0.1.0", "pid": 1234, "config": "/etc/tund/tunnels.toml",
               "started": NOW - 3725, "reloads": 2,
               "last_reload": {"time": NOW - 300, "ok": True, "message": "2 changed"}},
    "interfaces": {
        "tun0": {"mode": "tun", "ifindex": 7, "persist": True, "exists": True, "mtu": 1420,
                 "addresses": ["10.0.0.1/24"], "owner": None, "group": None},
        "tap1": {"mode": "tap", "exists": False},
    },
    "tunnels": {
        "wan0": {"interface": "tun0", "transport": "udp", "role": "listen",
                 "endpoint": "0.0.0.0:55555", "encryption": "wireguard", "state": "up",
                 "pid": 4321, "restarts": 1, "last_error": None, "peer": "192.0.2.1:40000",
                 "rx_packets": 100, "rx_bytes": 1_268_000, "tx_packets": 50, "tx_bytes": 3482,
                 "drops": {"queue-full": 3, "oversize": 0}, "errors": 0,
                 "last_rx": NOW - 2, "last_tx": NOW - 1, "since": NOW - 125,
                 "peer_public_key": "PUBKEY=", "latest_handshake": NOW - 5},
        "lan1": {"interface": "tap1", "transport": "tcp", "role": "remote",
                 "endpoint": "example.net:55555", "encryption": "none", "state": "backoff",
                 "restarts": 4, "last_error": "connection refused"},
    },
}


def test_human_bytes() -> None:
    assert render.human_bytes(0) == "0 B"
    assert render.human_bytes(1023) == "1023 B"
    assert render.human_bytes(1024) == "1.00 KiB"
    assert render.human_bytes(1_268_000) == "1.21 MiB"
    assert render.human_bytes(5 * 1024**4) == "5.00 TiB"
    assert render.human_bytes(5 * 1024**5) == "5120.00 TiB"


def test_human_duration_and_ago() -> None:
    assert render.human_duration(0) == "0 seconds"
    assert render.human_duration(1) == "1 second"
    assert render.human_duration(3725) == "1 hour, 2 minutes, 5 seconds"
    assert render.human_duration(86400 * 2 + 60) == "2 days, 1 minute"
    assert render.ago(NOW - 5, NOW) == "5 seconds ago"
    assert render.ago(NOW, NOW) == "Now"
    assert render.ago(NOW + 10, NOW).startswith("in 10 seconds")


def test_since_reads_like_wg_show_never_now() -> None:
    """issue 15.2: a state that began within the last second read ``(since Now)``."""
    for delta, text in ((0.4, "0 seconds ago"), (12.7, "12 seconds ago"),
                        (63, "1 minute, 3 seconds ago")):
        t = {**STATUS["tunnels"]["wan0"], "since": NOW - delta}
        out = render.render_status({"tunnels": {"wan0": t}}, now=NOW)
        assert f"  state: up (since {text})" in out.splitlines(), out
    d = render.render_status({"daemon": {"started": NOW - 0.2}, "tunnels": {}}, now=NOW)
    assert "  started: 0 seconds ago" in d.splitlines()


def test_status_blocks_like_wg_show() -> None:
    text = render.render_status(STATUS, now=NOW)
    blocks = text.split("\n\n")
    assert blocks[0].splitlines() == [
        "daemon: tund 0.1.0",
        "  pid: 1234",
        "  config: /etc/tund/tunnels.toml",
        "  started: 1 hour, 2 minutes, 5 seconds ago",
        "  reloads: 2 (last 5 minutes ago: ok: 2 changed)",
    ]
    # tunnels in name order
    assert blocks[1].splitlines()[0] == "tunnel: lan1"
    assert blocks[2].splitlines() == [
        "tunnel: wan0",
        "  interface: tun0",
        "  state: up (since 2 minutes, 5 seconds ago)",
        "  transport: udp, listen 0.0.0.0:55555",
        "  encryption: wireguard",
        "  peer: 192.0.2.1:40000",
        "  peer public key: PUBKEY=",
        "  latest handshake: 5 seconds ago",
        "  pid: 4321",
        "  restarts: 1",
        "  transfer: 1.21 MiB received, 3.40 KiB sent",
        "  packets: 100 received, 50 sent",
        "  last packet: received 2 seconds ago, sent 1 second ago",
        "  drops: queue-full 3",
    ]
    assert blocks[3].splitlines() == [
        "interfaces:",
        "  tap1: tap, missing",
        "  tun0: tun, ifindex 7, mtu 1420, persistent, 10.0.0.1/24",
    ]
    assert "\x1b[" not in text


def test_failing_tunnel_shows_state_and_error() -> None:
    text = render.render_status(STATUS, now=NOW)
    lan = text.split("\n\n")[1]
    assert "  state: backoff" in lan
    assert "  transport: tcp, remote example.net:55555" in lan
    assert "  last error: connection refused" in lan
    assert "transfer" not in lan  # no counters given: no line


def test_missing_keys_are_tolerated() -> None:
    assert render.render_status({}, now=NOW) == "no tunnels configured"
    text = render.render_status({"tunnels": {"x": {}}, "interfaces": {"i": {}}}, now=NOW)
    assert "tunnel: x\n  state: unknown" in text
    assert "  i: (no details)" in text
    text = render.render_status({"tunnels": {"x": None}, "daemon": {}}, now=NOW)
    assert text.split("\n\n") == ["daemon: tund", "tunnel: x\n  state: unknown"]


def test_single_tunnel_view() -> None:
    text = render.render_status(STATUS, now=NOW, tunnel="wan0")
    assert text.startswith("tunnel: wan0")
    assert "daemon:" not in text and "lan1" not in text and "tap1" not in text
    assert "  tun0: tun" in text
    with pytest.raises(KeyError):
        render.render_status(STATUS, now=NOW, tunnel="nope")


def test_colour_only_when_asked() -> None:
    text = render.render_status(STATUS, now=NOW, colour=True)
    assert "\x1b[1;32mup\x1b[0m" in text
    assert "\x1b[1;31mconnection refused\x1b[0m" in text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "env", "expected"), [
    (io.StringIO(), {}, False),
    (_Tty(), {}, True),
    (_Tty(), {"NO_COLOR": "1"}, False),
    (_Tty(), {"TUND_COLOR": "never"}, False),
    (io.StringIO(), {"TUND_COLOR": "always"}, True),
    (io.StringIO(), {"TUND_COLOR": "always", "NO_COLOR": "1"}, True),
    (_Tty(), {"NO_COLOR": ""}, True),
])
def test_use_colour(stream: io.StringIO, env: dict[str, str], expected: bool) -> None:
    assert render.use_colour(stream, env) is expected


def test_json_is_the_result_verbatim() -> None:
    assert json.loads(render.render_json(STATUS)) == STATUS


RELOAD = {
    "added": {"interfaces": ["tun1"], "tunnels": ["wan1"]},
    "changed": {"interfaces": [], "tunnels": ["wan0"]},
    "removed": {"interfaces": [], "tunnels": []},
    "unchanged": {"interfaces": ["tun0"], "tunnels": []},
    "actions": ["[#] ip addr add 10.1.0.1/24 dev tun1", "restart worker wan0"],
    "dry_run": False,
}


def test_reload_sections() -> None:
    assert render.render_reload(RELOAD).splitlines() == [
        "added:", "  interface tun1", "  tunnel wan1",
        "changed:", "  tunnel wan0",
        "removed: none",
        "unchanged:", "  interface tun0",
        "actions:", "  [#] ip addr add 10.1.0.1/24 dev tun1", "  restart worker wan0",
    ]


def test_reload_dry_run_says_so() -> None:
    text = render.render_reload({**RELOAD, "dry_run": True})
    assert text.splitlines()[0].startswith("dry run: nothing was changed")
    assert render.render_reload({}).splitlines() == [
        "added: none", "changed: none", "removed: none", "unchanged: none"]


def test_action_line() -> None:
    assert render.render_action("up", "wan0", {"state": "starting"}) == "tunnel wan0: starting"
    assert render.render_action("down", "wan0", {"message": "stopped wan0"}) == "stopped wan0"
    assert render.render_action("restart", "wan0", {}) == "tunnel wan0: restart done"


def test_new_states_and_warnings_are_shown() -> None:
    """issue 15.1: a tunnel short of up says why; warnings get a line each."""
    t = {**STATUS["tunnels"]["wan0"], "state": "failing",
         "last_error": "no reply from 192.0.2.1:51820 to 3 handshake initiations",
         "warnings": ["mtu 1500 is larger than the underlay path to 192.0.2.1 carries"]}
    out = render.render_status({"tunnels": {"wan0": t}}, now=NOW).splitlines()
    assert "  state: failing (since 2 minutes, 5 seconds ago)" in out
    assert "  last error: no reply from 192.0.2.1:51820 to 3 handshake initiations" in out
    assert "  warning: mtu 1500 is larger than the underlay path to 192.0.2.1 carries" in out
    coloured = render.render_status({"tunnels": {"wan0": t}}, now=NOW, colour=True)
    assert "\x1b[1;31mfailing\x1b[0m" in coloured
