# -*- test-case-name: tests.test_controller_watch -*-
"""
What the controller knows of each namespace's rules between changes: the last revision
seen (a snapshot per namespace), the encoded answers of that revision (one encoding per
query, however many sidecars read it), and the blocking reads waiting for the next one.

Every read asks the store for the current rules first: an encoding is only ever served for
the rules the store has just answered, so a change made through another controller (a
shared store) is never hidden by the cache. An encoding belongs to the rules it was made
from, not only to their revision: a store that answers a revision again with other rules
(a Redis that lost its data and counted again, in a version without the Redis store's
floor) gets those rules encoded, never the old ones served. Nothing assumes the store
answers at once.
"""

from amalgam8.watch import GroupedWaits

__all__ = ["RuleWatch"]

MAX_ENCODINGS = 1024


class _Snapshot:
    __slots__ = ("ruleset", "encodings")

    def __init__(self, ruleset):
        self.ruleset = ruleset
        self.encodings = {}


class RuleWatch:
    """
    @ivar store: the L{amalgam8.interfaces.IRuleStore}.
    @ivar clock: the C{IReactorTime} of the blocking reads' timers.
    @ivar limit: the most encodings kept per namespace and revision.
    """

    def __init__(self, store, clock, limit=MAX_ENCODINGS):
        self.store = store
        self.clock = clock
        self.limit = limit
        self._snapshots = {}
        self._waits = GroupedWaits(clock, store.wait_for_change)

    # -- snapshots ------------------------------------------------------------------------

    def current(self, namespace):
        """
        The namespace's current rules, from the store.

        @return: a Deferred firing with the L{RuleSet}, which is also recorded as the
            namespace's snapshot.
        """
        return self.store.get(namespace).addCallback(self.record, namespace)

    def record(self, ruleset, namespace):
        """
        Note C{ruleset} as what C{namespace} holds (when newer than the snapshot); the
        encodings of an older revision are dropped.

        @return: C{ruleset}.
        """
        snapshot = self._snapshots.get(namespace)
        if snapshot is None or snapshot.ruleset.revision < ruleset.revision \
                or (snapshot.ruleset.revision == ruleset.revision
                    and not _same(snapshot.ruleset, ruleset)):
            self._snapshots[namespace] = _Snapshot(ruleset)
        return ruleset

    def snapshot(self, namespace):
        """The last L{RuleSet} seen of C{namespace}, or L{None}."""
        snapshot = self._snapshots.get(namespace)
        return snapshot.ruleset if snapshot is not None else None

    # -- encodings ------------------------------------------------------------------------

    def cached(self, namespace, ruleset, key):
        """The encoded answer to C{key} for C{ruleset}, if it was made already (from the
        same rules at the same revision)."""
        snapshot = self._snapshots.get(namespace)
        if snapshot is not None and _same(snapshot.ruleset, ruleset):
            return snapshot.encodings.get(key)
        return None

    def encoded(self, namespace, ruleset, key, build):
        """
        The answer to C{key} at C{ruleset}'s revision: the cached encoding, or
        C{build(ruleset)} (bytes), remembered while C{ruleset} is the namespace's latest.
        """
        body = self.cached(namespace, ruleset, key)
        if body is None:
            body = build(ruleset)
            self.record(ruleset, namespace)
            snapshot = self._snapshots[namespace]
            if _same(snapshot.ruleset, ruleset) and len(snapshot.encodings) < self.limit:
                snapshot.encodings[key] = body
        return body

    # -- reads ----------------------------------------------------------------------------

    def read(self, namespace, key, build, wait=None, revision=None):
        """
        A read of the answer C{key}: at once, or (with C{wait} seconds and C{revision}) once
        the namespace is past C{revision} or the wait ran out. Blocking reads of the same
        C{key} at the same C{revision} wait as one group, answered from one encoding.

        @param build: C{ruleset -> bytes}, the encoding of the answer.
        @return: a Deferred firing with C{(ruleset, body, cached)}, C{cached} saying
            whether the body was an encoding made earlier; cancel it when the reader goes
            away.
        """

        def answer(ruleset):
            self.record(ruleset, namespace)
            body = self.cached(namespace, ruleset, key)
            if body is not None:
                return ruleset, body, True
            return ruleset, self.encoded(namespace, ruleset, key, build), False

        return self._waits.read((namespace, revision, key), namespace, revision, wait,
                                lambda: self.store.get(namespace), _revision, answer)

    @property
    def waiting(self):
        """How many blocking reads are waiting."""
        return self._waits.waiting

    @property
    def groups(self):
        """How many store waiters the blocking reads hold (one per group)."""
        return self._waits.groups


def _revision(ruleset):
    return ruleset.revision


def _same(one, other):
    """Whether two rule sets are the same rules at the same revision (the stores hand out
    the same object while nothing changed, so this is mostly an identity check)."""
    return one is other or (one.revision == other.revision and one.rules == other.rules)
