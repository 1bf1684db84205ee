"""
Tests for L{amalgam8.gremlin.load}: L{send_requests} through StubTreq on a Clock, and
L{run_script} on the fake process reactor and then with real C{/bin/sh} scripts.
"""

import io
import os
import signal

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from amalgam8.gremlin.load import MAX_REASONS, run_script, send_requests
from amalgam8.testing.process import FakeProcessReactor, FakeSignaller

URL = "http://gateway.test/productpage/productpage"


class Held(Resource):
    """Holds every request until the test answers it; records headers and concurrency."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.pending = []
        self.seen = []
        self.most = 0
        self.lost = 0

    def render_GET(self, request):
        self.pending.append(request)
        self.seen.append({k.decode(): v[0].decode()
                          for k, v in request.requestHeaders.getAllRawHeaders()})
        self.most = max(self.most, len(self.pending))
        request.notifyFinish().addErrback(self._lost)
        return NOT_DONE_YET

    def _lost(self, failure):
        self.lost += 1

    def answer(self, code=200, count=None):
        for request in self.pending[:count]:
            request.setResponseCode(code)
            request.write(b"body")
            request.finish()
        del self.pending[:count]


class Failing:
    """A treq-like client whose request i fails with reasons[i % len(reasons)]."""

    def __init__(self, reasons):
        self.reasons = reasons
        self.calls = 0

    def get(self, url, headers=None, **kwargs):
        reason = self.reasons[self.calls % len(self.reasons)]
        self.calls += 1
        return fail(reason)


def ids(i):
    return {"X-Request-ID": "gremlin-r1-{}".format(i), "Cookie": "user=jason"}


class SendRequestsTests(SynchronousTestCase):
    """send_requests: concurrency, statuses, failures, timeouts, progress, cancelling."""

    def setUp(self):
        self.clock = Clock()
        self.resource = Held()
        self.http = StubTreq(self.resource)
        self.progress = []

    def send(self, count=10, concurrency=3, http=None, timeout=30):
        return send_requests(http or self.http, self.clock, URL, count, concurrency, ids,
                             timeout=timeout,
                             progress=lambda done, n: self.progress.append((done, n)))

    def answer(self, code=200, count=None):
        self.resource.answer(code, count)
        self.http.flush()

    def test_concurrency(self):
        """At most `concurrency` requests are in flight; each answer lets the next go."""
        d = self.send(count=10, concurrency=3)
        self.assertEqual(len(self.resource.pending), 3)
        self.answer(count=1)
        self.assertEqual(len(self.resource.pending), 3)
        self.assertEqual(self.progress, [(1, 10)])
        while self.resource.pending:
            self.clock.advance(0.5)
            self.answer()
        result = self.successResultOf(d)
        self.assertEqual(self.resource.most, 3)
        self.assertEqual(result.sent, 10)
        self.assertEqual(dict(result.statuses), {200: 10})
        self.assertEqual(result.request_ids, tuple("gremlin-r1-{}".format(i) for i in range(10)))
        self.assertEqual(self.progress, [(n, 10) for n in range(1, 11)])
        self.assertEqual(result.elapsed, 1.5)   # three more rounds of answers, 0.5 s apart

    def test_headers(self):
        """Request i carries headers_for(i)."""
        d = self.send(count=2, concurrency=2)
        self.assertEqual([(h["X-Request-Id"], h["Cookie"]) for h in self.resource.seen],
                         [("gremlin-r1-0", "user=jason"), ("gremlin-r1-1", "user=jason")])
        self.answer()
        self.successResultOf(d)

    def test_statuses(self):
        """Every status is counted."""
        d = self.send(count=4, concurrency=4)
        self.answer(503, count=1)
        self.answer(200, count=2)
        self.answer(302)
        result = self.successResultOf(d)
        self.assertEqual(dict(result.statuses), {503: 1, 200: 2, 302: 1})
        self.assertEqual(result.to_json()["statuses"], {"200": 2, "302": 1, "503": 1})

    def test_timeout(self):
        """A request not answered within `timeout` is cancelled and counted as status 0."""
        d = self.send(count=3, concurrency=3, timeout=5)
        self.answer(count=1)
        self.clock.advance(5)
        self.http.flush()
        result = self.successResultOf(d)
        self.assertEqual(dict(result.statuses), {200: 1, 0: 2})
        self.assertEqual(dict(result.errors), {"timed out after 5 s": 2})
        self.assertEqual(self.resource.lost, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused(self):
        """A request that gets no connection counts as status 0, and why is kept."""
        result = self.successResultOf(self.send(
            count=3, http=Failing([ConnectionRefusedError("no")])))
        self.assertEqual(dict(result.statuses), {0: 3})
        self.assertEqual(list(result.errors), ["ConnectionRefusedError: Connection was "
                                               "refused by other side: no."])
        self.assertEqual(result.sent, 3)

    def test_few_reasons(self):
        """At most MAX_REASONS distinct reasons are kept; the others count as other."""
        reasons = [ValueError("reason {}".format(n)) for n in range(MAX_REASONS + 3)]
        result = self.successResultOf(self.send(count=len(reasons), http=Failing(reasons)))
        self.assertEqual(len(result.errors), MAX_REASONS + 1)
        self.assertEqual(result.errors["other"], 3)
        self.assertEqual(sum(result.errors.values()), len(reasons))

    def test_cancel(self):
        """Cancelling stops sending and cancels the requests in flight."""
        d = self.send(count=10, concurrency=3)
        d.cancel()
        self.http.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.resource.lost, 3)
        self.assertEqual(len(self.resource.seen), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_progress_fails(self):
        """An error of progress fails the load and cancels the other requests."""
        d = send_requests(self.http, self.clock, URL, 10, 3, ids,
                          progress=lambda done, n: 1 / 0)
        self.answer(count=1)
        self.failureResultOf(d, ZeroDivisionError)
        self.http.flush()
        self.assertEqual(self.resource.lost, 2)
        self.assertEqual(len(self.resource.seen), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_none(self):
        """Zero requests is an empty result at once."""
        result = self.successResultOf(self.send(count=0))
        self.assertEqual((result.sent, dict(result.statuses), result.request_ids), (0, {}, ()))

    def test_bad_arguments(self):
        """A negative count or a concurrency below 1 is refused before anything is sent."""
        self.assertRaises(ValueError, self.send, count=-1)
        self.assertRaises(ValueError, self.send, concurrency=0)
        self.assertEqual(self.resource.seen, [])


class RunScriptUnitTests(SynchronousTestCase):
    """run_script on the fake process reactor: spawning, output, exits, stopping."""

    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.signaller = FakeSignaller(self.reactor)
        self.out = io.BytesIO()
        self.err = io.BytesIO()

    def run_script(self, command="./load.sh", env=None, cwd=None, grace=5.0):
        d = run_script(self.reactor, command, env or {"A8_GREMLIN_RECIPE_ID": "r1"}, cwd=cwd,
                       grace=grace, stdout=self.out, stderr=self.err,
                       signaller=self.signaller)
        return d, self.reactor.processes[-1]

    def test_spawn(self):
        """/bin/sh -c runs the command as a group leader, with our environment plus env."""
        d, process = self.run_script(cwd="/tmp")
        self.assertEqual(process.args[-3:], ["/bin/sh", "-c", "./load.sh"])
        self.assertEqual(process.executable, process.args[0])
        self.assertEqual(process.env["A8_GREMLIN_RECIPE_ID"], "r1")
        self.assertEqual(process.env.get("PATH"), os.environ.get("PATH"))
        self.assertEqual(process.path, "/tmp")
        self.assertIn(0, process.closed)
        process.end(0)
        self.reactor.advance(0.05)
        self.assertEqual(self.successResultOf(d), 0)

    def test_output(self):
        """The script's stdout and stderr are passed on as they come."""
        d, process = self.run_script()
        process.output(b"sent 1\n")
        process.output(b"oops\n", fd=2)
        self.assertEqual((self.out.getvalue(), self.err.getvalue()), (b"sent 1\n", b"oops\n"))

    def test_exit_codes(self):
        """The Deferred fires with the exit code, or 128 + the signal that killed it."""
        for kwargs, expected in [({"exitCode": 3}, 3), ({"signal": "KILL"}, 137)]:
            d, process = self.run_script()
            process.end(**kwargs)
            self.reactor.advance(0.05)
            self.assertEqual(self.successResultOf(d), expected)

    def test_leftovers_stopped(self):
        """When the script exits, its group is sent TERM (what it left running stops)."""
        d, process = self.run_script()
        pid = process.pid
        process.end(0)
        self.reactor.advance(0.05)
        self.successResultOf(d)
        self.assertIn((pid, signal.SIGTERM), self.signaller.sent)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel(self):
        """Cancelling TERMs the group and fails with CancelledError once it has ended."""
        d, process = self.run_script()
        pid = process.pid
        d.cancel()
        self.assertEqual(self.signaller.sent, [(pid, signal.SIGTERM)])
        self.assertNoResult(d)
        self.reactor.advance(0)
        self.assertFalse(process.running)
        self.reactor.advance(0.05)
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel_kill_after_grace(self):
        """A group that ignores TERM gets KILL after the grace period."""
        self.reactor.signal_exit_delays = {"TERM": None, "KILL": 0.0}
        d, process = self.run_script(grace=2.0)
        d.cancel()
        self.reactor.advance(1.9)
        self.assertTrue(process.running)
        self.assertEqual(process.signals, [signal.SIGTERM])
        for _ in range(5):
            self.reactor.advance(0.05)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertFalse(process.running)
        self.reactor.advance(0.05)
        self.failureResultOf(d, CancelledError)

    def test_cancel_twice(self):
        """Cancelling again while the group stops KILLs it at once."""
        self.reactor.signal_exit_delays = {"TERM": None, "KILL": 0.0}
        d, process = self.run_script(grace=30)
        d.cancel()
        self.reactor.advance(1)
        d.cancel()
        self.reactor.advance(0)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertFalse(process.running)
        self.failureResultOf(d, CancelledError)

    def test_no_directory(self):
        """A cwd that does not exist is refused before anything runs."""
        self.assertRaises(ValueError, self.run_script, cwd="/no/such/dir")
        self.assertEqual(self.reactor.processes, [])


def _alive(pid):
    """Whether C{pid} runs (a zombie waiting for init to reap it does not)."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class RunScriptIntegrationTests(TestCase):
    """run_script with real /bin/sh scripts on the real reactor."""

    timeout = 30

    def run_script(self, command, env=None, grace=5.0, cwd=None):
        self.out = io.BytesIO()
        self.err = io.BytesIO()
        return run_script(reactor, command, env or {}, cwd=cwd, grace=grace,
                          stdout=self.out, stderr=self.err)

    async def test_exit_zero(self):
        """A script that succeeds gives 0; its output, env and cwd are as documented."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        code = await self.run_script(
            'echo "$A8_GREMLIN_RECIPE_ID $A8_TEST_INHERITED"; pwd; echo err >&2; read x || echo eof',
            env={"A8_GREMLIN_RECIPE_ID": "r1"}, cwd=cwd)
        self.assertEqual(code, 0)
        self.assertEqual(self.out.getvalue().decode(), "r1 inherited\n{}\neof\n".format(cwd))
        self.assertEqual(self.err.getvalue(), b"err\n")

    async def test_exit_three(self):
        """A script's exit code is passed on."""
        self.assertEqual(await self.run_script("exit 3"), 3)

    async def test_signal(self):
        """A script killed by a signal gives 128 + its number."""
        self.assertEqual(await self.run_script("kill -KILL $$"), 128 + signal.SIGKILL)

    async def pids(self, path):
        for _ in range(200):
            if os.path.exists(path):
                with open(path) as f:
                    pids = f.read().split()
                if len(pids) == 2:
                    return [int(p) for p in pids]
            await deferLater(reactor, 0.02)
        self.fail("the script never wrote its pids")

    async def gone(self, pids):
        for _ in range(250):
            if not any(_alive(p) for p in pids):
                return
            await deferLater(reactor, 0.02)
        self.fail("still running: {}".format([p for p in pids if _alive(p)]))

    async def test_cancel_stops_the_group(self):
        """Cancelling stops the sleeping script and the child it started."""
        path = os.path.abspath(self.mktemp())
        d = self.run_script('sleep 300 & echo $$ $! > {}.tmp; mv {}.tmp {}; wait'.format(
            path, path, path))
        pids = await self.pids(path)
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        await self.gone(pids)

    async def test_cancel_kills_what_ignores_term(self):
        """A script and child that ignore TERM are KILLed after the grace period."""
        path = os.path.abspath(self.mktemp())
        d = self.run_script(
            'trap "" TERM; sleep 300 & echo $$ $! > {}.tmp; mv {}.tmp {}; wait'.format(
                path, path, path), grace=0.3)
        pids = await self.pids(path)
        started = reactor.seconds()
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        self.assertGreaterEqual(reactor.seconds() - started, 0.3)
        await self.gone(pids)
        self.flushLoggedErrors()

    def setUp(self):
        os.environ["A8_TEST_INHERITED"] = "inherited"
        self.addCleanup(os.environ.pop, "A8_TEST_INHERITED", None)
