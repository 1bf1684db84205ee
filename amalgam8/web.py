# -*- test-case-name: tests.test_web -*-
"""
What the Klein servers share: JSON bodies and their limits, request ids, the HTTPS
redirect, metrics per route and status, and error answers.
"""

import json
import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.logger import Logger
from twisted.python.failure import Failure
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

_decoder = json.JSONDecoder(parse_constant=lambda name: _reject_constant(name))


def _reject_constant(name):
    raise ValueError("{} is not JSON".format(name))


def json_body(request, limit=MAX_BODY):
    """
    Read and decode a request's JSON body.

    @raise UnsupportedMediaType: when the content type is not C{application/json}.
    @raise PayloadTooLarge: when the body is over C{limit} bytes.
    @raise InvalidRequest: when the body is not JSON in UTF-8.
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
        given = request.requestHeaders.getRawHeaders(_REQUEST_ID)
        rid = given[0] if given and 0 < len(given[0]) <= 128 and given[0].isascii() else None
        if rid is None:
            rid = fresh_request_id()
        request.responseHeaders.setRawHeaders(_REQUEST_ID, [rid])

    def _finished(self, _ignored, request, started):
        self.metrics.observe(request.route, request.method.decode("ascii", "replace"),
                             request.code, self._now() - started)


def fresh_request_id():
    """A random (version 4) UUID as bytes; several times cheaper than C{str(uuid.uuid4())}."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return "{}-{}-{}-{}-{}".format(h[:8], h[8:12], h[12:16], h[16:20], h[20:]).encode("ascii")


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


class A8Site(Site):
    """
    A L{Site} with no per-request access log: metrics count every request, and a text log
    line per request would cost more than answering it.
    """

    def log(self, request):
        pass


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
