"""The control protocol: newline-delimited JSON over a Unix stream socket.

Shared by the daemon (:mod:`tund.control.server`) and the CLI (:mod:`tund.control.client`).
Pure: no sockets, no I/O; every function here works on bytes and dicts.

One request per line, one reply per request, in order; a connection may carry many::

    -> {"v": 1, "id": 7, "cmd": "status", "args": {}}
    <- {"v": 1, "id": 7, "ok": true, "result": {...}}
    <- {"v": 1, "id": 7, "ok": false, "error": {"code": "not-found", "message": "..."}}

Every request carries the protocol version ``v``; a daemon speaking another version
answers ``version-mismatch`` (so an old CLI against a new daemon fails loudly, never
silently misreads). ``id`` is an integer chosen by the client and echoed back; when a
request is too broken to read its ``id``, the reply carries ``"id": null``.

Error codes are the stable part of an error (scripts match on them); messages are for
people and may change. See :data:`ERROR_CODES`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from tund.errors import ErrorCode as ErrorCode  # re-exported: the reply codes
from tund.errors import TundError

PROTOCOL_VERSION = 1
#: Longest request line (without its newline) a server accepts.
MAX_REQUEST = 64 * 1024
#: Longest reply line a client accepts (a status of many tunnels is large, but bounded).
MAX_REPLY = 16 * 1024 * 1024


ERROR_CODES: dict[str, str] = {
    ErrorCode.BAD_REQUEST: "the request is not valid JSON or lacks a required field",
    ErrorCode.TOO_LARGE: "the request line is longer than the server accepts",
    ErrorCode.UNKNOWN_COMMAND: "the daemon has no such command",
    ErrorCode.VERSION_MISMATCH: "client and daemon speak different protocol versions",
    ErrorCode.INVALID_CONFIG: "the configuration is invalid; one located issue per line",
    ErrorCode.RELOAD_FAILED: "a reload step failed; the earlier steps were undone",
    ErrorCode.BUSY: "another operation is in progress; try again",
    ErrorCode.NOT_FOUND: "no tunnel or interface of that name",
    ErrorCode.DENIED: "the caller may not run this command",
    ErrorCode.INTERNAL: "the daemon hit a bug; details are in its log",
    ErrorCode.KERNEL: "a kernel object (device, link, address, route) could not be changed",
    ErrorCode.RELAY: "a relay worker could not run its tunnel (in its log and last_error)",
    ErrorCode.UNREACHABLE: "tundctl could not ask the daemon (no socket, refused, timeout)",
    ErrorCode.CONTROL_SOCKET: "the daemon could not open its control socket",
}
"""Every code tund gives and its meaning (clients must still accept any string)."""


class CommandError(TundError):
    """An error with an explicit code, for dispatchers to raise (``unknown-command`` ...)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = str(code)
        super().__init__(message)


class ProtocolError(TundError):
    """A line could not be decoded as a request or reply.

    ``code`` is ``bad-request``, ``too-large`` or ``version-mismatch``; ``request_id``
    is the id read from the line when there was one (so the reply can echo it).
    """

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        self.code = str(code)
        self.request_id = request_id
        super().__init__(message)


@dataclass(frozen=True)
class Request:
    """A decoded request: ``cmd`` with its ``args`` mapping."""

    id: int
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A decoded reply: ``result`` when ``ok``, else ``error_code`` and ``error_message``."""

    id: int | None
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str = ""
    error_message: str = ""


# --------------------------------------------------------------------------- encoding


def _line(obj: dict[str, Any]) -> bytes:
    """One JSON object as a compact UTF-8 line ending in ``\\n``.

    ``ensure_ascii`` keeps the line free of raw newlines and odd code points whatever
    the strings hold. Raises TypeError/ValueError when ``obj`` is not JSON-serializable.
    """
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii") + b"\n"


def encode_request(request_id: int, cmd: str, args: dict[str, Any] | None = None) -> bytes:
    """The wire form of a request."""
    return _line({"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args or {}})


def encode_result(request_id: int | None, result: dict[str, Any]) -> bytes:
    """The wire form of a successful reply; raises TypeError/ValueError if not JSON-able."""
    return _line({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(request_id: int | None, code: str, message: str) -> bytes:
    """The wire form of an error reply."""
    return _line({"v": PROTOCOL_VERSION, "id": request_id, "ok": False,
                  "error": {"code": str(code), "message": message}})


# --------------------------------------------------------------------------- decoding


def _load_object(line: bytes, max_size: int, what: str) -> dict[str, Any]:
    body = line.rstrip(b"\r\n")
    if len(body) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"{what} is {len(body)} bytes; at most {max_size} are accepted")
    if not body.strip():
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"empty {what}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"{what} is not UTF-8 text (got {_preview(body)})") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        # ValueError beyond JSONDecodeError: an integer longer than Python converts
        # (sys.get_int_max_str_digits(), 4,300 digits by default).
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"{what} is not valid JSON: {_json_failure(e)} "
                            f"(got {_preview(body)})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"{what} must be a JSON object (got {type(obj).__name__})")
    return obj


def _json_failure(e: ValueError | RecursionError) -> str:
    if isinstance(e, json.JSONDecodeError):
        return e.msg
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if "integer string conversion" in str(e):
        return f"an integer has more than {sys.get_int_max_str_digits()} digits"
    return str(e)[:80]


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (and could not be sent back): refuse them."""
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def _preview(body: bytes) -> str:
    text = body[:60].decode("utf-8", "replace")
    return repr(text + "...") if len(body) > 60 else repr(text)


def _int_id(obj: dict[str, Any]) -> int | None:
    value = obj.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_version(obj: dict[str, Any], what: str, request_id: int | None) -> None:
    if "v" not in obj:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"{what} lacks the protocol version field `v`", request_id)
    if obj["v"] != PROTOCOL_VERSION or isinstance(obj["v"], bool):
        raise ProtocolError(ErrorCode.VERSION_MISMATCH,
                            f"protocol version {PROTOCOL_VERSION} expected "
                            f"(got {obj['v']!r})", request_id)


def decode_request(line: bytes, max_size: int = MAX_REQUEST) -> Request:
    """Parse one request line; raise :class:`ProtocolError` saying what is wrong.

    Checks, in order: size, JSON object, ``v``, ``id`` (integer), ``cmd`` (non-empty
    string), ``args`` (object, optional).
    """
    obj = _load_object(line, max_size, "request")
    request_id = _int_id(obj)
    _check_version(obj, "request", request_id)
    if request_id is None:
        got = repr(obj["id"]) if "id" in obj else "nothing"
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"request `id` must be an integer (got {got})")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        got = repr(cmd) if "cmd" in obj else "nothing"
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"request `cmd` must be a non-empty string (got {got})", request_id)
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"request `args` must be an object (got {type(args).__name__})",
                            request_id)
    return Request(request_id, cmd, args)


def decode_reply(line: bytes, max_size: int = MAX_REPLY) -> Reply:
    """Parse one reply line; raise :class:`ProtocolError` saying what is wrong."""
    obj = _load_object(line, max_size, "reply")
    request_id = _int_id(obj)
    _check_version(obj, "reply", request_id)
    ok = obj.get("ok")
    if ok is True:
        result = obj.get("result", {})
        if not isinstance(result, dict):
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"reply `result` must be an object (got {type(result).__name__})",
                                request_id)
        return Reply(request_id, True, result)
    if ok is False:
        error = obj.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"error reply lacks `error.code` (got {error!r})", request_id)
        message = error.get("message")
        return Reply(request_id, False, {}, error["code"],
                     message if isinstance(message, str) else "")
    raise ProtocolError(ErrorCode.BAD_REQUEST, f"reply `ok` must be true or false (got {ok!r})",
                        request_id)
