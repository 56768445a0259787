"""Logging set-up shared by the supervisor and the workers: one line per event on stderr, as text or
as JSON (`--log-format`), with the event's fields; repeated warnings rate-limited; the level
changeable while the server runs.

An event's fields are passed with `extra=` (`log.warning("slow reader cut off", extra={"connection":
7, "peer": "10.0.0.9:51234"})`); `connection_fields()` builds the ones every line about a connection
carries. JSON lines have the keys `time` (RFC 3339, UTC, milliseconds), `level`, `process`
(`supervisor` or `worker N`), `event` (the message) and `logger`, then the fields; text lines show
the fields as `key=value` after the message.

Rate limiting: of the lines at WARNING and above, at most one per kind is written every
`rate_limit_s` seconds; a kind is the logger and the message template (`"gap on %r: ..."`), or the
`kind` field when one is given. A line written after some were held back carries `suppressed=N`:
how many lines of its kind were not written since the previous one. `flush_suppressed()` (called
from each process's periodic tick) writes the last held-back line of a kind once its window has
passed, so the end of a burst is never lost. A line can opt out with `extra={"rate_limit": False}`.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

import orjson

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
RATE_LIMIT_S = 10.0  # default: at most one line per kind of warning every 10 seconds
MAX_KINDS = 1024  # kinds of warning remembered (least recently seen forgotten first)

# Attributes every LogRecord has: whatever else a record carries came from `extra=` (a field).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
}  # fmt: skip
_CONTROL_FIELDS = frozenset({"rate_limit"})  # read by the rate limiter, never written out


class LogSetupError(ValueError):
    """A log level or format that is not one of the known ones."""


def setup_logging(
    level: str,
    source: str,
    log_format: str = "text",
    *,
    stream: TextIO | None = None,
    rate_limit_s: float = RATE_LIMIT_S,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Send every log line of this process to stderr (or `stream`), as `log_format`.

    `source` names the process in each line (`supervisor`, `worker 3`). Called once per process;
    calling it again replaces the previous set-up.
    """
    if log_format not in FORMATS:
        raise LogSetupError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(source) if log_format == "json" else TextFormatter(source))
    handler.addFilter(RateLimitFilter(rate_limit_s, clock=clock))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    logging.captureWarnings(True)  # warnings.warn() goes through the same lines
    if log_format == "json":
        # An uncaught exception would otherwise print a multi-line traceback between JSON lines.
        sys.excepthook = _log_uncaught
        threading.excepthook = lambda args: _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)
    else:
        sys.excepthook = sys.__excepthook__
        threading.excepthook = threading.__excepthook__


def set_level(level: str) -> str:
    """Change this process's log level at once (`wsd ctl log-level` calls it in every process).

    Returns the previous level's name.
    """
    name = level.lower() if isinstance(level, str) else level
    if name not in LEVELS:
        raise LogSetupError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    root = logging.getLogger()
    previous = current_level()
    root.setLevel(name.upper())
    # picows logs every rejected handshake at INFO; that is noise at our default level.
    logging.getLogger("picows").setLevel(max(logging.WARNING, root.level))
    return previous


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().level).lower()


def level_number(level: str) -> int:
    """logging's number of one of LEVELS (`wsd ctl log-level` passes levels between processes so)."""
    if level not in LEVELS:
        raise LogSetupError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    return logging.getLevelName(level.upper())


def level_name(number: int) -> str | None:
    """The name in LEVELS of a level number, None for any other number (0: not set)."""
    name = logging.getLevelName(number)
    return name.lower() if isinstance(name, str) and name.lower() in LEVELS else None


def connection_fields(connection: int, peer: str | None, user: str | None = None) -> dict[str, Any]:
    """The fields of a line about one connection: its id, the peer address and (with auth) the user."""
    fields: dict[str, Any] = {"connection": connection, "peer": peer}
    if user is not None:
        fields["user"] = user
    return fields


def format_peer(address: Any) -> str | None:
    """A socket peer address as `host:port` (`[::1]:port` for IPv6), None when unknown."""
    if not address:
        return None
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def flush_suppressed(force: bool = False) -> int:
    """Write the last held-back line of every kind whose window has passed (all, with `force`).

    Returns the number of lines written. Cheap when nothing was held back: call it every second.
    """
    written = 0
    for handler in logging.getLogger().handlers:
        for filt in handler.filters:
            if isinstance(filt, RateLimitFilter):
                for record in filt.due(force=force):
                    handler.acquire()
                    try:
                        handler.emit(record)  # not handle(): it has been through the filter once
                    finally:
                        handler.release()
                    written += 1
    return written


atexit.register(flush_suppressed, True)


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record carries (its `extra=` keys), in the order they were given."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES and key not in _CONTROL_FIELDS and not key.startswith("_")
    }


# -- formatters -----------------------------------------------------------------------------------


def rfc3339_utc(created: float) -> str:
    """`2026-12-01T10:00:00.123Z` for a time.time() value."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _message(record: logging.LogRecord) -> tuple[str, str | None]:
    """The formatted message, and an error when the arguments did not fit the template (a bad log
    call must still produce a line, never a traceback on stderr instead of it)."""
    try:
        return record.getMessage(), None
    except Exception as exc:  # any formatting failure
        return f"{record.msg!s} {record.args!r}", f"bad log arguments: {exc}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, process, pid, logger, event, then the fields."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        event, error = _message(record)
        line: dict[str, Any] = {
            "time": rfc3339_utc(record.created),
            "level": record.levelname.lower(),
            "process": self.source,
            "pid": record.process,
            "logger": record.name,
            "event": event,
        }
        for key, value in event_fields(record).items():
            line[f"{key}_" if key in line else key] = value  # a field never hides a standard key
        if error:
            line["log_error"] = error
        if record.exc_info:
            line["exception_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _dumps(line)


def _dumps(line: dict[str, Any]) -> str:
    try:
        return orjson.dumps(line, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        # orjson refuses integers beyond 64 bits and some keys; the standard library does not.
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-12-01 10:00:00,123 wsd[worker 0] WARNING message key=value ...`."""

    def __init__(self, source: str):
        super().__init__(f"%(asctime)s wsd[{source}] %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message, error = _message(record)
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        fields = event_fields(record)
        if error:
            fields["log_error"] = error
        if fields:
            text += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


# -- rate limiting --------------------------------------------------------------------------------


class _Window:
    __slots__ = ("started", "suppressed", "last")

    def __init__(self, started: float):
        self.started = started
        self.suppressed = 0
        self.last: logging.LogRecord | None = None  # the last line held back


class RateLimitFilter(logging.Filter):
    """At most one line per kind every `interval_s` seconds for records at `min_level` and above.

    `clock` is injectable (monotonic seconds) so the behaviour is tested without sleeping.
    """

    def __init__(
        self,
        interval_s: float = RATE_LIMIT_S,
        min_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = MAX_KINDS,
    ):
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        self.clock = clock
        self.max_kinds = max_kinds
        self.windows: OrderedDict[Any, _Window] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def kind(record: logging.LogRecord) -> Any:
        explicit = getattr(record, "kind", None)
        if explicit is not None:
            return ("kind", str(explicit))
        return (record.name, record.msg if isinstance(record.msg, str) else type(record.msg).__name__)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or self.interval_s <= 0 or getattr(record, "rate_limit", True) is False:
            return True
        key = self.kind(record)
        now = self.clock()
        with self.lock:
            window = self.windows.get(key)
            if window is not None and now - window.started < self.interval_s:
                window.suppressed += 1
                window.last = record
                self.windows.move_to_end(key)
                return False
            if window is not None and window.suppressed:
                record.suppressed = window.suppressed
            self.windows[key] = _Window(now)
            self.windows.move_to_end(key)
            while len(self.windows) > self.max_kinds:
                self.windows.popitem(last=False)
        return True

    def due(self, force: bool = False) -> list[logging.LogRecord]:
        """The last held-back record of each kind whose window has passed, marked with how many
        lines of its kind before it were held back too; its kind's window starts again now."""
        now = self.clock()
        records = []
        with self.lock:
            for window in self.windows.values():
                if window.last is not None and (force or now - window.started >= self.interval_s):
                    record = window.last
                    if window.suppressed > 1:
                        record.suppressed = window.suppressed - 1
                    records.append(record)
                    window.started, window.suppressed, window.last = now, 0, None
        return records


def _log_uncaught(exc_type, exc_value, exc_traceback) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc_value, exc_traceback)
        return
    logging.getLogger("wsd").critical(
        "uncaught exception", exc_info=(exc_type, exc_value, exc_traceback), extra={"rate_limit": False}
    )
