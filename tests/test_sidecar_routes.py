"""
Tests for L{amalgam8.sidecar.routes}: the route manager against in-memory registry and
controller servers (the real APIs through StubTreq) with a Clock.
"""

import json

from treq.testing import StubTreq
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from amalgam8.auth import Authenticator
from amalgam8.client import ControllerClient, RegistryClient
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.store import MemoryStore as RuleStore
from amalgam8.registry.api import RegistryAPI
from amalgam8.registry.store import MemoryStore as InstanceStore
from amalgam8.sidecar.routes import RouteManager
from amalgam8.testing.controller import route_rule


class Switchable(Resource):
    """A resource that answers through C{inner}, or with 503 while down."""

    isLeaf = True

    def __init__(self, inner):
        Resource.__init__(self)
        self.inner = inner
        self.down = False
        self.seen = []

    def render(self, request):
        self.seen.append((request.method, request.path))
        if self.down:
            request.setResponseCode(503)
            return b'{"error":"down"}'
        return self.inner.render(request)


class RouteManagerTests(SynchronousTestCase):
    def setUp(self):
        # The servers' clock and the route manager's own (its timers are checked alone).
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.mclock = Clock()
        self.mclock.advance(1_700_000_000)
        auth = Authenticator(modes=("default",), clock=self.clock)
        self.instances = InstanceStore(clock=self.clock)
        self.instances.startService()
        self.addCleanup(self.instances.stopService)
        self.rules = RuleStore()
        self.registry = Switchable(RegistryAPI(self.instances, auth, self.clock).resource())
        self.controller = Switchable(ControllerAPI(self.rules, auth, self.clock).resource())
        self.registry_http = StubTreq(self.registry)
        self.controller_http = StubTreq(self.controller)
        self.pushed = []
        self.push_result = None
        self.push_answer = None
        self.refused = None         # a list: refuse every push (and count them in it)

    def push(self, state):
        if self.refused is not None:
            self.refused.append(self.mclock.seconds())
            return fail(ConnectionRefusedError())
        if self.push_result is not None:
            return self.push_result
        self.pushed.append(json.loads(json.dumps(state)))
        return succeed(self.push_answer)

    def start(self, **kwargs):
        manager = RouteManager(
            self.mclock,
            RegistryClient(self.registry_http, "http://registry", reactor=self.mclock),
            ControllerClient(self.controller_http, "http://controller", reactor=self.mclock),
            self.push, "proxy-1", "productpage", ("v1",), **kwargs)
        manager.startService()
        self.addCleanup(lambda: manager.running and manager.stopService())
        self.settle()
        return manager

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.mclock.advance(seconds)

    def settle(self, seconds=0.01):
        for _ in range(5):
            self.registry_http.flush()
            self.controller_http.flush()
            self.advance(seconds)

    def run_timers(self, seconds):
        """Advance the manager's clock by C{seconds}, one delayed call at a time."""
        end = self.mclock.seconds() + seconds
        while True:
            due = [c.getTime() for c in self.mclock.getDelayedCalls()
                   if c.getTime() <= end]
            if not due:
                break
            self.mclock.advance(max(0, min(due) - self.mclock.seconds()))
        self.mclock.advance(end - self.mclock.seconds())

    def register(self, value="10.0.0.1:80", tags=("v1",)):
        self.successResultOf(self.registry_http.post(
            "http://registry/api/v1/instances",
            json={"service_name": "reviews", "endpoint": {"type": "http", "value": value},
                  "tags": list(tags)}))

    def add_rule(self, rule):
        self.successResultOf(self.controller_http.post(
            "http://controller/v1/rules", json={"rules": [rule]}))

    def test_first_push_has_both(self):
        """The first push carries the instances and rules read from both servers."""
        self.register()
        self.add_rule(route_rule("r1"))
        manager = self.start()
        first = manager.first_state()
        self.assertEqual(len(self.pushed), 1)
        self.assertEqual([i["endpoint"]["value"] for i in self.pushed[0]["instances"]],
                         ["10.0.0.1:80"])
        self.assertEqual([r["id"] for r in self.pushed[0]["rules"]], ["r1"])
        self.successResultOf(first)

    def test_rule_change_pushed(self):
        """A rule posted to the controller reaches the proxy through the blocking read."""
        manager = self.start()
        self.assertEqual(self.pushed[-1]["rules"], [])
        self.add_rule(route_rule("r2"))
        self.settle()
        self.assertEqual([r["id"] for r in self.pushed[-1]["rules"]], ["r2"])
        self.assertEqual(manager.pushed[0], 1)

    def test_instance_change_pushed(self):
        """A registration reaches the proxy through the registry's blocking read."""
        self.start()
        self.register("10.0.0.9:80")
        self.settle()
        self.assertEqual([i["endpoint"]["value"] for i in self.pushed[-1]["instances"]],
                         ["10.0.0.9:80"])

    def test_burst_coalesced(self):
        """The first change after a quiet spell is pushed at once; the changes that follow
        it within the coalescing window are pushed together once."""
        self.start(coalesce=0.5)
        before = len(self.pushed)
        for n in range(5):
            self.register("10.0.0.{}:80".format(n))
            self.registry_http.flush()
            self.advance(0.01)
        self.settle(0.5)
        self.assertEqual(len(self.pushed) - before, 1)
        self.assertEqual(len(self.pushed[-1]["instances"]), 5)
        # After a quiet second, the next change goes out at once (no timer to wait for).
        self.advance(1)
        count = len(self.pushed)
        self.register("10.0.0.9:80")
        self.registry_http.flush()
        self.assertEqual(len(self.pushed), count + 1)

    def test_controller_down_keeps_state(self):
        """With the controller down nothing is pushed; the proxy keeps its last state,
        and updates resume when it is back."""
        self.add_rule(route_rule("r1"))
        manager = self.start()
        self.controller.down = True
        self.advance(31)
        self.settle(1)
        self.settle(2)
        count = len(self.pushed)
        self.assertEqual([r["id"] for r in self.pushed[-1]["rules"]], ["r1"])
        self.assertGreater(manager.debug_state()["rules"]["failures"], 0)
        self.controller.down = False
        self.add_rule(route_rule("r3"))
        self.settle(1)
        self.settle(2)
        self.settle(4)
        self.assertGreater(len(self.pushed), count)
        self.assertEqual(sorted(r["id"] for r in self.pushed[-1]["rules"]), ["r1", "r3"])

    def test_nothing_before_both(self):
        """While the registry has never answered, nothing is pushed (never an empty state)."""
        self.registry.down = True
        manager = self.start()
        self.settle(1)
        self.assertEqual(self.pushed, [])
        self.assertNoResult(manager.first_state())

    def test_proxy_restart_repushes(self):
        """proxy_restarted pushes the current state again."""
        manager = self.start()
        count = len(self.pushed)
        manager.proxy_restarted()
        self.settle()
        self.assertEqual(len(self.pushed), count + 1)

    def test_restarted_proxy_polled_until_it_answers(self):
        """
        After a restart the state is pushed at once, and while the new proxy's admin port
        refuses, again every 25 ms (not after a growing delay): it is taken as soon as the
        proxy listens.
        """
        manager = self.start()
        count = len(self.pushed)
        self.refused = []
        manager.proxy_restarted()
        started = self.mclock.seconds()
        self.run_timers(0.21)
        self.assertEqual([round(t - started, 3) for t in self.refused],
                         [round(0.025 * n, 3) for n in range(9)])
        self.refused = None
        self.run_timers(0.025)
        self.assertEqual(len(self.pushed), count + 1)
        self.assertEqual(manager.push_failures, 9)

    def test_retries_back_off_once_the_proxy_is_up_a_while(self):
        """Refused pushes long after a (re)start back off: 0.05, 0.1, 0.2 s... up to 2 s."""
        manager = self.start()
        self.advance(5)
        self.refused = []
        self.add_rule(route_rule("r1"))
        self.settle(0)
        started = self.refused[0]
        self.run_timers(2)
        self.assertEqual([round(t - started, 3) for t in self.refused],
                         [0, 0.05, 0.15, 0.35, 0.75, 1.55])
        self.assertEqual(manager.push_failures, 6)

    def test_restart_cuts_a_retry_wait_short(self):
        """A push waiting out its backoff goes out at once when the proxy restarts."""
        manager = self.start()
        self.advance(5)
        self.refused = []
        self.add_rule(route_rule("r1"))
        self.settle(0)
        self.run_timers(0.5)     # refused at 0, 0.05, 0.15, 0.35: next at 0.75
        self.assertEqual(len(self.refused), 4)
        self.refused = None
        manager.proxy_restarted()
        self.assertEqual([r["id"] for r in self.pushed[-1]["rules"]], ["r1"])
        manager.stopService()
        self.assertEqual(self.mclock.getDelayedCalls(), [])

    def test_push_failure_retried(self):
        """A push the proxy refuses is retried until it is taken."""
        self.push_result = fail(ConnectionRefusedError())
        self.push_result.addErrback(lambda f: f)
        manager = self.start()
        self.push_result = None
        self.settle(0.1)
        self.settle(0.5)
        self.assertEqual(len(self.pushed), 1)
        self.assertGreater(manager.push_failures, 0)

    def test_reports_status(self):
        """After a push the controller knows what the proxy applied."""
        self.add_rule(route_rule("r1"))
        self.start()
        self.settle(0.1)        # reports go out within report_delay (0.5 s), jittered
        response = self.successResultOf(self.controller_http.get(
            "http://controller/v1/rules/status"))
        status = json.loads(self.successResultOf(response.content()))
        self.assertEqual((status["proxies"], status["in_sync"]), (1, 1))

    def status(self):
        response = self.successResultOf(self.controller_http.get(
            "http://controller/v1/rules/status"))
        return json.loads(self.successResultOf(response.content()))

    def test_rejected_reported(self):
        """
        The rules the proxy's answer says it skipped are logged (a warning naming the rule
        and why, once while they stay rejected) and reported, so the controller's status
        names them; a push that rejects none clears them.
        """
        self.add_rule(route_rule("r1"))
        self.push_answer = {"version": 1, "rejected": [
            {"id": "r1", "error": "pcre_compile() failed: missing )"}]}
        with capturedLogs() as events:
            manager = self.start()
            self.settle(0.1)
            self.register("10.0.0.2:80")
            self.settle(0.1)
        self.assertGreater(manager.pushes, 1)
        warnings = [e for e in events if e.get("rule_id") == "r1"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["log_level"].name, warnings[0]["error"]),
                         ("warn", "pcre_compile() failed: missing )"))
        self.assertEqual(self.status()["rejected"], [
            {"id": "r1", "error": "pcre_compile() failed: missing )",
             "proxies": ["proxy-1"]}])
        self.assertEqual(manager.debug_state()["rejected"],
                         [{"id": "r1", "error": "pcre_compile() failed: missing )"}])
        self.push_answer = {"version": 2, "rejected": []}
        self.register("10.0.0.3:80")
        self.settle(0.1)
        self.assertNotIn("rejected", self.status())
        self.assertEqual(manager.rejected, ())

    def test_old_proxy_answer(self):
        """An answer without rejected (an older proxy), or none at all, rejects nothing."""
        for answer in ({"version": 3}, None, {"rejected": "no"}):
            self.push_answer = answer
            manager = self.start()
            self.settle(0.1)
            self.assertEqual((manager.rejected, manager._report_body()["rejected"]),
                             ((), []))
            manager.stopService()

    def test_rejected_entries_cut(self):
        """Odd entries are named as well as they can be and cut to what a report holds."""
        from amalgam8.sidecar.routes import rejected_of

        self.assertEqual(rejected_of({"rejected": [
            {"id": "r1", "error": "e" * 2000}, {"id": 5}, "r3", {"error": ""}]}),
            (("r1", "e" * 1024), ("(no id)", "rejected"), ("(no id)", "rejected")))
        self.assertEqual(len(rejected_of({"rejected": [{"id": "a", "error": "b"}] * 2000})),
                         1000)

    def test_polling_fallback(self):
        """Against a server without revisions (0.4) the manager polls every poll seconds."""
        calls = []

        class OldController(Resource):
            isLeaf = True

            def render(self, request):
                if request.method == b"GET":
                    calls.append(request.args)
                request.setHeader(b"content-type", b"application/json")
                return json.dumps({"rules": [route_rule("old")]}).encode()

        self.controller_http = StubTreq(OldController())
        manager = self.start(controller_poll=15)
        self.assertEqual([r["id"] for r in self.pushed[-1]["rules"]], ["old"])
        before = len(calls)
        self.advance(15)
        self.settle()
        self.assertEqual(len(calls), before + 1)
        self.assertFalse(manager.debug_state()["rules"]["blocking"])
        self.assertNotIn(b"wait", calls[-1])

    def test_reports_coalesced(self):
        """A burst of pushes is reported once, within report_delay."""
        class Latest:
            """Jitter at its largest: the report goes out report_delay after the push."""

            def uniform(self, low, high):
                return high

        manager = self.start(coalesce=0.001, random=Latest())
        self.settle(0.2)

        def reports():
            return [seen for seen in self.controller.seen if seen[0] == b"PUT"]

        before = len(reports())
        pushes = manager.pushes
        for n in range(5):
            self.register("10.1.0.{}:80".format(n))
            self.settle(0.0005)
        self.assertGreater(manager.pushes, pushes + 1)
        self.settle(0.2)
        self.assertEqual(len(reports()) - before, 1)

    def test_stop_leaves_no_timers(self):
        """A stopped manager leaves no delayed call and no open read."""
        manager = self.start()
        manager.stopService()
        self.settle()
        self.assertEqual(self.mclock.getDelayedCalls(), [])
