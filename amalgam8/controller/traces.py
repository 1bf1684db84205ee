# -*- test-case-name: tests.test_controller_traces,tests.test_controller_api -*-
"""
Trace records (SPEC B5): the access-log records of test traffic that sidecars forward,
kept per namespace up to a bound (the oldest dropped first, and the drops counted).

L{TraceBuffer} keeps them in this process (an L{amalgam8.interfaces.ITraceStore});
L{amalgam8.controller.traces_redis.RedisTraceStore} keeps them in Redis, shared by every
controller replica on it. L{matches} is the filter both apply.
"""

import collections

from twisted.internet.defer import succeed
from zope.interface import implementer

from amalgam8.interfaces import ITraceStore

__all__ = ["TraceBuffer", "MAX_PAGE", "matches"]

MAX_PAGE = 10000


def matches(record, log_key=None, log_value=None, src=None, dst=None):
    """
    Whether a record passes the filters of C{GET /v1/traces}
    (L{amalgam8.interfaces.ITraceStore.query}).
    """
    if log_key is not None:
        if log_key not in record:
            return False
        if log_value is not None and str(record[log_key]) != log_value:
            return False
    if src is not None and not _names(record.get("src"), src):
        return False
    if dst is not None and not _names(record.get("dst"), dst):
        return False
    return True


@implementer(ITraceStore)
class TraceBuffer:
    """
    The trace records of this process, in memory.

    @ivar capacity: the most records kept per namespace.
    @ivar received: how many records were added, in all.
    """

    def __init__(self, capacity=100_000):
        self.capacity = capacity
        self._records = {}
        self._sequence = 0
        self._dropped = collections.Counter()
        self.received = 0

    def add(self, namespace, records):
        """Keep a batch of records (dicts); the Deferred fires with how many were dropped
        to make room."""
        kept = self._records.get(namespace)
        if kept is None:
            kept = self._records[namespace] = collections.deque()
        dropped = 0
        for record in records:
            self._sequence += 1
            kept.append((self._sequence, record))
            if len(kept) > self.capacity:
                kept.popleft()
                dropped += 1
        self._dropped[namespace] += dropped
        self.received += len(records)
        return succeed(dropped)

    def query(self, namespace, log_key=None, log_value=None, src=None, dst=None,
              after=0, limit=1000):
        """
        The records that match, oldest first, from sequence number C{after} on.

        @param src: a source C{name} or C{name:tags}; C{dst} the same for the destination.
        @return: a Deferred firing with C{(records, next_cursor)}; C{next_cursor} is
            L{None} on the last page.
        """
        kept = self._records.get(namespace, ())
        page = []
        last = after
        for sequence, record in kept:
            if sequence <= after:
                continue
            if not matches(record, log_key, log_value, src, dst):
                continue
            if len(page) == limit:
                return succeed((page, last))
            page.append(record)
            last = sequence
        return succeed((page, None))

    def dropped(self, namespace):
        return succeed(self._dropped[namespace])

    def stats(self):
        return {
            "records": {name: len(kept) for name, kept in self._records.items()},
            "dropped": dict(self._dropped),
            "received": self.received,
        }


def _names(value, wanted):
    if not isinstance(value, str):
        return False
    return value == wanted or value.split(":", 1)[0] == wanted
