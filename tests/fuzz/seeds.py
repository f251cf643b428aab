"""Starting inputs for each fuzz target: small valid examples the mutator can take apart."""

from __future__ import annotations

import json
from pathlib import Path

from tund.control import protocol
from tund.relay.transport.framing import encode
from tund.relay.wireguard import messages

_ETC = Path(__file__).resolve().parents[2] / "etc" / "tund"

_CONFIG = b"""[daemon]
control_group = "0"
[interfaces.tun0]
mode = "tun"
addresses = ["10.237.0.1/24"]
mtu = 1420
[tunnels.t1]
interface = "tun0"
transport = "tcp"
listen = "10.237.0.1:5000"
encryption = "none"
"""


def seeds(target: str) -> list[bytes]:
    """A few well-formed inputs for ``target`` (see tests.fuzz.targets.TARGETS)."""
    if target in ("config_bytes", "config_toml"):
        out = [_CONFIG, b"[daemon]\n", b""]
        out += [p.read_bytes() for p in sorted(_ETC.glob("*.toml"))]
        return out
    if target in ("control_request", "dispatch"):
        lines = [protocol.encode_request(1, cmd, args) for cmd, args in (
            ("status", {}), ("status", {"tunnel": "t1"}), ("reload", {"dry_run": True}),
            ("up", {"tunnel": "t2"}), ("down", {"tunnel": "nope"}), ("restart", {}))]
        return [bytes([i]) + line if target == "dispatch" else line
                for i, line in enumerate(lines)]
    if target == "control_reply":
        return [protocol.encode_result(1, {"tunnels": {}}),
                protocol.encode_error(2, "denied", "no"),
                json.dumps({"v": 1, "id": None, "ok": False}).encode()]
    if target == "framing":
        return [b"\x05\xdc\x10" + encode(b"x" * 60) + encode(b"y"), b"\x00\x10\x01\xff\xff"]
    if target == "wg_peers":
        packet = bytes([0x45, 0, 0, 28]) + bytes(8) + bytes([10, 8, 0, 1, 10, 8, 0, 2])
        return [b"\x00" + bytes(3) + bytes(4) + bytes(8) + bytes(32),
                b"\x01" + packet + bytes(8) + b"\xff\xfe" + b"\x02" + bytes(147),
                b"\x03" + packet[:12] + b"\xff\xfe\x06" + bytes(63)]
    if target in ("wg_parse", "wg_open"):
        return [messages.pack_initiation(1, bytes(108)),
                messages.pack_response(2, 1, bytes(48)),
                messages.pack_cookie_reply(1, bytes(24), bytes(32)),
                messages.transport_header(1, 0) + bytes(32)]
    if target == "worker_message":
        from tests.unit.test_messages import EVERY

        return [m.encode() for m in EVERY]
    raise KeyError(target)
