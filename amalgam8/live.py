# -*- test-case-name: tests.test_a8ctl.WaitTests,tests.test_gremlin_run -*-
"""
Knowing that a rule change is live (SPEC B2): poll the controller's C{GET /v1/rules/status}
until every reporting proxy has applied a revision. a8ctl's C{--wait} and Gremlin's recipe
runs both wait here.
"""

from twisted.internet.task import deferLater

__all__ = ["NotLive", "Rejected", "wait_until_live", "POLL_INTERVAL"]

POLL_INTERVAL = 0.5


class NotLive(Exception):
    """The time ran out before every proxy had the revision; the message says who lags."""


class Rejected(NotLive):
    """A proxy applied the revision but skipped a rule of it (it could not compile it)."""


async def wait_until_live(clock, controller, revision, timeout, interval=POLL_INTERVAL):
    """
    Poll C{GET /v1/rules/status} until the controller is at C{revision} (or later) and every
    reporting proxy has applied it.

    @param clock: the C{IReactorTime} to poll on.
    @param controller: an L{amalgam8.client.ControllerClient}.
    @param revision: the revision to wait for; L{None} means the current one.
    @return: the last status, with C{target}: the revision waited for.
    @raise NotLive: when C{timeout} seconds pass first.
    @raise Rejected: as soon as a proxy reports that it skipped a rule of the revision
        waited for (it will not compile it later either), naming the rule and the reason.
    """
    deadline = clock.seconds() + timeout
    while True:
        status = await controller.status()
        current = status.get("revision", 0)
        target = current if revision is None else revision
        proxies = status.get("proxies", 0)
        in_sync = status.get("in_sync", 0)
        rejected = status.get("rejected") or []
        if current >= target and rejected:
            raise Rejected("revision {} is not live: {}".format(current, "; ".join(
                "rule {} was rejected by {} prox{} ({}): {}".format(
                    r.get("id"), len(r.get("proxies", [])),
                    "y" if len(r.get("proxies", [])) == 1 else "ies",
                    ", ".join(r.get("proxies", [])[:5]), r.get("error"))
                for r in rejected)))
        if current >= target and in_sync >= proxies:
            status["target"] = target
            return status
        remaining = deadline - clock.seconds()
        if remaining <= 0:
            lagging = ", ".join("{} at {}".format(p.get("proxy_id"), p.get("revision"))
                                for p in status.get("lagging", [])[:5])
            if len(status.get("lagging", [])) > 5:
                lagging += ", ..."
            raise NotLive(
                "timed out after {:g}s waiting for revision {}: {} of {} proxies in sync{}"
                .format(timeout, target, in_sync, proxies,
                        " (lagging: {})".format(lagging) if lagging else ""))
        await deferLater(clock, min(interval, remaining), lambda: None)
