# -*- test-case-name: tests.test_controller_api -*-
"""
Proxy status (SPEC B2): what each sidecar's proxy has applied, as the sidecars report it.
A proxy that stops reporting for three report intervals drops out.
"""

import attrs

__all__ = ["ProxyReports", "MISSED_REPORTS"]

MISSED_REPORTS = 3


@attrs.frozen
class Report:
    proxy_id: str
    service: str
    tags: tuple
    revision: int
    index: int
    applied_at: str
    interval: float
    received: float

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
        return result


class ProxyReports:
    """
    @ivar clock: an C{IReactorTime}.
    @ivar interval: the report interval assumed when a report names none (seconds).
    """

    def __init__(self, clock, interval=30.0):
        self.clock = clock
        self.interval = interval
        self._reports = {}

    def report(self, namespace, proxy_id, service, tags, revision, index, applied_at,
               interval=None):
        reports = self._reports.setdefault(namespace, {})
        reports[proxy_id] = Report(proxy_id, service, tuple(tags), revision, index,
                                   applied_at, interval or self.interval,
                                   self.clock.seconds())

    def live(self, namespace):
        """The live reports of a namespace, by proxy id; stale ones are forgotten."""
        reports = self._reports.get(namespace, {})
        now = self.clock.seconds()
        stale = [pid for pid, r in reports.items()
                 if now - r.received > MISSED_REPORTS * r.interval]
        for pid in stale:
            del reports[pid]
        return [reports[pid] for pid in sorted(reports)]

    def status(self, namespace, revision):
        live = self.live(namespace)
        lagging = [r.as_dict() for r in live if r.revision < revision]
        return {
            "revision": revision,
            "proxies": len(live),
            "in_sync": len(live) - len(lagging),
            "lagging": lagging,
        }
