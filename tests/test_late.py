"""
Tests for L{amalgam8.testing.late}: the store whose Deferreds fire later.
"""

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.controller.store import MemoryStore
from amalgam8.interfaces import IRuleStore
from amalgam8.testing.late import Later, LateStore, settling


class LateStoreTests(SynchronousTestCase):
    def setUp(self):
        self.later = Later()
        self.inner = MemoryStore()
        self.store = LateStore(self.inner, self.later)

    def test_interface(self):
        """The wrapper provides the wrapped store's interfaces."""
        self.assertTrue(verifyObject(IRuleStore, self.store))
        self.assertIs(self.store.wrapped, self.inner)

    def test_held_until_flush(self):
        """Deferreds fire at the flush, with the wrapped store's results, in order."""
        seen = []
        self.store.get("a").addCallback(lambda r: seen.append(("get", r.revision)))
        self.store.put("a", 0, []).addCallback(lambda r: seen.append(("put", r.revision)))
        self.assertEqual((seen, self.later.pending), ([], 2))
        self.assertEqual(self.later.flush(), 2)
        self.assertEqual(seen, [("get", 0), ("put", 1)])

    def test_failure_held(self):
        """A failure is held and delivered like a result."""
        d = self.store.put("a", 5, [])
        self.assertNoResult(d)
        self.later.flush()
        self.failureResultOf(d)

    def test_cancel(self):
        """Cancelling the held Deferred cancels the wrapped one; the flush skips it."""
        d = self.store.wait_for_change("a", 0)
        self.assertEqual(self.inner.waiting(), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.inner.waiting(), 0)
        self.assertEqual(self.later.flush(), 0)

    def test_plain_attributes(self):
        """Methods that return no Deferred, and attributes, are the wrapped store's."""
        self.assertEqual(self.store.namespaces(), [])
        self.assertEqual(self.store.waiting(), 0)

    def test_flush_chains(self):
        """A flush also delivers what the delivered answers led to."""
        seen = []
        self.store.get("a").addCallback(
            lambda _: self.store.get("b").addCallback(lambda r: seen.append(r.revision)))
        self.later.flush()
        self.assertEqual(seen, [0])

    def test_settling(self):
        """settling() alternates the client's flush and the store's until both are quiet."""
        calls = []

        def flush():
            calls.append("http")
            if len(calls) == 1:
                self.store.get("a")

        settling(flush, self.later)()
        self.assertEqual(calls, ["http", "http"])
        self.assertEqual(self.later.pending, 0)
