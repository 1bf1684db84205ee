"""
Two controller APIs in this process, each with its own Redis rule store, proxy reports and
trace records on one real C{redis-server}, served over real HTTP on free loopback ports:
the replicas of one controller. What a sidecar reports or forwards through one is what
a8ctl (C{--wait}) and Gremlin read through the other; Redis away, every call of the proxy
status and the trace records answers 503 and nothing changes.
"""

import json

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from amalgam8.auth import Authenticator
from amalgam8.client import ControllerClient
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.proxies_redis import RedisProxyReports
from amalgam8.controller.store.redis import RedisStore
from amalgam8.controller.traces_redis import RedisTraceStore
from amalgam8.gremlin.traces import ControllerTraces
from amalgam8.live import NotLive, wait_until_live
from amalgam8.redislink import RedisAddress
from amalgam8.testing.redis import RedisServer, redis_missing
from amalgam8.testing.traces import trace_record

RULE = {"id": "r1", "destination": "reviews", "route": {"backends": [{"tags": ["v1"]}]}}


def report(revision):
    return {"service": "reviews", "tags": ["v1"], "revision": revision,
            "applied_at": "2027-01-15T08:00:00Z"}


class SharedAPITests(TestCase):
    """Two controller replicas, in process, on one Redis (each test its own server)."""

    timeout = 30

    def setUp(self):
        missing = redis_missing()
        if missing:
            raise SkipTest(missing)
        self.redis = RedisServer(self.mktemp(), persist=True)
        self.redis.start()
        self.addCleanup(self.redis.stop)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.one = self.replica()
        self.two = self.replica()

    def replica(self):
        """A controller API on its own stores on the Redis; its base URL."""
        address = RedisAddress("127.0.0.1", self.redis.port)
        store = RedisStore(reactor, address)
        proxies = RedisProxyReports(reactor, reactor, address, interval=30.0)
        traces = RedisTraceStore(reactor, reactor, address, capacity=1000)
        for service in (store, proxies, traces):
            service.startService()
            self.addCleanup(service.stopService)
        api = ControllerAPI(store, Authenticator(("trusted",), reactor), reactor,
                            proxies=proxies, traces=traces)
        port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return "http://127.0.0.1:{}".format(port.getHost().port)

    async def call(self, method, url, body=None):
        kwargs = {"headers": {b"authorization": [b"Bearer team"]}}
        if body is not None:
            kwargs["json"] = body
        response = await self.http.request(method, url, **kwargs).addTimeout(10, reactor)
        content = await response.content()
        return response, json.loads(content) if content else None

    def client(self, base):
        return ControllerClient(self.http, base, token="team", reactor=reactor, timeout=10)

    async def test_status_through_the_other(self):
        """Proxies reporting through either replica are counted and listed through both;
        a8ctl's wait through one replica ends when a proxy reporting through the other
        has the revision."""
        response, body = await self.call("POST", self.one + "/v1/rules", {"rules": [RULE]})
        self.assertEqual(response.code, 201, body)
        for base, proxy_id, revision in ((self.one, "p1", 1), (self.two, "p2", 0)):
            response, body = await self.call("PUT", base + "/v1/proxies/" + proxy_id,
                                             report(revision))
            self.assertEqual(response.code, 200, body)
        for base in (self.one, self.two):
            _, status = await self.call("GET", base + "/v1/rules/status")
            self.assertEqual((status["revision"], status["proxies"], status["in_sync"]),
                             (1, 2, 1))
            self.assertEqual([p["proxy_id"] for p in status["lagging"]], ["p2"])
            _, listed = await self.call("GET", base + "/v1/proxies")
            self.assertEqual([p["proxy_id"] for p in listed["proxies"]], ["p1", "p2"])
        with self.assertRaises(NotLive):
            await wait_until_live(reactor, self.client(self.two), 1, timeout=0.2,
                                  interval=0.05)
        response, _ = await self.call("PUT", self.one + "/v1/proxies/p2", report(1))
        self.assertEqual(response.code, 200)
        status = await wait_until_live(reactor, self.client(self.two), 1, timeout=5,
                                       interval=0.05)
        self.assertEqual((status["proxies"], status["in_sync"], status["target"]), (2, 2, 1))

    async def test_traces_through_both(self):
        """Batches forwarded through both replicas at once are read back whole and in one
        order through either, page by page; Gremlin reading one recipe through either
        replica gets every record of it."""
        batches = []
        for n in range(12):
            base = (self.one, self.two)[n % 2]
            records = [trace_record(n * 50 + k, "r{}".format(n % 3)) for k in range(50)]
            batches.append((base, records))
        answers = await gatherResults([
            Deferred.fromCoroutine(self.call("POST", base + "/v1/traces",
                                             {"records": records}))
            for base, records in batches])
        self.assertEqual([(r.code, body) for r, body in answers],
                         [(202, {"accepted": 50, "dropped": 0})] * 12)
        read = {}
        for base in (self.one, self.two):
            records, after = [], 0
            while after is not None:
                _, page = await self.call(
                    "GET", base + "/v1/traces?limit=70&after={}".format(after))
                self.assertEqual(page["dropped"], 0)
                records.extend(page["records"])
                after = page["next"]
            read[base] = records
        self.assertEqual(read[self.one], read[self.two])
        sent = [record for _, records in batches for record in records]
        self.assertEqual(len(read[self.one]), len(sent))
        self.assertEqual(sorted(r["path"] for r in read[self.one]),
                         sorted(r["path"] for r in sent))
        for _, records in batches:
            # Each batch is kept whole and in its order.
            positions = [read[self.one].index(record) for record in records]
            self.assertEqual(positions, list(range(positions[0], positions[0] + 50)))
        # A cursor past any number is an empty last page, not an error.
        response, page = await self.call("GET", self.two + "/v1/traces?after=" + "9" * 400)
        self.assertEqual((response.code, page["records"], page["next"]), (200, [], None))
        for base in (self.one, self.two):
            found, _ = await ControllerTraces(self.client(base)).fetch("r1")
            self.assertEqual(found, [r for r in read[self.one]
                                     if r["gremlin_recipe_id"] == "r1"])
            self.assertEqual(len(found), 200)

    async def test_redis_away(self):
        """With Redis down, reports, listings, the status and the trace records answer
        503 error_store_unavailable with Retry-After through both replicas, and nothing
        changes; once Redis is back both answer as before by themselves."""
        response, _ = await self.call("PUT", self.one + "/v1/proxies/p1", report(0))
        self.assertEqual(response.code, 200)
        response, _ = await self.call("POST", self.two + "/v1/traces",
                                      {"records": [trace_record(0)]})
        self.assertEqual(response.code, 202)
        self.redis.kill()
        calls = [("PUT", "/v1/proxies/p2", report(0)), ("GET", "/v1/proxies", None),
                 ("GET", "/v1/rules/status", None),
                 ("POST", "/v1/traces", {"records": [trace_record(1)]}),
                 ("GET", "/v1/traces", None)]
        for base in (self.one, self.two):
            for method, path, body in calls:
                response, answer = await self.call(method, base + path, body)
                self.assertEqual((response.code, answer["error"]),
                                 (503, "error_store_unavailable"), (method, path, answer))
                self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.redis.start()
        deadline = reactor.seconds() + 10
        for base in (self.one, self.two):
            while True:
                response, status = await self.call("GET", base + "/v1/rules/status")
                if response.code == 200:
                    break
                self.assertLess(reactor.seconds(), deadline)
                await deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(status["proxies"], 1)
            while True:
                response, traces = await self.call("GET", base + "/v1/traces")
                if response.code == 200:
                    break
                self.assertLess(reactor.seconds(), deadline)
                await deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(traces, {"records": [trace_record(0)], "next": None,
                                      "dropped": 0})
