"""
Tests for L{amalgam8.watch}: grouped blocking reads, on a store that answers at once and on
one that answers later.
"""

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.watch import GroupedWaits


class FakeStore:
    """Counts the store waiters; C{change(version)} wakes them all."""

    def __init__(self):
        self.version = 1
        self.waiters = []

    def wait_for_change(self, namespace, version):
        if self.version > version:
            return succeed(self.version)
        d = Deferred(lambda d: self.waiters.remove(d))
        self.waiters.append(d)
        return d

    def change(self):
        self.version += 1
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(self.version)

    def fetch(self):
        return succeed(self.version)


class GroupedWaitsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = FakeStore()
        self.waits = GroupedWaits(self.clock, self.store.wait_for_change)
        self.answers = 0

    def answer(self):
        self.answers += 1
        return "at {}".format(self.store.version)

    def wait(self, key="k", timeout=30):
        return self.waits.wait(("ns", 1, key), "ns", 1, timeout, self.answer)

    def test_one_waiter_per_group(self):
        """Many readers of one key hold one store waiter and get one answer, made once."""
        readers = [self.wait() for _ in range(100)]
        other = self.wait("other")
        self.assertEqual((len(self.store.waiters), self.waits.waiting, self.waits.groups),
                         (2, 101, 2))
        self.store.change()
        self.assertEqual({self.successResultOf(d) for d in readers + [other]}, {"at 2"})
        self.assertEqual(self.answers, 2)
        self.assertEqual((self.waits.waiting, self.waits.groups), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_answers_that_reader(self):
        """A reader whose wait runs out is answered alone, with the state of that moment."""
        short = self.wait(timeout=5)
        long = self.wait(timeout=50)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(short), "at 1")
        self.assertNoResult(long)
        self.assertEqual(len(self.store.waiters), 1)
        self.clock.advance(45)
        self.assertEqual(self.successResultOf(long), "at 1")
        self.assertEqual((self.store.waiters, self.waits.waiting), ([], 0))

    def test_cancel_leaves(self):
        """A cancelled reader leaves; the last one out cancels the store waiter."""
        first, second = self.wait(), self.wait()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual((len(self.store.waiters), self.waits.waiting), (1, 1))
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual((self.store.waiters, self.waits.waiting, self.waits.groups),
                         ([], 0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_later(self):
        """An answer that comes later reaches every reader of the group when it comes."""
        later = Deferred()
        readers = [self.waits.wait("k", "ns", 1, 30, lambda: later) for _ in range(3)]
        self.store.change()
        for d in readers:
            self.assertNoResult(d)
        later.callback("late")
        self.assertEqual([self.successResultOf(d) for d in readers], ["late"] * 3)

    def test_cancel_while_answer_made(self):
        """A reader that goes away while the group's answer is being made is dropped."""
        later = Deferred()
        first = self.waits.wait("k", "ns", 1, 30, lambda: later)
        second = self.waits.wait("k", "ns", 1, 30, lambda: later)
        self.store.change()
        first.cancel()
        later.callback("late")
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.successResultOf(second), "late")

    def test_failed_answer(self):
        """An answer that fails fails every reader of the group."""
        readers = [self.waits.wait("k", "ns", 1, 30, lambda: fail(ValueError("x")))
                   for _ in range(2)]
        self.store.change()
        for d in readers:
            self.failureResultOf(d, ValueError)

    def test_store_fails(self):
        """A store waiter that fails fails its readers and leaves nothing behind."""
        broken = Deferred()
        waits = GroupedWaits(self.clock, lambda namespace, version: broken)
        readers = [waits.wait("k", "ns", 1, 30, self.answer) for _ in range(2)]
        broken.errback(RuntimeError("store down"))
        for d in readers:
            self.failureResultOf(d, RuntimeError)
        self.assertEqual((waits.waiting, waits.groups, self.clock.getDelayedCalls()),
                         (0, 0, []))

    def test_read_at_once(self):
        """read() answers at once without wait, without a version, or past the version."""
        for timeout, since in ((None, 1), (30, None), (30, 0)):
            d = self.waits.read("k", "ns", since, timeout, self.store.fetch, int, str)
            self.assertEqual(self.successResultOf(d), "1")
        self.assertEqual(self.waits.waiting, 0)

    def test_read_waits(self):
        """read() at the current version waits, then builds from a fresh fetch."""
        d = self.waits.read("k", "ns", 1, 30, self.store.fetch, int, str)
        self.assertNoResult(d)
        self.store.change()
        self.assertEqual(self.successResultOf(d), "2")

    def test_store_past_the_version(self):
        """
        A wait on a store already past the version (its waiter fired at once) answers the
        reader at once and leaves no group behind.
        """
        self.store.version = 2
        d = self.wait()
        self.assertEqual(self.successResultOf(d), "at 2")
        self.assertEqual((self.waits.waiting, self.waits.groups), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_changed_between_fetch_and_wait(self):
        """
        A change that lands while a read's fetch is in flight (a store that answers later,
        such as Redis): the fetch saw the old version, so the reader waits on a store
        already past it, and is answered at once from a fresh fetch, not at its timeout;
        readers of the same question after it too.
        """
        pending = []

        def fetch():
            d = Deferred()
            pending.append(d)
            return d

        first = self.waits.read("k", "ns", 1, 30, fetch, int, str)
        second = self.waits.read("k", "ns", 1, 30, fetch, int, str)
        self.store.change()
        pending.pop(0).callback(1)
        pending.pop(0).callback(1)
        for answer in pending:
            answer.callback(2)
        self.assertEqual(self.successResultOf(first), "2")
        self.assertEqual(self.successResultOf(second), "2")
        self.assertEqual((self.waits.waiting, self.waits.groups), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_read_with_late_fetch(self):
        """read() works when the fetch answers later."""
        pending = []

        def fetch():
            d = Deferred()
            pending.append(d)
            return d

        d = self.waits.read("k", "ns", 1, 30, fetch, int, str)
        self.assertEqual(self.waits.waiting, 0)
        pending.pop().callback(1)
        self.assertEqual(self.waits.waiting, 1)
        self.store.change()
        self.assertNoResult(d)
        pending.pop().callback(2)
        self.assertEqual(self.successResultOf(d), "2")
