# -*- test-case-name: tests.test_web -*-
"""
What the Klein servers share: JSON bodies and their limits, request ids, the HTTPS
redirect, metrics per route and status, and error answers.
"""

import json
import math
import os
import time
from urllib.parse import unquote_to_bytes

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from amalgam8.durations import parse_duration
from amalgam8.errors import InvalidJSON, InvalidRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "MAX_BODY",
    "A8Site",
    "Front",
    "Metrics",
    "json_body",
    "query",
    "route_name",
]

MAX_BODY = 1 << 20
_REQUEST_ID = b"a8-request-id"
_FORWARDED_PROTO = b"x-forwarded-proto"
_CONTENT_TYPE = b"content-type"

def _reject_constant(name):
    raise ValueError("{} is not JSON".format(name))


def _finite_float(text):
    # 1e400 is valid JSON but decodes to inf, which json.dumps writes back as Infinity
    # (not JSON): refused here, it can never be stored or served.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("{} is out of range".format(text))
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def json_body(request, limit=MAX_BODY):
    """
    Read and decode a request's JSON body.

    @raise UnsupportedMediaType: when the content type is not C{application/json}.
    @raise PayloadTooLarge: when the body is over C{limit} bytes.
    @raise InvalidRequest: when the body is not JSON in UTF-8, or has a number that is
        not finite (C{1e400}, C{NaN}, C{Infinity}).
    """
    content_type = request.getHeader(_CONTENT_TYPE)
    if content_type is None:
        raise UnsupportedMediaType("the body must be application/json")
    media = content_type.split(b";", 1)[0].strip().lower()
    if media != b"application/json":
        raise UnsupportedMediaType("the body must be application/json")
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge("the body is larger than {} bytes".format(limit))
    content = request.content
    content.seek(0)
    raw = content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge("the body is larger than {} bytes".format(limit))
    try:
        value = _decoder.decode(raw.decode("utf-8"))
        if b"\\u" in raw:
            # A lone surrogate escape (\ud800) decodes but can never be encoded as UTF-8
            # again: stored, it would break every later answer that includes it.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJSON("the body is not valid JSON")


def query(request, allowed):
    """
    Decode a request's query parameters.

    @param allowed: the names a client may use.
    @return: a dict from name to the list of its values (text).
    @raise InvalidRequest: for a name not in C{allowed} or bytes that are not UTF-8.
    """
    result = {}
    for name, values in request.args.items():
        try:
            key = name.decode("utf-8")
            decoded = [value.decode("utf-8") for value in values]
        except UnicodeDecodeError:
            raise InvalidRequest("the query is not UTF-8")
        if key not in allowed:
            raise InvalidRequest("unknown filter {!r}".format(key))
        result[key] = decoded
    return result


MAX_WAIT = 600.0


def blocking_params(params, version_name):
    """
    The C{wait} and C{index}/C{revision} parameters of a blocking read (SPEC B1).

    @return: C{(wait seconds or None, version or None)}; C{wait} is capped at 10 minutes.
    @raise InvalidRequest: for a value that is not a duration or a non-negative integer.
    """

    wait = params.get("wait")
    since = params.get(version_name)
    if wait is not None:
        try:
            wait = min(parse_duration(wait[-1]), MAX_WAIT)
        except ValueError:
            raise InvalidRequest("wait must be a duration such as 30s")
    if since is not None:
        try:
            since = int(since[-1])
            if since < 0:
                raise ValueError(since)
        except ValueError:
            raise InvalidRequest("{} must be a non-negative integer".format(version_name))
    return wait, since


def check_token(request, expected, what="this endpoint"):
    """
    Require C{Authorization: Bearer <expected>} (compared in constant time).

    @raise Unauthorized: otherwise.
    """
    import hmac

    from amalgam8.auth import bearer_token
    from amalgam8.errors import Unauthorized

    token = bearer_token(request.getHeader(b"authorization"))
    if token is None or not hmac.compare_digest(token.encode("utf-8"),
                                                expected.encode("utf-8")):
        raise Unauthorized("{} needs its token".format(what))


def json_answer(request, data):
    """Answer C{data} (encoded JSON) with a Content-Length (no chunked encoding)."""
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def answer_failure(request, failure, error_body, log):
    """
    The one place a Klein API turns an exception into an answer: domain errors get their
    status, unknown routes 404, wrong methods 405 (with C{Allow}), a cancelled request
    nothing, and anything else is logged as a bug and answered 500.

    @param error_body: C{(error_id, message) -> bytes}, the API's error shape.
    """
    from twisted.internet.defer import CancelledError
    from werkzeug.exceptions import MethodNotAllowed, NotFound

    from amalgam8.errors import A8Error

    if failure.check(A8Error):
        error = failure.value
        request.setResponseCode(error.status)
        if error.status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="amalgam8"')
        return json_answer(request, error_body(error.error_id, error.message))
    if failure.check(NotFound):
        request.setResponseCode(404)
        return json_answer(request, error_body("error_not_found", "no such endpoint"))
    if failure.check(MethodNotAllowed):
        request.setResponseCode(405)
        allowed = failure.value.valid_methods or []
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return json_answer(request, error_body("error_method_not_allowed",
                                               "method not allowed"))
    if failure.check(CancelledError):
        return b""
    log.failure("unexpected error answering {method} {uri}", failure,
                method=request.method, uri=request.uri)
    request.setResponseCode(500)
    return json_answer(request, error_body("error_internal", "internal error"))


def metrics_answer(request, metrics, token):
    """C{GET /metrics}: the Prometheus text, behind C{token} when one is set."""
    if token is not None:
        check_token(request, token, "GET /metrics")
    request.setHeader(b"content-type", metrics.content_type)
    return metrics.render()


def route_name(name):
    """
    Name a Klein handler's route for metrics (decorate below C{@app.route}).
    """

    def decorate(function):
        async def handler(self, request, *args, **kwargs):
            request.route = name
            return await function(self, request, *args, **kwargs)

        handler.__name__ = function.__name__
        handler.__doc__ = function.__doc__
        return handler

    return decorate


class Metrics:
    """
    Prometheus metrics of one server: a private registry, request counts by route, method
    and status, and request latency by route and method.
    """

    def __init__(self, prefix, registry=None):
        self.prefix = prefix
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children = {}
        self._requests = Counter(
            prefix + "_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            prefix + "_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1, 2.5, 5, 10, 30, 60),
        )

    def observe(self, route, method, status, seconds):
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._requests.labels(route, method, str(status)),
                self._latency.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self):
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST.encode("ascii")


class Front(Resource):
    """
    The root of a server: gives every request an C{A8-Request-Id} (echoed or fresh),
    redirects plain HTTP when HTTPS is required, records status and latency per route, and
    hands the request to its short road (L{Front.road}) or to C{inner} (a Klein resource).

    A short road is the one implementation of its URLs: a subclass's L{road} picks it, and
    it answers through L{respond}, which waits for the store as long as the store takes.

    @ivar inner: the C{IResource} that answers everything else (rendered as a leaf).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, inner, metrics, require_https=False, clock=time.perf_counter,
                 error_body=None):
        Resource.__init__(self)
        self.inner = inner
        self.metrics = metrics
        self.require_https = require_https
        self._now = clock
        self.error_body = error_body or registry_error

    def road(self, request):
        """
        The short road for C{request}: a callable C{(request) -> bytes or NOT_DONE_YET}, or
        L{None} for the Klein app. Subclasses override it; asked only once an HTTPS
        requirement is met.
        """
        return None

    def render(self, request):
        if not self.require_https or _secure(request):
            road = self.road(request)
            if road is not None:
                return road(request)
        if b"%" in request.path and not _utf8_path(request.path):
            # Klein would answer text/html and log a traceback.
            return self.refuse(request, InvalidRequest("the path is not UTF-8"))
        started = self._now()
        request.route = "unmatched"
        self.request_id(request)
        request.notifyFinish().addBoth(self._finished, request, started)
        if self.require_https and not _secure(request):
            return _redirect(request, self.error_body)
        return self.inner.render(request)

    def respond(self, request, route, result, answer):
        """
        Answer C{request} once C{result} (a Deferred) fires, now or later.

        @param route: the route name the request is counted under (C{answer} may change
            C{request.route}).
        @param answer: C{(request, value) -> bytes} (JSON, or empty): sets the status and headers for the
            value C{result} fired with and returns the body. A failure of C{result} or of
            C{answer} is answered as L{answer_failure} says.
        @return: C{NOT_DONE_YET}; when the client goes away first, C{result} is cancelled.
        """
        started = self._now()
        request.route = route
        self.request_id(request)
        # One callback pair: a fired Deferred's callbacks run at once, each one costs.
        result.addCallbacks(self._answered, self._failed,
                            callbackArgs=(request, started, answer),
                            errbackArgs=(request, started))
        if not request.finished:
            request.notifyFinish().addErrback(lambda _: result.cancel())
        return NOT_DONE_YET

    def _answered(self, value, request, started, answer):
        try:
            body = answer(request, value)
        except Exception:
            return self._failed(Failure(), request, started)
        self._write(body, request, started)

    def _failed(self, failure, request, started):
        self._write(answer_failure(request, failure, self.error_body, self.log), request,
                    started)

    def _write(self, body, request, started):
        if request.finished or request.channel is None:
            return
        request.setHeader(_CONTENT_TYPE, b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        if body:
            request.write(body)
        request.finish()
        self.metrics.observe(request.route, request.method.decode("ascii", "replace"),
                             request.code, self._now() - started)

    def refuse(self, request, error):
        """Answer C{error} (an L{A8Error}) at once, in this server's error shape."""
        started = self._now()
        request.route = "unmatched"
        self.request_id(request)
        request.setResponseCode(error.status)
        self._write(self.error_body(error.error_id, error.message), request, started)
        return NOT_DONE_YET

    def not_allowed(self, request, allowed):
        """Answer 405 with C{Allow: allowed} (a list of method names)."""
        started = self._now()
        request.route = "unmatched"
        self.request_id(request)
        request.setResponseCode(405)
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        body = self.error_body("error_method_not_allowed", "method not allowed")
        self._write(body, request, started)
        return NOT_DONE_YET

    @staticmethod
    def request_id(request):
        """Echo the request's C{A8-Request-Id}, or answer with a fresh UUID."""
        request.responseHeaders.setRawHeaders(
            _REQUEST_ID, [request_id_for(request.requestHeaders)])

    def _finished(self, _ignored, request, started):
        self.metrics.observe(request.route, request.method.decode("ascii", "replace"),
                             request.code, self._now() - started)


def request_id_for(headers):
    """
    The C{A8-Request-Id} to answer with: the one in C{headers} (L{Headers}, or L{None})
    when it is 1-128 ASCII bytes, else a fresh one.
    """
    given = headers.getRawHeaders(_REQUEST_ID) if headers is not None else None
    if given and 0 < len(given[0]) <= 128 and given[0].isascii():
        return given[0]
    return fresh_request_id()


def fresh_request_id():
    """A random (version 4) UUID as bytes; several times cheaper than C{str(uuid.uuid4())}."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return "{}-{}-{}-{}-{}".format(h[:8], h[8:12], h[12:16], h[16:20], h[20:]).encode("ascii")


def _utf8_path(path):
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _secure(request):
    if request.isSecure():
        return True
    proto = request.requestHeaders.getRawHeaders(_FORWARDED_PROTO)
    return bool(proto) and proto[0].strip().lower() == b"https"


def _redirect(request, error_body):
    host = request.getHeader(b"host") or b"localhost"
    request.setResponseCode(301)
    request.setHeader(b"location", b"https://" + host + request.uri)
    request.setHeader(b"content-type", b"application/json")
    request.route = "https_redirect"
    return error_body("error_https_required", "this server requires HTTPS")


def registry_error(error_id, message):
    """The registry's error body, as Amalgam8 0.4 wrote it: C{{"Error": message}}."""
    return json.dumps({"Error": message}, separators=(",", ":")).encode("utf-8")


def controller_error(error_id, message):
    """The controller's error body: C{{"error": id, "description": message}}."""
    return json.dumps({"error": error_id, "description": message},
                      separators=(",", ":")).encode("utf-8")


class A8Channel(HTTPChannel):
    """
    The HTTP channel of the servers: where twisted.web would answer a bare C{400} (a bad
    request line or header), close without an answer (a line over C{MAX_LENGTH}), it
    answers the API's JSON error with an C{A8-Request-Id} and closes.
    """

    def lineLengthExceeded(self, line):
        if self._HTTPChannel__first_line:
            self.refuse(414, "URI Too Long", "error_uri_too_long",
                        "the request line is longer than {} bytes".format(self.MAX_LENGTH))
        else:
            self.refuse(431, "Request Header Fields Too Large", "error_headers_too_large",
                        "a header line is longer than {} bytes".format(self.MAX_LENGTH))

    def _respondToBadRequestAndDisconnect(self):
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.refuse(431, "Request Header Fields Too Large", "error_headers_too_large",
                        "the headers are larger than {} bytes".format(self.totalHeadersSize))
        elif self._receivedHeaderCount > self.maxHeaders:
            self.refuse(431, "Request Header Fields Too Large", "error_headers_too_large",
                        "more than {} headers".format(self.maxHeaders))
        else:
            self.refuse(400, "Bad Request", "error_bad_request", "malformed HTTP request")

    def refuse(self, status, reason, error_id, message):
        """
        Answer the request being read with C{status} and the site's error body, then close
        (what follows on the connection is not read).
        """
        headers = self.requests[-1].requestHeaders if self.requests else None
        body = self.site.error_body(error_id, message)
        self.transport.write(b"".join([
            b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("ascii")),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"a8-request-id: " + request_id_for(headers) + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]))
        self.dataReceived = _ignore
        self.loseConnection()


def _ignore(data):
    pass


class A8Site(Site):
    """
    A L{Site} of L{A8Channel}s, with no per-request access log (metrics count every request,
    and a text log line per request would cost more than answering it) and no parsing of
    form bodies (a body is JSON or is refused with 415 by L{json_body}).

    @ivar error_body: C{(error_id, message) -> bytes}, the API's error shape, for the
        answers the channel gives before any resource sees the request; by default the
        root resource's (L{Front.error_body}).
    """

    protocol = A8Channel

    def __init__(self, resource, error_body=None, **kwargs):
        Site.__init__(self, resource, parsePOSTFormSubmission=False, **kwargs)
        self.error_body = error_body or getattr(resource, "error_body", registry_error)

    def log(self, request):
        pass


class MetricsResource(Resource):
    """C{GET /metrics} in the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics):
        Resource.__init__(self)
        self._metrics = metrics

    def render_GET(self, request):
        request.route = "metrics"
        request.setHeader(b"content-type", self._metrics.content_type)
        return self._metrics.render()
