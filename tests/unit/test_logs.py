"""tund.logs: journald only when it is really there; tunnel fields reach both targets."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from tund import logs


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    if logs._installed is not None:
        root.removeHandler(logs._installed)
        logs._installed = None
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(("env", "sock", "importable", "tty", "expected"), [
    ({}, False, True, False, "stderr"),               # no journald: never the journal
    ({"JOURNAL_STREAM": "8:9"}, False, True, False, "stderr"),
    ({"JOURNAL_STREAM": "8:9"}, True, False, False, "stderr"),  # no systemd-python
    ({"JOURNAL_STREAM": "8:9"}, True, True, False, "journal"),
    ({}, True, True, False, "journal"),               # stderr redirected on a systemd host
    ({}, True, True, True, "stderr"),                 # run by hand on a terminal
    ({"TUND_LOG_TARGET": "journal"}, True, True, True, "journal"),
    ({"TUND_LOG_TARGET": "stderr", "JOURNAL_STREAM": "8:9"}, True, True, False, "stderr"),
    ({"TUND_LOG_TARGET": "journal"}, False, True, True, "stderr"),
])
def test_choose_target(env: dict[str, str], sock: bool, importable: bool, tty: bool,
                       expected: str) -> None:
    assert logs.choose_target(env, journal_socket=sock, journal_importable=importable,
                              stderr_is_tty=tty) == expected


@pytest.mark.parametrize(("text", "level"), [("debug", 10), ("INFO", 20), (" warning ", 30),
                                             ("error", 40)])
def test_parse_level(text: str, level: int) -> None:
    assert logs.parse_level(text) == level


def test_parse_level_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="'loud'"):
        logs.parse_level("loud")


def test_setup_rejects_bad_level_without_touching_handlers() -> None:
    before = list(logging.getLogger().handlers)
    with pytest.raises(ValueError):
        logs.setup("verbose", env={"TUND_LOG_TARGET": "stderr"})
    assert logging.getLogger().handlers == before


def test_stderr_shows_tunnel_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    assert logs.setup("debug", env={"TUND_LOG_TARGET": "stderr"}) == "stderr"
    logs.tunnel_logger("wan0", "tun7").info("peer %s connected", "192.0.2.1")
    logging.getLogger("tund.daemon.main").debug("plain")
    out = buf.getvalue().splitlines()
    assert out[0].endswith("INFO    tund.tunnel: [wan0/tun7] peer 192.0.2.1 connected")
    assert out[1].endswith("DEBUG   tund.daemon.main: plain")


def test_setup_twice_replaces_its_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    logs.setup("info", env={"TUND_LOG_TARGET": "stderr"})
    logs.setup("warning", env={"TUND_LOG_TARGET": "stderr"})
    logging.getLogger("tund.x").info("hidden")
    logging.getLogger("tund.x").warning("shown")
    assert buf.getvalue().count("shown") == 1
    assert "hidden" not in buf.getvalue()


def test_adapter_fields_are_record_attributes_and_caller_extra_is_kept() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tund.test_logs")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logs.tunnel_logger("lan1", "tap0", name="tund.test_logs").warning(
            "x", extra={"TUND_PEER": "198.51.100.7"})
    finally:
        logger.removeHandler(handler)
    (rec,) = records
    got = tuple(getattr(rec, f) for f in ("TUND_TUNNEL", "TUND_INTERFACE", "TUND_PEER"))
    assert got == ("lan1", "tap0", "198.51.100.7")


def test_journal_handler_sends_upper_case_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """JournalHandler passes record attributes as fields: check what it would send."""
    journal = pytest.importorskip("systemd.journal")
    sent: list[tuple[str, dict[str, object]]] = []

    def fake_send(message: str, /, **fields: object) -> None:
        sent.append((message, fields))

    handler = logs._make_handler("journal")
    assert isinstance(handler, journal.JournalHandler)
    monkeypatch.setattr(handler, "send", fake_send)
    logger = logging.getLogger("tund.test_journal")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logs.tunnel_logger("wan0", "tun7", name="tund.test_journal").info("up")
    finally:
        logger.removeHandler(handler)
    ((message, fields),) = sent
    assert message == "[wan0/tun7] up"
    assert fields["TUND_TUNNEL"] == "wan0"
    assert fields["TUND_INTERFACE"] == "tun7"
    assert fields["SYSLOG_IDENTIFIER"] == "tund"
    assert fields["PRIORITY"] == "6"


def test_a_workers_messages_carry_its_tunnel_and_interface(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15.12: under journald a worker logs through the journal with TUND_TUNNEL and
    TUND_INTERFACE on every message (it used to write untagged lines to stderr); the fork
    server never opens the journal (its children would inherit the socket's fd number)."""
    journal = pytest.importorskip("systemd.journal")
    from tund.relay.process import worker

    sent: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(logs, "current_target", lambda env=None: "journal")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        worker.setup_logging("fork-server", "tund-zygote")
        assert [type(h) for h in root.handlers] == [logging.StreamHandler]
        worker.setup_logging("wan0", interface="tun7")
        (handler,) = root.handlers
        assert isinstance(handler, journal.JournalHandler)
        monkeypatch.setattr(handler, "send",
                            lambda message, /, **fields: sent.append((message, fields)))
        logging.getLogger("tund.relay.process.worker").info("starting: %s", "{}")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    ((message, fields),) = sent
    assert message == "[wan0/tun7] starting: {}"
    assert (fields["TUND_TUNNEL"], fields["TUND_INTERFACE"]) == ("wan0", "tun7")
    assert fields["SYSLOG_IDENTIFIER"] == "tund"


def test_throttle_writes_one_line_per_key_per_interval_and_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    t = logs.Throttle(10.0, clock=lambda: now[0], max_keys=2)
    lg = logging.getLogger("tund.test.throttle")
    with caplog.at_level(logging.WARNING, "tund.test.throttle"):
        written = [t.log(lg, logging.WARNING, "a", "accept failed: %s", "EMFILE")
                   for _ in range(1000)]
        assert written.count(True) == 1
        assert t.log(lg, logging.WARNING, "b", "other")  # another key is not held back
        now[0] += 10.0
        assert t.log(lg, logging.WARNING, "a", "accept failed: %s", "EMFILE")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["accept failed: EMFILE", "other",
                    "accept failed: EMFILE (999 more like this in the last 10s not logged)"]
    for i in range(10):  # distinct keys do not pile up
        t.allow(f"k{i}")
    assert len(t._last) <= 2
