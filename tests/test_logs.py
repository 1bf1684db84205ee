"""
Tests for L{amalgam8.logs}: one flat JSON object a line, and level filtering.
"""

import io
import json

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from amalgam8 import logs
from amalgam8.logs import event_as_json, json_observer, parse_level

LOG_TIME = 1_800_000_000.25


class LogsTestCase(SynchronousTestCase):
    def setUp(self):
        # A server's --log-level (set by makeService in other tests) is process state.
        self.patch(logs, "_configured", [])
        self.stream = io.StringIO()

    def observer(self, level=LogLevel.info):
        return json_observer(stream=self.stream, level=level)

    def logger(self, level=LogLevel.info, namespace="amalgam8.test"):
        return Logger(namespace=namespace, observer=self.observer(level))

    def emit(self, observer, log_level=LogLevel.info, log_format="hello {who}", **keys):
        """Send one event straight to C{observer} at a fixed time."""
        event = {"log_level": log_level, "log_format": log_format, "log_time": LOG_TIME,
                 "log_namespace": "amalgam8.test"}
        event.update(keys)
        observer(event)

    def records(self):
        """Each written line, decoded; every line must be one JSON object."""
        text = self.stream.getvalue()
        if not text:
            return []
        self.assertTrue(text.endswith("\n"), text)
        records = [json.loads(line) for line in text.split("\n")[:-1]]
        for record in records:
            self.assertIsInstance(record, dict)
        return records


class JSONObserverTests(LogsTestCase):
    """L{json_observer} writes one JSON object a line."""

    def test_fields(self):
        """A record has time, level, logger, message and the event's keys."""
        self.emit(self.observer(), who="world", port=8080)
        [record] = self.records()
        self.assertEqual(record, {
            "time": "2027-01-15T08:00:00.250Z",
            "level": "info",
            "logger": "amalgam8.test",
            "message": "hello world",
            "who": "world",
            "port": 8080,
        })

    def test_logger(self):
        """Events from a Logger are written with its namespace and level."""
        self.logger().warn("listening on {host}:{port}", host="127.0.0.1", port=8080)
        [record] = self.records()
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["logger"], "amalgam8.test")
        self.assertEqual(record["message"], "listening on 127.0.0.1:8080")
        self.assertEqual((record["host"], record["port"]), ("127.0.0.1", 8080))
        self.assertNotIn("log_format", record)
        self.assertNotIn("log_logger", record)

    def test_one_line_each(self):
        """Each event is one line, even when its message or keys hold line breaks."""
        observer = self.observer()
        self.emit(observer, log_format="first\nsecond {x}", x="a\nb")
        self.emit(observer, log_format="third")
        records = self.records()
        self.assertEqual(len(records), 2)
        self.assertEqual(records[0]["message"], "first\nsecond a\nb")
        self.assertEqual(records[0]["x"], "a\nb")
        self.assertEqual(records[1]["message"], "third")

    def test_no_log_keys(self):
        """The log_ keys of an event are not copied."""
        self.emit(self.observer(), log_source="src", log_extra=1)
        [record] = self.records()
        self.assertEqual([key for key in record if key.startswith("log_")], [])

    def test_reserved_keys_kept(self):
        """An event key named time, level, logger or message does not overwrite the
        record's own."""
        self.emit(self.observer(), log_format="m", time="then", level="loud",
                  logger="other", message="other")
        [record] = self.records()
        self.assertEqual((record["time"], record["level"], record["logger"],
                          record["message"]),
                         ("2027-01-15T08:00:00.250Z", "info", "amalgam8.test", "m"))

    def test_tenant_namespace_kept(self):
        """An event's own namespace key (a tenant) is kept beside the logger's name."""
        self.emit(self.observer(), log_format="m", namespace="team-a")
        [record] = self.records()
        self.assertEqual((record["logger"], record["namespace"]),
                         ("amalgam8.test", "team-a"))

    def test_values_made_json(self):
        """Bytes, tuples, dicts and other objects become JSON values."""
        self.emit(self.observer(), log_format="m", raw=b"caf\xc3\xa9", pair=(1, "a"),
                  nested={1: [b"x", None]}, thing=object(), ok=True, ratio=0.5)
        [record] = self.records()
        self.assertEqual(record["raw"], "caf\u00e9")
        self.assertEqual(record["pair"], [1, "a"])
        self.assertEqual(record["nested"], {"1": ["x", None]})
        self.assertTrue(record["thing"].startswith("<object object"))
        self.assertEqual((record["ok"], record["ratio"]), (True, 0.5))

    def test_unicode(self):
        """Text is written as itself, not escaped."""
        self.emit(self.observer(), log_format="{name}", name="gr\u00fc\u00df")
        self.assertIn("gr\u00fc\u00df", self.stream.getvalue())
        self.assertEqual(self.records()[0]["message"], "gr\u00fc\u00df")

    def test_bad_format(self):
        """An event whose format cannot be filled is still written, as one line."""
        self.emit(self.observer(), log_format="{missing}")
        [record] = self.records()
        self.assertIsInstance(record["message"], str)
        self.assertEqual(record["logger"], "amalgam8.test")

    def test_failure(self):
        """A logged failure gives the error message and the traceback."""
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        self.logger().failure("sweep failed", failure)
        [record] = self.records()
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["message"], "sweep failed")
        self.assertIn("division", record["error"])
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_event_as_json(self):
        """L{event_as_json} is one line ending in a newline."""
        line = event_as_json({"log_level": LogLevel.error, "log_format": "x",
                              "log_time": 0, "log_namespace": "n"})
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line)["time"], "1970-01-01T00:00:00.000Z")
        self.assertEqual(json.loads(line)["level"], "error")

    def test_flushes(self):
        """Each line is flushed at once."""
        flushed = []

        class Stream(io.StringIO):
            def flush(self):
                flushed.append(self.getvalue())

        self.stream = Stream()
        self.emit(self.observer())
        self.assertEqual(len(flushed), 1)
        self.assertTrue(flushed[0].endswith("\n"))


class LevelTests(LogsTestCase):
    """Events below the level are dropped."""

    def test_info_drops_debug(self):
        """At info, debug is dropped and info, warn, error and critical are kept."""
        log = self.logger(LogLevel.info)
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        log.critical("c")
        self.assertEqual([r["message"] for r in self.records()], ["i", "w", "e", "c"])

    def test_debug_keeps_all(self):
        """At debug, everything is kept."""
        log = self.logger(LogLevel.debug)
        log.debug("d")
        log.info("i")
        self.assertEqual([r["level"] for r in self.records()], ["debug", "info"])

    def test_error_keeps_errors(self):
        """At error, only error and critical are kept."""
        log = self.logger(LogLevel.error)
        log.info("i")
        log.warn("w")
        log.error("e")
        self.assertEqual([r["message"] for r in self.records()], ["e"])

    def test_environment_level(self):
        """Without a level, A8_LOG_LEVEL decides."""
        log = Logger(namespace="n",
                     observer=json_observer(stream=self.stream, environ={"A8_LOG_LEVEL": "warn"}))
        log.info("i")
        log.warn("w")
        self.assertEqual([r["message"] for r in self.records()], ["w"])

    def test_default_info(self):
        """Without a level or A8_LOG_LEVEL, the level is info."""
        log = Logger(namespace="n",
                     observer=json_observer(stream=self.stream, environ={}))
        log.debug("d")
        log.info("i")
        self.assertEqual([r["message"] for r in self.records()], ["i"])

    def test_bad_environment_level(self):
        """A bad A8_LOG_LEVEL falls back to info rather than failing."""
        log = Logger(namespace="n",
                     observer=json_observer(stream=self.stream, environ={"A8_LOG_LEVEL": "loud"}))
        log.debug("d")
        log.info("i")
        self.assertEqual([r["message"] for r in self.records()], ["i"])


class ParseLevelTests(SynchronousTestCase):
    """L{parse_level}."""

    def test_names(self):
        """The level names, any case and spacing."""
        self.assertEqual(parse_level("debug"), LogLevel.debug)
        self.assertEqual(parse_level(" INFO "), LogLevel.info)
        self.assertEqual(parse_level("warn"), LogLevel.warn)
        self.assertEqual(parse_level("warning"), LogLevel.warn)
        self.assertEqual(parse_level("Error"), LogLevel.error)

    def test_bad(self):
        """Anything else is a ValueError naming it."""
        error = self.assertRaises(ValueError, parse_level, "loud")
        self.assertIn("loud", str(error))
        self.assertRaises(ValueError, parse_level, "")
        self.assertRaises(ValueError, parse_level, None)


class ConfigureTests(SynchronousTestCase):
    """A server's --log-level sets the observer's default level."""

    def test_configured_level(self):
        """After configure(warn), json_observer drops info events; debug_enabled follows."""
        self.patch(logs, "_configured", [])
        self.assertFalse(logs.debug_enabled())
        logs.configure(LogLevel.warn)
        stream = io.StringIO()
        logger = Logger(namespace="t", observer=json_observer(stream))
        logger.info("i")
        logger.warn("w")
        self.assertEqual([json.loads(line)["message"] for line in stream.getvalue().splitlines()],
                         ["w"])
        logs.configure(LogLevel.debug)
        self.assertTrue(logs.debug_enabled())
