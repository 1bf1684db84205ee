# -*- test-case-name: tests.test_controller_store -*-
"""
The in-memory rule store, and the waiting room every single-process store shares.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from amalgam8.controller.model import RuleSet
from amalgam8.errors import Conflict, StoreUnavailable
from amalgam8.interfaces import IRuleStore

__all__ = ["MemoryStore"]


@implementer(IRuleStore)
class MemoryStore(Service):
    """
    Rules kept in this process. Subclasses persist them by overriding L{_persist}.
    """

    def __init__(self):
        self._sets = {}
        self._waiters = {}

    def stopService(self):
        Service.stopService(self)
        waiting, self._waiters = self._waiters, {}
        for namespace, waiters in waiting.items():
            current = self._sets.get(namespace)
            for waiter in list(waiters):
                # Blocking readers get the current rules now rather than a dropped line.
                waiter.callback(current.revision if current else 0)

    def get(self, namespace):
        return succeed(self._sets.get(namespace) or RuleSet())

    def put(self, namespace, revision, rules):
        current = self._sets.get(namespace) or RuleSet()
        if current.revision != revision:
            return fail(Conflict("the rules changed meanwhile (revision {}, not {})"
                                 .format(current.revision, revision)))
        new = RuleSet(revision + 1, rules)
        try:
            self._persist(namespace, new)
        except OSError as e:
            return fail(StoreUnavailable("cannot save the rules: {}".format(
                e.strerror or e)))
        self._sets[namespace] = new
        waiters = self._waiters.pop(namespace, None)
        if waiters:
            for waiter in waiters:
                waiter.callback(new.revision)
        return succeed(new)

    def _persist(self, namespace, ruleset):
        """Make the new rules durable before they count (nothing to do in memory)."""

    def wait_for_change(self, namespace, revision):
        current = self._sets.get(namespace)
        if current is not None and current.revision > revision:
            return succeed(current.revision)
        waiters = self._waiters.setdefault(namespace, set())

        def forget(waiter):
            waiters.discard(waiter)
            if not waiters and self._waiters.get(namespace) is waiters:
                del self._waiters[namespace]

        waiter = Deferred(forget)
        waiters.add(waiter)
        return waiter

    def waiting(self):
        """How many readers are waiting for a change."""
        return sum(len(w) for w in self._waiters.values())

    def namespaces(self):
        return sorted(name for name, ruleset in self._sets.items() if ruleset.rules)
