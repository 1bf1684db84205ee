"""
Tests for the trace records (SPEC B5): the ITraceStore contract on the in-memory
L{TraceBuffer} (also behind answers that come later) and on L{RedisTraceStore} over a real
C{redis-server} on a free loopback port (with its usual scan and with a tiny one, so that
every query takes many scripts); two Redis replicas adding at once; the same answers as the
memory buffer for any records and filters; sequence numbers after Redis lost its data;
Redis going away.
"""

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from amalgam8.controller.traces import TraceBuffer, matches
from amalgam8.controller.traces_redis import RedisTraceStore, needles
from amalgam8.errors import StoreUnavailable
from amalgam8.interfaces import ITraceStore
from amalgam8.redislink import RedisAddress
from amalgam8.testing.late import LateStore
from amalgam8.testing.redis import RedisServer, RedisStoreCase, redis_missing
from amalgam8.testing.tracestore import KEY, trace, trace_store_tests

_missing = redis_missing()
START = 1_800_000_000.0


class MemoryTraceContractTests(trace_store_tests(
        lambda case, capacity: TraceBuffer(capacity))):
    """The in-memory buffer keeps the ITraceStore contract."""


class LateMemoryTraceContractTests(trace_store_tests(
        lambda case, capacity: LateStore(TraceBuffer(capacity), case.later))):
    """The contract holds when every answer comes later, as a networked store's do."""


class RedisTraceCase(RedisStoreCase):
    """L{RedisStoreCase} with a maker of Redis trace stores on one Clock."""

    server_key = "trace-store"

    def redis_traces(self, capacity=100_000, clock=None, **kwargs):
        if clock is None:
            clock = getattr(self, "clock", None)
            if clock is None:
                clock = self.clock = Clock()
                clock.advance(START)
        store = self.track(RedisTraceStore(clock, reactor, self.address(), capacity,
                                           **kwargs))
        store.startService()
        return store


class RedisTraceContractTests(RedisTraceCase, trace_store_tests(
        lambda case, capacity: case.redis_traces(capacity))):
    """The Redis store keeps the ITraceStore contract, on a real redis-server."""


class RedisTinyScanContractTests(RedisTraceCase, trace_store_tests(
        lambda case, capacity: case.redis_traces(capacity, scan=3))):
    """The contract holds when each query script reads at most 3 records (a query takes
    many scripts, and pages end anywhere in them)."""


class RedisTraceReplicaTests(RedisTraceCase, SynchronousTestCase):
    """Two trace stores on one Redis are the trace records of two replicas."""

    def setUp(self):
        self.setUpLater()
        self.one = self.redis_traces()
        self.two = self.redis_traces()

    def result(self, deferred):
        self.later.wait(deferred)
        return self.successResultOf(deferred)

    def pages(self, store, limit, namespace="default", **filters):
        """Every record, following the pages; and the cursors given."""
        records, cursors = [], []
        after = 0
        while after is not None:
            page, after = self.result(store.query(namespace, after=after, limit=limit,
                                                  **filters))
            records.extend(page)
            if after is not None:
                cursors.append(after)
        return records, cursors

    def test_both_complete_and_in_sequence(self):
        """
        Batches sent through both replicas at once are read back complete through either,
        in the one same order, each replica's batches in the order it sent them; the
        cursors grow.
        """
        sent = {"one": [], "two": []}
        adds = []
        for n in range(40):
            for name, store in (("one", self.one), ("two", self.two)):
                batch = [trace(n * 10 + k, value=name) for k in range(10)]
                sent[name].extend(batch)
                adds.append(store.add("default", batch))
        self.result(gatherResults(adds))
        through_one, cursors = self.pages(self.one, limit=37)
        through_two, _ = self.pages(self.two, limit=1000)
        self.assertEqual(len(through_one), 800)
        self.assertEqual(through_one, through_two)
        self.assertEqual(cursors, sorted(set(cursors)))
        for name in ("one", "two"):
            self.assertEqual([r for r in through_one if r[KEY] == name], sent[name])
            mine, _ = self.pages(self.two, limit=100, log_key=KEY, log_value=name)
            self.assertEqual(mine, sent[name])

    def test_cursor_across_replicas(self):
        """A cursor from one replica's page leads, through the other, to the records
        after it, including those added through the other meanwhile."""
        self.result(self.one.add("default", [trace(n) for n in range(5)]))
        page, cursor = self.result(self.one.query("default", limit=3))
        self.result(self.two.add("default", [trace(5)]))
        rest, last = self.result(self.two.query("default", after=cursor))
        self.assertEqual([r["request_id"] for r in rest], ["req-3", "req-4", "req-5"])
        self.assertIsNone(last)

    def test_bound_shared(self):
        """The bound is the namespace's, whichever replica adds: the total of drops is
        read through either, and each replica counts the drops its own batches made."""
        one = self.redis_traces(capacity=100)
        two = self.redis_traces(capacity=100)
        self.assertEqual(self.result(one.add("default", [trace(n) for n in range(80)])), 0)
        self.assertEqual(self.result(two.add("default",
                                             [trace(n) for n in range(80, 160)])), 60)
        self.assertEqual(self.result(one.dropped("default")), 60)
        records, _ = self.pages(one, limit=1000)
        self.assertEqual([r["request_id"] for r in records],
                         ["req-{}".format(n) for n in range(60, 160)])
        self.assertEqual(one.stats()["dropped"].get("default", 0)
                         + two.stats()["dropped"]["default"], 60)
        self.assertEqual((one.stats()["received"], two.stats()["received"]), (80, 80))

    def test_data_lost_same_replica(self):
        """Redis losing its data (FLUSHALL): the replica that numbered the records
        numbers the next ones above them, so a cursor from before finds them, though the
        clock has not moved."""
        self.result(self.one.add("default", [trace(n) for n in range(5)]))
        _, cursor = self.result(self.one.query("default", limit=4))
        self.redis.command("FLUSHALL")
        self.result(self.one.add("default", [trace(n) for n in range(5, 8)]))
        rest, _ = self.result(self.one.query("default", after=cursor))
        self.assertEqual([r["request_id"] for r in rest], ["req-5", "req-6", "req-7"])

    def test_data_lost_other_replica(self):
        """Redis losing its data: another replica's first number is the clock in
        microseconds, above the numbers given a second before, so a cursor from before
        finds the new records."""
        self.result(self.one.add("default", [trace(n) for n in range(5)]))
        _, cursor = self.result(self.one.query("default", limit=4))
        self.assertGreaterEqual(cursor, int(START * 1_000_000))
        self.redis.command("FLUSHALL")
        self.clock.advance(1)
        self.result(self.two.add("default", [trace(n) for n in range(5, 8)]))
        rest, _ = self.result(self.one.query("default", after=cursor))
        self.assertEqual([r["request_id"] for r in rest], ["req-5", "req-6", "req-7"])

    def test_huge_cursor_changes_nothing(self):
        """A reader's cursor, however large, is only read: the numbers the next records
        get do not follow it."""
        self.result(self.one.add("default", [trace(0)]))
        _, cursor = self.result(self.one.query("default", limit=1))
        self.assertIsNone(cursor)
        self.assertEqual(self.result(self.one.query("default", after=10 ** 17)), ([], None))
        self.result(self.one.add("default", [trace(1), trace(2)]))
        _, cursor = self.result(self.one.query("default", limit=1))
        self.assertLess(cursor, int(START * 1_000_000) + 10)

    def test_garbage_ignored(self):
        """A member of the sorted set that is not JSON (written by something else) is
        left out, with a warning; the records around it are read."""
        self.result(self.one.add("default", [trace(0)]))
        self.redis.command("ZADD", "a8:t:default:rec", 1, "1 {not json")
        self.result(self.one.add("default", [trace(1)]))
        with capturedLogs() as events:
            page, _ = self.result(self.two.query("default"))
        self.assertEqual(page, [trace(0), trace(1)])
        self.assertEqual([(e["log_level"], e["number"]) for e in events
                          if e.get("namespace") == "default"], [(LogLevel.warn, "1")])


# Values of the trace key and of src/dst that are hard for a text prefilter: every JSON
# type, the texts str() makes of them, quotes, backslashes, colons, text outside ASCII.
_texts = st.sampled_from(["r1", "r10", "xr1", "", 'a"b', "a\\b", "é", "5", "5.5", "True",
                          "None", "[1, 'a']", "{'a': 1}", "productpage", "productpage:v1",
                          "productpage:v1:x", "reviews:v2", ":", "r1:"])
_values = st.one_of(_texts, st.sampled_from([5, 5.5, -3, True, False, None, [1, "a"],
                                            {"a": 1}, 10 ** 20, 1e16]))
_records = st.lists(st.fixed_dictionaries(
    {},
    optional={KEY: _values, "other": _values, "src": _values, "dst": _values,
              "note": _texts, "inner": st.fixed_dictionaries({KEY: _values})}),
    max_size=25)
_filters = st.fixed_dictionaries({}, optional={
    "log_key": st.sampled_from([KEY, "other", "note", "inner", "src", "absent"]),
    "src": _texts, "dst": _texts})


class RedisSameAnswersTests(RedisTraceCase, SynchronousTestCase):
    """For any records and filters, the Redis store answers what the memory buffer
    answers: the same records on the same pages, and a cursor exactly when the memory
    buffer gives one."""

    def setUp(self):
        self.setUpLater()

    def pages(self, store, namespace, limit, filters):
        found = []
        after = 0
        while after is not None:
            d = store.query(namespace, after=after, limit=limit, **filters)
            self.later.wait(d)
            page, after = self.successResultOf(d)
            found.append(page)
        return found

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(batches=st.lists(_records, min_size=1, max_size=3), filters=_filters,
           log_value=st.one_of(st.none(), _texts), limit=st.integers(1, 6),
           scan=st.integers(1, 8))
    def test_same_answers(self, batches, filters, log_value, limit, scan):
        """Every page of every query is the memory buffer's."""
        if log_value is not None and "log_key" in filters:
            filters = dict(filters, log_value=log_value)
        memory = TraceBuffer(capacity=30)
        store = self.redis_traces(capacity=30, scan=scan)
        namespace = "n{}".format(id(filters))
        for batch in batches:
            d = store.add(namespace, batch)
            self.later.wait(d)
            self.assertEqual(self.successResultOf(d),
                             self.successResultOf(memory.add(namespace, batch)))
        self.assertEqual(self.pages(store, namespace, limit, filters),
                         self.pages(memory, namespace, limit, filters))
        self.redis.command("FLUSHALL")


class NeedleTests(SynchronousTestCase):
    """The texts the query script looks for are necessary, never sufficient."""

    def test_needles(self):
        """The key as a JSON key, the value's escaped text, src and dst as keys and the
        escaped names; no value text for values whose str() is not their JSON."""
        self.assertEqual(needles(), [])
        self.assertEqual(needles(log_key="k"), ['"k":'])
        self.assertEqual(needles(log_key="k", log_value='a"é'), ['"k":', 'a\\"é'])
        for text in ("True", "False", "None", "[1]", "{'a': 1}", ""):
            self.assertEqual(needles(log_key="k", log_value=text), ['"k":'])
        self.assertEqual(needles(src="a:b", dst="c"), ['"src":', "a:b", '"dst":', "c"])

    def test_matches_is_the_filter(self):
        """matches() is the memory buffer's filter."""
        record = trace(0)
        self.assertTrue(matches(record, log_key=KEY, log_value="r1", src="productpage",
                                dst="reviews:v2"))
        self.assertFalse(matches(record, log_key=KEY, log_value="r2"))
        self.assertFalse(matches(record, log_value="r2", src="details"))

    def test_provides(self):
        """Both implementations provide ITraceStore (verifyObject is in the contract)."""
        self.assertTrue(ITraceStore.providedBy(TraceBuffer()))
        self.assertTrue(ITraceStore.providedBy(
            RedisTraceStore(Clock(), reactor, RedisAddress("127.0.0.1", 1))))


class RedisTraceOutageTests(TestCase):
    """Redis going away under the trace records, and coming back; its own server."""

    timeout = 30

    async def test_unavailable_then_back(self):
        """With Redis down, adding and reading fail at once with StoreUnavailable and no
        record of the refused batch is kept; once Redis is back the store works again by
        itself, the records from before kept."""
        if _missing:
            raise SkipTest(_missing)
        server = RedisServer(self.mktemp(), persist=True)
        server.start()
        self.addCleanup(server.stop)
        clock = Clock()
        clock.advance(START)
        store = RedisTraceStore(clock, reactor, RedisAddress("127.0.0.1", server.port))
        store.startService()
        self.addCleanup(store.stopService)
        await store.add("default", [trace(0)])
        server.kill()
        deadline = reactor.seconds() + 5
        while store.link.connected:
            self.assertLess(reactor.seconds(), deadline)
            await deferLater(reactor, 0.01, lambda: None)
        error = await self.assertFailure(store.add("default", [trace(1)]), StoreUnavailable)
        self.assertIn("the trace records", error.message)
        await self.assertFailure(store.query("default"), StoreUnavailable)
        await self.assertFailure(store.dropped("default"), StoreUnavailable)
        self.assertEqual(store.stats()["received"], 1)
        server.start()
        deadline = reactor.seconds() + 10
        while True:
            try:
                records, cursor = await store.query("default")
                break
            except StoreUnavailable:
                self.assertLess(reactor.seconds(), deadline)
                await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((records, cursor), ([trace(0)], None))
        await store.add("default", [trace(2)])
        self.assertEqual((await store.query("default"))[0], [trace(0), trace(2)])
