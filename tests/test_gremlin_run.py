"""
Tests for L{amalgam8.gremlin.run}: whole recipe runs against the real controller API (in
memory, through StubTreq, on a Clock), with a simulated mesh standing in for the proxies:
the test requests it is sent produce the access-log records that proxies would ship, shaped
by the rules pushed, and shipped late as sidecars do.
"""

import xml.etree.ElementTree as ET
from collections import Counter

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.auth import Authenticator
from amalgam8.client import ControllerClient
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.store import MemoryStore
from amalgam8.controller.traces import TraceBuffer
from amalgam8.gremlin.model import LOG_KEY
from amalgam8.gremlin.recipe import parse_recipe
from amalgam8.gremlin.report import junit_xml
from amalgam8.gremlin.load import LoadResult
from amalgam8.gremlin.run import RecipeRun, RunOptions
from amalgam8.gremlin.traces import ControllerTraces

TOPOLOGY = {"services": [{"name": "gateway"}, {"name": "productpage"}, {"name": "reviews"}],
            "dependencies": {"gateway": ["productpage"], "productpage": ["reviews"]}}
ABORT = {"gremlins": [{"scenario": "abort_requests", "source": "productpage",
                       "dest": "reviews", "errorcode": 503}]}
DELAY = {"gremlins": [{"scenario": "delay_requests", "source": "productpage",
                       "dest": "reviews", "delaytime": "7s"}]}
CHECKS = {"checks": [
    {"name": "http_status", "source": "gateway", "dest": "productpage", "status": 200},
    {"name": "http_status", "source": "productpage", "dest": "reviews", "status": 200},
]}


@attrs.define
class RecordingController(ControllerClient):
    """The controller client, remembering the rules it pushed."""

    pushed: list = attrs.Factory(list)

    async def create_rules(self, rules):
        self.pushed.append(rules)
        return await ControllerClient.create_rules(self, rules)


class Mesh:
    """
    gateway -> productpage -> reviews, simulated: for each test request the records the two
    proxies would log, shaped by the action rules live at the controller (an abort on
    productpage -> reviews answers its code there, productpage still answers 200; a delay
    adds its duration), shipped C{ship} seconds after the request ends.
    """

    def __init__(self, case, clock, buffer, ship=0.5):
        self.case = case
        self.clock = clock
        self.buffer = buffer
        self.ship = ship
        self.requests = []
        self.drop = set()      # request indexes whose records never arrive
        self.answer = 200

    def actions(self):
        rules = self.case.read_rules()
        return [a for r in rules if r["destination"] == "reviews" for a in r.get("actions", [])]

    def send(self, http, clock, url, count, concurrency, headers_for, timeout=30,
             progress=None):
        actions = self.actions()
        traced = [a["log_value"] for a in actions if a["action"] == "trace"]
        abort = [a["return_code"] for a in actions if a["action"] == "abort"]
        delay = sum(a["duration"] for a in actions if a["action"] == "delay")
        ids, codes = [], []
        now = clock.seconds()
        for i in range(count):
            headers = headers_for(i)
            self.requests.append((url, headers))
            rid = headers["X-Request-ID"]
            ids.append(rid)
            codes.append(self.answer)
            if progress is not None:
                progress(i + 1, count)
            if not traced or i in self.drop:
                continue
            base = {"timestamp_in_ms": int(now * 1000) + i, "request_id": rid,
                    "method": "GET", LOG_KEY: traced[0]}
            inner = dict(base, src="productpage:v1", dst="reviews:v1", path="/reviews",
                         status=abort[0] if abort else 200, request_time=0.01 + delay)
            outer = dict(base, src="gateway:", dst="productpage:v1", path="/",
                         status=self.answer, request_time=0.02 + delay)
            # The inner call's record is shipped when it ends: after the delay.
            clock.callLater(self.ship + delay, self.buffer.add, "default", [inner])
            clock.callLater(self.ship, self.buffer.add, "default", [outer])
        unanswered = tuple(rid for rid, code in zip(ids, codes) if not code)
        return succeed(LoadResult(count, Counter(codes), Counter(), 0.1, tuple(ids),
                                  unanswered))


class RunTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore()
        self.buffer = TraceBuffer()
        auth = Authenticator(modes=("default",), clock=self.clock)
        self.http = StubTreq(ControllerAPI(self.store, auth, self.clock,
                                           traces=self.buffer).resource())
        self.controller = RecordingController(self.http, "http://controller",
                                              reactor=self.clock)
        self.mesh = Mesh(self, self.clock, self.buffer)
        self.progress = []

    def request(self, method, path, body=None):
        d = self.http.request(method, "http://controller" + path, json=body)
        self.http.flush()
        response = self.successResultOf(d)
        d = response.json()
        self.http.flush()
        return self.successResultOf(d)

    def read_rules(self):
        return self.request("GET", "/v1/rules")["rules"]

    def runner(self, scenarios=ABORT, checks=CHECKS, **options):
        recipe = parse_recipe(TOPOLOGY, scenarios, checks)
        options.setdefault("load", 5)
        options.setdefault("gateway", "http://gateway/productpage/")
        return RecipeRun(self.clock, self.controller, ControllerTraces(self.controller),
                         recipe, RunOptions(**options), http=object(), recipe_id="r1",
                         progress=self.progress.append, environ={"PATH": "/bin"},
                         send=self.mesh.send)

    def drive(self, run, limit=600):
        """Run to the end, advancing the clock in small steps; the report and the time."""
        started = self.clock.seconds()
        d = Deferred.fromCoroutine(run.run())
        for _ in range(limit * 10):
            self.http.flush()
            if d.called:
                break
            self.clock.advance(0.1)
        return self.successResultOf(d), self.clock.seconds() - started

    def test_fault_found(self):
        """
        The abort makes productpage -> reviews fail while the gateway still gets 200s: exit
        status 1, each check saying what it saw, and the recipe's rules gone afterwards.
        """
        report, _ = self.drive(self.runner())
        self.assertEqual(report.error, None)
        self.assertEqual(report.exit_status, 1)
        self.assertEqual([r.passed for r in report.faults.results], [True, False])
        self.assertIn("503", report.faults.results[1].seen)
        self.assertEqual(report.faults.records, 10)
        self.assertEqual(self.read_rules(), [])
        [rules] = self.controller.pushed
        self.assertTrue(all(r["tags"] == ["r1"] for r in rules))

    def test_test_traffic_marked(self):
        """Every test request carries an X-Request-ID the recipe's rules match."""
        self.drive(self.runner())
        ids = [headers["X-Request-ID"] for _, headers in self.mesh.requests]
        self.assertEqual(ids, ["gremlin-r1-{}".format(i) for i in range(5)])
        self.assertEqual({url for url, _ in self.mesh.requests},
                         {"http://gateway/productpage/"})

    def test_other_header(self):
        """With --header Cookie --pattern user=jason, the load sends that cookie too."""
        self.drive(self.runner(header="Cookie", pattern="user=jason"))
        self.assertEqual({headers["Cookie"] for _, headers in self.mesh.requests},
                         {"user=jason"})

    def test_all_pass(self):
        """No check fails: exit status 0."""
        checks = {"checks": [CHECKS["checks"][0]]}
        report, _ = self.drive(self.runner(checks=checks))
        self.assertEqual(report.exit_status, 0)
        self.assertTrue(report.to_json()["passed"])

    def test_waits_for_late_records(self):
        """
        A delayed call is logged when it ends: the run waits for the longest injected
        delay after the load (not a fixed sleep), and sees every record.
        """
        report, took = self.drive(self.runner(scenarios=DELAY))
        self.assertEqual(report.faults.records, 10)
        self.assertGreaterEqual(took, 7)
        self.assertLess(took, 7 + 3 + 1)

    def test_settles_quickly(self):
        """Without a delay the run ends soon after the records stop coming."""
        report, took = self.drive(self.runner())
        self.assertLess(took, 0.5 + 2 + 1)

    def test_missing_records(self):
        """
        When the records of some test requests never arrive, the run gives up after the
        timeout naming them, exit 2, and still removes its rules.
        """
        self.mesh.drop = {3}
        report, took = self.drive(self.runner(records_timeout=10))
        self.assertEqual(report.exit_status, 2)
        self.assertEqual(report.error, "after 10s, 1 of 5 test requests have no trace record "
                                       "(gremlin-r1-3) at the controller at http://controller")
        self.assertEqual(self.read_rules(), [])

    def test_no_records(self):
        """No record at all: the message says what to look at."""
        self.mesh.drop = set(range(5))
        report, _ = self.drive(self.runner(records_timeout=5))
        self.assertEqual(report.exit_status, 2)
        self.assertIn("no trace record of recipe r1 reached the controller", report.error)
        self.assertEqual(self.read_rules(), [])

    def test_unanswered_requests_not_awaited(self):
        """A request the gateway never answered (code 0) is not waited for."""
        self.mesh.drop = {2}
        original = self.mesh.send

        def send(*args, **kwargs):
            d = original(*args, **kwargs)
            load = self.successResultOf(d)
            return succeed(attrs.evolve(load, unanswered=("gremlin-r1-2",)))

        run = self.runner()
        run.send = send
        report, _ = self.drive(run)
        self.assertEqual(report.error, None)

    def test_nothing_answered(self):
        """No test request answered: the recipe cannot run (exit 2), rules removed."""
        self.mesh.answer = 0
        report, _ = self.drive(self.runner())
        self.assertEqual(report.exit_status, 2)
        self.assertIn("none of the 5 test requests was answered by http://gateway/",
                      report.error)
        self.assertEqual(self.read_rules(), [])

    def test_baseline_passes(self):
        """
        --baseline: trace-only rules first (no fault: the checks pass), removed, then the
        faults.
        """
        report, _ = self.drive(self.runner(baseline=True))
        self.assertEqual([r.passed for r in report.baseline.results], [True, True])
        self.assertEqual(report.baseline.recipe_id, "r1-baseline")
        self.assertEqual(report.exit_status, 1)
        baseline, faults = self.controller.pushed
        self.assertEqual({a["action"] for r in baseline for a in r["actions"]}, {"trace"})
        self.assertIn("abort", {a["action"] for r in faults for a in r["actions"]})
        self.assertEqual(self.read_rules(), [])
        self.assertEqual(report.to_json()["baseline"]["passed"], True)

    def test_baseline_fails(self):
        """A system that fails its checks without faults stops the run: exit 2, no fault."""
        self.mesh.answer = 500
        report, _ = self.drive(self.runner(baseline=True))
        self.assertEqual(report.exit_status, 2)
        self.assertIsNone(report.faults)
        self.assertTrue(report.error.startswith(
            "the baseline (no faults) already fails 1 of 2 checks: http_status gateway -> "
            "productpage: "), report.error)
        self.assertEqual(len(self.controller.pushed), 1)
        self.assertEqual(self.read_rules(), [])

    def test_script(self):
        """--run-load-script: its environment names the recipe; exit 0 goes on."""
        seen = []

        def script(reactor, command, env):
            seen.append((command, env))
            self.mesh.send(None, self.clock, "http://gw/", 2, 1,
                           lambda i: {"X-Request-ID": env["A8_GREMLIN_REQUEST_ID_PREFIX"]
                                      + str(i)})
            return succeed(0)

        run = self.runner(load=None, gateway=None, script="./load.sh")
        run.script = script
        report, _ = self.drive(run)
        self.assertEqual(report.error, None)
        [(command, env)] = seen
        self.assertEqual(command, "./load.sh")
        self.assertEqual(env["A8_GREMLIN_RECIPE_ID"], "r1")
        self.assertEqual(env["A8_GREMLIN_HEADER"], "X-Request-ID")
        self.assertEqual(env["A8_GREMLIN_REQUEST_ID_PREFIX"], "gremlin-r1-")
        self.assertEqual(env["PATH"], "/bin")
        self.assertEqual(report.faults.records, 4)

    def test_script_fails(self):
        """A load script that exits 3: exit 2 naming it, and the rules removed."""
        run = self.runner(load=None, gateway=None, script="./load.sh")
        run.script = lambda reactor, command, env: succeed(3)
        report, _ = self.drive(run)
        self.assertEqual(report.exit_status, 2)
        self.assertEqual(report.error, "the load script exited with status 3: ./load.sh")
        self.assertEqual(self.read_rules(), [])

    def test_cancelled(self):
        """Cancelled during the load (Ctrl-C in a8ctl): the rules are removed first."""
        pending = Deferred()
        run = self.runner(load=None, gateway=None, script="./load.sh")
        run.script = lambda reactor, command, env: pending
        d = Deferred.fromCoroutine(run.run())
        self.http.flush()
        self.assertNoResult(d)
        self.assertEqual(len(self.read_rules()), 2)
        d.cancel()
        self.http.flush()
        self.failureResultOf(d)
        self.assertEqual(self.read_rules(), [])

    def test_not_live(self):
        """A proxy that never applies the rules: exit 2 naming it, rules removed."""
        self.request("PUT", "/v1/proxies/p1", {"service": "productpage", "tags": ["v1"],
                                               "revision": 0})
        report, _ = self.drive(self.runner(live_timeout=3))
        self.assertEqual(report.exit_status, 2)
        self.assertEqual(report.error, "the recipe's rules are not live: timed out after 3s "
                                       "waiting for revision 1: 0 of 1 proxies in sync "
                                       "(lagging: p1 at 0)")
        self.assertEqual(self.read_rules(), [])
        self.assertEqual(self.mesh.requests, [])

    def test_progress(self):
        """Each step says what it is doing."""
        self.drive(self.runner())
        self.assertEqual(self.progress[0], "pushing 2 rules tagged r1")
        self.assertIn("test requests: 5 of 5", self.progress)
        self.assertEqual(self.progress[-1], "removed the rules tagged r1")

    def test_junit(self):
        """JUnit XML: a test case per check, a failure element for each that failed."""
        report, _ = self.drive(self.runner(baseline=True))
        root = ET.fromstring(junit_xml(report))
        suites = root.findall("testsuite")
        self.assertEqual([s.get("name") for s in suites],
                         ["gremlin.r1.baseline", "gremlin.r1"])
        cases = suites[1].findall("testcase")
        self.assertEqual([c.get("name") for c in cases],
                         ["http_status gateway -> productpage",
                          "http_status productpage -> reviews"])
        self.assertEqual([c.find("failure") is not None for c in cases], [False, True])
        self.assertEqual(suites[1].get("failures"), "1")

    def test_junit_error(self):
        """A recipe that could not run is an error element."""
        self.mesh.answer = 500
        report, _ = self.drive(self.runner(baseline=True))
        root = ET.fromstring(junit_xml(report))
        [suite] = root.findall("testsuite")
        self.assertEqual(suite.get("errors"), "1")
        self.assertIsNotNone(suite.find("testcase/error"))
