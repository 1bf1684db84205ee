# -*- test-case-name: tests.test_controller_api -*-
"""
Trace records (SPEC B5): the access-log records of test traffic that sidecars forward,
kept per namespace up to a bound (the oldest dropped first, and the drops counted).
"""

import collections

__all__ = ["TraceBuffer", "MAX_PAGE"]

MAX_PAGE = 10000


class TraceBuffer:
    """
    @ivar capacity: the most records kept per namespace.
    """

    def __init__(self, capacity=100_000):
        self.capacity = capacity
        self._records = {}
        self._sequence = 0
        self._dropped = collections.Counter()
        self.received = 0

    def add(self, namespace, records):
        """Keep a batch of records (dicts); return how many were dropped to make room."""
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
        return dropped

    def query(self, namespace, log_key=None, log_value=None, src=None, dst=None,
              after=0, limit=1000):
        """
        The records that match, oldest first, from sequence number C{after} on.

        @param src: a source C{name} or C{name:tags}; C{dst} the same for the destination.
        @return: C{(records, next_cursor)}; C{next_cursor} is L{None} on the last page.
        """
        kept = self._records.get(namespace, ())
        page = []
        last = after
        for sequence, record in kept:
            if sequence <= after:
                continue
            if log_key is not None:
                if log_key not in record:
                    continue
                if log_value is not None and str(record[log_key]) != log_value:
                    continue
            if src is not None and not _names(record.get("src"), src):
                continue
            if dst is not None and not _names(record.get("dst"), dst):
                continue
            if len(page) == limit:
                return page, last
            page.append(record)
            last = sequence
        return page, None

    def dropped(self, namespace):
        return self._dropped[namespace]

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
