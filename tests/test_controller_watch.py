"""
Tests for L{amalgam8.controller.watch}: revision snapshots, the encoding cache and grouped
blocking reads, on a store that answers at once and on one that answers later.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.controller.model import RuleSet
from amalgam8.controller.store import MemoryStore
from amalgam8.controller.watch import RuleWatch
from amalgam8.testing.controller import route_rule
from amalgam8.testing.late import FlushingResults, LateStore


class RuleWatchTests(FlushingResults, SynchronousTestCase):
    late = False

    def setUp(self):
        self.setUpLater()
        self.clock = Clock()
        self.store = MemoryStore()
        self.store.startService()
        self.addCleanup(self.store.stopService)
        store = LateStore(self.store, self.later) if self.late else self.store
        self.watch = RuleWatch(store, self.clock, limit=3)
        self.builds = []

    def build(self, ruleset):
        self.builds.append(ruleset.revision)
        return b"%d:%d" % (ruleset.revision, len(ruleset.rules))

    def put(self, *ids):
        revision = self.successResultOf(self.store.get("ns")).revision
        return self.successResultOf(self.store.put("ns", revision,
                                                   [route_rule(i) for i in ids]))

    def read(self, key="k", **kwargs):
        return self.watch.read("ns", key, self.build, **kwargs)

    def test_snapshot(self):
        """current() records the namespace's snapshot; an older one never replaces it."""
        self.assertIsNone(self.watch.snapshot("ns"))
        self.put("a")
        self.assertEqual(self.successResultOf(self.watch.current("ns")).revision, 1)
        self.assertEqual(self.watch.snapshot("ns").revision, 1)
        self.watch.record(RuleSet(0, []), "ns")
        self.assertEqual(self.watch.snapshot("ns").revision, 1)

    def test_encoded_once_per_revision(self):
        """A read encodes once per revision and key; a change invalidates."""
        self.put("a")
        self.assertEqual(self.successResultOf(self.read())[1:], (b"1:1", False))
        self.assertEqual(self.successResultOf(self.read())[1:], (b"1:1", True))
        self.put("a", "b")
        self.assertEqual(self.successResultOf(self.read())[1:], (b"2:2", False))
        self.assertEqual(self.builds, [1, 2])

    def test_never_stale(self):
        """An encoding of an older revision is never served for a newer one, even when the
        watch learns of the change only from the store."""
        self.put("a")
        self.successResultOf(self.read())
        self.put("a", "b")
        ruleset, body, cached = self.successResultOf(self.read())
        self.assertEqual((ruleset.revision, body, cached), (2, b"2:2", False))

    def test_reused_revision_never_stale(self):
        """A store that answers a revision again with other rules (one that lost its data
        and counted again) gets its rules encoded, not the cached encoding of the rules
        that revision had before; the new rules' encoding is then the one cached."""
        self.put("a")
        self.assertEqual(self.successResultOf(self.read())[1:], (b"1:1", False))
        self.store._sets["ns"] = RuleSet(1, [route_rule("b"), route_rule("c")])
        ruleset, body, cached = self.successResultOf(self.read())
        self.assertEqual((ruleset.revision, body, cached), (1, b"1:2", False))
        self.assertEqual(self.successResultOf(self.read())[1:], (b"1:2", True))
        self.assertEqual(self.watch.snapshot("ns").by_id.keys(), {"b", "c"})

    def test_limit(self):
        """At most limit encodings are kept per revision; the rest are made each time."""
        self.put("a")
        for key in "abcd":
            self.successResultOf(self.read(key))
        self.assertTrue(self.successResultOf(self.read("c"))[2])
        self.assertFalse(self.successResultOf(self.read("d"))[2])

    def test_blocking_group(self):
        """Blocking reads of one key at one revision share a store waiter and one
        encoding of the new revision."""
        self.put("a")
        readers = [self.read(wait=30, revision=1) for _ in range(10)]
        for d in readers:
            self.assertNoResult(d)
        self.assertEqual((self.store.waiting(), self.watch.waiting, self.watch.groups),
                         (1, 10, 1))
        self.put("a", "b")
        bodies = {self.successResultOf(d)[1] for d in readers}
        self.assertEqual(bodies, {b"2:2"})
        self.assertEqual(self.builds, [2])
        self.assertEqual((self.store.waiting(), self.watch.waiting), (0, 0))

    def test_blocking_timeout(self):
        """A blocking read whose wait runs out answers the unchanged revision."""
        self.put("a")
        d = self.read(wait=5, revision=1)
        self.assertNoResult(d)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d)[0].revision, 1)
        self.assertEqual((self.store.waiting(), self.clock.getDelayedCalls()), (0, []))

    def test_blocking_cancel(self):
        """Cancelling a blocking read leaves no waiter and no timer."""
        self.put("a")
        d = self.read(wait=5, revision=1)
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual((self.store.waiting(), self.watch.waiting,
                          self.clock.getDelayedCalls()), (0, 0, []))


class LateRuleWatchTests(RuleWatchTests):
    """The same, on a store whose answers come later."""

    late = True

    def test_waits_for_store(self):
        """A read is answered only once the store has answered."""
        d = self.read()
        self.assertFalse(d.called)
        self.assertEqual(self.successResultOf(d)[0].revision, 0)
