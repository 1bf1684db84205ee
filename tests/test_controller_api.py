"""
Tests for L{amalgam8.controller.api}: the controller's HTTP API (SPEC A1, A3, B1, B2 and B5),
driven through L{treq.testing.StubTreq} against a L{MemoryStore} and a L{Clock}.
"""

import copy
import json
import os
import uuid
from importlib import resources

from hypothesis import HealthCheck, given, settings, strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived

import amalgam8.controller.api as api_module
from amalgam8.auth import Authenticator
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.proxies import ProxyReports
from amalgam8.controller.store import MemoryStore
from amalgam8.controller.traces import TraceBuffer
from amalgam8.testing.late import Later, LateStore, settling
from amalgam8.web import MAX_BODY
from tests.helpers import Answer, json_values, make_jwt, metric_samples, sample_value

NOW = 1_800_000_000.0
BASE = "http://controller.test"
RULES = "/v1/rules"
SECRET = "a-test-secret-that-is-long-enough-for-hs256"
_NOTHING = object()


def route(destination="reviews", backend=("v1",), **extra):
    """A valid route rule (no id unless given) to one backend with tags C{backend}."""
    rule = {"destination": destination, "route": {"backends": [{"tags": list(backend)}]}}
    rule.update(extra)
    return rule


def actions(destination="ratings", **extra):
    """A valid action rule (no id unless given)."""
    rule = {"destination": destination,
            "actions": [{"action": "delay", "duration": 1.5, "probability": 0.5}]}
    rule.update(extra)
    return rule


# Every construct of the rule format, with the fields Amalgam8 1.x clients send.
FULL_ROUTE = {
    "id": "full-route",
    "priority": 7,
    "tags": ["canary", "team-a"],
    "destination": "reviews",
    "match": {
        "source": {"name": "productpage", "tags": ["v1"]},
        "headers": {"Cookie": "^(.*?;)?(user=jason)(;.*)?$"},
        "all": [{"headers": {"X-Env": "^prod$"}}],
        "any": [{"source": {"name": "a"}}, {"source": {"name": "b", "tags": ["x"]}}],
        "none": [{"headers": {"X-Test": "."}, "source": {"name": "c"}}],
    },
    "route": {
        "backends": [
            {"tags": ["v2"], "weight": 0.25, "name": "reviews-v2", "timeout": 2.5,
             "retries": 3, "lb": "least_request", "consecutive_errors": 7,
             "ejection_time": 45},
            {"tags": ["v1", "eu"], "lb_type": "random",
             "resilience": {"max_connections": 100, "max_pending_requests": 10,
                            "max_requests": 1000, "max_retries": 3,
                            "max_requests_per_connection": 1, "consecutive_errors": 5,
                            "sleep_window": 15},
             "uri": {"prefix": "/api", "prefix_rewrite": "/"}},
        ],
        "http_req_timeout": 5,
        "http_req_retries": 2,
    },
}
FULL_ACTIONS = {
    "id": "full-actions",
    "priority": 10,
    "tags": ["recipe-1"],
    "destination": "ratings",
    "match": {"source": {"name": "reviews", "tags": ["v2"]},
              "headers": {"X-Request-ID": "^test-.*"}},
    "actions": [
        {"action": "delay", "duration": 0.5, "probability": 0.0001, "tags": ["v1"],
         "distribution": "normal", "stddev": 0.1},
        {"action": "abort", "return_code": 503, "probability": 0.5},
        {"action": "abort", "return_code": -1},
        {"action": "trace", "log_key": "gremlin_recipe_id", "log_value": "recipe-1"},
    ],
}


class ControllerTestCase(SynchronousTestCase):
    """
    A controller API over a fresh L{MemoryStore}, L{Clock} and L{StubTreq}.

    Subclasses change the class attributes to configure it.
    """

    modes = ("default",)
    require_https = False
    trace_capacity = 100_000
    report_interval = 30.0
    metrics_token = None
    late = False

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore()
        self.store.startService()
        self.addCleanup(self.store.stopService)
        self.auth = Authenticator(
            self.modes, self.clock, jwt_secret=SECRET if "jwt" in self.modes else None)
        self.proxies = ProxyReports(self.clock, self.report_interval)
        self.traces = TraceBuffer(self.trace_capacity)
        # With late = True the API gets the store through a LateStore (every answer comes
        # later, as a networked store's would) and each flush delivers them; self.store stays
        # the wrapped store, read around the API.
        self.later = Later()
        store = LateStore(self.store, self.later) if self.late else self.store
        self.api = ControllerAPI(store, self.auth, self.clock, proxies=self.proxies,
                                 traces=self.traces, require_https=self.require_https,
                                 metrics_token=self.metrics_token)
        self.http = StubTreq(self.api.resource())
        self.pump = self.http.flush
        if self.late:
            self.http.flush = settling(self.pump, self.later)

    # -- requests ----------------------------------------------------------------------------

    def start(self, method, path, json_body=_NOTHING, data=None, token=None, headers=None,
              content_type=b"application/json"):
        """Send a request; the Deferred fires with an L{Answer} once flushed."""
        all_headers = {}
        if json_body is not _NOTHING:
            data = json.dumps(json_body).encode("utf-8")
        if data is not None and content_type is not None:
            all_headers[b"content-type"] = [content_type]
        if token is not None:
            all_headers[b"authorization"] = [b"Bearer " + token.encode("ascii")]
        for name, value in (headers or {}).items():
            all_headers[name] = [value]
        if isinstance(method, bytes):
            method = method.decode("ascii")
        d = self.http.request(method, BASE + path, data=data, headers=all_headers,
                              allow_redirects=False)

        def read(response):
            return response.content().addCallback(
                lambda body: Answer(response.code, response.headers, body))

        return d.addCallback(read)

    def request(self, method, path, **kwargs):
        """Send a request and return its L{Answer}."""
        d = self.start(method, path, **kwargs)
        self.http.flush()
        return self.successResultOf(d)

    def finish(self, d):
        """The L{Answer} of a started request, after a flush."""
        self.http.flush()
        return self.successResultOf(d)

    def post(self, *rules, token=None, headers=None):
        """POST C{rules}; return the ids of the 201 answer."""
        answer = self.request(b"POST", RULES, json_body={"rules": list(rules)}, token=token,
                              headers=headers)
        self.assertEqual(answer.code, 201, answer.body)
        return answer.json()["ids"]

    def read(self, query="", token=None, path=RULES):
        """The JSON of a 200 answer to GET C{path + query}."""
        answer = self.request(b"GET", path + query, token=token)
        self.assertEqual(answer.code, 200, answer.body)
        return answer.json()

    def ids(self, query="", token=None):
        return [rule["id"] for rule in self.read(query, token)["rules"]]

    def revision(self, namespace="default"):
        return self.successResultOf(self.store.get(namespace)).revision

    def snapshot(self):
        """Everything the controller holds, read around the API."""
        names = {"default", "a", "b", "t", "admin"} | set(self.store.namespaces())
        rules = {}
        for name in sorted(names):
            ruleset = self.successResultOf(self.store.get(name))
            rules[name] = (ruleset.revision, copy.deepcopy(list(ruleset.rules)))
        proxies = {name: [r.as_dict() for r in self.successResultOf(self.proxies.live(name))]
                   for name in sorted(names)}
        traces = {name: self.successResultOf(self.traces.query(name, limit=1_000_000))[0]
                  for name in sorted(names)}
        return rules, proxies, traces, self.traces.stats()

    def assertError(self, answer, status, error_id=None, words=()):
        """
        C{answer} has C{status} and a JSON body C{{"error": id, "description": text}}
        whose description contains each of C{words}.
        """
        self.assertEqual(answer.code, status, answer.body)
        self.assertEqual(answer.header(b"content-type"), "application/json")
        body = answer.json()
        self.assertEqual(sorted(body), ["description", "error"], body)
        self.assertIsInstance(body["error"], str)
        self.assertTrue(body["error"].startswith("error_"), body)
        self.assertIsInstance(body["description"], str)
        self.assertTrue(body["description"])
        if error_id is not None:
            self.assertEqual(body["error"], error_id, body)
        for word in words:
            self.assertIn(word, body["description"])
        return body

    def assertRejected(self, status, error_id, method, path, words=(), **kwargs):
        """The request gets C{status} with an error body and changes nothing."""
        before = self.snapshot()
        answer = self.request(method, path, **kwargs)
        self.assertError(answer, status, error_id, words)
        self.assertEqual(self.snapshot(), before)
        return answer


class CreateTests(ControllerTestCase):
    """POST /v1/rules."""

    def test_created(self):
        """Rules without an id get server-assigned UUIDs, in order; 201 with A8-Revision."""
        answer = self.request(b"POST", RULES, json_body={"rules": [route(), actions()]})
        self.assertEqual(answer.code, 201)
        self.assertEqual(answer.header(b"content-type"), "application/json")
        self.assertEqual(answer.header(b"a8-revision"), "1")
        ids = answer.json()["ids"]
        self.assertEqual(list(answer.json()), ["ids"])
        self.assertEqual(len(ids), 2)
        for rule_id in ids:
            self.assertEqual(str(uuid.UUID(rule_id)), rule_id)
        self.assertNotEqual(ids[0], ids[1])
        stored = {rule["id"]: rule for rule in self.read()["rules"]}
        self.assertEqual(stored[ids[0]], dict(route(), id=ids[0]))
        self.assertEqual(stored[ids[1]], dict(actions(), id=ids[1]))

    def test_client_id_kept(self):
        """A client-given id is kept; the others get fresh ones."""
        ids = self.post(route(id="my-rule"), route(destination="ratings"))
        self.assertEqual(ids[0], "my-rule")
        self.assertNotEqual(ids[1], "my-rule")
        self.assertIn("my-rule", self.ids())

    def test_returned_as_written(self):
        """Rules come back exactly as written, every construct and 1.x field included."""
        self.post(FULL_ROUTE, FULL_ACTIONS)
        self.assertEqual(self.read()["rules"], [FULL_ACTIONS, FULL_ROUTE])
        self.assertEqual(self.read("?id=full-route")["rules"], [FULL_ROUTE])

    def test_unicode_kept(self):
        """Non-ASCII text is stored and returned unchanged."""
        rule = route(id="u", tags=["v\u00e9"], backend=["\u00e9t\u00e9"], destination="r\u00e9views",
                     match={"headers": {"X-Name": "^J\u00fcrgen|\U0001f600$"}})
        self.post(rule)
        self.assertEqual(self.read("?id=u")["rules"], [rule])

    def test_revision_counts(self):
        """Every successful change raises the revision by one; reads do not."""
        self.assertEqual(self.read()["revision"], 0)
        self.post(route(id="a"))
        self.assertEqual(self.read()["revision"], 1)
        self.post(route(id="b"), route(id="c"))
        self.assertEqual(self.read()["revision"], 2)
        self.assertEqual(self.request(b"PUT", RULES, json_body={
            "rules": [route(id="a", priority=3)]}).code, 200)
        self.assertEqual(self.read()["revision"], 3)
        self.assertEqual(self.request(b"DELETE", RULES + "?id=b").code, 200)
        self.assertEqual(self.read()["revision"], 4)
        self.assertEqual(self.request(b"PUT", RULES + "/routes/reviews",
                                      json_body={"rules": [route()]}).code, 201)
        self.assertEqual(self.read()["revision"], 5)
        self.assertEqual(self.request(b"DELETE", RULES + "/routes/reviews").code, 200)
        self.assertEqual(self.read()["revision"], 6)
        self.assertEqual(self.revision(), 6)

    def test_failures_keep_revision(self):
        """Refused changes leave the revision where it was."""
        self.post(route(id="a"))
        self.request(b"POST", RULES, json_body={"rules": [route(id="a")]})
        self.request(b"POST", RULES, data=b"{")
        self.request(b"PUT", RULES, json_body={"rules": [route(id="zz")]})
        self.request(b"DELETE", RULES + "?id=nothing-like-it")
        self.assertEqual(self.read()["revision"], 1)

    def test_existing_id(self):
        """POST of an id that exists gets 409 and changes nothing."""
        self.post(route(id="a"))
        self.assertRejected(409, "error_conflict", b"POST", RULES,
                            json_body={"rules": [route(id="b"), route(id="a")]},
                            words=["rule 1", "a"])

    def test_id_twice_in_batch(self):
        """The same id twice in one batch is refused, naming the second rule."""
        self.assertRejected(400, "error_invalid_rule", b"POST", RULES,
                            json_body={"rules": [route(id="a"), actions(id="a")]},
                            words=["rule 1: id"])

    def test_charset_parameter(self):
        """application/json with a charset parameter is accepted."""
        answer = self.request(b"POST", RULES, json_body={"rules": [route()]},
                              content_type=b"application/json; charset=utf-8")
        self.assertEqual(answer.code, 201)

    def test_request_id(self):
        """Every answer carries A8-Request-Id, echoed when given."""
        answer = self.request(b"POST", RULES, json_body={"rules": [route()]},
                              headers={b"a8-request-id": b"req-1"})
        self.assertEqual(answer.header(b"a8-request-id"), "req-1")
        answer = self.request(b"POST", RULES, data=b"{", headers={b"a8-request-id": b"r2"})
        self.assertEqual((answer.code, answer.header(b"a8-request-id")), (400, "r2"))
        fresh = self.request(b"GET", RULES).header(b"a8-request-id")
        self.assertEqual(str(uuid.UUID(fresh)), fresh)


class ReadTests(ControllerTestCase):
    """GET /v1/rules and its filters."""

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(
            route(id="r1", destination="reviews", priority=1, tags=["x", "y"]),
            route(id="r2", destination="reviews", priority=5, tags=["x"]),
            route(id="r0", destination="reviews", priority=5),
            actions(id="a1", destination="reviews", priority=10, tags=["y"]),
            actions(id="a2", destination="ratings", tags=["x", "y", "z"]),
            route(id="p1", destination="ratings", priority=-3),
        )

    def test_all(self):
        """Without a filter every rule is listed, with the revision in body and header."""
        answer = self.request(b"GET", RULES)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"a8-revision"), "1")
        self.assertEqual(answer.header(b"content-type"), "application/json")
        body = answer.json()
        self.assertEqual(body["revision"], 1)
        self.assertEqual(len(body["rules"]), 6)

    def test_ordering(self):
        """Listings are ordered by priority descending, then id."""
        self.assertEqual(self.ids(), ["a1", "r0", "r2", "r1", "a2", "p1"])
        self.assertEqual(self.ids("?destination=reviews"), ["a1", "r0", "r2", "r1"])

    def test_ordering_stable_after_changes(self):
        """The order depends on priority and id only, not on the order of writes."""
        self.request(b"PUT", RULES, json_body={"rules": [route(id="p1", priority=5,
                                                                destination="ratings")]})
        self.assertEqual(self.ids(), ["a1", "p1", "r0", "r2", "r1", "a2"])

    def test_id(self):
        """id selects rules by id; repeated or comma-separated ids are ORed."""
        self.assertEqual(self.ids("?id=r1"), ["r1"])
        self.assertEqual(self.ids("?id=r1&id=a2"), ["r1", "a2"])
        self.assertEqual(self.ids("?id=r1,a2"), ["r1", "a2"])
        self.assertEqual(self.ids("?id=nope"), [])

    def test_destination(self):
        """destination selects by destination; repeated values are ORed."""
        self.assertEqual(self.ids("?destination=ratings"), ["a2", "p1"])
        self.assertEqual(self.ids("?destination=ratings&destination=reviews"),
                         self.ids())
        self.assertEqual(self.ids("?destination=details"), [])

    def test_tag_all(self):
        """tag selects the rules that carry all the given tags."""
        self.assertEqual(self.ids("?tag=x"), ["r2", "r1", "a2"])
        self.assertEqual(self.ids("?tag=x&tag=y"), ["r1", "a2"])
        self.assertEqual(self.ids("?tag=x,y,z"), ["a2"])
        self.assertEqual(self.ids("?tag=w"), [])

    def test_and_across(self):
        """Different filters are ANDed."""
        self.assertEqual(self.ids("?destination=reviews&tag=y"), ["a1", "r1"])
        self.assertEqual(self.ids("?destination=reviews&tag=y&id=r1&id=a2"), ["r1"])
        self.assertEqual(self.ids("?destination=ratings&id=r1"), [])

    def test_routes(self):
        """GET /v1/rules/routes groups the route rules by destination."""
        answer = self.request(b"GET", RULES + "/routes")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"a8-revision"), "1")
        services = answer.json()["services"]
        self.assertEqual(sorted(services), ["ratings", "reviews"])
        self.assertEqual([r["id"] for r in services["reviews"]], ["r0", "r2", "r1"])
        self.assertEqual([r["id"] for r in services["ratings"]], ["p1"])
        self.assertTrue(all("route" in r for rules in services.values() for r in rules))

    def test_actions(self):
        """GET /v1/rules/actions groups the action rules by destination."""
        services = self.read(path=RULES + "/actions")["services"]
        self.assertEqual({name: [r["id"] for r in rules]
                          for name, rules in services.items()},
                         {"reviews": ["a1"], "ratings": ["a2"]})

    def test_grouped_filters(self):
        """The grouped listings take the same filters."""
        services = self.read("?tag=x", path=RULES + "/routes")["services"]
        self.assertEqual({name: [r["id"] for r in rules]
                          for name, rules in services.items()},
                         {"reviews": ["r2", "r1"]})
        services = self.read("?destination=ratings", path=RULES + "/actions")["services"]
        self.assertEqual(list(services), ["ratings"])
        self.assertEqual(self.read("?id=nope", path=RULES + "/routes")["services"], {})

    def test_destination_routes(self):
        """GET /v1/rules/routes/{dest} lists its route rules with the revision."""
        answer = self.request(b"GET", RULES + "/routes/reviews")
        self.assertEqual(answer.header(b"a8-revision"), "1")
        body = answer.json()
        self.assertEqual(body["revision"], 1)
        self.assertEqual([r["id"] for r in body["rules"]], ["r0", "r2", "r1"])

    def test_destination_actions(self):
        """GET /v1/rules/actions/{dest} lists its action rules."""
        body = self.read(path=RULES + "/actions/ratings")
        self.assertEqual([r["id"] for r in body["rules"]], ["a2"])

    def test_destination_unknown(self):
        """A destination without rules lists none."""
        self.assertEqual(self.read(path=RULES + "/routes/details"),
                         {"rules": [], "revision": 1})

    def test_destination_filters(self):
        """GET /v1/rules/routes/{dest} takes id and tag."""
        self.assertEqual([r["id"] for r in self.read(
            "?tag=y", path=RULES + "/routes/reviews")["rules"]], ["r1"])
        self.assertEqual([r["id"] for r in self.read(
            "?id=r0&id=r1", path=RULES + "/routes/reviews")["rules"]], ["r0", "r1"])

    def test_empty_namespace(self):
        """A namespace never written has revision 0 and no rules."""
        self.store = MemoryStore()
        self.api = ControllerAPI(self.store, self.auth, self.clock)
        self.http = StubTreq(self.api.resource())
        answer = self.request(b"GET", RULES)
        self.assertEqual((answer.json(), answer.header(b"a8-revision")),
                         ({"rules": [], "revision": 0}, "0"))
        self.assertEqual(self.read(path=RULES + "/routes"),
                         {"services": {}, "revision": 0})


class UpdateTests(ControllerTestCase):
    """PUT /v1/rules."""

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="a"), route(id="b", destination="ratings"), actions(id="c"))

    def test_replaces(self):
        """PUT replaces the rules it names, leaves the others, and answers 200."""
        new_a = route(id="a", priority=9, tags=["t"], destination="details")
        new_c = dict(FULL_ACTIONS, id="c")
        answer = self.request(b"PUT", RULES, json_body={"rules": [new_a, new_c]})
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.header(b"a8-revision"), "2")
        self.assertEqual(answer.json()["ids"], ["a", "c"])
        rules = {r["id"]: r for r in self.read()["rules"]}
        self.assertEqual(rules, {"a": new_a, "b": route(id="b", destination="ratings"),
                                 "c": new_c})
        self.assertEqual(self.read()["revision"], 2)

    def test_route_to_actions(self):
        """A route rule may become an action rule."""
        self.request(b"PUT", RULES, json_body={"rules": [actions(id="a")]})
        self.assertEqual(self.read("?id=a")["rules"], [actions(id="a")])

    def test_unknown_id(self):
        """PUT of an unknown id gets 404 error_not_found and changes nothing."""
        self.assertRejected(404, "error_not_found", b"PUT", RULES,
                            json_body={"rules": [route(id="zz")]}, words=["zz"])

    def test_one_unknown(self):
        """One unknown id among known ones: 404, and the known ones are unchanged."""
        self.assertRejected(404, "error_not_found", b"PUT", RULES,
                            json_body={"rules": [route(id="a", priority=4),
                                                 route(id="zz")]}, words=["rule 1"])

    def test_without_id(self):
        """PUT needs an id in every rule."""
        self.assertRejected(400, "error_invalid_rule", b"PUT", RULES,
                            json_body={"rules": [route(id="a"), route()]},
                            words=["rule 1: id"])

    def test_invalid(self):
        """An invalid replacement is refused, naming it."""
        bad = route(id="a")
        bad["route"]["backends"][0]["weight"] = 2
        self.assertRejected(400, "error_invalid_rule", b"PUT", RULES,
                            json_body={"rules": [bad]},
                            words=["rule 0: route.backends[0].weight"])

    def test_empty(self):
        """PUT of no rules is refused."""
        self.assertRejected(400, "error_no_rules_provided", b"PUT", RULES,
                            json_body={"rules": []})


class DeleteTests(ControllerTestCase):
    """DELETE /v1/rules."""

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="a", tags=["x"]), route(id="b", destination="ratings"),
                  actions(id="c", tags=["x", "y"]), actions(id="d", destination="reviews"))

    def test_by_id(self):
        """DELETE ?id= removes those rules and answers 200 with their ids."""
        answer = self.request(b"DELETE", RULES + "?id=a&id=c")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"a8-revision"), "2")
        self.assertEqual(sorted(answer.json()["ids"]), ["a", "c"])
        self.assertEqual(sorted(self.ids()), ["b", "d"])

    def test_by_tag(self):
        """DELETE ?tag= removes the rules carrying all the tags."""
        self.request(b"DELETE", RULES + "?tag=x&tag=y")
        self.assertEqual(sorted(self.ids()), ["a", "b", "d"])

    def test_by_destination(self):
        """DELETE ?destination= removes the rules of those destinations."""
        self.request(b"DELETE", RULES + "?destination=ratings")
        self.assertEqual(sorted(self.ids()), ["a", "d"])

    def test_combined(self):
        """Filters are ANDed."""
        self.request(b"DELETE", RULES + "?destination=reviews&tag=x")
        self.assertEqual(sorted(self.ids()), ["b", "c", "d"])

    def test_all(self):
        """DELETE without a parameter removes every rule of the namespace."""
        answer = self.request(b"DELETE", RULES)
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.read(), {"rules": [], "revision": 2})

    def test_nothing_matches(self):
        """A DELETE that matches nothing answers 200 and changes nothing."""
        before = self.snapshot()
        answer = self.request(b"DELETE", RULES + "?id=zz")
        self.assertEqual((answer.code, answer.json()["ids"]), (200, []))
        self.assertEqual(answer.header(b"a8-revision"), "1")
        self.assertEqual(self.snapshot(), before)

    def test_unknown_filter(self):
        """An unknown filter name gets 400 and deletes nothing."""
        self.assertRejected(400, "error_bad_request", b"DELETE", RULES + "?name=a",
                            words=["name"])

    def test_empty_filter(self):
        """An empty filter value is refused (it would otherwise delete everything)."""
        self.assertRejected(400, "error_bad_request", b"DELETE", RULES + "?id=")


class DestinationTests(ControllerTestCase):
    """PUT and DELETE /v1/rules/routes/{dest} and /v1/rules/actions/{dest}."""

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="r1"), route(id="r2", tags=["v2"]), actions(id="a1",
                                                                     destination="reviews"),
                  route(id="o1", destination="ratings"),
                  actions(id="o2", destination="ratings"))

    def test_replace_routes(self):
        """PUT replaces every route rule of the destination and nothing else; 201."""
        new = route(id="n1", tags=["v3"], priority=2)
        answer = self.request(b"PUT", RULES + "/routes/reviews",
                              json_body={"rules": [new, route(tags=["v4"])]})
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.header(b"a8-revision"), "2")
        ids = answer.json()["ids"]
        self.assertEqual(ids[0], "n1")
        self.assertEqual(len(ids), 2)
        self.assertEqual(sorted(self.ids()), sorted(["n1", ids[1], "a1", "o1", "o2"]))
        self.assertEqual([r["id"] for r in self.read(path=RULES + "/routes/reviews")["rules"]],
                         ["n1", ids[1]])

    def test_replace_actions(self):
        """PUT on actions replaces the action rules of the destination only."""
        answer = self.request(b"PUT", RULES + "/actions/ratings",
                              json_body={"rules": [actions(id="n2")]})
        self.assertEqual(answer.code, 201)
        self.assertEqual(sorted(self.ids()), ["a1", "n2", "o1", "r1", "r2"])

    def test_replace_new_destination(self):
        """PUT on a destination without rules adds them."""
        self.request(b"PUT", RULES + "/routes/details",
                     json_body={"rules": [route(id="d1", destination="details")]})
        self.assertEqual(self.ids("?destination=details"), ["d1"])

    def test_destination_filled_in(self):
        """Rules without a destination get the one of the path."""
        rule = {"id": "n1", "route": {"backends": [{"tags": ["v9"]}]}}
        self.request(b"PUT", RULES + "/routes/reviews", json_body={"rules": [rule]})
        self.assertEqual(self.read("?id=n1")["rules"], [dict(rule, destination="reviews")])

    def test_keeps_own_id(self):
        """A replacement may reuse the id of a rule it replaces."""
        answer = self.request(b"PUT", RULES + "/routes/reviews",
                              json_body={"rules": [route(id="r1", priority=3)]})
        self.assertEqual(answer.code, 201)
        self.assertEqual(self.read("?id=r1")["rules"], [route(id="r1", priority=3)])
        self.assertNotIn("r2", self.ids())

    def test_id_of_other_rule(self):
        """A replacement may not take the id of a rule it does not replace: 409."""
        self.assertRejected(409, "error_conflict", b"PUT", RULES + "/routes/reviews",
                            json_body={"rules": [route(id="a1")]}, words=["rule 0"])

    def test_other_destination(self):
        """A rule for another destination is refused, naming it."""
        self.assertRejected(400, "error_invalid_rule", b"PUT", RULES + "/routes/reviews",
                            json_body={"rules": [route(), route(destination="ratings")]},
                            words=["rule 1: destination"])

    def test_wrong_kind(self):
        """An action rule cannot be put among the routes, nor a route among the actions."""
        self.assertRejected(400, "error_invalid_rule", b"PUT", RULES + "/routes/reviews",
                            json_body={"rules": [actions(destination="reviews")]},
                            words=["rule 0"])
        self.assertRejected(400, "error_invalid_rule", b"PUT", RULES + "/actions/reviews",
                            json_body={"rules": [route()]}, words=["rule 0"])

    def test_invalid(self):
        """A rule failing validation is refused and nothing is replaced."""
        bad = route()
        bad["route"]["backends"][0]["weight"] = 0
        self.assertRejected(400, "error_invalid_rule", b"PUT", RULES + "/routes/reviews",
                            json_body={"rules": [route(), bad]},
                            words=["rule 1: route.backends[0].weight"])

    def test_no_rules(self):
        """An empty list is refused (DELETE clears a destination)."""
        self.assertRejected(400, "error_no_rules_provided", b"PUT",
                            RULES + "/routes/reviews", json_body={"rules": []})

    def test_not_json(self):
        """A body that is not JSON is refused."""
        self.assertRejected(400, "error_invalid_json", b"PUT", RULES + "/routes/reviews",
                            data=b"rules")

    def test_query_refused(self):
        """The bulk replace takes no query parameters."""
        self.assertRejected(400, "error_bad_request", b"PUT",
                            RULES + "/routes/reviews?tag=x", json_body={"rules": [route()]})

    def test_delete_routes(self):
        """DELETE removes the route rules of the destination only."""
        answer = self.request(b"DELETE", RULES + "/routes/reviews")
        self.assertEqual(answer.code, 200)
        self.assertEqual(sorted(answer.json()["ids"]), ["r1", "r2"])
        self.assertEqual(sorted(self.ids()), ["a1", "o1", "o2"])
        self.assertEqual(self.read()["revision"], 2)

    def test_delete_actions(self):
        """DELETE on actions removes the action rules of the destination only."""
        self.request(b"DELETE", RULES + "/actions/reviews")
        self.assertEqual(sorted(self.ids()), ["o1", "o2", "r1", "r2"])

    def test_delete_nothing(self):
        """DELETE of a destination without rules answers 200 and changes nothing."""
        before = self.snapshot()
        self.assertEqual(self.request(b"DELETE", RULES + "/routes/details").code, 200)
        self.assertEqual(self.snapshot(), before)


class CacheTests(ControllerTestCase):
    """Reads are answered from one encoding per namespace, revision and query."""

    modes = ("trusted",)

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="a"), actions(id="b"), token="t")
        self.encodings = 0
        original = api_module._rules_body

        def counting(rules, revision):
            self.encodings += 1
            return original(rules, revision)

        self.patch(api_module, "_rules_body", counting)
        self.reads = 0
        original_get = self.store.get

        def get(namespace):
            self.reads += 1
            return original_get(namespace)

        self.patch(self.store, "get", get)

    def scrape(self):
        answer = self.request(b"GET", "/metrics")
        self.assertEqual(answer.code, 200)
        return answer.body.decode("utf-8")

    def count(self, route_name, status="200"):
        return sample_value(self.scrape(), "a8_controller_http_requests_total",
                            route=route_name, method="GET", status=status)

    def test_second_read_cached(self):
        """A second identical read is answered from the cache: same body, the store read,
        nothing encoded again, counted under the route rules_cached."""
        first = self.request(b"GET", RULES + "?destination=reviews", token="t")
        self.assertEqual((self.encodings, self.count("rules")), (1, 1))
        reads = self.reads
        second = self.request(b"GET", RULES + "?destination=reviews", token="t")
        self.assertEqual(second.body, first.body)
        self.assertEqual(second.code, 200)
        self.assertEqual(self.encodings, 1)
        self.assertGreater(self.reads, reads)
        self.assertEqual(self.count("rules_cached"), 1)
        self.assertEqual(self.count("rules"), 1)
        self.assertEqual(second.header(b"a8-revision"), "1")
        self.assertEqual(second.header(b"content-type"), "application/json")
        self.assertIsNotNone(second.header(b"a8-request-id"))

    def test_grouped_and_destination_cached(self):
        """The grouped and per-destination reads are cached too."""
        for path in (RULES + "/routes", RULES + "/actions/ratings"):
            first = self.request(b"GET", path, token="t")
            second = self.request(b"GET", path, token="t")
            self.assertEqual(first.body, second.body)
        self.assertEqual(self.count("rules_cached"), 2)

    def test_change_invalidates(self):
        """After a change, a read gets the new rules and revision."""
        self.request(b"GET", RULES, token="t")
        self.post(route(id="c"), token="t")
        answer = self.request(b"GET", RULES, token="t")
        self.assertEqual(answer.header(b"a8-revision"), "2")
        self.assertEqual(sorted(r["id"] for r in answer.json()["rules"]), ["a", "b", "c"])
        self.assertEqual(self.encodings, 2)

    def test_per_query(self):
        """Different queries are different answers."""
        self.request(b"GET", RULES + "?id=a", token="t")
        answer = self.request(b"GET", RULES + "?id=b", token="t")
        self.assertEqual([r["id"] for r in answer.json()["rules"]], ["b"])
        self.assertEqual(self.encodings, 2)

    def test_per_namespace(self):
        """A cached answer of one namespace is never given to another."""
        self.request(b"GET", RULES, token="t")
        self.request(b"GET", RULES, token="t")
        answer = self.request(b"GET", RULES, token="other")
        self.assertEqual(answer.json(), {"rules": [], "revision": 0})
        self.assertEqual(answer.header(b"a8-revision"), "0")

    def test_cached_read_needs_token(self):
        """A cached answer still needs credentials."""
        self.request(b"GET", RULES, token="t")
        self.assertError(self.request(b"GET", RULES), 401, "error_unauthorized")

    def test_cached_read_checks_query(self):
        """An unknown filter is refused even where a cached answer could be found."""
        self.assertError(self.request(b"GET", RULES + "?colour=red", token="t"), 400)
        self.assertError(self.request(b"GET", RULES + "?colour=red", token="t"), 400)

    def test_blocking_read_not_short_cut(self):
        """A blocking read waits even when its query is spelled with escapes; the cache
        does not answer it early."""
        query = RULES + "?wai%74=30s&revision=1"
        d = self.start(b"GET", query, token="t")
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.assertEqual(self.finish(d).code, 200)
        d = self.start(b"GET", query, token="t")
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.assertEqual(self.finish(d).header(b"a8-revision"), "1")


class LateCacheTests(CacheTests):
    """The same cached reads on a store whose answers come later."""

    late = True

    def test_cached_read_answered_later(self):
        """A cached read waits for the store's current revision before it answers."""
        self.request(b"GET", RULES, token="t")
        d = self.start(b"GET", RULES, token="t")
        self.pump()
        self.assertNoResult(d)
        self.assertEqual(self.later.pending, 1)
        answer = self.finish(d)
        self.assertEqual((answer.code, answer.header(b"a8-revision")), (200, "1"))
        self.assertEqual(self.count("rules_cached"), 1)

    def test_change_between_read_and_answer(self):
        """A read the store answered before a change, delivered after it, answers the
        revision the store gave it (header and body agree), and its older encoding never
        replaces the newer revision's: the next read gets the change."""
        self.request(b"GET", RULES, token="t")
        d = self.start(b"GET", RULES, token="t")
        self.pump()
        self.post(route(id="c"), token="t")
        answer = self.finish(d)
        self.assertEqual((answer.header(b"a8-revision"), answer.json()["revision"]), ("1", 1))
        self.assertEqual(sorted(r["id"] for r in answer.json()["rules"]), ["a", "b"])
        after = self.request(b"GET", RULES, token="t")
        self.assertEqual((after.header(b"a8-revision"), after.json()["revision"]), ("2", 2))
        self.assertEqual(sorted(r["id"] for r in after.json()["rules"]), ["a", "b", "c"])


class ReadMethodTests(ControllerTestCase):
    """The reads of rules answer HEAD like GET, and other methods with 405."""

    modes = ("trusted",)

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="a"), token="t")

    def test_head(self):
        """HEAD gets the headers of GET and no body."""
        for path in (RULES, RULES + "/routes", RULES + "/routes/reviews"):
            answer = self.request(b"HEAD", path, token="t")
            self.assertEqual((answer.code, answer.body), (200, b""))
            self.assertEqual(answer.header(b"a8-revision"), "1")

    def test_other_methods(self):
        """A method no route of the URL takes gets 405 naming the methods it takes, GET
        among them; the methods other routes take still reach them."""
        for method, path, allow in (
                (b"PATCH", RULES, "DELETE, GET, HEAD, POST, PUT"),
                (b"POST", RULES + "/routes", "GET, HEAD"),
                (b"DELETE", RULES + "/actions", "GET, HEAD"),
                (b"POST", RULES + "/routes/reviews", "DELETE, GET, HEAD, PUT")):
            answer = self.assertRejected(405, "error_method_not_allowed", method, path,
                                         token="t")
            self.assertEqual(answer.header(b"allow"), allow)
        self.assertEqual(self.request(b"DELETE", RULES + "/routes/reviews", token="t").code,
                         200)

    def test_escaped_destination(self):
        """A percent-escaped destination is the name it spells."""
        self.post(route(id="b", destination="r\u00e9views"), token="t")
        answer = self.request(b"GET", RULES + "/routes/r%C3%A9views", token="t")
        self.assertEqual([r["id"] for r in answer.json()["rules"]], ["b"])

    def test_not_a_read(self):
        """Paths beside the reads are not taken for them."""
        self.assertError(self.request(b"GET", RULES + "/routes/", token="t"), 404)
        self.assertError(self.request(b"GET", RULES + "/other", token="t"), 404)


class BlockingReadTests(ControllerTestCase):
    """Blocking reads with wait and revision (SPEC B1)."""

    modes = ("default", "trusted")

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="a"))

    def test_newer_revision_at_once(self):
        """When the revision is already greater than N, the read answers at once."""
        answer = self.finish(self.start(b"GET", RULES + "?wait=30s&revision=0"))
        self.assertEqual((answer.code, answer.header(b"a8-revision")), (200, "1"))
        self.assertEqual([r["id"] for r in answer.json()["rules"]], ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.store.waiting(), 0)

    def test_waits_for_change(self):
        """At revision N the read waits, and answers on the next change with A8-Revision."""
        d = self.start(b"GET", RULES + "?wait=30s&revision=1")
        self.http.flush()
        self.assertNoResult(d)
        self.assertEqual(self.store.waiting(), 1)
        self.post(route(id="b"))
        answer = self.finish(d)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"a8-revision"), "2")
        self.assertEqual(answer.json()["revision"], 2)
        self.assertEqual(sorted(r["id"] for r in answer.json()["rules"]), ["a", "b"])
        self.assertEqual(self.store.waiting(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_delete_wakes(self):
        """A deletion wakes a blocking read."""
        d = self.start(b"GET", RULES + "?wait=30s&revision=1")
        self.http.flush()
        self.request(b"DELETE", RULES)
        answer = self.finish(d)
        self.assertEqual(answer.json(), {"rules": [], "revision": 2})

    def test_times_out_unchanged(self):
        """When wait runs out, the read answers with the unchanged state."""
        d = self.start(b"GET", RULES + "?wait=30s&revision=1")
        self.http.flush()
        self.clock.advance(29.9)
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        answer = self.finish(d)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"a8-revision"), "1")
        self.assertEqual(answer.json()["revision"], 1)
        self.assertEqual([r["id"] for r in answer.json()["rules"]], ["a"])
        self.assertEqual(self.store.waiting(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_thousand_waiters(self):
        """A thousand waiting reads are all answered by one change; identical reads share
        one store waiter."""
        waiting = [self.start(b"GET", RULES + "?wait=30s&revision=1") for _ in range(1000)]
        self.http.flush()
        self.assertEqual((self.store.waiting(), self.api.watch.waiting), (1, 1000))
        self.assertIn("a8_controller_blocking_reads 1000.0", self.metrics_text())
        for d in waiting:
            self.assertNoResult(d)
        self.post(route(id="b"))
        self.http.flush()
        answers = [self.successResultOf(d) for d in waiting]
        self.assertEqual({(a.code, a.header(b"a8-revision")) for a in answers},
                         {(200, "2")})
        self.assertEqual(len({a.body for a in answers}), 1)
        self.assertEqual((self.store.waiting(), self.api.watch.waiting), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def metrics_text(self):
        response = self.successResultOf(self.http.get("http://controller/metrics"))
        return self.successResultOf(response.text())

    def test_client_gone(self):
        """A waiting read whose client goes away is forgotten, with its timer."""
        d = self.start(b"GET", RULES + "?wait=30s&revision=1")
        self.http.flush()
        self.assertEqual(self.store.waiting(), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.http.flush()
        failure = self.failureResultOf(d)
        self.assertTrue(failure.check(CancelledError, ResponseNeverReceived))
        self.assertEqual(self.store.waiting(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.post(route(id="b"))
        self.assertEqual(sorted(self.ids()), ["a", "b"])

    def test_other_namespace(self):
        """A change in another namespace does not wake a read."""
        d = self.start(b"GET", RULES + "?wait=30s&revision=1")
        self.http.flush()
        self.post(route(id="x"), token="other")
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.assertEqual(self.finish(d).header(b"a8-revision"), "1")

    def test_filtered_read_woken(self):
        """Any change of the namespace wakes a filtered read, which lists only its
        selection."""
        d = self.start(b"GET", RULES + "?destination=reviews&wait=30s&revision=1")
        self.http.flush()
        self.post(route(id="z", destination="ratings"))
        answer = self.finish(d)
        self.assertEqual(answer.header(b"a8-revision"), "2")
        self.assertEqual([r["id"] for r in answer.json()["rules"]], ["a"])

    def test_destination_read_blocks(self):
        """GET /v1/rules/routes/{dest} is a blocking read too."""
        d = self.start(b"GET", RULES + "/routes/reviews?wait=10s&revision=1")
        self.http.flush()
        self.assertNoResult(d)
        self.post(route(id="b"))
        self.assertEqual(len(self.finish(d).json()["rules"]), 2)

    def test_grouped_read_blocks(self):
        """GET /v1/rules/routes is a blocking read too."""
        d = self.start(b"GET", RULES + "/routes?wait=10s&revision=1")
        self.http.flush()
        self.assertNoResult(d)
        self.post(route(id="b", destination="details"))
        self.assertEqual(sorted(self.finish(d).json()["services"]), ["details", "reviews"])

    def test_wait_capped(self):
        """A wait longer than ten minutes is cut to ten minutes."""
        d = self.start(b"GET", RULES + "?wait=1h&revision=1")
        self.http.flush()
        self.clock.advance(599)
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.finish(d).code, 200)

    def test_without_wait(self):
        """revision alone does not block."""
        answer = self.finish(self.start(b"GET", RULES + "?revision=1"))
        self.assertEqual((answer.code, answer.header(b"a8-revision")), (200, "1"))

    def test_without_revision(self):
        """wait alone does not block."""
        answer = self.finish(self.start(b"GET", RULES + "?wait=30s"))
        self.assertEqual((answer.code, answer.header(b"a8-revision")), (200, "1"))

    def test_bad_wait(self):
        """A wait that is not a duration gets 400 and leaves no waiter."""
        for wait in ("soon", "-1s", "30x", "1e3", "inf", ""):
            self.assertRejected(400, "error_bad_request", b"GET",
                                RULES + "?revision=1&wait=" + wait, words=["wait"])
        self.assertEqual((self.store.waiting(), self.clock.getDelayedCalls()), (0, []))

    def test_bad_revision(self):
        """A revision that is not a non-negative integer gets 400 and leaves no waiter."""
        for revision in ("x", "-1", "1.5", ""):
            self.assertRejected(400, "error_bad_request", b"GET",
                                RULES + "?wait=1s&revision=" + revision,
                                words=["revision"])
        self.assertEqual((self.store.waiting(), self.clock.getDelayedCalls()), (0, []))

    def test_bad_filter_no_waiter(self):
        """A refused blocking read leaves no waiter and no timer."""
        self.assertRejected(400, "error_bad_request", b"GET",
                            RULES + "?wait=30s&revision=1&colour=red")
        self.assertEqual((self.store.waiting(), self.clock.getDelayedCalls()), (0, []))

    def test_unauthorized_no_waiter(self):
        """A blocking read with a bad token gets 401 and leaves no waiter."""
        self.assertRejected(401, "error_unauthorized", b"GET",
                            RULES + "?wait=30s&revision=1",
                            headers={b"authorization": b"Basic YTpi"})
        self.assertEqual(self.store.waiting(), 0)

    def test_stopped_store_answers(self):
        """Waiting reads are answered with the current rules when the store stops (not
        an empty answer or a dropped line)."""
        d = self.start(b"GET", RULES + "?wait=30s&revision=1")
        self.http.flush()
        self.store.stopService()
        answer = self.finish(d)
        self.assertEqual((answer.code, answer.header(b"a8-revision")), (200, "1"))
        self.assertEqual([r["id"] for r in answer.json()["rules"]], ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LateBlockingReadTests(BlockingReadTests):
    """The same blocking reads on a store whose answers come later."""

    late = True


class LateReadTests(ReadTests):
    """The same reads on a store whose answers come later."""

    late = True


class ConcurrentChangeTests(ControllerTestCase):
    """Changes made at once through one controller, on a store that answers later (as a
    shared Redis or etcd store does)."""

    late = True

    def test_one_at_a_time(self):
        """Thirty POSTs sent at once all succeed, each with its own revision, without
        racing each other for the store's revision (no Conflict reaches the store)."""
        puts = []
        real_put = self.store.put

        def put(namespace, revision, rules):
            d = real_put(namespace, revision, rules)
            puts.append(d)
            return d

        self.store.put = put
        started = [self.start(b"POST", RULES, json_body={"rules": [route(id="r%d" % n)]})
                   for n in range(30)]
        self.http.flush()
        answers = [self.successResultOf(d) for d in started]
        self.assertEqual([a.code for a in answers], [201] * 30)
        self.assertEqual(sorted(int(a.header(b"a8-revision")) for a in answers),
                         list(range(1, 31)))
        self.assertEqual(len(puts), 30)       # one put each: none lost a race
        self.assertEqual(self.api._changing, {})
        self.assertEqual(len(self.ids()), 30)



class ConcurrentNamespaceChangeTests(ControllerTestCase):
    """Changes of different namespaces through one controller."""

    late = True
    modes = ("trusted",)

    def test_namespaces_apart(self):
        """A change of one namespace does not wait for one of another: both are with
        the store at once."""
        first = self.start(b"POST", RULES, json_body={"rules": [route(id="a")]}, token="a")
        second = self.start(b"POST", RULES, json_body={"rules": [route(id="b")]}, token="b")
        self.pump()        # the requests arrive; no answer of the store is delivered yet
        self.assertEqual(sorted(self.api._changing), ["a", "b"])
        self.assertEqual(self.later.pending, 2)     # both reads of the rules are out
        self.http.flush()
        self.assertEqual([self.successResultOf(d).code for d in (first, second)],
                         [201, 201])
        self.assertEqual(self.api._changing, {})


class GroupedReadTests(ControllerTestCase):
    """Blocking reads are grouped by what they ask, not by how the URL spells it."""

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="a"))

    def test_different_waits_one_group(self):
        """Reads of the same query at the same revision with different waits share one
        store waiter, each with its own timer."""
        short = self.start(b"GET", RULES + "?wait=10s&revision=1")
        long = self.start(b"GET", RULES + "?revision=1&wait=20s")
        self.http.flush()
        self.assertEqual((self.store.waiting(), self.api.watch.waiting), (1, 2))
        self.clock.advance(10)
        self.assertEqual(self.finish(short).header(b"a8-revision"), "1")
        self.assertNoResult(long)
        self.post(route(id="b"))
        self.assertEqual(self.finish(long).header(b"a8-revision"), "2")
        self.assertEqual((self.store.waiting(), self.api.watch.waiting), (0, 0))

    def test_other_query_other_group(self):
        """Another query, or another revision, is another group; a change answers every
        group."""
        waiting = [self.start(b"GET", RULES + query) for query in (
            "?wait=10s&revision=1", "?id=a&wait=10s&revision=1", "?wait=10s&revision=5")]
        self.http.flush()
        self.assertEqual((self.store.waiting(), self.api.watch.waiting), (3, 3))
        self.post(route(id="b"))
        answers = [self.finish(d) for d in waiting]
        self.assertEqual([a.header(b"a8-revision") for a in answers], ["2", "2", "2"])
        self.assertEqual([len(a.json()["rules"]) for a in answers], [2, 1, 2])
        self.assertEqual((self.store.waiting(), self.api.watch.waiting), (0, 0))


class LateGroupedReadTests(GroupedReadTests):
    """The same grouping on a store whose answers come later."""

    late = True


def report(revision=1, service="reviews", tags=("v1",), **extra):
    """A proxy report body."""
    body = {"service": service, "tags": list(tags), "revision": revision, "index": 4,
            "applied_at": "2027-01-15T08:00:00Z"}
    body.update(extra)
    return body


class ProxyStatusTests(ControllerTestCase):
    """PUT /v1/proxies/{id}, GET /v1/proxies and GET /v1/rules/status (SPEC B2)."""

    modes = ("trusted",)

    def put(self, proxy_id, body, token="t"):
        answer = self.request(b"PUT", "/v1/proxies/" + proxy_id, json_body=body, token=token)
        self.assertEqual(answer.code, 200, answer.body)
        return answer

    def status(self, token="t"):
        answer = self.request(b"GET", RULES + "/status", token=token)
        self.assertEqual(answer.code, 200, answer.body)
        return answer.json()

    def test_report_listed(self):
        """A report is listed with what it said."""
        self.put("p1", report(revision=0))
        proxies = self.read(path="/v1/proxies", token="t")["proxies"]
        self.assertEqual(len(proxies), 1)
        listed = proxies[0]
        self.assertEqual(listed["proxy_id"], "p1")
        self.assertEqual((listed["service"], listed["tags"], listed["revision"],
                          listed["index"], listed["applied_at"]),
                         ("reviews", ["v1"], 0, 4, "2027-01-15T08:00:00Z"))

    def test_report_replaces(self):
        """A later report of the same proxy replaces the earlier one."""
        self.put("p1", report(revision=0))
        self.put("p1", report(revision=3))
        proxies = self.read(path="/v1/proxies", token="t")["proxies"]
        self.assertEqual([(p["proxy_id"], p["revision"]) for p in proxies], [("p1", 3)])

    def test_status_counts(self):
        """GET /v1/rules/status counts the proxies in sync and lists the lagging."""
        self.post(route(), token="t")
        self.post(route(destination="ratings"), token="t")
        self.put("p1", report(revision=2))
        self.put("p2", report(revision=1))
        self.put("p3", report(revision=2, service="ratings"))
        status = self.status()
        self.assertEqual((status["revision"], status["proxies"], status["in_sync"]),
                         (2, 3, 2))
        self.assertEqual([p["proxy_id"] for p in status["lagging"]], ["p2"])
        self.assertEqual(status["lagging"][0]["revision"], 1)
        self.post(route(destination="details"), token="t")
        status = self.status()
        self.assertEqual((status["revision"], status["in_sync"], len(status["lagging"])),
                         (3, 0, 3))

    def test_rejected_listed(self):
        """
        A report's rejected rules are listed with it, and GET /v1/rules/status names the
        rules of the current revision that proxies skipped, with those proxies; what a
        lagging proxy skipped of an older revision is not listed.
        """
        self.post(route(id="r1"), token="t")
        self.post(route(id="r2", destination="ratings"), token="t")
        bad = [{"id": "r2", "error": "pcre_compile() failed: PCRE does not support \\u"}]
        self.put("p1", report(revision=2, rejected=bad))
        self.put("p2", report(revision=2, rejected=bad + [{"id": "r1", "error": "x"}]))
        self.put("p3", report(revision=1, rejected=[{"id": "old", "error": "y"}]))
        self.put("p4", report(revision=2, rejected=[]))
        proxies = {p["proxy_id"]: p for p in
                   self.read(path="/v1/proxies", token="t")["proxies"]}
        self.assertEqual(proxies["p1"]["rejected"], bad)
        self.assertNotIn("rejected", proxies["p4"])
        status = self.status()
        self.assertEqual((status["proxies"], status["in_sync"]), (4, 3))
        self.assertEqual(status["rejected"], [
            {"id": "r1", "error": "x", "proxies": ["p2"]},
            {"id": "r2", "error": bad[0]["error"], "proxies": ["p1", "p2"]}])
        # A report without rejected rules clears them.
        self.put("p1", report(revision=2))
        self.put("p2", report(revision=2))
        self.assertNotIn("rejected", self.status())

    def test_status_empty(self):
        """With no proxies, the status says so."""
        self.assertEqual(self.status(), {"revision": 0, "proxies": 0, "in_sync": 0,
                                         "lagging": []})

    def test_silent_proxy_drops_out(self):
        """A proxy silent for three report intervals drops out of listing and counts."""
        self.put("p1", report(revision=0))
        self.clock.advance(60)
        self.put("p2", report(revision=0))
        self.clock.advance(30)
        self.assertEqual(self.status()["proxies"], 2)
        self.clock.advance(0.5)
        status = self.status()
        self.assertEqual((status["proxies"], status["in_sync"]), (1, 1))
        self.assertEqual([p["proxy_id"] for p in
                          self.read(path="/v1/proxies", token="t")["proxies"]], ["p2"])

    def test_heartbeat_keeps_alive(self):
        """A proxy that keeps reporting stays listed."""
        for _ in range(10):
            self.put("p1", report(revision=0))
            self.clock.advance(60)
        self.assertEqual(self.status()["proxies"], 1)

    def test_own_interval(self):
        """A report naming its interval drops out after three of its own intervals."""
        self.put("p1", report(revision=0, interval=5))
        self.clock.advance(15)
        self.assertEqual(self.status()["proxies"], 1)
        self.clock.advance(0.1)
        self.assertEqual(self.status()["proxies"], 0)

    def test_namespaces_apart(self):
        """Proxies of one namespace are not seen by another."""
        self.put("p1", report(revision=0), token="a")
        self.assertEqual(self.read(path="/v1/proxies", token="b"), {"proxies": []})
        self.assertEqual(self.status(token="b")["proxies"], 0)
        self.assertEqual(self.status(token="a")["proxies"], 1)

    def test_needs_token(self):
        """Reports and listings need credentials."""
        self.assertRejected(401, "error_unauthorized", b"PUT", "/v1/proxies/p1",
                            json_body=report())
        self.assertRejected(401, "error_unauthorized", b"GET", "/v1/proxies")
        self.assertRejected(401, "error_unauthorized", b"GET", RULES + "/status")

    def test_bad_reports(self):
        """A bad report gets 400 with an error body and changes nothing."""
        self.put("p1", report(revision=0))
        bad = [
            [],
            "report",
            report(colour="red"),
            {"tags": [], "revision": 1},
            report(service=""),
            report(service="x" * 65),
            report(service=5),
            dict(report(), tags="v1"),
            report(tags=[1]),
            report(revision=-1),
            report(revision="1"),
            report(revision=True),
            report(revision=1.5),
            report(revision=None),
            report(index=-2),
            report(index="4"),
            report(applied_at=5),
            report(interval=0),
            report(interval=-1),
            report(interval=3601),
            report(interval="30s"),
            report(interval=True),
            report(rejected={}),
            report(rejected="r1"),
            report(rejected=["r1"]),
            report(rejected=[{"id": "r1"}]),
            report(rejected=[{"id": "r1", "error": "bad", "proxies": []}]),
            report(rejected=[{"id": 1, "error": "bad"}]),
            report(rejected=[{"id": "r1", "error": ""}]),
            report(rejected=[{"id": "r1", "error": "x" * 1025}]),
            report(rejected=[{"id": "r1", "error": "bad"}] * 1001),
        ]
        for body in bad:
            self.assertRejected(400, "error_bad_request", b"PUT", "/v1/proxies/p1",
                                json_body=body, token="t")

    def test_bad_report_framing(self):
        """Reports that are not JSON, not JSON typed, or have a too long id are refused."""
        self.assertRejected(400, "error_invalid_json", b"PUT", "/v1/proxies/p1",
                            data=b"{", token="t")
        self.assertRejected(415, "error_unsupported_media_type", b"PUT", "/v1/proxies/p1",
                            data=b"{}", content_type=b"text/plain", token="t")
        self.assertRejected(400, "error_bad_request", b"PUT", "/v1/proxies/" + "p" * 257,
                            json_body=report(), token="t")
        self.assertRejected(400, "error_bad_request", b"PUT", "/v1/proxies/p1?x=1",
                            json_body=report(), token="t")


def record(n, key="gremlin_recipe_id", value="r1", src="productpage:v1", dst="reviews:v2"):
    """An access-log record carrying a trace key."""
    return {"status": 200, "timestamp_in_ms": 1_000 + n, "src": src, "dst": dst,
            "request_id": "req-{}".format(n), key: value}


def short_record(n):
    """A small trace record (many fit in one batch)."""
    return {"n": n, "trace": "t"}


class TraceTests(ControllerTestCase):
    """POST and GET /v1/traces (SPEC B5)."""

    modes = ("trusted",)
    trace_capacity = 50_000

    def add(self, records, token="t"):
        answer = self.request(b"POST", "/v1/traces", json_body={"records": records},
                              token=token)
        self.assertEqual(answer.code, 202, answer.body)
        return answer.json()

    def query(self, text="", token="t"):
        return self.read(text, token=token, path="/v1/traces")

    def all_pages(self, text=""):
        """Follow next from page to page; return the records and the number of pages."""
        records = []
        pages = 0
        cursor = None
        while True:
            query = text
            if cursor is not None:
                query += ("&" if query else "?") + "after={}".format(cursor)
            page = self.query(query)
            pages += 1
            records.extend(page["records"])
            cursor = page["next"]
            if cursor is None:
                return records, pages

    def test_batch(self):
        """A batch is accepted (202) and read back in order."""
        batch = [record(n) for n in range(3)]
        self.assertEqual(self.add(batch), {"accepted": 3, "dropped": 0})
        self.assertEqual(self.query(), {"records": batch, "next": None, "dropped": 0})

    def test_filters(self):
        """log_key, log_value, src and dst select records."""
        self.add([
            record(0),
            record(1, value="r2"),
            record(2, key="other", value="r1"),
            record(3, src="details:v1"),
            record(4, dst="ratings:v1"),
        ])

        def numbers(text):
            return [r["timestamp_in_ms"] - 1000 for r in self.query(text)["records"]]

        self.assertEqual(numbers("?log_key=gremlin_recipe_id"), [0, 1, 3, 4])
        self.assertEqual(numbers("?log_key=gremlin_recipe_id&log_value=r1"), [0, 3, 4])
        self.assertEqual(numbers("?log_key=other&log_value=r1"), [2])
        self.assertEqual(numbers("?src=details"), [3])
        self.assertEqual(numbers("?src=productpage:v1&dst=reviews"), [0, 1, 2])
        self.assertEqual(numbers("?dst=ratings:v1"), [4])
        self.assertEqual(numbers("?dst=ratings:v2"), [])
        self.assertEqual(numbers("?log_key=gremlin_recipe_id&log_value=r1&dst=reviews"),
                         [0, 3])

    def test_pages(self):
        """With limit, records come a page at a time, next leading to the rest."""
        batch = [record(n) for n in range(25)]
        self.add(batch)
        first = self.query("?limit=10")
        self.assertEqual(first["records"], batch[:10])
        self.assertIsNotNone(first["next"])
        second = self.query("?limit=10&after={}".format(first["next"]))
        self.assertEqual(second["records"], batch[10:20])
        third = self.query("?limit=10&after={}".format(second["next"]))
        self.assertEqual(third["records"], batch[20:])
        self.assertIsNone(third["next"])

    def test_exact_page(self):
        """When the records fill the last page exactly, next is null."""
        self.add([record(n) for n in range(10)])
        self.assertIsNone(self.query("?limit=10")["next"])

    def test_filtered_pages(self):
        """Pages of a filtered query hold only matches and cover them all."""
        batch = [record(n, value="r{}".format(n % 3)) for n in range(30)]
        self.add(batch)
        records, pages = self.all_pages("?log_key=gremlin_recipe_id&log_value=r1&limit=4")
        self.assertEqual(records, [r for r in batch if r["gremlin_recipe_id"] == "r1"])
        self.assertEqual(pages, 3)

    def test_no_cap_on_total(self):
        """More records than the largest page are all reachable by following next, in
        order, without loss; the default page holds 1000."""
        total = 0
        for batch_number in range(3):
            batch = [short_record(total + n) for n in range(8000)]
            self.add(batch)
            total += len(batch)
        self.assertEqual(len(self.query()["records"]), 1000)
        records, pages = self.all_pages("?limit=10000")
        self.assertEqual(pages, 3)
        self.assertEqual(len(records), 24000)
        self.assertEqual([r["n"] for r in records], list(range(24000)))
        records, pages = self.all_pages()
        self.assertEqual((len(records), pages), (24000, 24))

    def test_new_records_after_cursor(self):
        """Records added after a page are found from its cursor."""
        self.add([record(n) for n in range(5)])
        page = self.query("?limit=5")
        self.assertIsNone(page["next"])
        self.add([record(5)])
        last = page["records"][-1]
        # Page again with a cursor taken from a full page.
        page = self.query("?limit=4")
        rest = self.query("?limit=10&after={}".format(page["next"]))
        self.assertEqual([r["request_id"] for r in rest["records"]], ["req-4", "req-5"])
        self.assertEqual(last["request_id"], "req-4")

    def test_namespaces_apart(self):
        """Records of one namespace are not seen by another."""
        self.add([record(0)], token="a")
        self.assertEqual(self.query(token="b")["records"], [])
        self.assertEqual(len(self.query(token="a")["records"]), 1)

    def test_bad_batches(self):
        """A bad batch gets 400 with an error body and keeps nothing."""
        self.add([record(0)])
        for body in ([], "records", {}, {"records": "x"}, {"records": {}},
                     {"records": [record(1), 5]}, {"records": [record(1), []]},
                     {"records": [], "extra": 1},
                     {"records": [{}] * 10001}):
            self.assertRejected(400, "error_bad_request", b"POST", "/v1/traces",
                                json_body=body, token="t")
        self.assertRejected(400, "error_invalid_json", b"POST", "/v1/traces",
                            data=b'{"records": [', token="t")
        self.assertRejected(415, "error_unsupported_media_type", b"POST", "/v1/traces",
                            data=b'{"records": []}', content_type=b"text/plain", token="t")
        self.assertRejected(401, "error_unauthorized", b"POST", "/v1/traces",
                            json_body={"records": [record(1)]})
        self.assertRejected(400, "error_bad_request", b"POST", "/v1/traces?x=1",
                            json_body={"records": [record(1)]}, token="t")

    def test_bad_queries(self):
        """Bad paging values and unknown parameters get 400."""
        for text in ("?limit=0", "?limit=10001", "?limit=x", "?after=-1", "?after=x",
                     "?colour=red", "?log_key=%ff"):
            self.assertRejected(400, "error_bad_request", b"GET", "/v1/traces" + text,
                                token="t")


class TraceBoundTests(ControllerTestCase):
    """Trace records are kept per namespace up to a bound; the oldest go first."""

    modes = ("trusted",)
    trace_capacity = 10
    metrics_token = "scrape-me"

    def add(self, records, token="t"):
        answer = self.request(b"POST", "/v1/traces", json_body={"records": records},
                              token=token)
        self.assertEqual(answer.code, 202, answer.body)
        return answer.json()

    def test_oldest_dropped(self):
        """Past the bound the oldest records are dropped, and the drops reported."""
        self.assertEqual(self.add([record(n) for n in range(8)]),
                         {"accepted": 8, "dropped": 0})
        self.assertEqual(self.add([record(n) for n in range(8, 15)]),
                         {"accepted": 7, "dropped": 5})
        body = self.read(path="/v1/traces", token="t")
        self.assertEqual([r["request_id"] for r in body["records"]],
                         ["req-{}".format(n) for n in range(5, 15)])
        self.assertEqual(body["dropped"], 5)

    def test_bound_per_namespace(self):
        """Each namespace has its own bound and its own count of drops."""
        self.add([record(n) for n in range(12)], token="a")
        self.add([record(n) for n in range(3)], token="b")
        self.assertEqual(self.read(path="/v1/traces", token="a")["dropped"], 2)
        body = self.read(path="/v1/traces", token="b")
        self.assertEqual((len(body["records"]), body["dropped"]), (3, 0))

    def test_dropped_metric(self):
        """The drops are counted in /metrics by namespace (shown with the metrics token)."""
        self.add([record(n) for n in range(12)], token="a")
        text = self.request(b"GET", "/metrics", token="scrape-me").body.decode("utf-8")
        self.assertEqual(sample_value(text, "a8_controller_trace_records_dropped_total",
                                      namespace="a"), 2)
        self.assertEqual(sample_value(text, "a8_controller_trace_records_received_total"),
                         12)


class ServiceEndpointTests(ControllerTestCase):
    """/health, /, /v1/schema, /metrics, unknown paths and methods."""

    modes = ("trusted",)
    metrics_token = "scrape-me"

    def test_health(self):
        """/health and / answer 200 without credentials, with the id of the process that
        answered (the processes of C{--processes N} share one port)."""
        for path in ("/health", "/"):
            answer = self.request(b"GET", path)
            self.assertEqual(answer.code, 200)
            self.assertEqual(answer.json(), {"status": "up", "pid": os.getpid()})

    def test_schema(self):
        """/v1/schema serves amalgam8/schemas/rule.json as it is."""
        answer = self.request(b"GET", "/v1/schema")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"content-type"), "application/json")
        raw = resources.files("amalgam8.schemas").joinpath("rule.json").read_bytes()
        self.assertEqual(answer.body, raw)
        schema = answer.json()
        self.assertEqual(schema["$schema"], "https://json-schema.org/draft/2020-12/schema")

    def test_unknown_path(self):
        """An unknown path gets 404 error_not_found with a request id."""
        answer = self.request(b"GET", "/v2/rules", token="t")
        self.assertError(answer, 404, "error_not_found")
        self.assertIsNotNone(answer.header(b"a8-request-id"))
        self.assertError(self.request(b"GET", RULES + "/routes/a/b", token="t"), 404)

    def test_wrong_method(self):
        """A method a route does not take gets 405 with Allow and an error body."""
        answer = self.request(b"PATCH", RULES, json_body={"rules": []}, token="t")
        self.assertError(answer, 405)
        self.assertIn("POST", answer.header(b"allow"))

    def test_metrics(self):
        """/metrics has rules and revisions by namespace, blocking reads, trace counts and
        requests by route and status, in the Prometheus text format."""
        self.post(route(), actions(), token="a")
        self.post(route(), token="a")
        self.post(route(), token="b")
        self.request(b"POST", RULES, data=b"{", token="a")
        self.request(b"GET", RULES, token="a")
        self.request(b"GET", RULES, token="a")
        d = self.start(b"GET", RULES + "?wait=30s&revision=1", token="b")
        self.http.flush()
        self.request(b"POST", "/v1/traces", json_body={"records": [record(0)]}, token="a")
        answer = self.request(b"GET", "/metrics", token="scrape-me")
        self.assertEqual(answer.code, 200)
        self.assertTrue(answer.header(b"content-type").startswith("text/plain"))
        text = answer.body.decode("utf-8")

        def value(name, **labels):
            return sample_value(text, name, **labels)

        self.assertEqual(value("a8_controller_rules", namespace="a"), 3)
        self.assertEqual(value("a8_controller_rules", namespace="b"), 1)
        self.assertEqual(value("a8_controller_revision", namespace="a"), 2)
        self.assertEqual(value("a8_controller_blocking_reads"), 1)
        self.assertEqual(value("a8_controller_trace_records_received_total"), 1)
        requests = "a8_controller_http_requests_total"
        self.assertEqual(value(requests, route="rules_create", method="POST", status="201"),
                         3)
        self.assertEqual(value(requests, route="rules_create", method="POST", status="400"),
                         1)
        self.assertEqual(value(requests, route="rules", method="GET", status="200"), 1)
        self.assertEqual(value(requests, route="rules_cached", method="GET", status="200"),
                         1)
        self.clock.advance(30)
        self.finish(d)


class MetricsTokenTests(ControllerTestCase):
    """With a metrics token, GET /metrics needs it."""

    metrics_token = "scrape-me"

    def test_token(self):
        """Without the token /metrics gets 401; with it, 200."""
        self.assertError(self.request(b"GET", "/metrics"), 401, "error_unauthorized")
        self.assertEqual(self.request(b"GET", "/metrics", token="scrape-me").code, 200)


class DefaultModeTests(ControllerTestCase):
    """A8_AUTH_MODE unset: the single tenant default."""

    def test_tokens(self):
        """No token or the token default is accepted; any other gets 401."""
        self.post(route(id="a"))
        self.assertEqual(self.ids(token="default"), ["a"])
        self.assertRejected(401, "error_unauthorized", b"GET", RULES, token="other")
        self.assertRejected(401, "error_unauthorized", b"POST", RULES,
                            json_body={"rules": [route()]}, token="other")
        self.assertRejected(401, "error_unauthorized", b"POST", RULES,
                            json_body={"rules": [route()]},
                            headers={b"authorization": b"Basic YTpi"})
        self.assertRejected(401, "error_unauthorized", b"DELETE", RULES,
                            headers={b"authorization": b"Bearer "})

    def test_scheme_case(self):
        """The scheme word is case-insensitive."""
        self.assertEqual(self.request(b"GET", RULES, headers={
            b"authorization": b"bEaReR default"}).code, 200)

    def test_www_authenticate(self):
        """A 401 carries WWW-Authenticate: Bearer."""
        answer = self.request(b"GET", RULES, token="other")
        self.assertTrue(answer.header(b"www-authenticate").startswith("Bearer"))


class NamespaceIsolationTests(ControllerTestCase):
    """In trusted mode, nothing of one namespace is visible to or changeable by another."""

    modes = ("trusted",)

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="a1"), actions(id="shared"), token="a")

    def test_invisible(self):
        """Rules of a are not listed for b, in any listing."""
        self.assertEqual(self.read(token="b"), {"rules": [], "revision": 0})
        self.assertEqual(self.read(token="b", path=RULES + "/routes")["services"], {})
        self.assertEqual(self.read(token="b", path=RULES + "/routes/reviews")["rules"], [])
        self.assertEqual(self.ids(token="a"), ["a1", "shared"])

    def test_same_id_apart(self):
        """Each namespace may use the same id."""
        self.post(route(id="shared", destination="details"), token="b")
        self.assertEqual(self.read("?id=shared", token="a")["rules"],
                         [actions(id="shared")])
        self.assertEqual(self.read("?id=shared", token="b")["rules"],
                         [route(id="shared", destination="details")])

    def test_no_update(self):
        """b cannot PUT a's rule: 404."""
        self.assertRejected(404, "error_not_found", b"PUT", RULES,
                            json_body={"rules": [route(id="a1", priority=3)]}, token="b")

    def test_no_delete(self):
        """b's deletes never touch a's rules."""
        before = self.snapshot()
        self.request(b"DELETE", RULES + "?id=a1", token="b")
        self.request(b"DELETE", RULES, token="b")
        self.request(b"DELETE", RULES + "/routes/reviews", token="b")
        self.assertEqual(self.snapshot()[0]["a"], before[0]["a"])

    def test_revisions_apart(self):
        """Each namespace has its own revision."""
        self.post(route(), token="b")
        self.post(route(), token="b")
        self.assertEqual((self.read(token="a")["revision"], self.read(token="b")["revision"]),
                         (1, 2))

    def test_missing_token(self):
        """Without a token, trusted mode answers 401."""
        self.assertRejected(401, "error_unauthorized", b"GET", RULES)
        self.assertRejected(401, "error_unauthorized", b"POST", RULES,
                            json_body={"rules": [route()]})

    def test_bad_namespace_token(self):
        """A token that is not a namespace name gets 401."""
        self.assertRejected(401, "error_unauthorized", b"GET", RULES, token="a/b")


class JWTTests(ControllerTestCase):
    """A8_AUTH_MODE=jwt,trusted, and the admin override with A8-Namespace."""

    modes = ("jwt", "trusted")

    def token(self, **claims):
        claims.setdefault("namespace", "a")
        claims.setdefault("exp", NOW + 60)
        return make_jwt(claims, SECRET)

    def test_valid(self):
        """A valid JWT acts in its namespace claim."""
        self.post(route(id="x"), token=self.token())
        self.assertEqual(self.ids(token="a"), ["x"])
        self.assertEqual(self.ids(token=self.token(namespace="b")), [])

    def test_expired(self):
        """An expired JWT gets 401 and is not taken as a trusted namespace."""
        token = self.token(exp=NOW + 10)
        self.post(route(), token=token)
        self.clock.advance(10)
        self.assertRejected(401, "error_unauthorized", b"POST", RULES,
                            json_body={"rules": [route()]}, token=token)
        self.assertRejected(401, "error_unauthorized", b"GET", RULES, token=token)

    def test_alg_none(self):
        """A JWT with alg none gets 401."""
        import jwt

        token = jwt.encode({"namespace": "admin"}, None, algorithm="none")
        self.assertRejected(401, "error_unauthorized", b"POST", RULES,
                            json_body={"rules": [route()]}, token=token,
                            headers={b"a8-namespace": b"b"})

    def test_wrong_key(self):
        """A JWT signed with another key gets 401."""
        token = make_jwt({"namespace": "a", "exp": NOW + 60},
                         "another-secret-that-is-long-enough-too")
        self.assertRejected(401, "error_unauthorized", b"POST", RULES,
                            json_body={"rules": [route()]}, token=token)

    def test_garbled(self):
        """A JWT cut short gets 401."""
        self.assertRejected(401, "error_unauthorized", b"DELETE", RULES,
                            token=self.token()[:-4])

    def test_admin_override(self):
        """An admin JWT acts for the tenant named in A8-Namespace."""
        admin = self.token(namespace="admin")
        ids = self.post(route(id="x"), token=admin, headers={b"a8-namespace": b"t"})
        self.assertEqual(ids, ["x"])
        self.assertEqual(self.ids(token="t"), ["x"])
        self.assertEqual(self.revision("admin"), 0)
        answer = self.request(b"GET", RULES, token=admin, headers={b"a8-namespace": b"t"})
        self.assertEqual([r["id"] for r in answer.json()["rules"]], ["x"])
        self.assertEqual(self.request(b"DELETE", RULES, token=admin,
                                      headers={b"a8-namespace": b"t"}).code, 200)
        self.assertEqual(self.ids(token="t"), [])

    def test_admin_override_cached(self):
        """A cached read is given to the admin for the tenant it names, not another."""
        admin = self.token(namespace="admin")
        self.post(route(id="x"), token="t")
        for _ in range(2):
            answer = self.request(b"GET", RULES, token=admin, headers={b"a8-namespace": b"t"})
            self.assertEqual([r["id"] for r in answer.json()["rules"]], ["x"])
        answer = self.request(b"GET", RULES, token=admin, headers={b"a8-namespace": b"u"})
        self.assertEqual(answer.json()["rules"], [])

    def test_admin_without_header(self):
        """An admin JWT without A8-Namespace gets 400 and changes nothing."""
        admin = self.token(namespace="admin")
        self.assertRejected(400, "error_missing_namespace", b"POST", RULES,
                            json_body={"rules": [route()]}, token=admin,
                            words=["A8-Namespace"])
        self.assertRejected(400, "error_missing_namespace", b"GET", RULES, token=admin)
        self.assertRejected(400, "error_missing_namespace", b"DELETE", RULES, token=admin)

    def test_admin_bad_header(self):
        """An A8-Namespace that is not a namespace name gets 400."""
        admin = self.token(namespace="admin")
        for value in (b"", b"a/b", b"\xff", b" "):
            self.assertRejected(400, "error_missing_namespace", b"POST", RULES,
                                json_body={"rules": [route()]}, token=admin,
                                headers={b"a8-namespace": value})

    def test_non_admin_ignores_header(self):
        """A non-admin JWT acts in its own namespace whatever A8-Namespace says."""
        self.post(route(id="x"), token=self.token(namespace="a"),
                  headers={b"a8-namespace": b"t"})
        self.assertEqual(self.ids(token="a"), ["x"])
        self.assertEqual(self.ids(token="t"), [])

    def test_trusted_admin_no_override(self):
        """The trusted token admin is just the namespace admin: no override."""
        self.post(route(id="x"), token="admin", headers={b"a8-namespace": b"t"})
        self.assertEqual(self.ids(token="t"), [])
        self.assertEqual(self.revision("admin"), 1)


class RequireHTTPSTests(ControllerTestCase):
    """A8_REQUIRE_HTTPS: plain HTTP is redirected (301) to https."""

    require_https = True

    def test_redirect(self):
        """A plain-HTTP read is redirected to the same URL over https."""
        answer = self.request(b"GET", RULES + "?destination=reviews")
        self.assertEqual(answer.code, 301)
        self.assertEqual(answer.header(b"location"),
                         "https://controller.test/v1/rules?destination=reviews")

    def test_change_redirected(self):
        """A plain-HTTP change is redirected and changes nothing."""
        self.assertRejected(301, "error_https_required", b"POST", RULES,
                            json_body={"rules": [route()]})

    def test_forwarded_proto(self):
        """X-Forwarded-Proto: https counts as HTTPS; http does not."""
        https = {b"x-forwarded-proto": b"https"}
        answer = self.request(b"POST", RULES, json_body={"rules": [route()]}, headers=https)
        self.assertEqual(answer.code, 201)
        for _ in range(2):
            self.assertEqual(self.request(b"GET", RULES, headers=https).code, 200)
        self.assertEqual(self.request(b"GET", RULES).code, 301)
        self.assertEqual(self.request(b"GET", RULES, headers={
            b"x-forwarded-proto": b"http"}).code, 301)


# (rule index the error names, the rules, words the description contains)
INVALID = [
    ("unknown field", [route(priorty=5)], ["rule 0", "priorty"]),
    ("unknown route field", [route(), {"destination": "d", "route": {
        "backends": [{"tags": ["v1"]}], "backend": []}}], ["rule 1: route", "backend"]),
    ("weight zero", [route(), route(route={"backends": [{"tags": ["v1"], "weight": 0}]})],
     ["rule 1: route.backends[0].weight"]),
    ("weight over one", [route(route={"backends": [{"tags": ["v1"], "weight": 1.01}]})],
     ["rule 0: route.backends[0].weight"]),
    ("weight a string", [route(route={"backends": [{"tags": ["v1"], "weight": "0.5"}]})],
     ["rule 0: route.backends[0].weight"]),
    ("weights sum over one", [route(route={"backends": [
        {"tags": ["v1"], "weight": 0.6}, {"tags": ["v2"], "weight": 0.5}]})],
     ["rule 0: route.backends", "more than 1"]),
    ("missing destination", [{"route": {"backends": [{"tags": ["v1"]}]}}],
     ["rule 0", "destination"]),
    ("empty destination", [route(destination="")], ["rule 0: destination"]),
    ("destination with slash", [route(destination="a/b")], ["rule 0: destination"]),
    ("route and actions", [dict(route(), actions=actions()["actions"])],
     ["rule 0", "route or actions"]),
    ("neither route nor actions", [{"destination": "d"}], ["rule 0", "route or actions"]),
    ("no backends", [route(route={"backends": []})], ["rule 0: route.backends"]),
    ("backend without tags", [route(route={"backends": [{"weight": 0.5}]})],
     ["rule 0: route.backends[0]", "tags"]),
    ("backend empty tags", [route(route={"backends": [{"tags": []}]})],
     ["rule 0: route.backends[0].tags"]),
    ("backend tags repeated", [route(route={"backends": [{"tags": ["v1", "v1"]}]})],
     ["rule 0: route.backends[0].tags"]),
    ("duplicate backend tags", [route(route={"backends": [
        {"tags": ["v1", "eu"]}, {"tags": ["eu", "v1"]}]})],
     ["rule 0: route.backends[1].tags"]),
    ("timeout zero", [route(route={"backends": [{"tags": ["v1"], "timeout": 0}]})],
     ["rule 0: route.backends[0].timeout"]),
    ("retries over ten", [route(route={"backends": [{"tags": ["v1"], "retries": 11}]})],
     ["rule 0: route.backends[0].retries"]),
    ("lb unknown", [route(route={"backends": [{"tags": ["v1"], "lb": "fastest"}]})],
     ["rule 0: route.backends[0].lb"]),
    ("lb_type disagrees", [route(route={"backends": [
        {"tags": ["v1"], "lb": "random", "lb_type": "round_robin"}]})],
     ["rule 0: route.backends[0].lb_type"]),
    ("consecutive_errors zero", [route(route={"backends": [
        {"tags": ["v1"], "consecutive_errors": 0}]})],
     ["rule 0: route.backends[0].consecutive_errors"]),
    ("ejection_time zero", [route(route={"backends": [
        {"tags": ["v1"], "ejection_time": 0}]})],
     ["rule 0: route.backends[0].ejection_time"]),
    ("resilience unknown field", [route(route={"backends": [
        {"tags": ["v1"], "resilience": {"sleep": 1}}]})],
     ["rule 0: route.backends[0].resilience"]),
    ("http_req_timeout negative", [route(route={"backends": [{"tags": ["v1"]}],
                                                "http_req_timeout": -1})],
     ["rule 0: route.http_req_timeout"]),
    ("abort code 42", [actions(actions=[{"action": "abort", "return_code": 42}])],
     ["rule 0: actions[0].return_code"]),
    ("abort code 600", [actions(actions=[{"action": "abort", "return_code": 600}])],
     ["rule 0: actions[0].return_code"]),
    ("abort code -6", [actions(actions=[{"action": "abort", "return_code": -6}])],
     ["rule 0: actions[0].return_code"]),
    ("abort without code", [actions(actions=[{"action": "abort"}])],
     ["rule 0: actions[0]", "return_code"]),
    ("delay negative", [actions(), actions(actions=[
        {"action": "delay", "duration": 1}, {"action": "delay", "duration": -1}])],
     ["rule 1: actions[1].duration"]),
    ("delay zero", [actions(actions=[{"action": "delay", "duration": 0}])],
     ["rule 0: actions[0].duration"]),
    ("probability zero", [actions(actions=[
        {"action": "delay", "duration": 1, "probability": 0}])],
     ["rule 0: actions[0].probability"]),
    ("probability over one", [actions(actions=[
        {"action": "abort", "return_code": 503, "probability": 1.5}])],
     ["rule 0: actions[0].probability"]),
    ("stddev without normal", [actions(actions=[
        {"action": "delay", "duration": 1, "distribution": "uniform", "stddev": 0.5}])],
     ["rule 0: actions[0].stddev"]),
    ("unknown distribution", [actions(actions=[
        {"action": "delay", "duration": 1, "distribution": "pareto"}])],
     ["rule 0: actions[0].distribution"]),
    ("unknown action", [actions(actions=[{"action": "explode"}])],
     ["rule 0: actions[0].action"]),
    ("field of another action", [actions(actions=[
        {"action": "delay", "duration": 1, "return_code": 503}])],
     ["rule 0: actions[0]", "return_code"]),
    ("trace without value", [actions(actions=[{"action": "trace", "log_key": "k"}])],
     ["rule 0: actions[0]", "log_value"]),
    ("empty actions", [actions(actions=[])], ["rule 0: actions"]),
    ("bad header name", [route(match={"headers": {"Bad Header": "x"}})],
     ["rule 0: match.headers"]),
    ("header pattern not a string", [route(match={"headers": {"X-A": 5}})],
     ["rule 0: match.headers.X-A"]),
    ("bad regex", [route(), route(match={"headers": {"Cookie": "(user=["}})],
     ["rule 1: match.headers.Cookie", "regular expression"]),
    # issue 9: Python's re takes \u0041, the proxy's PCRE does not (it froze every proxy).
    ("javascript unicode escape", [route(), route(match={"headers": {"X-A": "\\u0041"}})],
     ["rule 1: match.headers.X-A", "not a valid regular expression for the proxy", "PCRE"]),
    ("javascript unicode escape in combinator", [route(match={"all": [
        {"headers": {"X-A": "ok"}}, {"headers": {"X-B": "^\\u0041$"}}]})],
     ["rule 0: match.all[1].headers.X-B", "regular expression"]),
    ("bad regex in combinator", [route(match={"any": [
        {"headers": {"X-A": "ok"}}, {"headers": {"X-B": "a{2,1}"}}]})],
     ["rule 0: match.any[1].headers.X-B", "regular expression"]),
    ("nested combinator", [route(match={"all": [{"any": [{"headers": {"X-A": "a"}}]}]})],
     ["rule 0: match.all[0]", "any"]),
    ("empty combinator", [route(match={"none": []})], ["rule 0: match.none"]),
    ("empty condition", [route(match={"all": [{}]})], ["rule 0: match.all[0]"]),
    ("unknown match field", [route(match={"cookie": "x"})], ["rule 0: match", "cookie"]),
    ("source unknown field", [route(match={"source": {"name": "a", "version": "v1"}})],
     ["rule 0: match.source", "version"]),
    ("priority a string", [route(priority="high")], ["rule 0: priority"]),
    ("priority a boolean", [route(priority=True)], ["rule 0: priority"]),
    ("tags not a list", [route(tags="x")], ["rule 0: tags"]),
    ("bad id", [route(id="a b")], ["rule 0: id"]),
    ("rule not an object", [route(), "rule"], ["rule 1"]),
]


class BadInputTests(ControllerTestCase):
    """Each bad request gets its status and error body and changes nothing."""

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(id="kept"), actions(id="kept-too"))

    def test_not_json(self):
        """A body that is not JSON gets 400 error_invalid_json."""
        for data in (b"{", b"rules", b"", b"\xff\xfe", b'{"rules": [NaN]}',
                     b'{"rules": [Infinity]}', b"[" * 100_000):
            self.assertRejected(400, "error_invalid_json", b"POST", RULES, data=data)

    def test_lone_surrogate(self):
        """A body with text that cannot be UTF-8 (a lone surrogate) is refused, so it can
        never poison later reads."""
        data = (b'{"rules": [{"destination": "\\ud800x", '
                b'"route": {"backends": [{"tags": ["v1"]}]}}]}')
        self.assertRejected(400, "error_invalid_json", b"POST", RULES, data=data)
        self.assertEqual(self.request(b"GET", RULES).code, 200)

    def test_surrogate_pair_accepted(self):
        """An escaped surrogate pair is a real character and is accepted."""
        data = (b'{"rules": [{"id": "emoji", "destination": "\\ud83d\\ude00", '
                b'"route": {"backends": [{"tags": ["v1"]}]}}]}')
        answer = self.request(b"POST", RULES, data=data)
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(self.read("?id=emoji")["rules"][0]["destination"], "\U0001f600")

    def test_content_type(self):
        """A body that is not application/json gets 415."""
        body = json.dumps({"rules": [route()]}).encode()
        for content_type in (b"text/plain", b"application/x-www-form-urlencoded",
                             b"application/jsonp"):
            self.assertRejected(415, "error_unsupported_media_type", b"POST", RULES,
                                data=body, content_type=content_type)
        self.assertRejected(415, "error_unsupported_media_type", b"POST", RULES,
                            data=body, content_type=None)
        self.assertRejected(415, "error_unsupported_media_type", b"PUT", RULES,
                            data=body, content_type=b"text/plain")

    def test_no_rules(self):
        """{"rules": []} gets 400 error_no_rules_provided."""
        self.assertRejected(400, "error_no_rules_provided", b"POST", RULES,
                            json_body={"rules": []})

    def test_not_a_rules_body(self):
        """A body that is not {"rules": [...]} gets 400."""
        for body in ([], [route()], "rules", 5, None, {}, {"rules": route()},
                     {"rules": "x"}, {"rules": [route()], "revision": 1}):
            self.assertRejected(400, "error_bad_request", b"POST", RULES, json_body=body)

    def test_invalid_rules(self):
        """Rules failing the schema or a semantic check, at every depth, get 400
        error_invalid_rule naming the rule index and the field path."""
        for name, rules, words in INVALID:
            self.assertRejected(400, "error_invalid_rule", b"POST", RULES,
                                json_body={"rules": rules}, words=words)

    def test_invalid_rules_on_put(self):
        """The same checks apply to PUT /v1/rules (the bad rule of each example put
        alone, under the id of a stored rule)."""
        for name, rules, words in INVALID:
            if name == "bad id":
                continue
            rules = [dict(rule, id="kept") if isinstance(rule, dict) else rule
                     for rule in rules[-1:]]
            words = [w.replace("rule 1", "rule 0") for w in words]
            self.assertRejected(400, "error_invalid_rule", b"PUT", RULES,
                                json_body={"rules": rules}, words=words)

    def test_one_bad_among_good(self):
        """A batch with one bad rule among good ones stores none of them."""
        bad = route(route={"backends": [{"tags": ["v1"], "weight": 2}]})
        self.assertRejected(400, "error_invalid_rule", b"POST", RULES,
                            json_body={"rules": [route(id="g1"), route(id="g2"), bad,
                                                 route(id="g3")]},
                            words=["rule 2: route.backends[0].weight"])

    def test_put_unknown(self):
        """PUT of an unknown id gets 404."""
        self.assertRejected(404, "error_not_found", b"PUT", RULES,
                            json_body={"rules": [route(id="nope")]})

    def test_post_existing(self):
        """POST of an existing id gets 409."""
        self.assertRejected(409, "error_conflict", b"POST", RULES,
                            json_body={"rules": [route(id="kept")]})

    def test_unknown_filters(self):
        """Unknown filter names get 400 on every listing and on DELETE."""
        for method, path in ((b"GET", RULES + "?name=x"), (b"GET", RULES + "?tags=x"),
                             (b"GET", RULES + "/routes?colour=red"),
                             (b"GET", RULES + "/actions?x=1"),
                             (b"GET", RULES + "/routes/reviews?destination=reviews"),
                             (b"DELETE", RULES + "?ids=kept"),
                             (b"DELETE", RULES + "/routes/reviews?id=kept"),
                             (b"GET", RULES + "/status?x=1"),
                             (b"GET", "/v1/proxies?x=1"),
                             (b"GET", RULES + "?id=%ff")):
            self.assertRejected(400, "error_bad_request", method, path)

    def test_query_on_post(self):
        """POST and PUT take no query parameters."""
        self.assertRejected(400, "error_bad_request", b"POST", RULES + "?id=x",
                            json_body={"rules": [route()]})
        self.assertRejected(400, "error_bad_request", b"PUT", RULES + "?id=kept",
                            json_body={"rules": [route(id="kept")]})

    def test_oversize(self):
        """A body over 1 MiB gets 413, even when it is valid JSON."""
        padding = "x" * MAX_BODY
        rule = route(match={"headers": {"X-Pad": padding}})
        self.assertRejected(413, "error_payload_too_large", b"POST", RULES,
                            json_body={"rules": [rule]})
        self.assertRejected(413, "error_payload_too_large", b"PUT", RULES,
                            data=b" " * (MAX_BODY + 1))
        self.assertRejected(413, "error_payload_too_large", b"POST", "/v1/traces",
                            data=b" " * (MAX_BODY + 1))

    def test_at_limit(self):
        """A body of exactly 1 MiB is read (and judged on its content)."""
        body = json.dumps({"rules": [route(id="big")]}).encode()
        body += b" " * (MAX_BODY - len(body))
        self.assertEqual(len(body), MAX_BODY)
        self.assertEqual(self.request(b"POST", RULES, data=body).code, 201)


class JWTBadInputTests(ControllerTestCase):
    """Bad tokens change nothing."""

    modes = ("jwt", "trusted")
    token = JWTTests.token

    def test_bad_tokens_change_nothing(self):
        """Every kind of bad token gets 401 on every change and changes nothing."""
        import jwt

        self.post(route(id="x"), token="a")
        bad = [
            jwt.encode({"namespace": "a"}, None, algorithm="none"),
            self.token(exp=NOW - 1),
            make_jwt({"namespace": "a"}, "another-secret-that-is-long-enough-too"),
            make_jwt({"exp": NOW + 60}, SECRET),
            self.token(namespace=""),
            self.token()[:-3],
            "a.b.c",
        ]
        for token in bad:
            for method, path, body in ((b"POST", RULES, {"rules": [route()]}),
                                       (b"PUT", RULES, {"rules": [route(id="x")]}),
                                       (b"DELETE", RULES, _NOTHING),
                                       (b"PUT", RULES + "/routes/reviews",
                                        {"rules": [route()]}),
                                       (b"DELETE", RULES + "/routes/reviews", _NOTHING)):
                self.assertRejected(401, "error_unauthorized", method, path,
                                    json_body=body, token=token)


_texts = st.text(max_size=8) | st.sampled_from(["reviews", "v1", "a/b", "", "\ud800",
                                                "\U0001f600"])
_patterns = st.text(max_size=8) | st.sampled_from(["(", "[a-", "a{2,1}", "(?P<x>", "^a$"])
_backends = st.fixed_dictionaries(
    {"tags": st.lists(st.sampled_from(["v1", "v2", "v3"]), min_size=1, max_size=2)
     | json_values},
    optional={
        "weight": st.floats(min_value=-0.5, max_value=1.5) | json_values,
        "name": _texts,
        "timeout": st.floats(min_value=-1, max_value=5) | json_values,
        "retries": st.integers(-2, 12),
        "lb": st.sampled_from(["round_robin", "random", "least_request", "x"]),
        "lb_type": st.sampled_from(["round_robin", "random", "x"]),
        "resilience": json_values,
    })
_actions = st.fixed_dictionaries(
    {"action": st.sampled_from(["delay", "abort", "trace", "x"]) | json_values},
    optional={
        "duration": st.floats(min_value=-1, max_value=5) | json_values,
        "return_code": st.integers(-10, 700) | json_values,
        "probability": st.floats(min_value=-0.5, max_value=1.5),
        "log_key": _texts,
        "log_value": _texts,
        "distribution": st.sampled_from(["normal", "uniform", "fixed", "y"]),
        "stddev": st.floats(min_value=-1, max_value=5),
        "tags": st.lists(_texts, max_size=2),
    })
_conditions = st.fixed_dictionaries({}, optional={
    "source": st.fixed_dictionaries({}, optional={"name": _texts,
                                                  "tags": st.lists(_texts, max_size=2)})
    | json_values,
    "headers": st.dictionaries(_texts, _patterns, max_size=2) | json_values,
})
_match = json_values | st.fixed_dictionaries({}, optional={
    "source": json_values,
    "headers": st.dictionaries(_texts, _patterns, max_size=2),
    "all": st.lists(_conditions, max_size=2),
    "any": st.lists(_conditions | json_values, max_size=2),
    "none": st.lists(_conditions, max_size=2),
})
rule_like = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from(["kept", "r1", "r2", "a b"]) | json_values,
    "priority": st.integers() | json_values,
    "tags": st.lists(_texts, max_size=3) | json_values,
    "destination": _texts | json_values,
    "match": _match,
    "route": st.fixed_dictionaries({"backends": st.lists(_backends, max_size=3)},
                                   optional={"http_req_timeout": json_values})
    | json_values,
    "actions": st.lists(_actions, max_size=3) | json_values,
})
_valid_backends = st.fixed_dictionaries(
    {"tags": st.lists(st.sampled_from(["v1", "v2", "v3", "eu"]), min_size=1, max_size=2,
                      unique=True)},
    optional={
        "weight": st.sampled_from([0.1, 0.25, 0.5, 0.75]),
        "timeout": st.floats(min_value=0.1, max_value=10),
        "retries": st.integers(0, 10),
        "lb": st.sampled_from(["round_robin", "random", "least_request"]),
    })
_valid_bases = st.fixed_dictionaries(
    {"destination": st.sampled_from(["reviews", "ratings", "d\u00e9tails"])},
    optional={
        "id": st.sampled_from(["kept", "n1", "n2"]),
        "priority": st.integers(-10, 10),
        "tags": st.lists(st.sampled_from(["a", "b"]), max_size=2),
        "match": st.fixed_dictionaries({}, optional={
            "headers": st.dictionaries(st.sampled_from(["X-A", "Cookie"]), _patterns,
                                       max_size=1),
            "any": st.lists(_conditions, max_size=2),
        }),
    })
_kinds = (st.fixed_dictionaries({"route": st.fixed_dictionaries(
    {"backends": st.lists(_valid_backends, min_size=1, max_size=3)})})
          | st.fixed_dictionaries({"actions": st.lists(_actions, min_size=1, max_size=2)}))
nearly_valid_rules = st.builds(lambda base, kind: dict(base, **kind), _valid_bases, _kinds)
rule_bodies = (json_values
               | st.fixed_dictionaries({"rules": st.lists(rule_like, max_size=3)})
               | st.fixed_dictionaries({"rules": st.lists(nearly_valid_rules, min_size=1,
                                                          max_size=3)})
               | st.fixed_dictionaries({}, optional={"rules": json_values,
                                                     "other": json_values}))


class PropertyTests(SynchronousTestCase):
    """Properties over arbitrary input."""

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(body=rule_bodies)
    def test_no_5xx(self, body):
        """Any JSON body posted to /v1/rules gets a 201 or a 4xx with an error body, never
        a 5xx; the revision changes only with a 201; and reads still work afterwards."""
        case = ControllerTestCase("snapshot")
        case.successResultOf = self.successResultOf
        case.setUp()
        case.post(route(id="kept"))
        before = case.snapshot()
        data = json.dumps(body).encode("utf-8")
        answer = case.request(b"POST", RULES, data=data)
        self.assertLess(answer.code, 500, answer.body)
        if answer.code == 201:
            self.assertEqual(case.revision(), 2)
            ids = answer.json()["ids"]
            self.assertEqual(len(ids), len(body["rules"]))
        else:
            self.assertIn(answer.code, (400, 409, 413), answer.body)
            self.assertEqual(sorted(answer.json()), ["description", "error"])
            self.assertEqual(case.snapshot(), before)
            self.assertEqual(case.revision(), 1)
        for path in (RULES, RULES + "/routes", RULES + "/actions"):
            self.assertEqual(case.request(b"GET", path).code, 200)

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(body=json_values | st.fixed_dictionaries({"records": st.lists(json_values,
                                                                          max_size=3)}),
           path=st.sampled_from(["/v1/traces", "/v1/proxies/p1", RULES + "/routes/reviews",
                                 RULES + "/actions/ratings", RULES]),
           method=st.sampled_from(["POST", "PUT"]))
    def test_other_bodies_no_5xx(self, body, path, method):
        """Any JSON body sent to any endpoint that takes one never gets a 5xx, and a
        refused one changes nothing."""
        case = ControllerTestCase("snapshot")
        case.successResultOf = self.successResultOf
        case.setUp()
        case.post(route(id="kept"))
        before = case.snapshot()
        answer = case.request(method.encode("ascii"), path,
                              data=json.dumps(body).encode("utf-8"))
        self.assertLess(answer.code, 500, answer.body)
        if answer.code >= 400:
            self.assertEqual(sorted(answer.json()), ["description", "error"])
            self.assertEqual(case.snapshot(), before)


class MetricsTenantTests(ControllerTestCase):
    """
    GET /metrics names tenants only to the metrics token or an admin JWT; anyone else sees
    the totals (issue 10, item 4).
    """

    modes = ("jwt", "trusted")
    trace_capacity = 2

    def setUp(self):
        ControllerTestCase.setUp(self)
        self.post(route(), actions(), token="tenant-a")
        self.post(route(), token="tenant-a")
        self.post(route(), token="tenant-b")
        answer = self.request(b"POST", "/v1/traces", token="tenant-a",
                              json_body={"records": [record(n) for n in range(5)]})
        self.assertEqual(answer.code, 202, answer.body)
        self.admin = make_jwt({"namespace": "admin"}, SECRET)

    def scrape(self, token=None):
        answer = self.request(b"GET", "/metrics", token=token)
        self.assertEqual(answer.code, 200)
        return answer.body.decode("utf-8")

    def per_namespace(self, text):
        return {(name, labels.get("namespace")): value
                for name, labels, value in metric_samples(text) if "namespace" in labels}

    def test_admin_jwt(self):
        """An admin JWT sees rules, revisions and drops per namespace."""
        series = self.per_namespace(self.scrape(self.admin))
        self.assertEqual(series[("a8_controller_rules", "tenant-a")], 3)
        self.assertEqual(series[("a8_controller_rules", "tenant-b")], 1)
        self.assertEqual(series[("a8_controller_revision", "tenant-a")], 2)
        self.assertEqual(series[("a8_controller_revision", "tenant-b")], 1)
        self.assertEqual(series[("a8_controller_trace_records_dropped_total", "tenant-a")], 3)

    def test_anonymous(self):
        """Without credentials each namespace family is summed and no tenant is named."""
        for token in (None, "tenant-a", "admin", make_jwt({"namespace": "tenant-a"}, SECRET)):
            text = self.scrape(token)
            self.assertEqual(self.per_namespace(text), {}, token)
            self.assertNotIn("tenant-", text)
            self.assertEqual(sample_value(text, "a8_controller_rules"), 4)
            self.assertEqual(sample_value(text, "a8_controller_revision"), 3)
            self.assertEqual(sample_value(text, "a8_controller_trace_records_dropped_total"), 3)
            self.assertEqual(sample_value(text, "a8_controller_trace_records_received_total"),
                             5)


class MetricsTenantTokenTests(ControllerTestCase):
    """With a metrics token, its holder sees the series per namespace."""

    modes = ("jwt", "trusted")
    trace_capacity = 2
    metrics_token = "scrape-me"
    setUp = MetricsTenantTests.setUp

    def test_token(self):
        text = self.request(b"GET", "/metrics", token="scrape-me").body.decode("utf-8")
        self.assertEqual(sample_value(text, "a8_controller_rules", namespace="tenant-a"), 3)
        self.assertEqual(sample_value(text, "a8_controller_rules", namespace="tenant-b"), 1)
        self.assertIsNone(sample_value(text, "a8_controller_rules"))

    def test_without_token(self):
        """Without the token (an admin JWT instead) /metrics is still 401."""
        self.assertEqual(self.request(b"GET", "/metrics").code, 401)
        self.assertEqual(self.request(b"GET", "/metrics", token=self.admin).code, 401)


class NotUTF8PathTests(ControllerTestCase):
    """
    A path whose percent-escapes are not UTF-8 gets the controller's JSON 400 with a
    request id, on the rule-read road (ControllerFront) and on the Klein routes (Klein
    answered a text/html 400 and logged a traceback).
    """

    def assertNotUTF8(self, method, path, **kwargs):
        answer = self.assertRejected(400, "error_bad_request", method, path,
                                     headers={b"a8-request-id": b"probe-ff"}, **kwargs)
        self.assertEqual(answer.header(b"content-type"), "application/json")
        self.assertEqual(answer.header(b"a8-request-id"), "probe-ff")
        self.assertEqual(answer.json()["description"], "the path is not UTF-8")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_rules_of_destination(self):
        self.assertNotUTF8(b"GET", "/v1/rules/routes/%ff")

    def test_rule(self):
        self.assertNotUTF8(b"DELETE", "/v1/rules/%ff")

    def test_other(self):
        self.assertNotUTF8(b"POST", "/v1/%ff", json_body={})


class NotFiniteTraceTests(ControllerTestCase):
    """
    C{POST /v1/traces} with a number out of range (C{1e400}) is refused with 400: it was
    kept and served back as C{Infinity}, which is not JSON.
    """

    def test_refused(self):
        self.assertRejected(
            400, "error_invalid_json", b"POST", "/v1/traces",
            data=b'{"records": [{"src": "a", "dst": "b", "x": 1e400}]}')
        answer = self.request(b"GET", "/v1/traces")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json()["records"], [])

    def test_rules(self):
        body = b'[{"id": "r1", "destination": "reviews", "priority": -1e400,' \
               b' "route": {"backends": [{"tags": ["v1"]}]}}]'
        self.assertRejected(400, "error_invalid_json", b"POST", "/v1/rules",
                            data=b'{"rules": ' + body + b"}")
