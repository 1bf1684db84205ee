# -*- test-case-name: tests.test_controller_store -*-
"""
The contract every L{amalgam8.interfaces.IRuleStore} keeps, as a test-case factory.

C{make_store(case)} returns a fresh store; C{reopen(case, store)} returns the store a
restarted controller would get (the same object for a store that keeps nothing). The suite
holds for a store whose Deferreds fire later too: it flushes C{case.later} (an
L{amalgam8.testing.late.Later}) before it looks at a result, so C{LateStore(store,
case.later)} runs it unchanged.
"""

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.errors import Conflict
from amalgam8.interfaces import IRuleStore
from amalgam8.testing.late import FlushingResults

__all__ = ["rule_store_tests", "route_rule", "action_rule"]


def route_rule(rule_id, destination="reviews", priority=0, tags=("v1",), **extra):
    """A valid route rule for tests."""
    rule = {"id": rule_id, "destination": destination, "priority": priority,
            "route": {"backends": [{"tags": list(tags)}]}}
    rule.update(extra)
    return rule


def action_rule(rule_id, destination="ratings", priority=0, **extra):
    """A valid action rule for tests."""
    rule = {"id": rule_id, "destination": destination, "priority": priority,
            "actions": [{"action": "delay", "duration": 1.5, "probability": 0.5}]}
    rule.update(extra)
    return rule


def rule_store_tests(make_store, reopen):
    class RuleStoreContract(FlushingResults, SynchronousTestCase):
        def setUp(self):
            self.setUpLater()
            self.store = make_store(self)
            self.store.startService()
            self.addCleanup(self.store.stopService)

        def get(self, namespace="default", store=None):
            return self.successResultOf((store or self.store).get(namespace))

        def put(self, rules, namespace="default", revision=None):
            if revision is None:
                revision = self.get(namespace).revision
            return self.successResultOf(self.store.put(namespace, revision, rules))

        def test_interface(self):
            """The store provides IRuleStore."""
            self.assertTrue(verifyObject(IRuleStore, self.store))

        def test_empty(self):
            """A namespace never written has revision 0 and no rules."""
            ruleset = self.get()
            self.assertEqual((ruleset.revision, ruleset.rules), (0, ()))

        def test_put_get(self):
            """Rules put are returned as written, priority descending then id."""
            rules = [route_rule("b", priority=1), route_rule("a", priority=1),
                     action_rule("c", priority=5)]
            new = self.put(rules)
            self.assertEqual(new.revision, 1)
            self.assertEqual([r["id"] for r in self.get().rules], ["c", "a", "b"])
            self.assertEqual(self.get().by_id["c"], action_rule("c", priority=5))

        def test_revision_counts(self):
            """Every put raises the revision by one."""
            for n in range(1, 4):
                self.assertEqual(self.put([route_rule(str(n))]).revision, n)

        def test_stale_revision(self):
            """A put from an old revision fails with Conflict and changes nothing."""
            self.put([route_rule("a")])
            self.failureResultOf(self.store.put("default", 0, [route_rule("b")]), Conflict)
            self.assertEqual([r["id"] for r in self.get().rules], ["a"])

        def test_namespaces_isolated(self):
            """Each namespace has its own rules and revision."""
            self.put([route_rule("a")], namespace="red")
            self.assertEqual(self.get("blue").rules, ())
            self.assertEqual(self.get("blue").revision, 0)
            self.assertEqual(self.store.namespaces(), ["red"])

        def test_wait_for_change(self):
            """Waiters of a namespace wake on its next change, all at once."""
            waiters = [self.store.wait_for_change("default", 0) for _ in range(50)]
            other = self.store.wait_for_change("other", 0)
            self.put([route_rule("a")])
            self.assertEqual({self.successResultOf(w) for w in waiters}, {1})
            self.assertNoResult(other)
            other.cancel()
            self.failureResultOf(other, CancelledError)

        def test_wait_immediate(self):
            """A waiter behind the current revision is answered at once."""
            self.put([route_rule("a")])
            self.assertEqual(self.successResultOf(self.store.wait_for_change("default", 0)),
                             1)

        def test_survives_reopen(self):
            """What a restarted controller finds is what was last put (or nothing, for a
            store that keeps nothing)."""
            self.put([route_rule("a"), action_rule("b")], namespace="red")
            self.put([route_rule("c")], namespace="red")
            again = reopen(self, self.store)
            ruleset = self.get("red", store=again)
            self.assertEqual((ruleset.revision, [r["id"] for r in ruleset.rules]),
                             (2, ["c"]))

    return RuleStoreContract
