"""
Tests of L{amalgam8.web}'s HTTP channel and site: the answers the servers give before any
resource sees a request (too-long lines, malformed requests, form bodies) are the API's JSON
errors with an C{A8-Request-Id}. Driven over a L{StringTransport} with a L{Clock}.
"""

import json

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from amalgam8.web import A8Site, Front, Metrics, controller_error, json_body, registry_error


class _Echo(Resource):
    """Answers every request with its method and C{request.args} as JSON."""

    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"args": len(request.args)}).encode("ascii")


class HalfCloseTransport(StringTransport):
    """A L{StringTransport} that can be half-closed and aborted, as TCP can."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


def parse_answer(raw):
    """C{(status, headers dict with lower-case names, body)} of one raw HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class ChannelTestsMixin:
    """Raw requests to an L{A8Site} over a L{StringTransport}."""

    error_body = staticmethod(registry_error)

    def setUp(self):
        self.clock = Clock()
        front = Front(_Echo(), Metrics("a8_test"), error_body=self.error_body)
        self.site = A8Site(front, reactor=self.clock)

    def send(self, data):
        """Feed C{data} to a fresh channel; return its transport."""
        channel = self.site.buildProtocol(None)
        transport = HalfCloseTransport()
        channel.makeConnection(transport)
        channel.dataReceived(data)
        return transport

    def assertRefused(self, transport, status):
        """
        The transport holds one JSON answer of C{status} with a request id, and is half
        closed, then aborted after L{LINGER} seconds.
        """
        from amalgam8.web import LINGER
        code, headers, body = parse_answer(transport.value())
        self.assertEqual(code, status, transport.value())
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(int(headers[b"content-length"]), len(body))
        self.assertTrue(headers.get(b"a8-request-id"))
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.aborted)
        self.clock.advance(LINGER)
        self.assertTrue(transport.aborted)
        return headers, json.loads(body)


class RegistryChannelTests(ChannelTestsMixin, SynchronousTestCase):
    """The channel in the registry's error shape (C{{"Error": ...}})."""

    def test_request_line_too_long(self):
        """A request line over C{MAX_LENGTH} is answered 414 (it was closed unanswered)."""
        transport = self.send(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n")
        _, body = self.assertRefused(transport, 414)
        self.assertEqual(list(body), ["Error"])

    def test_request_line_too_long_unfinished(self):
        """So is one whose end has not come yet."""
        transport = self.send(b"GET /" + b"a" * 20000)
        self.assertRefused(transport, 414)

    def test_header_line_too_long(self):
        """A header line over C{MAX_LENGTH} is answered 431."""
        transport = self.send(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertRefused(transport, 431)

    def test_headers_too_large(self):
        """Headers over C{totalHeadersSize} in all are answered 431 (it was a bare 400)."""
        many = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))
        transport = self.send(b"GET / HTTP/1.1\r\n" + many + b"\r\n")
        self.assertRefused(transport, 431)

    def test_too_many_headers(self):
        """More than C{maxHeaders} headers are answered 431, echoing the request id."""
        many = b"".join(b"X-%d: a\r\n" % i for i in range(600))
        transport = self.send(b"GET / HTTP/1.1\r\nA8-Request-Id: probe-1\r\n" + many + b"\r\n")
        headers, _ = self.assertRefused(transport, 431)
        self.assertEqual(headers[b"a8-request-id"], b"probe-1")

    def test_malformed_request_line(self):
        """A request line that is not C{METHOD URI VERSION} gets a JSON 400."""
        transport = self.send(b"GARBAGE\r\n\r\n")
        _, body = self.assertRefused(transport, 400)
        self.assertEqual(body, {"Error": "malformed HTTP request"})

    def test_malformed_header(self):
        """A header line with no colon gets a JSON 400 with the given request id."""
        transport = self.send(b"GET / HTTP/1.1\r\nA8-Request-Id: probe-2\r\nnocolon\r\n\r\n")
        headers, _ = self.assertRefused(transport, 400)
        self.assertEqual(headers[b"a8-request-id"], b"probe-2")

    def test_nothing_read_after_refusal(self):
        """What follows a refused request on the connection is not answered."""
        transport = self.send(b"GARBAGE\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)

    def test_multipart_body_not_parsed(self):
        """
        A malformed C{multipart/form-data} body reaches the resource (which refuses it with
        415 through L{json_body}) instead of twisted.web's bare 400; form bodies are not
        parsed into C{request.args}.
        """
        body = b"--x\r\n"
        transport = self.send(
            b"POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        code, headers, answer = parse_answer(transport.value())
        self.assertEqual((code, json.loads(answer)), (200, {"args": 0}))
        form = b"a=1&b=2"
        transport = self.send(
            b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(form), form))
        code, headers, answer = parse_answer(transport.value())
        self.assertEqual((code, json.loads(answer)), (200, {"args": 0}))


class _Broken(Resource):
    isLeaf = True

    def render(self, request):
        raise ZeroDivisionError("a bug")


class FailureTests(ChannelTestsMixin, SynchronousTestCase):
    """A resource that raises gets the API's JSON 500, not twisted.web's HTML page."""

    def test_json_500(self):
        self.site = A8Site(_Broken(), reactor=self.clock)
        transport = self.send(b"GET / HTTP/1.1\r\nA8-Request-Id: bug-1\r\n\r\n")
        code, headers, body = parse_answer(transport.value())
        self.assertEqual((code, headers[b"content-type"]), (500, b"application/json"))
        self.assertEqual(headers[b"a8-request-id"], b"bug-1")
        self.assertEqual(json.loads(body), {"Error": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ControllerChannelTests(ChannelTestsMixin, SynchronousTestCase):
    """The channel takes the error shape of the root resource (the controller's here)."""

    error_body = staticmethod(controller_error)

    def test_shape(self):
        transport = self.send(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n")
        _, body = self.assertRefused(transport, 414)
        self.assertEqual(body["error"], "error_uri_too_long")
        self.assertEqual(set(body), {"error", "description"})


class _Body:
    """The part of a request L{json_body} reads."""

    def __init__(self, raw):
        import io
        self.content = io.BytesIO(raw)

    def getHeader(self, name):
        return b"application/json" if name == b"content-type" else None


class JSONBodyTests(SynchronousTestCase):
    """L{json_body} refuses every number that is not finite."""

    def test_out_of_range(self):
        from amalgam8.errors import InvalidJSON
        for raw in (b"1e400", b"[-1e400]", b'{"a": {"b": 1.5e999}}', b"NaN", b"Infinity",
                    b"-Infinity"):
            self.assertRaises(InvalidJSON, json_body, _Body(raw))

    def test_finite(self):
        self.assertEqual(json_body(_Body(b'[1e300, -2.5, 10000000000000000000000]')),
                         [1e300, -2.5, 10 ** 22])


class _Resource:
    """A stand-in for the C{resource} module: limits that C{setrlimit} changes."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard, fail=False):
        self.limits = (soft, hard)
        self.fail = fail
        self.set = []

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        assert which == self.RLIMIT_NOFILE
        if self.fail:
            raise ValueError("not allowed")
        self.set.append(limits)
        self.limits = limits


class SlowClientTests(ChannelTestsMixin, SynchronousTestCase):
    """
    The read timeout (a request must arrive whole within C{read_timeout} of its first byte)
    and the idle timeout (C{timeOut}), on a L{Clock}.
    """

    def setUp(self):
        ChannelTestsMixin.setUp(self)
        self.site = A8Site(self.site.resource, reactor=self.clock, read_timeout=10,
                           idle_timeout=15)

    def connect(self):
        channel = self.site.buildProtocol(None)
        transport = HalfCloseTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_one_byte_a_second(self):
        """A client sending a byte a second is answered 408 and cut at 10 s (it was kept
        as long as it kept sending)."""
        channel, transport = self.connect()
        data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for i in range(10):
            channel.dataReceived(data[i:i + 1])
            self.clock.advance(0.99)
            self.assertFalse(transport.write_closed or transport.disconnecting, i)
        self.clock.advance(0.2)
        _, body = self.assertRefused(transport, 408)
        self.assertEqual(body, {"Error": "the request did not arrive within 10 s"})

    def test_slow_body(self):
        """A body that does not arrive in time is answered 408 as well."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Type: application/json\r\n"
                             b"A8-Request-Id: slow-1\r\nContent-Length: 10\r\n\r\n{")
        self.clock.advance(10)
        headers, _ = self.assertRefused(transport, 408)
        self.assertEqual(headers[b"a8-request-id"], b"slow-1")

    def test_each_request_its_own_time(self):
        """The read timeout runs per request: requests 8 s apart on one connection are all
        answered, and a connection with no request left has no read timer."""
        channel, transport = self.connect()
        for _ in range(3):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.clock.advance(8)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 3)
        self.assertFalse(transport.write_closed or transport.disconnecting)
        # The read timer of the last request fires at 26 s and finds no request arriving.
        self.clock.advance(2)
        self.assertFalse(transport.write_closed or transport.disconnecting)
        self.assertIsNone(channel._reading)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the idle timeout

    def test_timer_moved_on(self):
        """A request begun late in an earlier request's timer still gets its whole time."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(9)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(9.9)
        self.assertFalse(transport.write_closed)
        self.clock.advance(0.1)
        self.assertTrue(transport.write_closed)
        self.assertEqual(transport.value().count(b"HTTP/1.1 408 "), 1)

    def test_idle(self):
        """A connection with no request in it is closed after the idle timeout."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(14.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_lost_cancels(self):
        """A connection lost while a request arrives leaves no timer behind."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HT")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.site.connections, 0)


class ConnectionCapTests(ChannelTestsMixin, SynchronousTestCase):
    """The cap on connections served at once: the ones over it get 503 and Retry-After."""

    def setUp(self):
        ChannelTestsMixin.setUp(self)
        self.site = A8Site(self.site.resource, reactor=self.clock, max_connections=2)

    def connect(self):
        channel = self.site.buildProtocol(None)
        transport = HalfCloseTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_over_cap(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        first, _ = self.connect()
        self.connect()
        self.assertEqual(self.site.connections, 2)
        over, transport = self.connect()
        # Answered as soon as accepted (it frees its descriptor soonest); what it then
        # sends is dropped.
        over.dataReceived(b"GET / HTTP/1.1\r\nA8-Request-Id: busy-1\r\n\r\n")
        headers, body = self.assertRefused(transport, 503)
        self.assertEqual(headers[b"retry-after"], b"1")
        self.assertEqual(list(body), ["Error"])
        over.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.connections, 2)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.connections, 1)
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())

    def test_over_cap_with_body(self):
        """The body of an over-cap request is not handed to the resource."""
        self.connect()
        self.connect()
        over, transport = self.connect()
        over.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        self.assertRefused(transport, 503)
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)

    def test_automatic(self):
        """With no cap given, the site takes the open-file limit less 64 when it starts."""
        from amalgam8.web import connection_cap
        limits = _Resource(1024, 4096)
        site = A8Site(self.site.resource, reactor=self.clock, getrlimit=limits.getrlimit)
        site.startFactory()
        self.addCleanup(site.stopFactory)
        self.assertEqual(site.max_connections, 960)
        self.assertEqual(connection_cap(_Resource(-1, -1).getrlimit), (1 << 20) - 64)
        self.assertEqual(connection_cap(_Resource(10, 10).getrlimit), 1)


class RaiseFDLimitTests(SynchronousTestCase):
    """L{raise_fd_limit} raises the soft open-file limit to the hard one and says so."""

    def raise_limit(self, limits):
        from twisted.logger import capturedLogs

        from amalgam8.settings import raise_fd_limit
        with capturedLogs() as events:
            result = raise_fd_limit("a8test", limits)
        return result, events

    def test_raised(self):
        limits = _Resource(1024, 524288)
        result, events = self.raise_limit(limits)
        self.assertEqual((result, limits.set), (524288, [(524288, 524288)]))
        self.assertEqual([(e["soft"], e["target"]) for e in events], [(1024, 524288)])

    def test_hard_unlimited(self):
        limits = _Resource(1024, -1)
        result, _ = self.raise_limit(limits)
        self.assertEqual(limits.set, [(1 << 20, -1)])

    def test_already_at_hard(self):
        limits = _Resource(4096, 4096)
        result, events = self.raise_limit(limits)
        self.assertEqual((result, limits.set, events), (4096, [], []))

    def test_refused(self):
        """A refusal (a container's cap under the hard limit) is a warning, not a stop."""
        from twisted.logger import LogLevel
        limits = _Resource(1024, 4096, fail=True)
        result, events = self.raise_limit(limits)
        self.assertEqual(result, 1024)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])


class LimitSettingsTests(SynchronousTestCase):
    """C{--read-timeout}, C{--idle-timeout}, C{--max-connections} reach the site."""

    def site(self, argv):
        from twisted.application.internet import StreamServerEndpointService
        from twisted.internet.testing import MemoryReactorClock

        from amalgam8.controller.tap import Options as ControllerOptions
        from amalgam8.controller.tap import makeService as controller_service
        from amalgam8.registry.tap import Options, makeService
        sites = []
        for options_class, make in ((Options, makeService),
                                    (ControllerOptions, controller_service)):
            options = options_class(environ={})
            options.parseOptions(list(argv))
            service = make(options, reactor=MemoryReactorClock())
            sites += [child.factory for child in service
                      if isinstance(child, StreamServerEndpointService)]
        self.assertEqual(len(sites), 2)
        return sites

    def test_defaults(self):
        for site in self.site([]):
            self.assertEqual((site.read_timeout, site.timeOut, site.max_connections),
                             (10.0, 15.0, None))

    def test_given(self):
        for site in self.site(["--read-timeout", "2s", "--idle-timeout", "1m",
                               "--max-connections", "100"]):
            self.assertEqual((site.read_timeout, site.timeOut, site.max_connections),
                             (2.0, 60.0, 100))

    def test_bad(self):
        import io
        import sys

        from amalgam8.registry.tap import Options
        for argv in (["--max-connections", "0"], ["--max-connections", "many"],
                     ["--read-timeout", "0"], ["--idle-timeout", "soon"]):
            self.patch(sys, "stderr", io.StringIO())
            error = self.assertRaises(SystemExit, Options(environ={}).parseOptions, argv)
            self.assertEqual(error.code, 2, argv)
