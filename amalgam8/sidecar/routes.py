# -*- test-case-name: tests.test_sidecar_routes -*-
"""
The route manager (SPEC A4, B1, B2): one blocking read held open to the controller (rules)
and one to the registry (instances); every change pushes the whole state to the proxy,
bursts coalesced; what the proxy applied is reported to the controller.

When a server does not answer C{wait} (an Amalgam8 0.4 server sends no C{A8-Revision} /
C{A8-Index}), that side falls back to polling every C{poll} seconds. A server that is down
leaves the proxy on its last state: the proxy is never pushed an empty state it did not
get from the servers, and nothing is pushed before both sides were read once.

A push the proxy does not take is retried after 0.05, 0.1, 0.2... up to 2 s; but a proxy
that was (re)started within the last L{STARTING} seconds (L{RouteManager.proxy_restarted},
the supervisor's callback after each spawn of nginx) is pushed at once and retried every
L{STARTING_POLL} seconds until its admin port answers, and a retry that was waiting goes
out at once: a restarted nginx holds no state and answers 503 until it has been pushed.

The proxy skips a rule it cannot compile and names it in its answer (C{"rejected"}); each
newly rejected rule is logged once (a warning with C{rule_id} and C{error}), and the status reports list every
rule rejected by the last push.
"""

import random as _random

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from amalgam8.controller.proxies import MAX_REJECTED, MAX_REJECTED_ERROR
from amalgam8.logs import debug_enabled
from amalgam8.registry.model import rfc3339

__all__ = ["RouteManager"]

WAIT = 30.0
_RUNNING = object()

PUSH_RETRY = 0.05
"""A push the proxy did not take is retried after this many seconds, doubling..."""
PUSH_RETRY_MAX = 2.0
"""...up to this."""
STARTING_POLL = 0.025
"""While a proxy (re)started less than L{STARTING} seconds ago does not answer yet, its
admin port is tried this often instead: it answers empty-handed (503 to every request) until
the first push, so the push goes out as soon as it listens."""
STARTING = 5.0


class _Side:
    """One of the two reads: its latest value, version and health."""

    def __init__(self, name, poll):
        self.name = name
        self.poll = poll
        self.value = None
        self.version = None
        self.blocking = True
        self.failures = 0
        self.last_error = None
        self.updated = None


class RouteManager(Service):
    """
    @param clock: C{IReactorTime}.
    @param registry: a L{amalgam8.client.RegistryClient}.
    @param controller: a L{amalgam8.client.ControllerClient}.
    @param push: C{state -> Deferred}: send C{{"instances", "rules"}} to the proxy admin.
    @param proxy_id: this proxy's id for status reports (B2).
    @param service: this sidecar's service name and C{tags}, for the report.
    @param coalesce: seconds to wait after a change for more changes before pushing.
    @param report_interval: seconds between status reports when nothing changes.
    @param report_delay: a push is reported within this many seconds (jittered, coalesced).
    """

    log = Logger()

    def __init__(self, clock, registry, controller, push, proxy_id, service, tags=(),
                 registry_poll=15.0, controller_poll=15.0, coalesce=0.005,
                 report_interval=30.0, wait=WAIT, random=None, report_delay=0.5):
        self._clock = clock
        self._registry = registry
        self._controller = controller
        self._push_state = push
        self.proxy_id = proxy_id
        self.service = service
        self.tags = tuple(tags)
        self._coalesce = coalesce
        self._report_interval = report_interval
        self._report_delay = report_delay
        self._soon_call = None
        self._wait = wait
        self._random = random or _random.Random()
        self._rules = _Side("controller", controller_poll)
        self._instances = _Side("registry", registry_poll)
        self._loops = []
        self._push_call = None
        self._report_call = None
        self._pushing = None
        self._dirty = False
        self.pushed = None           # (revision, index) last applied by the proxy
        self.pushes = 0
        self.push_failures = 0
        self.applied_at = None
        self.rejected = ()          # ((rule id, error), ...) skipped by the last push
        self._first = []
        self._first_done = False
        self._spawned_at = None     # when the proxy was last (re)started
        self._pause = None          # (IDelayedCall, Deferred) of a push waiting to retry

    # -- lifecycle -------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self._loops = [
            Deferred.fromCoroutine(self._follow(self._rules, self._read_rules)),
            Deferred.fromCoroutine(self._follow(self._instances, self._read_instances)),
        ]
        for loop in self._loops:
            loop.addErrback(self._loop_failed)
        self._report_call = self._clock.callLater(self._report_interval, self._periodic_report)

    def stopService(self):
        Service.stopService(self)
        for loop in self._loops:
            loop.cancel()
        self._loops = []
        for name in ("_push_call", "_report_call", "_soon_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        if isinstance(self._pushing, Deferred):
            self._pushing.cancel()
        # Waiters for the first state stay pending: the state never came.

    def _loop_failed(self, failure):
        if not failure.check(CancelledError):
            self.log.failure("route manager loop stopped", failure)

    def first_state(self):
        """A Deferred that fires once the proxy holds its first state (SPEC B4)."""
        if self._first_done:
            return succeed(None)
        waiter = Deferred()
        self._first.append(waiter)
        return waiter

    # -- the reads -------------------------------------------------------------------------

    async def _read_rules(self, since):
        return await self._controller.rules(wait=self._wait if since is not None else None,
                                            revision=since)

    async def _read_instances(self, since):
        return await self._registry.instances(wait=self._wait if since is not None else None,
                                              index=since)

    async def _follow(self, side, read):
        """Read, then read again as soon as the server has something newer."""
        delay = 1.0
        while True:
            since = side.version if side.blocking else None
            try:
                version, value = await read(since)
            except CancelledError:
                raise
            except Exception as e:
                if not self.running:
                    return
                side.failures += 1
                side.last_error = str(e)
                if side.failures == 1 or side.failures % 10 == 0:
                    self.log.warn("{side} unreachable ({failures} failures): {error}; the "
                                  "proxy keeps its last state", side=side.name,
                                  failures=side.failures, error=str(e))
                await deferLater(self._clock, min(delay, side.poll), lambda: None)
                delay = min(delay * 2, side.poll)
                continue
            delay = 1.0
            if side.failures:
                self.log.info("{side} reachable again", side=side.name)
            side.failures = 0
            side.last_error = None
            if version is None:
                # The server does not number its state: it cannot block either. Poll.
                if side.blocking:
                    self.log.info("{side} has no blocking reads; polling every {poll} s",
                                  side=side.name, poll=side.poll)
                side.blocking = False
            changed = side.value is None or value != side.value or version != side.version
            side.value = value
            side.version = version
            side.updated = self._clock.seconds()
            if changed:
                self._changed()
            if not side.blocking:
                await deferLater(self._clock, side.poll, lambda: None)

    # -- pushing ---------------------------------------------------------------------------

    def _changed(self):
        self._dirty = True
        if self._rules.value is None or self._instances.value is None:
            return
        if self._push_call is None and self._pushing is None:
            # Leading edge: a change after a quiet spell is pushed at once; changes that
            # follow within the coalescing window go out together at its end.
            since = (self._clock.seconds() - self.applied_at
                     if self.applied_at is not None else None)
            if since is None or since >= self._coalesce:
                self._push()
            else:
                self._push_call = self._clock.callLater(self._coalesce - since, self._push)

    def proxy_restarted(self):
        """
        The proxy came (back) up empty: push the current state again at once, and retry
        every L{STARTING_POLL} seconds until its admin port answers.
        """
        self._spawned_at = self._clock.seconds()
        self._dirty = True
        if self._rules.value is None or self._instances.value is None:
            return
        if self._push_call is not None and self._push_call.active():
            self._push_call.cancel()
        self._push_call = None
        if self._pushing is None:
            self._push_call = self._clock.callLater(0, self._push)
        else:
            self._retry_now()

    def _starting(self):
        return (self._spawned_at is not None
                and self._clock.seconds() - self._spawned_at < STARTING)

    def _wait_to_retry(self, seconds):
        """A Deferred fired after C{seconds}, or sooner by L{_retry_now}."""
        waiting = Deferred(lambda _: call.cancel())
        call = self._clock.callLater(seconds, waiting.callback, None)
        self._pause = (call, waiting)
        return waiting

    def _retry_now(self):
        """A push waiting to retry (a proxy that was down) goes out at once."""
        pause, self._pause = self._pause, None
        if pause is not None and pause[0].active():
            pause[0].cancel()
            pause[1].callback(None)

    def state(self):
        """What the proxy should hold now."""
        return {"instances": self._instances.value or [], "rules": self._rules.value or []}

    def _push(self):
        self._push_call = None
        self._dirty = False
        versions = (self._rules.version, self._instances.version)
        self._pushing = _RUNNING
        pushing = Deferred.fromCoroutine(self._push_now(versions))
        if self._pushing is _RUNNING:
            # Still going (the coroutine's finally clears it when it ends).
            self._pushing = pushing
        pushing.addErrback(self._loop_failed)

    async def _push_now(self, versions):
        delay = PUSH_RETRY
        failures = 0
        try:
            while True:
                try:
                    answer = await self._push_state(self.state())
                    break
                except CancelledError:
                    raise
                except Exception as e:
                    self.push_failures += 1
                    failures += 1
                    if failures == 1 or failures % 10 == 0:
                        self.log.warn("cannot push the state to the proxy ({failures} "
                                      "failures): {error}", failures=failures, error=str(e))
                    if self._starting():
                        await self._wait_to_retry(STARTING_POLL)
                    else:
                        await self._wait_to_retry(delay)
                        delay = min(delay * 2, PUSH_RETRY_MAX)
                    versions = (self._rules.version, self._instances.version)
                    self._dirty = False
        finally:
            self._pushing = None
            self._pause = None
        self.pushes += 1
        self.pushed = versions
        self.applied_at = self._clock.seconds()
        self._note_rejected(rejected_of(answer))
        if debug_enabled():
            self.log.debug("proxy state pushed: revision {revision}, index {index}",
                           revision=versions[0], index=versions[1])
        if not self._first_done:
            self._first_done = True
            waiters, self._first = self._first, []
            for waiter in waiters:
                waiter.callback(None)
        if self._dirty:
            self._push_call = self._clock.callLater(self._coalesce, self._push)
        self._report_soon()

    def _note_rejected(self, rejected):
        before = set(self.rejected)
        for rule_id, error in rejected:
            if (rule_id, error) not in before:
                self.log.warn("the proxy skipped rule {rule_id}: {error}",
                              rule_id=rule_id, error=error, revision=self._rules.version)
        self.rejected = rejected

    # -- status reports (B2) -------------------------------------------------------------

    def _report_body(self):
        revision, index = self.pushed or (None, None)
        body = {"service": self.service, "tags": list(self.tags), "revision": revision or 0,
                "applied_at": rfc3339(self.applied_at or self._clock.seconds()),
                "interval": self._report_interval}
        if index is not None:
            body["index"] = index
        body["rejected"] = [{"id": rule_id, "error": error} for rule_id, error in self.rejected]
        return body

    def _report(self):
        if self.pushed is None:
            return
        d = Deferred.fromCoroutine(self._controller.report(self.proxy_id, self._report_body()))
        d.addErrback(lambda f: self.log.debug("status report failed: {error}",
                                              error=f.getErrorMessage()))

    def _report_soon(self):
        """
        Report what was applied within C{report_delay} (a random share of it): a burst of
        pushes is reported once, and a thousand sidecars woken by one change do not all
        call the controller at the same moment it is answering their reads.
        """
        if self._report_delay <= 0:
            self._report()
            return
        if self._soon_call is None:
            self._soon_call = self._clock.callLater(
                self._random.uniform(0, self._report_delay), self._report_now)

    def _report_now(self):
        self._soon_call = None
        self._report()

    def _periodic_report(self):
        self._report_call = self._clock.callLater(self._report_interval, self._periodic_report)
        self._report()

    def debug_state(self):
        def side(s):
            return {"version": s.version, "blocking": s.blocking, "failures": s.failures,
                    "last_error": s.last_error, "updated": s.updated,
                    "count": len(s.value) if s.value is not None else None}

        return {"rules": side(self._rules), "instances": side(self._instances),
                "pushed": {"revision": self.pushed[0], "index": self.pushed[1]}
                if self.pushed else None,
                "pushes": self.pushes, "push_failures": self.push_failures,
                "applied_at": self.applied_at,
                "rejected": [{"id": i, "error": e} for i, e in self.rejected]}


def rejected_of(answer):
    """
    The rules a proxy's push answer says it skipped, as C{((id, error), ...)}: an answer
    without C{rejected} (an older proxy) skipped none. Entries that are not
    C{{"id", "error"}} strings are named as well as they can be; the list and each error
    are cut to what a status report may carry.
    """
    entries = answer.get("rejected") if isinstance(answer, dict) else None
    if not isinstance(entries, list):
        return ()
    result = []
    for entry in entries[:MAX_REJECTED]:
        if not isinstance(entry, dict):
            continue
        rule_id, error = entry.get("id"), entry.get("error")
        rule_id = rule_id if isinstance(rule_id, str) and rule_id else "(no id)"
        error = error if isinstance(error, str) and error else "rejected"
        result.append((rule_id[:MAX_REJECTED_ERROR], error[:MAX_REJECTED_ERROR]))
    return tuple(result)
