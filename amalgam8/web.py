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
from twisted.web.server import NOT_DONE_YET, Request, Site

from amalgam8.durations import parse_duration
from amalgam8.errors import InvalidJSON, InvalidRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "MAX_BODY",
    "A8Channel",
    "A8Request",
    "A8Site",
    "connection_cap",
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
        if error.status == 503:
            # The store is away; it is reconnected to within seconds.
            request.setHeader(b"retry-after", b"1")
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


def metrics_answer(request, metrics, token, authenticator=None):
    """
    C{GET /metrics}: the Prometheus text, behind C{token} when one is set. Series by
    namespace only for the holder of the token or of an admin JWT (C{authenticator}'s
    L{is_admin<amalgam8.auth.Authenticator.is_admin>}); anyone else gets the totals.
    """
    if token is not None:
        check_token(request, token, "GET /metrics")
        per_namespace = True
    else:
        per_namespace = authenticator is not None and authenticator.is_admin(
            request.getHeader(b"authorization"))
    request.setHeader(b"content-type", metrics.content_type)
    return metrics.render(per_namespace)


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
    and status, request latency by route and method, and the requests an auth fallback
    accepted (L{auth_fallback}).
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
        self._fallbacks = Counter(
            prefix + "_auth_fallback",
            "Requests accepted by a weaker auth mode after a stronger one "
            "(--allow-trusted-fallback), by mode.",
            ["mode"],
            registry=self.registry,
        )

    def auth_fallback(self, mode):
        """Count a request accepted by the fallback C{mode} (an L{Authenticator} hook)."""
        self._fallbacks.labels(mode).inc()

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

    def render(self, per_namespace=True):
        """
        The Prometheus text: every series, or (C{per_namespace} false) each family with a
        C{namespace} label summed over it, so that no tenant is named.
        """
        if per_namespace:
            return generate_latest(self.registry)
        return generate_latest(_Totals(self.registry))

    content_type = CONTENT_TYPE_LATEST.encode("ascii")


class _Totals:
    """A collector of another registry's families with the C{namespace} label summed away."""

    def __init__(self, registry):
        self._registry = registry

    def collect(self):
        from prometheus_client.metrics_core import Metric

        for family in self._registry.collect():
            if not any("namespace" in sample.labels for sample in family.samples):
                yield family
                continue
            sums = {}
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                      if k != "namespace"))
                key = (sample.name, labels)
                sums[key] = sums.get(key, 0) + sample.value
            total = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, labels), value in sums.items():
                total.add_sample(name, dict(labels), value)
            yield total


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


#: The defaults of the servers' connection limits (the settings C{--read-timeout},
#: C{--idle-timeout} and C{--max-connections} of L{amalgam8.settings.SERVER_SETTINGS}).
READ_TIMEOUT = 10.0
IDLE_TIMEOUT = 15.0
#: File descriptors kept free of client connections under an automatic cap: the listening
#: sockets, the store's and log's files, and the over-cap connections answered 503.
FD_RESERVE = 64
#: What an over-cap client is told to wait (C{Retry-After}, seconds).
RETRY_AFTER = 1
#: Seconds a refused connection stays half-closed (its answer sent, what the client still
#: sends read and dropped) before it is aborted: closing at once with unread bytes would
#: reset the connection, and the client could lose the answer.
LINGER = 2.0


class A8Channel(HTTPChannel):
    """
    The HTTP channel of the servers.

    Where twisted.web would answer a bare C{400} (a bad request line or header), or close
    without an answer (a line over C{MAX_LENGTH}), it answers the API's JSON error with an
    C{A8-Request-Id} and closes. A request must arrive whole (line, headers and body) within
    the site's C{read_timeout} of its first byte, or it is answered 408 and the connection
    closed (a client sending a byte a second is not kept). A connection over the site's
    cap (C{over_cap}) is answered 503 with C{Retry-After} as soon as it is accepted, so
    that it holds its descriptor no longer than L{LINGER}.
    """

    over_cap = False
    _deadline = None
    _reading = None
    _lingering = None
    _refused = False

    def connectionMade(self):
        HTTPChannel.connectionMade(self)
        if self.over_cap:
            self.refuse(503, "Service Unavailable", "error_too_many_connections",
                        "the server has {} connections open; retry later".format(
                            self.site.connections), retry_after=RETRY_AFTER)
        else:
            self.site.connections += 1

    def connectionLost(self, reason):
        self._stop_reading()
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        if not self.over_cap:
            self.site.connections -= 1
        HTTPChannel.connectionLost(self, reason)

    def dataReceived(self, data):
        if self._refused:
            return
        timeout = self.site.read_timeout
        if self._deadline is None and not self._handlingRequest and timeout:
            # A request begins. One timer serves the requests that follow on the
            # connection (it is moved on, not made anew per request: that cost a tenth
            # of a small request's time).
            self._deadline = self.site.reactor.seconds() + timeout
            if self._reading is None:
                self._reading = self.callLater(timeout, self._check_read)
        HTTPChannel.dataReceived(self, data)

    def allContentReceived(self):
        self._deadline = None
        if self._refused:
            return
        HTTPChannel.allContentReceived(self)

    def _stop_reading(self):
        self._deadline = None
        if self._reading is not None:
            if self._reading.active():
                self._reading.cancel()
            self._reading = None

    def _check_read(self):
        self._reading = None
        if self._deadline is None:
            return
        left = self._deadline - self.site.reactor.seconds()
        if left > 0:
            self._reading = self.callLater(left, self._check_read)
            return
        self.refuse(408, "Request Timeout", "error_request_timeout",
                    "the request did not arrive within {:g} s".format(self.site.read_timeout))

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

    def refuse(self, status, reason, error_id, message, retry_after=None):
        """
        Answer the request being read with C{status} and the site's error body, then close
        (what follows on the connection is not read): half-close, and abort after
        L{LINGER} unless the client has closed by then.
        """
        if self._refused:
            return
        self._refused = True
        self._buffer = b""  # LineReceiver's: no further line of it is parsed
        self._stop_reading()
        headers = self.requests[-1].requestHeaders if self.requests else None
        body = self.site.error_body(error_id, message)
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("ascii")),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"a8-request-id: " + request_id_for(headers) + b"\r\n",
        ]
        if retry_after is not None:
            lines.append(b"retry-after: %d\r\n" % retry_after)
        lines += [b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(lines))
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.loseConnection()
            return
        half_close()
        self._lingering = self.callLater(LINGER, self.transport.abortConnection)


class A8Request(Request):
    """
    A request whose unexpected failure outside the Klein app (a resource that raised) is
    logged as a bug and answered with the API's JSON 500 and a request id, not
    twisted.web's HTML page.
    """

    _a8_log = Logger()

    def processingFailed(self, reason):
        self._a8_log.failure("unexpected error answering {method} {uri}", reason,
                             method=self.method, uri=self.uri)
        if self.finished or self._disconnected:
            return reason
        body = self.site.error_body("error_internal", "internal error")
        self.setResponseCode(500)
        self.responseHeaders.setRawHeaders(
            _REQUEST_ID, [request_id_for(self.requestHeaders)])
        json_answer(self, body)
        self.write(body)
        self.finish()
        return reason


class A8Site(Site):
    """
    A L{Site} of L{A8Channel}s, with no per-request access log (metrics count every request,
    and a text log line per request would cost more than answering it) and no parsing of
    form bodies (a body is JSON or is refused with 415 by L{json_body}).

    @ivar error_body: C{(error_id, message) -> bytes}, the API's error shape, for the
        answers the channel gives before any resource sees the request; by default the
        root resource's (L{Front.error_body}).
    @ivar read_timeout: seconds a request may take to arrive whole (L{None}: no limit).
    @ivar max_connections: the most connections served at once; the ones over it get 503.
        L{None} until the site starts means the open-file limit less L{FD_RESERVE}.
    @ivar connections: how many connections are served now.
    """

    protocol = A8Channel
    requestFactory = A8Request

    def __init__(self, resource, error_body=None, read_timeout=READ_TIMEOUT,
                 idle_timeout=IDLE_TIMEOUT, max_connections=None, reactor=None,
                 getrlimit=None):
        Site.__init__(self, resource, parsePOSTFormSubmission=False, timeout=idle_timeout,
                      reactor=reactor)
        self.error_body = error_body or getattr(resource, "error_body", registry_error)
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.connections = 0
        self._getrlimit = getrlimit

    def startFactory(self):
        Site.startFactory(self)
        if self.max_connections is None:
            self.max_connections = connection_cap(self._getrlimit)

    def buildProtocol(self, addr):
        channel = Site.buildProtocol(self, addr)
        cap = self.max_connections
        if cap is not None and self.connections >= cap:
            channel.over_cap = True
        return channel

    def log(self, request):
        pass


def connection_cap(getrlimit=None, reserve=FD_RESERVE):
    """
    The automatic cap on connections: the soft open-file limit less C{reserve}, so that
    accepting never fails for want of a descriptor (EMFILE) and a client over the cap
    gets an answer (503).
    """
    import resource

    soft, _hard = (getrlimit or resource.getrlimit)(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - reserve)


class MetricsResource(Resource):
    """C{GET /metrics} in the Prometheus text format: totals only (no namespace named)."""

    isLeaf = True

    def __init__(self, metrics):
        Resource.__init__(self)
        self._metrics = metrics

    def render_GET(self, request):
        request.route = "metrics"
        request.setHeader(b"content-type", self._metrics.content_type)
        return self._metrics.render(per_namespace=False)
