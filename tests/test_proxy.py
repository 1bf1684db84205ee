"""
Integration tests of the data plane (SPEC A3, A4 and B3): the real nginx with the Lua modules of
C{lua/amalgam8}, configured by L{amalgam8.sidecar.proxy}, in front of small upstream servers
run in this process that answer with their own identity.

Each test renders a configuration into a temporary runtime directory, starts nginx on free
loopback ports, pushes a state to its admin endpoint, sends requests and reads the JSON access
log. The routing, balancing, resilience and fault cases are data (C{proxy_cases.json}, one test
each); the tests of several workers, bad admin input and state swaps under traffic follow.

Upstreams are named in a case by placeholders such as C{"@v1a"} wherever an address goes
(C{endpoint.value}, expected log fields). A name decides how the upstream behaves:
C{down*} is a port where nothing listens, C{slow*} answers after L{SLOW} seconds, C{err*}
answers 500 and anything else answers 200 at once. Every answer is the JSON object
C{{"instance", "method", "path", "host", "request_id", "headers", "body_length", "peer"}}
describing the request it received.
"""

import json
import math
import os
import re
import socket
import statistics
from http.cookiejar import CookieJar

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from treq.client import HTTPClient

from amalgam8.sidecar import proxy

CASES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proxy_cases.json")
with open(CASES_PATH) as _f:
    CASES = json.load(_f)["cases"]

SLOW = 1.0
"""How long a C{slow*} upstream takes to answer, in seconds."""

SIGMAS = 4
"""Statistical expectations allow this many standard deviations (plus one count)."""

_PLACEHOLDER = re.compile(r"@([a-z][a-z0-9]*)")

try:
    NGINX, MODULES = proxy.find_nginx()
except proxy.ProxyUnavailable as e:
    NGINX, MODULES, UNAVAILABLE = None, None, str(e)
else:
    UNAVAILABLE = None


def _sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


def _free_port():
    """A loopback TCP port that was free a moment ago."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class _Upstream(Resource):
    """
    An upstream instance: answers every request with its identity and what it received.

    @ivar pending: the delayed answers not sent yet (a slow upstream).
    """

    isLeaf = True

    def __init__(self, name, delay=0.0, code=200):
        super().__init__()
        self.name = name
        self.delay = delay
        self.code = code
        self.pending = set()

    def render(self, request):
        headers = {}
        for key, values in request.requestHeaders.getAllRawHeaders():
            headers[key.decode("latin-1").lower()] = b", ".join(values).decode("latin-1")
        body = json.dumps({
            "instance": self.name,
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1"),
            "host": headers.get("host"),
            "request_id": headers.get("x-request-id"),
            "headers": headers,
            "body_length": len(request.content.read()),
            "peer": request.getClientAddress().port,
        }).encode("utf-8")
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        cookie = request.getHeader(b"x-echo-set-cookie")
        if cookie:
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        if not self.delay:
            return body

        def answer():
            self.pending.discard(call)
            request.write(body)
            request.finish()

        def gone(_):
            if call.active():
                call.cancel()
            self.pending.discard(call)

        call = reactor.callLater(self.delay, answer)
        self.pending.add(call)
        request.notifyFinish().addBoth(gone)
        return NOT_DONE_YET


class _Nginx(ProcessProtocol):
    """The nginx master process: its output, and a Deferred per waiter for its end."""

    def __init__(self):
        self.output = []
        self.status = None
        self._waiters = []

    def childDataReceived(self, fd, data):
        self.output.append(data.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.status = reason.value
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def ended(self):
        if self.status is not None:
            return succeed(None)
        d = Deferred()
        self._waiters.append(d)
        return d


class _NoCookies(CookieJar):
    """A cookie jar that keeps nothing: each request carries only the cookies it names."""

    def extract_cookies(self, response, request):
        pass


class _Outcome:
    """
    What one request got: C{status} is the HTTP code, or C{"reset"} (the connection was
    reset), C{"closed"} (closed without an answer) or C{"error"}.
    """

    def __init__(self, status, headers=None, body=b"", error=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error
        self.echo = None
        if body:
            try:
                echo = json.loads(body)
            except ValueError:
                echo = None
            if isinstance(echo, dict) and "instance" in echo:
                self.echo = echo

    @property
    def instance(self):
        return self.echo["instance"] if self.echo else None

    def header_values(self, name):
        if self.headers is None:
            return []
        return [v.decode("latin-1") for v in self.headers.getRawHeaders(name.encode(), [])]

    def __repr__(self):
        return "<{} {} {!r}>".format(self.status, self.instance, self.body[:200])


def _failure_kind(failure):
    """C{"reset"}, C{"closed"} or C{"error"} for a request that got no answer."""
    reasons = [failure] + list(getattr(failure.value, "reasons", []) or [])
    for reason in reasons:
        if isinstance(reason, Failure) and reason.check(ConnectionDone):
            return "closed"
    for reason in reasons:
        if isinstance(reason, Failure) and reason.check(ConnectionLost):
            return "reset"
    return "error"


class ProxyFixture:
    """
    One running proxy for one test: its upstreams, the nginx process, an HTTP client, and
    what the test has read of the access log so far. Everything is stopped in the test's
    cleanup.
    """

    def __init__(self):
        self.upstreams = {}        # name -> "127.0.0.1:port"
        self.resources = {}
        self._ports = []
        self._wrappers = []
        self._reserved = []
        self._log_offset = 0
        self.process = None
        self.transport = None

    async def start(self, names, runtime_dir, source=None, **options):
        """
        Start the upstreams C{names}, then nginx with C{options} for L{proxy.ProxyConfig}
        (C{source}: this sidecar's C{{"name", "tags"}}), and wait for its admin port.
        """
        for name in sorted(names):
            self._start_upstream(name)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.pool.retryAutomatically = False
        self.http = HTTPClient(Agent(reactor, pool=self.pool), cookiejar=_NoCookies())
        source = source or {}
        options.setdefault("error_level", "notice")
        for attempt in range(3):
            self.config = proxy.ProxyConfig(
                runtime_dir, port=_free_port(), address="127.0.0.1", admin_port=_free_port(),
                service_name=source.get("name", ""),
                service_tags=tuple(source.get("tags", ())), log_buffer=None, **options)
            proxy.write(self.config, MODULES)
            self.base = "http://127.0.0.1:{}".format(self.config.port)
            self.admin = "http://127.0.0.1:{}/a8-admin".format(self.config.admin_port)
            self.process = _Nginx()
            self.transport = reactor.spawnProcess(
                self.process, NGINX, proxy.command(self.config, NGINX), env=dict(os.environ),
                path=runtime_dir)
            if await self._answering():
                return
            log = self.error_log()
            if self.process.status is not None and "Address already in use" in log:
                continue    # a free port was taken in the meantime: others, then
            raise AssertionError("nginx did not start ({})\n{}{}".format(
                self.process.status, "".join(self.process.output), log))
        raise AssertionError("no free ports for nginx")

    async def _answering(self):
        """Whether the admin port answers before nginx exits (five seconds at most)."""
        for _ in range(250):
            if self.process.status is not None:
                return False
            try:
                response = await self.http.get(self.admin)
                await response.content()
                if response.code == 200:
                    return True
            except Exception:
                pass
            await _sleep(0.02)
        return False

    def _start_upstream(self, name):
        if name.startswith("down"):
            # Bound but not listening: connections are refused, and no one else gets it.
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            self._reserved.append(s)
            self.upstreams[name] = "127.0.0.1:{}".format(s.getsockname()[1])
            return
        resource = _Upstream(name, delay=SLOW if name.startswith("slow") else 0.0,
                             code=500 if name.startswith("err") else 200)
        site = Site(resource)
        site.log = lambda request: None
        wrapper = WrappingFactory(site)
        port = reactor.listenTCP(0, wrapper, interface="127.0.0.1")
        self.resources[name] = resource
        self._ports.append(port)
        self._wrappers.append(wrapper)
        self.upstreams[name] = "127.0.0.1:{}".format(port.getHost().port)

    async def stop(self):
        if self.transport is not None and self.process.status is None:
            self.transport.signalProcess("TERM")
            for _ in range(250):
                if self.process.status is not None:
                    break
                await _sleep(0.02)
            else:
                self.transport.signalProcess("KILL")
                await self.process.ended()
        if getattr(self, "pool", None) is not None:
            await self.pool.closeCachedConnections()
        for port in self._ports:
            await port.stopListening()
        for resource in self.resources.values():
            for call in list(resource.pending):
                if call.active():
                    call.cancel()
            resource.pending.clear()
        for wrapper in self._wrappers:
            for protocol in list(wrapper.protocols):
                protocol.transport.abortConnection()
        for _ in range(100):
            if not any(wrapper.protocols for wrapper in self._wrappers):
                break
            await _sleep(0.01)
        for s in self._reserved:
            s.close()
        return self.problems()

    def error_log(self, whole=False):
        """nginx's error log (its end, unless C{whole})."""
        try:
            with open(self.config.error_log_path) as f:
                text = f.read()
        except OSError:
            return ""
        return text if whole else text[-4000:]

    def problems(self):
        """The error-log lines that show a bug: Lua errors, alerts, crashes."""
        return [line for line in self.error_log(whole=True).splitlines()
                if re.search(r"\[(alert|crit|emerg)\]|runtime error|lua entry thread aborted"
                             r"|failed to run|stack traceback", line)]

    def substitute(self, value):
        """C{value} with every C{@name} replaced by that upstream's address."""
        if isinstance(value, str):
            return _PLACEHOLDER.sub(lambda m: self.upstreams.get(m.group(1), m.group(0)), value)
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        return value

    async def push(self, state, method="POST"):
        """Push a state (a JSON value, or bytes sent as they are); the answer and its JSON."""
        body = state if isinstance(state, bytes) else json.dumps(state).encode("utf-8")
        response = await self.http.request(
            method, self.admin, data=body,
            headers=Headers({b"content-type": [b"application/json"]}))
        content = await response.content()
        try:
            return response.code, json.loads(content)
        except ValueError:
            return response.code, content

    async def loaded(self):
        """What GET on the admin endpoint returns."""
        response = await self.http.get(self.admin)
        return response.code, json.loads(await response.content())

    async def request(self, request, http=None):
        """Send one request (a case's C{request}); its L{_Outcome}."""
        http = http or self.http
        headers = Headers()
        for name, value in request.get("headers", {}).items():
            for v in value if isinstance(value, list) else [value]:
                headers.addRawHeader(name.encode("latin-1"), v.encode("latin-1"))
        body = request.get("body")
        try:
            response = await http.request(
                request.get("method", "GET"), self.base + request["path"], headers=headers,
                data=body.encode("utf-8") if body is not None else None)
            content = await response.content()
        except Exception:
            return _Outcome(_failure_kind(Failure()), error=Failure())
        return _Outcome(response.code, response.headers, content)

    async def send(self, request, repeat=1, concurrency=1, interval=0.0):
        """Send C{request} C{repeat} times, at most C{concurrency} at once, in order."""
        http = self.http
        if not request.get("persistent", True):
            pool = HTTPConnectionPool(reactor, persistent=False)
            pool.retryAutomatically = False
            http = HTTPClient(Agent(reactor, pool=pool), cookiejar=_NoCookies())
        semaphore = DeferredSemaphore(concurrency)

        async def one(index):
            if interval:
                await _sleep(index * interval)
            return await semaphore.run(lambda: _as_deferred(self.request(request, http)))

        return await gatherResults([_as_deferred(one(i)) for i in range(repeat)])

    def _read_records(self):
        try:
            with open(self.config.access_log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._log_offset += end + 1
        return [json.loads(line) for line in data[:end].split(b"\n")]

    async def records(self, count, timeout=5.0):
        """The next C{count} (or more) access-log records, waiting for them to be written."""
        records = []
        for _ in range(int(timeout / 0.01)):
            records.extend(self._read_records())
            if len(records) >= count:
                return records
            await _sleep(0.01)
        raise AssertionError("expected {} access-log records, found {}: {!r}".format(
            count, len(records), records))


def _as_deferred(coroutine):
    return Deferred.fromCoroutine(coroutine)


def _placeholders(value, found=None):
    found = set() if found is None else found
    if isinstance(value, str):
        found.update(_PLACEHOLDER.findall(value))
    elif isinstance(value, list):
        for v in value:
            _placeholders(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _placeholders(v, found)
    return found


_ABSENT = object()


def _check_value(value, spec):
    """
    Whether C{value} meets C{spec}: L{None} means absent; an object may give C{re} (a regular
    expression the whole text must match), C{min}, C{max}, C{type} (C{"number"},
    C{"string"}) and C{present}; anything else must be equal.
    """
    if spec is None:
        return value is _ABSENT
    if isinstance(spec, dict):
        if value is _ABSENT:
            return False
        for key, wanted in spec.items():
            if key == "re":
                if not isinstance(value, str) or not re.fullmatch(wanted, value):
                    return False
            elif key == "min":
                if not isinstance(value, (int, float)) or value < wanted:
                    return False
            elif key == "max":
                if not isinstance(value, (int, float)) or value > wanted:
                    return False
            elif key == "type":
                types = {"number": (int, float), "string": (str,)}[wanted]
                if isinstance(value, bool) or not isinstance(value, types):
                    return False
            elif key == "present":
                pass
            else:
                raise ValueError("unknown expectation {!r}".format(key))
        return True
    return value == spec


def _tolerance(n, p):
    """How far a count of n Bernoulli(p) trials may stray from n p."""
    return SIGMAS * math.sqrt(n * p * (1 - p)) + 1


class _Checker:
    """Checks one step's outcomes and access-log records against its C{expect}."""

    def __init__(self, test, label, expect, outcomes, records):
        self.test = test
        self.label = label
        self.expect = expect
        self.outcomes = outcomes
        self.records = records

    def fail(self, message, *args):
        self.test.fail("{}: {}\noutcomes: {!r}\nlog: {!r}".format(
            self.label, message.format(*args), self.outcomes[:5], self.records[:5]))

    def check(self):
        expect = self.expect
        for key in expect:
            getattr(self, "check_" + key)(expect[key])

    def check_status(self, wanted):
        wanted = wanted if isinstance(wanted, list) else [wanted]
        for outcome in self.outcomes:
            if outcome.status not in wanted:
                self.fail("status {!r}, expected {!r} ({})", outcome.status, wanted,
                          outcome.error.getTraceback() if outcome.error else "")

    def check_instances(self, wanted):
        for outcome in self.outcomes:
            if outcome.instance not in wanted:
                self.fail("answered by {!r}, expected one of {!r}", outcome.instance, wanted)

    def check_headers(self, wanted):
        for outcome in self.outcomes:
            for name, spec in wanted.items():
                values = outcome.header_values(name)
                if spec is None:
                    if values:
                        self.fail("header {} is {!r}, expected none", name, values)
                    continue
                for pattern in spec if isinstance(spec, list) else [spec]:
                    if not any(re.fullmatch(pattern, v) for v in values):
                        self.fail("header {} is {!r}, expected {!r}", name, values, pattern)

    def check_upstream(self, wanted):
        for outcome in self.outcomes:
            if outcome.echo is None:
                self.fail("no upstream answer")
            for field, spec in wanted.items():
                if field == "headers":
                    received = outcome.echo["headers"]
                    for name, value_spec in spec.items():
                        value = received.get(name.lower(), _ABSENT)
                        if not _check_value(value, value_spec):
                            self.fail("upstream got header {} = {!r}, expected {!r}",
                                      name, value, value_spec)
                else:
                    value = outcome.echo.get(field, _ABSENT)
                    if not _check_value(value, spec):
                        self.fail("upstream got {} = {!r}, expected {!r}", field, value, spec)

    def _record_matches(self, record, wanted):
        for field, spec in wanted.items():
            if not _check_value(record.get(field, _ABSENT), spec):
                return field
        return None

    def check_log(self, wanted):
        for record in self.records:
            field = self._record_matches(record, wanted)
            if field is not None:
                self.fail("log field {} is {!r}, expected {!r}", field,
                          record.get(field, "(absent)"), wanted[field])

    def check_log_any(self, wanted):
        if not any(self._record_matches(r, wanted) is None for r in self.records):
            self.fail("no log record has {!r}", wanted)

    def check_log_sum(self, wanted):
        for field, spec in wanted.items():
            total = sum(r.get(field) or 0 for r in self.records)
            if not _check_value(total, spec):
                self.fail("the sum of log field {} is {}, expected {!r}", field, total, spec)

    def check_log_stats(self, wanted):
        for field, spec in wanted.items():
            values = [r[field] for r in self.records]
            mean = statistics.mean(values)
            stdev = statistics.pstdev(values)
            for name, value in (("mean", mean), ("stdev", stdev)):
                if name in spec:
                    low, high = spec[name]
                    if not low <= value <= high:
                        self.fail("{} of {} is {:.4f}, expected within [{}, {}]",
                                  name, field, value, low, high)

    def check_log_at_least(self, wanted):
        # Two milliseconds of slack: nginx's timers (so ngx.sleep) count whole milliseconds,
        # dropping up to one, and the logged request_time is itself in whole milliseconds.
        for field, other in wanted.items():
            for record in self.records:
                if not record[field] >= record[other] - 0.002:
                    self.fail("log field {} is {!r}, less than {} {!r}", field,
                              record[field], other, record[other])

    def _counts(self, wanted, observed):
        for key, spec in wanted.items():
            count = sum(observed.count(k) for k in key.split(","))
            low, high = spec if isinstance(spec, list) else (spec, spec)
            if not low <= count <= high:
                self.fail("{} {} times, expected {!r} (all: {!r})", key, count, spec,
                          sorted(set(observed), key=str))

    def check_counts(self, wanted):
        self._counts(wanted, [o.instance for o in self.outcomes])

    def check_status_counts(self, wanted):
        self._counts(wanted, [str(o.status) for o in self.outcomes])

    def _fractions(self, wanted, observed):
        n = len(observed)
        for key, p in wanted.items():
            count = sum(observed.count(k) for k in key.split(","))
            if abs(count - n * p) > _tolerance(n, p):
                self.fail("{} {} times in {}, expected a fraction of {} (+-{:.1f})",
                          key, count, n, p, _tolerance(n, p))

    def check_weights(self, wanted):
        self._fractions(wanted, [o.instance for o in self.outcomes])

    def check_statuses(self, wanted):
        self._fractions(wanted, [str(o.status) for o in self.outcomes])

    def check_consecutive_repeats(self, wanted):
        sequence = [o.instance for o in self.outcomes]
        repeats = sum(1 for a, b in zip(sequence, sequence[1:]) if a == b)
        if not _check_value(repeats, wanted):
            self.fail("{} consecutive repeats, expected {!r}: {!r}", repeats, wanted, sequence)

    def check_upstream_connections(self, wanted):
        connections = {(o.instance, o.echo["peer"]) for o in self.outcomes if o.echo}
        if not _check_value(len(connections), wanted):
            self.fail("{} upstream connections, expected {!r}", len(connections), wanted)


class _ProxyTestMixin:
    """Starts proxies for a trial L{TestCase} and stops them in its cleanup."""

    timeout = 60

    def setUp(self):
        if UNAVAILABLE:
            # Only where nginx or its Lua module is not installed. `make test` installs
            # them and sets A8_REQUIRE_PROXY, so there a missing proxy fails instead.
            if os.environ.get("A8_REQUIRE_PROXY"):
                self.fail("the proxy is required: " + UNAVAILABLE)
            raise SkipTest("needs nginx with its Lua module: " + UNAVAILABLE)

    async def start_proxy(self, names=("v1a", "v2a"), **options):
        """
        A started L{ProxyFixture} with the upstreams C{names} (see the module docstring) and
        C{options} for L{ProxyFixture.start}; stopped in cleanup, which fails the test if
        nginx logged a Lua error or an alert.
        """
        fixture = ProxyFixture()
        self.addCleanup(lambda: _as_deferred(self._stop(fixture)))
        runtime = os.path.abspath(self.mktemp())
        os.makedirs(runtime)
        await fixture.start(names, runtime, **options)
        return fixture

    async def _stop(self, fixture):
        problems = await fixture.stop()
        if problems:
            self.fail("nginx's error log shows {} problems:\n{}".format(
                len(problems), "\n".join(problems[:5])))

    async def push(self, fixture, state):
        """Push C{state} (placeholders substituted); its version."""
        code, answer = await fixture.push(fixture.substitute(state))
        self.assertEqual(code, 200, answer)
        return answer["version"]


class ProxyCaseTests(_ProxyTestMixin, TestCase):
    """
    The cases of C{proxy_cases.json}, one test each: a state pushed to a fresh proxy, then
    requests and the expected answers and access-log records.
    """

    async def run_case(self, case):
        """Run C{case}: its state, then each step's requests, outcomes and log records."""
        fixture = await self.start_proxy(_placeholders(case), source=case.get("source"),
                                         **case.get("proxy", {}))
        code, answer = await fixture.push(fixture.substitute(case["state"]))
        self.assertEqual(code, 200, "the state was refused: {!r}".format(answer))
        self.assertEqual([r["id"] for r in answer["rejected"]], case.get("rejected", []),
                         "the rules the proxy skipped: {!r}".format(answer["rejected"]))
        steps = case.get("steps") or [case]
        for index, step in enumerate(steps):
            if step.get("sleep"):
                await _sleep(step["sleep"])
            request = fixture.substitute(step["request"])
            repeat = step.get("repeat", 1)
            outcomes = await fixture.send(request, repeat, step.get("concurrency", 1),
                                          step.get("interval", 0.0))
            records = await fixture.records(repeat)
            label = case["name"] + (" step {}".format(index) if case.get("steps") else "")
            _Checker(self, label, fixture.substitute(step["expect"]), outcomes,
                     records).check()
            if repeat == 1 and outcomes[0].echo and records:
                self.assertEqual(records[0].get("request_id"), outcomes[0].echo["request_id"],
                                 "the logged request id is the one sent upstream")


def _case_test(case):
    async def test(self):
        await self.run_case(case)
    test.__name__ = "test_" + case["name"]
    test.__doc__ = case["doc"]
    return test


for _case in CASES:
    setattr(ProxyCaseTests, "test_" + _case["name"], _case_test(_case))
del _case


def _route_state(tags):
    """A state: reviews v1a (v1) and v2a (v2), every request routed to the backend C{tags}."""
    instances = [
        {"id": "a1", "service_name": "reviews", "endpoint": {"type": "http", "value": "@v1a"},
         "status": "UP", "tags": ["v1"]},
        {"id": "a2", "service_name": "reviews", "endpoint": {"type": "http", "value": "@v2a"},
         "status": "UP", "tags": ["v2"]},
    ]
    return {"instances": instances,
            "rules": [{"id": "r", "destination": "reviews", "priority": 1,
                       "route": {"backends": [{"tags": [tags]}]}}]}


class ProxyAdminTests(_ProxyTestMixin, TestCase):
    """The admin endpoint: pushing, reading back, and refusing bad states (SPEC A4)."""

    async def test_get_returns_the_state_and_its_version(self):
        """GET answers the state as pushed, with its version and when it was applied."""
        fixture = await self.start_proxy()
        code, empty = await fixture.loaded()
        self.assertEqual((code, empty["version"], empty["instances"], empty["rules"],
                          empty["rejected"]), (200, 0, [], [], []))
        state = fixture.substitute(_route_state("v2"))
        self.assertEqual(await self.push(fixture, state), 1)
        code, loaded = await fixture.loaded()
        self.assertEqual(code, 200)
        self.assertEqual((loaded["version"], loaded["rejected"]), (1, []))
        self.assertIsInstance(loaded["applied_at"], (int, float))
        self.assertEqual({k: loaded[k] for k in ("instances", "rules")}, state)

    async def test_put_replaces_the_state(self):
        """PUT is a push too: the new state is served at once and the version goes up."""
        fixture = await self.start_proxy()
        await self.push(fixture, _route_state("v1"))
        code, answer = await fixture.push(fixture.substitute(_route_state("v2")), method="PUT")
        self.assertEqual((code, answer), (200, {"version": 2, "rejected": []}))
        outcome = await fixture.request({"path": "/reviews/"})
        self.assertEqual(outcome.instance, "v2a")

    async def test_empty_state(self):
        """An empty object is a valid state: no instances, no rules, every destination 404."""
        fixture = await self.start_proxy()
        await self.push(fixture, _route_state("v1"))
        code, answer = await fixture.push(b"{}")
        self.assertEqual((code, answer), (200, {"version": 2, "rejected": []}))
        outcome = await fixture.request({"path": "/reviews/"})
        self.assertEqual(outcome.status, 404)

    async def test_other_methods_refused(self):
        """Methods other than GET, POST and PUT get 405."""
        fixture = await self.start_proxy()
        response = await fixture.http.delete(fixture.admin)
        await response.content()
        self.assertEqual(response.code, 405)

    async def test_bad_states_refused_and_the_old_one_kept(self):
        """
        A body that is not a state (not JSON, not an object, C{instances} or C{rules} not a
        list) gets 400 with a message; the state before keeps being served, and GET still
        returns it.
        """
        fixture = await self.start_proxy()
        good = fixture.substitute(_route_state("v2"))
        await self.push(fixture, good)
        bad = {
            "not JSON": b"{not json",
            "empty body": b"",
            "a list": b"[]",
            "a string": b'"state"',
            "instances not a list": {"instances": {"a": 1}, "rules": []},
            "rules not a list": {"instances": [], "rules": "none"},
            "rules an object": {"instances": [], "rules": {"r": {"destination": "reviews"}}},
        }
        for name, state in bad.items():
            code, answer = await fixture.push(state)
            self.assertEqual(code, 400, "{}: {!r}".format(name, answer))
            self.assertIsInstance(answer, dict, name)
            self.assertIsInstance(answer.get("error"), str, name)
        code, loaded = await fixture.loaded()
        self.assertEqual((loaded["version"], loaded["rejected"]), (1, []))
        self.assertEqual({k: loaded[k] for k in ("instances", "rules")}, good)
        outcomes = await fixture.send({"path": "/reviews/"}, repeat=10, concurrency=5)
        self.assertEqual({(o.status, o.instance) for o in outcomes}, {(200, "v2a")})

    async def test_bad_rules_skipped_and_reported(self):
        """
        A rule or an instance whose structure is bad, or that the proxy cannot compile (a bad
        regular expression), is skipped and reported by id ({id, error}) in the push's
        answer and in GET, and logged; the other rules and instances are used.
        """
        fixture = await self.start_proxy()
        good = fixture.substitute(_route_state("v2"))
        rule = good["rules"][0]

        def with_rule(**changes):
            return dict(dict(rule, id="bad", priority=5), **changes)

        bad_rules = {
            "destination not a string": with_rule(destination=5),
            "priority not a number": with_rule(priority="high"),
            "route and actions": with_rule(actions=[{"action": "abort", "return_code": 500}]),
            "no route nor actions": {"id": "bad", "destination": "reviews"},
            "empty backends": with_rule(route={"backends": []}),
            "backend tags not a list": with_rule(route={"backends": [{"tags": "v1"}]}),
            "bad header regex": with_rule(match={"headers": {"Cookie": "user=(jason"}}),
            "bad regex in a combinator": with_rule(
                match={"any": [{"headers": {"X-A": "[a-"}}]}),
            "unknown action": {"id": "bad", "destination": "reviews",
                               "actions": [{"action": "explode"}]},
            "abort code out of range": {"id": "bad", "destination": "reviews", "actions": [
                {"action": "abort", "return_code": 900}]},
            "delay without duration": {"id": "bad", "destination": "reviews",
                                       "actions": [{"action": "delay"}]},
            "a rule that is no object": ["bad"],
        }
        for name, bad in bad_rules.items():
            code, answer = await fixture.push(
                {"instances": good["instances"], "rules": [bad, rule]})
            self.assertEqual(code, 200, "{}: {!r}".format(name, answer))
            expected_id = "rules[0]" if name == "a rule that is no object" else "bad"
            self.assertEqual([r["id"] for r in answer["rejected"]], [expected_id], name)
            self.assertIsInstance(answer["rejected"][0]["error"], str, name)
            code, loaded = await fixture.loaded()
            self.assertEqual(loaded["rejected"], answer["rejected"], name)
            outcomes = await fixture.send({"path": "/reviews/"}, repeat=4, concurrency=2)
            self.assertEqual({(o.status, o.instance) for o in outcomes}, {(200, "v2a")}, name)
        self.assertIn("amalgam8: skipped bad: rules[0].match.any[0].headers.X-A: not a valid "
                      "regular expression", fixture.error_log(whole=True))

        bad_instances = {
            "instance without endpoint": {"service_name": "reviews"},
            "instance tags not strings": dict(good["instances"][1], tags=[1]),
            "instance no object": "a1",
        }
        for name, bad in bad_instances.items():
            code, answer = await fixture.push(
                {"instances": good["instances"] + [bad], "rules": good["rules"]})
            self.assertEqual(code, 200, "{}: {!r}".format(name, answer))
            self.assertEqual([r["id"] for r in answer["rejected"]], ["instances[2]"], name)
            outcome = await fixture.request({"path": "/reviews/"})
            self.assertEqual((outcome.status, outcome.instance), (200, "v2a"), name)

    async def test_semantics_normalized(self):
        """
        What the controller's validation would refuse but the proxy can use is normalized,
        not rejected: weights adding up to more than 1 are scaled, retries are capped, a
        probability over 1 is 1.
        """
        fixture = await self.start_proxy()
        good = fixture.substitute(_route_state("v2"))
        rule = good["rules"][0]
        states = {
            "weights over 1": ({"backends": [{"tags": ["v1"], "weight": 0.7},
                                             {"tags": ["v2"], "weight": 0.7}]},
                               {"v1a", "v2a"}),
            "a weight over 1": ({"backends": [{"tags": ["v2"], "weight": 1.5}]}, {"v2a"}),
            "weight 0": ({"backends": [{"tags": ["v1"], "weight": 0},
                                       {"tags": ["v2"], "weight": 1}]}, {"v2a"}),
            "retries out of range": ({"backends": [{"tags": ["v2"], "retries": 50}]}, {"v2a"}),
        }
        for name, (route, instances) in states.items():
            code, answer = await fixture.push(
                {"instances": good["instances"], "rules": [dict(rule, route=route)]})
            self.assertEqual((code, answer["rejected"]), (200, []), name)
            outcomes = await fixture.send({"path": "/reviews/"}, repeat=40, concurrency=4)
            self.assertEqual({o.status for o in outcomes}, {200}, name)
            self.assertEqual({o.instance for o in outcomes}, instances, name)
        code, answer = await fixture.push({"instances": good["instances"], "rules": [rule, {
            "id": "a", "destination": "reviews",
            "actions": [{"action": "abort", "return_code": 418, "probability": 2}]}]})
        self.assertEqual((code, answer["rejected"]), (200, []))
        outcomes = await fixture.send({"path": "/reviews/"}, repeat=10, concurrency=2)
        self.assertEqual({o.status for o in outcomes}, {418})

    async def test_uncompilable_rule_never_freezes_the_proxy(self):
        """
        The defect of issue 9: a header pattern Python's re accepts and PCRE refuses
        (C{\\u0041}) made the proxy refuse the whole state, so no later change reached it.
        Now that rule alone is skipped and reported, the good rule routes, and a later push
        (without it) is taken and reports nothing.
        """
        fixture = await self.start_proxy()
        good = fixture.substitute(_route_state("v2"))
        uncompilable = {"id": "pcre-refuses", "destination": "reviews", "priority": 9,
                        "match": {"headers": {"X-User": "\\u0041"}},
                        "route": {"backends": [{"tags": ["v1"]}]}}
        code, answer = await fixture.push(
            {"instances": good["instances"], "rules": [uncompilable] + good["rules"]})
        self.assertEqual(code, 200, answer)
        self.assertEqual([r["id"] for r in answer["rejected"]], ["pcre-refuses"])
        self.assertIn("headers.X-User", answer["rejected"][0]["error"])
        outcome = await fixture.request({"path": "/reviews/", "headers": {"X-User": "A"}})
        self.assertEqual((outcome.status, outcome.instance), (200, "v2a"))
        self.assertIn("amalgam8: skipped pcre-refuses:", fixture.error_log(whole=True))
        later = fixture.substitute(_route_state("v1"))
        code, answer = await fixture.push(later)
        self.assertEqual((code, answer), (200, {"version": 2, "rejected": []}))
        outcome = await fixture.request({"path": "/reviews/", "headers": {"X-User": "A"}})
        self.assertEqual((outcome.status, outcome.instance), (200, "v1a"))
        code, loaded = await fixture.loaded()
        self.assertEqual((loaded["version"], loaded["rejected"]), (2, []))


class ProxyWorkersTests(_ProxyTestMixin, TestCase):
    """Several nginx workers share one state."""

    async def test_two_workers_see_the_same_state(self):
        """
        With two workers, every request after a push is routed per the new state, whichever
        worker takes it, and both workers have compiled that version.
        """
        fixture = await self.start_proxy(workers=2)
        await self.push(fixture, _route_state("v1"))
        first = await fixture.send({"path": "/reviews/", "persistent": False}, repeat=40,
                                   concurrency=20)
        self.assertEqual({(o.status, o.instance) for o in first}, {(200, "v1a")})
        version = await self.push(fixture, _route_state("v2"))
        outcomes = await fixture.send({"path": "/reviews/", "persistent": False}, repeat=200,
                                      concurrency=20)
        self.assertEqual({(o.status, o.instance) for o in outcomes}, {(200, "v2a")})
        pattern = re.compile(r"amalgam8: worker (\d+) uses state version {}\b".format(version))
        for _ in range(200):
            workers = set(pattern.findall(fixture.error_log(whole=True)))
            if len(workers) == 2:
                break
            await _sleep(0.01)
        self.assertEqual(workers, {"0", "1"})


class ProxySwapTests(_ProxyTestMixin, TestCase):
    """States swap atomically under traffic."""

    async def test_swap_under_traffic(self):
        """
        2,000 requests over eight connections while 20 states are pushed among them (one
        every 90 requests), alternating the route between v1 and v2: no request fails, both
        routes serve, and the last state pushed is the one that stays.
        """
        fixture = await self.start_proxy()
        states = [fixture.substitute(_route_state(tags)) for tags in ("v1", "v2")]
        await self.push(fixture, states[0])
        outcomes = []
        versions = []

        async def traffic():
            while len(outcomes) < 2000 or len(versions) < 20:
                outcomes.append(await fixture.request({"path": "/reviews/x?y=1"}))

        async def pushes():
            for index in range(20):
                while len(outcomes) < (index + 1) * 90:
                    await _sleep(0.002)
                versions.append(await self.push(fixture, states[(index + 1) % 2]))

        await gatherResults(
            [_as_deferred(pushes())] + [_as_deferred(traffic()) for _ in range(8)])
        self.assertEqual(versions, list(range(2, 22)))
        self.assertGreaterEqual(len(outcomes), 2000)
        failed = [o for o in outcomes if o.status != 200 or o.instance not in ("v1a", "v2a")]
        self.assertEqual(failed, [])
        self.assertEqual({o.instance for o in outcomes}, {"v1a", "v2a"})
        # The 20th push routed to v1 (they alternate, starting with v2).
        after = await fixture.send({"path": "/reviews/"}, repeat=20, concurrency=4)
        self.assertEqual({(o.status, o.instance) for o in after}, {(200, "v1a")})


class ProxyReadinessTests(_ProxyTestMixin, TestCase):
    """A proxy that holds no state yet (a fresh or restarted nginx) says so."""

    async def test_not_ready_until_the_first_state(self):
        """
        Before the first push every request, the root too, answers 503 with Retry-After and
        a JSON body (not 404: the destination may well exist), and is logged; after the
        push the same request is routed.
        """
        fixture = await self.start_proxy()
        for path in ("/reviews/", "/"):
            outcome = await fixture.request({"path": path})
            self.assertEqual(outcome.status, 503, outcome)
            self.assertEqual(outcome.header_values("retry-after"), ["1"])
            self.assertEqual(outcome.header_values("content-type"), ["application/json"])
            self.assertEqual(json.loads(outcome.body), {
                "error": "proxy_not_ready",
                "description": "the proxy has no routing state yet"})
        records = await fixture.records(2)
        self.assertEqual([(r["status"], r["path"]) for r in records],
                         [(503, "/reviews/"), (503, "/")])
        for record in records:
            self.assertRegex(record["request_id"], "^[0-9a-f]{32}$")
        await self.push(fixture, _route_state("v1"))
        outcome = await fixture.request({"path": "/reviews/"})
        self.assertEqual((outcome.status, outcome.instance), (200, "v1a"))
        outcome = await fixture.request({"path": "/nothing/"})
        self.assertEqual(outcome.status, 404)


class ProxyLogTests(_ProxyTestMixin, TestCase):
    """The access log beyond the cases."""

    async def test_rejected_request_logged(self):
        """A request nginx rejects before routing (a malformed request) gets a record too."""
        class Raw(Protocol):
            def __init__(self):
                self.data = b""
                self.closed = Deferred()

            def connectionMade(self):
                self.transport.write(b"NONSENSE\r\n\r\n")

            def dataReceived(self, data):
                self.data += data

            def connectionLost(self, reason):
                self.closed.callback(self.data)

        fixture = await self.start_proxy()
        protocol = Raw()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", fixture.config.port), protocol)
        answer = await protocol.closed
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer)
        [record] = await fixture.records(1)
        self.assertEqual(record["status"], 400)
        self.assertRegex(record["request_id"], "^[0-9a-f]{32}$")


class ProxyConfigTests(TestCase):
    """The rendered configuration."""

    def test_log_buffered_by_default(self):
        """The access log is buffered (64k, flushed every second) unless told otherwise."""
        buffered = proxy.render(proxy.ProxyConfig("/rt"), [])
        self.assertIn("a8 buffer=64k flush=1000ms if=$a8_log;", buffered)
        unbuffered = proxy.render(proxy.ProxyConfig("/rt", log_buffer=None), [])
        self.assertIn("access.log a8 if=$a8_log;", unbuffered)

    def test_command(self):
        """nginx runs in the foreground from the runtime directory, its errors logged there."""
        config = proxy.ProxyConfig("/rt")
        self.assertEqual(proxy.command(config, "/usr/sbin/nginx"),
                         ["/usr/sbin/nginx", "-p", "/rt", "-e", "/rt/error.log",
                          "-c", "/rt/nginx.conf"])

    def test_defaults_from_dataplane_json(self):
        """
        The data plane's defaults come from amalgam8/schemas/dataplane.json: the renderer
        passes every one to the Lua configuration and renders the nginx directives that
        depend on them.
        """
        defaults = proxy.dataplane_defaults()
        self.assertEqual(set(defaults), {
            "lb", "retries_max", "connect_timeout", "consecutive_errors", "ejection_time",
            "max_ejected_fraction", "retry_budget_ratio", "retry_budget_floor",
            "retry_budget_window"})
        text = proxy.render(proxy.ProxyConfig("/rt"), [])
        [line] = [line.strip() for line in text.splitlines()
                  if line.strip().startswith("defaults = {")]
        for key, value in defaults.items():
            literal = '"{}"'.format(value) if isinstance(value, str) else repr(value)
            self.assertIn("{} = {}".format(key, literal), line)
        self.assertIn("proxy_next_upstream_tries {};".format(defaults["retries_max"] + 1), text)
        self.assertIn("proxy_connect_timeout {};".format(
            proxy._nginx_time(defaults["connect_timeout"])), text)

    def test_sidecar_settings_override_ejection_defaults(self):
        """The sidecar's consecutive_errors and ejection_time replace dataplane.json's."""
        text = proxy.render(proxy.ProxyConfig("/rt", consecutive_errors=2, ejection_time=7.5),
                            [])
        self.assertIn("consecutive_errors = 2,", text)
        self.assertIn("ejection_time = 7.5,", text)

    def test_nginx_times(self):
        """Seconds become nginx times: whole seconds as C{s}, the others as C{ms}."""
        self.assertEqual([proxy._nginx_time(s) for s in (5, 1.0, 0.25, 2.5)],
                         ["5s", "1s", "250ms", "2500ms"])

    def test_no_lua_literal_repeats_a_default(self):
        """
        The Lua modules read the defaults from config.defaults: none of them names a default
        by value where a setting of dataplane.json is meant.
        """
        lua = os.path.join(proxy.lua_root(), "amalgam8")
        sources = {}
        for name in sorted(os.listdir(lua)):
            if name.endswith(".lua"):
                with open(os.path.join(lua, name)) as f:
                    sources[name] = f.read()
        for name, text in sources.items():
            code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
            self.assertNotIn('"round_robin"', code, name)
            self.assertNotRegex(code, r"\bWINDOW\b|retries_max\s*=|min\([^)]*\b10\)|\* 2 <=", name)
        self.assertNotRegex(sources["config.lua"], r"=\s*\d", "config.lua has no numbers")
