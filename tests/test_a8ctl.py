"""
Tests for L{amalgam8.cli}: every a8ctl command run in-process through L{dispatch} against
the real registry and controller APIs (in memory, through StubTreq) on a Clock.
"""

import json
import os
import re
from io import StringIO

import yaml
from hyperlink import DecodedURL
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

import amalgam8
from amalgam8.auth import Authenticator
from amalgam8.cli import dispatch
from amalgam8.cli.output import table
from amalgam8.cli.selectors import BadSyntax, describe_routes, parse_selector, route_rules
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.store import MemoryStore as RuleStore
from amalgam8.registry.api import RegistryAPI
from amalgam8.registry.store import MemoryStore as InstanceStore
from amalgam8.testing.controller import action_rule, route_rule

COOKIE_JASON = "^(.*?; ?)?(user=jason)(;.*)?$"


class Hosts:
    """
    A treq-like HTTP client that hands each request to the client of its URL's host, so
    that one client reaches both in-memory servers.
    """

    def __init__(self, **by_host):
        self.by_host = by_host
        self.requests = []

    def request(self, method, url, **kwargs):
        self.requests.append((method, url))
        return self.by_host[DecodedURL.from_text(url).host].request(method, url, **kwargs)

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)


class Refusing:
    """A treq-like HTTP client whose every connection is refused."""

    def request(self, method, url, **kwargs):
        return fail(ConnectionRefusedError("Connection refused"))


class A8ctlTestCase(SynchronousTestCase):
    """Servers in memory and a way to run a8ctl against them."""

    modes = ("default",)

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        auth = Authenticator(modes=self.modes, clock=self.clock)
        self.instances = InstanceStore(clock=self.clock)
        self.instances.startService()
        self.addCleanup(self.instances.stopService)
        self.rules = RuleStore()
        self.registry_http = StubTreq(RegistryAPI(self.instances, auth, self.clock).resource())
        self.controller_http = StubTreq(ControllerAPI(self.rules, auth, self.clock).resource())
        self.http = Hosts(registry=self.registry_http, controller=self.controller_http)
        self.environ = {"A8_CONTROLLER_URL": "http://controller",
                        "A8_REGISTRY_URL": "http://registry"}

    def assertNoTimers(self):
        """Nothing of a8ctl's is left on the clock (the registry store's sweep is)."""
        self.assertEqual([c for c in self.clock.getDelayedCalls()
                          if "MemoryStore" not in repr(c)], [])

    def flush(self):
        for _ in range(5):
            self.registry_http.flush()
            self.controller_http.flush()

    def start(self, *argv, http=None, stdin=None, environ=None):
        """Start a8ctl; return its Deferred exit status and its two streams."""
        out, err = StringIO(), StringIO()
        d = Deferred.fromCoroutine(dispatch(
            self.clock, list(argv), out, err, http or self.http,
            environ=self.environ if environ is None else environ, stdin=stdin))
        self.flush()
        return d, out, err

    def a8ctl(self, *argv, **kwargs):
        """Run a8ctl to the end: C{(exit status, stdout, stderr)}."""
        d, out, err = self.start(*argv, **kwargs)
        code = self.successResultOf(d)
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv, **kwargs):
        """Run a8ctl, which must succeed; its stdout."""
        code, out, err = self.a8ctl(*argv, **kwargs)
        self.assertEqual((code, err), (0, ""))
        return out

    def fails(self, *argv, **kwargs):
        """Run a8ctl, which must fail with one line on stderr; that line."""
        code, out, err = self.a8ctl(*argv, **kwargs)
        self.assertEqual(code, 1, (out, err))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("a8ctl"), err)
        self.assertNotIn("Traceback", err)
        return err.rstrip("\n")

    # -- server state ------------------------------------------------------------------------

    def register(self, service="reviews", tags=("v1",), value="10.0.0.1:80", status=None):
        body = {"service_name": service, "endpoint": {"type": "http", "value": value},
                "tags": list(tags)}
        if status:
            body["status"] = status
        response = self.successResultOf(self.registry_http.post(
            "http://registry/api/v1/instances", json=body))
        self.assertEqual(response.code, 201)

    def add_rules(self, *rules):
        response = self.successResultOf(self.controller_http.post(
            "http://controller/v1/rules", json={"rules": list(rules)}))
        self.assertEqual(response.code, 201)

    def get(self, path):
        response = self.successResultOf(self.controller_http.get("http://controller" + path))
        return json.loads(self.successResultOf(response.content()))

    def server_rules(self, **filters):
        query = "&".join("{}={}".format(k, v) for k, v in filters.items())
        return self.get("/v1/rules" + ("?" + query if query else ""))["rules"]

    def routes(self, service="reviews"):
        rules = self.get("/v1/rules/routes/" + service)["rules"]
        for rule in rules:
            del rule["id"]
        return rules

    def report(self, proxy_id, revision, rejected=None):
        body = {"service": "productpage", "tags": ["v1"], "revision": revision}
        if rejected is not None:
            body["rejected"] = rejected
        response = self.successResultOf(self.controller_http.put(
            "http://controller/v1/proxies/" + proxy_id, json=body))
        self.assertEqual(response.code, 200)

    def revision(self):
        return self.get("/v1/rules/status")["revision"]


class ServiceListTests(A8ctlTestCase):
    def test_table(self):
        """service-list prints each service with its versions and instance counts."""
        self.register("reviews", ["v1"], "10.0.0.1:80")
        self.register("reviews", ["v1"], "10.0.0.2:80")
        self.register("reviews", ["v2"], "10.0.0.3:80")
        self.register("ratings", [], "10.0.0.4:80")
        out = self.ok("service-list")
        self.assertEqual(out, "\n".join([
            "+---------+---------------+",
            "| Service | Instances     |",
            "+---------+---------------+",
            "| ratings | -untagged-(1) |",
            "| reviews | v1(2), v2(1)  |",
            "+---------+---------------+",
        ]) + "\n")

    def test_json(self):
        """service-list --json gives the counts by version and status."""
        self.register("reviews", ["v1"], "10.0.0.1:80")
        self.register("reviews", ["v2"], "10.0.0.3:80", status="STARTING")
        out = self.ok("service-list", "--json")
        self.assertEqual(json.loads(out), [{
            "service": "reviews",
            "instances": ["v1(1)", "v2(0, 1 STARTING)"],
            "versions": {"v1": {"UP": 1}, "v2": {"STARTING": 1}},
        }])

    def test_empty(self):
        """With no service, the table has only its header."""
        self.assertEqual(self.ok("service-list").count("\n"), 4)

    def test_global_option_before_command(self):
        """Global options work before the command as well as after it."""
        self.register()
        self.assertEqual(json.loads(self.ok("--json", "service-list"))[0]["service"],
                         "reviews")
        self.assertEqual(yaml.safe_load(self.ok("-o", "yaml", "service-list"))[0]["service"],
                         "reviews")

    def test_url_option_beats_environment(self):
        """--a8-registry-url is used over A8_REGISTRY_URL."""
        self.register()
        self.http.by_host["elsewhere"] = self.registry_http
        self.ok("--a8-registry-url", "http://elsewhere", "service-list")
        self.assertIn(("GET", "http://elsewhere/api/v1/services"), self.http.requests)
        self.assertNotIn(("GET", "http://registry/api/v1/services"), self.http.requests)


class RouteTests(A8ctlTestCase):
    def test_set_builds_rules(self):
        """
        route-set makes one rule per header or user selector, the first given with the
        highest priority, above a weighted rule whose default backend is unweighted.
        """
        out = self.ok("route-set", "reviews", "--default", "v1",
                      "--selector", "v2(weight=0.25)",
                      "--selector", 'v3(user="jason")',
                      "--selector", 'v4(header="X-Foo:bar.*")')
        self.assertEqual(self.routes(), [
            {"destination": "reviews", "priority": 3,
             "match": {"headers": {"Cookie": COOKIE_JASON}},
             "route": {"backends": [{"tags": ["v3"]}]}},
            {"destination": "reviews", "priority": 2,
             "match": {"headers": {"X-Foo": "bar.*"}},
             "route": {"backends": [{"tags": ["v4"]}]}},
            {"destination": "reviews", "priority": 1,
             "route": {"backends": [{"tags": ["v2"], "weight": 0.25}, {"tags": ["v1"]}]}},
        ])
        self.assertEqual(out, 'Set routing rules for reviews: default v1; v3(user="jason"), '
                              'v4(header="X-Foo:bar.*"), v2(weight=0.25)\n')

    def test_user_cookie_pattern(self):
        """The user selector matches that cookie among others, and no other user."""
        pattern = re.compile(COOKIE_JASON)
        for cookie in ("user=jason", "a=1;user=jason", "a=1;user=jason;b=2"):
            self.assertTrue(pattern.search(cookie), cookie)
        for cookie in ("user=jasonx", "myuser=jason", "a=user=jason"):
            self.assertFalse(pattern.search(cookie), cookie)

    def test_set_with_source(self):
        """
        With --source, the selectors apply to that caller only and an unconditional rule
        sends everyone else to the default.
        """
        self.ok("route-set", "reviews", "--default", "v1", "--source", "productpage:v1",
                "--selector", "v2(weight=0.5)", "--selector", 'v3(user="jason")')
        source = {"name": "productpage", "tags": ["v1"]}
        self.assertEqual(self.routes(), [
            {"destination": "reviews", "priority": 3,
             "match": {"headers": {"Cookie": COOKIE_JASON}, "source": source},
             "route": {"backends": [{"tags": ["v3"]}]}},
            {"destination": "reviews", "priority": 2, "match": {"source": source},
             "route": {"backends": [{"tags": ["v2"], "weight": 0.5}, {"tags": ["v1"]}]}},
            {"destination": "reviews", "priority": 1,
             "route": {"backends": [{"tags": ["v1"]}]}},
        ])

    def test_set_combined_selector(self):
        """A selector may combine a user and a weight: a weighted rule for that user."""
        self.ok("route-set", "reviews", "--default", "v1", "--selector",
                'v2,canary(user="jason", weight=0.5)')
        self.assertEqual(self.routes()[0], {
            "destination": "reviews", "priority": 2,
            "match": {"headers": {"Cookie": COOKIE_JASON}},
            "route": {"backends": [{"tags": ["v2", "canary"], "weight": 0.5},
                                   {"tags": ["v1"]}]}})

    def test_set_replaces_routes_only(self):
        """route-set replaces the destination's route rules and leaves the rest alone."""
        self.add_rules(route_rule("old", tags=["v9"]), route_rule("other", "ratings"),
                       action_rule("fault", "reviews"))
        self.ok("route-set", "reviews", "--default", "v1")
        self.assertEqual(self.routes(), [{"destination": "reviews", "priority": 1,
                                          "route": {"backends": [{"tags": ["v1"]}]}}])
        self.assertEqual(sorted(r["id"] for r in self.server_rules()
                                if r["id"] in ("old", "other", "fault")),
                         ["fault", "other"])

    def test_set_json(self):
        """route-set --json gives the ids, the revision and the rules."""
        data = json.loads(self.ok("route-set", "reviews", "--default", "v1", "--json"))
        self.assertEqual(data["revision"], 1)
        self.assertEqual(len(data["ids"]), 1)
        self.assertEqual(data["rules"][0]["id"], data["ids"][0])

    def test_bad_selectors(self):
        """Every malformed selector is one line naming it, exit 1, and no change."""
        cases = {
            "v2": "expected TAGS(weight=W)",
            "v2(weight=2)": "weight must be a number above 0 and at most 1",
            "v2(weight=x)": "weight must be",
            "v2(foo=1)": "unknown key 'foo'",
            "v2()": "give a weight, a user or a header",
            "(weight=0.5)": "bad version",
            'v2(header="nocolon")': "expected NAME:PATTERN",
            'v2(header="X-A:(")': "not a valid regular expression",
            'v2(user="a;b")': "user must be a cookie value",
            'v2(user="jason)': "unterminated quote",
            "v1(weight=0.5)": "version v1 is the default already",
        }
        for selector, message in cases.items():
            line = self.fails("route-set", "reviews", "--default", "v1",
                              "--selector", selector)
            self.assertIn(message, line, selector)
            self.assertIn(repr(selector), line)
        self.assertEqual(self.server_rules(), [])

    def test_weights_over_one(self):
        """Weights adding up to more than 1 are refused before anything is sent."""
        line = self.fails("route-set", "reviews", "--default", "v1",
                          "--selector", "v2(weight=0.6)", "--selector", "v3(weight=0.6)")
        self.assertEqual(line, "a8ctl: the weights of the selectors add up to 1.2, more "
                               "than 1")
        self.assertEqual(self.http.requests, [])

    def test_default_required(self):
        """route-set without --default is a usage error: one line, exit 1."""
        line = self.fails("route-set", "reviews")
        self.assertIn("--default", line)

    def test_list(self):
        """route-list shows every service's default and selectors, registered or not."""
        self.register("ratings", ["v1"])
        self.ok("route-set", "reviews", "--default", "v1",
                "--selector", "v2(weight=0.25)", "--selector", 'v3(user="jason")')
        out = self.ok("route-list")
        self.assertEqual(out, "\n".join([
            "+---------+-----------------+-----------------------------------+",
            "| Service | Default Version | Version Selectors                 |",
            "+---------+-----------------+-----------------------------------+",
            "| ratings |                 |                                   |",
            '| reviews | v1              | v3(user="jason"), v2(weight=0.25) |',
            "+---------+-----------------+-----------------------------------+",
        ]) + "\n")
        data = json.loads(self.ok("route-list", "--json"))
        self.assertEqual(data, [
            {"service": "ratings", "default": None, "selectors": []},
            {"service": "reviews", "default": "v1",
             "selectors": ['v3(user="jason")', "v2(weight=0.25)"]},
        ])

    def test_delete(self):
        """route-delete removes the route rules; a service without any is an error."""
        self.ok("route-set", "reviews", "--default", "v1")
        self.add_rules(action_rule("fault", "reviews"))
        out = self.ok("route-delete", "reviews")
        self.assertEqual(out, "Deleted routing rules for reviews (1 rule)\n")
        self.assertEqual([r["id"] for r in self.server_rules()], ["fault"])
        self.assertEqual(self.fails("route-delete", "reviews"),
                         "a8ctl: unknown service reviews: it has no route rules")


class ActionTests(A8ctlTestCase):
    def test_add(self):
        """action-add builds one action rule from the source, headers, cookie and actions."""
        out = self.ok("action-add", "--destination", "ratings",
                      "--source", "reviews:v2", "--header", "X-Test:^yes$",
                      "--cookie", "user=jason",
                      "--action", "v1(0.5->delay=7)", "--action", "v1(1->abort=503)",
                      "--priority", "15")
        [rule] = self.server_rules()
        rule_id = rule.pop("id")
        self.assertEqual(rule, {
            "destination": "ratings", "priority": 15,
            "match": {"source": {"name": "reviews", "tags": ["v2"]},
                      "headers": {"X-Test": "^yes$", "Cookie": COOKIE_JASON}},
            "actions": [
                {"action": "delay", "duration": 7, "probability": 0.5, "tags": ["v1"]},
                {"action": "abort", "return_code": 503, "probability": 1, "tags": ["v1"]},
            ]})
        self.assertEqual(out, "Added action rule {} for ratings (priority 15): "
                              "v1(0.5->delay=7), v1(1->abort=503)\n".format(rule_id))

    def test_default_priority(self):
        """Without --priority a rule goes 10 above the destination's highest one."""
        for _ in range(2):
            self.ok("action-add", "--destination", "ratings", "--source", "reviews",
                    "--action", "(1->delay=1.5s)")
        rules = self.server_rules()
        self.assertEqual([r["priority"] for r in rules], [20, 10])
        self.assertEqual(rules[0]["actions"], [
            {"action": "delay", "duration": 1.5, "probability": 1}])

    def test_bad_action(self):
        """A malformed --action, or a rule without a condition, is one line and exit 1."""
        for action, message in (("v1(0.5->delay)", "expected TAGS(PROBABILITY->delay"),
                                ("v1(2->delay=1)", "probability must be"),
                                ("v1(1->abort=42)", "abort code must be"),
                                ("v1(1->explode=1)", "unknown action 'explode'"),
                                ("v1(1->delay=soon)", "the delay must be a duration")):
            line = self.fails("action-add", "--destination", "ratings", "--source",
                              "reviews", "--action", action)
            self.assertIn(message, line)
        self.assertIn("needs at least one of --source, --header or --cookie", self.fails(
            "action-add", "--destination", "ratings", "--action", "v1(1->abort=503)"))
        self.assertIn("bad --header", self.fails(
            "action-add", "--destination", "ratings", "--header", "nocolon",
            "--action", "v1(1->abort=503)"))
        self.assertEqual(self.server_rules(), [])

    def test_list(self):
        """action-list shows each action rule in the --action syntax."""
        self.ok("action-add", "--destination", "ratings", "--source", "reviews:v2",
                "--cookie", "user=jason", "--action", "v1(0.5->delay=7)")
        [added] = self.server_rules()
        self.add_rules({"id": "trace-1", "destination": "details", "priority": 1,
                        "actions": [{"action": "trace", "log_key": "k", "log_value": "v"}]})
        out = self.ok("action-list")
        self.assertEqual(out.splitlines()[1:5], [
            "| Destination | Source     | Headers                              | Priority "
            "| Actions          | Rule Id                              |",
            "+-------------+------------+--------------------------------------+----------"
            "+------------------+--------------------------------------+",
            "| details     |            |                                      | 1        "
            "| (trace=k:v)      | trace-1                              |",
            "| ratings     | reviews:v2 | Cookie:^(.*?; ?)?(user=jason)(;.*)?$ | 10       "
            "| v1(0.5->delay=7) | {} |".format(added["id"]),
        ])
        data = json.loads(self.ok("action-list", "--json"))
        self.assertEqual(data, [
            {"id": "trace-1", "destination": "details", "source": None, "headers": [],
             "priority": 1, "actions": ["(trace=k:v)"]},
            {"id": added["id"], "destination": "ratings", "source": "reviews:v2",
             "headers": ["Cookie:" + COOKIE_JASON], "priority": 10,
             "actions": ["v1(0.5->delay=7)"]},
        ])

    def test_clear_one(self):
        """action-clear --destination deletes that destination's action rules only."""
        self.add_rules(action_rule("a", "ratings"), action_rule("b", "details"),
                       route_rule("r", "ratings"))
        out = self.ok("action-clear", "--destination", "ratings")
        self.assertEqual(out, "Cleared the action rules of ratings (1 rule)\n")
        self.assertEqual(sorted(r["id"] for r in self.server_rules()), ["b", "r"])

    def test_clear_positional(self):
        """action-clear also takes the destination as an argument, as a8ctl 0.3 did."""
        self.add_rules(action_rule("a", "ratings"), action_rule("b", "details"))
        self.ok("action-clear", "ratings")
        self.assertEqual([r["id"] for r in self.server_rules()], ["b"])

    def test_clear_all(self):
        """action-clear deletes every action rule, and says so when there is none."""
        self.add_rules(action_rule("a", "ratings"), action_rule("b", "details"),
                       route_rule("r", "ratings"))
        self.assertEqual(self.ok("action-clear"),
                         "Cleared the action rules of every service (2 rules)\n")
        self.assertEqual([r["id"] for r in self.server_rules()], ["r"])
        self.assertEqual(self.ok("action-clear"),
                         "No action rules to clear for every service\n")


class RuleTests(A8ctlTestCase):
    def write(self, name, content):
        path = os.path.join(self.mktemp() + name)
        with open(path, "w") as f:
            f.write(content)
        return path

    def test_create_json(self):
        """rule-create -f reads a {"rules": [...]} JSON document."""
        path = self.write(".json", json.dumps({"rules": [route_rule("r1"),
                                                         action_rule("a1")]}))
        out = self.ok("rule-create", "-f", path)
        self.assertEqual(out, "Created rules r1, a1\n")
        self.assertEqual(sorted(r["id"] for r in self.server_rules()), ["a1", "r1"])

    def test_create_yaml_list(self):
        """rule-create -f reads a YAML list of rules; --json gives the ids and revision."""
        path = self.write(".yaml", yaml.safe_dump([
            {"destination": "reviews", "route": {"backends": [{"tags": ["v1"]}]}}]))
        data = json.loads(self.ok("rule-create", "-f", path, "--json"))
        self.assertEqual(data["revision"], 1)
        self.assertEqual([r["id"] for r in self.server_rules()], data["ids"])

    def test_create_stdin(self):
        """rule-create -f - reads one rule from stdin."""
        self.ok("rule-create", "-f", "-",
                stdin=StringIO("destination: reviews\nroute:\n  backends:\n"
                               "    - tags: [v2]\n"))
        self.assertEqual(self.routes(), [{"destination": "reviews",
                                          "route": {"backends": [{"tags": ["v2"]}]}}])

    def test_create_invalid_shows_description(self):
        """A rule the controller refuses (400) gives its description on one line."""
        path = self.write(".json", json.dumps([route_rule("r1"), {
            "destination": "reviews", "route": {"backends": [{"tags": ["v1"], "weight": 2}]}}]))
        line = self.fails("rule-create", "-f", path)
        self.assertEqual(line, "a8ctl: the controller answered 400: rule 1: "
                               "route.backends[0].weight: 2 is greater than the maximum of 1")
        self.assertEqual(self.server_rules(), [])

    def test_file_errors(self):
        """A missing file, bad JSON or YAML, or no rules: one line, exit 1."""
        self.assertIn("cannot read /nonexistent.json: No such file or directory",
                      self.fails("rule-create", "-f", "/nonexistent.json"))
        self.assertIn("is not valid JSON", self.fails(
            "rule-create", "-f", self.write(".json", "{nope")))
        self.assertIn("is not valid YAML", self.fails(
            "rule-create", "-f", self.write(".yaml", "a: [b")))
        self.assertIn("holds no rules", self.fails(
            "rule-create", "-f", self.write(".yaml", "42")))
        self.assertEqual(self.fails("rule-create", "-f", self.write(
            ".yaml", "rules: " + "[" * 10000 + "]" * 10000 + "\n")),
            "a8ctl: the input is nested too deeply")
        self.assertEqual(self.http.requests, [])

    def test_bad_urls_and_config(self):
        """A server URL with a port out of range (0 too) or a deeply nested or binary
        A8_CONFIG is a bad setting: one line, exit 2, no request sent."""
        deep = self.write(".yaml", "a: " + "[" * 10000 + "]" * 10000 + "\n")
        binary = self.write(".yaml", "")
        with open(binary, "wb") as f:
            f.write(b"\xcb\xff\x00" * 20)
        for environ, words in (
                ({"A8_REGISTRY_URL": "http://localhost:0"}, "has a bad port (1-65535)"),
                ({"A8_REGISTRY_URL": "http://localhost:70000"}, "has a bad port"),
                ({"A8_CONTROLLER_URL": "http://[::1"}, "is not a URL"),
                ({"A8_CONFIG": deep}, "is nested too deeply"),
                ({"A8_CONFIG": binary}, "is not UTF-8 text")):
            code, out, err = self.a8ctl("service-list", environ=environ)
            self.assertEqual(code, 2, err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith("a8ctl: "), err)
            self.assertIn(words, err)
        self.assertEqual(self.http.requests, [])

    def test_update(self):
        """rule-update replaces rules by id; a rule without id is refused."""
        self.add_rules(route_rule("r1"))
        path = self.write(".yaml", yaml.safe_dump({"rules": [route_rule("r1", priority=7)]}))
        self.assertEqual(self.ok("rule-update", "-f", path), "Updated rule r1\n")
        self.assertEqual(self.server_rules()[0]["priority"], 7)
        path = self.write(".yaml", yaml.safe_dump([{"destination": "reviews", "route": {
            "backends": [{"tags": ["v1"]}]}}]))
        self.assertIn("has no id", self.fails("rule-update", "-f", path))

    def test_update_unknown_id(self):
        """Updating an id the controller does not have shows its 404 description."""
        path = self.write(".json", json.dumps([route_rule("ghost")]))
        self.assertEqual(self.fails("rule-update", "-f", path),
                         "a8ctl: the controller answered 404: rule 0: no rule with id ghost")

    def test_get(self):
        """rule-get filters by id, tag and destination; tables by default, JSON, YAML."""
        self.add_rules(route_rule("r1", tags=["v1"], priority=2),
                       route_rule("r2", "ratings"),
                       dict(action_rule("a1"), tags=["recipe-1"]))
        out = self.ok("rule-get", "-d", "reviews")
        self.assertIn("| r1      | reviews     | 2        |      |       | route: v1 ", out)
        self.assertNotIn("r2", out)
        data = json.loads(self.ok("rule-get", "-t", "recipe-1", "-o", "json"))
        self.assertEqual([r["id"] for r in data["rules"]], ["a1"])
        self.assertEqual(data["revision"], 1)
        data = yaml.safe_load(self.ok("rule-get", "-i", "r1", "-i", "r2", "-o", "yaml"))
        self.assertEqual(sorted(r["id"] for r in data["rules"]), ["r1", "r2"])

    def test_get_output_round_trips(self):
        """What rule-get -o yaml prints, rule-update -f reads back."""
        self.add_rules(route_rule("r1"))
        path = self.write(".yaml", self.ok("rule-get", "-o", "yaml"))
        self.ok("rule-update", "-f", path)
        self.assertEqual(self.revision(), 2)

    def test_delete(self):
        """rule-delete deletes by id; an unknown id deletes nothing and fails."""
        self.add_rules(route_rule("r1"), route_rule("r2", "ratings"), action_rule("a1"))
        self.assertEqual(self.ok("rule-delete", "r1", "a1"), "Deleted rules a1, r1\n")
        self.assertEqual([r["id"] for r in self.server_rules()], ["r2"])
        self.assertEqual(self.fails("rule-delete", "r2", "nope"),
                         "a8ctl: no rule with id nope")
        self.assertEqual([r["id"] for r in self.server_rules()], ["r2"])


class TrafficTests(A8ctlTestCase):
    def setUp(self):
        A8ctlTestCase.setUp(self)
        self.register("reviews", ["v1"], "10.0.0.1:80")
        self.register("reviews", ["v3", "canary"], "10.0.0.3:80")
        self.ok("route-set", "reviews", "--default", "v1", "--selector", 'v2(user="jason")')

    def backends(self):
        return [r for r in self.routes() if "match" not in r][0]["route"]["backends"]

    def test_start(self):
        """traffic-start sends --amount percent to the new version and shows the split."""
        self.assertEqual(self.ok("traffic-start", "reviews", "v3"), "reviews: v1 90% -> v3 10%\n")
        self.assertEqual(self.backends(), [{"tags": ["v3"], "weight": 0.1}, {"tags": ["v1"]}])
        self.assertEqual(self.routes()[0]["match"], {"headers": {"Cookie": COOKIE_JASON}})

    def test_start_json(self):
        """traffic-start --json gives the split."""
        data = json.loads(self.ok("traffic-start", "reviews", "v3", "--amount", "25",
                                  "--json"))
        self.assertEqual((data["split"], data["state"]), ({"v1": 75, "v3": 25}, "started"))

    def test_step_to_completion(self):
        """traffic-step adds --amount percent; at 100 the new version is the default."""
        self.ok("traffic-start", "reviews", "v3")
        self.assertEqual(self.ok("traffic-step", "reviews"), "reviews: v1 80% -> v3 20%\n")
        self.assertEqual(self.ok("traffic-step", "reviews", "--amount", "50"),
                         "reviews: v1 30% -> v3 70%\n")
        self.assertEqual(self.backends(), [{"tags": ["v3"], "weight": 0.7}, {"tags": ["v1"]}])
        self.assertEqual(self.ok("traffic-step", "reviews", "--amount", "30"),
                         "reviews: v3 100% (transfer from v1 complete)\n")
        self.assertEqual(self.backends(), [{"tags": ["v3"]}])
        self.assertIn("not being split", self.fails("traffic-step", "reviews"))

    def test_start_all_at_once(self):
        """traffic-start --amount 100 switches the default at once."""
        self.assertEqual(self.ok("traffic-start", "reviews", "v3", "--amount", "100"),
                         "reviews: v3 100% (transfer from v1 complete)\n")
        self.assertEqual(self.backends(), [{"tags": ["v3"]}])

    def test_abort(self):
        """traffic-abort sends all traffic back to the old version."""
        self.ok("traffic-start", "reviews", "v3")
        self.assertEqual(self.ok("traffic-abort", "reviews"),
                         "reviews: v1 100% (transfer to v3 aborted)\n")
        self.assertEqual(self.backends(), [{"tags": ["v1"]}])
        self.assertIn("nothing to abort", self.fails("traffic-abort", "reviews"))

    def test_new_version_must_be_live(self):
        """traffic-start refuses a version with no live instance, and changes nothing."""
        self.register("reviews", ["v4"], "10.0.0.4:80", status="OUT_OF_SERVICE")
        self.assertEqual(self.fails("traffic-start", "reviews", "v4"),
                         "a8ctl: reviews has no live instances of version v4")
        self.assertEqual(self.backends(), [{"tags": ["v1"]}])

    def test_old_version_must_be_live(self):
        """traffic-step refuses when the old version has no live instance left."""
        self.ok("traffic-start", "reviews", "v3")
        self.successResultOf(self.registry_http.delete(
            "http://registry/api/v1/instances/" + self._id("reviews", "10.0.0.1:80")))
        self.assertEqual(self.fails("traffic-step", "reviews"),
                         "a8ctl: reviews has no live instances of version v1")

    def _id(self, service, value):
        import hashlib
        return hashlib.sha256("{}/http/{}".format(service, value).encode()).hexdigest()[:16]

    def test_unknown_service(self):
        """A service the registry does not know is one clear line."""
        self.assertEqual(self.fails("traffic-start", "nosuch", "v2"),
                         "a8ctl: unknown service nosuch: the registry has no instances of it")

    def test_no_default_route(self):
        """A registered service without a default route: say how to set one."""
        self.register("ratings", ["v1"], "10.0.0.9:80")
        self.assertIn("ratings has no default route: set one first with 'a8ctl route-set "
                      "ratings --default VERSION'", self.fails("traffic-start", "ratings", "v2"))

    def test_already_split(self):
        """traffic-start on a split in progress refuses and shows the split."""
        self.ok("traffic-start", "reviews", "v3")
        self.assertEqual(self.fails("traffic-start", "reviews", "v3"),
                         "a8ctl: traffic of reviews is already being split (v1 90% -> v3 10%): "
                         "use traffic-step or traffic-abort")

    def test_same_version(self):
        """traffic-start to the default version itself is refused."""
        self.assertEqual(self.fails("traffic-start", "reviews", "v1"),
                         "a8ctl: v1 is already the default version of reviews")

    def test_bad_amount(self):
        """--amount out of range is one line."""
        self.assertIn("--amount must be above 0 and at most 100", self.fails(
            "traffic-start", "reviews", "v3", "--amount", "150"))


class InfoTests(A8ctlTestCase):
    def test_info(self):
        """info shows the URLs, the servers, the rule revision and the proxies in sync."""
        self.register()
        self.add_rules(route_rule("r1"))
        self.report("p1", 1)
        self.report("p2", 0)
        data = json.loads(self.ok("info", "--json"))
        self.assertEqual(data["controller"]["url"], "http://controller")
        self.assertEqual(data["controller"]["status"], "up")
        self.assertEqual((data["controller"]["revision"], data["controller"]["proxies"],
                          data["controller"]["in_sync"]), (1, 2, 1))
        self.assertEqual((data["registry"]["status"], data["registry"]["services"]),
                         ("up", 1))
        self.assertTrue(data["controller"]["version"].startswith("TwistedWeb/"))
        out = self.ok("info")
        self.assertIn("| Proxies in sync | 1 of 2", out)
        self.assertIn("| Registry URL    | http://registry", out)

    def test_info_unreachable(self):
        """info reports a server it cannot reach, and still succeeds."""
        del self.http.by_host["registry"]
        self.http.by_host["registry"] = Refusing()
        data = json.loads(self.ok("info", "--json"))
        self.assertTrue(data["registry"]["status"].startswith("unreachable (Connection was "
                                                              "refused"))
        self.assertEqual(data["controller"]["status"], "up")


class ErrorTests(A8ctlTestCase):
    def test_refused(self):
        """A refused connection is one line naming the server and its URL."""
        for command in (["route-list"], ["rule-get"], ["action-list"]):
            self.assertEqual(
                self.fails(*command, http=Refusing()),
                "a8ctl: cannot reach the controller at http://controller: Connection was "
                "refused by other side: Connection refused.")
        self.assertEqual(
            self.fails("service-list", http=Refusing()),
            "a8ctl: cannot reach the registry at http://registry: Connection was "
            "refused by other side: Connection refused.")

    def test_replicas(self):
        """
        With several URLs per server (comma-separated), a8ctl fails over from a replica
        that cannot be reached to the next; when none can, the one line names them all.
        """
        self.http.by_host["down1"] = Refusing()
        self.http.by_host["down2"] = Refusing()
        self.add_rules({"destination": "reviews", "route": {"backends": [{"tags": ["v1"]}]}})
        environ = {"A8_CONTROLLER_URL": "http://down1,http://controller",
                   "A8_REGISTRY_URL": "http://down2 , http://registry/"}
        self.register()
        self.assertIn("reviews", self.ok("route-list", environ=environ))
        self.assertIn("reviews", self.ok("service-list", environ=environ))
        self.ok("route-set", "ratings", "--default", "v1", environ=environ)
        self.assertEqual(len(self.routes("ratings")), 1)
        self.assertEqual(
            self.fails("service-list", environ={"A8_REGISTRY_URL": "http://down1,http://down2",
                                               "A8_CONTROLLER_URL": "http://controller"}),
            "a8ctl: cannot reach the registry at http://down1,http://down2: Connection was "
            "refused by other side: Connection refused.")

    def test_server_error_page(self):
        """A 5xx answered with a page that is not JSON is one line, exit 1."""
        broken = Resource()
        broken.isLeaf = True
        broken.render = lambda request: (request.setResponseCode(502),
                                         b"<html>\n<b>Bad Gateway</b>\n</html>")[1]
        self.http.by_host["controller"] = StubTreq(broken)
        self.assertEqual(self.fails("route-list"), "a8ctl: the controller answered 502: "
                                                   "<html> <b>Bad Gateway</b> </html>")

    def test_usage_errors(self):
        """An unknown command, option or missing argument: one line, exit 1."""
        self.assertIn("invalid choice: 'nope'", self.fails("nope"))
        self.assertIn("unrecognized arguments: --frobnicate",
                      self.fails("route-list", "--frobnicate"))
        self.assertIn("give a command", self.fails())
        self.assertIn("not a duration", self.fails("route-delete", "x", "--wait-timeout",
                                                   "soon"))

    def test_help(self):
        """--help prints the usage on stdout and exits 0."""
        code, out, err = self.a8ctl("--help")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("route-set", out)
        code, out, err = self.a8ctl("route-set", "--help")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("--selector", out)

    def test_main_exits_with_status(self):
        """main (what the console script runs under react) raises SystemExit(status)."""
        import sys

        from twisted.internet.testing import MemoryReactorClock

        from amalgam8.cli.main import main

        out, err = StringIO(), StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        failure = self.failureResultOf(Deferred.fromCoroutine(
            main(MemoryReactorClock(), ["--version"])), SystemExit)
        self.assertEqual((failure.value.code, out.getvalue()),
                         (0, "a8ctl (amalgam8) {}\n".format(amalgam8.__version__)))
        failure = self.failureResultOf(Deferred.fromCoroutine(
            main(MemoryReactorClock(), ["recipe-run"])), SystemExit)
        self.assertEqual(failure.value.code, 2)
        self.assertIn("recipe-run needs --topology", err.getvalue())


class TokenTests(A8ctlTestCase):
    modes = ("trusted",)

    def test_unauthorized(self):
        """Without a token, a 401 is one line that says which option sets it."""
        self.assertEqual(
            self.fails("route-list"),
            "a8ctl: the controller refused the credentials (401: a bearer token is "
            "required); set --a8-controller-token or A8_CONTROLLER_TOKEN")
        self.assertIn("A8_REGISTRY_TOKEN", self.fails(
            "service-list", "--a8-controller-token", "red"))

    def test_tokens(self):
        """The tokens from options and the environment select the namespace."""
        self.successResultOf(self.controller_http.post(
            "http://controller/v1/rules", json={"rules": [route_rule("r1")]},
            headers={"Authorization": "Bearer red"}))
        data = json.loads(self.ok("rule-get", "--json", "--a8-controller-token", "red"))
        self.assertEqual([r["id"] for r in data["rules"]], ["r1"])
        environ = dict(self.environ, A8_CONTROLLER_TOKEN="blue")
        data = json.loads(self.ok("rule-get", "--json", environ=environ))
        self.assertEqual(data["rules"], [])


class WaitTests(A8ctlTestCase):
    def test_live(self):
        """
        --wait polls the rule status until every proxy has the change's revision, then
        says so.
        """
        self.report("p1", 0)
        self.report("p2", 0)
        d, out, err = self.start("route-set", "reviews", "--default", "v1", "--wait")
        self.assertNoResult(d)
        self.report("p1", 1)
        self.clock.advance(0.5)
        self.flush()
        self.assertNoResult(d)
        self.report("p2", 1)
        self.clock.advance(0.5)
        self.flush()
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(out.getvalue(), "Set routing rules for reviews: default v1\n"
                                         "Live on all 2 proxies (revision 1)\n")
        self.assertEqual(err.getvalue(), "")
        self.assertNoTimers()

    def test_live_json(self):
        """With --json, the wait's result is part of the JSON."""
        self.add_rules(route_rule("r1"))
        self.report("p1", 1)
        d, out, err = self.start("--wait", "rule-delete", "r1", "--json")
        self.assertNoResult(d)
        self.report("p1", 2)
        self.clock.advance(0.5)
        self.flush()
        self.assertEqual(self.successResultOf(d), 0)
        data = json.loads(out.getvalue())
        self.assertEqual(data, {"ids": ["r1"], "revision": 2,
                                "live": {"revision": 2, "proxies": 1, "in_sync": 1}})

    def test_no_proxies(self):
        """With no proxy reporting, --wait returns at once and says so."""
        out = self.ok("action-clear", "--wait")
        self.assertEqual(out, "No action rules to clear for every service\n"
                              "Revision 0 is current; no proxy is reporting\n")

    def test_timeout(self):
        """
        When a proxy stays behind, --wait gives up after --wait-timeout: the change is
        reported, then one line on stderr naming the lagging proxy, exit 1.
        """
        self.report("p1", 0)
        d, out, err = self.start("route-set", "reviews", "--default", "v1", "--wait",
                                 "--wait-timeout", "5s")
        for _ in range(9):
            self.clock.advance(0.5)
            self.flush()
            self.assertNoResult(d)
        self.clock.advance(0.5)
        self.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(out.getvalue(), "Set routing rules for reviews: default v1\n")
        self.assertEqual(err.getvalue(), "a8ctl: timed out after 5s waiting for revision 1: "
                                         "0 of 1 proxies in sync (lagging: p1 at 0)\n")
        self.assertNoTimers()
        # The change itself was made.
        self.assertEqual(self.revision(), 1)

    def test_rejected(self):
        """
        When a proxy applies the change's revision but reports that it skipped a rule (it
        could not compile it), --wait stops at once: the change is reported, then one line
        on stderr naming the rule, the proxy and the reason, exit 1.
        """
        self.report("p1", 0)
        self.report("p2", 0)
        d, out, err = self.start("route-set", "reviews", "--default", "v1", "--wait")
        self.assertNoResult(d)
        rule_id = self.get("/v1/rules")["rules"][0]["id"]
        self.report("p1", 1, rejected=[{"id": rule_id, "error": "missing ) at offset 3"}])
        self.clock.advance(0.5)
        self.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(out.getvalue(), "Set routing rules for reviews: default v1\n")
        self.assertEqual(err.getvalue(), "a8ctl: revision 1 is not live: rule {} was rejected "
                                         "by 1 proxy (p1): missing ) at offset 3\n"
                         .format(rule_id))
        self.assertNoTimers()

    def test_rejected_by_a_lagging_proxy_ignored(self):
        """What a proxy skipped of an older revision does not fail the wait."""
        self.report("p1", 0, rejected=[{"id": "old", "error": "bad"}])
        d, out, err = self.start("route-set", "reviews", "--default", "v1", "--wait")
        self.report("p1", 1)
        self.clock.advance(0.5)
        self.flush()
        self.assertEqual((self.successResultOf(d), err.getvalue()), (0, ""))


class SelectorTests(SynchronousTestCase):
    def test_round_trip(self):
        """The rules route-set builds read back into the selectors given."""
        selectors = ['v3(user="jason")', 'v4(header="X-Foo:a,b")', "v2(weight=0.25)"]
        rules = route_rules("reviews", ["v1"], [parse_selector(s) for s in selectors])
        self.assertEqual(describe_routes(rules), ("v1", selectors))

    def test_quoted_values(self):
        """Quoted values keep commas and escaped quotes; bare values end at a comma."""
        selector = parse_selector(r'v2 ( header = "X-A:a,\"b\"" , weight = 0.5 )')
        self.assertEqual(selector.headers, (("X-A", 'a,"b"'),))
        self.assertEqual(selector.weight, 0.5)
        self.assertRaises(BadSyntax, parse_selector, "v2(weight=0.5,)")

    def test_user_escaped(self):
        """A user name with regex characters is matched literally, and read back."""
        rules = route_rules("reviews", ["v1"], [parse_selector('v2(user="a.b+c")')])
        pattern = rules[0]["match"]["headers"]["Cookie"]
        self.assertTrue(re.search(pattern, "user=a.b+c"))
        self.assertFalse(re.search(pattern, "user=aXbbc"))
        self.assertEqual(describe_routes(rules)[1], ['v2(user="a.b+c")'])

    def test_table(self):
        """Tables are bordered, left-aligned, as wide as their widest cell."""
        self.assertEqual(table(["A", "Long"], [["xyz", None], ["", ["a", "b"]]]), "\n".join([
            "+-----+------+",
            "| A   | Long |",
            "+-----+------+",
            "| xyz |      |",
            "|     | a, b |",
            "+-----+------+",
        ]))

    def test_reads_old_user_pattern(self):
        """route-list reads the Cookie pattern of a8ctl 0.3 (C{.*?user=x}) as a user."""
        rules = [{"destination": "reviews", "priority": 2,
                  "match": {"headers": {"Cookie": ".*?user=shriram"}},
                  "route": {"backends": [{"tags": ["v3"]}]}}]
        self.assertEqual(describe_routes(rules), (None, ['v3(user="shriram")']))
