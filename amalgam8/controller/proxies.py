# -*- test-case-name: tests.test_controller_proxies,tests.test_controller_api -*-
"""
Proxy status (SPEC B2): what each sidecar's proxy has applied, as the sidecars report it,
including the rules it skipped because it could not compile them (C{rejected}).
A proxy that stops reporting for three report intervals drops out.

L{ProxyReports} keeps them in this process (an L{amalgam8.interfaces.IProxyReports});
L{amalgam8.controller.proxies_redis.RedisProxyReports} keeps them in Redis, shared by every
controller replica on it. L{status_of} is the status both answer.
"""

import attrs
from twisted.internet.defer import succeed
from zope.interface import implementer

from amalgam8.errors import InvalidRequest
from amalgam8.interfaces import IProxyReports

__all__ = ["ProxyReports", "Report", "MISSED_REPORTS", "MAX_REJECTED", "MAX_REJECTED_ERROR",
           "parse_rejected", "status_of", "is_stale"]

MISSED_REPORTS = 3
MAX_REJECTED = 1000
"""At most this many rejected rules in one report."""
MAX_REJECTED_ERROR = 1024
"""At most this many characters in a rejected rule's id or error."""


@attrs.frozen
class Report:
    """
    A proxy's last report.

    @ivar interval: its report interval (the store's default when it named none).
    @ivar received: when it was received (seconds of the store's clock).
    """

    proxy_id: str
    service: str
    tags: tuple
    revision: int
    index: int
    applied_at: str
    interval: float
    received: float
    rejected: tuple = ()        # ((rule id, error), ...)

    def as_dict(self):
        result = {
            "proxy_id": self.proxy_id,
            "service": self.service,
            "tags": list(self.tags),
            "revision": self.revision,
            "applied_at": self.applied_at,
            "interval": self.interval,
        }
        if self.index is not None:
            result["index"] = self.index
        if self.rejected:
            result["rejected"] = [{"id": i, "error": e} for i, e in self.rejected]
        return result


def parse_rejected(value):
    """
    The C{rejected} field of a status report: C{[{"id", "error"}, ...]}.

    @return: C{((id, error), ...)}.
    @raise InvalidRequest: for anything else.
    """
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_REJECTED:
        raise InvalidRequest("rejected must be a list of at most {} {{\"id\", \"error\"}} "
                             "objects".format(MAX_REJECTED))
    result = []
    for n, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"id", "error"} or not all(
                isinstance(entry[k], str) and 0 < len(entry[k]) <= MAX_REJECTED_ERROR
                for k in ("id", "error")):
            raise InvalidRequest("rejected[{}] must be {{\"id\": RULE_ID, \"error\": WHY}} "
                                 "(strings of 1-{} characters)".format(n, MAX_REJECTED_ERROR))
        result.append((entry["id"], entry["error"]))
    return tuple(result)


def is_stale(report, now):
    """
    Whether C{report} (a L{Report}) is no longer live at C{now}: it is older than
    L{MISSED_REPORTS} of its intervals. Every implementation decides with this expression.
    """
    return now - report.received > MISSED_REPORTS * report.interval


def status_of(live, revision):
    """
    The answer of C{GET /v1/rules/status}.

    @param live: the live L{Report}s of a namespace, sorted by proxy id.
    @param revision: the namespace's current rule revision.
    @return: C{{"revision", "proxies", "in_sync", "lagging": [report, ...]}}, and
        C{"rejected": [{"id", "error", "proxies"}, ...]} (the rules of this revision that
        proxies at it skipped, with those proxies) when there are any.
    """
    lagging = [r.as_dict() for r in live if r.revision < revision]
    result = {
        "revision": revision,
        "proxies": len(live),
        "in_sync": len(live) - len(lagging),
        "lagging": lagging,
    }
    rejected = {}
    for r in live:
        if r.revision == revision:
            for rule_id, error in r.rejected:
                rejected.setdefault((rule_id, error), []).append(r.proxy_id)
    if rejected:
        result["rejected"] = [{"id": rule_id, "error": error, "proxies": proxies}
                              for (rule_id, error), proxies in sorted(rejected.items())]
    return result


@implementer(IProxyReports)
class ProxyReports:
    """
    The reports of this process's proxies, in memory.

    @ivar clock: an C{IReactorTime}.
    @ivar interval: the report interval assumed when a report names none (seconds).
    """

    def __init__(self, clock, interval=30.0):
        self.clock = clock
        self.interval = interval
        self._reports = {}

    def report(self, namespace, proxy_id, service, tags, revision, index, applied_at,
               interval=None, rejected=()):
        reports = self._reports.setdefault(namespace, {})
        reports[proxy_id] = Report(proxy_id, service, tuple(tags), revision, index,
                                   applied_at, interval or self.interval,
                                   self.clock.seconds(), tuple(rejected))
        return succeed(None)

    def live(self, namespace):
        """The live reports of a namespace, by proxy id; stale ones are forgotten."""
        return succeed(self._live(namespace))

    def _live(self, namespace):
        reports = self._reports.get(namespace, {})
        now = self.clock.seconds()
        stale = [pid for pid, r in reports.items() if is_stale(r, now)]
        for pid in stale:
            del reports[pid]
        if not reports:
            self._reports.pop(namespace, None)
        return [reports[pid] for pid in sorted(reports)]

    def status(self, namespace, revision):
        return succeed(status_of(self._live(namespace), revision))
