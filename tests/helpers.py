"""
What the test modules of the servers share: answers read whole, JWTs, Prometheus samples,
strategies of arbitrary JSON, a protocol for the real twistd processes, and a mixin that
starts them.
"""

import json
import os
import sys

import attrs
import jwt
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

import amalgam8

__all__ = [
    "Answer",
    "make_jwt",
    "metric_samples",
    "sample_value",
    "json_values",
    "twistd_command",
    "child_environment",
    "ServerProcess",
    "until",
    "ServerProcesses",
]


@attrs.frozen
class Answer:
    """A response and its whole body."""

    code: int
    headers: object
    body: bytes

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def header(self, name):
        values = self.headers.getRawHeaders(name)
        return values[0].decode("latin-1") if values else None


def make_jwt(claims, secret, algorithm="HS256"):
    """An encoded JWT of C{claims}."""
    return jwt.encode(claims, secret, algorithm=algorithm)


def metric_samples(text):
    """All samples of a Prometheus text exposition, as (name, labels, value)."""
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def sample_value(text, name, **labels):
    """The value of the sample C{name} with exactly C{labels}, or L{None}."""
    values = [value for sample_name, sample_labels, value in metric_samples(text)
              if sample_name == name and sample_labels == labels]
    return values[0] if values else None


_json_leaves = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=20))
json_values = st.recursive(
    _json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def twistd_command():
    """The argv that runs twistd under the interpreter running these tests."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(twistd, os.X_OK):
        return [twistd]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_environment(extra):
    """Our environment without any A8_* setting, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("A8_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(amalgam8.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class ServerProcess(ProcessProtocol):
    """
    Collects a server child's stdout and stderr as lines, parses stdout lines as JSON where
    it can, and tells waiters when the server listens (the JSON event whose message starts
    with C{listening}, carrying C{host} and C{port}) and when the process ends.

    @ivar exit: L{None} while running, then C{(exit code, signal)}.
    """

    def __init__(self, reactor, listening):
        self.reactor = reactor
        self.listening_prefix = listening
        self.stdout = []
        self.stderr = []
        self.events = []
        self.address = None
        self.exit = None
        self._partial = {1: b"", 2: b""}
        self._listen_waiters = []
        self._exit_waiters = []

    def childDataReceived(self, fd, data):
        if fd not in self._partial:
            return
        lines = (self._partial[fd] + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self._line(fd, line.decode("utf-8", "replace"))

    def _line(self, fd, line):
        if fd == 2:
            self.stderr.append(line)
            return
        self.stdout.append(line)
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        self.events.append(event)
        message = event.get("message")
        # Only the "<program> listening on HOST:PORT" event has the address; another event
        # may start with the same prefix ("a8registry raised its open-file limit ...").
        if (self.address is None and isinstance(message, str)
                and message.startswith(self.listening_prefix)
                and " listening on " in message and "host" in event and "port" in event):
            self.address = (event["host"], event["port"])
            waiters, self._listen_waiters = self._listen_waiters, []
            for waiter in waiters:
                waiter.callback(self.address)

    def processEnded(self, reason):
        for fd in (1, 2):
            if self._partial[fd]:
                self._line(fd, self._partial[fd].decode("utf-8", "replace"))
                self._partial[fd] = b""
        self.exit = (getattr(reason.value, "exitCode", None),
                     getattr(reason.value, "signal", None))
        waiters, self._listen_waiters = self._listen_waiters, []
        for waiter in waiters:
            waiter.errback(RuntimeError(
                "the server exited {} before listening; stderr: {!r}; stdout: {!r}"
                .format(self.exit, self.stderr, self.stdout[-5:])))
        waiters, self._exit_waiters = self._exit_waiters, []
        for waiter in waiters:
            waiter.callback(self.exit)

    def listening(self, timeout=10):
        """A Deferred firing with C{(host, port)} once the server listens."""
        if self.address is not None:
            return succeed(self.address)
        d = Deferred()
        if self.exit is not None:
            d.errback(RuntimeError("the server exited {}; stderr: {!r}"
                                   .format(self.exit, self.stderr)))
            return d
        self._listen_waiters.append(d)
        return d.addTimeout(timeout, self.reactor)

    def ended(self, timeout=10):
        """A Deferred firing with C{(exit code, signal)} once the process has ended."""
        if self.exit is not None:
            return succeed(self.exit)
        d = Deferred()
        self._exit_waiters.append(d)
        return d.addTimeout(timeout, self.reactor)


async def until(reactor, check, what, timeout=15.0, interval=0.05):
    """
    Call C{check()} (plain or async) every C{interval} seconds of C{reactor} until it returns
    something true, and return that. Exceptions count as "not yet".

    @raise AssertionError: after C{timeout} seconds, naming C{what} and the last result.
    """
    deadline = reactor.seconds() + timeout
    last = None
    while True:
        try:
            result = check()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            last = result
        except Exception as e:
            last = e
        if reactor.seconds() >= deadline:
            raise AssertionError("timed out after {} s waiting for {} (last: {!r})".format(
                timeout, what, last))
        await deferLater(reactor, interval, lambda: None)
class ServerProcesses:
    """
    A mixin for a C{trial.unittest.TestCase} that starts real C{twistd -n <program>}
    processes on free loopback ports and talks HTTP to them; each is stopped in clean-up
    (TERM, then KILL).

    @ivar processes: the L{ServerProcess} of each program started.
    """

    def setUpProcesses(self):
        from treq.client import HTTPClient
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool

        self.processes = []
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def spawn(self, program, env, listen="tcp:0:interface=127.0.0.1", args=()):
        """Start C{twistd -n <program> ... args} with C{env}; returns its base URL."""
        from twisted.internet import reactor

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        protocol = ServerProcess(reactor, "{} listening on ".format(program))
        argv = twistd_command() + ["-n", "--pidfile=", "--logger",
                                   "amalgam8.logs.json_observer", program,
                                   "--listen", listen] + list(args)
        reactor.spawnProcess(protocol, argv[0], argv, env=child_environment(env),
                             path=directory)
        self.addCleanup(self._stop_process, protocol)
        host, port = await protocol.listening(timeout=20)
        self.processes.append(protocol)
        return "http://{}:{}".format(host, port)

    async def _stop_process(self, protocol):
        from twisted.internet.error import ProcessExitedAlready

        if protocol.exit is not None:
            return
        try:
            protocol.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        try:
            await protocol.ended(timeout=10)
        except Exception:
            protocol.transport.signalProcess("KILL")
            await protocol.ended(timeout=5)

    async def call(self, method, url, body=None, timeout=10):
        """One request; C{(response, body bytes)}."""
        from twisted.internet import reactor

        kwargs = {} if body is None else {"json": body}
        response = await self.http.request(method, url, **kwargs).addTimeout(
            timeout, reactor)
        return response, await response.content()

    def assertNoTraceback(self):
        """No process started logged a traceback."""
        for protocol in self.processes:
            lines = protocol.stderr + protocol.stdout
            self.assertFalse([line for line in lines if "Traceback" in line], lines[-20:])
