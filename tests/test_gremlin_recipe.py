"""
Tests for L{amalgam8.gremlin.recipe}: recipe files into a L{Recipe}, their one-line errors,
and a recipe into the rules it pushes.
"""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.gremlin.model import LOG_KEY, SCENARIOS, Check, Edge, Gremlin, Service
from amalgam8.gremlin.recipe import (
    RecipeError, fault_rules, gremlin_edges, header_value, load_recipe, max_delay,
    parse_recipe, request_id_prefix, trace_rules)
from amalgam8.rules import pattern_error, validate_rules

BOOKINFO_TOPOLOGY = {
    "services": [
        {"name": "gateway", "service_proxies": ["127.0.0.1:9877"]},
        {"name": "productpage", "service_proxies": ["127.0.0.1:9876"]},
        {"name": "details"},
        {"name": "reviews"},
        {"name": "ratings"},
    ],
    "dependencies": {
        "gateway": ["productpage"],
        "productpage": ["reviews", "details"],
        "reviews": ["ratings"],
    },
}
BOOKINFO_SCENARIOS = {"gremlins": [
    {"scenario": "delay_requests", "source": "reviews:v2", "dest": "ratings:v1",
     "delaytime": "7s"},
]}
BOOKINFO_CHECKS = {"checks": [
    {"name": "bounded_response_time", "source": "gateway", "dest": "productpage",
     "max_latency": "100ms"},
    {"name": "http_status", "source": "gateway", "dest": "productpage", "status": 200},
    {"name": "http_status", "source": "productpage", "dest": "reviews", "status": 200},
    {"name": "http_status", "source": "reviews", "dest": "ratings", "status": 200},
]}

S = Service.parse
HEADERS = {"X-Request-ID": "^gremlin-"}
TRACE = {"action": "trace", "log_key": LOG_KEY, "log_value": "r1"}


def rule(priority, source, dest, actions, headers=HEADERS, recipe_id="r1"):
    """The rule dict a recipe should produce."""
    name, _, tags = source.partition(":")
    match = {"source": {"name": name}, "headers": headers}
    if tags:
        match["source"]["tags"] = tags.split(",")
    trace = dict(TRACE, log_value=recipe_id)
    return {"priority": priority, "tags": [recipe_id], "destination": dest, "match": match,
            "actions": actions + [trace]}


def trace_rule(source, dest, **kw):
    return rule(9, source, dest, [], **kw)


def bookinfo(gremlins, checks=(), topology=BOOKINFO_TOPOLOGY):
    return parse_recipe(topology, {"gremlins": list(gremlins)}, {"checks": list(checks)})


def delay(duration, probability=1.0, tags=None, **extra):
    action = {"action": "delay", "duration": duration, "probability": probability}
    action.update(extra)
    if tags:
        action["tags"] = tags
    return action


def abort(code, probability=1.0, tags=None):
    action = {"action": "abort", "return_code": code, "probability": probability}
    if tags:
        action["tags"] = tags
    return action


class RecipeTestsMixin:
    def assertRules(self, recipe, expected, **kw):
        rules = fault_rules(recipe, "r1", **kw)
        self.assertEqual(rules, expected)
        validate_rules({"rules": rules})
        for r in rules:
            for pattern in r["match"]["headers"].values():
                self.assertIsNone(pattern_error(pattern))

    def assertError(self, message, topology=BOOKINFO_TOPOLOGY, scenarios=BOOKINFO_SCENARIOS,
                    checks=BOOKINFO_CHECKS):
        with self.assertRaises(RecipeError) as e:
            parse_recipe(topology, scenarios, checks,
                         names=("topology.json", "scenarios.json", "checks.json"))
        self.assertEqual(str(e.exception), message)
        self.assertNotIn("\n", str(e.exception))


class BookinfoTests(RecipeTestsMixin, SynchronousTestCase):
    """Amalgam8's bookinfo recipe, as it was shipped, loads unchanged."""

    def test_loads(self):
        recipe = parse_recipe(BOOKINFO_TOPOLOGY, BOOKINFO_SCENARIOS, BOOKINFO_CHECKS)
        self.assertEqual(recipe.services, tuple(S(n) for n in (
            "gateway", "productpage", "details", "reviews", "ratings")))
        self.assertEqual(recipe.edges, (
            Edge(S("gateway"), S("productpage")), Edge(S("productpage"), S("reviews")),
            Edge(S("productpage"), S("details")), Edge(S("reviews"), S("ratings"))))
        self.assertEqual(recipe.gremlins, (Gremlin(
            "delay_requests", S("reviews:v2"), S("ratings:v1"),
            {"delaytime": 7.0, "delayprobability": 1.0, "distribution": None,
             "stddev": None}, 0),))
        self.assertEqual(recipe.checks, (
            Check("bounded_response_time", S("gateway"), S("productpage"),
                  {"max_latency": 0.1}, 0),
            Check("http_status", S("gateway"), S("productpage"),
                  {"status": frozenset({200})}, 1),
            Check("http_status", S("productpage"), S("reviews"),
                  {"status": frozenset({200})}, 2),
            Check("http_status", S("reviews"), S("ratings"),
                  {"status": frozenset({200})}, 3)))

    def test_rules(self):
        """
        The faulted edge reviews:v2 -> ratings:v1 is one rule matching the source's tags,
        its delay tagged with the dest's; every other edge is traced.
        """
        recipe = parse_recipe(BOOKINFO_TOPOLOGY, BOOKINFO_SCENARIOS, BOOKINFO_CHECKS)
        self.assertRules(recipe, [
            rule(10, "reviews:v2", "ratings", [delay(7.0, tags=["v1"])]),
            trace_rule("gateway", "productpage"),
            trace_rule("productpage", "reviews"),
            trace_rule("productpage", "details"),
            trace_rule("reviews", "ratings"),
        ])
        self.assertEqual(max_delay(recipe), 7.0)

    def test_trace_rules(self):
        """The baseline: trace-only rules for every edge."""
        recipe = parse_recipe(BOOKINFO_TOPOLOGY, BOOKINFO_SCENARIOS, BOOKINFO_CHECKS)
        rules = trace_rules(recipe, "r1")
        self.assertEqual(rules, [
            trace_rule("gateway", "productpage"),
            trace_rule("productpage", "reviews"),
            trace_rule("productpage", "details"),
            trace_rule("reviews", "ratings"),
        ])
        validate_rules({"rules": rules})

    def test_files(self):
        """The same recipe from JSON files and from YAML files."""
        for ext, dump in ((".json", json.dumps), (".yaml", _yaml), (".yml", _yaml),
                          ("", _yaml)):
            paths = []
            for data in (BOOKINFO_TOPOLOGY, BOOKINFO_SCENARIOS, BOOKINFO_CHECKS):
                path = self.mktemp() + ext
                with open(path, "w") as f:
                    f.write(dump(data))
                paths.append(path)
            self.assertEqual(
                load_recipe(*paths),
                parse_recipe(BOOKINFO_TOPOLOGY, BOOKINFO_SCENARIOS, BOOKINFO_CHECKS))


def _yaml(data):
    import yaml
    return yaml.safe_dump(data, default_flow_style=False)


class ScenarioTests(RecipeTestsMixin, SynchronousTestCase):
    """Every scenario's translation into rules."""

    def test_delay_requests(self):
        recipe = bookinfo([{"scenario": "delay_requests", "source": "productpage",
                            "dest": "reviews", "delaytime": "1s500ms",
                            "delayprobability": 0.25}])
        self.assertRules(recipe, [
            rule(10, "productpage", "reviews", [delay(1.5, 0.25)]),
            trace_rule("gateway", "productpage"),
            trace_rule("productpage", "details"),
            trace_rule("reviews", "ratings"),
        ])

    def test_delay_responses(self):
        """Translated like delay_requests (the proxy acts before forwarding)."""
        recipe = bookinfo([{"scenario": "delay_responses", "source": "reviews",
                            "dest": "ratings"}])
        self.assertEqual(fault_rules(recipe, "r1")[0],
                         rule(10, "reviews", "ratings", [delay(1.0)]))

    def test_distribution(self):
        recipe = bookinfo([
            {"scenario": "delay_requests", "source": "reviews", "dest": "ratings",
             "delaytime": "100ms", "distribution": "normal", "stddev": "20ms"},
            {"scenario": "delay_requests", "source": "productpage", "dest": "details",
             "delaytime": 2, "distribution": "exponential"}])
        rules = fault_rules(recipe, "r1")
        self.assertEqual(rules[:2], [
            rule(10, "reviews", "ratings",
                 [delay(0.1, distribution="normal", stddev=0.02)]),
            rule(10, "productpage", "details", [delay(2.0, distribution="exponential")])])
        validate_rules({"rules": rules})

    def test_abort_requests(self):
        recipe = bookinfo([{"scenario": "abort_requests", "source": "productpage",
                            "dest": "reviews:v3", "errorcode": 429,
                            "abortprobability": 0.5}])
        self.assertRules(recipe, [
            rule(10, "productpage", "reviews", [abort(429, 0.5, ["v3"])]),
            trace_rule("gateway", "productpage"),
            trace_rule("productpage", "details"),
            trace_rule("reviews", "ratings"),
        ])
        self.assertEqual(max_delay(recipe), 0)

    def test_abort_responses(self):
        recipe = bookinfo([{"scenario": "abort_responses", "source": "reviews",
                            "dest": "ratings", "errorcode": -1}])
        self.assertEqual(fault_rules(recipe, "r1")[0],
                         rule(10, "reviews", "ratings", [abort(-1)]))

    def test_partition_services(self):
        """Both directions where the topology has them."""
        topology = dict(BOOKINFO_TOPOLOGY, dependencies={
            "productpage": ["reviews"], "reviews": ["ratings", "productpage"]})
        recipe = bookinfo([{"scenario": "partition_services", "source": "productpage:v1",
                            "dest": "reviews", "abortprobability": 0.5}],
                          topology=topology)
        self.assertRules(recipe, [
            rule(10, "productpage:v1", "reviews", [abort(-1, 0.5)]),
            rule(10, "reviews", "productpage", [abort(-1, 0.5, ["v1"])]),
            trace_rule("productpage", "reviews"),
            trace_rule("reviews", "ratings"),
        ])

    def test_partition_one_way(self):
        """Without the reverse edge in the topology, only source -> dest is cut."""
        recipe = bookinfo([{"scenario": "partition_services", "source": "reviews",
                            "dest": "ratings"}])
        self.assertEqual(fault_rules(recipe, "r1")[0],
                         rule(10, "reviews", "ratings", [abort(-1)]))
        self.assertEqual(len(fault_rules(recipe, "r1")), 4)

    def test_crash_service(self):
        """Every call into dest is reset."""
        topology = dict(BOOKINFO_TOPOLOGY, dependencies={
            "gateway": ["productpage", "ratings"], "reviews": ["ratings"]})
        recipe = bookinfo([{"scenario": "crash_service", "dest": "ratings"}],
                          topology=topology)
        self.assertRules(recipe, [
            rule(10, "gateway", "ratings", [abort(-1)]),
            rule(10, "reviews", "ratings", [abort(-1)]),
            trace_rule("gateway", "productpage"),
        ])

    def test_overload_service(self):
        """A delay and a 503 abort with the model's defaults."""
        recipe = bookinfo([{"scenario": "overload_service", "source": "gateway",
                            "dest": "productpage"}])
        self.assertEqual(fault_rules(recipe, "r1")[0], rule(
            10, "gateway", "productpage", [delay(10.0, 0.5), abort(503, 0.5)]))
        self.assertEqual(max_delay(recipe), 10.0)

    def test_every_scenario_validates(self):
        """Every scenario, with and without tags, gives rules the controller accepts."""
        for scenario in SCENARIOS:
            for source, dest in (("reviews", "ratings"), ("reviews:v2", "ratings:v1,x")):
                recipe = bookinfo([{"scenario": scenario, "source": source, "dest": dest}])
                rules = fault_rules(recipe, "recipe-" + scenario)
                validate_rules({"rules": rules})
                self.assertEqual(rules[0]["priority"], 10)
                self.assertEqual(rules[0]["actions"][-1], dict(
                    TRACE, log_value="recipe-" + scenario))
                validate_rules({"rules": trace_rules(recipe, "x")})


class ExpansionTests(RecipeTestsMixin, SynchronousTestCase):
    """Gremlins without source or dest, tags narrowing, merging."""

    def test_without_source(self):
        topology = dict(BOOKINFO_TOPOLOGY, dependencies={
            "gateway": ["productpage", "details"], "productpage": ["details", "reviews"]})
        recipe = bookinfo([{"scenario": "abort_requests", "dest": "details"}],
                          topology=topology)
        self.assertEqual(gremlin_edges(recipe.gremlins[0], recipe.edges), [
            Edge(S("gateway"), S("details")), Edge(S("productpage"), S("details"))])

    def test_without_dest(self):
        recipe = bookinfo([{"scenario": "abort_requests", "source": "productpage:v1"}])
        self.assertEqual(gremlin_edges(recipe.gremlins[0], recipe.edges), [
            Edge(S("productpage:v1"), S("reviews")), Edge(S("productpage:v1"), S("details"))])

    def test_without_both(self):
        recipe = bookinfo([{"scenario": "delay_requests", "delaytime": "100ms"}])
        self.assertEqual(gremlin_edges(recipe.gremlins[0], recipe.edges),
                         list(recipe.edges))
        self.assertRules(recipe, [rule(10, str(e.source), e.dest.name, [delay(0.1)])
                                  for e in recipe.edges])

    def test_topology_tags(self):
        """Tags in the topology and in the gremlin add up."""
        topology = {"services": [{"name": "reviews:v2"}, {"name": "ratings"}],
                    "dependencies": {"reviews:v2": ["ratings"]}}
        recipe = bookinfo([{"scenario": "delay_requests", "source": "reviews:beta",
                            "dest": "ratings"}], topology=topology)
        self.assertEqual(gremlin_edges(recipe.gremlins[0], recipe.edges),
                         [Edge(S("reviews:v2,beta"), S("ratings"))])
        self.assertRules(recipe, [
            rule(10, "reviews:v2,beta", "ratings", [delay(1.0)]),
            trace_rule("reviews:v2", "ratings")])

    def test_merge(self):
        """All gremlins on one edge in one rule: delays first, then aborts."""
        recipe = bookinfo([
            {"scenario": "abort_requests", "source": "reviews", "dest": "ratings:v1"},
            {"scenario": "delay_requests", "source": "reviews", "dest": "ratings:v1",
             "delaytime": 2},
            {"scenario": "delay_requests", "source": "reviews", "dest": "ratings:v2",
             "delaytime": 3}])
        self.assertEqual(fault_rules(recipe, "r1")[0], rule(10, "reviews", "ratings", [
            delay(2.0, tags=["v1"]), delay(3.0, tags=["v2"]), abort(503, tags=["v1"])]))
        self.assertEqual(max_delay(recipe), 3.0)

    def test_max_delay_adds_up(self):
        """Delays on one call add up; random ones count with their tail."""
        recipe = bookinfo([
            {"scenario": "delay_requests", "source": "reviews", "dest": "ratings",
             "delaytime": 2},
            {"scenario": "overload_service", "dest": "ratings", "delaytime": 1,
             "distribution": "uniform"}])
        self.assertEqual(max_delay(recipe), 4.0)

    def test_overlapping_sources(self):
        """reviews and reviews:v2 into ratings would tie at priority 10: refused."""
        self.assertError(
            "scenarios.json: gremlins[1] (abort_requests): source: the calls reviews:v2 -> "
            "ratings overlap those of gremlins[0] (reviews -> ratings): the proxy applies "
            "one rule per call, give both gremlins the same source",
            scenarios={"gremlins": [
                {"scenario": "delay_requests", "source": "reviews", "dest": "ratings"},
                {"scenario": "abort_requests", "source": "reviews:v2", "dest": "ratings"}]})

    def test_dependencies_deduplicated(self):
        topology = dict(BOOKINFO_TOPOLOGY, dependencies={
            "reviews": ["ratings", "ratings"], "gateway": ["productpage"]})
        recipe = bookinfo([{"scenario": "crash_service", "dest": "ratings"}],
                          topology=topology)
        self.assertEqual(recipe.edges, (Edge(S("reviews"), S("ratings")),
                                        Edge(S("gateway"), S("productpage"))))


class PatternTests(RecipeTestsMixin, SynchronousTestCase):
    """The test header and its pattern."""

    def setUp(self):
        self.recipe = bookinfo([{"scenario": "abort_requests", "source": "reviews",
                                 "dest": "ratings"}])

    def headers(self, header, pattern):
        rules = fault_rules(self.recipe, "r1", header=header, pattern=pattern)
        validate_rules({"rules": rules})
        self.assertEqual(rules[0], rule(10, "reviews", "ratings", [abort(503)],
                                        headers=rules[0]["match"]["headers"]))
        self.assertTrue(all(r["match"]["headers"] == rules[0]["match"]["headers"]
                            for r in rules))
        return rules[0]["match"]["headers"]

    def test_prefix(self):
        """A literal prefix: regular-expression characters are escaped."""
        self.assertEqual(self.headers("X-Request-ID", "t.1+(x)"),
                         {"X-Request-ID": r"^t\.1\+\(x\)"})
        self.assertEqual(self.headers("X-Request-ID", None), HEADERS)

    def test_glob(self):
        """A trailing * or a lone * is Amalgam8's glob."""
        self.assertEqual(self.headers("X-Request-ID", "test*"), {"X-Request-ID": "^test"})
        self.assertEqual(self.headers("X-Test", "*"), {"X-Test": ".*"})

    def test_cookie(self):
        """name=value is one cookie anywhere in the header."""
        self.assertEqual(self.headers("Cookie", "user=jason"),
                         {"Cookie": "^(.*?; ?)?(user=jason)(;.*)?$"})
        self.assertEqual(self.headers("cookie", "user=*"),
                         {"cookie": "^(.*?; ?)?(user=[^;]*)(;.*)?$"})

    def test_cookie_prefix_refused(self):
        with self.assertRaises(RecipeError) as e:
            fault_rules(self.recipe, "r1", header="Cookie", pattern="user=ja*")
        self.assertEqual(str(e.exception), "pattern 'user=ja*': a Cookie pattern is one "
                         "cookie, name=value (or name=* for any value)")

    def test_bad_header(self):
        with self.assertRaises(RecipeError) as e:
            fault_rules(self.recipe, "r1", header="X Bad")
        self.assertEqual(str(e.exception), "header 'X Bad' with pattern 'gremlin-': bad "
                         "header 'X Bad:^gremlin-': expected NAME:PATTERN, such as X-Foo:bar.*")

    def test_not_text(self):
        with self.assertRaises(RecipeError) as e:
            fault_rules(self.recipe, "r1", header=None, pattern=3)
        self.assertEqual(str(e.exception), "header None with pattern 3: both must be text")

    def test_request_id_prefix(self):
        self.assertEqual(request_id_prefix("X-Request-ID", None), "gremlin-")
        self.assertEqual(request_id_prefix("x-request-id", "t-"), "t-")
        self.assertEqual(request_id_prefix("X-Request-ID", "t-*"), "t-")
        self.assertEqual(request_id_prefix("Cookie", "user=jason"), "gremlin-")

    def test_header_value(self):
        self.assertIsNone(header_value("X-Request-ID", "t-"))
        self.assertEqual(header_value("Cookie", "user=jason"), "user=jason")
        self.assertEqual(header_value("X-Test", "yes*"), "yes")
        self.assertEqual(header_value("X-Test", None), "gremlin-")

    def test_header_value_refused(self):
        for header, pattern in (("X-Test", "*"), ("Cookie", "user=*"), ("Cookie", "user"),
                                ("X-Test", "a\nb"), ("X-Test", " a")):
            with self.assertRaises(RecipeError) as e:
                header_value(header, pattern)
            self.assertIn("not a value the load generator can send", str(e.exception))


class ParameterTests(RecipeTestsMixin, SynchronousTestCase):
    """Parameter values: durations, statuses, services, defaults."""

    def check(self, **args):
        entry = dict({"source": "gateway", "dest": "productpage"}, **args)
        recipe = parse_recipe(BOOKINFO_TOPOLOGY, BOOKINFO_SCENARIOS, {"checks": [entry]})
        return recipe.checks[0].args

    def test_durations(self):
        for text, seconds in (("7s", 7.0), ("1s500ms", 1.5), ("100ms", 0.1), (2, 2.0),
                              ("0.25", 0.25)):
            self.assertEqual(self.check(name="bounded_response_time", max_latency=text),
                             {"max_latency": seconds})

    def test_status(self):
        self.assertEqual(self.check(name="http_status", status=200),
                         {"status": frozenset({200})})
        self.assertEqual(self.check(name="http_status", status=[200, 302]),
                         {"status": frozenset({200, 302})})

    def test_defaults(self):
        self.assertEqual(self.check(name="bounded_retries", retries=3),
                         {"retries": 3, "wait_time": None, "errdelta": 0.01,
                          "by_uri": False})
        self.assertEqual(self.check(name="circuit_breaker", closed_attempts=3,
                                    reset_time="5s"),
                         {"closed_attempts": 3, "reset_time": 5.0, "halfopen_attempts": 1,
                          "errdelta": 0.01})

    def test_services(self):
        recipe = parse_recipe(BOOKINFO_TOPOLOGY, BOOKINFO_SCENARIOS, {"checks": [
            {"name": "bulkhead", "source": "productpage", "dependencies": [
                "reviews", "details"], "slow_dest": "reviews:v2", "rate": 10},
            {"name": "no_proxy_errors"}]})
        self.assertEqual(recipe.checks, (
            Check("bulkhead", S("productpage"), None, {
                "dependencies": (S("reviews"), S("details")), "slow_dest": S("reviews:v2"),
                "rate": 10.0}, 0),
            Check("no_proxy_errors", None, None, {}, 1)))


class ErrorTests(RecipeTestsMixin, SynchronousTestCase):
    """Bad recipes: one line naming the file, the entry and the field."""

    def scenario(self, message, **entry):
        self.assertError(message, scenarios={"gremlins": [dict(
            {"scenario": "delay_requests", "source": "reviews", "dest": "ratings"},
            **entry)]})

    def check(self, message, **entry):
        self.assertError(message, checks={"checks": [BOOKINFO_CHECKS["checks"][0], dict(
            {"source": "gateway", "dest": "productpage"}, **entry)]})

    def test_bad_duration(self):
        self.scenario("scenarios.json: gremlins[0] (delay_requests): delaytime: not a "
                      "duration: 'soon'", delaytime="soon")
        self.scenario("scenarios.json: gremlins[0] (delay_requests): delaytime: must be "
                      "above 0 and at most 3600 s, not 0 s", delaytime=0)
        self.scenario("scenarios.json: gremlins[0] (delay_requests): delaytime: not a "
                      "duration: " + "1" + "0" * 56 + "...", delaytime=10 ** 400)

    def test_bad_scenario_values(self):
        self.scenario("scenarios.json: gremlins[0] (delay_requests): delayprobability: must "
                      "be a probability above 0 and at most 1, not 1.5",
                      delayprobability=1.5)
        self.scenario("scenarios.json: gremlins[0] (delay_requests): delayprobability: must "
                      "be a number, not True", delayprobability=True)
        self.scenario("scenarios.json: gremlins[0] (delay_requests): distribution: must be "
                      "one of uniform, exponential, normal, not 'pareto'",
                      distribution="pareto")
        self.scenario("scenarios.json: gremlins[0] (delay_requests): stddev: only a normal "
                      "distribution takes a stddev", stddev=1)
        self.scenario("scenarios.json: gremlins[0] (abort_requests): errorcode: must be an "
                      "abort code: an HTTP status 100-599, or -1 to -5 for a reset "
                      "connection, not 42", scenario="abort_requests", errorcode=42)
        self.scenario("scenarios.json: gremlins[0] (delay_requests): errorcode: unknown "
                      "parameter (known: delayprobability, delaytime, dest, distribution, "
                      "source, stddev)", errorcode=500)

    def test_unknown_scenario(self):
        self.scenario("scenarios.json: gremlins[0]: scenario: unknown scenario 'slow' "
                      "(known: abort_requests, abort_responses, crash_service, "
                      "delay_requests, delay_responses, overload_service, "
                      "partition_services)", scenario="slow")
        self.assertError("scenarios.json: gremlins[0]: scenario: missing",
                         scenarios={"gremlins": [{"source": "reviews"}]})

    def test_unknown_service(self):
        self.scenario("scenarios.json: gremlins[0] (delay_requests): dest: 'rating' is not "
                      "a service of the topology (known: details, gateway, productpage, "
                      "ratings, reviews)", dest="rating")
        self.scenario("scenarios.json: gremlins[0] (delay_requests): source: must be a "
                      "service name such as 'reviews' or 'reviews:v2'", source=7)

    def test_no_edge(self):
        self.scenario("scenarios.json: gremlins[0] (delay_requests): no edge of the "
                      "topology from ratings into reviews", source="ratings", dest="reviews")
        self.assertError("scenarios.json: gremlins: the scenarios expand to no edge of the "
                         "topology", scenarios={"gremlins": []})

    def test_needs_dest(self):
        self.scenario("scenarios.json: gremlins[0] (crash_service): dest: missing "
                      "(crash_service faults the calls into dest)",
                      scenario="crash_service", dest=None)

    def test_unknown_check(self):
        self.check("checks.json: checks[1]: name: unknown check 'bounded_latency' (known: "
                   "at_most_requests, bounded_response_time, bounded_retries, bulkhead, "
                   "circuit_breaker, http_status, no_proxy_errors)", name="bounded_latency")

    def test_bad_check_values(self):
        self.check("checks.json: checks[1] (http_status): status: missing",
                   name="http_status")
        self.check("checks.json: checks[1] (http_status): status: must be an HTTP status or "
                   "a list of them, such as 200 or [200, 302], not ['ok']",
                   name="http_status", status=["ok"])
        self.check("checks.json: checks[1] (http_status): status: must be an HTTP status or "
                   "a list of them, such as 200 or [200, 302], not []",
                   name="http_status", status=[])
        self.check("checks.json: checks[1] (at_most_requests): num_requests: must be a whole "
                   "number 0 or more, not -1", name="at_most_requests", num_requests=-1)
        self.check("checks.json: checks[1] (circuit_breaker): closed_attempts: must be a "
                   "whole number 1 or more, not 0", name="circuit_breaker",
                   closed_attempts=0, reset_time=1)
        self.check("checks.json: checks[1] (at_most_requests): by_uri: must be true or "
                   "false, not 'yes'", name="at_most_requests", num_requests=1,
                   by_uri="yes")
        self.check("checks.json: checks[1] (bulkhead): rate: must be a number of requests "
                   "per second above 0, not 0", name="bulkhead", dependencies=["reviews"],
                   slow_dest="reviews", rate=0)
        self.check("checks.json: checks[1] (bulkhead): dependencies: 'x' is not a service "
                   "of the topology (known: details, gateway, productpage, ratings, "
                   "reviews)", name="bulkhead", dependencies=["x"], slow_dest="reviews",
                   rate=1)
        self.check("checks.json: checks[1] (http_status): dest: missing",
                   name="http_status", status=200, dest=None)

    def test_topology(self):
        self.assertError("topology.json: services[1]: replicas: unknown field (known: "
                         "instances, name, service_proxies)", topology={
                             "services": [{"name": "a"}, {"name": "b", "replicas": 2}]})
        self.assertError("topology.json: services[0]: name: missing",
                         topology={"services": [{}]})
        self.assertError("topology.json: services[1]: name: a is declared twice",
                         topology={"services": [{"name": "a"}, {"name": "a"}]})
        self.assertError("topology.json: services[0]: name: 'a b' is not a service name "
                         "(at most 64 characters, no '/' or space)",
                         topology={"services": [{"name": "a b"}]})
        self.assertError("topology.json: dependencies.a[0]: 'c' is not a service of the "
                         "topology (known: a, b)", topology={
                             "services": [{"name": "a"}, {"name": "b"}],
                             "dependencies": {"a": ["c"]}})
        self.assertError("topology.json: dependencies: c: 'c' is not a service of the "
                         "topology (known: a)", topology={
                             "services": [{"name": "a"}], "dependencies": {"c": ["a"]}})
        self.assertError("topology.json: dependencies.a: must be a list of service names, "
                         "not a string", topology={
                             "services": [{"name": "a"}], "dependencies": {"a": "a"}})
        self.assertError("topology.json: services: the topology declares no service",
                         topology={"services": []})

    def test_top_level(self):
        self.assertError('topology.json: must be an object {"services": [...], '
                         '"dependencies": {...}}, not a list', topology=[])
        self.assertError('scenarios.json: must be an object {"gremlins": [...]}, not null',
                         scenarios=None)
        self.assertError("checks.json: check: unknown field (known: checks)",
                         checks={"check": []})
        self.assertError("checks.json: checks: missing", checks={})
        self.assertError("scenarios.json: gremlins: must be a list, not an object",
                         scenarios={"gremlins": {}})
        self.assertError("scenarios.json: gremlins[0]: must be an object, not a string",
                         scenarios={"gremlins": ["delay_requests"]})


class FileErrorTests(SynchronousTestCase):
    """Files that cannot be read or decoded."""

    def write(self, text, ext=".json"):
        path = self.mktemp() + ext
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertLoadError(self, message, topology=None, scenarios=None, checks=None):
        paths = [p or self.write(json.dumps(d)) for p, d in (
            (topology, BOOKINFO_TOPOLOGY), (scenarios, BOOKINFO_SCENARIOS),
            (checks, BOOKINFO_CHECKS))]
        with self.assertRaises(RecipeError) as e:
            load_recipe(*paths)
        self.assertEqual(str(e.exception), message.format(*paths))

    def test_missing(self):
        path = self.mktemp()
        self.assertLoadError("{0}: cannot read: No such file or directory", topology=path)

    def test_bad_json(self):
        path = self.write('{"gremlins": [\n  {"scenario": }\n]}')
        self.assertLoadError("{1}: line 2: not valid JSON (Expecting value)", scenarios=path)
        path = self.write('{"checks": [NaN]}')
        self.assertLoadError("{2}: not valid JSON (NaN is not a number JSON "
                             "allows)", checks=path)

    def test_bad_yaml(self):
        path = self.write("checks:\n  - name: [\n", ".yaml")
        self.assertLoadError("{2}: line 3: not valid YAML (expected the node content, but "
                             "found '<stream end>')", checks=path)

    def test_not_utf8(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'{"services": "\xff"}')
        self.assertLoadError("{0}: not UTF-8 text (byte 14)", topology=path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["reviews", "ratings:v1", "7s", "100ms"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "scenario", "source", "dest", "delaytime", "status",
                         "errorcode", "services", "dependencies", "gremlins", "checks",
                         "x"]) | st.text(max_size=5), children, max_size=4),
    max_leaves=12)
_names = st.sampled_from(list(SCENARIOS) + ["http_status", "bulkhead", "bogus"])


class FuzzTests(SynchronousTestCase):
    """Random JSON values give a Recipe or a RecipeError, never another exception."""

    def attempt(self, topology, scenarios, checks):
        try:
            recipe = parse_recipe(topology, scenarios, checks)
        except RecipeError as e:
            self.assertNotIn("\n", str(e))
        else:
            validate_rules({"rules": fault_rules(recipe, "r1")})
            max_delay(recipe)

    @settings(max_examples=300, deadline=None)
    @given(_json, _json, _json)
    def test_anything(self, topology, scenarios, checks):
        self.attempt(topology, scenarios, checks)

    @settings(max_examples=300, deadline=None)
    @given(_names, _json, _json, _json, _json)
    def test_entries(self, kind, source, dest, key, value):
        """Entries close to valid ones, so the fuzzing reaches the parameters."""
        entry = {"scenario": kind, "source": source, "dest": dest}
        if isinstance(key, str):
            entry[key] = value
        check = {"name": kind, "source": source, "status": value, "dependencies": value}
        self.attempt(BOOKINFO_TOPOLOGY, {"gremlins": [entry]}, {"checks": [check]})
