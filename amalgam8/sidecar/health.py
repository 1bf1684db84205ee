# -*- test-case-name: tests.test_sidecar_health -*-
"""
The sidecar's health checks (SPEC A5): the app is healthy when every check passes.

Each L{amalgam8.sidecar.config.HealthCheck} runs at start, then every C{interval} seconds
(start to start; a check never overlaps itself), and fails when it takes longer than its
C{timeout}:

    - C{http}/C{https}: a request with C{method} to the URL C{value}; it passes when the status
      is C{code}.
    - C{tcp}: a connection to C{value} (C{host:port}, C{[v6]:port}), closed as soon as it is
      made.
    - C{file}: the command C{value} (split like a shell line) with C{args}, in the sidecar's
      environment; it passes when it exits with 0, and is killed when it times out.

C{on_change(healthy)} is called once the first round of every check is in (with its verdict),
then each time the verdict flips, and never otherwise.
"""

import shlex

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["HealthChecker", "CheckFailed", "split_host_port"]

STARTUP_RECHECK = 1.0   # seconds between tries of a check that has never passed

OUTPUT_LIMIT = 4096


class CheckFailed(Exception):
    """A health check did not pass; the message says why."""


def split_host_port(value):
    """C{"host:port"} or C{"[v6]:port"} -> C{(host, port)}."""
    host, _, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        number = 0
    if not host or not 0 < number < 65536:
        raise CheckFailed("{!r} is not host:port".format(value))
    return host, number


class _CheckProcess(ProcessProtocol):
    """A file check's child: its stdin closed at once, its output kept (bounded)."""

    def __init__(self, done):
        self.done = done
        self.output = b""

    def connectionMade(self):
        self.transport.closeStdin()

    def childDataReceived(self, childFD, data):
        room = OUTPUT_LIMIT - len(self.output)
        if room > 0:
            self.output += data[:room]

    def kill(self):
        if self.transport is None:
            return
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        except OSError:
            pass

    def processEnded(self, reason):
        if self.done.called:
            return
        if reason.check(ProcessDone):
            self.done.callback(None)
            return
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        why = ("killed by signal {}".format(signal) if signal is not None
               else "exit code {}".format(code))
        lines = self.output.decode("utf-8", "replace").strip().splitlines()
        if lines:
            why += ": " + lines[-1][:200]
        self.done.errback(CheckFailed(why))


@attrs.frozen
class _Result:
    passed: bool = None
    error: str = None
    at: float = None
    duration: float = None
    runs: int = 0
    failures: int = 0


@attrs.define(eq=False)
class HealthChecker(Service):
    """
    Run the health checks and report the overall verdict.

    @ivar reactor: an C{IReactorTime}, C{IReactorTCP} (with a name resolver) and
        C{IReactorProcess}.
    @ivar checks: the L{amalgam8.sidecar.config.HealthCheck}s.
    @ivar http: a treq-like HTTP client (C{request(method, url)}) for http and https checks.
    @ivar on_change: C{callable(bool)}, called with the first verdict and on every flip.
    """

    log = Logger()

    _reactor: object
    _checks: tuple = attrs.field(converter=tuple)
    _http: object
    _on_change: object

    _healthy: bool = attrs.field(init=False, default=None)
    _results: list = attrs.field(init=False)
    _timers: dict = attrs.field(init=False, factory=dict)
    _inflight: dict = attrs.field(init=False, factory=dict)
    _ever_passed: dict = attrs.field(init=False, factory=dict)

    @_results.default
    def _no_results(self):
        return [_Result() for _ in self._checks]

    def __attrs_post_init__(self):
        # Service's own attributes (attrs replaced Service.__init__).
        self.running = 0
        self.name = None
        self.parent = None

    @property
    def healthy(self):
        """The verdict: L{None} until every check has run once, then whether all pass."""
        return self._healthy

    def state(self):
        """What the debug API shows: a JSON-ready dict."""
        checks = []
        for index, (check, result) in enumerate(zip(self._checks, self._results)):
            timer = self._timers.get(index)
            checks.append({
                "type": check.type,
                "value": check.value,
                "interval": check.interval,
                "timeout": check.timeout,
                "passed": result.passed,
                "error": result.error,
                "at": result.at,
                "duration": result.duration,
                "runs": result.runs,
                "failures": result.failures,
                "running": index in self._inflight,
                "next_run": timer.getTime() if timer is not None and timer.active() else None,
            })
        return {"healthy": self._healthy, "checks": checks}

    # -- IService -----------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        if not self._checks:
            self._update()
        for index in range(len(self._checks)):
            self._run(index)

    def stopService(self):
        """Cancel every timer and every check under way (killing file checks)."""
        Service.stopService(self)
        timers, self._timers = self._timers, {}
        for timer in timers.values():
            if timer.active():
                timer.cancel()
        inflight, self._inflight = self._inflight, {}
        for running in inflight.values():
            running.cancel()

    # -- running the checks -------------------------------------------------------------------

    def _run(self, index):
        self._timers.pop(index, None)
        check = self._checks[index]
        started = self._reactor.seconds()
        running = maybeDeferred(self._probe, check)
        running.addTimeout(check.timeout, self._reactor, onTimeoutCancel=self._timed_out)
        self._inflight[index] = running
        running.addBoth(self._finished, index, started, running)
        running.addErrback(self._bug, check)

    @staticmethod
    def _timed_out(result, timeout):
        if isinstance(result, Failure):
            return Failure(CheckFailed("no answer within {}s".format(timeout)))
        return result

    def _bug(self, failure, check):
        self.log.failure("health check {check_type} {value} crashed", failure,
                         check_type=check.type, value=check.value)

    def _probe(self, check):
        if check.type in ("http", "https"):
            return Deferred.fromCoroutine(self._probe_http(check))
        if check.type == "tcp":
            return self._probe_tcp(check)
        if check.type == "file":
            return self._probe_file(check)
        raise CheckFailed("unknown health check type {!r}".format(check.type))

    async def _probe_http(self, check):
        response = await self._http.request(check.method, check.value)
        await response.content()
        if response.code != check.code:
            raise CheckFailed("HTTP {} (expected {})".format(response.code, check.code))

    def _probe_tcp(self, check):
        host, port = split_host_port(check.value)
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=check.timeout)
        connecting = endpoint.connect(Factory.forProtocol(Protocol))

        def connected(protocol):
            protocol.transport.loseConnection()

        return connecting.addCallback(connected)

    def _probe_file(self, check):
        argv = shlex.split(check.value) + list(check.args)
        protocol = None

        def cancel(_):
            if protocol is not None:
                protocol.kill()

        done = Deferred(cancel)
        protocol = _CheckProcess(done)
        try:
            self._reactor.spawnProcess(protocol, argv[0], argv, env=None)
        except Exception as e:
            return fail(CheckFailed("cannot run {}: {}".format(argv[0], e)))
        return done

    def _finished(self, result, index, started, running):
        if self._inflight.get(index) is running:
            del self._inflight[index]
        if not self.running:
            return None         # stopped: the result (most likely a cancellation) is moot
        check = self._checks[index]
        now = self._reactor.seconds()
        if isinstance(result, Failure):
            if result.check(CheckFailed):
                why = result.getErrorMessage()
            elif result.check(CancelledError):
                why = "cancelled"
            else:
                why = "{}: {}".format(result.type.__name__, result.getErrorMessage())
            self._record(index, False, why, now, started)
        else:
            self._record(index, True, None, now, started)
        interval = check.interval
        if not self._results[index].passed and not self._ever_passed.get(index):
            # Until a check has passed once (the app is still starting), check again soon
            # rather than a whole interval later: registration waits on it.
            interval = min(interval, STARTUP_RECHECK)
        elif self._results[index].passed:
            self._ever_passed[index] = True
        self._timers[index] = self._reactor.callLater(
            max(0.0, started + interval - now), self._run, index)
        self._update()
        return None

    def _record(self, index, passed, why, now, started):
        check = self._checks[index]
        before = self._results[index]
        self._results[index] = _Result(
            passed, why, now, now - started, before.runs + 1,
            0 if passed else before.failures + 1)
        keys = dict(check_type=check.type, value=check.value, why=why)
        if passed and before.passed is not True:
            self.log.info("health check {check_type} {value} passes", passed=True, **keys)
        elif not passed and before.passed is not False:
            self.log.warn("health check {check_type} {value} fails: {why}", passed=False,
                          **keys)
        elif not passed:
            self.log.debug("health check {check_type} {value} still fails: {why}",
                           passed=False, failures=before.failures + 1, **keys)

    def _update(self):
        if any(result.passed is None for result in self._results):
            return
        healthy = all(result.passed for result in self._results)
        if healthy == self._healthy:
            return
        self._healthy = healthy
        failing = [check.value for check, result in zip(self._checks, self._results)
                   if not result.passed]
        self.log.info("the app is {health}", health="healthy" if healthy else "unhealthy",
                      healthy=healthy, failing=failing)
        maybeDeferred(self._on_change, healthy).addErrback(
            lambda failure: self.log.failure("the health change callback failed", failure))
