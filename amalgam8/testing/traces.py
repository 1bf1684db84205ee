# -*- test-case-name: tests.test_gremlin_traces -*-
"""
The contract every L{amalgam8.gremlin.traces.ITraceSource} keeps, as a test-case factory.

C{make_fixture(case)} returns an object with:
  - C{source}: the L{ITraceSource} under test, empty;
  - C{add(records)}: make the record dicts visible to it, as one proxy would write them;
  - C{settle()}: let pending I/O finish (flush a C{StubTreq}; nothing for files).
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.gremlin.model import LOG_KEY
from amalgam8.gremlin.traces import ITraceSource

__all__ = ["trace_source_tests", "trace_record"]


def trace_record(n, recipe_id="r1", **extra):
    """An access-log record of test request C{n} of a recipe (no recipe: C{recipe_id=None})."""
    record = {"status": 200, "timestamp_in_ms": 1_700_000_000_000 + n, "request_time": 0.012,
              "upstream_response_time": "0.011", "src": "productpage:v1",
              "dst": "reviews:v2", "upstream_addr": "127.0.0.1:9080",
              "upstream_status": "200", "method": "GET", "path": "/reviews/{}".format(n),
              "request_id": "gremlin-{}-{}".format(recipe_id, n), "actions": "trace",
              "retries": 0}
    if recipe_id is not None:
        record[LOG_KEY] = recipe_id
    record.update(extra)
    return record


def trace_source_tests(make_fixture):
    class TraceSourceContract(SynchronousTestCase):
        def setUp(self):
            self.fixture = make_fixture(self)
            self.source = self.fixture.source

        def fetch(self, recipe_id="r1", cursor=None):
            d = self.source.fetch(recipe_id, cursor)
            self.fixture.settle()
            return self.successResultOf(d)

        def records(self, first, count, recipe_id="r1"):
            return [trace_record(n, recipe_id) for n in range(first, first + count)]

        def test_interface(self):
            """The source provides ITraceSource."""
            self.assertTrue(verifyObject(ITraceSource, self.source))

        def test_describe(self):
            """describe() is one short line."""
            text = self.source.describe()
            self.assertIsInstance(text, str)
            self.assertTrue(text.startswith("the "), text)
            self.assertNotIn("\n", text)

        def test_empty(self):
            """With no records there is nothing, from the start or from the cursor."""
            records, cursor = self.fetch()
            self.assertEqual(records, [])
            self.assertEqual(self.fetch(cursor=cursor)[0], [])

        def test_only_the_recipe(self):
            """Records of other recipes, and records without the key, are left out."""
            mine = self.records(0, 3)
            self.fixture.add([mine[0], trace_record(10, "r2"), trace_record(11, None),
                              mine[1], trace_record(12, "r10"), mine[2]])
            self.assertEqual(self.fetch()[0], mine)
            self.assertEqual(self.fetch("r2")[0], [trace_record(10, "r2")])
            self.assertEqual(self.fetch("nothing")[0], [])

        def test_every_page(self):
            """
            2,500 records of the recipe among 500 of another come back whole and in order:
            no page limit caps them.
            """
            mine = self.records(0, 2500)
            batch = []
            for n, record in enumerate(mine):
                batch.append(record)
                if n % 5 == 0:
                    batch.append(trace_record(n, "other"))
            self.fixture.add(batch)
            records, _ = self.fetch()
            self.assertEqual(len(records), 2500)
            self.assertEqual(records, mine)
            self.assertEqual(len(self.fetch("other")[0]), 500)

        def test_cursor(self):
            """A fetch from a cursor returns only the records added since."""
            self.fixture.add(self.records(0, 3))
            first, cursor = self.fetch()
            self.assertEqual(len(first), 3)
            self.assertEqual(self.fetch(cursor=cursor)[0], [])
            self.fixture.add(self.records(3, 2) + [trace_record(99, "r2")])
            second, cursor = self.fetch(cursor=cursor)
            self.assertEqual(second, self.records(3, 2))
            self.assertEqual(self.fetch(cursor=cursor)[0], [])
            self.assertEqual(self.fetch()[0], self.records(0, 5))

        def test_cursor_across_pages(self):
            """The cursor holds when the records fill many pages, before and after it."""
            self.fixture.add(self.records(0, 2500))
            _, cursor = self.fetch()
            self.fixture.add(self.records(2500, 1500))
            records, cursor = self.fetch(cursor=cursor)
            self.assertEqual(records, self.records(2500, 1500))
            self.assertEqual(self.fetch(cursor=cursor)[0], [])

        def test_cursor_reused(self):
            """A cursor is a value: passed again, it gives the same records again."""
            self.fixture.add(self.records(0, 2))
            _, cursor = self.fetch()
            self.fixture.add(self.records(2, 2))
            self.assertEqual(self.fetch(cursor=cursor)[0], self.records(2, 2))
            self.assertEqual(self.fetch(cursor=cursor)[0], self.records(2, 2))

        def test_cursor_before_any_record(self):
            """A cursor taken while nothing was there still sees the first records."""
            _, cursor = self.fetch()
            self.fixture.add(self.records(0, 2))
            self.assertEqual(self.fetch(cursor=cursor)[0], self.records(0, 2))

    return TraceSourceContract
