"""
Tests for L{amalgam8.controller.store.etcd} against real etcd members on free loopback ports:
the IRuleStore contract (the memory, file and Redis stores' suite), replicas racing and
waking each other, writes whose answer was lost, etcd going away and coming back, and two
real a8controller processes on one etcd.

The synchronous suites share one etcd member per test process (L{shared_etcd}), each test
under a key prefix of its own; the tests that stop etcd start their own member.
"""

import json
import os
import time
import uuid

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from amalgam8.controller.store.etcd import EtcdStore, parse_prefix
from amalgam8.errors import Conflict, PayloadTooLarge, StoreUnavailable, StoreUnconfirmed
from amalgam8.etcd import EtcdUnavailable, EtcdV3, etcd_http_client
from amalgam8.interfaces import IRuleStore
from amalgam8.testing.controller import action_rule, route_rule, rule_store_tests
from amalgam8.testing.etcd import SharedEtcd, etcd_missing, shared_etcd, start_etcd
from amalgam8.testing.redis import Settle, spin
from tests.helpers import ServerProcesses

_missing = etcd_missing()
LOCAL = "tcp:0:interface=127.0.0.1"


class EtcdStoreCase:
    """
    A mixin for synchronous tests of etcd rule stores on this process's shared etcd, under
    a key prefix of the test's own: C{self.later} is a L{Settle} of every store made by
    L{rule_store}, and each one is stopped in clean-up. It is the C{setUpLater} the
    contract suite calls.
    """

    def setUpLater(self):
        if _missing:
            raise SkipTest(_missing)
        self.etcd = shared_etcd()
        self.reactor = reactor
        self.prefix = "/a8test/{}/".format(uuid.uuid4().hex)
        self.later = Settle(reactor)
        self.http, pool = etcd_http_client(reactor)
        self.addCleanup(lambda: spin(pool.closeCachedConnections(), reactor))
        self.v3 = EtcdV3(self.http, self.etcd.urls, reactor)

    def rule_store(self, start=False, client=None, **kwargs):
        store = EtcdStore(client or self.v3, reactor, prefix=self.prefix, **kwargs)
        self.later.track(store)
        self.addCleanup(self._closed, store)
        if start:
            store.startService()
        return store

    def _closed(self, store):
        if store.running:
            store.stopService()
        if store.stopping is not None:
            spin(store.stopping, reactor)

    def result(self, deferred):
        """Run the reactor until C{deferred} has a result; that result."""
        self.later.wait(deferred)
        return self.successResultOf(deferred)

    def failed(self, deferred, *types):
        """Run the reactor until C{deferred} has a result: a failure of C{types}."""
        self.later.wait(deferred)
        return self.failureResultOf(deferred, *types)

    def etcd_do(self, coroutine):
        """Run a call of the test's own etcd client to its end; its result."""
        return self.result(Deferred.fromCoroutine(coroutine))

    def raw(self, key):
        """The value of C{key} under the test's prefix, or L{None}."""
        kvs = self.etcd_do(self.v3.range(self.prefix + key)).kvs
        return kvs[0].value if kvs else None


class EtcdRuleStoreContractTests(EtcdStoreCase, rule_store_tests(
        lambda case: case.rule_store(),
        lambda case, store: case.rule_store(start=True))):
    """The etcd rule store keeps the IRuleStore contract; a new store on the same etcd
    (a restarted controller) finds the rules."""


class LossyClient:
    """
    The test's real etcd client, except for the writing transactions that L{plan} names,
    one plan entry per such transaction, in order:

      - C{"applied"}: sent and applied, then its answer is lost;
      - C{"lost"}: never sent, but reported as possibly applied;
      - C{"held"}: kept (in L{held}) to be sent later by the test, reported as possibly
        applied;
      - C{"down"}: refused (certainly not sent), as by a stopped etcd;
      - C{"gate"}: sent once the test fires L{gate}.

    and for the reads (ranges, readonly transactions), one L{read_plan} entry each:
    C{"503"} (an endpoint answered 503, as while etcd elects a leader), C{"refused"} (no
    endpoint could be reached) or C{"gate"} (sent once the test fires L{gate}).
    """

    def __init__(self, client):
        self._client = client
        self.plan = []
        self.held = []
        self.writes = 0
        self.gate = Deferred()
        self.read_plan = []
        self.reads = 0

    async def _reading(self):
        self.reads += 1
        what = self.read_plan.pop(0) if self.read_plan else None
        if what == "gate":
            await self.gate
        if what == "503":
            raise EtcdUnavailable("etcdserver: leader changed", status=503,
                                  attempts=[("http://x", "HTTP 503: leader changed")])
        if what == "refused":
            raise EtcdUnavailable("no etcd endpoint answered: http://x: Connection was "
                                  "refused by other side", attempts=[
                ("http://x", "Connection was refused by other side")])

    async def range(self, *args, **kwargs):
        await self._reading()
        return await self._client.range(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)

    async def txn(self, compare=(), success=(), failure=(), readonly=False, **kwargs):
        if readonly:
            await self._reading()
        elif any("request_put" in op for op in success):
            self.writes += 1
            what = self.plan.pop(0) if self.plan else None
            if what == "gate":
                await self.gate
                what = None
            if what == "applied":
                await self._client.txn(compare, success, failure)
            if what == "held":
                self.held.append((compare, success, failure))
            if what == "down":
                raise EtcdUnavailable("connection refused (test)")
            if what is not None:
                raise EtcdUnavailable("the connection broke (test)", maybe_applied=True)
        return await self._client.txn(compare, success, failure, readonly=readonly,
                                      **kwargs)


class EtcdRuleReplicaTests(EtcdStoreCase, SynchronousTestCase):
    """Two rule stores on one etcd are two replicas of one controller."""

    def setUp(self):
        self.setUpLater()
        self.one = self.rule_store(start=True)
        self.two = self.rule_store(start=True)

    def test_interface(self):
        """The store provides IRuleStore."""
        self.assertTrue(verifyObject(IRuleStore, self.one))

    def test_shared(self):
        """Rules put through one replica are read through the other, with their
        revision; the other's namespaces() learns of them from its watch."""
        self.result(self.one.put("red", 0, [route_rule("a")]))
        self.later.flush()
        self.assertEqual(self.two.namespaces(), ["red"])
        ruleset = self.result(self.two.get("red"))
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (1, ["a"]))
        self.result(self.two.put("red", 1, []))
        self.later.flush()
        self.assertEqual(self.one.namespaces(), [])
        self.assertEqual(self.result(self.one.get("red")).rules, ())

    def test_listed_at_start(self):
        """A store started on an etcd that has rules lists their namespaces and knows
        their revisions before any read."""
        self.result(self.one.put("red", 0, [route_rule("a")]))
        self.result(self.one.put("blue", 0, []))
        third = self.rule_store(start=True)
        self.later.flush()
        self.assertEqual(third.namespaces(), ["red"])
        self.assertEqual(self.successResultOf(third.wait_for_change("red", 0)), 1)

    def test_race_no_lost_update(self):
        """Two replicas putting from the same revision: exactly one wins, the other gets
        Conflict, and the revision goes up by one each round."""
        wins = conflicts = 0
        for n in range(20):
            revision = self.result(self.one.get("default")).revision
            self.result(self.two.get("default"))
            first = self.one.put("default", revision, [route_rule("one%d" % n)])
            second = self.two.put("default", revision, [route_rule("two%d" % n)])
            for d in (first, second):
                self.later.wait(d)
                if isinstance(d.result, Failure):
                    self.failed(d, Conflict)
                    conflicts += 1
                else:
                    self.assertEqual(self.successResultOf(d).revision, revision + 1)
                    wins += 1
        self.assertEqual((wins, conflicts), (20, 20))
        self.assertEqual(self.result(self.two.get("default")).revision, 20)

    def test_race_appends(self):
        """Replicas each adding rules by read-modify-write with retries on Conflict (as
        the API does) end with every rule, and every write got its own revision."""
        async def add(store, rule_id):
            while True:
                ruleset = await store.get("default")
                try:
                    return await store.put("default", ruleset.revision,
                                           list(ruleset.rules) + [route_rule(rule_id)])
                except Conflict:
                    continue

        writes = [Deferred.fromCoroutine(add(store, "%s%d" % (name, n)))
                  for n in range(15) for name, store in (("a", self.one), ("b", self.two))]
        self.result(gatherResults(writes))
        ruleset = self.result(self.one.get("default"))
        self.assertEqual((len(ruleset.rules), ruleset.revision), (30, 30))
        self.assertEqual(sorted(w.result.revision for w in writes), list(range(1, 31)))

    def test_wake_across_replicas(self):
        """A put through one replica wakes the blocking reads held on the other (well
        within 2 s; bench/controller_stores measures how fast)."""
        waiters = [self.two.wait_for_change("default", 0) for _ in range(20)]
        self.later.flush()
        self.assertFalse(any(w.called for w in waiters))
        started = time.monotonic()
        self.one.put("default", 0, [route_rule("a")])
        self.result(gatherResults(waiters))
        elapsed = time.monotonic() - started
        self.assertEqual({w.result for w in waiters}, {1})
        self.assertLess(elapsed, 2.0, "woken after {:.3f} s".format(elapsed))

    def test_read_of_another_write_never_stale(self):
        """A replica that read revision 1 reads the other replica's revision 2 rules, not
        its own copy, and its own copy again when nothing changed."""
        self.result(self.one.put("default", 0, [route_rule("a")]))
        held = self.result(self.two.get("default"))
        self.assertIs(self.result(self.two.get("default")), held)
        self.result(self.one.put("default", 1, [action_rule("b")]))
        ruleset = self.result(self.two.get("default"))
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (2, ["b"]))

    def test_layout(self):
        """The rules key holds a header line and the rules exactly as written (unknown
        1.x fields included); each write leaves a record of its stamp."""
        rule = route_rule("a", priority=3)
        rule["route"]["http_req_timeout"] = 2.5
        rule["tags"] = ["é", "x"]
        self.result(self.one.put("ns/é", 0, [rule]))
        self.assertEqual(self.result(self.two.get("ns/é")).by_id["a"], rule)
        head, rest = self.raw("rules/ns%2F%C3%A9").split(b"\n", 1)
        header = json.loads(head)
        self.assertEqual((header["revision"], header["rules"]), (1, 1))
        self.assertEqual(json.loads(rest), [rule])
        self.assertEqual(self.raw("writes/ns%2F%C3%A9/{:020d}".format(1)).decode(),
                         header["stamp"])

    def test_history_kept(self):
        """Each namespace keeps the records of its last C{history} writes only."""
        store = self.rule_store(start=True, history=3)
        for revision in range(5):
            self.result(store.put("default", revision, [route_rule("r%d" % revision)]))
        kvs = self.etcd_do(self.v3.range(self.prefix + "writes/", prefix=True)).kvs
        self.assertEqual([kv.key.decode().rsplit("/", 1)[1] for kv in kvs],
                         ["{:020d}".format(n) for n in (3, 4, 5)])

    def test_corrupt_value(self):
        """A rules key that is not this store's gives StoreUnavailable naming it (and a
        write to it changes nothing); the watch ignores it."""
        self.etcd_do(self.v3.put(self.prefix + "rules/default", b"not ours"))
        failure = self.failed(self.one.get("default"), StoreUnavailable)
        self.assertIn("rules/default", failure.value.message)
        self.failed(self.one.put("default", 0, [route_rule("a")]),
                             StoreUnavailable)
        self.assertEqual(self.raw("rules/default"), b"not ours")
        self.assertEqual(self.one.namespaces(), [])
        self.flushLoggedErrors()

    def test_too_large(self):
        """Rules too large for etcd (1.5 MiB a request) are refused with
        PayloadTooLarge (413), and nothing changed."""
        self.result(self.one.put("default", 0, [route_rule("a")]))
        big = [route_rule("r%d" % n, note="x" * 100000) for n in range(17)]
        failure = self.failed(self.one.put("default", 1, big), PayloadTooLarge)
        self.assertEqual(failure.value.status, 413)
        self.assertIn("too large for etcd", failure.value.message)
        ruleset = self.result(self.two.get("default"))
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (1, ["a"]))

    def test_compacted_watch_lists_again(self):
        """A replica whose watch must resume from a compacted revision lists the
        namespaces again: what changed meanwhile is noted, and wakes its waiters."""
        self.result(self.one.put("default", 0, [route_rule("a")]))
        self.later.flush()
        waiter = self.two.wait_for_change("default", 1)
        self.two.retry = (0.2, 0.2)
        self.two._watch.cancel()          # the stream breaks
        self.result(self.one.put("default", 1, [route_rule("b")]))
        self.result(self.one.put("red", 0, [route_rule("c")]))
        for n in range(3):
            self.etcd_do(self.v3.put("/a8test/elsewhere", str(n)))
        revision = self.etcd_do(self.v3.range("/a8test/elsewhere")).revision
        self.etcd_do(self.v3.compact(revision))
        self.assertEqual(self.result(waiter), 2)
        self.later.flush()
        self.assertEqual(self.two.namespaces(), ["default", "red"])


class EtcdLostAnswerTests(EtcdStoreCase, SynchronousTestCase):
    """Writes whose answer was lost are resolved before the caller hears of them."""

    def setUp(self):
        self.setUpLater()
        self.lossy = LossyClient(self.v3)
        self.store = self.rule_store(start=True, client=self.lossy)
        self.other = self.rule_store(start=True)
        self.result(self.store.put("default", 0, [route_rule("a")]))
        self.lossy.writes = 0

    def stored(self):
        ruleset = self.result(self.other.get("default"))
        return ruleset.revision, [r["id"] for r in ruleset.rules]

    def test_applied(self):
        """A write applied whose answer was lost is found applied: success, once."""
        self.lossy.plan = ["applied"]
        ruleset = self.result(self.store.put("default", 1, [route_rule("b")]))
        self.assertEqual(ruleset.revision, 2)
        self.assertEqual(self.stored(), (2, ["b"]))
        self.assertEqual(self.lossy.writes, 2)     # the write, then a fence that failed

    def test_not_sent(self):
        """A write reported as possibly applied that never was is fenced off and sent
        again: success, at the next revision."""
        self.lossy.plan = ["lost"]
        ruleset = self.result(self.store.put("default", 1, [route_rule("b")]))
        self.assertEqual(ruleset.revision, 2)
        self.assertEqual(self.stored(), (2, ["b"]))

    def test_late_write_fenced(self):
        """A write still on its way while it is resolved can never apply after the
        fence: only the write sent again lands, and the revision counts it once."""
        self.lossy.plan = ["held"]
        ruleset = self.result(self.store.put("default", 1, [route_rule("b")]))
        self.assertEqual(ruleset.revision, 2)
        [late] = self.lossy.held
        self.assertFalse(self.etcd_do(self.v3.txn(*late)).succeeded)
        self.assertEqual(self.stored(), (2, ["b"]))

    def test_other_write_won(self):
        """When another replica made the next revision meanwhile, the lost write (which
        did not apply) is a Conflict, and the other's rules stay."""
        self.lossy.plan = ["held", "gate"]
        d = self.store.put("default", 1, [route_rule("b")])
        # The other replica writes before the resolution's fence is sent.
        self.result(self.other.put("default", 1, [route_rule("c")]))
        self.assertNoResult(d)
        self.lossy.gate.callback(None)
        self.failed(d, Conflict)
        self.assertEqual(self.stored(), (2, ["c"]))

    def test_unreachable_while_resolving(self):
        """When etcd cannot be reached to resolve a lost write, the caller gets
        StoreUnconfirmed (503), saying the rules may be there, after resolve_timeout."""
        self.store.resolve_timeout = 0.3
        self.lossy.plan = ["applied"] + ["down"] * 100
        started = time.monotonic()
        failure = self.failed(self.store.put("default", 1, [route_rule("b")]),
                                       StoreUnconfirmed)
        self.assertLess(time.monotonic() - started, 3)
        self.assertEqual(failure.value.status, 503)
        self.assertIn("may have been written (revision 2)", failure.value.message)
        self.assertEqual(self.stored(), (2, ["b"]))

    def test_refused(self):
        """A write refused before it was sent fails at once with StoreUnavailable and
        changes nothing."""
        self.lossy.plan = ["down"]
        failure = self.failed(self.store.put("default", 1, [route_rule("b")]),
                                       StoreUnavailable)
        self.assertNotIsInstance(failure.value, StoreUnconfirmed)
        self.assertIn("is unavailable", failure.value.message)
        self.assertEqual(self.stored(), (1, ["a"]))
        self.assertEqual(self.lossy.writes, 1)


class EtcdElectionReadTests(EtcdStoreCase, SynchronousTestCase):
    """Reads while etcd cannot serve (503: it elects a leader) or cannot be reached."""

    def setUp(self):
        self.setUpLater()
        self.lossy = LossyClient(self.v3)
        self.store = self.rule_store(start=True, client=self.lossy, election_grace=2.0)
        self.result(self.rule_store(start=True).put("default", 0, [route_rule("a")]))
        self.lossy.reads = 0

    def test_through_an_election(self):
        """A read answered 503 is tried again, and answered once etcd serves again."""
        self.lossy.read_plan = ["503", "503"]
        ruleset = self.result(self.store.get("default"))
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (1, ["a"]))
        self.assertEqual(self.lossy.reads, 3)

    def test_unreachable_at_once(self):
        """A read no endpoint could be reached for fails at once with StoreUnavailable."""
        self.lossy.read_plan = ["refused"]
        failure = self.failed(self.store.get("default"), StoreUnavailable)
        self.assertIn("refused", failure.value.message)
        self.assertEqual(self.lossy.reads, 1)

    def test_gives_up(self):
        """A read still answered 503 after election_grace fails with StoreUnavailable."""
        self.store.election_grace = 0.3
        self.lossy.read_plan = ["503"] * 100
        started = time.monotonic()
        failure = self.failed(self.store.get("default"), StoreUnavailable)
        self.assertLess(time.monotonic() - started, 2)
        self.assertIn("leader changed", failure.value.message)
        self.assertGreater(self.lossy.reads, 2)


class EtcdSharedReadTests(EtcdStoreCase, SynchronousTestCase):
    """Reads of one namespace at once share etcd's reads, and none answers stale."""

    def setUp(self):
        self.setUpLater()
        self.lossy = LossyClient(self.v3)
        self.store = self.rule_store(start=True, client=self.lossy)
        self.other = self.rule_store(start=True)
        self.result(self.other.put("default", 0, [route_rule("a")]))
        self.later.flush()
        self.lossy.reads = 0

    def test_shared(self):
        """Fifty reads at once cost etcd two reads (the first, then one for the rest)."""
        reads = [self.store.get("default") for _ in range(50)]
        self.result(gatherResults(reads))
        self.assertEqual({d.result.revision for d in reads}, {1})
        self.assertEqual(self.lossy.reads, 2)

    def test_never_stale(self):
        """A read asked for after a change was made is answered by a read sent after it,
        even while an earlier read is still with etcd."""
        self.lossy.read_plan = ["gate"]
        first = self.store.get("default")             # with etcd, held
        self.result(self.other.put("default", 1, [route_rule("b")]))
        second = self.store.get("default")            # asked after the change
        self.assertNoResult(second)
        self.lossy.gate.callback(None)
        ruleset = self.result(second)
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (2, ["b"]))
        self.result(first)
        self.assertEqual(self.lossy.reads, 2)

    def test_cancelled_reader(self):
        """A reader that goes away does not take the shared read with it."""
        self.lossy.read_plan = ["gate"]
        first = self.store.get("default")
        second = self.store.get("default")
        third = self.store.get("default")
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.lossy.gate.callback(None)
        self.assertEqual(self.result(first).revision, 1)
        self.assertEqual(self.result(third).revision, 1)

    def test_failure_to_each(self):
        """A shared read that fails fails every caller it was for, each with
        StoreUnavailable; the next read is a fresh one."""
        self.lossy.read_plan = ["gate", "refused"]
        first = self.store.get("default")
        rest = [self.store.get("default") for _ in range(3)]
        self.lossy.gate.callback(None)
        self.assertEqual(self.result(first).revision, 1)
        for d in rest:
            self.failed(d, StoreUnavailable)
        self.assertEqual(self.lossy.reads, 2)
        self.assertEqual(self.result(self.store.get("default")).revision, 1)


class PrefixTests(SynchronousTestCase):
    """The key prefix setting."""

    def test_good(self):
        """A key path gets its trailing slash."""
        self.assertEqual(parse_prefix("/a8/prod"), "/a8/prod/")
        self.assertEqual(parse_prefix(" /a8/ "), "/a8/")

    def test_bad(self):
        """A prefix that is not a key path is refused."""
        for bad in ("a8/", "", "/a8//x", "/a 8/"):
            self.assertRaises(ValueError, parse_prefix, bad)


class EtcdOutageTests(TestCase):
    """etcd stopped and started again under running stores (a member of the test's own)."""

    timeout = 30
    if _missing:
        skip = _missing

    async def setUp(self):
        self.etcd = await start_etcd(self, reactor)
        http, pool = etcd_http_client(reactor)
        self.addCleanup(deferLater, reactor, 0.01, lambda: None)
        self.addCleanup(pool.closeCachedConnections)
        self.http = http

    def store(self):
        store = EtcdStore(EtcdV3(self.http, self.etcd.urls, reactor), reactor,
                          retry=(0.05, 0.2))
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def eventually(self, check, timeout=10):
        deadline = reactor.seconds() + timeout
        while not check():
            self.assertLess(reactor.seconds(), deadline, "not so within {} s".format(timeout))
            await deferLater(reactor, 0.02, lambda: None)

    async def test_unavailable_then_back(self):
        """With etcd down, reads and writes fail with StoreUnavailable and nothing
        changes; once etcd is back the stores serve again by themselves, their watches
        resume, and a reader held across the outage is woken by the next change."""
        one, two = self.store(), self.store()
        await one.put("default", 0, [route_rule("a")])
        await self.eventually(lambda: one.watching and two.watching)
        waiter = one.wait_for_change("default", 1)
        await self.etcd.stop_member(0)
        await self.eventually(lambda: not one.watching)
        await self.assertFailure(one.get("default"), StoreUnavailable)
        error = await self.assertFailure(two.put("default", 1, [route_rule("b")]),
                                         StoreUnavailable)
        self.assertIn("unavailable", error.message)
        self.assertFalse(waiter.called)

        await self.etcd.start_member(0)
        ruleset = await one.get("default")
        self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]), (1, ["a"]))
        await self.eventually(lambda: one.watching and two.watching)
        started = reactor.seconds()
        await two.put("default", 1, [route_rule("b")])
        self.assertEqual(await waiter.addTimeout(2, reactor), 2)
        self.assertLess(reactor.seconds() - started, 2)
        self.assertEqual([r["id"] for r in (await one.get("default")).rules], ["b"])

    async def test_change_while_watch_down(self):
        """A change made while a replica's watch was down is delivered when it resumes
        (from the revision after the last one it saw) and wakes its readers."""
        one = self.store()
        await one.put("default", 0, [route_rule("a")])
        await self.eventually(lambda: one.watching)
        waiter = one.wait_for_change("default", 1)
        one.retry = (0.5, 0.5)
        one._watch.cancel()
        await self.eventually(lambda: not one.watching)
        other = self.store()
        await other.put("default", 1, [route_rule("b")])
        self.assertEqual(await waiter.addTimeout(5, reactor), 2)


class EtcdTLSTests(TestCase):
    """The store over https, checking etcd's certificate against the CA it is given."""

    timeout = 30
    if _missing:
        skip = _missing

    authority = None

    def setUp(self):
        from amalgam8.testing.kubernetes import TestCA

        if EtcdTLSTests.authority is None:          # made once: RSA keys take a while
            EtcdTLSTests.authority = TestCA()
        authority = EtcdTLSTests.authority
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.ca = os.path.join(directory, "ca.pem")
        certificate = os.path.join(directory, "etcd.crt")
        key = os.path.join(directory, "etcd.key")
        split = authority.server_pem.index(b"-----BEGIN CERTIFICATE-----")
        for path, data in ((self.ca, authority.ca_pem), (key, authority.server_pem[:split]),
                           (certificate, authority.server_pem[split:])):
            with open(path, "wb") as f:
                f.write(data)
        self.etcd = SharedEtcd(os.path.join(directory, "etcd"),
                               tls=(certificate, key, self.ca))
        self.etcd.start()
        self.addCleanup(self.etcd.stop)

    def store(self, ca):
        store = EtcdStore.from_settings(reactor, self.etcd.urls, ca=ca)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def test_trusted(self):
        """With the CA of etcd's certificate, the store works over https (watch too)."""
        self.assertTrue(self.etcd.urls[0].startswith("https://"))
        store = self.store(self.ca)
        waiter = store.wait_for_change("default", 0)
        await store.put("default", 0, [route_rule("a")])
        self.assertEqual(await waiter.addTimeout(5, reactor), 1)
        self.assertEqual([r["id"] for r in (await store.get("default")).rules], ["a"])

    async def test_untrusted(self):
        """Without it (the system's authorities), etcd's certificate is refused: reads and
        writes fail with StoreUnavailable, and nothing is written."""
        store = self.store(None)
        error = await self.assertFailure(store.get("default"), StoreUnavailable)
        self.assertIn("certificate", error.message)
        error = await self.assertFailure(store.put("default", 0, [route_rule("a")]),
                                         StoreUnavailable)
        self.assertNotIsInstance(error, StoreUnconfirmed)     # certainly not sent
        trusted = self.store(self.ca)
        self.assertEqual((await trusted.get("default")).revision, 0)


class EtcdReplicaProcessTests(ServerProcesses, TestCase):
    """Two real C{twistd -n a8controller} on one etcd, one of them serving from two
    processes (C{--processes 2}): one service."""

    timeout = 60
    if _missing:
        skip = _missing

    async def setUp(self):
        self.etcd = await start_etcd(self, reactor)
        self.setUpProcesses()

    async def spawn(self, *args):
        env = {"A8_DATABASE_TYPE": "etcd", "A8_DATABASE_HOST": ",".join(self.etcd.urls)}
        return await ServerProcesses.spawn(self, "a8controller", env, listen=LOCAL, args=args)

    async def call(self, method, url, body=None, timeout=10):
        response, content = await ServerProcesses.call(self, method, url, body, timeout)
        return response, json.loads(content or b"null")

    async def test_replicas(self):
        """A rule written through one controller wakes the blocking read held on the
        other and is read back there with the same revision; with etcd down both answer
        503 error_store_unavailable; both serve again by themselves once it is back."""
        one = await self.spawn("--processes", "2")
        two = await self.spawn()
        response, body = await self.call("GET", two + "/v1/rules")
        self.assertEqual((response.code, body["revision"]), (200, 0))
        held = Deferred.fromCoroutine(
            self.call("GET", two + "/v1/rules?wait=20s&revision=0", timeout=25))
        await deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(held.called)
        rule = {"id": "r1", "destination": "reviews",
                "route": {"backends": [{"tags": ["v1"]}]}}
        response, body = await self.call("POST", one + "/v1/rules", {"rules": [rule]})
        self.assertEqual(response.code, 201, body)
        started = reactor.seconds()
        response, body = await held
        self.assertLess(reactor.seconds() - started, 2.0)
        self.assertEqual((body["revision"], [r["id"] for r in body["rules"]]), (1, ["r1"]))
        for _ in range(4):     # whichever process of the first answers
            response, body = await self.call("GET", one + "/v1/rules")
            self.assertEqual(body["revision"], 1)

        await self.etcd.stop_member(0)
        second = dict(rule, id="r2")
        for base in (one, two):
            response, body = await self.call("POST", base + "/v1/rules",
                                             {"rules": [second]})
            self.assertEqual(response.code, 503, body)
            self.assertEqual(body["error"], "error_store_unavailable")
            self.assertIn("etcd", body["description"])
        await self.etcd.start_member(0)
        deadline = reactor.seconds() + 15
        while True:
            response, body = await self.call("POST", two + "/v1/rules",
                                             {"rules": [second]})
            if response.code != 503 or reactor.seconds() > deadline:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(response.code, 201, body)
        response, body = await self.call("GET", one + "/v1/rules")
        self.assertEqual((body["revision"], sorted(r["id"] for r in body["rules"])),
                         (2, ["r1", "r2"]))
        self.assertNoTraceback()
