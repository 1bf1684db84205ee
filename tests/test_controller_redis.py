"""
Tests for L{amalgam8.controller.store.redis} against a real C{redis-server} on a free
loopback port: the IRuleStore contract (the memory and file stores' suite), replicas racing
and waking each other, a replica confirming writes (C{WAIT}), and Redis going away.
"""

import json
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from amalgam8.controller.store.redis import RedisStore
from amalgam8.errors import Conflict, StoreUnavailable, StoreUnconfirmed
from amalgam8.redislink import RedisAddress
from amalgam8.testing.controller import action_rule, route_rule, rule_store_tests
from amalgam8.testing.redis import RedisServer, RedisStoreCase, redis_missing

_missing = redis_missing()

#: A functional bound: the change message woke the readers (far below the 10 s the reactor
#: is run for); the wake-up's speed is bench/redis_wakeup's figure.
WOKEN_WITHIN = 2.0


class RedisCase(RedisStoreCase):
    """L{RedisStoreCase} with a maker of rule stores."""

    server_key = "rule-store"

    def rule_store(self, start=False, **kwargs):
        store = self.track(RedisStore(self.reactor, self.address(), **kwargs))
        if start:
            store.startService()
        return store


class RedisRuleStoreContractTests(RedisCase, rule_store_tests(
        lambda case: case.rule_store(),
        lambda case, store: case.rule_store(start=True))):
    """The Redis rule store keeps the IRuleStore contract; a new store on the same Redis
    (a restarted controller) finds the rules."""


class RedisRuleReplicaTests(RedisCase, SynchronousTestCase):
    """Two rule stores on one Redis are two replicas of one controller."""

    def setUp(self):
        self.setUpLater()
        self.one = self.rule_store(start=True)
        self.two = self.rule_store(start=True)

    def result(self, deferred):
        self.later.wait(deferred)
        return self.successResultOf(deferred)

    def test_shared(self):
        """Rules put through one replica are read through the other, with their
        revision; the other's namespaces() learns of them from the change message."""
        self.result(self.one.put("red", 0, [route_rule("a")]))
        self.later.flush()
        self.assertEqual(self.two.namespaces(), ["red"])
        ruleset = self.result(self.two.get("red"))
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (1, ["a"]))
        self.result(self.two.put("red", 1, []))
        self.later.flush()
        self.assertEqual(self.one.namespaces(), [])
        self.assertEqual(self.result(self.one.get("red")).rules, ())

    def test_race_no_lost_update(self):
        """Two replicas putting from the same revision: exactly one wins, the other gets
        Conflict, and retrying from the new revision loses nothing."""
        wins = conflicts = 0
        for n in range(30):
            revision = self.result(self.one.get("default")).revision
            first = self.one.put("default", revision, [route_rule("one%d" % n)])
            second = self.two.put("default", revision, [route_rule("two%d" % n)])
            self.later.flush()
            for d in (first, second):
                if isinstance(d.result, Failure):
                    self.failureResultOf(d, Conflict)
                    conflicts += 1
                else:
                    self.assertEqual(self.successResultOf(d).revision, revision + 1)
                    wins += 1
        self.assertEqual((wins, conflicts), (30, 30))
        self.assertEqual(self.result(self.two.get("default")).revision, 30)

    def test_race_appends(self):
        """Replicas each adding rules by read-modify-write with retries on Conflict (as
        the API does) end with every rule, the revision one per write."""
        async def add(store, rule_id):
            while True:
                ruleset = await store.get("default")
                try:
                    return await store.put("default", ruleset.revision,
                                           list(ruleset.rules) + [route_rule(rule_id)])
                except Conflict:
                    continue

        from twisted.internet.defer import Deferred
        writes = [Deferred.fromCoroutine(add(store, "%s%d" % (name, n)))
                  for n in range(20) for name, store in (("a", self.one), ("b", self.two))]
        self.result(gatherResults(writes))
        ruleset = self.result(self.one.get("default"))
        self.assertEqual(len(ruleset.rules), 40)
        self.assertEqual(ruleset.revision, 40)
        self.assertEqual(sorted(w.result.revision for w in writes), list(range(1, 41)))

    def test_wake_across_replicas(self):
        """
        A put through one replica wakes the blocking reads held on the other, from the
        change message: nothing else would wake them, and they are woken well within the
        10 s the reactor is run for. How fast is measured by bench/redis_wakeup, not here.
        """
        waiters = [self.two.wait_for_change("default", 0) for _ in range(20)]
        self.later.flush()
        self.assertFalse(any(w.called for w in waiters))
        started = time.monotonic()
        self.one.put("default", 0, [route_rule("a")])
        self.result(gatherResults(waiters))
        elapsed = time.monotonic() - started
        self.assertEqual({w.result for w in waiters}, {1})
        self.assertLess(elapsed, WOKEN_WITHIN, "woken after {:.3f} s".format(elapsed))

    def test_read_of_another_write_never_stale(self):
        """A replica that read revision 1 reads the other replica's revision 2 rules, not
        its own copy, and its own copy again when nothing changed."""
        self.result(self.one.put("default", 0, [route_rule("a")]))
        held = self.result(self.two.get("default"))
        self.assertIs(self.result(self.two.get("default")), held)
        self.result(self.one.put("default", 1, [action_rule("b")]))
        ruleset = self.result(self.two.get("default"))
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (2, ["b"]))

    def test_rules_as_written(self):
        """Rules come back exactly as written, unknown-to-us 1.x fields included."""
        rule = route_rule("a", priority=3)
        rule["route"]["http_req_timeout"] = 2.5
        rule["tags"] = ["é", "x"]
        self.result(self.one.put("default", 0, [rule]))
        self.assertEqual(self.result(self.two.get("default")).by_id["a"], rule)
        stored = json.loads(self.redis.command("HGET", "a8:c:default", "rules"))
        self.assertEqual(stored, [rule])

    def test_revision_never_backwards_after_data_loss(self):
        """Redis losing its data (a restart without persistence, FLUSHALL): the revision
        this replica has seen is not handed out again. A read finds the rules gone at a
        new revision past it, which wakes the blocking readers, and the next write is
        above that; the other replica, which saw the same revisions, agrees."""
        for n in range(3):
            self.result(self.one.put("default", n, [route_rule("r%d" % n)]))
        self.later.flush()
        waiter = self.two.wait_for_change("default", 3)
        self.redis.command("FLUSHALL")
        ruleset = self.result(self.one.get("default"))
        self.assertEqual((ruleset.revision, ruleset.rules), (4, ()))
        self.assertEqual(self.result(waiter), 4)
        self.assertEqual(self.result(self.two.get("default")).revision, 4)
        self.assertEqual(self.result(self.two.put("default", 4, [route_rule("x")])).revision,
                         5)
        self.later.flush()                          # one learns of it from the message
        self.assertEqual(self.one.namespaces(), ["default"])

    def test_revision_never_backwards_after_lost_write(self):
        """A failover that lost the last write (the new master is a revision behind what
        the replicas saw): a read gets the rules the master kept at a revision past the
        lost one, never the lost revision with other rules."""
        self.result(self.one.put("default", 0, [route_rule("a")]))
        self.result(self.one.put("default", 1, [route_rule("a"), route_rule("b")]))
        kept = self.redis.command("HGET", "a8:c:default", "rules")
        self.result(self.one.put("default", 2, [route_rule("lost")]))
        self.later.flush()
        self.redis.command("HSET", "a8:c:default", "revision", "2", "rules", kept,
                           "stamp", "s2")
        for store in (self.two, self.one):
            ruleset = self.result(store.get("default"))
            self.assertEqual(ruleset.revision, 4)
            self.assertEqual([r["id"] for r in ruleset.rules], ["a", "b"])

    def test_put_above_floor(self):
        """A put computed from a read of the lost state is above every revision this
        replica saw, even when the loss happened between the read and the put."""
        for n in range(3):
            self.result(self.one.put("default", n, [route_rule("r%d" % n)]))
        self.redis.command("HSET", "a8:c:default", "revision", "1")
        ruleset = self.result(self.one.put("default", 1, [route_rule("x")]))
        self.assertEqual(ruleset.revision, 4)

    def test_no_replica_no_wait(self):
        """A master without replicas does not WAIT (the write is not slowed)."""
        started = time.monotonic()
        self.result(self.one.put("default", 0, [route_rule("a")]))
        self.assertLess(time.monotonic() - started, 1.0)


class RedisRuleOutageTests(TestCase):
    """The rule store with a Redis replica, and with Redis gone; each test has its own
    servers."""

    timeout = 30

    def setUp(self):
        if _missing:
            raise SkipTest(_missing)
        self.master = RedisServer(self.mktemp())
        self.master.start()
        self.addCleanup(self.master.stop)

    def store(self, server=None, **kwargs):
        server = server or self.master
        store = RedisStore(reactor, RedisAddress("127.0.0.1", server.port), **kwargs)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    def replica(self):
        replica = RedisServer(self.mktemp(), replica_of=self.master)
        replica.start()
        self.addCleanup(replica.stop)
        replica.wait_in_sync()
        return replica

    async def test_write_waits_for_replica(self):
        """With a replica, an acknowledged write is on the replica already (WAIT 1)."""
        replica = self.replica()
        store = self.store()
        ruleset = await store.put("default", 0, [route_rule("a")])
        self.assertEqual(ruleset.revision, 1)
        self.assertEqual(replica.command("HGET", "a8:c:default", "revision"), b"1")
        self.assertEqual(json.loads(replica.command("HGET", "a8:c:default", "rules")),
                         [route_rule("a")])

    async def test_unconfirmed_write(self):
        """A write no replica confirms in time fails with StoreUnconfirmed, which says
        the rules may be there and names the revision."""
        replica = self.replica()
        store = self.store(replica_timeout=0.2)
        replica.process.send_signal(19)      # SIGSTOP: connected, but answering nothing
        self.addCleanup(lambda: replica.process.send_signal(18))
        error = await self.assertFailure(store.put("default", 0, [route_rule("a")]),
                                         StoreUnconfirmed)
        self.assertIn("revision 1", error.message)
        self.assertIn("no Redis replica confirmed", error.message)
        self.assertEqual(error.status, 503)

    async def test_unavailable_then_back(self):
        """With Redis down, get and put fail at once with StoreUnavailable and nothing
        changes; the store works again by itself once Redis is back."""
        self.master = RedisServer(self.mktemp(), persist=True)
        self.master.start()
        self.addCleanup(self.master.stop)
        store = self.store()
        await store.put("default", 0, [route_rule("a")])
        self.master.kill()
        deadline = reactor.seconds() + 5
        while store.link.connected:
            self.assertLess(reactor.seconds(), deadline)
            await deferLater(reactor, 0.01, lambda: None)
        await self.assertFailure(store.get("default"), StoreUnavailable)
        await self.assertFailure(store.put("default", 1, [route_rule("b")]),
                                 StoreUnavailable)
        self.master.start()
        deadline = reactor.seconds() + 10
        while True:
            try:
                ruleset = await store.get("default")
                break
            except StoreUnavailable:
                self.assertLess(reactor.seconds(), deadline)
                await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (1, ["a"]))
