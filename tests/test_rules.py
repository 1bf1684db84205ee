"""
Tests for L{amalgam8.rules}: the rule schema (draft 2020-12) and the checks a schema cannot
express, as the controller, a8ctl and Gremlin use them.
"""

import copy
import json
import uuid
from importlib import resources

from jsonschema import Draft202012Validator
from twisted.trial.unittest import SynchronousTestCase

from amalgam8 import rules as rules_module
from amalgam8.errors import InvalidRequest
from amalgam8.rules import (
    DATAPLANE_DEFAULTS,
    PATTERN_ENGINE,
    SCHEMA,
    SCHEMA_BYTES,
    InvalidRule,
    NoRules,
    kind_of,
    pattern_error,
    sort_key,
    weight_in_range,
    validate_rule,
    validate_rules,
    weights_exceed_one,
)


def route(*backends, **extra):
    """A route rule for C{reviews} with C{backends} (default: one tagged v1)."""
    rule = {"destination": "reviews",
            "route": {"backends": list(backends) or [{"tags": ["v1"]}]}}
    rule.update(extra)
    return rule


def actions(*items, **extra):
    """An action rule for C{ratings} with the actions C{items}."""
    rule = {"destination": "ratings", "actions": list(items)}
    rule.update(extra)
    return rule


def delay(**extra):
    item = {"action": "delay", "duration": 1.5}
    item.update(extra)
    return item


# Valid rules, one construct each.
VALID = {
    "minimal route": route(),
    "minimal actions": actions(delay()),
    "id, priority and tags": route(id="rule-1.a:b@c", priority=-5, tags=["recipe", "x"]),
    "priority bounds": route(priority=1000000),
    "weights": route({"tags": ["v1"], "weight": 0.25}, {"tags": ["v2"], "weight": 0.75}),
    "weights summing to one with rounding": route(
        {"tags": ["a"], "weight": 0.1}, {"tags": ["b"], "weight": 0.2},
        {"tags": ["c"], "weight": 0.7}),
    "weight of one": route({"tags": ["v1"], "weight": 1}),
    "unweighted share the rest": route({"tags": ["v1"], "weight": 0.3}, {"tags": ["v2"]},
                                       {"tags": ["v3"]}),
    "several tags": route({"tags": ["v1", "eu", "canary"]}),
    "same tags, other service": route({"tags": ["v1"]}, {"tags": ["v1"], "name": "other"}),
    "backend settings": route({"tags": ["v1"], "name": "reviews-v1", "timeout": 0.5,
                               "retries": 0}),
    "retries at most ten": route({"tags": ["v1"], "retries": 10}),
    "lb round robin": route({"tags": ["v1"], "lb": "round_robin"}),
    "lb random": route({"tags": ["v1"], "lb": "random"}),
    "lb least request": route({"tags": ["v1"], "lb": "least_request"}),
    "outlier ejection": route({"tags": ["v1"], "consecutive_errors": 1,
                               "ejection_time": 0.5}),
    "outlier ejection upper bounds": route({"tags": ["v1"], "consecutive_errors": 1000,
                                            "ejection_time": 3600}),
    "1.x route fields": route(route={"backends": [{"tags": ["v1"]}], "http_req_timeout": 2,
                                     "http_req_retries": 3}),
    "1.x lb_type": route({"tags": ["v1"], "lb_type": "least_request"}),
    "1.x lb_type agreeing with lb": route({"tags": ["v1"], "lb": "random",
                                           "lb_type": "random"}),
    "1.x resilience": route({"tags": ["v1"], "resilience": {
        "max_connections": 1, "max_pending_requests": 2, "max_requests": 3,
        "max_retries": 4, "max_requests_per_connection": 5, "consecutive_errors": 6,
        "sleep_window": 7.5}}),
    "1.x uri": route({"tags": ["v1"], "uri": {"path": "/a", "prefix": "/b",
                                             "prefix_rewrite": "/c"}}),
    "match source": route(match={"source": {"name": "productpage", "tags": ["v1"]}}),
    "match source name only": route(match={"source": {"name": "productpage"}}),
    "match headers": route(match={"headers": {"Cookie": "^(.*?;)?(user=jason)(;.*)?$",
                                              "X-Request-ID": "^test"}}),
    "match all": route(match={"all": [{"headers": {"X-A": "a"}},
                                      {"source": {"name": "b"}}]}),
    "match any": route(match={"any": [{"headers": {"X-A": "a"}, "source": {"name": "b"}}]}),
    "match none": route(match={"none": [{"source": {"tags": ["v2"]}}]}),
    "match everything at once": route(match={
        "source": {"name": "a"}, "headers": {"X-A": "."},
        "all": [{"headers": {"X-B": "b"}}], "any": [{"source": {"name": "c"}}],
        "none": [{"headers": {"X-C": "c"}}]}),
    "empty match": route(match={}),
    "delay with probability and tags": actions(delay(probability=0.0001, tags=["v2"])),
    "delay distributions": actions(delay(distribution="uniform"),
                                   delay(distribution="exponential"),
                                   delay(distribution="fixed")),
    "delay normal with stddev": actions(delay(distribution="normal", stddev=0.25)),
    "delay normal with stddev zero": actions(delay(distribution="normal", stddev=0)),
    "abort": actions({"action": "abort", "return_code": 503, "probability": 1}),
    "abort bounds": actions({"action": "abort", "return_code": 100},
                            {"action": "abort", "return_code": 599}),
    "abort reset": actions({"action": "abort", "return_code": -1},
                           {"action": "abort", "return_code": -5}),
    "trace": actions({"action": "trace", "log_key": "gremlin_recipe_id",
                      "log_value": "r1", "tags": ["v1"]}),
    "trace with empty value": actions({"action": "trace", "log_key": "k",
                                       "log_value": ""}),
    "actions in order": actions(delay(), {"action": "abort", "return_code": 500},
                                {"action": "trace", "log_key": "k", "log_value": "v"}),
    # Python's re refuses these; the proxy's PCRE compiles them, so they are valid.
    "pcre braced hex": route(match={"headers": {"X-A": "\\x{41}"}}),
    "pcre unicode property": route(match={"headers": {"X-A": "^\\p{L}+$"}}),
    "pcre quoting": route(match={"any": [{"headers": {"X-A": "\\Qa(b\\E"}}]}),
    "pcre utf mode": route(match={"headers": {"X-A": "(*UTF8)\\x{100}"}}),
    "matched actions": actions(delay(), match={"headers": {"X-Request-ID": "^abc"}},
                               priority=10),
    "unicode": route({"tags": ["\u00e9t\u00e9"]}, destination="r\u00e9views",
                     tags=["\U0001f600"]),
}


# (rule, the error message's start, words it contains)
INVALID = {
    "not an object": (["x"], "rule 4: (rule):", ["object"]),
    "unknown field": (route(priorty=1), "rule 4: (rule):", ["priorty"]),
    "missing destination": ({"route": {"backends": [{"tags": ["v1"]}]}},
                            "rule 4: (rule):", ["destination"]),
    "destination with space": (route(destination="a b"), "rule 4: destination:", []),
    "destination too long": (route(destination="d" * 65), "rule 4: destination:", []),
    "neither route nor actions": ({"destination": "d"}, "rule 4: (rule):",
                                  ["exactly one of route or actions"]),
    "both route and actions": (dict(route(), actions=[delay()]), "rule 4: (rule):",
                               ["exactly one of route or actions"]),
    "empty id": (route(id=""), "rule 4: id:", []),
    "id with slash": (route(id="a/b"), "rule 4: id:", []),
    "priority a float": (route(priority=1.5), "rule 4: priority:", []),
    "priority too big": (route(priority=10 ** 7), "rule 4: priority:", []),
    "rule tag empty": (route(tags=[""]), "rule 4: tags[0]:", []),
    "route unknown field": (route(route={"backends": [{"tags": ["v1"]}], "timeout": 1}),
                            "rule 4: route:", ["timeout"]),
    "no backends": (route(route={"backends": []}), "rule 4: route.backends:", []),
    "backends missing": (route(route={}), "rule 4: route:", ["backends"]),
    "backend not an object": (route("v1"), "rule 4: route.backends[0]:", []),
    "backend without tags": (route({"weight": 1}), "rule 4: route.backends[0]:", ["tags"]),
    "backend with no tags": (route({"tags": []}), "rule 4: route.backends[0].tags:", []),
    "backend tags repeated": (route({"tags": ["v1", "v1"]}),
                              "rule 4: route.backends[0].tags:", []),
    "backend tag not a string": (route({"tags": [1]}),
                                 "rule 4: route.backends[0].tags[0]:", []),
    "backend unknown field": (route({"tags": ["v1"], "wieght": 1}),
                              "rule 4: route.backends[0]:", ["wieght"]),
    "weight zero": (route({"tags": ["v1"], "weight": 0}),
                    "rule 4: route.backends[0].weight:", []),
    "weight negative": (route({"tags": ["v1"], "weight": -0.5}),
                        "rule 4: route.backends[0].weight:", []),
    "weight over one": (route({"tags": ["v1"], "weight": 1.5}),
                        "rule 4: route.backends[0].weight:", []),
    "weight a boolean": (route({"tags": ["v1"], "weight": True}),
                         "rule 4: route.backends[0].weight:", []),
    "weights over one": (route({"tags": ["v1"], "weight": 0.6},
                               {"tags": ["v2"], "weight": 0.5}),
                         "rule 4: route.backends:", ["weights add up to 1.1, more than 1"]),
    "same tags twice": (route({"tags": ["v1", "eu"]}, {"tags": ["v2"]},
                              {"tags": ["eu", "v1"]}),
                        "rule 4: route.backends[2].tags:", ["same tags as backend 0"]),
    "timeout zero": (route({"tags": ["v1"], "timeout": 0}),
                     "rule 4: route.backends[0].timeout:", []),
    "retries negative": (route({"tags": ["v1"], "retries": -1}),
                         "rule 4: route.backends[0].retries:", []),
    "retries over ten": (route({"tags": ["v1"], "retries": 11}),
                         "rule 4: route.backends[0].retries:", []),
    "lb unknown": (route({"tags": ["v1"], "lb": "weighted"}),
                   "rule 4: route.backends[0].lb:", ["'weighted' is not one of"]),
    "lb_type unknown": (route({"tags": ["v1"], "lb_type": "weighted"}),
                        "rule 4: route.backends[0].lb_type:", []),
    "lb_type disagreeing": (route({"tags": ["v1"], "lb": "random",
                                   "lb_type": "least_request"}),
                            "rule 4: route.backends[0].lb_type:", ["disagrees with lb"]),
    "consecutive_errors zero": (route({"tags": ["v1"], "consecutive_errors": 0}),
                                "rule 4: route.backends[0].consecutive_errors:", []),
    "consecutive_errors a float": (route({"tags": ["v1"], "consecutive_errors": 2.5}),
                                   "rule 4: route.backends[0].consecutive_errors:", []),
    "ejection_time zero": (route({"tags": ["v1"], "ejection_time": 0}),
                           "rule 4: route.backends[0].ejection_time:", []),
    "ejection_time over an hour": (route({"tags": ["v1"], "ejection_time": 3601}),
                                   "rule 4: route.backends[0].ejection_time:", []),
    "resilience sleep_window zero": (route({"tags": ["v1"],
                                            "resilience": {"sleep_window": 0}}),
                                     "rule 4: route.backends[0].resilience.sleep_window:",
                                     []),
    "resilience unknown": (route({"tags": ["v1"], "resilience": {"x": 1}}),
                           "rule 4: route.backends[0].resilience:", ["x"]),
    "http_req_retries over ten": (route(route={"backends": [{"tags": ["v1"]}],
                                               "http_req_retries": 11}),
                                  "rule 4: route.http_req_retries:", []),
    "uri unknown": (route({"tags": ["v1"], "uri": {"regex": "x"}}),
                    "rule 4: route.backends[0].uri:", ["regex"]),
    "no actions": (actions(), "rule 4: actions:", []),
    "action not an object": (actions("delay"), "rule 4: actions[0]:", []),
    "action unknown": (actions({"action": "explode"}), "rule 4: actions[0].action:",
                       ["'explode' is not one of delay, abort, trace"]),
    "action missing": (actions({"duration": 1}), "rule 4: actions[0]:", ["action"]),
    "delay without duration": (actions({"action": "delay"}), "rule 4: actions[0]:",
                               ["duration"]),
    "delay negative": (actions(delay(duration=-1)), "rule 4: actions[0].duration:", []),
    "delay zero": (actions(delay(duration=0)), "rule 4: actions[0].duration:", []),
    "delay a string": (actions(delay(duration="1s")), "rule 4: actions[0].duration:", []),
    "delay unknown field": (actions(delay(jitter=1)), "rule 4: actions[0]:", ["jitter"]),
    "distribution unknown": (actions(delay(distribution="pareto")),
                             "rule 4: actions[0].distribution:", []),
    "stddev without distribution": (actions(delay(stddev=0.1)),
                                    "rule 4: actions[0].stddev:",
                                    ["only a normal distribution takes a stddev"]),
    "stddev with uniform": (actions(delay(), delay(distribution="uniform", stddev=0.1)),
                            "rule 4: actions[1].stddev:", []),
    "stddev negative": (actions(delay(distribution="normal", stddev=-1)),
                        "rule 4: actions[0].stddev:", []),
    "probability zero": (actions(delay(probability=0)), "rule 4: actions[0].probability:",
                         []),
    "probability over one": (actions(delay(probability=1.01)),
                             "rule 4: actions[0].probability:", []),
    "abort without code": (actions({"action": "abort"}), "rule 4: actions[0]:",
                           ["return_code"]),
    "abort 42": (actions({"action": "abort", "return_code": 42}),
                 "rule 4: actions[0].return_code:", ["100-599"]),
    "abort 0": (actions({"action": "abort", "return_code": 0}),
                "rule 4: actions[0].return_code:", []),
    "abort 600": (actions({"action": "abort", "return_code": 600}),
                  "rule 4: actions[0].return_code:", []),
    "abort -6": (actions({"action": "abort", "return_code": -6}),
                 "rule 4: actions[0].return_code:", []),
    "abort with a duration": (actions({"action": "abort", "return_code": 503,
                                       "duration": 1}), "rule 4: actions[0]:", ["duration"]),
    "trace without key": (actions({"action": "trace", "log_value": "v"}),
                          "rule 4: actions[0]:", ["log_key"]),
    "trace empty key": (actions({"action": "trace", "log_key": "", "log_value": "v"}),
                        "rule 4: actions[0].log_key:", []),
    "match unknown field": (route(match={"cookie": "a"}), "rule 4: match:", ["cookie"]),
    "match source unknown field": (route(match={"source": {"version": "v1"}}),
                                   "rule 4: match.source:", ["version"]),
    "header name with space": (route(match={"headers": {"X A": "a"}}),
                               "rule 4: match.headers:", []),
    "header name with colon": (route(match={"headers": {"X-A:": "a"}}),
                               "rule 4: match.headers:", []),
    "header pattern a number": (route(match={"headers": {"X-A": 1}}),
                                "rule 4: match.headers.X-A:", []),
    "bad regex": (route(match={"headers": {"X-A": "(unclosed"}}),
                  "rule 4: match.headers.X-A:", ["not a valid regular expression"]),
    # Python's re takes these; the proxy's PCRE does not (issue 9: \u0041 froze every proxy).
    "javascript unicode escape": (route(match={"headers": {"X-A": "\\u0041"}}),
                                  "rule 4: match.headers.X-A:",
                                  ["not a valid regular expression", "PCRE", "\\u"]),
    "javascript unicode escape in a combinator": (
        route(match={"none": [{"headers": {"X-A": "a"}}, {"headers": {"X-B": "x\\u0041"}}]}),
        "rule 4: match.none[1].headers.X-B:", ["not a valid regular expression"]),
    "python named group": (route(match={"all": [{"headers": {"X-A": "(?P=n)"}}]}),
                           "rule 4: match.all[0].headers.X-A:",
                           ["not a valid regular expression"]),
    "variable lookbehind": (route(match={"any": [{"headers": {"X-A": "(?<=a+)b"}}]}),
                            "rule 4: match.any[0].headers.X-A:",
                            ["not a valid regular expression"]),
    "code point in byte mode": (route(match={"headers": {"X-A": "\\x{100}"}}),
                                "rule 4: match.headers.X-A:", ["too large"]),
    "lone surrogate": (route(match={"headers": {"X-A": "\ud800"}}),
                       "rule 4: match.headers.X-A:", ["not valid Unicode"]),
    "regex repeat too large": (route(match={"headers": {"X-A": "a{99999999999}"}}),
                               "rule 4: match.headers.X-A:",
                               ["not a valid regular expression"]),
    "bad regex in all": (route(match={"all": [{"headers": {"X-A": "["}}]}),
                         "rule 4: match.all[0].headers.X-A:",
                         ["not a valid regular expression"]),
    "bad regex in none": (route(match={"none": [{"source": {"name": "a"}},
                                                {"headers": {"X-B": "*"}}]}),
                          "rule 4: match.none[1].headers.X-B:",
                          ["not a valid regular expression"]),
    "combinator in combinator": (route(match={"any": [{"all": [{"headers": {"a": "b"}}]}]}),
                                 "rule 4: match.any[0]:", ["all"]),
    "none in all": (route(match={"all": [{"source": {"name": "a"}, "none": []}]}),
                    "rule 4: match.all[0]:", ["none"]),
    "empty combinator": (route(match={"all": []}), "rule 4: match.all:", []),
    "empty condition": (route(match={"any": [{}]}), "rule 4: match.any[0]:", []),
    "combinator not a list": (route(match={"all": {"headers": {"a": "b"}}}),
                              "rule 4: match.all:", []),
}


class ValidRuleTests(SynchronousTestCase):
    """validate_rule accepts every construct of the format."""

    def test_valid(self):
        """Each valid example passes and is left unchanged."""
        for name, rule in VALID.items():
            before = copy.deepcopy(rule)
            try:
                validate_rule(rule, 0)
            except InvalidRule as e:
                self.fail("{}: {}".format(name, e.message))
            self.assertEqual(rule, before, name)

    def test_valid_against_schema_file(self):
        """Each valid example also passes the schema file alone, as any client would
        check it."""
        validator = Draft202012Validator(SCHEMA)
        for name, rule in VALID.items():
            self.assertEqual(list(validator.iter_errors(rule)), [], name)

    def test_schema_file(self):
        """SCHEMA is the package's rule.json, a valid draft 2020-12 schema."""
        raw = resources.files("amalgam8.schemas").joinpath("rule.json").read_bytes()
        self.assertEqual(SCHEMA_BYTES, raw)
        self.assertEqual(SCHEMA, json.loads(raw))
        self.assertEqual(SCHEMA["$schema"], "https://json-schema.org/draft/2020-12/schema")
        Draft202012Validator.check_schema(SCHEMA)


class InvalidRuleTests(SynchronousTestCase):
    """validate_rule refuses each problem, naming the rule index and field path."""

    def test_invalid(self):
        """Each invalid example raises InvalidRule whose message starts with
        "rule <index>: <path>:" and names the problem."""
        for name, (rule, start, words) in INVALID.items():
            error = self.assertRaises(InvalidRule, validate_rule, rule, 4)
            message = error.message
            self.assertTrue(message.startswith(start),
                            "{}: {!r} does not start with {!r}".format(name, message, start))
            for word in words:
                self.assertIn(word, message, name)
            self.assertEqual(error.error_id, "error_invalid_rule")
            self.assertEqual(error.status, 400)
            self.assertNotIn("\n", message, name)

    def test_index_default(self):
        """Without an index the message names rule 0."""
        error = self.assertRaises(InvalidRule, validate_rule, {"destination": "d"})
        self.assertTrue(error.message.startswith("rule 0: "))

    def test_deepest_error(self):
        """With several problems, the deepest field is named."""
        rule = route({"tags": ["v1"], "weight": 5}, priorty=1)
        error = self.assertRaises(InvalidRule, validate_rule, rule, 0)
        self.assertIn("route.backends[0].weight", error.message)


class ValidateRulesTests(SynchronousTestCase):
    """validate_rules checks a request body as a whole."""

    def test_ids_assigned(self):
        """Rules without an id get a fresh UUID; given ids are kept; the input is not
        changed."""
        body = {"rules": [route(), route(id="mine"), actions(delay())]}
        before = copy.deepcopy(body)
        rules = validate_rules(body)
        self.assertEqual(body, before)
        self.assertEqual(rules[1], route(id="mine"))
        for rule in (rules[0], rules[2]):
            self.assertEqual(str(uuid.UUID(rule["id"])), rule["id"])
        self.assertNotEqual(rules[0]["id"], rules[2]["id"])
        self.assertEqual({k: v for k, v in rules[0].items() if k != "id"}, route())

    def test_no_assign(self):
        """With assign_ids=False, rules keep having no id."""
        self.assertEqual(validate_rules({"rules": [route()]}, assign_ids=False), [route()])

    def test_require_id(self):
        """With require_id, a rule without an id is refused, naming it."""
        error = self.assertRaises(InvalidRule, validate_rules,
                                  {"rules": [route(id="a"), route()]}, require_id=True)
        self.assertTrue(error.message.startswith("rule 1: id:"))

    def test_id_twice(self):
        """The same id twice in one body is refused, naming the second."""
        error = self.assertRaises(InvalidRule, validate_rules,
                                  {"rules": [route(id="a"), route(), actions(delay(), id="a")]})
        self.assertTrue(error.message.startswith("rule 2: id:"))
        self.assertIn("given twice", error.message)

    def test_index_in_batch(self):
        """The message names the index of the bad rule in the batch."""
        error = self.assertRaises(InvalidRule, validate_rules, {"rules": [
            route(), route(), actions({"action": "abort", "return_code": 42})]})
        self.assertTrue(error.message.startswith("rule 2: actions[0].return_code:"))

    def test_no_rules(self):
        """An empty list raises NoRules (error_no_rules_provided)."""
        error = self.assertRaises(NoRules, validate_rules, {"rules": []})
        self.assertEqual((error.error_id, error.status), ("error_no_rules_provided", 400))

    def test_not_a_body(self):
        """Anything but {"rules": [...]} is refused as a bad request."""
        for body in (None, [], "rules", 1, {}, {"rules": None}, {"rules": {}},
                     {"rules": "x"}):
            error = self.assertRaises(InvalidRequest, validate_rules, body)
            self.assertEqual(error.error_id, "error_bad_request", body)

    def test_unknown_body_field(self):
        """An unknown field beside rules is refused, named."""
        error = self.assertRaises(InvalidRequest, validate_rules,
                                  {"rules": [route()], "revision": 3})
        self.assertIn("revision", error.message)


class HelperTests(SynchronousTestCase):
    """kind_of and sort_key."""

    def test_kind_of(self):
        """A rule is a route or an action rule."""
        self.assertEqual(kind_of(route()), "route")
        self.assertEqual(kind_of(actions(delay())), "action")

    def test_sort_key(self):
        """Priority descending (absent means 0), then id."""
        rules = [route(id="b"), route(id="a", priority=1), route(id="c", priority=-1),
                 route(id="a0"), route(id="z", priority=1)]
        self.assertEqual([r["id"] for r in sorted(rules, key=sort_key)],
                         ["a", "z", "a0", "b", "c"])


class PatternTests(SynchronousTestCase):
    """Header patterns are checked by the proxy's own regular-expression library."""

    def test_engine(self):
        """The engine is the PCRE 8.x library lua-nginx-module links (libpcre.so.3)."""
        self.assertEqual(PATTERN_ENGINE.name, "PCRE")
        self.assertTrue(PATTERN_ENGINE.version.startswith("8."), PATTERN_ENGINE.version)

    def test_pattern_error(self):
        """pattern_error answers None for a pattern the proxy compiles, else why not."""
        self.assertIsNone(pattern_error("^(.*?;)?(user=jason)(;.*)?$"))
        self.assertIsNone(pattern_error("a++b"))
        message = pattern_error("\\u0041")
        self.assertIn("not a valid regular expression for the proxy (PCRE 8.", message)
        self.assertIn("at offset 1", message)
        self.assertIn("missing )", pattern_error("(a"))

    def test_nul_ends_pattern(self):
        """Like the proxy (which hands PCRE the Lua string), a NUL ends the pattern."""
        self.assertIsNone(pattern_error("a\x00("))
        self.assertIsNotNone(pattern_error("(\x00)"))


class DataplaneDefaultsTests(SynchronousTestCase):
    """The data plane's defaults come from schemas/dataplane.json."""

    def test_file(self):
        """DATAPLANE_DEFAULTS is the package's dataplane.json, with every key the proxy's
        configuration and the Lua read."""
        raw = resources.files("amalgam8.schemas").joinpath("dataplane.json").read_bytes()
        self.assertEqual(DATAPLANE_DEFAULTS, json.loads(raw))
        self.assertEqual(set(DATAPLANE_DEFAULTS), {
            "lb", "retries_max", "connect_timeout", "consecutive_errors", "ejection_time",
            "max_ejected_fraction", "retry_budget_ratio", "retry_budget_floor",
            "retry_budget_window"})
        self.assertIn(DATAPLANE_DEFAULTS["lb"], SCHEMA["$defs"]["lb"]["enum"])

    def test_retries_limited_by_retries_max(self):
        """retries and http_req_retries may not exceed retries_max, whatever it is."""
        limit = DATAPLANE_DEFAULTS["retries_max"]
        validate_rule(route({"tags": ["v1"], "retries": limit}))
        error = self.assertRaises(InvalidRule, validate_rule,
                                  route({"tags": ["v1"], "retries": limit + 1}), 2)
        self.assertEqual(error.message, "rule 2: route.backends[0].retries: at most {}"
                         .format(limit))
        self.patch(rules_module, "DATAPLANE_DEFAULTS", dict(DATAPLANE_DEFAULTS, retries_max=2))
        self.assertRaises(InvalidRule, validate_rule, route({"tags": ["v1"], "retries": 3}))
        error = self.assertRaises(InvalidRule, validate_rule, route(
            route={"backends": [{"tags": ["v1"]}], "http_req_retries": 3}))
        self.assertEqual(error.message, "rule 0: route.http_req_retries: at most 2")

    def test_weight_slack(self):
        """Weights may add up to 1 plus rounding (WEIGHT_SLACK), no more."""
        self.assertFalse(weights_exceed_one(0.1 + 0.2 + 0.7))
        self.assertFalse(weights_exceed_one(1 + rules_module.WEIGHT_SLACK))
        self.assertTrue(weights_exceed_one(1 + 2 * rules_module.WEIGHT_SLACK))

    def test_weight_range(self):
        """One backend's weight: above 0 and at most 1 (SPEC A3), as the schema says."""
        self.assertEqual([weight_in_range(w) for w in (0, 1e-12, 0.5, 1, 1.0000001, -1)],
                         [False, True, True, True, False, False])
