# -*- test-case-name: tests.test_controller_traces -*-
"""
The contract every L{amalgam8.interfaces.ITraceStore} keeps, as a test-case factory.

    class MemoryTraceTests(trace_store_tests(
            lambda case, capacity: TraceBuffer(capacity))):
        pass

C{make_store(case, capacity)} returns an empty store (started, if it is a service, and
stopped in the case's clean-up) that keeps C{capacity} records per namespace. The suite
holds for a store whose Deferreds fire later too: it flushes C{case.later} (an
L{amalgam8.testing.late.Later}, or the L{amalgam8.testing.redis.Settle} of a Redis case)
before it looks at a result.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.interfaces import ITraceStore
from amalgam8.testing.late import FlushingResults

__all__ = ["trace_store_tests", "trace"]

KEY = "gremlin_recipe_id"


def trace(n, value="r1", key=KEY, src="productpage:v1", dst="reviews:v2", **extra):
    """An access-log record of test request C{n} (no trace key: C{key=None})."""
    record = {"status": 200, "timestamp_in_ms": 1_000 + n, "src": src, "dst": dst,
              "request_id": "req-{}".format(n)}
    if key is not None:
        record[key] = value
    record.update(extra)
    return record


def trace_store_tests(make_store):
    """
    @param make_store: C{(case, capacity) -> ITraceStore}.
    @return: a L{SynchronousTestCase} subclass holding the contract.
    """

    class TraceStoreContract(FlushingResults, SynchronousTestCase):
        capacity = 100_000

        def setUp(self):
            self.setUpLater()
            self.store = make_store(self, self.capacity)

        def make(self, capacity):
            return make_store(self, capacity)

        def add(self, records, namespace="default", store=None):
            return self.successResultOf((store or self.store).add(namespace, records))

        def query(self, namespace="default", store=None, **filters):
            return self.successResultOf((store or self.store).query(namespace, **filters))

        def records(self, namespace="default", **filters):
            """Every matching record, following the pages."""
            found = []
            after = 0
            while after is not None:
                page, following = self.query(namespace, after=after, **filters)
                if following is not None:
                    self.assertGreater(following, after)
                found.extend(page)
                after = following
            return found

        def numbers(self, **filters):
            return [r["timestamp_in_ms"] - 1000 for r in self.records(**filters)]

        def dropped(self, namespace="default", store=None):
            return self.successResultOf((store or self.store).dropped(namespace))

        def test_interface(self):
            """The store provides ITraceStore, with its capacity."""
            self.assertTrue(verifyObject(ITraceStore, self.store))
            self.assertEqual(self.store.capacity, self.capacity)

        def test_empty(self):
            """With no record there is nothing to read, from the start or from anywhere,
            and nothing was dropped."""
            self.assertEqual(self.query(), ([], None))
            self.assertEqual(self.query(after=123), ([], None))
            self.assertEqual(self.dropped(), 0)
            self.assertEqual(self.add([]), 0)
            self.assertEqual(self.query(), ([], None))

        def test_batch(self):
            """Records come back equal to what was added, in order, over batches."""
            first = [trace(n) for n in range(3)]
            second = [trace(3, extra={"nested": [1, 2.5, None, True, "é"]},
                            big=2 ** 62, ratio=0.1, text="a \"quoted\" \\ line\n")]
            self.assertEqual(self.add(first), 0)
            self.assertEqual(self.add(second), 0)
            self.assertEqual(self.query(), (first + second, None))

        def test_equal_records(self):
            """Equal records are kept apart (each is one request)."""
            self.add([trace(0), trace(0)])
            self.add([trace(0)])
            self.assertEqual(self.query(), ([trace(0)] * 3, None))

        def test_log_key_and_value(self):
            """log_key selects the records that have the key at the top; log_value those
            whose value, as str(), is the text given."""
            self.add([
                trace(0),
                trace(1, value="r2"),
                trace(2, key="other", value="r1"),
                trace(3, key=None, note='"gremlin_recipe_id":"r1"'),
                trace(4, key=None, inner={KEY: "r1"}),
                trace(5, value="r10"),
                trace(6, value="xr1"),
            ])
            self.assertEqual(self.numbers(log_key=KEY), [0, 1, 5, 6])
            self.assertEqual(self.numbers(log_key=KEY, log_value="r1"), [0])
            self.assertEqual(self.numbers(log_key="other", log_value="r1"), [2])
            self.assertEqual(self.numbers(log_key="inner"), [4])
            self.assertEqual(self.numbers(log_key="note"), [3])
            self.assertEqual(self.numbers(log_key=KEY, log_value="nothing"), [])
            self.assertEqual(self.numbers(log_key="nothing"), [])

        def test_log_value_as_text(self):
            """A value that is not a string matches the text str() makes of it: numbers,
            true, null, lists and objects; strings with quotes, backslashes and text
            outside ASCII match as given."""
            values = [5, 5.5, True, False, None, [1, "a"], {"a": 1}, 'say "hi"', "a\\b",
                      "é ü", "", 1e16, -3, "5"]
            self.add([trace(n, value=value) for n, value in enumerate(values)])
            for n, value in enumerate(values):
                text = str(value)
                expected = [m for m, other in enumerate(values) if str(other) == text]
                self.assertEqual(self.numbers(log_key=KEY, log_value=text), expected,
                                 text)
            self.assertEqual(self.numbers(log_key=KEY, log_value="true"), [])
            self.assertEqual(self.numbers(log_key=KEY, log_value="null"), [])
            self.assertEqual(self.numbers(log_key=KEY, log_value='[1,"a"]'), [])

        def test_src_and_dst(self):
            """src and dst match a service name, or the name and tags, exactly."""
            self.add([
                trace(0),
                trace(1, src="details:v1"),
                trace(2, dst="ratings:v1"),
                trace(3, src="productpage"),
                trace(4, src="productpage2:v1"),
                trace(5, src=5),
                trace(6, src=None, dst=None),
                trace(7, src="productpage:v1:x", dst="reviews"),
            ])
            self.assertEqual(self.numbers(src="details"), [1])
            self.assertEqual(self.numbers(src="productpage"), [0, 2, 3, 7])
            self.assertEqual(self.numbers(src="productpage:v1"), [0, 2])
            self.assertEqual(self.numbers(src="productpage", dst="reviews"), [0, 3, 7])
            self.assertEqual(self.numbers(dst="ratings:v1"), [2])
            self.assertEqual(self.numbers(dst="ratings:v2"), [])
            self.assertEqual(self.numbers(src="5"), [])
            self.assertEqual(self.numbers(src="v1"), [])

        def test_filters_together(self):
            """Every filter given must pass."""
            self.add([trace(0), trace(1, dst="ratings:v1"), trace(2, value="r2"),
                      trace(3, src="details:v1")])
            self.assertEqual(self.numbers(log_key=KEY, log_value="r1", dst="reviews",
                                          src="productpage"), [0])

        def test_pages(self):
            """With a limit, records come a page at a time; the cursor leads to the rest
            and is null on the last page, also when it is exactly full."""
            batch = [trace(n) for n in range(25)]
            self.add(batch)
            first, cursor = self.query(limit=10)
            self.assertEqual(first, batch[:10])
            self.assertIsNotNone(cursor)
            second, following = self.query(limit=10, after=cursor)
            self.assertEqual(second, batch[10:20])
            self.assertGreater(following, cursor)
            third, last = self.query(limit=10, after=following)
            self.assertEqual((third, last), (batch[20:], None))
            self.assertEqual(self.query(limit=5, after=following), (batch[20:], None))
            self.assertEqual(self.query(limit=25), (batch, None))

        def test_filtered_pages(self):
            """The pages of a filtered query hold only matches and cover them all; the
            cursor is null as soon as no match follows, however many records do."""
            batch = [trace(n, value="r{}".format(n % 3)) for n in range(30)]
            batch += [trace(n, value="r0") for n in range(30, 60)]
            self.add(batch)
            pages = []
            after = 0
            while after is not None:
                page, after = self.query(log_key=KEY, log_value="r1", limit=4, after=after)
                pages.append(page)
            self.assertEqual([r for page in pages for r in page],
                             [r for r in batch if r[KEY] == "r1"])
            self.assertEqual([len(page) for page in pages], [4, 4, 2])

        def test_many_pages(self):
            """2,500 records of a recipe among 2,500 of others, in batches, are all read
            in order, with the default page and the largest."""
            mine = [trace(n) for n in range(2500)]
            batch = []
            for n, record in enumerate(mine):
                batch.append(record)
                batch.append(trace(10_000 + n, value="other"))
                if len(batch) >= 1000:
                    self.add(batch)
                    batch = []
            self.add(batch)
            page, cursor = self.query(log_key=KEY, log_value="r1")
            self.assertEqual(page, mine[:1000])
            self.assertEqual(self.records(log_key=KEY, log_value="r1"), mine)
            self.assertEqual(self.query(log_key=KEY, log_value="r1", limit=10000),
                             (mine, None))
            self.assertEqual(len(self.records()), 5000)

        def test_cursor_then_more(self):
            """Records added after a page are read from its cursor, and only they; a
            cursor is a value (read again, it gives the same records again)."""
            self.add([trace(n) for n in range(5)])
            page, cursor = self.query(limit=4)
            self.assertEqual(len(page), 4)
            self.add([trace(5), trace(6, value="r2")])
            rest, last = self.query(after=cursor)
            self.assertEqual([r["request_id"] for r in rest], ["req-4", "req-5", "req-6"])
            self.assertIsNone(last)
            self.assertEqual(self.query(after=cursor), (rest, None))
            mine, _ = self.query(log_key=KEY, log_value="r1", after=cursor)
            self.assertEqual([r["request_id"] for r in mine], ["req-4", "req-5"])

        def test_cursor_for_later_records(self):
            """A cursor leads to the records added after it was given, and past the last
            record there is nothing, until more come."""
            self.add([trace(0), trace(1)])
            _, first = self.query(limit=1)
            self.assertEqual(self.query(after=first), ([trace(1)], None))
            self.add([trace(2)])
            self.assertEqual(self.query(after=first), ([trace(1), trace(2)], None))
            page, second = self.query(after=first, limit=1)
            self.assertEqual(page, [trace(1)])
            self.assertGreater(second, first)
            self.assertEqual(self.query(after=second), ([trace(2)], None))
            self.assertEqual(self.query(after=10 ** 18), ([], None))
            self.assertEqual(self.query(after=10 ** 400, log_key=KEY), ([], None))

        def test_namespaces_apart(self):
            """Each namespace has its own records, cursors and drops."""
            self.add([trace(0)], namespace="a")
            self.add([trace(1), trace(2)], namespace="a/b c")
            self.assertEqual(self.query("b"), ([], None))
            self.assertEqual(self.query("a"), ([trace(0)], None))
            self.assertEqual(self.query("a/b c"), ([trace(1), trace(2)], None))
            self.assertEqual(self.dropped("b"), 0)

        def test_received(self):
            """stats() counts the records received, and the drops by namespace."""
            self.add([trace(n) for n in range(3)], namespace="a")
            self.add([trace(3)], namespace="b")
            stats = self.store.stats()
            self.assertEqual(stats["received"], 4)
            self.assertEqual(stats["dropped"].get("a", 0), 0)
            self.assertEqual(stats["records"].get("a"), 3)

        # -- the bound ---------------------------------------------------------------------

        def bounded(self):
            store = self.make(10)

            def ids(namespace="default", **filters):
                page, cursor = self.query(namespace, store=store, **filters)
                self.assertIsNone(cursor)
                return [int(r["request_id"][4:]) for r in page]

            return store, ids

        def test_oldest_dropped(self):
            """Past the bound the oldest records are dropped first, and counted: in the
            answer of the batch that dropped them and in the namespace's total."""
            store, ids = self.bounded()
            self.assertEqual(store.capacity, 10)
            self.assertEqual(self.add([trace(n) for n in range(8)], store=store), 0)
            self.assertEqual(self.add([trace(n) for n in range(8, 15)], store=store), 5)
            self.assertEqual(ids(), list(range(5, 15)))
            self.assertEqual(self.dropped(store=store), 5)
            self.assertEqual(self.add([trace(15)], store=store), 1)
            self.assertEqual(self.dropped(store=store), 6)
            self.assertEqual(ids(), list(range(6, 16)))
            stats = store.stats()
            self.assertEqual((stats["dropped"]["default"], stats["records"]["default"]),
                             (6, 10))

        def test_batch_over_the_bound(self):
            """A batch bigger than the bound keeps its newest records."""
            store, ids = self.bounded()
            self.assertEqual(self.add([trace(n) for n in range(25)], store=store), 15)
            self.assertEqual(ids(), list(range(15, 25)))
            self.assertEqual(self.dropped(store=store), 15)

        def test_bound_per_namespace(self):
            """Each namespace has its own bound and its own count of drops."""
            store, ids = self.bounded()
            self.add([trace(n) for n in range(12)], namespace="a", store=store)
            self.add([trace(n) for n in range(3)], namespace="b", store=store)
            self.assertEqual((self.dropped("a", store=store), self.dropped("b", store=store)),
                             (2, 0))
            self.assertEqual(ids("a"), list(range(2, 12)))
            self.assertEqual(ids("b"), [0, 1, 2])

        def test_cursor_into_dropped(self):
            """A cursor whose records were dropped meanwhile still leads to every record
            kept after it."""
            store, ids = self.bounded()
            self.add([trace(n) for n in range(10)], store=store)
            _, cursor = self.query(limit=3, store=store)
            self.add([trace(n) for n in range(10, 18)], store=store)
            rest, last = self.query(after=cursor, store=store)
            self.assertEqual([int(r["request_id"][4:]) for r in rest], list(range(8, 18)))
            self.assertIsNone(last)

    return TraceStoreContract
