# -*- test-case-name: tests.test_gremlin_load -*-
"""
Test traffic for a recipe run: N GETs through a gateway (L{send_requests}), or the user's own
load script (L{run_script}).
"""

import collections
import os
import signal
import sys

import attrs
from twisted.internet.defer import (CancelledError, Deferred, FirstError, fail, gatherResults,
                                    succeed)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from amalgam8.client import _cancelled
from amalgam8.sidecar.supervisor import ProcessGroupSignaller, exit_status, group_leader_argv

__all__ = ["LoadResult", "send_requests", "run_script", "SCRIPT_ENVIRONMENT", "MAX_REASONS"]

#: The most distinct failure reasons a L{LoadResult} keeps (the rest count as "other").
MAX_REASONS = 5

#: The variables a recipe run sets for its load script, on top of its own environment.
SCRIPT_ENVIRONMENT = {
    "A8_GREMLIN_RECIPE_ID": "the recipe id (the rules' tag and the trace records' value)",
    "A8_GREMLIN_HEADER": "the header the recipe's rules match (default X-Request-ID)",
    "A8_GREMLIN_PATTERN": "the value (a prefix) the header must start with",
    "A8_GREMLIN_REQUEST_ID_PREFIX": "the X-Request-ID prefix of test requests, e.g. "
                                    "gremlin-<recipe id>-",
}

log = Logger()


@attrs.frozen
class LoadResult:
    """
    What L{send_requests} did.

    @ivar sent: how many requests were sent.
    @ivar statuses: a C{Counter} of response statuses; 0 counts the requests that got no
        response (refused, reset, timed out).
    @ivar errors: a C{Counter} of why requests got no response (at most L{MAX_REASONS}
        reasons; the rest under C{"other"}).
    @ivar elapsed: seconds from the first request to the last answer.
    @ivar request_ids: the C{X-Request-ID} of each request sent, in order of sending.
    @ivar unanswered: the C{X-Request-ID}s of the requests that got no response (they may
        never have reached a proxy, so no trace record of them is waited for).
    """

    sent: int
    statuses: collections.Counter
    errors: collections.Counter
    elapsed: float
    request_ids: tuple
    unanswered: tuple = ()

    def to_json(self):
        return {"sent": self.sent,
                "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
                "errors": dict(self.errors), "elapsed": self.elapsed}


def send_requests(http, clock, url, count, concurrency, headers_for, timeout=30,
                  progress=None):
    """
    Send C{count} GETs of C{url}, at most C{concurrency} at a time.

    @param http: a treq-like client (C{get(url, headers=...)} firing with a response that
        has C{code} and C{collect}): an C{HTTPClient}, a C{StubTreq}.
    @param clock: the C{IReactorTime} that times requests out and measures the time taken.
    @param headers_for: C{i -> {name: value}}, the headers of request C{i} (0-based).
    @param timeout: seconds a request (with its body) may take; it is then cancelled and
        counted as status 0.
    @param progress: L{None} or C{(done, count) -> None}, called after each request.
    @return: a Deferred firing with a L{LoadResult}. Cancelling it cancels the requests
        in flight and fails it with C{CancelledError}.
    @raise ValueError: C{count} is negative or C{concurrency} below 1.
    """
    if not isinstance(count, int) or count < 0:
        raise ValueError("the number of requests must be a whole number >= 0")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError("the concurrency must be a whole number >= 1")
    return Deferred.fromCoroutine(
        _Load(http, clock, url, count, headers_for, timeout, progress).run(concurrency))


@attrs.define
class _Load:
    http: object
    clock: object
    url: str
    count: int
    headers_for: object
    timeout: float
    progress: object
    statuses: collections.Counter = attrs.Factory(collections.Counter)
    errors: collections.Counter = attrs.Factory(collections.Counter)
    request_ids: list = attrs.Factory(list)
    unanswered: list = attrs.Factory(list)
    sent: int = 0
    done: int = 0

    async def run(self, concurrency):
        start = self.clock.seconds()
        indices = iter(range(self.count))
        workers = [Deferred.fromCoroutine(self.worker(indices))
                   for _ in range(min(concurrency, self.count))]
        if workers:
            try:
                await gatherResults(workers, consumeErrors=True)
            except FirstError as e:
                for worker in workers:
                    worker.cancel()   # one failed (headers_for or progress raised): stop all
                e.subFailure.raiseException()
        return LoadResult(self.sent, self.statuses, self.errors,
                          self.clock.seconds() - start, tuple(self.request_ids),
                          tuple(self.unanswered))

    async def worker(self, indices):
        for i in indices:
            headers = self.headers_for(i)
            request_id = _request_id(headers)
            if request_id is not None:
                self.request_ids.append(request_id)
            self.sent += 1
            status = await self.one(headers)
            self.statuses[status] += 1
            if not status and request_id is not None:
                self.unanswered.append(request_id)
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.count)

    async def one(self, headers):
        """One request; its status, or 0 (and the reason counted) without an answer."""
        d = Deferred.fromCoroutine(self.exchange(headers))
        expired = []

        def expire():
            expired.append(True)
            d.cancel()

        call = self.clock.callLater(self.timeout, expire)
        try:
            return await d
        except Exception as e:
            if expired:
                self.failed("timed out after {:g} s".format(self.timeout))
            elif isinstance(e, CancelledError) or _cancelled(e):
                raise CancelledError() from e
            else:
                self.failed(_reason(e))
        finally:
            if call.active():
                call.cancel()
        return 0

    async def exchange(self, headers):
        # Not following redirects: a 302 is an answer to count (a login page, ...).
        response = await self.http.get(self.url, headers=headers, allow_redirects=False)
        await response.collect(_discard)
        return response.code

    def failed(self, reason):
        if reason not in self.errors and len(self.errors) >= MAX_REASONS:
            reason = "other"
        self.errors[reason] += 1


def _discard(data):
    pass


def _request_id(headers):
    for name, value in headers.items():
        if name.lower() in ("x-request-id", b"x-request-id"):
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


def _reason(error):
    """A short text for why a request failed: its first wrapped cause, else the error."""
    for failure in getattr(error, "reasons", None) or []:
        error = failure.value
        break
    text = str(error).strip()
    return "{}: {}".format(type(error).__name__, text) if text else type(error).__name__


def run_script(reactor, command, env, cwd=None, grace=5.0, stdout=None, stderr=None,
               signaller=None):
    """
    Run C{/bin/sh -c command}, the load script of a recipe run.

    The script runs in a process group of its own, with C{os.environ} plus C{env} as its
    environment. A recipe run sets these in C{env} (see L{SCRIPT_ENVIRONMENT}):

      - C{A8_GREMLIN_RECIPE_ID}: the recipe id;
      - C{A8_GREMLIN_HEADER}: the header the recipe's rules match (default X-Request-ID);
      - C{A8_GREMLIN_PATTERN}: the prefix that header's value must start with;
      - C{A8_GREMLIN_REQUEST_ID_PREFIX}: the X-Request-ID prefix of its test requests.

    Its stdin is closed (empty); its stdout and stderr are copied to ours as they come.
    When it exits, whatever it left running in its group is stopped too (TERM, then KILL
    after C{grace} seconds).

    @param reactor: C{IReactorProcess} and C{IReactorTime}.
    @param env: C{{name: value}} (text) set on top of C{os.environ}.
    @param cwd: the directory to run it in (ours when L{None}).
    @param stdout: a binary stream for its stdout (ours, C{sys.stdout.buffer}, when
        L{None}); C{stderr} the same.
    @param signaller: the L{amalgam8.sidecar.supervisor.IProcessSignaller} that signals the
        group (tests: a fake).
    @return: a Deferred firing with its exit status (128 + N when signal N killed it).
        Cancelling it stops the whole group (TERM at once, KILL after C{grace} seconds;
        cancelling again KILLs at once) and fails it with C{CancelledError} once the
        group is gone.
    """
    if cwd is not None and not os.path.isdir(cwd):
        raise ValueError("the load script's directory {} does not exist".format(cwd))
    environment = dict(os.environ)
    environment.update(env)
    script = _Script(reactor, signaller or ProcessGroupSignaller(), grace,
                     stdout or sys.stdout.buffer, stderr or sys.stderr.buffer)
    argv = group_leader_argv(["/bin/sh", "-c", command])
    try:
        reactor.spawnProcess(script, argv[0], argv, env=environment, path=cwd,
                             childFDs={0: "w", 1: "r", 2: "r"})
    except OSError as e:
        return fail(e)
    return Deferred.fromCoroutine(script.run())


class _Script(ProcessProtocol):
    """The load script's process: its output passed on, its exit and its group's end."""

    POLL = 0.05

    def __init__(self, reactor, signaller, grace, stdout, stderr):
        self._reactor = reactor
        self._signaller = signaller
        self._grace = grace
        self._streams = {1: stdout, 2: stderr}
        self._exited = []
        self.code = None
        self.ended = False
        self.pid = None

    def connectionMade(self):
        self.pid = self.transport.pid
        self.transport.closeStdin()

    def childDataReceived(self, fd, data):
        stream = self._streams.get(fd)
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass   # our own output is gone (a closed pipe): the script goes on regardless

    def processExited(self, reason):
        self.code, _ = exit_status(reason)
        waiters, self._exited = self._exited, []
        for d in waiters:
            d.callback(self.code)

    def processEnded(self, reason):
        self.ended = True

    def _wait_exit(self):
        if self.code is not None:
            return succeed(self.code)
        d = Deferred()
        self._exited.append(d)
        return d

    async def run(self):
        try:
            code = await self._wait_exit()
        except CancelledError:
            await self.stop()
            raise
        await self.stop()
        return code

    def _signal(self, sig):
        """Signal the group; whether there was anyone to get it."""
        try:
            self._signaller.signal_group(self.pid, sig)
        except OSError:
            return False
        return True

    def _gone(self):
        # Signal 0 only asks whether the group has members; once the leader has exited
        # and its pipes are closed, it is what is left.
        return self.code is not None and self.ended and not self._signal(0)

    async def stop(self):
        """TERM the group; KILL it after the grace period (or when cancelled again)."""
        self._signal(signal.SIGTERM)
        deadline = self._reactor.seconds() + self._grace
        try:
            while not self._gone():
                if self._reactor.seconds() >= deadline:
                    break
                await deferLater(self._reactor, self.POLL)
            else:
                return
            log.warn("the load script's process group {pgid} outlived TERM by {grace} s: "
                     "killing it", pgid=self.pid, grace=self._grace)
            self._signal(signal.SIGKILL)
            # KILL cannot be refused: what is left may only wait to be reaped (by init,
            # which in a container can be slow), so only the leader's end is waited for.
            deadline = self._reactor.seconds() + self._grace
            while not (self.code is not None and self.ended):
                if self._reactor.seconds() >= deadline:
                    break
                await deferLater(self._reactor, self.POLL)
        except CancelledError:
            self._signal(signal.SIGKILL)
            raise

