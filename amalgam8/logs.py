# -*- test-case-name: tests.test_logs -*-
"""
Structured logs: every event is a C{twisted.logger} event whose data are its keys; in
production each is written as one flat JSON object a line::

    {"time": "2026-11-27T23:35:39.334Z", "level": "info", "logger": "amalgam8.registry",
     "message": "a8registry listening on 127.0.0.1:8080", "host": "127.0.0.1", "port": 8080}

With twistd: C{twistd -n --logger amalgam8.logs.json_observer a8registry}. The level comes
from C{A8_LOG_LEVEL} (debug, info, warn, error; default info).
"""

import json
import os
import sys
from datetime import datetime, timezone

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)

__all__ = ["LEVELS", "parse_level", "configure", "debug_enabled", "json_observer",
           "event_as_json"]

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


def parse_level(text):
    """
    @raise ValueError: for a name that is not a log level.
    """
    try:
        return LEVELS[text.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError("unknown log level {!r} (expected debug, info, warn or error)"
                         .format(text))


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def event_as_json(event):
    """One event as a line of JSON text: time, level, logger, message, then its keys."""
    level = event.get("log_level")
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "logger": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message", "time",
                                                                "isError", "system"):
            continue
        record[key] = _plain(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


_configured = []


def configure(level):
    """Set the level L{json_observer} uses by default (a server's C{--log-level})."""
    _configured[:] = [level]


def debug_enabled():
    """Whether the server was started with C{--log-level debug}: debug events on hot paths
    are only emitted then (twistd's own text log would write them all)."""
    return bool(_configured) and _configured[0] <= LogLevel.debug


def json_observer(stream=None, level=None, environ=None):
    """
    An observer writing one JSON object a line to C{stream} (standard output by default),
    dropping events below C{level} (default: the server's C{--log-level}, else
    C{A8_LOG_LEVEL} of C{environ} (default: the process environment), else info).
    """
    if level is None and _configured:
        level = _configured[0]
    if level is None:
        try:
            environ = os.environ if environ is None else environ
            level = parse_level(environ.get("A8_LOG_LEVEL", "info"))
        except ValueError:
            level = LogLevel.info
    out = stream if stream is not None else sys.stdout

    def write(event):
        out.write(event_as_json(event))
        out.flush()

    return FilteringLogObserver(write, [LogLevelFilterPredicate(defaultLogLevel=level)])
