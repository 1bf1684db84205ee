"""
Integration tests: two real C{twistd -n a8registry} (and two C{a8controller}) processes on
one real C{redis-server}, all on free loopback ports, are one service: what is written
through one is read through the other, and wakes the blocking reads held on it; the
controllers' proxy status and trace records are the same through either.
"""

import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from amalgam8.client import ControllerClient
from amalgam8.live import wait_until_live
from amalgam8.testing.redis import RedisServer, redis_missing
from tests.helpers import ServerProcesses


class ReplicaProcessTests(ServerProcesses, TestCase):
    """Replicas of the registry and of the controller on one Redis."""

    timeout = 60

    def setUp(self):
        missing = redis_missing()
        if missing:
            raise SkipTest(missing)
        self.redis = RedisServer(self.mktemp())
        self.redis.start()
        self.addCleanup(self.redis.stop)
        self.setUpProcesses()

    async def test_registry_replicas(self):
        """A registration through one registry is listed by the other and wakes the
        blocking read held on it; a deregistration through the second is seen by the
        first; with Redis gone both answer 503, and they recover when it is back."""
        env = {"A8_STORE": "redis", "A8_STORE_ADDRESS": self.redis.address}
        one = await self.spawn("a8registry", env)
        two = await self.spawn("a8registry", env)
        instances = "/api/v1/instances"
        response, content = await self.call("GET", two + instances + "?service_name=reviews")
        self.assertEqual((response.code, json.loads(content)), (200, {"instances": []}))
        index = int(response.headers.getRawHeaders(b"a8-index")[0])
        held = Deferred.fromCoroutine(self.call(
            "GET", two + instances + "?service_name=reviews&wait=20s&index=%d" % index,
            timeout=25))
        await deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(held.called)
        body = {"service_name": "reviews", "endpoint": {"type": "http", "value": "a:1"},
                "tags": ["v1"]}
        response, content = await self.call("POST", one + instances, body)
        self.assertEqual(response.code, 201, content)
        instance_id = json.loads(content)["id"]
        started = reactor.seconds()
        response, content = await held
        self.assertLess(reactor.seconds() - started, 2.0)
        self.assertEqual(response.code, 200)
        self.assertEqual([i["id"] for i in json.loads(content)["instances"]], [instance_id])
        self.assertGreater(int(response.headers.getRawHeaders(b"a8-index")[0]), index)
        response, _ = await self.call("PUT", two + instances + "/" + instance_id
                                      + "/heartbeat")
        self.assertEqual(response.code, 200)
        response, _ = await self.call("DELETE", two + instances + "/" + instance_id)
        self.assertEqual(response.code, 200)
        response, content = await self.call("GET", one + "/api/v1/services")
        self.assertEqual(json.loads(content), {"services": []})

        self.redis.kill()
        for base in (one, two):
            response, content = await self.call("POST", base + instances, body)
            self.assertEqual(response.code, 503, content)
            self.assertIn("unavailable", json.loads(content)["Error"])
        self.redis.start()
        for base in (one, two):
            deadline = reactor.seconds() + 15
            while True:
                response, content = await self.call("POST", base + instances, body)
                if response.code != 503 or reactor.seconds() > deadline:
                    break
                await deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(response.code, 201, content)
        self.assertNoTraceback()

    async def test_controller_replicas(self):
        """Rules written through one controller are read through the other, whose
        blocking read wakes; the revision is shared."""
        env = {"A8_DATABASE_TYPE": "redis", "A8_DATABASE_HOST": self.redis.address}
        one = await self.spawn("a8controller", env)
        two = await self.spawn("a8controller", env)
        response, content = await self.call("GET", two + "/v1/rules")
        self.assertEqual(json.loads(content)["revision"], 0)
        held = Deferred.fromCoroutine(
            self.call("GET", two + "/v1/rules?wait=20s&revision=0", timeout=25))
        await deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(held.called)
        rule = {"id": "r1", "destination": "reviews",
                "route": {"backends": [{"tags": ["v1"]}]}}
        response, content = await self.call("POST", one + "/v1/rules", {"rules": [rule]})
        self.assertEqual(response.code, 201, content)
        started = reactor.seconds()
        response, content = await held
        self.assertLess(reactor.seconds() - started, 2.0)
        answer = json.loads(content)
        self.assertEqual((answer["revision"], [r["id"] for r in answer["rules"]]),
                         (1, ["r1"]))
        response, content = await self.call("DELETE", two + "/v1/rules?id=r1")
        self.assertEqual(response.code, 200, content)
        response, content = await self.call("GET", one + "/v1/rules")
        self.assertEqual((json.loads(content)["revision"], json.loads(content)["rules"]),
                         (2, []))
        self.assertNoTraceback()

    async def test_controller_status_and_traces_shared(self):
        """
        A proxy reporting through one controller process is seen through the other: its
        status counts it, and a8ctl's wait (amalgam8.live over the client, as C{--wait})
        through the other ends once it has the revision; trace records posted through
        both are read whole, in one order, through either; with Redis gone the status and
        the trace records answer 503 through both.
        """
        env = {"A8_DATABASE_TYPE": "redis", "A8_DATABASE_HOST": self.redis.address}
        one = await self.spawn("a8controller", env)
        two = await self.spawn("a8controller", env)
        rule = {"id": "r1", "destination": "reviews",
                "route": {"backends": [{"tags": ["v1"]}]}}
        response, content = await self.call("POST", one + "/v1/rules", {"rules": [rule]})
        self.assertEqual(response.code, 201, content)
        report = {"service": "reviews", "tags": ["v1"], "revision": 1,
                  "applied_at": "2027-01-15T08:00:00Z"}
        response, content = await self.call("PUT", one + "/v1/proxies/p1", report)
        self.assertEqual(response.code, 200, content)
        response, content = await self.call("GET", two + "/v1/rules/status")
        self.assertEqual(response.code, 200, content)
        status = json.loads(content)
        self.assertEqual((status["revision"], status["proxies"], status["in_sync"]),
                         (1, 1, 1))
        client = ControllerClient(self.http, two, reactor=reactor, timeout=10)
        waited = await wait_until_live(reactor, client, 1, timeout=10, interval=0.05)
        self.assertEqual((waited["proxies"], waited["in_sync"]), (1, 1))

        sent = []
        for n, base in enumerate((one, two, one, two)):
            records = [{"n": n * 10 + k, "gremlin_recipe_id": "r1"} for k in range(10)]
            sent.extend(records)
            response, content = await self.call("POST", base + "/v1/traces",
                                                {"records": records})
            self.assertEqual(response.code, 202, content)
        for base in (one, two):
            response, content = await self.call(
                "GET", base + "/v1/traces?log_key=gremlin_recipe_id&log_value=r1")
            self.assertEqual(json.loads(content),
                             {"records": sent, "next": None, "dropped": 0})

        self.redis.kill()
        for base in (one, two):
            for method, path, body in (("PUT", "/v1/proxies/p1", report),
                                       ("GET", "/v1/rules/status", None),
                                       ("POST", "/v1/traces", {"records": [{"n": 99}]}),
                                       ("GET", "/v1/traces", None)):
                response, content = await self.call(method, base + path, body)
                self.assertEqual(response.code, 503, (method, path, content))
                self.assertEqual(json.loads(content)["error"], "error_store_unavailable")
        self.assertNoTraceback()
