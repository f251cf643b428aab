"""The control protocol codec, without sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tund.control import protocol as p
from tund.control.protocol import ProtocolError
from tund.errors import ErrorCode


def test_request_round_trip() -> None:
    line = p.encode_request(7, "status", {"tunnel": "wan0"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "id": 7, "cmd": "status", "args": {"tunnel": "wan0"}}
    assert p.decode_request(line) == p.Request(7, "status", {"tunnel": "wan0"})


def test_args_default_to_empty() -> None:
    assert p.decode_request(b'{"v":1,"id":1,"cmd":"status"}').args == {}
    assert p.decode_request(b'{"v":1,"id":1,"cmd":"status","args":null}').args == {}


def test_result_and_error_replies_round_trip() -> None:
    ok = p.decode_reply(p.encode_result(3, {"a": [1, 2]}))
    assert ok == p.Reply(3, True, {"a": [1, 2]})
    err = p.decode_reply(p.encode_error(4, ErrorCode.NOT_FOUND, "no tunnel 'x'"))
    assert (err.id, err.ok, err.error_code, err.error_message) == (4, False, "not-found",
                                                                   "no tunnel 'x'")
    assert json.loads(p.encode_error(None, "kernel", "m"))["id"] is None


def test_newlines_in_strings_stay_on_one_line() -> None:
    line = p.encode_error(1, ErrorCode.INVALID_CONFIG, "a:1: x\nb:2: y")
    assert line.count(b"\n") == 1
    assert p.decode_reply(line).error_message == "a:1: x\nb:2: y"


@pytest.mark.parametrize(("line", "code", "fragment"), [
    (b"", ErrorCode.BAD_REQUEST, "empty request"),
    (b"   \n", ErrorCode.BAD_REQUEST, "empty request"),
    (b"{not json\n", ErrorCode.BAD_REQUEST, "not valid JSON"),
    (b"\xff\xfe\n", ErrorCode.BAD_REQUEST, "not UTF-8"),
    (b"[1,2]\n", ErrorCode.BAD_REQUEST, "must be a JSON object (got list)"),
    (b'{"id":1,"cmd":"status"}', ErrorCode.BAD_REQUEST, "lacks the protocol version"),
    (b'{"v":2,"id":1,"cmd":"status"}', ErrorCode.VERSION_MISMATCH, "expected (got 2)"),
    (b'{"v":true,"id":1,"cmd":"status"}', ErrorCode.VERSION_MISMATCH, "(got True)"),
    (b'{"v":1,"cmd":"status"}', ErrorCode.BAD_REQUEST, "`id` must be an integer (got nothing)"),
    (b'{"v":1,"id":"7","cmd":"status"}', ErrorCode.BAD_REQUEST, "(got '7')"),
    (b'{"v":1,"id":1}', ErrorCode.BAD_REQUEST, "`cmd` must be a non-empty string (got nothing)"),
    (b'{"v":1,"id":1,"cmd":""}', ErrorCode.BAD_REQUEST, "(got '')"),
    (b'{"v":1,"id":1,"cmd":"s","args":[1]}', ErrorCode.BAD_REQUEST, "`args` must be an object"),
    (b"[" * 100_000, ErrorCode.TOO_LARGE, "at most"),
])
def test_bad_requests_say_what_is_wrong(line: bytes, code: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_request(line, max_size=p.MAX_REQUEST)
    assert info.value.code == code
    assert fragment in str(info.value)


def test_deep_nesting_is_a_bad_request_not_a_crash() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_request(b"[" * 50_000 + b"]" * 50_000, max_size=1_000_000)
    assert info.value.code == ErrorCode.BAD_REQUEST


def test_error_keeps_the_id_when_readable() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_request(b'{"v":9,"id":42,"cmd":"status"}')
    assert info.value.request_id == 42
    with pytest.raises(ProtocolError) as info:
        p.decode_request(b'{"v":1,"id":42}')
    assert info.value.request_id == 42


def test_size_limit_is_exact() -> None:
    body = p.encode_request(1, "x", {"pad": "a" * 100}).rstrip(b"\n")
    assert p.decode_request(body, max_size=len(body)).cmd == "x"
    with pytest.raises(ProtocolError) as info:
        p.decode_request(body, max_size=len(body) - 1)
    assert info.value.code == ErrorCode.TOO_LARGE


@pytest.mark.parametrize("line", [
    b'{"v":1,"id":1}',
    b'{"v":1,"id":1,"ok":"yes"}',
    b'{"v":1,"id":1,"ok":true,"result":[]}',
    b'{"v":1,"id":1,"ok":false}',
    b'{"v":1,"id":1,"ok":false,"error":{"message":"m"}}',
])
def test_malformed_replies(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode_reply(line)


def test_reply_version_checked() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_reply(b'{"v":2,"id":1,"ok":true,"result":{}}')
    assert info.value.code == ErrorCode.VERSION_MISMATCH


def test_unserializable_result_raises() -> None:
    with pytest.raises((TypeError, ValueError)):
        p.encode_result(1, {"x": object()})
    with pytest.raises(ValueError):
        p.encode_result(1, {"x": float("nan")})


def test_every_code_is_documented() -> None:
    assert set(ErrorCode) == set(p.ERROR_CODES)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                       max_size=4),
    max_leaves=20,
)


@given(st.integers(), st.text(min_size=1), st.dictionaries(st.text(), json_values, max_size=5))
def test_any_request_round_trips(request_id: int, cmd: str, args: dict[str, object]) -> None:
    line = p.encode_request(request_id, cmd, args)
    assert line.count(b"\n") == 1
    assert p.decode_request(line, max_size=10**7) == p.Request(request_id, cmd, args)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        p.decode_request(data)
    except ProtocolError as e:
        assert e.code in set(ErrorCode)


@pytest.mark.parametrize("where", ["v", "id", "args"])
def test_integer_too_long_for_python_is_a_bad_request(where: str) -> None:
    # json.loads raises a plain ValueError (not JSONDecodeError) for an integer over
    # sys.get_int_max_str_digits() digits; it used to escape the decoder.
    huge = "9" * 5000
    fields = {"v": "1", "id": "1", "args": "{}"}
    fields[where] = huge if where != "args" else '{"n":' + huge + "}"
    line = (f'{{"v":{fields["v"]},"id":{fields["id"]},"cmd":"status",'
            f'"args":{fields["args"]}}}').encode()
    with pytest.raises(ProtocolError) as info:
        p.decode_request(line)
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert "more than 4300 digits" in str(info.value)
    with pytest.raises(ProtocolError):
        p.decode_reply(line)
