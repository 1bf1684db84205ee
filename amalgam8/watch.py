# -*- test-case-name: tests.test_watch -*-
"""
Blocking reads (SPEC B1) held in groups, for both servers.

Readers that ask the same question (the same namespace, the same version they have seen,
the same query) form one group. A group holds one waiter on the store, however many readers
it has; when the namespace changes, the group's answer is made once and every reader of the
group gets it. Each reader has its own C{wait} timer: when it runs out, that reader alone is
answered with the state of that moment. A reader that goes away (its Deferred is cancelled)
leaves its group at once, and the last one to leave cancels the group's store waiter.

Nothing here assumes that a store answers at once: the store's Deferreds and the answers may
fire at any later time.
"""

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger

__all__ = ["GroupedWaits"]


class _Reader:
    __slots__ = ("result", "timer")

    def __init__(self):
        self.result = None
        self.timer = None


class _Group:
    __slots__ = ("key", "answer", "readers", "change")

    def __init__(self, key, answer):
        self.key = key
        self.answer = answer
        self.readers = []
        self.change = None


class GroupedWaits:
    """
    Readers waiting for a namespace to pass a version, grouped by their question.

    @ivar clock: the C{IReactorTime} that runs each reader's C{wait} timer.
    @ivar wait_for_change: C{(namespace, version) -> Deferred} firing once the namespace is
        past C{version} (a store's C{wait_for_change}); cancelling it forgets the waiter.
    """

    log = Logger()

    def __init__(self, clock, wait_for_change):
        self.clock = clock
        self.wait_for_change = wait_for_change
        self._groups = {}
        self._readers = 0

    @property
    def waiting(self):
        """How many readers are waiting."""
        return self._readers

    @property
    def groups(self):
        """How many groups (so store waiters) the waiting readers form."""
        return len(self._groups)

    def wait(self, key, namespace, version, timeout, answer):
        """
        Wait until C{namespace} is past C{version}, or C{timeout} seconds, then answer.

        @param key: the question, hashable; readers with equal keys share a group, so the
            key must include C{namespace} and C{version}.
        @param answer: a no-argument callable making the answer (a value or a Deferred) from
            the state of the moment it is called. A group's first reader gives it; it is
            called once per change for the whole group, and once for each reader whose
            timer runs out.
        @return: a Deferred that fires with the answer; cancel it when the reader goes away.
        """
        group = self._groups.get(key)
        new = group is None
        if new:
            group = self._groups[key] = _Group(key, answer)
        reader = _Reader()
        reader.result = Deferred(lambda _: self._leave(group, reader))
        reader.timer = self.clock.callLater(timeout, self._expired, group, reader)
        group.readers.append(reader)
        self._readers += 1
        if new:
            # The reader is in the group first: a store already past the version (a change
            # that landed while the reader's fetch was in flight) fires at once, and
            # _changed must find it there, not leave it to its timer.
            group.change = self.wait_for_change(namespace, version)
            group.change.addCallbacks(self._changed, self._failed,
                                      callbackArgs=(group,), errbackArgs=(group,))
        return reader.result

    def read(self, key, namespace, since, timeout, fetch, version, build):
        """
        A read that blocks when asked to: C{fetch()} the state, and answer C{build(state)}
        at once unless C{timeout} and C{since} are given and C{version(state) <= since};
        then wait in the group C{key} for a newer version (or the timeout), and answer
        C{build(fetch())} of that moment, made once for the group.

        @param fetch: C{() -> Deferred} of the namespace's current state (a store's read).
        @param version: C{state -> int}, the namespace's index or revision.
        @param build: C{state -> answer}.
        @return: a Deferred that fires with the answer; cancel it when the reader goes away.
        """

        def answer():
            return fetch().addCallback(build)

        def first(state):
            if timeout and since is not None and version(state) <= since:
                return self.wait(key, namespace, since, timeout, answer)
            return build(state)

        return fetch().addCallback(first)

    def _remove(self, group, reader):
        """Take C{reader} out of C{group}; the last one out cancels the store waiter."""
        try:
            group.readers.remove(reader)
        except ValueError:
            return False
        self._readers -= 1
        if reader.timer.active():
            reader.timer.cancel()
        if not group.readers and self._groups.get(group.key) is group:
            del self._groups[group.key]
            group.change.cancel()
        return True

    def _leave(self, group, reader):
        self._remove(group, reader)

    def _expired(self, group, reader):
        if self._remove(group, reader):
            self._deliver(group.answer, [reader])

    def _take(self, group):
        """End the group: every reader leaves it and is returned."""
        if self._groups.get(group.key) is group:
            del self._groups[group.key]
        readers, group.readers = group.readers, []
        self._readers -= len(readers)
        for reader in readers:
            if reader.timer.active():
                reader.timer.cancel()
        return readers

    def _changed(self, _version, group):
        readers = self._take(group)
        if readers:
            self._deliver(group.answer, readers)
        return None

    def _failed(self, failure, group):
        if not group.readers:
            if not failure.check(CancelledError):
                self.log.failure("a store waiter failed with nobody waiting", failure)
            return None
        for reader in self._take(group):
            reader.result.errback(failure)
        return None

    def _deliver(self, answer, readers):
        made = maybeDeferred(answer)

        def answered(result):
            for reader in readers:
                if not reader.result.called:
                    reader.result.callback(result)

        def failed(failure):
            for reader in readers:
                if not reader.result.called:
                    reader.result.errback(failure)

        made.addCallbacks(answered, failed)
