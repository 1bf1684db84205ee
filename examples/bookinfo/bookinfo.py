# -*- test-case-name: tests.test_examples -*-
"""
bookinfo: the four services of Amalgam8's (and Istio's) sample application, one of them per
process, picked with C{--service}.

    productpage --> details                    (1 s timeout)
                \\-> reviews v1 | v2 | v3       (3 s timeout, tried twice)
                                \\-> ratings    (v2: 10 s timeout, v3: 2.5 s)

    python examples/bookinfo/bookinfo.py --service productpage --port 9080
    python examples/bookinfo/bookinfo.py --service details     --port 9081
    python examples/bookinfo/bookinfo.py --service reviews     --port 9082 --version v2
    python examples/bookinfo/bookinfo.py --service ratings     --port 9083

Services call each other only through their sidecar's proxy, C{A8_PROXY_URL/<service>/<path>}
(default C{http://127.0.0.1:6379}), forwarding the two headers that routing rules and
Gremlin match on: the C{user} cookie (as C{Cookie: user=NAME}) and C{X-Request-ID}.

- C{productpage}: C{GET /productpage} renders the book with its details and reviews, or says
  that either is unavailable, and marks what it shows for tests and demos (see
  L{page_markers}). C{/login?user=NAME} (or a POSTed form C{user=NAME}) sets the C{user}
  cookie and C{/logout} clears it, both redirecting to C{/productpage}.
- C{details}: C{GET /details/<id>}: the book's details as JSON.
- C{reviews}: C{GET /reviews/<id>}: two reviews as JSON; v1 without ratings, v2 with black
  stars, v3 with red stars (v2 and v3 ask C{ratings}).
- C{ratings}: C{GET /ratings/<id>}: C{{"Reviewer1": 5, "Reviewer2": 4}}.

Every service answers C{GET /health} with 200. Outgoing calls are treq over an injected
C{HTTPClient} and time out on an injected clock; nothing here blocks. It needs only Twisted,
Klein and treq: like any app in the mesh it uses no Amalgam8 library.
"""

import html
import json
import os
import re
import sys
from http.cookiejar import CookieJar, DefaultCookiePolicy

from hyperlink import DecodedURL
from klein import Klein
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    TimeoutError,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import (
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    RequestNotSent,
    RequestTransmissionFailed,
)
from twisted.web.server import Site

__all__ = [
    "ProductPage",
    "Details",
    "Reviews",
    "Ratings",
    "UpstreamError",
    "fetch_json",
    "describe",
    "forward_headers",
    "user_of",
    "make_app",
    "page_markers",
    "render_page",
    "http_client",
    "http_client_for",
    "Options",
    "main",
    "SERVICES",
    "DEFAULT_PROXY_URL",
    "DETAILS_UNAVAILABLE",
    "REVIEWS_UNAVAILABLE",
    "RATINGS_UNAVAILABLE",
]

SERVICES = ("productpage", "details", "reviews", "ratings")
DEFAULT_PORTS = {"productpage": 9080, "details": 9081, "reviews": 9082, "ratings": 9083}
DEFAULT_PROXY_URL = "http://127.0.0.1:6379"

DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable"
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"

#: The colour of the stars of each version of reviews (v1 shows none and asks no ratings).
STAR_COLORS = {"v1": None, "v2": "black", "v3": "red"}
#: How long each version of reviews waits for ratings, in seconds (as in the original).
RATINGS_TIMEOUTS = {"v2": 10.0, "v3": 2.5}

PRODUCT_ID = 0
PRODUCT = {
    "id": PRODUCT_ID,
    "title": "The Comedy of Errors",
    "summary": (
        "Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early "
        "plays. It is his shortest and one of his most farcical comedies, with a major part "
        "of the humour coming from slapstick and mistaken identity, in addition to puns and "
        "word play."),
}
DETAILS = {
    "author": "William Shakespeare",
    "year": 1595,
    "type": "paperback",
    "pages": 200,
    "publisher": "PublisherA",
    "language": "English",
    "ISBN-10": "1234567890",
    "ISBN-13": "123-1234567890",
}
REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. "
                  "The slapstick humour is refreshing!"),
    ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when "
                  "compared to other plays by Shakespeare."),
)
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}

_USER = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_PRODUCT_ID = re.compile(r"[0-9]{1,9}")
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,32}")
_COLOR = re.compile(r"[a-z]{1,20}")


# -- calling other services --------------------------------------------------------------------

class UpstreamError(Exception):
    """
    A service answered with another status than 200.

    @ivar code: the HTTP status.
    @ivar url: the URL called.
    """

    def __init__(self, code, url):
        Exception.__init__(self, code, url)
        self.code = code
        self.url = url

    def __str__(self):
        return "HTTP {} from {}".format(self.code, self.url)


#: What L{fetch_json} may fail with when the other service is down, slow, broken or faulted
#: by Gremlin; callers show or answer "unavailable" for these and let anything else (a bug)
#: through.
UPSTREAM_FAILURES = (
    TimeoutError,       # not CancelledError: that one means our own caller went away
    ConnectError,
    ConnectionLost,
    ResponseFailed,
    ResponseNeverReceived,
    RequestNotSent,
    RequestTransmissionFailed,
    UpstreamError,
    ValueError,     # not JSON, not UTF-8, or not the shape expected
)


def http_client_for(agent):
    """
    The C{HTTPClient} the services call each other with, over C{agent}.

    It keeps no cookies: the proxy answers with a sticky C{version} cookie, and a client
    that kept it would send every later call, whoever it is for, to the version that
    answered first. The only cookie sent is the one L{forward_headers} copies from the
    request being served.
    """
    from treq.client import HTTPClient

    return HTTPClient(agent, cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])))


def http_client(reactor):
    """
    The production client: L{http_client_for} a pooled C{Agent} on C{reactor}.

    @return: C{(client, pool)}; close the pool's connections at shutdown.
    """
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    return http_client_for(Agent(reactor, pool=pool)), pool


def user_of(request):
    """The C{user} cookie of C{request} as text, or L{None} (also when malformed)."""
    raw = request.getCookie(b"user")
    if not raw:
        return None
    user = raw.decode("ascii", "replace")
    return user if _USER.fullmatch(user) else None


def forward_headers(request):
    """
    The headers to pass on from C{request} to the services it calls: C{Cookie: user=NAME}
    when it carries a well-formed C{user} cookie (only that one: the proxy's sticky
    C{version} cookie names this service's version, not the callee's) and C{X-Request-ID}
    when it has one.

    @return: C{{bytes: [bytes]}}, as treq takes headers.
    """
    headers = {}
    user = user_of(request)
    if user is not None:
        headers[b"Cookie"] = [b"user=" + user.encode("ascii")]
    request_id = request.getHeader(b"x-request-id")
    if request_id:
        headers[b"X-Request-ID"] = [request_id]
    return headers


async def fetch_json(http, clock, url, headers, timeout):
    """
    GET C{url} and decode its JSON body, all of it (connecting, the answer and its body)
    within C{timeout} seconds on C{clock}; a call that takes longer is cancelled, closing
    its connection.

    @param http: a treq C{HTTPClient} (or C{StubTreq}).
    @param clock: the C{IReactorTime} that times the call out (a C{Clock} in tests).
    @param url: a L{DecodedURL}.
    @param headers: C{{bytes: [bytes]}}.
    @param timeout: seconds.
    @return: the decoded body of a 200 answer.
    @raise TimeoutError: when C{timeout} passed first.
    @raise CancelledError: when the caller cancelled it.
    @raise UpstreamError: on any status but 200.
    @raise ValueError: when the body is not JSON in UTF-8.
    @raise Exception: the other L{UPSTREAM_FAILURES} when the call failed.
    """
    expired = []
    exchange = Deferred.fromCoroutine(_exchange(http, clock, url, headers))

    def expire():
        expired.append(True)
        exchange.cancel()

    timer = clock.callLater(timeout, expire)
    try:
        return await exchange
    except Exception as e:
        # Cancelling the request fails it with ResponseNeverReceived([CancelledError]), and
        # that alone cannot tell our own timeout from our caller going away.
        if expired:
            raise TimeoutError("no answer in {} s".format(timeout))
        if _cancelled(e):
            raise CancelledError()
        raise
    finally:
        if timer.active():
            timer.cancel()


async def _exchange(http, clock, url, headers):
    # unbuffered: _read_body reads the body itself, so that it can abandon it.
    response = await http.get(url, headers=headers, reactor=clock, unbuffered=True)
    body = await _read_body(response)   # even on an error, to reuse the connection
    if response.code != 200:
        raise UpstreamError(response.code, url.to_text())
    return json.loads(body.decode("utf-8"))


class _Body(Protocol):
    def __init__(self, finished):
        self.finished = finished
        self.parts = []

    def dataReceived(self, data):
        self.parts.append(data)

    def connectionLost(self, reason):
        if self.finished.called:      # cancelled already
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _read_body(response):
    """
    A Deferred firing with the whole body of C{response}; cancelling it closes the
    connection (treq's C{content()} cannot be cancelled, and would read on).
    """
    def cancel(_):
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    protocol = _Body(Deferred(cancel))
    response.deliverBody(protocol)
    return protocol.finished


def _cancelled(error):
    """Whether C{error} is, or only wraps, a cancellation."""
    if isinstance(error, CancelledError):
        return True
    reasons = getattr(error, "reasons", None)
    return bool(reasons) and all(reason.check(CancelledError) for reason in reasons)


def describe(error):
    """A short text saying why a call failed."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(reason.getErrorMessage() for reason in reasons)
    return str(error) or type(error).__name__


def _product_id(text):
    return int(text) if _PRODUCT_ID.fullmatch(text) else None


def _json(request, value, code=200):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode("utf-8")


def _bad_product_id(request):
    return _json(request, {"error": "please provide a numeric product id"}, 400)


def _health(request, service):
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return "{} is healthy\n".format(service).encode("utf-8")


# -- productpage -------------------------------------------------------------------------------

class ProductPage:
    """
    The product page: asks C{details} and C{reviews} at the same time and renders what came
    back in time.

    @param http: the treq C{HTTPClient} to call them with.
    @param clock: the C{IReactorTime} their timeouts run on.
    @param proxy: the sidecar's proxy, a L{DecodedURL}.
    @param details_timeout: seconds C{details} gets [1].
    @param reviews_timeout: seconds each try of C{reviews} gets [3].
    @param reviews_attempts: how often C{reviews} is tried [2, as in the original, whose
        fault-injection walk-through counts on it].
    """

    app = Klein()
    log = Logger()

    def __init__(self, http, clock, proxy, details_timeout=1.0, reviews_timeout=3.0,
                 reviews_attempts=2):
        self._http = http
        self._clock = clock
        self._proxy = proxy
        self._details_timeout = details_timeout
        self._reviews_timeout = reviews_timeout
        self._reviews_attempts = reviews_attempts

    @app.route("/", methods=["GET"])
    def index(self, request):
        """The page is the product page."""
        return _redirect(request, 302, b"/productpage")

    @app.route("/productpage", methods=["GET"])
    async def productpage(self, request):
        """The book, its details and its reviews (or what is unavailable), as HTML."""
        headers = forward_headers(request)
        try:
            details, reviews = await gatherResults([
                Deferred.fromCoroutine(self._details(headers)),
                Deferred.fromCoroutine(self._reviews(headers)),
            ], consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()   # a cancellation (the client went away), or a bug
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return render_page(user_of(request), details, reviews).encode("utf-8")

    @app.route("/login", methods=["GET", "POST"])
    def login(self, request):
        """
        Sign in: C{?user=NAME} (or a POSTed form field C{user}, or C{username} as the
        original's form had it) sets the C{user} cookie, then back to the product page.
        """
        user = _arg(request, b"user") or _arg(request, b"username")
        if user is None or not _USER.fullmatch(user):
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"user must be 1 to 64 letters, digits or ._@-\n"
        request.addCookie(b"user", user.encode("ascii"), path=b"/")
        return _redirect(request, 303 if request.method == b"POST" else 302, b"/productpage")

    @app.route("/logout", methods=["GET", "POST"])
    def logout(self, request):
        """Sign out: clear the C{user} cookie, then back to the product page."""
        request.addCookie(b"user", b"", path=b"/", max_age=b"0",
                          expires=b"Thu, 01 Jan 1970 00:00:00 GMT")
        return _redirect(request, 303 if request.method == b"POST" else 302, b"/productpage")

    @app.route("/health", methods=["GET"])
    def health(self, request):
        """Healthy while it answers, whatever its dependencies do."""
        return _health(request, "productpage")

    async def _details(self, headers):
        url = self._proxy.child("details", "details", str(PRODUCT_ID))
        try:
            details = await fetch_json(self._http, self._clock, url, headers,
                                       self._details_timeout)
            if not isinstance(details, dict):
                raise ValueError("details are not a JSON object")
            return details
        except UPSTREAM_FAILURES as e:
            self._unavailable("details", url, e)
            return None

    async def _reviews(self, headers):
        url = self._proxy.child("reviews", "reviews", str(PRODUCT_ID))
        for attempt in range(1, self._reviews_attempts + 1):
            try:
                reviews = await fetch_json(self._http, self._clock, url, headers,
                                           self._reviews_timeout)
                if not (isinstance(reviews, dict) and isinstance(reviews.get("reviews"), list)
                        and all(isinstance(r, dict) for r in reviews["reviews"])):
                    raise ValueError("reviews are not a JSON object with a list of reviews")
                return reviews
            except UPSTREAM_FAILURES as e:
                self._unavailable("reviews", url, e, attempt)
        return None

    def _unavailable(self, service, url, error, attempt=1):
        self.log.warn("{service} unavailable (try {attempt}) at {url}: {why}",
                      service=service, attempt=attempt, url=url.to_text(),
                      why=describe(error))


def _arg(request, name):
    values = request.args.get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "replace").strip() or None


def _redirect(request, code, location):
    request.setResponseCode(code)
    request.setHeader(b"location", location)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"see " + location + b"\n"


def page_markers(user, details, reviews):
    """
    What the product page shows, for tests and demos to read without parsing the page; the
    page carries them as C{data-*} attributes of C{<main id="bookinfo">} and in an HTML
    comment C{<!-- bookinfo: details=ok reviews=ok reviews-version=v2 ratings=ok
    stars=black user=jason -->}.

    @param user: who is signed in, or L{None}.
    @param details: the details JSON, or L{None} when unavailable.
    @param reviews: the reviews JSON, or L{None} when unavailable.
    @return: C{{name: text}} with:
        - C{details}: C{ok} or C{unavailable};
        - C{reviews}: C{ok} or C{unavailable};
        - C{reviews-version}: the version of reviews that answered (C{v1}, C{v2}, C{v3}),
          C{unknown} if it did not say, C{none} when reviews are unavailable;
        - C{ratings}: C{ok} (stars shown), C{unavailable} (reviews could not get ratings)
          or C{none} (reviews v1, which asks none, or no reviews);
        - C{stars}: the colour of the stars shown (C{black} for v2, C{red} for v3) or
          C{none};
        - C{user}: who is signed in, empty when nobody is.
    """
    markers = {
        "details": "unavailable" if details is None else "ok",
        "reviews": "unavailable" if reviews is None else "ok",
        "reviews-version": "none",
        "ratings": "none",
        "stars": "none",
        "user": user or "",
    }
    if reviews is not None:
        version = reviews.get("version")
        markers["reviews-version"] = (version if isinstance(version, str)
                                      and _TOKEN.fullmatch(version) else "unknown")
        ratings = reviews.get("ratings")
        if ratings == "unavailable":
            markers["ratings"] = "unavailable"
        elif isinstance(ratings, dict):
            markers["ratings"] = "ok"
            colors = [_stars(review)[1] for review in reviews["reviews"]]
            markers["stars"] = next((color for color in colors if color), "none")
    return markers


def _stars(review):
    """C{(count, colour)} of a review's rating, C{(None, None)} without a usable one."""
    rating = review.get("rating")
    if not isinstance(rating, dict):
        return None, None
    stars, color = rating.get("stars"), rating.get("color")
    if (isinstance(stars, int) and not isinstance(stars, bool) and 0 <= stars <= 5
            and isinstance(color, str) and _COLOR.fullmatch(color)):
        return stars, color
    return None, None


def _text(value):
    return html.escape(str(value))


def _render_user(user):
    if user:
        return ('<p class="user">Signed in as <b id="user">{}</b> '
                '<a href="/logout">Sign out</a></p>').format(_text(user))
    return ('<form class="user" method="post" action="/login">'
            '<label>User name <input name="user" required></label> '
            '<button type="submit">Sign in</button></form>')


def _render_details(details):
    if details is None:
        return "<h3>{}</h3>".format(_text(DETAILS_UNAVAILABLE))
    rows = [("Author", "author"), ("Year", "year"), ("Type", "type"), ("Pages", "pages"),
            ("Publisher", "publisher"), ("Language", "language"),
            ("ISBN-10", "ISBN-10"), ("ISBN-13", "ISBN-13")]
    items = "".join("<dt>{}</dt><dd>{}</dd>".format(_text(label), _text(details[key]))
                    for label, key in rows if key in details)
    return "<h2>Book Details</h2><dl>{}</dl>".format(items)


def _render_reviews(reviews):
    if reviews is None:
        return "<h3>{}</h3>".format(_text(REVIEWS_UNAVAILABLE))
    parts = ["<h2>Book Reviews</h2>"]
    for review in reviews["reviews"]:
        parts.append("<blockquote><p>{}</p><small>{}</small>".format(
            _text(review.get("text", "")), _text(review.get("reviewer", ""))))
        count, color = _stars(review)
        rating = review.get("rating")
        if count is not None:
            parts.append(
                '<p class="stars" style="color: {color}" title="{count} of 5 stars">'
                '{full}{empty}</p>'.format(color=color, count=count,
                                           full="\u2605" * count, empty="\u2606" * (5 - count)))
        elif isinstance(rating, dict) and "error" in rating:
            parts.append('<p class="ratings-error">{}</p>'.format(_text(rating["error"])))
        parts.append("</blockquote>")
    return "".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Simple Bookstore App</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
.row {{ display: flex; gap: 3em; }}
.row section {{ flex: 1; }}
.stars {{ font-size: 1.4em; margin: 0.2em 0; }}
</style>
</head>
<body>
<!-- bookinfo: {comment} -->
<main id="bookinfo" {attributes}>
{user}
<h1>{title}</h1>
<p>{summary}</p>
<div class="row">
<section id="details">{details}</section>
<section id="reviews">{reviews}</section>
</div>
</main>
</body>
</html>
"""


def render_page(user, details, reviews):
    """
    The product page.

    @param user: who is signed in, or L{None}.
    @param details: the details JSON, or L{None} when unavailable.
    @param reviews: the reviews JSON (with a list of reviews), or L{None} when unavailable.
    @return: the HTML, as text; its markers are L{page_markers}.
    """
    markers = page_markers(user, details, reviews)
    return _PAGE.format(
        comment=" ".join("{}={}".format(k, v) for k, v in markers.items()),
        attributes=" ".join('data-{}="{}"'.format(k, _text(v)) for k, v in markers.items()),
        user=_render_user(user),
        title=_text(PRODUCT["title"]),
        summary=_text(PRODUCT["summary"]),
        details=_render_details(details),
        reviews=_render_reviews(reviews),
    )


# -- details, reviews, ratings -----------------------------------------------------------------

class Details:
    """The details service: the book's details, the same for any product id."""

    app = Klein()

    @app.route("/details/<product_id>", methods=["GET"])
    def details(self, request, product_id):
        """C{{"id": ID, "author": ..., "ISBN-13": ...}}; 400 unless the id is a number."""
        pid = _product_id(product_id)
        if pid is None:
            return _bad_product_id(request)
        return _json(request, dict(DETAILS, id=pid))

    @app.route("/health", methods=["GET"])
    def health(self, request):
        """Healthy while it answers."""
        return _health(request, "details")


class Ratings:
    """The ratings service: the same two ratings for any product id."""

    app = Klein()

    @app.route("/ratings/<product_id>", methods=["GET"])
    def ratings(self, request, product_id):
        """C{{"Reviewer1": 5, "Reviewer2": 4}}; 400 unless the id is a number."""
        if _product_id(product_id) is None:
            return _bad_product_id(request)
        return _json(request, RATINGS)

    @app.route("/health", methods=["GET"])
    def health(self, request):
        """Healthy while it answers."""
        return _health(request, "ratings")


class Reviews:
    """
    The reviews service, in one of its three versions: v1 shows no ratings, v2 asks
    C{ratings} and shows black stars, v3 asks it and shows red stars.

    @param version: C{v1}, C{v2} or C{v3}.
    @param http: the treq C{HTTPClient} to call C{ratings} with (unused by v1).
    @param clock: the C{IReactorTime} the ratings timeout runs on.
    @param proxy: the sidecar's proxy, a L{DecodedURL}.
    @param ratings_timeout: seconds C{ratings} gets [v2: 10, v3: 2.5].
    """

    app = Klein()
    log = Logger()

    def __init__(self, version, http, clock, proxy, ratings_timeout=None):
        if version not in STAR_COLORS:
            raise ValueError("reviews has versions {}, not {!r}".format(
                ", ".join(sorted(STAR_COLORS)), version))
        self._version = version
        self._color = STAR_COLORS[version]
        self._http = http
        self._clock = clock
        self._proxy = proxy
        self._ratings_timeout = (RATINGS_TIMEOUTS.get(version) if ratings_timeout is None
                                 else ratings_timeout)

    @app.route("/reviews/<product_id>", methods=["GET"])
    async def reviews(self, request, product_id):
        """
        C{{"id": ID, "version": "v2", "reviews": [{"reviewer": ..., "text": ...,
        "rating": {"stars": 5, "color": "black"}}, ...], "ratings": {"Reviewer1": 5, ...}}}.

        v1 has neither C{rating} nor C{ratings}. When v2 or v3 cannot get the ratings (error
        or timeout) it still answers 200, with C{"ratings": "unavailable"}, C{"error":
        RATINGS_UNAVAILABLE} and C{"rating": {"error": RATINGS_UNAVAILABLE}} in each review.
        """
        pid = _product_id(product_id)
        if pid is None:
            return _bad_product_id(request)
        body = {
            "id": pid,
            "service": "reviews",
            "version": self._version,
            "reviews": [{"reviewer": reviewer, "text": text} for reviewer, text in REVIEWS],
        }
        if self._color is not None:
            ratings = await self._ratings(pid, forward_headers(request))
            if ratings is None:
                body["ratings"] = "unavailable"
                body["error"] = RATINGS_UNAVAILABLE
                for review in body["reviews"]:
                    review["rating"] = {"error": RATINGS_UNAVAILABLE}
            else:
                body["ratings"] = ratings
                for review in body["reviews"]:
                    if review["reviewer"] in ratings:
                        review["rating"] = {"stars": ratings[review["reviewer"]],
                                            "color": self._color}
        return _json(request, body)

    @app.route("/health", methods=["GET"])
    def health(self, request):
        """Healthy while it answers, whatever ratings does."""
        return _health(request, "reviews")

    async def _ratings(self, pid, headers):
        url = self._proxy.child("ratings", "ratings", str(pid))
        try:
            body = await fetch_json(self._http, self._clock, url, headers,
                                    self._ratings_timeout)
            return _parse_ratings(body)
        except UPSTREAM_FAILURES as e:
            self.log.warn("ratings unavailable at {url}: {why}", url=url.to_text(),
                          why=describe(e))
            return None


def _parse_ratings(body):
    """
    C{{reviewer: stars}} from the body of ratings: C{{"Reviewer1": 5, ...}}, or Istio's
    C{{"id": 0, "ratings": {...}}}.

    @raise ValueError: when it is neither, or a rating is not a whole number from 0 to 5.
    """
    if isinstance(body, dict) and isinstance(body.get("ratings"), dict):
        body = body["ratings"]
    if not isinstance(body, dict):
        raise ValueError("ratings are not a JSON object")
    for reviewer, stars in body.items():
        if isinstance(stars, bool) or not isinstance(stars, int) or not 0 <= stars <= 5:
            raise ValueError("the rating of {!r} is not 0 to 5 stars".format(reviewer))
    return body


# -- running it --------------------------------------------------------------------------------

class Options(usage.Options):
    """
    The command line; C{--port}, C{--version} and C{--proxy-url} fall back on C{PORT},
    C{VERSION} and C{A8_PROXY_URL}, then on their defaults.
    """

    synopsis = ("bookinfo.py --service productpage|details|reviews|ratings "
                "[--port PORT] [--host HOST] [--version V] [--proxy-url URL]")
    longdesc = "One service of the bookinfo sample application."
    optParameters = [
        ["service", "s", None, "productpage, details, reviews or ratings."],
        ["port", "p", None, "TCP port, 0 for any free one [env PORT, default: "
                            "productpage 9080, details 9081, reviews 9082, ratings 9083]."],
        ["host", None, "127.0.0.1", "Address to listen on."],
        ["proxy-url", None, None,
         "The sidecar's proxy [env A8_PROXY_URL, default {}].".format(DEFAULT_PROXY_URL)],
    ]

    def __init__(self, environ):
        usage.Options.__init__(self)
        self._environ = environ
        self["version"] = None

    def opt_version(self, version):
        """The version: v1, v2 or v3 for reviews [env VERSION, default v1]."""
        self["version"] = version

    def postOptions(self):
        environ = self._environ
        service = self["service"]
        if service not in SERVICES:
            raise usage.UsageError("--service must be one of {}".format(", ".join(SERVICES)))
        self["port"] = _port(self["port"] or environ.get("PORT")
                             or str(DEFAULT_PORTS[service]))
        if not self["host"]:
            raise usage.UsageError("--host must not be empty")
        version = self["version"] or environ.get("VERSION") or "v1"
        if service == "reviews" and version not in STAR_COLORS:
            raise usage.UsageError("reviews has versions v1, v2 and v3, not {!r}".format(version))
        if not _TOKEN.fullmatch(version):
            raise usage.UsageError("the version must be letters, digits or ._-")
        self["version"] = version
        text = self["proxy-url"] or environ.get("A8_PROXY_URL") or DEFAULT_PROXY_URL
        try:
            proxy = DecodedURL.from_text(text)
        except ValueError as e:
            raise usage.UsageError("bad proxy URL {!r}: {}".format(text, e))
        if proxy.scheme not in ("http", "https") or not proxy.host:
            raise usage.UsageError("the proxy URL must be http(s)://host[:port], not {!r}"
                                   .format(text))
        self["proxy-url"] = proxy


def _port(text):
    try:
        port = int(text)
    except ValueError:
        raise usage.UsageError("the port must be a number, not {!r}".format(text))
    if not 0 <= port <= 65535:
        raise usage.UsageError("the port must be in 0..65535, not {}".format(port))
    return port


def _endpoint(host, port):
    """The endpoint string that listens on C{host}:C{port} (IPv6 colons escaped)."""
    return "tcp:{}:interface={}".format(port, host.replace(":", "\\:"))


def _hostport(host, port):
    return "[{}]:{}".format(host, port) if ":" in host else "{}:{}".format(host, port)


def make_app(options, reactor, http):
    """
    The Klein-app object of the service C{options} name.

    @param options: parsed L{Options}.
    @param reactor: the C{IReactorTime} outgoing calls time out on.
    @param http: the treq C{HTTPClient} of outgoing calls (L{None} for details and ratings).
    """
    service, proxy = options["service"], options["proxy-url"]
    if service == "productpage":
        return ProductPage(http, reactor, proxy)
    if service == "reviews":
        return Reviews(options["version"], http, reactor, proxy)
    if service == "details":
        return Details()
    return Ratings()


async def main(reactor, argv, stdout=None, stderr=None, environ=None):
    """
    Run one service until the reactor stops (SIGTERM or SIGINT under L{react}).

    Writes C{SERVICE VERSION listening on HOST:PORT} to C{stdout} once listening, and
    C{SERVICE VERSION stopping} when the reactor shuts down; it then stops listening and
    closes the pooled connections of its outgoing calls.

    @param reactor: the reactor (C{IReactorTCP}, C{IReactorTime}, C{IReactorCore}).
    @param argv: the command-line arguments, without the program name.
    @raise SystemExit: with code 2 on a bad command line (the error goes to C{stderr}).
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    options = Options(os.environ if environ is None else environ)
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        stderr.write("usage: {}\nbookinfo: {}\n".format(options.synopsis, e))
        stderr.flush()
        raise SystemExit(2)
    service, version = options["service"], options["version"]

    http = pool = None
    if service in ("productpage", "reviews"):
        http, pool = http_client(reactor)
    site = Site(make_app(options, reactor, http).app.resource())
    endpoint = serverFromString(reactor, _endpoint(options["host"], options["port"]))
    port = await endpoint.listen(site)
    address = port.getHost()
    stdout.write("{} {} listening on {}\n".format(
        service, version, _hostport(address.host, address.port)))
    stdout.flush()

    stopped = Deferred()

    async def shutdown():
        stdout.write("{} {} stopping\n".format(service, version))
        stdout.flush()
        await maybeDeferred(port.stopListening)
        if pool is not None:
            await pool.closeCachedConnections()
        stopped.callback(None)

    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: Deferred.fromCoroutine(shutdown()))
    await stopped


def _log_to_stderr():
    """Warnings (a dependency unavailable) and the access log, as text on stderr."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)


if __name__ == "__main__":
    from twisted.internet.task import react

    _log_to_stderr()
    react(main, (sys.argv[1:],))
