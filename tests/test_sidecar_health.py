"""
Tests for L{amalgam8.sidecar.health}: the sidecar's L{HealthChecker} (SPEC A5), with http checks
through L{StubTreq}, tcp checks through L{MemoryReactor}'s C{tcpClients} and file checks through
L{amalgam8.testing.process.FakeProcessReactor}; and tests of that fake itself.
"""

import attrs
from treq.testing import StubTreq
from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail
from twisted.internet.error import (
    ConnectionRefusedError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IProcessTransport,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer
from zope.interface.verify import verifyObject

from amalgam8.sidecar.config import HealthCheck
from amalgam8.sidecar.health import HealthChecker, split_host_port
from amalgam8.testing.process import FakeProcessReactor, FakeProcessTransport

APP = "http://10.0.0.7:9080/health"


class App(Resource):
    """The app's health endpoint: answers C{code}, or nothing while C{hang} is set."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.code = 200
        self.hang = False
        self.seen = []
        self.pending = []

    def render(self, request):
        self.seen.append((request.method, request.path))
        if self.hang:
            self.pending.append(request)
            request.notifyFinish().addErrback(lambda _: None)
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"ok"


@implementer(IHostResolution)
@attrs.define
class _Resolution:
    name: str

    def cancel(self):
        raise AssertionError("resolved synchronously")


@implementer(IHostnameResolver)
class RecordingResolver:
    """Resolves every name to 10.9.9.9 at once, and records the names."""

    def __init__(self):
        self.names = []

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0,
                        addressTypes=None, transportSemantics="TCP"):
        self.names.append((hostName, portNumber))
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.addressResolved(IPv4Address("TCP", "10.9.9.9", portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


def http_check(**kwargs):
    kwargs.setdefault("value", APP)
    return HealthCheck("http", **kwargs)


class HealthCheckerTestCase(SynchronousTestCase):
    """A L{HealthChecker} over a L{FakeProcessReactor} and a L{StubTreq} of the app."""

    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.reactor.advance(1000)
        self.app = App()
        self.http = StubTreq(self.app)
        self.changes = []

    def make(self, *checks, http=None):
        return HealthChecker(self.reactor, checks, http or self.http, self.changes.append)

    def start(self, *checks, http=None):
        checker = self.make(*checks, http=http)
        checker.startService()
        self.addCleanup(self.stop, checker)
        return checker

    def stop(self, checker):
        if checker.running:
            checker.stopService()
        self.reactor.advance(0)          # the fake processes killed on the way die now

    def result(self, checker, index=0):
        check = checker.state()["checks"][index]
        return check["passed"], check["error"]

    def connection(self, index=-1):
        """The tcp check's pending connection attempt: (host, port, factory, connector)."""
        host, port, factory, timeout, _ = self.reactor.tcpClients[index]
        return host, port, factory, self.reactor.connectors[index], timeout


class ServiceTests(HealthCheckerTestCase):
    """The checker as a service."""

    def test_provides_iservice(self):
        """A HealthChecker provides IService."""
        self.assertTrue(verifyObject(IService, self.make(http_check())))

    def test_no_checks(self):
        """Without checks the app is healthy from the start."""
        checker = self.start()
        self.assertEqual(self.changes, [True])
        self.assertTrue(checker.healthy)

    def test_interval(self):
        """A check runs at start, then every interval, start to start."""
        self.start(HealthCheck("file", "/bin/check", interval=30, timeout=5))
        self.reactor.advance(3)
        self.reactor.processes[0].end(0)
        self.reactor.advance(26.9)
        self.assertEqual(len(self.reactor.processes), 1)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.processes), 2)
        self.reactor.processes[1].end(0)
        self.reactor.advance(30)
        self.assertEqual(len(self.reactor.processes), 3)

    def test_stop_cancels_timers(self):
        """After stopService no timer is left and no check runs again."""
        checker = self.start(http_check(interval=10), http_check(interval=7))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)
        checker.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(100)
        self.assertEqual(len(self.app.seen), 2)

    def test_stop_cancels_checks_in_flight(self):
        """stopService cancels the checks under way: the file check's process is killed, the
        tcp connection attempt stopped, the http request dropped; on_change is not called."""
        self.app.hang = True
        checker = self.start(http_check(), HealthCheck("tcp", "db:5432"),
                             HealthCheck("file", "/bin/check"))
        [process] = self.reactor.processes
        connector = self.connection()[3]
        checker.stopService()
        self.assertEqual(process.signals, ["KILL"])
        self.assertTrue(connector.stoppedConnecting)
        self.reactor.advance(0)
        self.assertFalse(process.running)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.changes, [])
        self.assertEqual(checker.state()["checks"][0]["passed"], None)

    def test_state(self):
        """state() reports each check's last result, error and time, and the verdict."""
        checker = self.start(http_check(interval=10, timeout=2), HealthCheck("tcp", "db:1"))
        self.reactor.advance(1)
        self.connection()[2].clientConnectionFailed(self.connection()[3],
                                                    Failure(ConnectionRefusedError()))
        state = checker.state()
        self.assertEqual(state["healthy"], False)
        first, second = state["checks"]
        self.assertEqual(first, {
            "type": "http", "value": APP, "interval": 10, "timeout": 2, "passed": True,
            "error": None, "at": 1000, "duration": 0, "runs": 1, "failures": 0,
            "running": False, "next_run": 1010})
        self.assertEqual((second["passed"], second["at"], second["duration"],
                          second["failures"]), (False, 1001, 1, 1))
        self.assertIn("refused", second["error"])


class OverallTests(HealthCheckerTestCase):
    """The verdict and on_change."""

    def test_first_round_decides(self):
        """on_change is first called once every check has a result."""
        checker = self.start(http_check(), HealthCheck("tcp", "db:5432"))
        self.assertEqual(self.result(checker), (True, None))
        self.assertEqual(self.changes, [])
        self.assertIsNone(checker.healthy)
        _, _, factory, _, _ = self.connection()
        factory.buildProtocol(None).makeConnection(StringTransport())
        self.assertEqual(self.changes, [True])
        self.assertTrue(checker.healthy)

    def test_first_round_unhealthy(self):
        """A failing first round is reported too."""
        self.app.code = 503
        self.start(http_check())
        self.assertEqual(self.changes, [False])

    def test_changes_exactly_on_flips(self):
        """on_change is called on every flip of the verdict and never otherwise."""
        checker = self.start(http_check(interval=10), http_check(interval=10, code=200))
        for code in (200, 200, 500, 500, 503, 200, 200, 500):
            self.app.code = code
            self.reactor.advance(10)
        self.assertEqual(self.changes, [True, False, True, False])
        self.assertFalse(checker.healthy)

    def test_one_failing_check_is_enough(self):
        """The app is healthy only when every check passes."""
        self.start(http_check(), HealthCheck("file", "/bin/check", interval=10))
        self.reactor.processes[0].end(1)
        self.assertEqual(self.changes, [False])
        self.reactor.advance(10)
        self.reactor.processes[1].end(0)
        self.assertEqual(self.changes, [False, True])

    def test_on_change_error_logged(self):
        """An on_change that raises is logged and the checks go on."""
        def broken(healthy):
            raise RuntimeError("boom")

        checker = HealthChecker(self.reactor, (http_check(interval=10),), self.http, broken)
        checker.startService()
        self.addCleanup(checker.stopService)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.app.code = 500
        self.reactor.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(checker.healthy)

    def test_logs_flips_of_a_check(self):
        """A check that starts failing is logged as a warning, once."""
        self.app.code = 500
        with capturedLogs() as events:
            self.start(http_check(interval=10))
            self.reactor.advance(10)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["check_type"], warnings[0]["value"]), ("http", APP))


class HTTPCheckTests(HealthCheckerTestCase):
    """http and https checks."""

    def test_pass(self):
        """The expected status passes."""
        checker = self.start(http_check())
        self.assertEqual(self.app.seen, [(b"GET", b"/health")])
        self.assertEqual(self.result(checker), (True, None))

    def test_method_and_code(self):
        """The check uses its method and expects its code."""
        self.app.code = 204
        checker = self.start(HealthCheck("https", "https://app.local/ping", method="HEAD",
                                         code=204))
        self.assertEqual(self.app.seen, [(b"HEAD", b"/ping")])
        self.assertEqual(self.result(checker), (True, None))

    def test_wrong_status(self):
        """Another status fails, and says which."""
        self.app.code = 500
        checker = self.start(http_check())
        self.assertEqual(self.result(checker), (False, "HTTP 500 (expected 200)"))

    def test_timeout(self):
        """No answer within the timeout fails the check."""
        self.app.hang = True
        checker = self.start(http_check(timeout=2, interval=10))
        self.reactor.advance(1.9)
        self.assertEqual(self.result(checker), (None, None))
        self.reactor.advance(0.1)
        self.assertEqual(self.result(checker), (False, "no answer within 2s"))
        self.assertEqual(self.changes, [False])
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_unreachable(self):
        """A connection error fails the check and names the error."""
        class Refusing:
            def request(self, method, url, **kwargs):
                return fail(ConnectionRefusedError("10.0.0.7", 9080))

        checker = self.start(http_check(), http=Refusing())
        passed, error = self.result(checker)
        self.assertFalse(passed)
        self.assertIn("ConnectionRefusedError", error)


class TCPCheckTests(HealthCheckerTestCase):
    """tcp checks."""

    def test_connects_and_closes(self):
        """A connection made passes and is closed at once."""
        checker = self.start(HealthCheck("tcp", "127.0.0.1:5432", timeout=3))
        host, port, factory, _, timeout = self.connection()
        self.assertEqual((host, port, timeout), ("127.0.0.1", 5432, 3))
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.result(checker), (True, None))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_refused(self):
        """A refused connection fails the check (once no other address is left to try)."""
        checker = self.start(HealthCheck("tcp", "127.0.0.1:5432"))
        _, _, factory, connector, _ = self.connection()
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.reactor.advance(0.3)       # HostnameEndpoint's pace between addresses
        passed, error = self.result(checker)
        self.assertFalse(passed)
        self.assertIn("Connection was refused", error)

    def test_timeout(self):
        """A connection not made within the timeout fails the check and is abandoned."""
        checker = self.start(HealthCheck("tcp", "127.0.0.1:5432", timeout=5, interval=30))
        connector = self.connection()[3]
        self.reactor.advance(5)
        self.assertEqual(self.result(checker), (False, "no answer within 5s"))
        self.assertTrue(connector.stoppedConnecting)
        # Never passed yet (the app may still be starting): tried again at once (a second
        # connection attempt, with its own 5 s timeout), not 30 s on.
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertIn(1010, [call.getTime() for call in self.reactor.getDelayedCalls()])

    def test_interval_after_first_pass(self):
        """Once a check has passed, a failure is checked again a whole interval later."""
        checker = self.start(HealthCheck("tcp", "127.0.0.1:5432", timeout=5, interval=30))
        _, _, factory, connector, _ = self.connection()
        factory.buildProtocol(None).makeConnection(StringTransport())
        self.assertEqual(self.result(checker), (True, None))
        self.reactor.advance(30)
        self.reactor.advance(5)
        self.assertEqual(self.result(checker), (False, "no answer within 5s"))
        self.assertEqual([call.getTime() for call in self.reactor.getDelayedCalls()], [1060])

    def test_resolves_names(self):
        """The host is resolved without blocking, through the reactor's resolver; IPv6
        literals go in brackets."""
        resolver = RecordingResolver()
        self.reactor.installNameResolver(resolver)
        self.start(HealthCheck("tcp", "db.internal:5432"), HealthCheck("tcp", "[::1]:6379"))
        self.assertEqual(resolver.names, [("db.internal", 5432), ("::1", 6379)])
        self.assertEqual([c[:2] for c in self.reactor.tcpClients],
                         [("10.9.9.9", 5432), ("10.9.9.9", 6379)])

    def test_bad_address(self):
        """A value that is not host:port fails the check instead of crashing it."""
        checker = self.start(HealthCheck("tcp", "db"))
        self.assertEqual(self.result(checker), (False, "'db' is not host:port"))
        self.assertEqual(split_host_port("[fe80::1]:80"), ("fe80::1", 80))


class FileCheckTests(HealthCheckerTestCase):
    """file checks: a command run through IReactorProcess."""

    def test_exit_zero_passes(self):
        """The command runs with its arguments in the sidecar's environment, its stdin
        closed; exit code 0 passes."""
        checker = self.start(HealthCheck("file", "/usr/local/bin/check --quick",
                                         args=("-v",)))
        [process] = self.reactor.processes
        self.assertEqual((process.executable, process.args, process.env, process.path),
                         ("/usr/local/bin/check", ["/usr/local/bin/check", "--quick", "-v"],
                          None, None))
        self.assertIn(0, process.closed)
        self.assertEqual(self.result(checker), (None, None))
        process.end(0)
        self.assertEqual(self.result(checker), (True, None))

    def test_exit_code_fails(self):
        """Another exit code fails, with the last line of the output."""
        checker = self.start(HealthCheck("file", "/bin/check"))
        process = self.reactor.processes[0]
        process.output(b"checking\n")
        process.output(b"disk full\n", fd=2)
        process.end(2)
        self.assertEqual(self.result(checker), (False, "exit code 2: disk full"))

    def test_timeout_kills(self):
        """A command that runs past the timeout is killed and fails the check; its late end
        changes nothing."""
        checker = self.start(HealthCheck("file", "/bin/check", timeout=5, interval=30))
        process = self.reactor.processes[0]
        self.reactor.advance(5)
        self.assertEqual(process.signals, ["KILL"])
        self.assertEqual(self.result(checker), (False, "no answer within 5s"))
        self.reactor.advance(0)
        self.assertFalse(process.running)
        self.assertEqual(self.result(checker), (False, "no answer within 5s"))
        self.assertEqual(self.changes, [False])
        self.assertEqual(checker.state()["checks"][0]["runs"], 1)

    def test_spawn_error(self):
        """A command that cannot be started fails the check."""
        self.reactor.spawn_error = OSError("no such file")
        checker = self.start(HealthCheck("file", "/nope"))
        self.assertEqual(self.result(checker), (False, "cannot run /nope: no such file"))

    def test_killed_by_signal(self):
        """A command killed by a signal fails the check."""
        checker = self.start(HealthCheck("file", "/bin/check"))
        self.reactor.processes[0].end(signal="SEGV")
        self.assertEqual(self.result(checker), (False, "killed by signal 11"))


class Recorder(ProcessProtocol):
    """Records every event of a process."""

    def __init__(self):
        self.events = []

    def connectionMade(self):
        self.events.append(("connectionMade",))

    def childDataReceived(self, childFD, data):
        self.events.append(("data", childFD, data))

    def childConnectionLost(self, childFD):
        self.events.append(("lost", childFD))

    def processExited(self, reason):
        self.events.append(("exited", reason.type))

    def processEnded(self, reason):
        self.events.append(("ended", reason.type))
        self.reason = reason


class FakeProcessReactorTests(SynchronousTestCase):
    """L{FakeProcessReactor} and L{FakeProcessTransport}."""

    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.protocol = Recorder()

    def spawn(self, **kwargs):
        return self.reactor.spawnProcess(self.protocol, "/bin/app", ["app", "-x"], **kwargs)

    def test_interfaces(self):
        """The reactor provides IReactorProcess, IReactorTime and IReactorTCP; its processes
        IProcessTransport."""
        self.assertTrue(verifyObject(IReactorProcess, self.reactor))
        self.assertTrue(verifyObject(IReactorTime, self.reactor))
        self.assertTrue(verifyObject(IReactorTCP, self.reactor))
        self.assertTrue(verifyObject(IProcessTransport, self.spawn()))

    def test_records_spawn(self):
        """spawnProcess records its arguments and connects the protocol at once."""
        process = self.spawn(env={"A": "1"}, path="/srv", usePTY=True,
                             childFDs={0: "w", 1: "r", 3: "r"})
        self.assertEqual(self.reactor.processes, [process])
        self.assertIsInstance(process, FakeProcessTransport)
        self.assertEqual((process.executable, process.args, process.env, process.path,
                          process.usePTY, process.childFDs),
                         ("/bin/app", ["app", "-x"], {"A": "1"}, "/srv", True,
                          {0: "w", 1: "r", 3: "r"}))
        self.assertIs(process.protocol, self.protocol)
        self.assertIs(self.protocol.transport, process)
        self.assertEqual(self.protocol.events, [("connectionMade",)])
        self.assertIsNotNone(process.pid)

    def test_end(self):
        """end() delivers the descriptors' loss, processExited and processEnded."""
        process = self.spawn()
        process.output(b"hi", fd=2)
        process.end(0)
        self.assertEqual(self.protocol.events[1:], [
            ("data", 2, b"hi"), ("lost", 0), ("lost", 1), ("lost", 2),
            ("exited", ProcessDone), ("ended", ProcessDone)])
        self.assertIsNone(process.pid)
        self.assertEqual(self.reactor.live_processes, [])
        self.assertRaises(ProcessExitedAlready, process.end, 0)
        self.assertRaises(ProcessExitedAlready, process.signalProcess, "TERM")

    def test_exit_code(self):
        """A non-zero exit is a ProcessTerminated with that code."""
        process = self.spawn()
        process.end(3)
        self.assertEqual((self.protocol.reason.type, self.protocol.reason.value.exitCode),
                         (ProcessTerminated, 3))

    def test_signals(self):
        """Signals are recorded; TERM and KILL end the process at the next tick by default,
        a signal mapped to None is ignored, and a delay is honoured."""
        self.reactor.signal_exit_delays["TERM"] = None
        self.reactor.signal_exit_delays["HUP"] = 2.0
        stubborn = self.spawn()
        stubborn.signalProcess("TERM")
        self.reactor.advance(10)
        self.assertTrue(stubborn.running)
        stubborn.signalProcess("KILL")
        self.assertTrue(stubborn.running)
        self.reactor.advance(0)
        self.assertEqual(self.protocol.reason.value.signal, 9)
        slow = self.reactor.spawnProcess(Recorder(), "/bin/app", ["app"])
        slow.signalProcess(1)
        self.reactor.advance(1.9)
        self.assertTrue(slow.running)
        self.reactor.advance(0.1)
        self.assertFalse(slow.running)
        self.assertEqual([(p.pid is None, s) for p, s in self.reactor.signals],
                         [(True, "TERM"), (True, "KILL"), (True, 1)])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_writes_and_closes(self):
        """Writes to the child and closed descriptors are recorded."""
        process = self.spawn()
        process.write(b"a")
        process.writeToChild(3, b"b")
        process.writeSequence([b"c", b"d"])
        process.closeStdin()
        self.assertRaises(ValueError, process.write, b"e")
        process.closeStderr()
        self.assertEqual((process.written, process.closed), ({0: b"acd", 3: b"b"}, {0, 2}))
        process.loseConnection()
        self.assertEqual(process.closed, {0, 1, 2})

    def test_spawn_error(self):
        """spawn_error is raised by spawnProcess."""
        self.reactor.spawn_error = OSError("nope")
        self.assertRaises(OSError, self.spawn)
        self.assertEqual(self.reactor.processes, [])
