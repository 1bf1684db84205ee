"""
Tests for L{amalgam8.registry.store.redis} against a real C{redis-server} on a free
loopback port: the IRegistryStore contract (the memory store's suite), replicas racing,
waking each other, exact expiry, and Redis going away and coming back.
"""

import json
import time

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from amalgam8.auth import Authenticator

from amalgam8.errors import StoreUnavailable, UnknownInstance
from amalgam8.redislink import RedisAddress, RedisLink
from amalgam8.registry.api import RegistryAPI
from amalgam8.registry.store.redis import RedisStore, encode_registration
from amalgam8.testing.redis import (
    RedisServer,
    RedisStoreCase,
    turn,
    redis_missing,
    spin,
)
from amalgam8.testing.registry import registration, registry_store_tests

_missing = redis_missing()

#: A functional bound: the change message woke the waiters (far below the 10 s the reactor
#: is run for); the wake-up's speed is bench/redis_wakeup's figure.
WOKEN_WITHIN = 2.0


class RedisCase(RedisStoreCase):
    """L{RedisStoreCase} with a maker of registry stores."""

    server_key = "registry-store"

    def redis_store(self, clock, capacity=None, **kwargs):
        return self.track(RedisStore(clock, reactor, self.address(), capacity=capacity,
                                     **kwargs))


def _make(case, clock, capacity=None):
    return case.redis_store(clock, capacity)


class RedisStoreContractTests(RedisCase, registry_store_tests(_make)):
    """The Redis store keeps the IRegistryStore contract, on a real redis-server."""


class RedisReplicaTests(RedisCase, SynchronousTestCase):
    """Two stores on one Redis are two replicas of one registry."""

    def setUp(self):
        self.setUpLater()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.one = self.start(self.redis_store(self.clock))
        self.two = self.start(self.redis_store(self.clock))

    def start(self, store):
        store.startService()
        return store

    def result(self, deferred):
        """Run the reactor until C{deferred} fires; its result."""
        self.later.wait(deferred)
        return self.successResultOf(deferred)

    def test_changes_are_shared(self):
        """What one replica registers the other lists, heartbeats and deregisters."""
        instance = self.result(self.one.register("default", registration(tags=("v1",))))
        index, listed = self.result(self.two.instances("default"))
        self.assertEqual([i.registration for i in listed], [instance.registration])
        renewed = self.result(self.two.heartbeat("default", instance.id))
        self.assertEqual(renewed.registration, instance.registration)
        self.result(self.two.deregister("default", instance.id))
        self.assertEqual(self.result(self.one.instances("default"))[1], [])
        beat = self.one.heartbeat("default", instance.id)
        self.later.wait(beat)
        self.failureResultOf(beat, UnknownInstance)

    def test_wake_across_replicas(self):
        """
        A change made through one replica wakes the waiters held on the other, from the
        change message (the other replica sends nothing): nothing else would wake them (the
        stores' clock never moves, so no sweep runs, and no reconnection catches up), and
        they are woken well within the 10 s the reactor is run for. How fast is measured
        by bench/redis_wakeup, not here.
        """
        index = self.result(self.two.instances("default"))[0]
        waiters = [self.two.wait_for_change("default", index) for _ in range(20)]
        self.later.flush()
        self.assertFalse(any(w.called for w in waiters))
        started = time.monotonic()
        registered = self.one.register("default", registration())
        self.result(gatherResults(waiters))
        elapsed = time.monotonic() - started
        self.assertTrue(registered.called)
        new = self.result(self.one.instances("default"))[0]
        self.assertEqual({w.result for w in waiters}, {new})
        self.assertLess(elapsed, WOKEN_WITHIN, "woken after {:.3f} s".format(elapsed))

    def test_race_no_lost_update(self):
        """Two replicas registering at once lose nothing: every instance is listed, the
        index grew by exactly one per change, and the change messages carry strictly
        increasing indexes."""
        seen = []
        watcher = RedisLink(reactor, RedisAddress("127.0.0.1", self.redis.port),
                            channel="a8:r:changes", on_message=seen.append)
        watcher.startService()
        self.addCleanup(lambda: spin(watcher.stopService(), reactor))
        self.result(watcher.settled())
        spin_until(lambda: watcher.subscribed)
        first = self.result(self.one.register("default", registration(value="seed:1")))
        start = self.result(self.one.instances("default"))[0]
        writes = []
        for n in range(100):
            writes.append(self.one.register("default", registration(value="a:%d" % n)))
            writes.append(self.two.register("default", registration(value="b:%d" % n)))
        self.result(gatherResults(writes))
        self.result(watcher.settled())
        index, listed = self.result(self.two.instances("default"))
        self.assertEqual(len(listed), 201)
        self.assertEqual(index, start + 200)
        indexes = [int(text.split(" ", 1)[0]) for text in seen]
        self.assertEqual(indexes, sorted(set(indexes)))
        self.assertEqual(indexes[-200:], list(range(start + 1, start + 201)))
        self.assertIn(first.id, [i.id for i in listed])

    def test_race_same_instance(self):
        """Both replicas re-registering one instance at once leave one instance, with
        one of the two registrations, counted once in its service."""
        writes = []
        for n in range(50):
            writes.append(self.one.register("default", registration(tags=("one%d" % n,))))
            writes.append(self.two.register("default", registration(tags=("two%d" % n,))))
        self.result(gatherResults(writes))
        listed = self.result(self.one.instances("default"))[1]
        self.assertEqual(len(listed), 1)
        # Which connection's last write lands last is up to the scheduling: either is right.
        self.assertIn(listed[0].tags, (("one49",), ("two49",)))
        self.assertEqual(self.redis.command("HGETALL", "a8:r:default:svcs"),
                         [b"reviews", b"1"])

    def test_heartbeat_races_deregister(self):
        """A heartbeat racing a deregistration either renews the instance first or fails
        after it: the instance never comes back, and a later heartbeat fails."""
        instance = self.result(self.one.register("default", registration()))
        beat = self.two.heartbeat("default", instance.id)
        gone = self.one.deregister("default", instance.id)
        self.later.flush()
        self.successResultOf(gone)
        if isinstance(beat.result, Failure):
            self.failureResultOf(beat, UnknownInstance)
        else:
            self.assertEqual(self.successResultOf(beat).id, instance.id)
        again = self.two.heartbeat("default", instance.id)
        self.later.flush()
        self.failureResultOf(again, UnknownInstance)
        self.assertEqual(self.result(self.two.instances("default"))[1], [])

    def test_expiry_swept_once(self):
        """Both replicas sweep; each expired instance is removed and counted once."""
        for n in range(10):
            self.result(self.one.register("default", registration(value="x:%d" % n, ttl=10)))
        index = self.result(self.two.instances("default"))[0]
        self.clock.advance(11)
        self.later.flush()
        self.assertEqual(self.one.stats()["expirations"] + self.two.stats()["expirations"],
                         10)
        self.assertEqual(self.result(self.two.instances("default")),
                         (index + 1, []))
        self.assertEqual(self.redis.command("ZCARD", "a8:r:due"), 0)

    def test_keys_of_a_namespace(self):
        """A namespace's keys are under its percent-encoded name: one namespace cannot
        spell another's keys."""
        self.result(self.one.register("a:b", registration(service="s:x")))
        keys = sorted(self.redis.command("KEYS", "a8:r:*"))
        self.assertIn(b"a8:r:a%3Ab:reg", keys)
        self.assertIn(b"a8:r:a%3Ab:s:s:x", keys)
        self.assertEqual(self.result(self.two.instances("a")), (0, []))

    def test_index_starts_from_the_clock(self):
        """A namespace's first index is the clock in microseconds: after Redis loses its
        data, indexes are still above every one given before."""
        self.result(self.one.register("default", registration()))
        before = self.result(self.one.instances("default"))[0]
        self.assertEqual(before, 1_700_000_000 * 1_000_000)
        self.redis.command("FLUSHALL")
        self.clock.advance(1)
        self.result(self.two.register("default", registration()))
        self.assertGreater(self.result(self.one.instances("default"))[0], before)

    def test_index_never_backwards_after_lost_changes(self):
        """A failover that lost the last changes (the new master's index is behind what
        the replicas saw): a read answers an index past every one seen, the change wakes
        the waiters held past the lost index, and a registration takes the next one; no
        index is handed out twice."""
        first = self.result(self.one.register("default", registration(value="a:1")))
        self.result(self.one.register("default", registration(value="b:1")))
        lost = self.result(self.one.register("default", registration(value="c:1")))
        seen = self.result(self.two.instances("default"))[0]
        self.later.flush()
        waiter = self.two.wait_for_change("default", seen)
        # The new master has the first two changes only.
        self.redis.command("HSET", "a8:r:default:meta", "index", "%d" % (seen - 1))
        self.redis.command("HDEL", "a8:r:default:reg", lost.id)
        after, listed = self.result(self.one.instances("default"))
        self.assertEqual(after, seen + 1)
        self.assertEqual(self.result(waiter), seen + 1)
        self.assertEqual(len(listed), 2)
        self.assertIn(first.id, [i.id for i in listed])
        self.result(self.two.register("default", registration(value="d:1")))
        self.assertEqual(self.result(self.one.instances("default"))[0], seen + 2)

    def test_script_reloaded(self):
        """After SCRIPT FLUSH (or a restarted Redis) the scripts are sent again."""
        self.result(self.one.register("default", registration()))
        self.redis.command("SCRIPT", "FLUSH")
        self.result(self.one.register("default", registration(value="b:1")))
        self.assertEqual(len(self.result(self.two.instances("default"))[1]), 2)

    def test_registration_text(self):
        """A registration is kept as the same compact JSON whatever its ttl's type."""
        self.assertEqual(encode_registration(registration(ttl=30.0)),
                         encode_registration(registration(ttl=30)))
        self.assertEqual(
            encode_registration(registration(tags=("v1",), metadata='{"a":1}')),
            '{"service_name":"reviews","endpoint_type":"http","endpoint_value":'
            '"10.0.0.1:9080","ttl":30,"status":"UP","tags":["v1"],"metadata":"{\\"a\\":1}"}')


def spin_until(condition, timeout=5):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in {} s".format(timeout))
        turn(reactor)


class RedisOutageTests(TestCase):
    """
    Redis goes away and comes back: the store fails at once with StoreUnavailable, the
    API answers 503 with a clear error, and both resume by themselves. Each test has its
    own redis-server (it is killed); the store's clock is the reactor.
    """

    timeout = 30

    def setUp(self):
        if _missing:
            raise SkipTest(_missing)
        self.redis = RedisServer(self.mktemp())
        self.redis.start()
        self.addCleanup(self.redis.stop)

    def store(self, **kwargs):
        store = RedisStore(reactor, reactor, RedisAddress("127.0.0.1", self.redis.port),
                           **kwargs)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def eventually(self, attempt, timeout=10):
        """Call C{attempt()} (a Deferred) every 50 ms until it succeeds; its result."""
        deadline = reactor.seconds() + timeout
        while True:
            try:
                return await attempt()
            except StoreUnavailable:
                if reactor.seconds() > deadline:
                    raise
            await deferLater(reactor, 0.05, lambda: None)

    async def test_unavailable_then_back(self):
        """With Redis down every operation fails at once with StoreUnavailable naming the
        store; once Redis is back (empty, as after a restart without persistence) the
        store works again without being told."""
        store = self.store()
        instance = await store.register("default", registration())
        self.redis.kill()
        await self.eventually_down(store)
        started = reactor.seconds()
        for call in (lambda: store.register("default", registration(value="b:2")),
                     lambda: store.heartbeat("default", instance.id),
                     lambda: store.deregister("default", instance.id),
                     lambda: store.instances("default"),
                     lambda: store.services("default")):
            error = await self.assertFailure(call(), StoreUnavailable)
            self.assertIn("the registry store (redis 127.0.0.1:{} db 0) is unavailable"
                          .format(self.redis.port), error.message)
        self.assertLess(reactor.seconds() - started, 1.0)
        self.redis.start()
        await self.eventually(lambda: store.register("default", registration(value="c:3")))
        index, listed = await store.instances("default")
        self.assertEqual([i.registration.endpoint_value for i in listed], ["c:3"])

    async def eventually_down(self, store):
        """Wait until the store has noticed that its connection is gone."""
        deadline = reactor.seconds() + 5
        while store.link.connected:
            self.assertLess(reactor.seconds(), deadline, "the store did not notice")
            await deferLater(reactor, 0.01, lambda: None)

    async def test_waiters_survive_an_outage(self):
        """A blocking reader held on one replica through an outage is woken by a change
        made through another replica once Redis is back (the subscription is made
        again)."""
        one, two = self.store(), self.store()
        index, _ = await two.instances("default")
        waiter = two.wait_for_change("default", index)
        self.redis.kill()
        await self.eventually_down(two)
        self.assertFalse(waiter.called)
        self.redis.start()
        await self.eventually(lambda: one.register("default", registration()))
        new = await waiter.addTimeout(5, reactor)
        self.assertGreater(new, index)

    async def test_expiry_in_real_time(self):
        """With the reactor as the clock, a 1 s lease is listed up to its second and
        gone right after, before and after the sweep."""
        store = self.store()
        instance = await store.register("default", registration(ttl=1))
        _, listed = await store.instances("default")
        self.assertEqual([i.id for i in listed], [instance.id])
        await deferLater(reactor, 1.05, lambda: None)
        _, listed = await store.instances("default")
        self.assertEqual(listed, [])
        await store.sweep()
        self.assertEqual(store.stats()["expirations"], 1)
        self.assertEqual(self.redis.command("HLEN", "a8:r:default:reg"), 0)

    async def test_api_answers_503(self):
        """The registry's API answers 503 with the 0.4 error body and Retry-After while
        Redis is down, for writes, reads and heartbeats alike, and 201 again once it is
        back."""
        store = self.store()
        api = RegistryAPI(store, Authenticator(("default",), reactor), reactor)
        port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, pool=pool))
        base = "http://127.0.0.1:{}/api/v1/instances".format(port.getHost().port)
        body = {"service_name": "reviews", "endpoint": {"type": "http", "value": "a:1"}}

        async def call(method, url, **kwargs):
            response = await http.request(method, url, **kwargs).addTimeout(5, reactor)
            return response, await response.content()

        response, content = await call("POST", base, json=body)
        self.assertEqual(response.code, 201, content)
        instance_id = json.loads(content)["id"]
        self.redis.kill()
        await self.eventually_down(store)
        for method, url, kwargs in (("POST", base, {"json": body}), ("GET", base, {}),
                                    ("PUT", base + "/" + instance_id + "/heartbeat", {}),
                                    ("DELETE", base + "/" + instance_id, {})):
            response, content = await call(method, url, **kwargs)
            self.assertEqual(response.code, 503, (method, url, content))
            self.assertIn("is unavailable", json.loads(content)["Error"])
            self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.redis.start()
        deadline = reactor.seconds() + 10
        while True:
            response, content = await call("POST", base, json=body)
            if response.code != 503 or reactor.seconds() > deadline:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(response.code, 201, content)
