"""
Tests for L{amalgam8.etcd}: the v3 and v2 clients against a real etcd (Debian's
C{etcd-server}, started by L{amalgam8.testing.etcd} on free loopback ports), and, with no
network, the parts a real etcd will not show on demand: failover and timeouts on a
L{Clock}, error answers that are not etcd's, a watch stream cut anywhere, the helpers.
"""

import json

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import (CancelledError, Deferred, ensureDeferred, fail,
                                    gatherResults)
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web._newclient import ResponseNeverReceived

from amalgam8.etcd import (EVENT_INDEX_CLEARED, KEY_NOT_FOUND, Compacted, DeleteResult,
                           EtcdError, EtcdUnavailable, EtcdV2, EtcdV3, IndexCleared,
                           KeyValue, PutResult, RangeResult, WatchCanceled, compare,
                           etcd_http_client, op_delete, op_put, op_range, prefix_end)
from amalgam8.testing.etcd import etcd_missing, free_ports, start_etcd

SKIP = etcd_missing()


def dead_url():
    """The URL of a loopback port nothing listens on (refused at once)."""
    return "http://127.0.0.1:{}".format(free_ports(1)[0])


async def settle(delay=0.02):
    """Let the real reactor close what was just closed."""
    await deferLater(reactor, delay, lambda: None)


class RealEtcdCase(TestCase):
    """A test with a real etcd of its own and production HTTP clients of it."""

    timeout = 30
    size = 1
    extra_args = ()
    if SKIP:
        skip = SKIP

    async def setUp(self):
        self.etcd = await start_etcd(self, reactor, size=self.size,
                                     extra_args=self.extra_args)
        self.http, pool = etcd_http_client(reactor)
        self.addCleanup(settle)
        self.addCleanup(pool.closeCachedConnections)
        self.v3 = EtcdV3(self.http, self.etcd.urls, reactor)
        self.v2 = EtcdV2(self.http, self.etcd.urls, reactor)


class V3Tests(RealEtcdCase):
    """The v3 JSON gateway of a real etcd."""

    async def test_put_and_range(self):
        """Keys and values round-trip as bytes; prefix ranges, keys only, counts, revisions."""
        first = await self.v3.put("/a/1", "one")
        self.assertIsInstance(first, PutResult)
        await self.v3.put(b"/a/2", b"\x00two\xff")
        await self.v3.put("/b", "other")
        changed = await self.v3.put("/a/1", "uno", prev_kv=True)
        self.assertEqual(changed.prev_kv.value, b"one")
        self.assertEqual(changed.revision, first.revision + 3)

        result = await self.v3.range("/a/", prefix=True)
        self.assertIsInstance(result, RangeResult)
        self.assertEqual([(kv.key, kv.value) for kv in result.kvs],
                         [(b"/a/1", b"uno"), (b"/a/2", b"\x00two\xff")])
        self.assertEqual((result.count, result.more, result.revision),
                         (2, False, changed.revision))
        one = result.kvs[0]
        self.assertEqual((one.create_revision, one.mod_revision, one.version),
                         (first.revision, changed.revision, 2))
        old = await self.v3.range("/a/1", revision=first.revision)
        self.assertEqual([kv.value for kv in old.kvs], [b"one"])
        keys = await self.v3.range("/a/", prefix=True, keys_only=True, limit=1)
        self.assertEqual([(kv.key, kv.value) for kv in keys.kvs], [(b"/a/1", b"")])
        self.assertTrue(keys.more)
        self.assertEqual((await self.v3.range("/nothing")).kvs, ())

    async def test_range_all_one_revision(self):
        """range_all reads every page at the first page's revision, whatever comes between."""
        for n in range(25):
            await self.v3.put("/p/{:02}".format(n), str(n))
        real_range = self.v3.range
        pages = []

        async def range_then_write(*args, **kwargs):
            result = await real_range(*args, **kwargs)
            pages.append(len(result.kvs))
            await self.v3.put("/p/zz-{}".format(len(pages)), "late")
            return result
        self.patch(self.v3, "range", range_then_write)
        result = await self.v3.range_all("/p/", prefix=True, page=10)
        self.assertEqual(pages, [10, 10, 5])
        self.assertEqual([kv.key for kv in result.kvs],
                         ["/p/{:02}".format(n).encode() for n in range(25)])
        self.assertEqual((result.count, result.more), (25, False))

    async def test_delete_range(self):
        """A delete takes one key or a prefix, and answers what it deleted."""
        for key in ("/d/1", "/d/2", "/d/2/x", "/e"):
            await self.v3.put(key, "v")
        result = await self.v3.delete_range("/d/2", prev_kv=True)
        self.assertIsInstance(result, DeleteResult)
        self.assertEqual((result.deleted, [kv.key for kv in result.prev_kvs]), (1, [b"/d/2"]))
        result = await self.v3.delete_range("/d/", prefix=True)
        self.assertEqual(result.deleted, 2)
        self.assertEqual([kv.key for kv in (await self.v3.range("\0", "\0")).kvs], [b"/e"])

    async def test_txn_compare_and_swap(self):
        """
        A txn applies its success requests when every comparison holds and its failure
        requests otherwise: create-if-absent, then swap-if-unchanged (what issue 13 needs).
        """
        created = await self.v3.txn([compare("/rules", "version", "==", 0)],
                                    [op_put("/rules", "r1")], [op_range("/rules")])
        self.assertTrue(created.succeeded)
        [put] = created.responses
        self.assertIsInstance(put, PutResult)
        again = await self.v3.txn([compare("/rules", "version", "==", 0)],
                                  [op_put("/rules", "clobbered")], [op_range("/rules")])
        self.assertFalse(again.succeeded)
        [read] = again.responses
        self.assertEqual([kv.value for kv in read.kvs], [b"r1"])
        revision = read.kvs[0].mod_revision

        swapped = await self.v3.txn([compare("/rules", "mod", "==", revision)],
                                    [op_put("/rules", "r2"), op_delete("/old")])
        self.assertTrue(swapped.succeeded)
        self.assertEqual([type(r) for r in swapped.responses], [PutResult, DeleteResult])
        stale = await self.v3.txn([compare("/rules", "mod", "==", revision)],
                                  [op_put("/rules", "lost update")])
        self.assertFalse(stale.succeeded)
        self.assertEqual(stale.responses, ())
        by_value = await self.v3.txn([compare("/rules", "value", "==", "r2")],
                                     [op_range("/rules")])
        self.assertTrue(by_value.succeeded)
        self.assertEqual([kv.value for kv in (await self.v3.range("/rules")).kvs], [b"r2"])

    async def test_lease(self):
        """A key on a lease goes with it; a keep-alive renews it; a revoked one is unknown."""
        lease = await self.v3.lease_grant(30)
        self.assertGreater(lease.id, 0)
        self.assertEqual(lease.ttl, 30)
        await self.v3.put("/leased", "x", lease=lease.id)
        self.assertEqual((await self.v3.range("/leased")).kvs[0].lease, lease.id)
        renewed = await self.v3.lease_keepalive(lease.id)
        self.assertEqual((renewed.id, renewed.ttl), (lease.id, 30))
        await self.v3.lease_revoke(lease.id)
        self.assertEqual((await self.v3.range("/leased")).kvs, ())
        self.assertEqual((await self.v3.lease_keepalive(lease.id)).ttl, 0)
        with self.assertRaises(EtcdError) as caught:
            await self.v3.lease_revoke(lease.id)
        self.assertEqual((caught.exception.status, caught.exception.code), (404, 5))
        self.assertIn("lease not found", str(caught.exception))
        self.assertIn(self.etcd.url, str(caught.exception))

    async def test_watch(self):
        """A watch from an old revision replays history, then streams changes as they come."""
        first = await self.v3.put("/w/a", "1")
        await self.v3.put("/elsewhere", "x")
        watch = await self.v3.watch("/w/", prefix=True, start_revision=first.revision,
                                    prev_kv=True)
        self.addCleanup(watch.cancel)
        self.assertIsNotNone(watch.watch_id)
        replay = await watch.next()
        self.assertEqual([(e.type, e.kv.key, e.kv.value) for e in replay.events],
                         [("PUT", b"/w/a", b"1")])
        self.assertFalse(replay.progress)
        await self.v3.put("/w/a", "2")
        await self.v3.delete_range("/w/a")
        seen = []
        while len(seen) < 2:
            seen.extend((await watch.next()).events)
        self.assertEqual([(e.type, e.kv.key, e.kv.value) for e in seen],
                         [("PUT", b"/w/a", b"2"), ("DELETE", b"/w/a", b"")])
        self.assertEqual(seen[1].prev_kv.value, b"2")
        self.assertEqual(seen[1].kv.mod_revision, first.revision + 3)

    async def test_watch_cancel(self):
        """A canceled watch says so on its next read."""
        watch = await self.v3.watch("/w/", prefix=True)
        watch.cancel()
        with self.assertRaises(EtcdUnavailable):
            await watch.next()

    async def test_compacted(self):
        """A range or a watch at a compacted revision: Compacted (with the watch's floor)."""
        first = await self.v3.put("/c", "1")
        await self.v3.put("/c", "2")
        compacted_at = await self.etcd.compact()
        with self.assertRaises(Compacted):
            await self.v3.range("/c", revision=first.revision)
        with self.assertRaises(Compacted) as caught:
            watch = await self.v3.watch("/c", start_revision=first.revision)
            self.addCleanup(watch.cancel)
            await watch.next()
        self.assertEqual(caught.exception.compact_revision, compacted_at)
        with self.assertRaises(Compacted):
            await self.v3.compact(first.revision)

    async def test_future_revision(self):
        """An error etcd answers carries its HTTP status, gRPC code and message."""
        with self.assertRaises(EtcdError) as caught:
            await self.v3.range("/c", revision=10 ** 6)
        self.assertEqual((caught.exception.status, caught.exception.code), (400, 11))
        self.assertIn("future revision", caught.exception.message)

    async def test_watch_breaks_when_etcd_stops(self):
        """etcd stopping ends the stream: EtcdUnavailable."""
        watch = await self.v3.watch("/w/", prefix=True)
        await self.etcd.stop()
        with self.assertRaises(EtcdUnavailable):
            await watch.next()

    async def test_failover(self):
        """A refused endpoint is passed over, for reads and writes; the good one is kept."""
        client = EtcdV3(self.http, [dead_url(), self.etcd.url], reactor)
        await client.put("/f", "1")
        self.assertEqual(client.endpoints.current, 1)
        self.assertEqual([kv.value for kv in (await client.range("/f")).kvs], [b"1"])
        watch = await client.watch("/f", start_revision=1)
        self.addCleanup(watch.cancel)
        self.assertEqual((await watch.next()).events[0].kv.value, b"1")

    async def test_unavailable(self):
        """No endpoint answers: EtcdUnavailable naming each one and why."""
        urls = [dead_url(), dead_url()]
        client = EtcdV3(self.http, urls, reactor)
        with self.assertRaises(EtcdUnavailable) as caught:
            await client.range("/f")
        self.assertEqual([url for url, _ in caught.exception.attempts], urls)
        for url in urls:
            self.assertIn(url, str(caught.exception))
        self.assertFalse(caught.exception.maybe_applied)


class ProgressTests(RealEtcdCase):
    """Progress notifications, from an etcd that sends them every 50 ms."""

    extra_args = ("--experimental-watch-progress-notify-interval", "50ms")

    async def test_progress(self):
        """An idle watch hears the store's revision, with no events."""
        watch = await self.v3.watch("/quiet/", prefix=True, progress_notify=True)
        self.addCleanup(watch.cancel)
        moved = await self.v3.put("/loud", "x")
        for _ in range(10):
            result = await watch.next()
            self.assertTrue(result.progress)
            self.assertEqual(result.events, ())
            if result.revision >= moved.revision:
                break
        self.assertEqual(result.revision, moved.revision)


class ClusterTests(RealEtcdCase):
    """A three-member cluster: a client of all three outlives one of them."""

    size = 3

    async def test_member_down(self):
        """Writes and reads go on through the other members; the stopped one catches up."""
        await self.v3.put("/k", "1")
        self.assertEqual(self.v3.endpoints.current, 0)
        await self.etcd.stop_member(0)
        await self.v3.put("/k", "2")
        self.assertEqual(self.v3.endpoints.current, 1)
        self.assertEqual([kv.value for kv in (await self.v3.range("/k")).kvs], [b"2"])
        await self.etcd.start_member(0)
        other = EtcdV3(self.http, [self.etcd.urls[0]], reactor)
        self.assertEqual([kv.value for kv in (await other.range("/k")).kvs], [b"2"])


class V2Tests(RealEtcdCase):
    """The v2 keys API of a real etcd (--enable-v2)."""

    async def test_set_get_delete(self):
        """
        Not found (code 100, the index), set, a recursive get, conditions, a recursive delete.
        """
        missing = self.v2.get("/weave/service/", recursive=True)
        with self.assertRaises(EtcdError) as caught:
            await missing
        self.assertEqual((caught.exception.code, caught.exception.status),
                         (KEY_NOT_FOUND, 404))
        self.assertIsInstance(caught.exception.index, int)

        first = await self.v2.set("/weave/service/a/details", '{"protocol": "http"}')
        self.assertEqual(first.action, "set")
        await self.v2.set("/weave/service/a/instance/i1", "{}")
        listed = await self.v2.get("/weave/service/", recursive=True)
        self.assertTrue(listed.node.dir)
        self.assertEqual(sorted((n.key, n.value) for n in listed.node.leaves()), [
            ("/weave/service/a/details", '{"protocol": "http"}'),
            ("/weave/service/a/instance/i1", "{}")])
        self.assertEqual(listed.index, first.index + 1)

        with self.assertRaises(EtcdError) as caught:
            await self.v2.set("/weave/service/a/details", "x", prev_exist=False)
        self.assertEqual(caught.exception.code, 105)   # key already exists
        updated = await self.v2.set("/weave/service/a/details", "{}", prev_index=first.index)
        self.assertEqual((updated.action, updated.prev_node.value),
                         ("compareAndSwap", '{"protocol": "http"}'))

        deleted = await self.v2.delete("/weave/service/a", recursive=True)
        self.assertEqual((deleted.action, deleted.node.dir), ("delete", True))
        with self.assertRaises(EtcdError):
            await self.v2.get("/weave/service/a")

    async def test_odd_keys(self):
        """Keys are quoted in the URL: spaces, ?, % and # stay part of the key."""
        key = "/weave/service/odd name?x=1%#/details"
        await self.v2.set(key, "v")
        self.assertEqual((await self.v2.get(key)).node.key, key)

    async def test_wait(self):
        """A wait answers from history at once, or when the change comes."""
        first = await self.v2.set("/w/a", "1")
        await self.v2.set("/other", "x")
        past = await self.v2.wait("/w/", first.node.modified_index, recursive=True)
        self.assertEqual((past.action, past.node.key, past.node.value), ("set", "/w/a", "1"))
        waiting = ensureDeferred(self.v2.wait("/w/", first.node.modified_index + 1,
                                              recursive=True))
        await settle()
        self.assertNoResult(waiting)
        await self.v2.delete("/w/a")
        change = await waiting
        self.assertEqual((change.action, change.node.key, change.prev_node.value),
                         ("delete", "/w/a", "1"))

    async def test_wait_cancel(self):
        """Cancelling a wait closes its request."""
        waiting = ensureDeferred(self.v2.wait("/w/", 10 ** 6))
        await settle()
        waiting.cancel()
        with self.assertRaises(CancelledError):
            await waiting

    async def test_index_cleared(self):
        """A waitIndex older than etcd's 1,000 events of history: IndexCleared."""
        first = await self.v2.set("/w/a", "1")
        for batch in range(11):
            await gatherResults([ensureDeferred(self.v2.set("/other/{}".format(n), "x"))
                                 for n in range(batch * 100, batch * 100 + 100)])
        with self.assertRaises(IndexCleared) as caught:
            await self.v2.wait("/w/", first.node.modified_index, recursive=True)
        self.assertEqual(caught.exception.code, EVENT_INDEX_CLEARED)
        self.assertGreater(caught.exception.index, first.index + 1000)


# -- without a network ----------------------------------------------------------------------


class Scripted(Resource):
    """Answers every request with the next of C{answers}: (code, body bytes) or a callable."""

    isLeaf = True

    def __init__(self, answers):
        Resource.__init__(self)
        self.answers = list(answers)
        self.requests = []

    def render(self, request):
        self.requests.append((request.method, request.uri, request.content.read()))
        answer = self.answers.pop(0)
        if callable(answer):
            return answer(request)
        code, body = answer
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return body


class Routes:
    """
    An HTTP client that sends each request to the C{StubTreq} of its URL's endpoint, or
    fails it: C{"refused"} (never sent), C{"broken"} (sent, no answer), C{"hang"}.
    """

    def __init__(self, routes):
        self.routes = routes
        self.calls = []
        self.hanging = []

    def request(self, method, url, **kwargs):
        base = "/".join(url.split("/")[:3])
        self.calls.append((method, base))
        route = self.routes[base]
        kwargs.pop("reactor", None)
        if route == "refused":
            return fail(ConnectionRefusedError("refused"))
        if route == "broken":
            return fail(ResponseNeverReceived([Failure(ConnectionError("reset"))]))
        if route == "hang":
            d = Deferred(lambda d: d.errback(ResponseNeverReceived([Failure(
                CancelledError())])))
            self.hanging.append(d)
            return d
        return route.request(method, url, **kwargs)


A, B = "http://a:2379", "http://b:2379"
HEADER = {"header": {"revision": "7"}}


def answer(body, code=200):
    return code, json.dumps(body).encode("utf-8")


class FailoverTests(SynchronousTestCase):
    """Failover and timeouts, over in-memory endpoints and a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.b = Scripted([answer(dict(HEADER, kvs=[]))] * 5)

    def client(self, a, b=None):
        self.routes = Routes({A: a, B: b if b is not None else StubTreq(self.b)})
        return EtcdV3(self.routes, [A, B], self.clock, timeout=5)

    def test_refused_read_and_write(self):
        """Refused: reads and writes go to the next endpoint, which is then kept."""
        client = self.client("refused")
        self.assertEqual(self.successResultOf(client.range("/k")).revision, 7)
        self.assertEqual(client.endpoints.current, 1)
        self.successResultOf(client.put("/k", "v"))
        self.assertEqual(self.routes.calls, [("POST", A), ("POST", B), ("POST", B)])

    def test_broken_write_not_repeated(self):
        """A write that may have reached etcd is not sent again elsewhere."""
        client = self.client("broken")
        failure = self.failureResultOf(client.put("/k", "v"), EtcdUnavailable)
        self.assertTrue(failure.value.maybe_applied)
        self.assertIn("may have been applied", str(failure.value))
        self.assertEqual(self.routes.calls, [("POST", A)])
        self.successResultOf(client.range("/k"))         # a read moves on
        self.assertEqual(self.routes.calls[-2:], [("POST", A), ("POST", B)])

    def test_each_endpoint_once(self):
        """A request tries each endpoint once, in order from where it began, even when
        another request moves the current endpoint meanwhile."""
        c = "http://c:2379"
        self.routes = Routes({A: "hang", B: "refused", c: StubTreq(self.b)})
        client = EtcdV3(self.routes, [A, B, c], self.clock, timeout=5)
        d = ensureDeferred(client.range("/k"))
        client.endpoints.current = 2         # another request found c meanwhile
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d).revision, 7)
        self.assertEqual(self.routes.calls, [("POST", A), ("POST", B), ("POST", c)])

    def test_readonly_txn_moves_on(self):
        """A txn marked readonly is sent to the next endpoint when the connection to the
        first broke (as a read is); one that writes is not."""
        self.b = Scripted([answer(dict(HEADER, succeeded=True))] * 2)
        client = self.client("broken")
        check = [compare("/k", "mod", "==", 3)]
        result = self.successResultOf(ensureDeferred(client.txn(
            check, [], [op_range("/k")], readonly=True)))
        self.assertEqual((result.succeeded, result.revision), (True, 7))
        self.assertEqual(self.routes.calls, [("POST", A), ("POST", B)])
        client.endpoints.current = 0
        failure = self.failureResultOf(ensureDeferred(client.txn(
            check, [op_put("/k", "v")])), EtcdUnavailable)
        self.assertTrue(failure.value.maybe_applied)
        self.assertEqual(self.routes.calls[-1], ("POST", A))

    def test_readonly_txn_only_reads(self):
        """A readonly txn holding a put or a delete is refused before anything is sent."""
        client = self.client("refused")
        for op in (op_put("/k", "v"), op_delete("/k")):
            self.failureResultOf(ensureDeferred(client.txn([], [op], readonly=True)),
                                 ValueError)
            self.failureResultOf(ensureDeferred(client.txn([], [], [op], readonly=True)),
                                 ValueError)
        self.assertEqual(self.routes.calls, [])

    def test_timeout(self):
        """An endpoint that does not answer in time is passed over (reads)."""
        client = self.client("hang")
        d = ensureDeferred(client.range("/k"))
        self.assertNoResult(d)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d).revision, 7)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_503(self):
        """An endpoint answering 503 (no leader) is passed over for reads, not for writes."""
        client = self.client(StubTreq(Scripted([answer(
            {"error": "etcdserver: no leader", "message": "etcdserver: no leader",
             "code": 14}, 503)] * 2)))
        self.assertEqual(self.successResultOf(client.range("/k")).revision, 7)
        client.endpoints.current = 0
        failure = self.failureResultOf(client.put("/k", "v"), EtcdUnavailable)
        self.assertEqual(failure.value.status, 503)
        self.assertIn("no leader", str(failure.value))

    def test_cancel(self):
        """Cancelling a request cancels it; no other endpoint is tried."""
        client = self.client("hang")
        d = ensureDeferred(client.range("/k"))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.routes.calls, [("POST", A)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_urls(self):
        """A client needs at least one URL."""
        with self.assertRaises(ValueError):
            EtcdV3(Routes({}), [], self.clock)


class AnswerTests(SynchronousTestCase):
    """Answers that are not what etcd sends give an EtcdError, never a crash."""

    def v3(self, *answers):
        self.resource = Scripted(answers)
        return EtcdV3(StubTreq(self.resource), [A], Clock())

    def v2(self, *answers):
        self.resource = Scripted(answers)
        return EtcdV2(StubTreq(self.resource), [A], Clock())

    def test_not_json(self):
        """A body that is not etcd's JSON object is an EtcdError with the status."""
        for code, body in ((200, b"<html>"), (200, b"[1]"), (500, b"oops"),
                           (400, b'{"no": "message"}')):
            failure = self.failureResultOf(self.v3((code, body)).range("/k"), EtcdError)
            self.assertEqual(failure.value.status, code)

    def test_bad_fields(self):
        """Fields of the wrong type or encoding are an EtcdError."""
        for body in ({"header": {"revision": "x"}}, {"header": [], "kvs": []},
                     {"kvs": [{"key": "not base64!"}]}, {"kvs": {}}, {"kvs": [1]}):
            self.failureResultOf(self.v3(answer(body)).range("/k"), EtcdError)
        txn = {"responses": [{"response_what": {}}]}
        self.failureResultOf(self.v3(answer(txn)).txn(), EtcdError)

    def test_request_bodies(self):
        """What the client sends: base64 keys, int64 as strings, the prefix's range_end."""
        client = self.v3(answer(HEADER), answer(HEADER), answer(HEADER))
        self.successResultOf(client.range("/a/", prefix=True, revision=5, limit=2))
        self.successResultOf(client.put("/a/b", b"\xff", lease=2 ** 62))
        self.successResultOf(client.txn([compare("/a", "mod", "<", 3)], [op_put("/a", "")]))
        bodies = [(uri, json.loads(body)) for _, uri, body in self.resource.requests]
        self.assertEqual(bodies, [
            (b"/v3/kv/range", {"key": "L2Ev", "range_end": "L2Ew", "revision": "5",
                               "limit": "2"}),
            (b"/v3/kv/put", {"key": "L2EvYg==", "value": "/w==", "lease": str(2 ** 62)}),
            (b"/v3/kv/txn", {"compare": [{"key": "L2E=", "target": "MOD", "result": "LESS",
                                          "mod_revision": "3"}],
                             "success": [{"request_put": {"key": "L2E=", "value": ""}}],
                             "failure": []})])

    def test_v2_errors(self):
        """v2 errors: 401 is IndexCleared; a 404 page hints at --enable-v2; bad nodes."""
        cleared = {"errorCode": 401, "message": "The event in requested index is outdated "
                   "and cleared", "cause": "the requested history has been cleared [9/1]",
                   "index": 1009}
        failure = self.failureResultOf(self.v2(answer(cleared, 400)).wait("/k", 1),
                                       IndexCleared)
        self.assertEqual((failure.value.index, failure.value.status), (1009, 400))
        self.assertIn("history has been cleared", str(failure.value))
        failure = self.failureResultOf(self.v2((404, b"404 page not found\n")).get("/k"),
                                       EtcdError)
        self.assertIn("--enable-v2", str(failure.value))
        self.failureResultOf(self.v2(answer({"node": {"key": 5}})).get("/k"), EtcdError)
        self.failureResultOf(self.v2(answer({"node": {"nodes": {}}})).get("/k"), EtcdError)

    def test_v2_requests(self):
        """What the v2 client sends: form bodies, quoted keys, query flags."""
        ok = answer({"action": "set", "node": {"key": "/k", "value": "v"}}, 201)
        client = self.v2(ok, ok, ok)
        self.successResultOf(client.set("/k", "a b&c", ttl=5, prev_exist=True))
        self.successResultOf(client.delete("k", recursive=True, prev_index=3))
        self.successResultOf(client.wait("/k", 12, recursive=True))
        self.assertEqual([(m, u, b) for m, u, b in self.resource.requests], [
            (b"PUT", b"/v2/keys/k", b"value=a+b%26c&ttl=5&prevExist=true"),
            (b"DELETE", b"/v2/keys/k?recursive=true&prevIndex=3", b""),
            (b"GET", b"/v2/keys/k?wait=true&waitIndex=12&recursive=true", b"")])


class Stream(Resource):
    """A watch stream the test writes to, chunk by chunk."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.request = None

    def render_POST(self, request):
        self.request = request
        self.finished = []          # how the request ended, once it has
        request.notifyFinish().addBoth(self.finished.append)
        request.setHeader(b"content-type", b"application/json")
        return NOT_DONE_YET


def result(**fields):
    body = {"result": dict({"header": {"revision": "9"}}, **fields)}
    return json.dumps(body).encode("utf-8") + b"\n"


class WatchStreamTests(SynchronousTestCase):
    """The watch stream, cut into chunks anywhere, and the ways it ends."""

    def setUp(self):
        self.stream = Stream()
        self.http = StubTreq(self.stream)
        self.client = EtcdV3(self.http, [A], Clock())
        self.pending = ensureDeferred(self.client.watch("/w/", prefix=True, start_revision=3))
        self.http.flush()
        self.assertNoResult(self.pending)

    def send(self, data):
        self.stream.request.write(data)
        self.http.flush()

    def created(self):
        self.send(result(created=True, watch_id="4"))
        return self.successResultOf(self.pending)

    def test_created(self):
        """watch() answers once etcd has created the watch, with its id and revision."""
        watch = self.created()
        self.assertEqual((watch.watch_id, watch.revision), (4, 9))

    def test_split_and_joined(self):
        """Results split across chunks or several in one chunk are read one by one."""
        watch = self.created()
        put = {"kv": {"key": "L3cvYQ==", "value": "MQ==", "mod_revision": "5"}}
        delete = {"type": "DELETE", "kv": {"key": "L3cvYQ==", "mod_revision": "6"}}
        data = result(events=[put]) + result(events=[delete]) + result()
        first = ensureDeferred(watch.next())
        self.send(data[:7])
        self.assertNoResult(first)
        self.send(data[7:])
        [event] = self.successResultOf(first).events
        self.assertEqual((event.type, event.kv.key, event.kv.value, event.kv.mod_revision),
                         ("PUT", b"/w/a", b"1", 5))
        [event] = self.successResultOf(watch.next()).events
        self.assertEqual((event.type, event.kv.value), ("DELETE", b""))
        progress = self.successResultOf(watch.next())
        self.assertEqual((progress.progress, progress.revision, progress.events),
                         (True, 9, ()))

    def test_compacted(self):
        """A cancellation with a compact_revision is Compacted, carrying it."""
        watch = self.created()
        d = ensureDeferred(watch.next())
        self.send(result(canceled=True, compact_revision="8"))
        failure = self.failureResultOf(d, Compacted)
        self.assertEqual(failure.value.compact_revision, 8)

    def test_canceled(self):
        """Another cancellation is WatchCanceled, with etcd's reason."""
        watch = self.created()
        d = ensureDeferred(watch.next())
        self.send(result(canceled=True, cancel_reason="permission denied"))
        self.assertIn("permission denied", str(self.failureResultOf(d, WatchCanceled).value))

    def test_error_in_stream(self):
        """An error object in the stream is raised (a 503 one as EtcdUnavailable)."""
        watch = self.created()
        d = ensureDeferred(watch.next())
        self.send(json.dumps({"error": {"grpc_code": 14, "http_code": 503,
                                        "message": "etcdserver: no leader"}}).encode() + b"\n")
        failure = self.failureResultOf(d, EtcdUnavailable)
        self.assertEqual((failure.value.code, failure.value.status), (14, 503))

    def test_garbage(self):
        """Lines that are not the gateway's results are an EtcdError, one each."""
        watch = self.created()
        for line in (b"not json\n", b"[1]\n", b'{"result": 3}\n',
                     result(events=[{"type": "EXPLODE", "kv": {}}])):
            d = ensureDeferred(watch.next())
            self.send(line)
            self.failureResultOf(d, EtcdError)

    def test_ended(self):
        """The server ends the stream: EtcdUnavailable, then every next() says so."""
        watch = self.created()
        d = ensureDeferred(watch.next())
        self.stream.request.finish()
        self.http.flush()
        self.failureResultOf(d, EtcdUnavailable)
        self.failureResultOf(watch.next(), EtcdUnavailable)

    def test_cancel_closes(self):
        """cancel() closes the stream's connection and ends a pending next()."""
        watch = self.created()
        d = ensureDeferred(watch.next())
        watch.cancel()
        self.http.flush()
        self.failureResultOf(d, EtcdUnavailable)
        [reason] = self.stream.finished
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_not_created(self):
        """A watch refused at once (a bad key, say) is an EtcdError from watch()."""
        stream = Scripted([answer({"error": "bad", "message": "key is not provided",
                                   "code": 3}, 400)])
        client = EtcdV3(StubTreq(stream), [A], Clock())
        failure = self.failureResultOf(client.watch(""), EtcdError)
        self.assertEqual(failure.value.code, 3)


class HelperTests(SynchronousTestCase):
    def test_prefix_end(self):
        """The end of a prefix range: the last byte below 0xff plus one."""
        self.assertEqual(prefix_end(b"/a/"), b"/a0")
        self.assertEqual(prefix_end("/a\xff"), "/a\xff".encode()[:-1] + b"\xc0")
        self.assertEqual(prefix_end(b"a\xff\xff"), b"b")
        self.assertEqual(prefix_end(b"\xff"), b"\0")
        self.assertEqual(prefix_end(b""), b"\0")

    def test_compare(self):
        """Comparisons in the gateway's JSON; unknown targets and operators are refused."""
        self.assertEqual(compare("k", "version", "==", 0),
                         {"key": "aw==", "target": "VERSION", "result": "EQUAL",
                          "version": "0"})
        self.assertEqual(compare("k", "value", "!=", b"x", range_end="l"),
                         {"key": "aw==", "target": "VALUE", "result": "NOT_EQUAL",
                          "value": "eA==", "range_end": "bA=="})
        for bad in (("k", "size", "==", 1), ("k", "mod", "=~", 1)):
            with self.assertRaises(ValueError):
                compare(*bad)

    def test_key_value(self):
        """
        Key-values from the gateway's JSON: base64, int64 strings or numbers, not booleans.
        """
        kv = KeyValue.from_json({"key": "YQ==", "create_revision": "2", "lease": 7})
        self.assertEqual((kv.key, kv.value, kv.create_revision, kv.lease), (b"a", b"", 2, 7))
        with self.assertRaises(EtcdError):
            KeyValue.from_json({"key": "YQ==", "version": True})

    def test_error_text(self):
        """An error's text names the endpoint, status, code, message and cause."""
        error = EtcdError("Key not found", status=404, code=100, cause="/x", url=A)
        self.assertEqual(str(error), "etcd at http://a:2379, HTTP 404, code 100: Key not "
                                     "found (/x)")
        self.assertEqual(str(EtcdError("plain")), "plain")
