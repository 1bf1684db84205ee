"""
Tests for the example apps of the mesh, C{examples/helloworld/helloworld.py} and
C{examples/bookinfo/bookinfo.py}: their HTTP APIs driven through L{StubTreq}, the calls they
make through a fake sidecar proxy (a Klein app whose answers each test scripts) with their
timeouts on a L{Clock}, their C{main} on a L{MemoryReactorClock}, and one real helloworld
process.

The examples are scripts, not modules of a package, so they are loaded from their files.
The bookinfo Gremlin recipe (C{examples/bookinfo/gremlin}) is loaded with the recipe loader
and turned into rules.
"""

import importlib.util
import io
import json
import os
import signal
import sys
from html.parser import HTMLParser

import attrs
from hyperlink import DecodedURL
from klein import Klein
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.pages import notFound
from twisted.web.resource import Resource

from amalgam8.gremlin.recipe import fault_rules, load_recipe, max_delay
from tests.helpers import Answer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLOWORLD_PATH = os.path.join(ROOT, "examples", "helloworld", "helloworld.py")
BOOKINFO_PATH = os.path.join(ROOT, "examples", "bookinfo", "bookinfo.py")
RECIPE_DIR = os.path.join(ROOT, "examples", "bookinfo", "gremlin")


def _load(name, path):
    """The module of the script at C{path}, imported as C{name}."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


helloworld = _load("examples_helloworld", HELLOWORLD_PATH)
bookinfo = _load("examples_bookinfo", BOOKINFO_PATH)

PROXY = DecodedURL.from_text("http://127.0.0.1:6379")
DETAILS_BODY = {"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback",
                "pages": 200, "publisher": "PublisherA", "language": "English",
                "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}
RATINGS_BODY = {"Reviewer1": 5, "Reviewer2": 4}


def reviews_body(version, ratings="ok"):
    """A body of reviews C{version}, as the reviews service answers it."""
    color = bookinfo.STAR_COLORS[version]
    body = {"id": 0, "service": "reviews", "version": version, "reviews": [
        {"reviewer": "Reviewer1", "text": "An extremely entertaining play."},
        {"reviewer": "Reviewer2", "text": "Absolutely fun & <entertaining>."},
    ]}
    if color is None:
        return body
    if ratings == "ok":
        body["ratings"] = dict(RATINGS_BODY)
        for review in body["reviews"]:
            review["rating"] = {"stars": RATINGS_BODY[review["reviewer"]], "color": color}
    else:
        body["ratings"] = "unavailable"
        body["error"] = bookinfo.RATINGS_UNAVAILABLE
        for review in body["reviews"]:
            review["rating"] = {"error": bookinfo.RATINGS_UNAVAILABLE}
    return body


async def answer(pending):
    """The L{Answer} of a request Deferred (status, headers, whole body)."""
    response = await pending
    return Answer(response.code, response.headers, await response.content())


# -- the fake proxy ------------------------------------------------------------------------------

@attrs.frozen
class Seen:
    """A request the fake proxy got: the service, the path and two headers."""

    service: str
    path: str
    cookie: object
    request_id: object


class FakeProxy:
    """
    The sidecar's proxy as the bookinfo services see it: C{/<service>/<path>} answers with
    C{bodies[service]} as JSON, or as each test scripts: C{"error"} (500), C{"bad-json"},
    C{"slow"} (the answer waits until the test fires the Deferred it leaves in C{pending};
    the service is added to C{cancelled} when that answer is cancelled instead), C{"stall"}
    (as slow, once the headers and the start of the body are sent).

    @ivar requests: every L{Seen} request, in order.
    @ivar set_cookie: a C{(name, value)} cookie set on every answer (as the real proxy sets
        its sticky C{version} cookie), or L{None}.
    """

    app = Klein()

    def __init__(self, bodies):
        self.bodies = dict(bodies)
        self.requests = []
        self.pending = []
        self.cancelled = []
        self.set_cookie = None
        self._scripts = {}

    def script(self, service, *behaviours):
        """How the next calls to C{service} go; the last behaviour stays."""
        self._scripts[service] = list(behaviours)

    def _behaviour(self, service):
        script = self._scripts.get(service) or ["ok"]
        return script.pop(0) if len(script) > 1 else script[0]

    def calls(self, service):
        return [seen for seen in self.requests if seen.service == service]

    @app.route("/<service>/<path:rest>", methods=["GET"])
    def answer(self, request, service, rest):
        self.requests.append(Seen(
            service, request.path.decode("ascii"),
            request.requestHeaders.getRawHeaders(b"cookie"),
            request.requestHeaders.getRawHeaders(b"x-request-id")))
        if self.set_cookie is not None:
            request.addCookie(*self.set_cookie, path=b"/")
        if service not in self.bodies:
            request.setResponseCode(404)
            return b"no such service"
        behaviour = self._behaviour(service)
        if behaviour == "error":
            request.setResponseCode(500)
            return b'{"error": "injected"}'
        if behaviour == "bad-json":
            return b"<html>not json</html>"
        body = json.dumps(self.bodies[service]).encode("utf-8")
        if behaviour == "stall":
            request.write(body[:5])
            behaviour = "slow"
        if behaviour == "slow":
            later = Deferred(lambda _: self.cancelled.append(service))
            self.pending.append(later)
            return later.addCallback(lambda _: body)
        return body


class _Markers(HTMLParser):
    """The markers of a product page: C{data-*} of C{<main id="bookinfo">}, and its comment."""

    def __init__(self):
        HTMLParser.__init__(self)
        self.attributes = None
        self.comment = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "main" and attrs.get("id") == "bookinfo":
            self.attributes = {k[len("data-"):]: v for k, v in attrs.items()
                               if k.startswith("data-")}

    def handle_comment(self, data):
        data = data.strip()
        if data.startswith("bookinfo:"):
            self.comment = dict(item.split("=", 1) for item in data[len("bookinfo:"):].split())


def markers(page):
    """The markers of the product page C{page} (bytes); the attributes and comment agree."""
    parser = _Markers()
    parser.feed(page.decode("utf-8"))
    parser.close()
    assert parser.attributes is not None, "no <main id=bookinfo> in the page"
    assert parser.attributes == parser.comment, (parser.attributes, parser.comment)
    return parser.attributes


# -- helloworld ----------------------------------------------------------------------------------

class HelloWorldTests(SynchronousTestCase):
    """helloworld's API."""

    def setUp(self):
        self.http = StubTreq(helloworld.HelloWorld("v2", "10.0.0.7:9080").app.resource())

    def get(self, path, **kwargs):
        return self.successResultOf(answer(self.http.get("http://helloworld" + path, **kwargs)))

    def test_hello(self):
        """GET /hello answers the service, its version and its instance as JSON."""
        got = self.get("/hello")
        self.assertEqual(got.code, 200)
        self.assertEqual(got.header(b"content-type"), "application/json")
        self.assertEqual(got.json(), {"service": "helloworld", "version": "v2",
                                      "instance": "10.0.0.7:9080"})

    def test_hello_text(self):
        """With ?format=text, or Accept: text/plain, GET /hello answers one line of text."""
        for got in (self.get("/hello?format=text"),
                    self.get("/hello", headers={b"Accept": [b"text/plain"]})):
            self.assertEqual(got.code, 200)
            self.assertEqual(got.body, b"Hello version: v2, instance: 10.0.0.7:9080\n")
            self.assertTrue(got.header(b"content-type").startswith("text/plain"))

    def test_health(self):
        """GET /health answers 200."""
        self.assertEqual(self.get("/health").code, 200)

    def test_options(self):
        """Options fall back on PORT, VERSION and INSTANCE, then defaults; options win."""
        options = helloworld.Options({})
        options.parseOptions([])
        self.assertEqual((options["port"], options["host"], options["version"],
                          options["instance"]), (9080, "127.0.0.1", "v1", None))
        environ = {"PORT": "9001", "VERSION": "v2", "INSTANCE": "hw-1"}
        options = helloworld.Options(environ)
        options.parseOptions([])
        self.assertEqual((options["port"], options["version"], options["instance"]),
                         (9001, "v2", "hw-1"))
        options = helloworld.Options(environ)
        options.parseOptions(["--port", "9002", "--version", "v3", "--instance", "hw-2",
                              "--host", "0.0.0.0"])
        self.assertEqual((options["port"], options["host"], options["version"],
                          options["instance"]), (9002, "0.0.0.0", "v3", "hw-2"))

    def test_bad_port(self):
        """A port that is no number, or out of range, is a usage error."""
        for port in ("x", "-1", "65536"):
            self.assertRaises(usage.UsageError,
                              helloworld.Options({}).parseOptions, ["--port", port])
        self.assertRaises(usage.UsageError, helloworld.Options({"PORT": "x"}).parseOptions, [])

    def test_main(self):
        """
        main listens on tcp:PORT:interface=HOST, writes one line once listening, serves
        /hello with the instance it listens on, and stops listening at shutdown.
        """
        reactor = MemoryReactorClock()
        stdout, stderr = io.StringIO(), io.StringIO()
        done = Deferred.fromCoroutine(helloworld.main(
            reactor, ["--port", "9080", "--version", "v2", "--instance", "hw-1"],
            stdout=stdout, stderr=stderr, environ={}))
        self.assertNoResult(done)
        [(port, site, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9080, "127.0.0.1"))
        # MemoryReactor's ports say they listen on 0.0.0.0 whatever the IPv4 interface.
        self.assertEqual(stdout.getvalue().splitlines(),
                         ["helloworld v2 listening on 0.0.0.0:9080"])
        got = self.successResultOf(answer(StubTreq(site.resource).get("http://hw/hello")))
        self.assertEqual(got.json()["instance"], "hw-1")

        [(shutdown, args, kwargs)] = reactor.triggers["before"]["shutdown"]
        shutdown(*args, **kwargs)
        self.successResultOf(done)
        self.assertEqual(stdout.getvalue().splitlines()[-1], "helloworld v2 stopping")

    def test_main_default_instance(self):
        """Without --instance or INSTANCE, the instance is the address listened on."""
        reactor = MemoryReactorClock()
        Deferred.fromCoroutine(helloworld.main(
            reactor, ["--host", "::1", "--port", "9090"], stdout=io.StringIO(),
            stderr=io.StringIO(), environ={"VERSION": "v3"}))
        [(_, site, _, _)] = reactor.tcpServers
        got = self.successResultOf(answer(StubTreq(site.resource).get("http://hw/hello")))
        self.assertEqual(got.json(), {"service": "helloworld", "version": "v3",
                                      "instance": "[::1]:9090"})

    def test_main_bad_arguments(self):
        """main exits with code 2 and says why on a bad command line."""
        stderr = io.StringIO()
        failure = self.failureResultOf(Deferred.fromCoroutine(helloworld.main(
            MemoryReactorClock(), ["--port", "x"], stdout=io.StringIO(), stderr=stderr,
            environ={})), SystemExit)
        self.assertEqual(failure.value.code, 2)
        self.assertIn("the port must be a number", stderr.getvalue())


# -- productpage ---------------------------------------------------------------------------------

class ProductPageTests(SynchronousTestCase):
    """productpage, through a fake proxy answering for details and reviews."""

    def setUp(self):
        self.clock = Clock()
        self.proxy = FakeProxy({"details": DETAILS_BODY, "reviews": reviews_body("v2")})
        self.upstream = StubTreq(self.proxy.app.resource())
        self.page = bookinfo.ProductPage(self.upstream, self.clock, PROXY)
        self.http = StubTreq(self.page.app.resource())

    def settle(self):
        """Carry what both in-memory connections hold (answers given later, aborts)."""
        for _ in range(3):
            self.upstream.flush()
            self.http.flush()

    def request(self, path="/productpage", method="GET", **kwargs):
        kwargs.setdefault("allow_redirects", False)
        return Deferred.fromCoroutine(answer(self.http.request(
            method, "http://productpage" + path, **kwargs)))

    def get(self, path="/productpage", **kwargs):
        return self.successResultOf(self.request(path, **kwargs))

    def test_renders_details_and_reviews(self):
        """The page shows the details and the reviews, with their stars, and says so."""
        got = self.get()
        self.assertEqual(got.code, 200)
        self.assertEqual(got.header(b"content-type"), "text/html; charset=utf-8")
        self.assertEqual(markers(got.body), {
            "details": "ok", "reviews": "ok", "reviews-version": "v2", "ratings": "ok",
            "stars": "black", "user": ""})
        page = got.body.decode("utf-8")
        self.assertIn("<dd>William Shakespeare</dd>", page)
        self.assertIn("<dd>123-1234567890</dd>", page)
        self.assertIn("An extremely entertaining play.", page)
        self.assertIn("Absolutely fun &amp; &lt;entertaining&gt;.", page)
        self.assertIn('style="color: black" title="4 of 5 stars">\u2605\u2605\u2605\u2605\u2606<',
                      page)
        self.assertNotIn("Sorry", page)
        self.assertEqual([(s.service, s.path) for s in self.proxy.requests],
                         [("details", "/details/details/0"), ("reviews", "/reviews/reviews/0")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reviews_versions(self):
        """The markers say which version of reviews answered, and its stars or none."""
        for version, ratings, expected in [
                ("v1", "ok", ("v1", "none", "none")),
                ("v3", "ok", ("v3", "ok", "red")),
                ("v3", "unavailable", ("v3", "unavailable", "none")),
                ("v2", "unavailable", ("v2", "unavailable", "none"))]:
            self.proxy.bodies["reviews"] = reviews_body(version, ratings)
            got = self.get()
            found = markers(got.body)
            self.assertEqual((found["reviews-version"], found["ratings"], found["stars"]),
                             expected, (version, ratings))
            page = got.body.decode("utf-8")
            self.assertEqual(bookinfo.RATINGS_UNAVAILABLE in page, ratings == "unavailable")
            self.assertEqual("\u2605" in page, version != "v1" and ratings == "ok")

    def test_details_error(self):
        """When details fails, the page says the details are unavailable, and shows reviews."""
        for behaviour in ("error", "bad-json"):
            self.proxy.script("details", behaviour)
            got = self.get()
            self.assertEqual(got.code, 200)
            self.assertIn(bookinfo.DETAILS_UNAVAILABLE, got.body.decode("utf-8"))
            self.assertEqual(markers(got.body)["details"], "unavailable")
            self.assertEqual(markers(got.body)["reviews"], "ok")

    def test_details_timeout(self):
        """details gets 1 s; then the page shows without it."""
        self.proxy.script("details", "slow")
        pending = self.request()
        self.clock.advance(0.999)
        self.settle()
        self.assertNoResult(pending)
        self.clock.advance(0.001)
        self.settle()
        got = self.successResultOf(pending)
        self.assertIn("Sorry, product details are currently unavailable", got.body.decode())
        self.assertEqual(markers(got.body)["details"], "unavailable")
        self.assertEqual(markers(got.body)["reviews"], "ok")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reviews_error(self):
        """When reviews fails twice, the page says the reviews are unavailable."""
        self.proxy.script("reviews", "error")
        got = self.get()
        self.assertIn("Sorry, product reviews are currently unavailable for this book.",
                      got.body.decode("utf-8"))
        self.assertEqual(markers(got.body), {
            "details": "ok", "reviews": "unavailable", "reviews-version": "none",
            "ratings": "none", "stars": "none", "user": ""})
        self.assertEqual(len(self.proxy.calls("reviews")), 2)

    def test_reviews_retried_once(self):
        """A failed call to reviews is tried once more, as in the original."""
        self.proxy.script("reviews", "error", "ok")
        got = self.get()
        self.assertEqual(markers(got.body)["reviews"], "ok")
        self.assertEqual(len(self.proxy.calls("reviews")), 2)

    def test_reviews_timeout(self):
        """
        Each try of reviews gets 3 s; after two slow tries (6 s) the page says the reviews are
        unavailable, and the details it got at once are shown.
        """
        self.proxy.script("reviews", "slow")
        pending = self.request()
        self.clock.advance(2.999)
        self.settle()
        self.assertNoResult(pending)
        self.assertEqual(len(self.proxy.calls("reviews")), 1)
        self.clock.advance(0.001)
        self.settle()
        self.assertNoResult(pending)
        self.assertEqual(len(self.proxy.calls("reviews")), 2)
        self.clock.advance(3)
        self.settle()
        got = self.successResultOf(pending)
        self.assertIn(bookinfo.REVIEWS_UNAVAILABLE, got.body.decode("utf-8"))
        self.assertEqual(markers(got.body)["reviews"], "unavailable")
        self.assertEqual(markers(got.body)["details"], "ok")
        self.assertEqual(len(self.proxy.calls("reviews")), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reviews_slow_then_answered(self):
        """When the second try of reviews answers in time, the reviews are shown."""
        self.proxy.script("reviews", "slow", "ok")
        pending = self.request()
        self.clock.advance(3)
        self.settle()
        got = self.successResultOf(pending)
        self.assertEqual(markers(got.body)["reviews"], "ok")

    def test_late_answer_in_time(self):
        """An answer that comes later, but in time, is shown."""
        self.proxy.script("details", "slow")
        pending = self.request()
        self.clock.advance(0.5)
        self.proxy.pending[0].callback(None)
        self.settle()
        got = self.successResultOf(pending)
        self.assertEqual(markers(got.body)["details"], "ok")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_both_timeout(self):
        """With details and reviews both slow, the page comes after 6 s, showing neither."""
        self.proxy.script("details", "slow")
        self.proxy.script("reviews", "slow")
        pending = self.request()
        self.clock.advance(1)
        self.settle()
        self.assertNoResult(pending)
        self.clock.pump([2, 3])
        self.settle()
        found = markers(self.successResultOf(pending).body)
        self.assertEqual((found["details"], found["reviews"]), ("unavailable", "unavailable"))

    def test_client_gone(self):
        """When its client goes away, the page cancels the calls it is waiting for."""
        self.proxy.script("details", "slow")
        self.proxy.script("reviews", "slow")
        pending = self.request()
        pending.cancel()
        self.failureResultOf(pending)
        self.settle()
        self.assertEqual(sorted(self.proxy.cancelled), ["details", "reviews"])
        self.assertEqual(len(self.proxy.requests), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_forwards_user_cookie_and_request_id(self):
        """
        The user cookie and X-Request-ID of the request go on to details and reviews; other
        cookies (such as the proxy's sticky version cookie) do not.
        """
        self.get(headers={b"Cookie": [b"version=v1; user=jason; theme=dark"],
                          b"X-Request-ID": [b"req-42"]})
        self.assertEqual(len(self.proxy.requests), 2)
        for seen in self.proxy.requests:
            self.assertEqual(seen.cookie, [b"user=jason"], seen)
            self.assertEqual(seen.request_id, [b"req-42"], seen)

    def test_forwards_nothing_without(self):
        """Without a user cookie or X-Request-ID, none is sent on."""
        self.get(headers={b"Cookie": [b"version=v1"]})
        for seen in self.proxy.requests:
            self.assertEqual((seen.cookie, seen.request_id), (None, None), seen)

    def test_keeps_no_cookies(self):
        """
        The production client keeps no cookie the proxy sets (its sticky version cookie would
        otherwise pin every later call to one version).
        """
        http = bookinfo.http_client_for(RequestTraversalAgent(self.proxy.app.resource()))
        self.assertIsInstance(http, HTTPClient)
        self.proxy.set_cookie = (b"version", b"v2")
        page = StubTreq(bookinfo.ProductPage(http, self.clock, PROXY).app.resource())
        for _ in range(2):
            got = self.successResultOf(answer(page.get("http://productpage/productpage")))
            self.assertEqual(markers(got.body)["reviews"], "ok")
        self.assertEqual([seen.cookie for seen in self.proxy.requests], [None] * 4)

    def test_shows_user(self):
        """The page says who is signed in, or offers to sign in."""
        got = self.get(headers={b"Cookie": [b"user=jason"]})
        self.assertEqual(markers(got.body)["user"], "jason")
        self.assertIn('Signed in as <b id="user">jason</b>', got.body.decode("utf-8"))
        got = self.get()
        self.assertEqual(markers(got.body)["user"], "")
        self.assertIn('action="/login"', got.body.decode("utf-8"))

    def test_malformed_user_cookie(self):
        """A user cookie that is no plain name is neither shown nor forwarded."""
        got = self.get(headers={b"Cookie": [b'user="<script>"']})
        self.assertEqual(markers(got.body)["user"], "")
        self.assertNotIn("<script>", got.body.decode("utf-8"))
        self.assertEqual([seen.cookie for seen in self.proxy.requests], [None, None])

    def test_login(self):
        """GET /login?user=jason sets the user cookie and redirects to the product page."""
        got = self.get("/login?user=jason")
        self.assertEqual(got.code, 302)
        self.assertEqual(got.header(b"location"), "/productpage")
        self.assertEqual(got.headers.getRawHeaders(b"set-cookie"), [b"user=jason; Path=/"])

    def test_login_form(self):
        """A POSTed form with user=NAME (or username=NAME) signs in too, answering 303."""
        for field in ("user", "username"):
            got = self.successResultOf(self.request(
                "/login", method="POST", data={field: "kim"}))
            self.assertEqual(got.code, 303)
            self.assertEqual(got.header(b"location"), "/productpage")
            self.assertEqual(got.headers.getRawHeaders(b"set-cookie"), [b"user=kim; Path=/"])

    def test_login_bad_user(self):
        """A missing or malformed user name is refused with 400, and no cookie is set."""
        for path in ("/login", "/login?user=", "/login?user=a%3Bb", "/login?user=" + "x" * 65):
            got = self.get(path)
            self.assertEqual(got.code, 400, path)
            self.assertIsNone(got.headers.getRawHeaders(b"set-cookie"), path)

    def test_logout(self):
        """/logout clears the user cookie and redirects to the product page."""
        got = self.get("/logout", headers={b"Cookie": [b"user=jason"]})
        self.assertEqual(got.code, 302)
        self.assertEqual(got.header(b"location"), "/productpage")
        [cookie] = got.headers.getRawHeaders(b"set-cookie")
        self.assertTrue(cookie.startswith(b"user=;"), cookie)
        self.assertIn(b"Max-Age=0", cookie)

    def test_login_logout_flow(self):
        """Signing in and out, with a client that keeps cookies, changes the page."""
        self.get("/login?user=jason")
        self.assertEqual(markers(self.get().body)["user"], "jason")
        self.assertEqual(self.proxy.requests[-1].cookie, [b"user=jason"])
        self.get("/logout")
        self.assertEqual(markers(self.get().body)["user"], "")

    def test_health(self):
        """GET /health answers 200 without asking anyone."""
        self.assertEqual(self.get("/health").code, 200)
        self.assertEqual(self.proxy.requests, [])

    def test_index(self):
        """/ redirects to the product page."""
        got = self.get("/")
        self.assertEqual((got.code, got.header(b"location")), (302, "/productpage"))


# -- reviews, ratings, details ------------------------------------------------------------------

class ReviewsTests(SynchronousTestCase):
    """The three versions of reviews, through a fake proxy answering for ratings."""

    def setUp(self):
        self.clock = Clock()
        self.proxy = FakeProxy({"ratings": RATINGS_BODY})
        self.upstream = StubTreq(self.proxy.app.resource())

    def reviews(self, version):
        return StubTreq(bookinfo.Reviews(version, self.upstream, self.clock, PROXY)
                        .app.resource())

    def request(self, http, path="/reviews/0", **kwargs):
        return Deferred.fromCoroutine(answer(http.get("http://reviews" + path, **kwargs)))

    def get(self, version, path="/reviews/0", **kwargs):
        got = self.successResultOf(self.request(self.reviews(version), path, **kwargs))
        return got

    def test_v1(self):
        """v1 answers the two reviews without ratings, and asks ratings nothing."""
        got = self.get("v1")
        self.assertEqual(got.code, 200)
        body = got.json()
        self.assertEqual((body["id"], body["version"]), (0, "v1"))
        self.assertEqual([r["reviewer"] for r in body["reviews"]], ["Reviewer1", "Reviewer2"])
        self.assertNotIn("ratings", body)
        self.assertFalse(any("rating" in r for r in body["reviews"]))
        self.assertEqual(self.proxy.requests, [])

    def test_v2_black_stars(self):
        """v2 asks ratings and gives each review black stars."""
        body = self.get("v2").json()
        self.assertEqual(body["version"], "v2")
        self.assertEqual(body["ratings"], RATINGS_BODY)
        self.assertEqual([r["rating"] for r in body["reviews"]],
                         [{"stars": 5, "color": "black"}, {"stars": 4, "color": "black"}])
        self.assertEqual([s.path for s in self.proxy.requests], ["/ratings/ratings/0"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_v3_red_stars(self):
        """v3 asks ratings and gives each review red stars."""
        body = self.get("v3").json()
        self.assertEqual(body["version"], "v3")
        self.assertEqual([r["rating"] for r in body["reviews"]],
                         [{"stars": 5, "color": "red"}, {"stars": 4, "color": "red"}])

    def test_product_id_passed_on(self):
        """The product id of the request is the one asked of ratings."""
        self.assertEqual(self.get("v2", "/reviews/7").json()["id"], 7)
        self.assertEqual(self.proxy.requests[-1].path, "/ratings/ratings/7")

    def test_forwards_headers(self):
        """The user cookie and X-Request-ID go on to ratings, other cookies do not."""
        self.get("v3", headers={b"Cookie": [b"user=jason; version=v3"],
                                b"X-Request-ID": [b"req-7"]})
        [seen] = self.proxy.requests
        self.assertEqual((seen.cookie, seen.request_id), ([b"user=jason"], [b"req-7"]))

    def assertRatingsUnavailable(self, body):
        self.assertEqual(body["ratings"], "unavailable")
        self.assertEqual(body["error"], "Ratings service is currently unavailable")
        self.assertEqual([r["rating"] for r in body["reviews"]],
                         [{"error": "Ratings service is currently unavailable"}] * 2)

    def test_ratings_error(self):
        """When ratings fails, v2 and v3 still answer 200, saying ratings are unavailable."""
        for behaviour in ("error", "bad-json"):
            self.proxy.script("ratings", behaviour)
            for version in ("v2", "v3"):
                got = self.get(version)
                self.assertEqual(got.code, 200)
                self.assertRatingsUnavailable(got.json())

    def test_bad_ratings(self):
        """Ratings that are not 0 to 5 stars count as unavailable."""
        for ratings in ({"Reviewer1": "five"}, {"Reviewer1": 6}, {"Reviewer1": True}, [5, 4]):
            self.proxy.bodies["ratings"] = ratings
            self.assertRatingsUnavailable(self.get("v2").json())

    def test_istio_ratings(self):
        """Istio's shape of ratings, {"id": 0, "ratings": {...}}, is understood as well."""
        self.proxy.bodies["ratings"] = {"id": 0, "ratings": {"Reviewer1": 1, "Reviewer2": 2}}
        body = self.get("v2").json()
        self.assertEqual([r["rating"]["stars"] for r in body["reviews"]], [1, 2])

    def assertTimesOutAfter(self, version, timeout):
        self.proxy.script("ratings", "slow")
        reviews = self.reviews(version)
        pending = self.request(reviews)
        self.clock.advance(timeout - 0.01)
        self.upstream.flush()
        reviews.flush()
        self.assertNoResult(pending)
        self.clock.advance(0.01)
        self.upstream.flush()
        reviews.flush()
        got = self.successResultOf(pending)
        self.assertEqual(got.code, 200)
        self.assertRatingsUnavailable(got.json())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stalled_body(self):
        """A body that stops coming times out as well, and its connection is closed."""
        self.proxy.script("ratings", "stall")
        reviews = self.reviews("v3")
        pending = self.request(reviews)
        self.upstream.flush()
        self.assertNoResult(pending)
        self.clock.advance(2.5)
        self.upstream.flush()
        reviews.flush()
        self.assertRatingsUnavailable(self.successResultOf(pending).json())
        self.assertEqual(self.proxy.cancelled, ["ratings"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_v3_ratings_timeout(self):
        """v3 waits 2.5 s for ratings."""
        self.assertTimesOutAfter("v3", 2.5)

    def test_v2_ratings_timeout(self):
        """v2 waits 10 s for ratings."""
        self.assertTimesOutAfter("v2", 10)

    def test_bad_product_id(self):
        """A product id that is no number is refused with 400."""
        self.assertEqual(self.get("v2", "/reviews/abc").code, 400)
        self.assertEqual(self.proxy.requests, [])

    def test_unknown_version(self):
        """reviews has versions v1, v2 and v3 only."""
        self.assertRaises(ValueError, bookinfo.Reviews, "v4", self.upstream, self.clock, PROXY)

    def test_health(self):
        """GET /health answers 200."""
        self.assertEqual(self.get("v3", "/health").code, 200)


class DetailsRatingsTests(SynchronousTestCase):
    """The details and ratings services."""

    def get(self, app, path):
        return self.successResultOf(answer(StubTreq(app.app.resource()).get("http://x" + path)))

    def test_details(self):
        """GET /details/<id> answers the book's details as JSON."""
        got = self.get(bookinfo.Details(), "/details/0")
        self.assertEqual(got.code, 200)
        self.assertEqual(got.header(b"content-type"), "application/json")
        self.assertEqual(got.json(), DETAILS_BODY)
        self.assertEqual(self.get(bookinfo.Details(), "/details/3").json()["id"], 3)

    def test_ratings(self):
        """GET /ratings/<id> answers the ratings as JSON."""
        got = self.get(bookinfo.Ratings(), "/ratings/0")
        self.assertEqual(got.code, 200)
        self.assertEqual(got.header(b"content-type"), "application/json")
        self.assertEqual(got.json(), {"Reviewer1": 5, "Reviewer2": 4})

    def test_bad_product_id(self):
        """A product id that is no number is refused with 400."""
        self.assertEqual(self.get(bookinfo.Details(), "/details/x").code, 400)
        self.assertEqual(self.get(bookinfo.Ratings(), "/ratings/-1").code, 400)

    def test_health(self):
        """GET /health answers 200."""
        self.assertEqual(self.get(bookinfo.Details(), "/health").code, 200)
        self.assertEqual(self.get(bookinfo.Ratings(), "/health").code, 200)


class _Proxy(Resource):
    """A resource tree whose missing children answer 404."""

    def getChild(self, name, request):
        return notFound()


class MeshTests(SynchronousTestCase):
    """
    The four real services in memory, behind a proxy that is a plain resource tree
    (C{/details/...} to details, and so on), without routing rules.
    """

    def mesh(self, version, services=("details", "reviews", "ratings")):
        clock = Clock()
        proxy = _Proxy()
        http = StubTreq(proxy)
        apps = {"details": bookinfo.Details(),
                "reviews": bookinfo.Reviews(version, http, clock, PROXY),
                "ratings": bookinfo.Ratings()}
        for name in services:
            proxy.putChild(name.encode("ascii"), apps[name].app.resource())
        page = StubTreq(bookinfo.ProductPage(http, clock, PROXY).app.resource())
        got = self.successResultOf(answer(page.get("http://productpage/productpage")))
        self.assertEqual(got.code, 200)
        return markers(got.body)

    def test_versions(self):
        """Each version of reviews shows on the page as it should."""
        self.assertEqual(self.mesh("v1")["stars"], "none")
        self.assertEqual(self.mesh("v2")["stars"], "black")
        self.assertEqual(self.mesh("v3"), {
            "details": "ok", "reviews": "ok", "reviews-version": "v3", "ratings": "ok",
            "stars": "red", "user": ""})

    def test_no_ratings(self):
        """Without ratings in the mesh, v3's reviews show that ratings are unavailable."""
        self.assertEqual(self.mesh("v3", ("details", "reviews"))["ratings"], "unavailable")

    def test_nothing_but_productpage(self):
        """Alone, productpage still answers, saying details and reviews are unavailable."""
        found = self.mesh("v1", ())
        self.assertEqual((found["details"], found["reviews"]), ("unavailable", "unavailable"))


class BookinfoMainTests(SynchronousTestCase):
    """bookinfo's command line and main."""

    def parse(self, argv, environ=None):
        options = bookinfo.Options({} if environ is None else environ)
        options.parseOptions(argv)
        return options

    def test_defaults(self):
        """Each service has its port; version v1, 127.0.0.1 and the proxy on 6379 for all."""
        for service, port in [("productpage", 9080), ("details", 9081), ("reviews", 9082),
                              ("ratings", 9083)]:
            options = self.parse(["--service", service])
            self.assertEqual((options["port"], options["host"], options["version"],
                              options["proxy-url"].to_text()),
                             (port, "127.0.0.1", "v1", "http://127.0.0.1:6379"))

    def test_environment(self):
        """PORT, VERSION and A8_PROXY_URL are read; the options win over them."""
        environ = {"PORT": "9500", "VERSION": "v3", "A8_PROXY_URL": "http://127.0.0.1:7000"}
        options = self.parse(["--service", "reviews"], environ)
        self.assertEqual((options["port"], options["version"], options["proxy-url"].port),
                         (9500, "v3", 7000))
        options = self.parse(["--service", "reviews", "--port", "9501", "--version", "v2",
                              "--proxy-url", "http://localhost:6379"], environ)
        self.assertEqual((options["port"], options["version"], options["proxy-url"].host),
                         (9501, "v2", "localhost"))

    def test_usage_errors(self):
        """A missing or unknown service, a bad version, port or proxy URL are refused."""
        for argv, environ in [
                ([], {}),
                (["--service", "shipping"], {}),
                (["--service", "reviews", "--version", "v4"], {}),
                (["--service", "reviews"], {"VERSION": "v9"}),
                (["--service", "details", "--version", "a b"], {}),
                (["--service", "details", "--port", "http"], {}),
                (["--service", "details", "--proxy-url", "ftp://proxy"], {}),
                (["--service", "details"], {"A8_PROXY_URL": "localhost:6379"})]:
            self.assertRaises(usage.UsageError, self.parse, argv, environ)

    def test_main(self):
        """
        main listens on tcp:PORT:interface=HOST, says so in one line, serves its service,
        and at shutdown stops listening and closes its client's connections.
        """
        reactor = MemoryReactorClock()
        stdout = io.StringIO()
        done = Deferred.fromCoroutine(bookinfo.main(
            reactor, ["--service", "reviews", "--version", "v2", "--host", "::1",
                      "--port", "9182"], stdout=stdout, stderr=io.StringIO(), environ={}))
        self.assertNoResult(done)
        [(port, site, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9182, "::1"))
        self.assertEqual(stdout.getvalue(), "reviews v2 listening on [::1]:9182\n")
        got = self.successResultOf(answer(StubTreq(site.resource).get("http://r/health")))
        self.assertEqual(got.code, 200)
        [(shutdown, args, kwargs)] = reactor.triggers["before"]["shutdown"]
        self.successResultOf(shutdown(*args, **kwargs))
        self.successResultOf(done)
        self.assertEqual(stdout.getvalue().splitlines()[-1], "reviews v2 stopping")

    def test_main_bad_arguments(self):
        """main exits with code 2 and says why on a bad command line."""
        stderr = io.StringIO()
        failure = self.failureResultOf(Deferred.fromCoroutine(bookinfo.main(
            MemoryReactorClock(), ["--service", "nope"], stdout=io.StringIO(),
            stderr=stderr, environ={})), SystemExit)
        self.assertEqual(failure.value.code, 2)
        self.assertIn("--service must be one of", stderr.getvalue())


# -- a real process ------------------------------------------------------------------------------

class _Child(ProcessProtocol):
    """Collects a child's output; tells when it prints its listening line, and when it ends."""

    def __init__(self):
        self.stdout = b""
        self.stderr = b""
        self.address = None
        self.reason = None
        self._listening = Deferred()
        self._ended = Deferred()

    def childDataReceived(self, fd, data):
        if fd == 2:
            self.stderr += data
            return
        self.stdout += data
        for line in self.stdout.decode("utf-8", "replace").split("\n")[:-1]:   # whole lines
            if self.address is None and " listening on " in line:
                host, _, port = line.rsplit(" ", 1)[1].rpartition(":")
                self.address = (host, int(port))
                self._listening.callback(self.address)

    def processEnded(self, reason):
        self.reason = reason
        if not self._listening.called:
            self._listening.errback(RuntimeError("exited before listening: {!r}".format(
                self.stderr[-2000:])))
        self._ended.callback(reason.value)

    def listening(self, reactor):
        return self._listening.addTimeout(20, reactor)

    def ended(self, reactor):
        return succeed(self.reason.value) if self.reason else self._ended.addTimeout(20, reactor)


class HelloWorldProcessTests(TestCase):
    """helloworld run as it is documented, with the interpreter running these tests."""

    async def test_hello_then_sigterm(self):
        """It listens on the port it was given, answers GET /hello, and exits 0 on SIGTERM."""
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool

        env = {k: v for k, v in os.environ.items()
               if k not in ("PORT", "VERSION", "INSTANCE") and not k.startswith("A8_")}
        child = _Child()
        process = reactor.spawnProcess(
            child, sys.executable,
            [sys.executable, HELLOWORLD_PATH, "--port", "0", "--version", "v2"],
            env=env, path=ROOT)

        async def stop():
            try:
                process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            await child.ended(reactor)
        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))

        host, port = await child.listening(reactor)
        self.assertEqual(host, "127.0.0.1")
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        got = await answer(http.get("http://127.0.0.1:{}/hello".format(port)).addTimeout(
            20, reactor))
        self.assertEqual(got.code, 200)
        self.assertEqual(got.json(), {"service": "helloworld", "version": "v2",
                                      "instance": "127.0.0.1:{}".format(port)})

        process.signalProcess(signal.SIGTERM)
        value = await child.ended(reactor)
        self.assertEqual(getattr(value, "exitCode", None), 0, child.stderr[-2000:])
        self.assertEqual(child.stdout.decode().splitlines(), [
            "helloworld v2 listening on 127.0.0.1:{}".format(port), "helloworld v2 stopping"])


class BookinfoRecipeTests(SynchronousTestCase):
    """The bookinfo recipe that C{make demo} runs (step 4), as recipe-run reads it."""

    def recipe(self, scenarios):
        return load_recipe(*(os.path.join(RECIPE_DIR, name) for name in
                             ("topology.json", scenarios, "checks.json")))

    def test_checks(self):
        """Four checks: the page within 4 s and 200 or 302, then 200 on the two inner calls."""
        recipe = self.recipe("gremlins.json")
        self.assertEqual(
            [(c.name, str(c.source), str(c.dest), c.args) for c in recipe.checks],
            [("bounded_response_time", "gateway", "productpage", {"max_latency": 4.0}),
             ("http_status", "gateway", "productpage", {"status": frozenset({200, 302})}),
             ("http_status", "productpage", "reviews", {"status": frozenset({200})}),
             ("http_status", "reviews", "ratings", {"status": frozenset({200})})])

    def test_fault_follows_the_version(self):
        """
        gremlins.json delays the calls of reviews v2 to ratings v1 by 7 s, gremlins-v3.json
        those of reviews v3; for jason's cookie, and every other edge of the topology gets
        a trace-only rule.
        """
        for scenarios, version in (("gremlins.json", "v2"), ("gremlins-v3.json", "v3")):
            recipe = self.recipe(scenarios)
            self.assertEqual(max_delay(recipe), 7.0)
            rules = fault_rules(recipe, "r1", "Cookie", "user=jason")
            delays = [rule for rule in rules
                      if any(a["action"] == "delay" for a in rule["actions"])]
            self.assertEqual(len(delays), 1, rules)
            [delay] = delays
            self.assertEqual((delay["destination"], delay["match"]["source"]),
                             ("ratings", {"name": "reviews", "tags": [version]}))
            self.assertEqual(delay["actions"][0]["duration"], 7.0)
            self.assertEqual(delay["actions"][0]["tags"], ["v1"])
            self.assertEqual(sorted((r["match"]["source"]["name"], r["destination"])
                                    for r in rules if r is not delay),
                             [("gateway", "productpage"), ("productpage", "details"),
                              ("productpage", "reviews"), ("reviews", "ratings")])
            for rule in rules:
                self.assertEqual(rule["tags"], ["r1"])
                self.assertRegex("user=jason", rule["match"]["headers"]["Cookie"])
