# -*- test-case-name: tests.test_sidecar_registration -*-
"""
Registration of the sidecar's service instance in the registry (SPEC A5, B4).

A L{Registrar} keeps one instance registered while it is running, enabled and healthy:

    - it registers (the granted ttl comes back with the answer), then heartbeats every ttl/3
      with jitter;
    - a heartbeat answered with 410 (the registry expired or forgot the instance) registers
      again at once;
    - any other failure (unreachable, timed out, 5xx, a refusal) is retried after C{retry}
      seconds, doubling up to C{max_retry}, with jitter; a success resets the backoff;
    - C{set_healthy(False)} deregisters at once and stops heartbeating; C{set_healthy(True)}
      registers again;
    - C{deregister()} is the graceful stop (SPEC B4): it deregisters and keeps the instance out
      until the service is started again; C{stopService} does the same and cancels every timer.

One operation is under way at a time: a change of health or a stop that comes during a request
is acted on as soon as that request ends (each request is bounded by C{timeout}).
"""

from random import Random

import attrs
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    maybeDeferred,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from amalgam8.client import APIError, Unreachable

__all__ = ["Registrar", "registration_body", "DEFAULT_TTL"]

DEFAULT_TTL = 60


class BadAnswer(Exception):
    """The registry's answer to a registration has no instance id."""


_EXPECTED = (APIError, Unreachable, TimeoutError, CancelledError, BadAnswer)


def _with_ttl(registration):
    body = dict(registration)
    body.setdefault("ttl", DEFAULT_TTL)
    return body


def registration_body(config):
    """
    The registration body of a L{amalgam8.sidecar.config.SidecarConfig} (SPEC A2, A5).
    """
    host = config.endpoint_host
    if ":" in host and not host.startswith("["):
        host = "[{}]".format(host)          # an IPv6 address
    return {
        "service_name": config.service_name,
        "endpoint": {"type": config.endpoint_type,
                     "value": "{}:{}".format(host, config.endpoint_port)},
        "tags": list(config.service_tags),
        "ttl": config.ttl,
    }


@attrs.define(eq=False)
class Registrar(Service):
    """
    Keep this sidecar's instance registered while it is healthy.

    @ivar clock: the C{IReactorTime} every timer and request timeout runs on.
    @ivar client: an L{amalgam8.client.RegistryClient} (or anything with its async
        C{register}, C{heartbeat} and C{deregister}).
    @ivar registration: the registration body (C{service_name}, C{endpoint}, C{tags}, ...);
        C{ttl} defaults to 60 seconds.
    @ivar gated: when true (the sidecar has health checks), start unhealthy and register only
        after C{set_healthy(True)}.
    @ivar random: the L{random.Random} that draws the jitter.
    @ivar retry: seconds before the first retry after a failure.
    @ivar max_retry: the most seconds between retries (the backoff doubles up to it).
    @ivar jitter: the relative jitter of every delay (0.1: +/-10 %).
    @ivar timeout: the most seconds one request to the registry may take.
    """

    log = Logger()

    _clock: object
    _client: object
    _registration: dict = attrs.field(converter=_with_ttl)
    gated: bool = False
    _random: Random = attrs.field(factory=Random)
    _retry: float = 5.0
    _max_retry: float = 30.0
    _jitter: float = 0.1
    _timeout: float = 10.0

    _healthy: bool = attrs.field(init=False, default=True)
    _enabled: bool = attrs.field(init=False, default=False)
    _id: str = attrs.field(init=False, default=None)
    _ttl: float = attrs.field(init=False, default=None)
    _last_heartbeat: float = attrs.field(init=False, default=None)
    _failures: int = attrs.field(init=False, default=0)
    _last_error: str = attrs.field(init=False, default=None)
    _timer: object = attrs.field(init=False, default=None)
    _busy: str = attrs.field(init=False, default=None)
    _request: Deferred = attrs.field(init=False, default=None)
    _waiters: list = attrs.field(init=False, factory=list)
    _counts: dict = attrs.field(init=False, factory=lambda: {
        "registrations": 0, "heartbeats": 0, "deregistrations": 0, "expirations": 0,
        "failures": 0,
    })

    def __attrs_post_init__(self):
        # Service's own attributes (attrs replaced Service.__init__).
        self.running = 0
        self.name = None
        self.parent = None
        self._healthy = not self.gated

    @classmethod
    def from_config(cls, clock, client, config, **kwargs):
        """
        The registrar of a L{amalgam8.sidecar.config.SidecarConfig}: gated when it has
        health checks.
        """
        kwargs.setdefault("gated", bool(config.healthchecks))
        return cls(clock, client, registration_body(config), **kwargs)

    # -- the public surface ------------------------------------------------------------------

    @property
    def healthy(self):
        """Whether the instance may be registered (all health checks pass)."""
        return self._healthy

    @property
    def instance_id(self):
        """The registered instance's id, or L{None}."""
        return self._id

    def set_healthy(self, healthy):
        """
        The health checks' verdict: unhealthy deregisters at once, healthy registers again.
        Usable as the C{on_change} callback of a L{amalgam8.sidecar.health.HealthChecker}.
        """
        healthy = bool(healthy)
        if healthy == self._healthy:
            return
        self._healthy = healthy
        self.log.info("{service_name} is {health}", service_name=self._service_name,
                      health="healthy" if healthy else "unhealthy", healthy=healthy)
        self._converge()

    async def deregister(self):
        """
        Deregister and stay out until the service is started again (the graceful stop of
        SPEC B4). Idempotent, and it never fails: a registry that cannot be told is logged,
        and it drops the instance after its ttl anyway.

        A request under way ends first (it is bounded by C{timeout}). Cancelling the returned
        awaitable abandons the request in flight.
        """
        self._enabled = False
        self._converge()
        if self._idle():
            return
        waiter = Deferred(lambda _: self._abandon())
        self._waiters.append(waiter)
        await waiter

    def startService(self):
        Service.startService(self)
        self._enabled = True
        self._converge()

    def stopService(self):
        """
        Cancel every timer and deregister.

        @return: a L{Deferred} that fires (with L{None}, never failing) once deregistered.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self.deregister())

    def state(self):
        """What the debug API shows: a JSON-ready dict."""
        timer = self._timer
        return {
            "service_name": self._service_name,
            "registered": self._id is not None,
            "id": self._id,
            "ttl": self._ttl,
            "healthy": self._healthy,
            "last_heartbeat": self._last_heartbeat,
            "failures": self._failures,
            "last_error": self._last_error,
            "operation": self._busy,
            "next_attempt": timer.getTime() if timer is not None and timer.active() else None,
            "counts": dict(self._counts),
        }

    # -- the loop ----------------------------------------------------------------------------

    @property
    def _service_name(self):
        return self._registration.get("service_name")

    def _wanted(self):
        return bool(self.running and self._enabled and self._healthy)

    def _idle(self):
        return not self._wanted() and self._id is None and self._busy is None

    def _cancel_timer(self):
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _converge(self):
        """What is wanted changed: act now rather than at the next timer."""
        self._cancel_timer()
        self._go()

    def _fire(self):
        self._timer = None
        self._go()

    def _go(self):
        """Start the operation the state calls for; the end of a request calls this again."""
        if self._busy is not None:
            return
        if self._wanted():
            if self._id is None:
                self._start("register", self._register)
            else:
                self._start("heartbeat", self._heartbeat)
        elif self._id is not None:
            self._start("deregister", self._deregister)
        else:
            self._cancel_timer()
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    def _start(self, name, operation):
        self._busy = name
        Deferred.fromCoroutine(operation()).addErrback(self._bug, name)

    def _after(self, delay):
        """The request under way ended: go on now, or after C{delay} seconds."""
        self._busy = None
        if delay is not None and self._wanted():
            self._timer = self._clock.callLater(delay, self._fire)
        else:
            self._go()

    def _bug(self, failure, operation):
        self.log.failure("registrar {operation} crashed", failure, operation=operation)
        self._failures += 1
        self._after(self._backoff())

    def _abandon(self):
        request = self._request
        if request is not None:
            request.cancel()

    async def _call(self, method, *args):
        request = maybeDeferred(method, *args)
        request.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._timed_out)
        self._request = request
        try:
            return await request
        finally:
            self._request = None

    @staticmethod
    def _timed_out(result, timeout):
        # Whatever the cancelled request failed with, it failed because it took too long.
        if isinstance(result, Failure):
            raise TimeoutError(timeout, "registry request")
        return result

    def _jittered(self, delay):
        return delay * (1 + self._random.uniform(-self._jitter, self._jitter))

    def _backoff(self):
        exponent = min(max(self._failures - 1, 0), 32)
        delay = min(self._max_retry, self._retry * 2 ** exponent)
        # Jittered at the cap too (never above it), so that sidecars spread out.
        return min(self._max_retry, self._jittered(delay))

    def _describe(self, error):
        if isinstance(error, TimeoutError):
            return "no answer within {}s".format(self._timeout)
        if isinstance(error, CancelledError):
            return "cancelled"
        return str(error) or error.__class__.__name__

    def _failed(self, operation, error):
        self._failures += 1
        self._counts["failures"] += 1
        self._last_error = self._describe(error)
        delay = self._backoff()
        if not isinstance(error, _EXPECTED):
            self.log.failure("unexpected error in {operation} of {service_name}",
                             Failure(error), operation=operation,
                             service_name=self._service_name)
        self.log.warn(
            "{operation} of {service_name} failed ({failures} in a row): {why}; "
            "retrying in {delay:.1f}s",
            operation=operation, service_name=self._service_name, instance_id=self._id,
            failures=self._failures, why=self._last_error, delay=delay,
            status=getattr(error, "status", None),
        )
        self._after(delay)

    def _succeeded(self):
        self._failures = 0
        self._last_error = None
        self._last_heartbeat = self._clock.seconds()
        return self._jittered(self._ttl / 3.0)

    # -- the operations (each ends in _after) --------------------------------------------------

    async def _register(self):
        try:
            answer = await self._call(self._client.register, self._registration)
            if not isinstance(answer, dict) or not answer.get("id"):
                raise BadAnswer("the registry answered without an instance id: {!r}".format(
                    answer))
        except Exception as e:
            self._failed("registration", e)
            return
        self._id = str(answer["id"])
        ttl = answer.get("ttl")
        self._ttl = ttl if isinstance(ttl, (int, float)) and ttl > 0 else (
            self._registration["ttl"])
        self._counts["registrations"] += 1
        delay = self._succeeded()
        self.log.info("registered {service_name} ({endpoint}) as {instance_id}, ttl {ttl}s",
                      service_name=self._service_name,
                      endpoint=self._registration.get("endpoint"),
                      instance_id=self._id, ttl=self._ttl)
        self._after(delay)

    async def _heartbeat(self):
        try:
            await self._call(self._client.heartbeat, self._id)
        except APIError as e:
            if e.status != 410:
                self._failed("heartbeat", e)
                return
            self.log.warn("the registry no longer knows {instance_id} of {service_name} "
                          "(expired?): registering again",
                          instance_id=self._id, service_name=self._service_name)
            self._counts["expirations"] += 1
            self._id = None
            self._ttl = None
            self._after(None)
            return
        except Exception as e:
            self._failed("heartbeat", e)
            return
        self._counts["heartbeats"] += 1
        delay = self._succeeded()
        self.log.debug("heartbeat of {instance_id} sent", instance_id=self._id)
        self._after(delay)

    async def _deregister(self):
        instance_id = self._id
        try:
            await self._call(self._client.deregister, instance_id)
        except APIError as e:
            if e.status == 410:
                self.log.info("{instance_id} of {service_name} was already gone from the "
                              "registry", instance_id=instance_id,
                              service_name=self._service_name)
            else:
                self._deregistration_failed(instance_id, e)
        except Exception as e:
            self._deregistration_failed(instance_id, e)
        else:
            self._counts["deregistrations"] += 1
            self.log.info("deregistered {instance_id} of {service_name}",
                          instance_id=instance_id, service_name=self._service_name)
        self._id = None
        self._ttl = None
        self._after(None)

    def _deregistration_failed(self, instance_id, error):
        self._counts["failures"] += 1
        self._last_error = self._describe(error)
        if not isinstance(error, _EXPECTED):
            self.log.failure("unexpected error in deregistration of {service_name}",
                             Failure(error), service_name=self._service_name)
        self.log.warn("deregistration of {instance_id} of {service_name} failed: {why}; the "
                      "registry will drop it after its ttl",
                      instance_id=instance_id, service_name=self._service_name,
                      why=self._last_error, status=getattr(error, "status", None))
