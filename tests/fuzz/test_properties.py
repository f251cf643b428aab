"""Property-based tests (hypothesis) over the fuzz targets, plus structured inputs.

Random bytes reach the shallow end of each parser; the structured strategies here reach
deeper: well-formed requests with hostile ``cmd``/``args``, streams of valid frames cut
anywhere, well-sized WireGuard messages with random fields. The config loader has its
own property test (tests/unit/test_config_fuzz.py); here it gets raw bytes and text.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets
from tund.control import protocol
from tund.relay.transport.framing import MAX_FRAME, FrameDecoder, encode
from tund.relay.wireguard import messages

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@FAST
@given(st.binary(max_size=2048))
def test_config_bytes(data: bytes) -> None:
    targets.config_bytes(data)


@FAST
@given(st.text(max_size=1024))
def test_config_text(text: str) -> None:
    targets.config_toml(text.encode("utf-8", "surrogatepass"))


@FAST
@given(st.binary(max_size=512))
def test_control_request_bytes(data: bytes) -> None:
    targets.control_request(data)
    targets.control_reply(data)


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@FAST
@given(st.dictionaries(st.sampled_from(["v", "id", "cmd", "args", "x"]), JSON, max_size=5))
def test_control_request_objects(obj: dict[str, Any]) -> None:
    targets.control_request(_line(obj))


COMMANDS = st.sampled_from(["status", "reload", "up", "down", "restart", "", "nope", "\x00"])
ARGS = st.dictionaries(st.sampled_from(["tunnel", "dry_run", "x"]),
                       JSON | st.sampled_from(["t1", "t2", "", "nope"]), max_size=3)


@FAST
@given(st.integers(0, 3), COMMANDS, ARGS)
def test_dispatch_well_formed_requests(peer: int, cmd: str, args: dict[str, Any]) -> None:
    """Any command with any args, from any peer: a JSON-able result or a TundError."""
    targets.dispatch(bytes([peer]) + protocol.encode_request(7, cmd, args))


@FAST
@given(st.binary(max_size=512))
def test_dispatch_bytes(data: bytes) -> None:
    targets.dispatch(data)


@FAST
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20),
       st.lists(st.integers(1, 700), min_size=1, max_size=10))
def test_frames_survive_any_split(packets: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode(p) for p in packets)
    dec = FrameDecoder(MAX_FRAME)
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        out += dec.feed(wire[pos:pos + step])
        pos, i = pos + step, i + 1
    assert out == packets
    assert dec.pending == 0


@FAST
@given(st.integers(1, 2000), st.binary(max_size=4096), st.integers(1, 300))
def test_framing_hostile_stream(max_size: int, stream: bytes, step: int) -> None:
    dec = FrameDecoder(max_size)
    for i in range(0, len(stream), step):
        for p in dec.feed(stream[i:i + step]):
            assert 0 < len(p) <= max_size
        assert dec.pending <= max_size + 1


@FAST
@given(st.binary(max_size=256))
def test_framing_target(data: bytes) -> None:
    targets.framing(data)


SIZES = st.sampled_from([messages.INITIATION_LEN, messages.RESPONSE_LEN,
                         messages.COOKIE_REPLY_LEN, messages.TRANSPORT_MIN_LEN, 33, 200, 0, 1])


@FAST
@given(st.integers(0, 5), SIZES, st.booleans(), st.data())
def test_wireguard_sized_messages(kind: int, size: int, zero_reserved: bool,
                                  data: st.DataObject) -> None:
    """Messages of the right type and length with random contents reach the crypto."""
    body = data.draw(st.binary(min_size=max(0, size - 4), max_size=max(0, size - 4)))
    head = bytes([kind]) + (bytes(3) if zero_reserved else b"\x01\x00\x00")
    message = (head + body)[:size] if size else b""
    targets.wg_parse(message)
    targets.wg_open(message)
    targets.wg_peers(bytes([kind * 2 % 256]) + message[1:])


@FAST
@given(st.binary(max_size=600))
def test_wireguard_bytes(data: bytes) -> None:
    targets.wg_parse(data)
    targets.wg_open(data)
    targets.wg_peers(data)


def test_nan_and_infinity_are_not_json() -> None:
    """Python's json reads them, but no reply could carry them back: bad-request."""
    for const in (b"NaN", b"Infinity", b"-Infinity"):
        line = b'{"v": 1, "id": 1, "cmd": "status", "args": {"tunnel": ' + const + b"}}"
        try:
            protocol.decode_request(line)
        except protocol.ProtocolError as e:
            assert e.code == "bad-request" and const.decode().lstrip("-") in str(e)
        else:
            raise AssertionError(f"{const!r} accepted")


_OPS = ["start", "ping", "pong", "state", "update", "stop", "ready", "fork", "forked", "error"]
_FIELDS = ["op", "seq", "stats", "state", "peer", "error", "mtu", "spec", "pid", "id", "fds",
           "run_as", "rx_packets", "drops"]


@FAST
@given(st.one_of(st.sampled_from(_OPS), JSON),
       st.dictionaries(st.sampled_from(_FIELDS), JSON, max_size=6))
def test_worker_messages_decode_strictly(op: Any, fields: dict[str, Any]) -> None:
    """Any JSON object with an op (issue 14.2, 16.4): a MessageError or a message that
    round-trips, never another exception."""
    targets.worker_message(json.dumps({**fields, "op": op}).encode())
    targets.worker_message(json.dumps(fields).encode())
