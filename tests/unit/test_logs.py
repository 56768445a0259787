"""wsd.server.logs: JSON and text lines, fields, rate limiting of repeated warnings (with an injected
clock), the level changed at run time, and a real process whose stdout stays empty."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
import warnings

import pytest

from wsd.server import logs

RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    picows_level = logging.getLogger("picows").level
    hooks = sys.excepthook, threading.excepthook
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("picows").setLevel(picows_level)
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)


def json_logging(source="worker 3", level="info", **kwargs) -> tuple[io.StringIO, FakeClock]:
    stream, clock = io.StringIO(), FakeClock()
    logs.setup_logging(level, source, "json", stream=stream, clock=clock, **kwargs)
    return stream, clock


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_the_contract_keys_and_the_fields_at_top_level(restore_logging):
    stream, _ = json_logging()
    log = logging.getLogger("wsd.worker")
    log.info("worker %d took over sequencing role %d", 3, 1, extra={"role": 1})
    log.warning("slow reader cut off", extra=logs.connection_fields(17, "10.1.2.3:5555", user="u123"))
    [first, second] = lines(stream)
    assert list(first)[:4] == ["time", "level", "process", "pid"]
    assert RFC3339_MS_UTC.match(first["time"]), first["time"]
    assert first["level"] == "info"
    assert first["process"] == "worker 3"
    assert first["event"] == "worker 3 took over sequencing role 1"
    assert first["logger"] == "wsd.worker"
    assert first["role"] == 1
    assert second["level"] == "warning"
    assert (second["connection"], second["peer"], second["user"]) == (17, "10.1.2.3:5555", "u123")
    assert "user" not in logs.connection_fields(1, "x:1")


def test_time_is_utc_with_milliseconds():
    assert logs.rfc3339_utc(1_796_119_200.1239) == "2026-12-01T10:00:00.123Z"
    assert logs.rfc3339_utc(0.0) == "1970-01-01T00:00:00.000Z"


def test_exceptions_are_rendered_inside_the_json_line(restore_logging):
    stream, _ = json_logging()
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("wsd.admin").exception("admin command %r failed", "status", extra={"command": "status"})
    text = stream.getvalue()
    assert text.count("\n") == 1  # the traceback is inside the one line
    [line] = lines(stream)
    assert line["level"] == "error"
    assert line["event"] == "admin command 'status' failed"
    assert line["exception_type"] == "KeyError"
    assert line["exception"].startswith("Traceback (most recent call last)")
    assert "KeyError: 'missing'" in line["exception"]


def test_odd_fields_and_bad_log_calls_still_make_one_json_line(restore_logging):
    stream, _ = json_logging()
    log = logging.getLogger("wsd.test")
    log.info("standard keys win", extra={"level": "mine", "event": "mine too", "big": 2**70, "obj": object()})
    log.info("template %d %d", 1)  # too few arguments: a line anyway, saying so
    first, second = lines(stream)
    assert first["level"] == "info" and first["level_"] == "mine"
    assert first["event"] == "standard keys win" and first["event_"] == "mine too"
    assert first["big"] == 2**70
    assert first["obj"].startswith("<object object")
    assert second["event"].startswith("template %d %d")
    assert "bad log arguments" in second["log_error"]


def test_text_lines_stay_readable_and_show_the_fields(restore_logging):
    stream = io.StringIO()
    logs.setup_logging("info", "supervisor", "text", stream=stream)
    logging.getLogger("wsd.supervisor").warning("worker %d killed", 2, extra={"pid": 4242, "reason": "no heartbeat"})
    [line] = stream.getvalue().splitlines()
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} wsd\[supervisor\] WARNING worker 2 killed ", line)
    assert line.endswith(' worker 2 killed pid=4242 reason="no heartbeat"')


def test_repeated_warnings_are_rate_limited_with_the_count_suppressed(restore_logging):
    stream, clock = json_logging(rate_limit_s=10.0)
    log = logging.getLogger("wsd.bus")
    for offset in range(100):  # a client makes the same warning a hundred times in a second
        log.warning("gap on %r: expected offset %d, got %d", "news", offset, offset + 2)
        clock.now += 0.01
    log.warning("overrun of ring %d", 1)  # another kind is not held back by the first
    assert [line["event"] for line in lines(stream)] == ["gap on 'news': expected offset 0, got 2", "overrun of ring 1"]
    assert "suppressed" not in lines(stream)[0]
    clock.now += 10.0
    log.warning("gap on %r: expected offset %d, got %d", "news", 500, 502)
    last = lines(stream)[-1]
    assert last["event"] == "gap on 'news': expected offset 500, got 502"
    assert last["suppressed"] == 99  # the lines of this kind not written since the previous one
    clock.now += 1.0
    log.warning("gap on %r: expected offset %d, got %d", "news", 600, 602)  # inside the new window
    assert len(lines(stream)) == 3


def test_the_end_of_a_burst_is_written_once_its_window_passes(restore_logging):
    stream, clock = json_logging(rate_limit_s=5.0)
    log = logging.getLogger("wsd.worker")
    for n in range(5):
        log.warning("slow reader %d cut off", n)
    assert len(lines(stream)) == 1
    assert logs.flush_suppressed() == 0  # the window has not passed yet
    clock.now += 5.0
    assert logs.flush_suppressed() == 1
    flushed = lines(stream)[-1]
    assert flushed["event"] == "slow reader 4 cut off"  # the last one, with its own time and fields
    assert flushed["suppressed"] == 3  # 1, 2 and 3 were never written
    assert logs.flush_suppressed() == 0
    log.warning("slow reader %d cut off", 5)  # the flushed line opened a new window
    assert len(lines(stream)) == 2
    assert logs.flush_suppressed(force=True) == 1  # at exit everything pending is written
    assert "suppressed" not in lines(stream)[-1]


def test_kind_groups_templates_and_lines_can_opt_out(restore_logging):
    stream, clock = json_logging()
    log = logging.getLogger("wsd.bus")
    log.warning("bad entry in ring %d", 0, extra={"kind": "bus.bad_entry"})
    log.warning("entry too large in ring %d", 1, extra={"kind": "bus.bad_entry"})
    log.warning("worker %d killed", 1, extra={"rate_limit": False})
    log.warning("worker %d killed", 2, extra={"rate_limit": False})
    for _ in range(3):
        log.info("info lines are never held back")
    events = [line["event"] for line in lines(stream)]
    assert events == ["bad entry in ring 0", "worker 1 killed", "worker 2 killed"] + 3 * [
        "info lines are never held back"
    ]
    assert lines(stream)[0]["kind"] == "bus.bad_entry"
    assert "rate_limit" not in lines(stream)[1]


def test_kinds_remembered_are_bounded():
    clock = FakeClock()
    limiter = logs.RateLimitFilter(10.0, clock=clock, max_kinds=3)
    for n in range(10):
        record = logging.LogRecord("wsd", logging.WARNING, __file__, 1, "x", (), None)
        record.kind = f"k{n}"
        assert limiter.filter(record)
    assert len(limiter.windows) == 3


def test_level_changes_at_run_time(restore_logging):
    stream, _ = json_logging(level="warning")
    log = logging.getLogger("wsd.worker")
    log.info("hidden")
    assert logs.set_level("DEBUG") == "warning"
    assert logs.current_level() == "debug"
    log.debug("now shown")
    assert logging.getLogger("picows").level == logging.WARNING  # picows's handshake noise stays off
    assert logs.set_level("error") == "debug"
    log.warning("hidden again")
    assert [line["event"] for line in lines(stream)] == ["now shown"]
    with pytest.raises(logs.LogSetupError, match="debug, info, warning, error"):
        logs.set_level("verbose")
    with pytest.raises(logs.LogSetupError, match="text, json"):
        logs.setup_logging("info", "supervisor", "xml")


def test_python_warnings_become_log_lines(restore_logging):
    stream, _ = json_logging()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old thing", DeprecationWarning, stacklevel=1)
    [line] = lines(stream)
    assert line["logger"] == "py.warnings" and "old thing" in line["event"]


def test_peer_addresses():
    assert logs.format_peer(("10.0.0.1", 5000)) == "10.0.0.1:5000"
    assert logs.format_peer(("::1", 5000, 0, 0)) == "[::1]:5000"
    assert logs.format_peer(None) is None


PROCESS = """
import logging, sys, threading
from wsd.server.logs import setup_logging
setup_logging("info", "worker 0", "json")
log = logging.getLogger("wsd.worker")
log.info("started", extra={"port": 8080})
for n in range(50):
    log.warning("gap on %r", "news", extra={"n": n})
threading.Thread(target=lambda: 1 / 0).start()
raise RuntimeError("boom")
"""


def test_a_process_logging_json_writes_only_json_lines_to_stderr_and_nothing_to_stdout():
    result = subprocess.run([sys.executable, "-P", "-c", PROCESS], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    parsed = [json.loads(line) for line in result.stderr.splitlines()]
    events = [line["event"] for line in parsed]
    # The burst of 50 gaps: the first, then (at exit) the last with the 48 in between counted.
    assert events[:2] == ["started", "gap on 'news'"]
    assert parsed[1]["n"] == 0
    uncaught = [line for line in parsed if line["event"] == "uncaught exception"]
    assert {line["exception_type"] for line in uncaught} == {"ZeroDivisionError", "RuntimeError"}
    assert all(line["level"] == "critical" for line in uncaught)
    flushed = [line for line in parsed if line.get("n") == 49]
    assert len(flushed) == 1 and flushed[0]["suppressed"] == 48
