# -*- test-case-name: tests.test_late -*-
"""
A store whose Deferreds fire later, as a networked store's (Redis, etcd) always do.

    later = Later()
    store = LateStore(MemoryStore(clock=clock), later)
    d = store.instances("default")      # no result yet, whatever the wrapped store did
    later.flush()                       # now every answer made so far is delivered

L{LateStore} wraps any store: every method that returns a Deferred returns instead one that
fires only at the next L{Later.flush}, with the same result; cancelling it cancels the wrapped
Deferred. Other methods and attributes are the wrapped store's, and the wrapper provides the
same interfaces, so a contract suite or an API can be run on it unchanged.
"""

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

__all__ = ["FlushingResults", "Later", "LateStore", "settling"]


class Later:
    """The deliveries held back by one or more L{LateStore}s, in the order they came."""

    def __init__(self):
        self._pending = []

    def hold(self, inner):
        """
        @return: a Deferred that fires with C{inner}'s result at the first L{flush} after
            C{inner} fired; cancelling it cancels C{inner}.
        """
        outer = Deferred(lambda _: inner.cancel())

        def arrived(result):
            self._pending.append((outer, result))
            return None

        inner.addBoth(arrived)
        return outer

    def flush(self):
        """
        Deliver every held answer, and the answers they lead to, until none is left.

        @return: how many were delivered.
        """
        delivered = 0
        while self._pending:
            pending, self._pending = self._pending, []
            for outer, result in pending:
                if outer.called:
                    # Cancelled meanwhile: the wrapped result is dropped (it was handled).
                    continue
                delivered += 1
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)
        return delivered

    @property
    def pending(self):
        """How many answers are held."""
        return len(self._pending)


class LateStore:
    """
    C{store}, with every Deferred it returns held back until C{later.flush()}.
    """

    def __init__(self, store, later):
        self._store = store
        self._later = later
        directlyProvides(self, providedBy(store))

    @property
    def wrapped(self):
        """The store this one wraps."""
        return self._store

    def __getattr__(self, name):
        value = getattr(self._store, name)
        if not callable(value):
            return value
        later = self._later

        def call(*args, **kwargs):
            result = value(*args, **kwargs)
            if isinstance(result, Deferred):
                return later.hold(result)
            return result

        call.__name__ = name
        call.__doc__ = getattr(value, "__doc__", None)
        return call


class FlushingResults:
    """
    A L{SynchronousTestCase} mixin for suites that may run on a L{LateStore}: the test's
    C{later} (a L{Later}, made by L{setUpLater}) is flushed before C{successResultOf},
    C{failureResultOf} and C{assertNoResult} look at a Deferred, so one test body holds for
    a store that answers at once and for one that answers later.
    """

    def setUpLater(self):
        self.later = Later()

    def successResultOf(self, deferred):
        self.later.flush()
        return super().successResultOf(deferred)

    def failureResultOf(self, deferred, *expectedExceptionTypes):
        self.later.flush()
        return super().failureResultOf(deferred, *expectedExceptionTypes)

    def assertNoResult(self, deferred):
        self.later.flush()
        return super().assertNoResult(deferred)


def settling(flush, later):
    """
    A flush for an in-memory HTTP client (C{treq.testing.StubTreq.flush}) in front of a
    server on a L{LateStore}: it pumps the connections and delivers the store's answers in
    turn until both are quiet.
    """

    def settle():
        flush()
        while later.flush():
            flush()

    return settle
