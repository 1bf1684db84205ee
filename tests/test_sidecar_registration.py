"""
Tests for L{amalgam8.sidecar.registration}: the sidecar's L{Registrar} (SPEC A5, B4), driven by
a L{Clock} through the real L{RegistryClient} against the in-memory registry (its own clock,
so that a test can make the registry expire the instance), or against scripted outages.
"""

import json
import random
from urllib.parse import urlsplit

from treq.testing import StringStubbingResource, StubTreq
from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.auth import Authenticator
from amalgam8.client import RegistryClient
from amalgam8.registry.api import RegistryAPI
from amalgam8.registry.store import MemoryStore
from amalgam8.sidecar.config import HealthCheck, SidecarConfig
from amalgam8.sidecar.registration import Registrar, registration_body

BODY = {
    "service_name": "reviews",
    "endpoint": {"type": "http", "value": "10.0.0.7:9080"},
    "tags": ["v1"],
}


class Extremes(random.Random):
    """A L{random.Random} whose C{uniform} answers its bounds in turn: low, high, low..."""

    def __init__(self):
        random.Random.__init__(self, 0)
        self.draws = 0

    def uniform(self, a, b):
        self.draws += 1
        return a if self.draws % 2 else b


class Middle(random.Random):
    """A L{random.Random} without jitter: C{uniform} answers the middle of its range."""

    def uniform(self, a, b):
        return (a + b) / 2.0


class SwitchHTTP:
    """
    The registrar's HTTP client: the in-memory registry while C{mode} is C{"up"}, else an
    outage: C{"refused"} (connection refused), C{"status"} (every request answered with
    C{status}) or C{"hang"} (no answer ever).

    @ivar requests: C{(time, method, path)} of every request.
    """

    def __init__(self, clock, resource):
        self.clock = clock
        self.registry = StubTreq(resource)
        self.failing = StubTreq(StringStubbingResource(self._failure))
        self.mode = "up"
        self.status = 503
        self.requests = []
        self.hanging = []

    def _failure(self, method, url, params, headers, data):
        return self.status, {b"content-type": b"application/json"}, b'{"Error": "down"}'

    def request(self, method, url, **kwargs):
        self.requests.append((self.clock.seconds(), method, urlsplit(url).path))
        if self.mode == "refused":
            return fail(ConnectionRefusedError("10.0.0.1", 8080))
        if self.mode == "hang":
            hanging = Deferred()
            self.hanging.append(hanging)
            return hanging
        if self.mode == "status":
            return self.failing.request(method, url, **kwargs)
        return self.registry.request(method, url, **kwargs)

    def methods(self):
        return [method for _, method, _ in self.requests]

    def times(self, method):
        return [time for time, m, _ in self.requests if m == method]


class RegistrarTests(SynchronousTestCase):
    """A L{Registrar} against the in-memory registry."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry_clock = Clock()
        self.registry_clock.advance(1000)
        self.store = MemoryStore(clock=self.registry_clock)
        api = RegistryAPI(self.store,
                          Authenticator(modes=("default",), clock=self.registry_clock),
                          self.registry_clock)
        self.http = SwitchHTTP(self.clock, api.resource())
        self.client = RegistryClient(self.http, "http://registry.test", "default")

    def make(self, body=BODY, **kwargs):
        kwargs.setdefault("random", random.Random(4))
        return Registrar(self.clock, self.client, body, **kwargs)

    def start(self, registrar):
        registrar.startService()
        self.addCleanup(self.stopped, registrar)
        return registrar

    def stopped(self, registrar):
        if registrar.running:
            self.successResultOf(registrar.stopService())

    def advance(self, seconds):
        """Move both clocks forward."""
        self.registry_clock.advance(seconds)
        self.clock.advance(seconds)

    def next_call(self):
        """Run the registrar's one pending timer; return how long it waited."""
        calls = self.clock.getDelayedCalls()
        self.assertEqual(len(calls), 1, calls)
        delay = calls[0].getTime() - self.clock.seconds()
        self.advance(delay)
        return delay

    def listed(self):
        _, instances = self.successResultOf(self.store.instances("default"))
        return [(i.id, i.service_name) for i in instances]

    # -- the service ---------------------------------------------------------------------------

    def test_provides_iservice(self):
        """A Registrar provides IService."""
        self.assertTrue(verifyObject(IService, self.make()))

    def test_registers_on_start(self):
        """Starting registers the instance at once, with the default ttl of 60 s."""
        registrar = self.start(self.make())
        self.assertEqual(self.http.methods(), ["POST"])
        [(instance_id, name)] = self.listed()
        self.assertEqual(name, "reviews")
        _, [instance] = self.successResultOf(self.store.instances("default"))
        self.assertEqual(instance.registration.ttl, 60)
        self.assertEqual(instance.tags, ("v1",))
        state = registrar.state()
        self.assertEqual(
            {k: state[k] for k in ("registered", "id", "ttl", "healthy", "failures",
                                   "last_heartbeat")},
            {"registered": True, "id": instance_id, "ttl": 60, "healthy": True,
             "failures": 0, "last_heartbeat": 1000})
        self.assertEqual(registrar.instance_id, instance_id)

    def test_nothing_before_start(self):
        """A registrar that is not started sends nothing and schedules nothing."""
        registrar = self.make()
        self.advance(100)
        self.assertEqual(self.http.requests, [])
        self.assertFalse(registrar.state()["registered"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeat_cadence(self):
        """Heartbeats come every ttl/3 give or take 10 %, and they keep the instance listed."""
        self.start(self.make())
        delays = [self.next_call() for _ in range(40)]
        self.assertEqual(self.http.methods(), ["POST"] + ["PUT"] * 40)
        for delay in delays:
            self.assertTrue(18 <= delay <= 22, delay)
        self.assertGreater(len(set(delays)), 10, "no jitter")
        self.assertEqual(len(self.listed()), 1)

    def test_heartbeat_jitter_bounds(self):
        """The jitter reaches -10 % and +10 % of ttl/3 and no further."""
        self.start(self.make(random=Extremes()))
        self.assertEqual([self.next_call() for _ in range(4)], [18.0, 22.0, 18.0, 22.0])

    def test_granted_ttl(self):
        """The heartbeat follows the ttl the registry granted, not the one asked for."""
        registrar = self.start(self.make(dict(BODY, ttl=3), random=Middle()))
        self.assertEqual(registrar.state()["ttl"], 10)
        self.assertAlmostEqual(self.next_call(), 10 / 3.0)

    def test_reregister_on_410(self):
        """When the registry has expired the instance, the next heartbeat's 410 makes the
        registrar register again at once, under the same id."""
        registrar = self.start(self.make(random=Middle()))
        [(instance_id, _)] = self.listed()
        self.registry_clock.advance(61)
        self.assertEqual(self.listed(), [])
        with capturedLogs() as events:
            self.next_call()
        self.assertEqual(self.http.methods(), ["POST", "PUT", "POST"])
        self.assertEqual(self.http.times("POST")[-1], self.http.times("PUT")[-1])
        self.assertEqual(self.listed(), [(instance_id, "reviews")])
        state = registrar.state()
        self.assertEqual((state["id"], state["failures"], state["counts"]["expirations"]),
                         (instance_id, 0, 1))
        [expired] = [e for e in events if "no longer knows" in e["log_format"]]
        self.assertEqual((expired["log_level"], expired["instance_id"]),
                         (LogLevel.warn, instance_id))
        self.assertEqual(self.next_call(), 20)

    def test_retry_with_backoff_then_recovery(self):
        """While the registry is unreachable, registration is retried after 5 s, then
        10, 20 and 30 s at most; once it answers, the instance is registered and the backoff
        starts over."""
        self.http.mode = "refused"
        registrar = self.start(self.make(random=Middle()))
        delays = [self.next_call() for _ in range(5)]
        self.assertEqual(delays, [5, 10, 20, 30, 30])
        state = registrar.state()
        self.assertEqual((state["registered"], state["failures"]), (False, 6))
        self.assertIn("Connection was refused", state["last_error"])
        self.assertEqual(state["next_attempt"], self.clock.seconds() + 30)
        self.http.mode = "up"
        self.assertEqual(self.next_call(), 30)
        self.assertEqual(len(self.listed()), 1)
        self.assertEqual(registrar.state()["failures"], 0)
        self.assertEqual(self.next_call(), 20)
        self.http.mode = "status"
        self.assertEqual(self.next_call(), 20)
        self.assertEqual(self.next_call(), 5)
        self.http.mode = "up"
        self.assertEqual(self.next_call(), 10)
        self.assertEqual(self.http.methods()[-4:], ["PUT", "PUT", "PUT", "PUT"])
        self.assertEqual(registrar.state()["failures"], 0)
        self.assertEqual(self.next_call(), 20)

    def test_retry_jitter(self):
        """Retries are jittered too, and never wait longer than the cap."""
        self.http.mode = "refused"
        self.start(self.make(random=Extremes()))
        delays = [self.next_call() for _ in range(6)]
        self.assertEqual([round(d, 6) for d in delays], [4.5, 11.0, 18.0, 30.0, 27.0, 30.0])

    def test_server_error_is_retried(self):
        """A 500 from the registry is logged and retried after 5 s."""
        self.http.mode = "status"
        self.http.status = 500
        with capturedLogs() as events:
            registrar = self.start(self.make(random=Middle()))
        [failed] = [e for e in events if e.get("operation") == "registration"]
        self.assertEqual((failed["log_level"], failed["status"], failed["delay"]),
                         (LogLevel.warn, 500, 5))
        self.assertIn("500", registrar.state()["last_error"])
        self.http.mode = "up"
        self.assertEqual(self.next_call(), 5)
        self.assertTrue(registrar.state()["registered"])

    def test_refused_request_is_not_retried_sooner(self):
        """A registry that refuses the registration (403 quota) is retried with backoff, not
        in a loop."""
        self.http.mode = "status"
        self.http.status = 403
        self.start(self.make(random=Middle()))
        self.assertEqual([self.next_call() for _ in range(3)], [5, 10, 20])
        self.assertEqual(len(self.http.requests), 4)

    def test_heartbeat_outage_then_410(self):
        """Heartbeats that fail are retried; when the registry is back after having expired
        the instance, the 410 makes the registrar register again."""
        registrar = self.start(self.make(random=Middle()))
        self.http.mode = "refused"
        self.assertEqual([self.next_call() for _ in range(5)], [20, 5, 10, 20, 30])
        self.assertEqual(self.listed(), [])
        self.assertEqual(registrar.state()["failures"], 5)
        self.http.mode = "up"
        self.next_call()
        self.assertEqual(self.http.methods()[-2:], ["PUT", "POST"])
        self.assertEqual(len(self.listed()), 1)
        self.assertEqual(registrar.state()["failures"], 0)

    def test_request_timeout(self):
        """A request the registry never answers is given up after the timeout and retried."""
        self.http.mode = "hang"
        registrar = self.start(self.make(random=Middle(), timeout=10))
        [hanging] = self.http.hanging
        self.assertEqual(self.next_call(), 10)
        self.assertTrue(hanging.called)
        self.assertIn("no answer within 10", registrar.state()["last_error"])
        self.http.mode = "up"
        self.assertEqual(self.next_call(), 5)
        self.assertTrue(registrar.state()["registered"])

    def test_bad_answer(self):
        """A registration answer without an id is a failure, retried."""
        self.http.mode = "status"
        self.http.status = 201
        registrar = self.start(self.make(random=Middle()))
        self.assertFalse(registrar.state()["registered"])
        self.assertIn("without an instance id", registrar.state()["last_error"])
        self.assertEqual(self.next_call(), 5)

    # -- stopping ------------------------------------------------------------------------------

    def test_deregister_on_stop(self):
        """Stopping deregisters the instance and leaves no timer behind."""
        registrar = self.start(self.make())
        self.next_call()
        with capturedLogs() as events:
            stopped = registrar.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.http.methods(), ["POST", "PUT", "DELETE"])
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(registrar.state()["registered"])
        [event] = [e for e in events if "deregistered" in e["log_format"]]
        self.assertEqual(event["log_level"], LogLevel.info)
        self.advance(1000)
        self.assertEqual(len(self.http.requests), 3)

    def test_stop_while_registry_down(self):
        """Stopping while the registry is down logs the failed deregistration, does not
        fail, and leaves no timer behind."""
        registrar = self.start(self.make())
        self.http.mode = "refused"
        with capturedLogs() as events:
            self.assertIsNone(self.successResultOf(registrar.stopService()))
        [event] = [e for e in events if "deregistration of" in e["log_format"]]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_retrying(self):
        """Stopping while a retry is pending cancels it; there is nothing to deregister."""
        self.http.mode = "refused"
        registrar = self.start(self.make())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertIsNone(self.successResultOf(registrar.stopService()))
        self.assertEqual(self.http.methods(), ["POST"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_already_expired(self):
        """Deregistering an instance the registry has already dropped (410) succeeds."""
        registrar = self.start(self.make())
        self.registry_clock.advance(61)
        self.assertIsNone(self.successResultOf(registrar.stopService()))
        self.assertEqual(self.http.methods(), ["POST", "DELETE"])
        self.assertEqual(registrar.state()["failures"], 0)

    def test_stop_during_registration(self):
        """A stop that comes while the registration is under way waits for its answer, then
        deregisters what was registered."""
        self.http.mode = "hang"
        registrar = self.start(self.make())
        [hanging] = self.http.hanging
        stopped = registrar.stopService()
        self.assertNoResult(stopped)
        self.http.mode = "up"
        answer = self.successResultOf(self.http.registry.request(
            "POST", "http://registry.test/api/v1/instances",
            data=json.dumps(dict(BODY, ttl=60)).encode("utf-8"),
            headers={b"content-type": [b"application/json"]}))
        self.assertEqual(len(self.listed()), 1)
        hanging.callback(answer)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.http.methods(), ["POST", "DELETE"])
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_stop(self):
        """Cancelling the stop abandons the request in flight."""
        self.http.mode = "hang"
        registrar = self.start(self.make())
        [hanging] = self.http.hanging
        stopped = registrar.stopService()
        self.assertNoResult(stopped)
        stopped.cancel()
        self.assertTrue(hanging.called)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deregister_idempotent(self):
        """deregister() twice deregisters once; the registrar then stays out, healthy or
        not, until it is started again."""
        registrar = self.start(self.make())
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(registrar.deregister())))
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(registrar.deregister())))
        self.assertEqual(self.http.methods(), ["POST", "DELETE"])
        registrar.set_healthy(False)
        registrar.set_healthy(True)
        self.advance(100)
        self.assertEqual(self.http.methods(), ["POST", "DELETE"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.successResultOf(registrar.stopService()))
        registrar.startService()
        self.assertEqual(self.http.methods(), ["POST", "DELETE", "POST"])

    # -- health --------------------------------------------------------------------------------

    def test_unhealthy_deregisters(self):
        """set_healthy(False) deregisters at once and stops the heartbeats; set_healthy(True)
        registers again at once."""
        registrar = self.start(self.make())
        registrar.set_healthy(False)
        self.assertEqual(self.http.methods(), ["POST", "DELETE"])
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.advance(100)
        self.assertEqual(len(self.http.requests), 2)
        state = registrar.state()
        self.assertEqual((state["healthy"], state["registered"]), (False, False))
        registrar.set_healthy(True)
        self.assertEqual(self.http.methods(), ["POST", "DELETE", "POST"])
        self.assertEqual(len(self.listed()), 1)
        self.assertTrue(registrar.healthy)

    def test_same_health_is_no_change(self):
        """Telling the registrar what it already knows sends nothing."""
        registrar = self.start(self.make())
        registrar.set_healthy(True)
        self.assertEqual(self.http.methods(), ["POST"])

    def test_gated(self):
        """A gated registrar registers only once it is healthy."""
        registrar = self.start(self.make(gated=True))
        self.assertFalse(registrar.healthy)
        self.advance(100)
        self.assertEqual(self.http.requests, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        registrar.set_healthy(True)
        self.assertEqual(self.http.methods(), ["POST"])
        self.assertEqual(len(self.listed()), 1)

    def test_unhealthy_during_outage(self):
        """Falling unhealthy while retrying drops the retry; nothing is left to do."""
        self.http.mode = "refused"
        registrar = self.start(self.make())
        registrar.set_healthy(False)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.http.mode = "up"
        registrar.set_healthy(True)
        self.assertEqual(len(self.listed()), 1)

    def test_unhealthy_during_heartbeat(self):
        """Falling unhealthy while a heartbeat is under way deregisters when it ends."""
        registrar = self.start(self.make(random=Middle()))
        self.http.mode = "hang"
        self.next_call()
        [hanging] = self.http.hanging
        registrar.set_healthy(False)
        self.assertEqual(self.http.methods(), ["POST", "PUT"])
        self.http.mode = "up"
        hanging.errback(ConnectionRefusedError())
        self.assertEqual(self.http.methods(), ["POST", "PUT", "DELETE"])
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- configuration -------------------------------------------------------------------------

    def test_from_config(self):
        """from_config builds the registration of SPEC A5 and gates it on health checks."""
        config = SidecarConfig(service_name="ratings", service_tags=("v2", "eu"),
                               endpoint_host="10.1.2.3", endpoint_port=8080, register=True,
                               healthchecks=(HealthCheck("tcp", "localhost:8080"),))
        registrar = Registrar.from_config(self.clock, self.client, config)
        self.assertTrue(registrar.gated)
        self.assertFalse(registrar.healthy)
        self.assertEqual(registration_body(config), {
            "service_name": "ratings",
            "endpoint": {"type": "http", "value": "10.1.2.3:8080"},
            "tags": ["v2", "eu"],
            "ttl": 60,
        })
        ungated = Registrar.from_config(self.clock, self.client,
                                        SidecarConfig(service_name="a", endpoint_host="::1",
                                                      endpoint_port=80))
        self.assertTrue(ungated.healthy)
        self.assertEqual(registration_body(SidecarConfig(endpoint_host="::1", endpoint_port=80))
                         ["endpoint"]["value"], "[::1]:80")
