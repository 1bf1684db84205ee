"""
Tests for L{amalgam8.gremlin.traces}: the ITraceSource contract on the controller (the real
controller API through StubTreq, so the wire path runs) and on a directory of access logs,
then what each source does beyond it (dropped records, errors, rotation, bad lines).
"""

import json
import os

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from amalgam8.auth import Authenticator
from amalgam8.client import ControllerClient
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.store import MemoryStore
from amalgam8.controller.traces import TraceBuffer
from amalgam8.gremlin.traces import (ControllerCursor, ControllerTraces, LogDirTraces,
                                     TraceSourceError)
from amalgam8.testing.traces import trace_record, trace_source_tests

URL = "http://controller.test"


class ControllerFixture:
    """A real controller API in memory, and a ControllerClient to it over StubTreq."""

    def __init__(self, case, capacity=100_000):
        self.clock = Clock()
        store = MemoryStore()
        store.startService()
        case.addCleanup(store.stopService)
        self.buffer = TraceBuffer(capacity)
        api = ControllerAPI(store, Authenticator(("default",), self.clock), self.clock,
                            traces=self.buffer)
        self.http = StubTreq(api.resource())
        self.client = ControllerClient(self.http, URL, reactor=self.clock)
        self.source = ControllerTraces(self.client)
        self.case = case

    def add(self, records):
        for start in range(0, len(records), 500):   # batches as a sidecar sends them
            d = self.client.post_traces(records[start:start + 500])
            self.settle()
            self.case.successResultOf(d)

    def settle(self):
        self.http.flush()


class LogDirFixture:
    """An empty log directory; records are appended to its access.log."""

    def __init__(self, case):
        self.directory = case.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "access.log")
        self.source = LogDirTraces(self.directory)

    def add(self, records, path=None):
        with open(path or self.path, "a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")

    def settle(self):
        pass


class Refusing:
    """An HTTP client whose every connection is refused."""

    def request(self, method, url, **kwargs):
        return fail(ConnectionRefusedError())


class ControllerContractTests(trace_source_tests(ControllerFixture)):
    """ControllerTraces keeps the ITraceSource contract over the real controller API."""


class LogDirContractTests(trace_source_tests(LogDirFixture)):
    """LogDirTraces keeps the ITraceSource contract over a directory of logs."""


class ControllerTracesTests(SynchronousTestCase):
    """What ControllerTraces does beyond the contract."""

    def setUp(self):
        self.fixture = ControllerFixture(self, capacity=10)
        self.source = self.fixture.source

    def fetch(self, cursor=None):
        d = self.source.fetch("r1", cursor)
        self.fixture.settle()
        return self.successResultOf(d)

    def test_describe(self):
        """It names the controller's URL."""
        self.assertEqual(self.source.describe(), "the controller at " + URL)

    def test_cursor_is_the_controller_sequence(self):
        """After full pages the cursor holds the controller's next sequence number."""
        fixture = ControllerFixture(self)
        fixture.add([trace_record(n) for n in range(2500)])
        d = fixture.source.fetch("r1")
        fixture.settle()
        records, cursor = self.successResultOf(d)
        self.assertEqual((cursor.after, cursor.seen), (2000, 500))
        self.assertEqual(cursor.last, records[-1])

    def test_dropped_since(self):
        """
        Records the controller dropped for room since the last fetch are not a reason to
        skip new ones: the new records come back whole, the old ones not again.
        """
        self.fixture.add([trace_record(n) for n in range(4)])
        records, cursor = self.fetch()
        self.assertEqual(len(records), 4)
        # Capacity 10: these 8 push out 2 of the 4 seen.
        self.fixture.add([trace_record(n) for n in range(4, 12)])
        records, cursor = self.fetch(cursor)
        self.assertEqual(records, [trace_record(n) for n in range(4, 12)])
        # Now every seen record is gone.
        self.fixture.add([trace_record(n) for n in range(12, 22)])
        records, _ = self.fetch(cursor)
        self.assertEqual(records, [trace_record(n) for n in range(12, 22)])

    def test_unreachable(self):
        """A controller that cannot be reached fails the fetch with TraceSourceError."""
        client = ControllerClient(Refusing(), "http://nowhere.test", reactor=Clock())
        failure = self.failureResultOf(ControllerTraces(client).fetch("r1"), TraceSourceError)
        self.assertIn("the controller at http://nowhere.test", str(failure.value))

    def test_refused(self):
        """An error answer fails the fetch with TraceSourceError naming the controller."""
        api = ControllerAPI(MemoryStore(), Authenticator(("trusted",), Clock()), Clock())
        client = ControllerClient(StubTreq(api.resource()), URL, reactor=Clock())
        failure = self.failureResultOf(ControllerTraces(client).fetch("r1"), TraceSourceError)
        self.assertIn("the controller at " + URL, str(failure.value))
        self.assertIn("401", str(failure.value))

    def test_cursor_value(self):
        """Cursors compare by position, not by the record they remember."""
        self.assertEqual(ControllerCursor(5, 2, {"a": 1}), ControllerCursor(5, 2, {"b": 2}))


class LogDirTracesTests(SynchronousTestCase):
    """What LogDirTraces does beyond the contract."""

    def setUp(self):
        self.fixture = LogDirFixture(self)
        self.directory = self.fixture.directory
        self.source = self.fixture.source

    def fetch(self, cursor=None):
        return self.successResultOf(self.source.fetch("r1", cursor))

    def write(self, name, text, mode="a"):
        path = os.path.join(self.directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, mode) as f:
            f.write(text)
        return path

    def line(self, n, recipe_id="r1"):
        return json.dumps(trace_record(n, recipe_id)) + "\n"

    def test_describe(self):
        """It names the directory."""
        self.assertEqual(self.source.describe(), "the logs in " + self.directory)

    def test_file_names(self):
        """*.log, *.log.N and *.jsonl files are read, in every subdirectory; others not."""
        for n, name in enumerate(["access.log", "access.log.3", "a/b/proxy.jsonl",
                                  "c/other.log.12"]):
            self.write(name, self.line(n))
        for n, name in enumerate(["access.log.gz", "access.log.1.gz", "notes.txt",
                                  "access.logx", "access.log.x"]):
            self.write(name, self.line(100 + n))
        records, _ = self.fetch()
        self.assertEqual(sorted(r["request_id"] for r in records),
                         ["gremlin-r1-{}".format(n) for n in range(4)])

    def test_rotation(self):
        """A log rotated to access.log.1 is not read twice; the new access.log is read."""
        path = self.write("access.log", self.line(0) + self.line(1))
        records, cursor = self.fetch()
        self.assertEqual(len(records), 2)
        self.write("access.log", self.line(2))
        os.rename(path, path + ".1")
        self.write("access.log", self.line(3))
        records, cursor = self.fetch(cursor)
        self.assertEqual(records, [trace_record(2), trace_record(3)])
        self.assertEqual(self.fetch(cursor)[0], [])

    def test_truncated(self):
        """A log truncated in place (copytruncate) is read again from its start."""
        path = self.write("access.log", self.line(0) + self.line(1))
        _, cursor = self.fetch()
        self.write("access.log", self.line(2), mode="w")
        self.assertEqual(self.fetch(cursor)[0], [trace_record(2)])
        self.assertTrue(os.path.exists(path))

    def test_bad_lines(self):
        """Lines that are not JSON objects are skipped and counted; blank lines ignored."""
        self.write("access.log", "".join([
            self.line(0), "not json\n", "\n", '["r1", "gremlin_recipe_id"]\n',
            '{"gremlin_recipe_id": "r1", broken}\n', '\xff{"a": 1}\n', self.line(1),
            '{"gremlin_recipe_id": "r2"}\n']))
        records, _ = self.fetch()
        self.assertEqual(records, [trace_record(0), trace_record(1)])
        self.assertEqual(self.source.skipped, 4)

    def test_half_written_line(self):
        """A last line without its newline is neither an error nor lost: it is read whole."""
        whole = self.line(1)
        self.write("access.log", self.line(0) + whole[:20])
        records, cursor = self.fetch()
        self.assertEqual(records, [trace_record(0)])
        self.assertEqual(self.source.skipped, 0)
        self.write("access.log", whole[20:])
        self.assertEqual(self.fetch(cursor)[0], [trace_record(1)])
        self.assertEqual(self.source.skipped, 0)

    def test_long_lines_across_chunks(self):
        """Lines that straddle the reader's chunks are read whole."""
        self.patch(__import__("amalgam8.gremlin.traces", fromlist=["_Reader"])._Reader,
                   "CHUNK", 7)
        self.write("access.log", self.line(0) + self.line(1) + self.line(2))
        self.assertEqual(self.fetch()[0], [trace_record(n) for n in range(3)])

    def test_same_file_twice(self):
        """A file reached under two names (a hard link) is read once."""
        path = self.write("access.log", self.line(0))
        os.link(path, os.path.join(self.directory, "copy.log"))
        self.assertEqual(self.fetch()[0], [trace_record(0)])

    def test_numeric_value(self):
        """A recipe id written as a JSON number still matches its text."""
        self.write("access.log", json.dumps(trace_record(0, 123)) + "\n")
        records, _ = self.successResultOf(self.source.fetch("123"))
        self.assertEqual(len(records), 1)

    def test_no_directory(self):
        """A directory that does not exist fails the fetch with TraceSourceError."""
        source = LogDirTraces(os.path.join(self.directory, "nope"))
        failure = self.failureResultOf(source.fetch("r1"), TraceSourceError)
        self.assertEqual(str(failure.value), "the logs in {}: no such directory".format(
            source.directory))


class LogDirThreadTests(TestCase):
    """The production LogDirTraces reads in the reactor's thread pool."""

    async def test_from_reactor(self):
        """from_reactor's source reads the files in a thread and gives the same answer."""
        fixture = LogDirFixture(self)
        fixture.add([trace_record(n) for n in range(3)])
        source = LogDirTraces.from_reactor(reactor, fixture.directory)
        records, cursor = await source.fetch("r1")
        self.assertEqual(records, [trace_record(n) for n in range(3)])
        self.assertEqual(cursor, self.successResultOf(fixture.source.fetch("r1"))[1])
