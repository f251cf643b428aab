"""The fork server's pure parts: reading a fork request, and moving fds to their numbers."""

from __future__ import annotations

import json
import os

import pytest

from tund.relay.process.zygote import ForkRequestError, parse_request, place_fds, request_id


def req(**kw: object) -> bytes:
    return json.dumps({"op": "fork", "id": 1, "fds": [10, 11], **kw}).encode()


def test_a_good_request() -> None:
    assert parse_request(req(run_as="65534:65534"), [5, 6]) == (1, [10, 11], "65534:65534")
    assert parse_request(req(fds=[10, 11, 12]), [5, 6, 7]) == (1, [10, 11, 12], None)


@pytest.mark.parametrize(("msg", "fds", "error"), [
    (b"{", [5, 6], "fork request is not JSON"),
    (json.dumps({"op": "spawn", "id": 1}).encode(), [], "expected op 'fork'"),
    (req(id="1"), [5, 6], "without an integer id (got '1')"),
    (req(id=True), [5, 6], "without an integer id (got True)"),
    (req(fds=[10]), [5], "fds must be 2 or 3 distinct numbers above 2 (got [10])"),
    (req(fds=[2, 11]), [5, 6], "(got [2, 11])"),
    (req(fds=[10, 10]), [5, 6], "(got [10, 10])"),
    (req(fds=[10, 11, 12, 13]), [5, 6, 7, 8], "(got [10, 11, 12, 13])"),
    (req(), [5], "2 fd number(s) named but 1 fd(s) attached"),
    (req(run_as="root"), [5, 6], "run_as must be 'UID:GID' or null (got 'root')"),
    (req(run_as=0), [5, 6], "run_as must be 'UID:GID' or null (got 0)"),
])
def test_bad_requests_are_refused_with_the_reason(msg: bytes, fds: list[int],
                                                  error: str) -> None:
    with pytest.raises(ForkRequestError) as e:
        parse_request(msg, fds)
    assert error in str(e.value)


def test_request_id_of_a_broken_request() -> None:
    assert request_id(req(id=7)) == 7
    assert request_id(b"[1]") is None and request_id(b"{") is None


def test_place_fds_moves_crossing_fds_and_closes_the_rest() -> None:
    """In a child (place_fds closes fds): two pipes' write ends swap numbers."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    extra = os.open(os.devnull, os.O_RDONLY)
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            # w1 goes to w2's number and back: each target is another's source
            target_report = max(r1, w1, r2, w2, extra, report_r, report_w) + 5
            place_fds([w2, w1, report_w], [w1, w2, target_report])
            left = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
            os.write(w1, b"to-pipe-2")
            os.write(w2, b"to-pipe-1")
            os.write(target_report, json.dumps([left, target_report]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    for fd in (w1, w2, extra):
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    left, target_report = json.loads(os.read(report_r, 4096))
    assert os.read(r1, 64) == b"to-pipe-1" and os.read(r2, 64) == b"to-pipe-2"
    # stdio, the three placed fds, and the one listdir itself had open: nothing else
    rest = set(left) - {0, 1, 2, w1, w2, target_report}
    assert {0, 1, 2, w1, w2, target_report} <= set(left) and len(rest) == 1, left
    for fd in (r1, r2, report_r):
        os.close(fd)
