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
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(data)
        return transport

    def assertRefused(self, transport, status):
        """The transport holds one JSON answer of C{status} with a request id, and closes."""
        code, headers, body = parse_answer(transport.value())
        self.assertEqual(code, status, transport.value())
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(int(headers[b"content-length"]), len(body))
        self.assertTrue(headers.get(b"a8-request-id"))
        self.assertTrue(transport.disconnecting)
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
