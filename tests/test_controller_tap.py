"""
Tests for L{amalgam8.controller.tap}: the a8controller options (SPEC Part C) and the service
tree that C{makeService} builds.
"""

import io
import json
import os
import sys

from treq.testing import StubTreq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.controller.store import FileStore, MemoryStore
from amalgam8.controller.proxies_redis import RedisProxyReports
from amalgam8.controller.store.etcd import EtcdStore
from amalgam8.controller.store.redis import RedisStore
from amalgam8.controller.traces_redis import RedisTraceStore
from amalgam8.redislink import RedisAddress
from amalgam8.controller.tap import Options, makeService
from amalgam8.interfaces import IProxyReports, IRuleStore, ITraceStore
from tests.auth_fallback import AuthFallbackChecks

RULE = {"id": "r1", "destination": "reviews", "route": {"backends": [{"tags": ["v1"]}]}}


class OptionsTestCase(SynchronousTestCase):
    def assertProvides(self, interface, provider):
        """C{provider} declares and correctly implements C{interface}."""
        self.assertTrue(interface.providedBy(provider),
                        "{!r} does not provide {}".format(provider, interface.__name__))
        self.assertTrue(verifyObject(interface, provider))

    def parse(self, argv=(), environ=None):
        """Parse C{argv} with C{environ} as the environment; return the options."""
        options = Options(environ=dict(environ or {}))
        options.parseOptions(list(argv))
        return options

    def parse_bad(self, argv=(), environ=None, names=()):
        """
        Parsing fails with SystemExit(2) and exactly one line on stderr naming each of
        C{names}; return that line.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        options = Options(environ=dict(environ or {}))
        error = self.assertRaises(SystemExit, options.parseOptions, list(argv))
        self.assertEqual(error.code, 2)
        text = stderr.getvalue()
        context = "argv={!r} environ={!r}: {!r}".format(argv, environ, text)
        self.assertTrue(text.endswith("\n"), context)
        self.assertEqual(text.count("\n"), 1, context)
        self.assertTrue(text.startswith("a8controller: "), context)
        for name in names:
            self.assertIn(name, text, context)
        return text

    def directory(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path


# (option, environment variable, given text, parsed value)
GOOD = [
    ("auth-mode", "A8_AUTH_MODE", "trusted", ("trusted",)),
    ("jwt-secret", "A8_JWT_SECRET", "s3cret", "s3cret"),
    ("require-https", "A8_REQUIRE_HTTPS", "true", True),
    ("log-level", "A8_LOG_LEVEL", "debug", LogLevel.debug),
    ("metrics-token", "A8_METRICS_TOKEN", "scrape", "scrape"),
    ("database-type", "A8_DATABASE_TYPE", "memory", "memory"),
    ("database-password", "A8_DATABASE_PASSWORD", "pw", "pw"),
    ("database-prefix", "A8_DATABASE_PREFIX", "/a8/prod", "/a8/prod/"),
    ("database-sentinels", "A8_DATABASE_SENTINELS", "s1:26379, [::1]:26380",
     (("s1", 26379), ("::1", 26380))),
    ("database-master", "A8_DATABASE_MASTER", "a8", "a8"),
    ("trace-capacity", "A8_TRACE_CAPACITY", "500", 500),
    ("proxy-report-interval", "A8_PROXY_REPORT_INTERVAL", "1m30s", 90.0),
]

# (option, environment variable, bad text)
BAD = [
    ("auth-mode", "A8_AUTH_MODE", "ldap"),
    ("auth-mode", "A8_AUTH_MODE", "trusted,trusted"),
    ("require-https", "A8_REQUIRE_HTTPS", "maybe"),
    ("log-level", "A8_LOG_LEVEL", "loud"),
    ("database-type", "A8_DATABASE_TYPE", "mongo"),
    ("database-prefix", "A8_DATABASE_PREFIX", "amalgam8"),
    ("database-tls-ca", "A8_DATABASE_TLS_CA", "/no/such/ca.pem"),
    ("database-sentinels", "A8_DATABASE_SENTINELS", "s1:26379,s2:0"),
    ("database-sentinels", "A8_DATABASE_SENTINELS", "::1:26379"),
    ("database-master", "A8_DATABASE_MASTER", "a\tb"),
    ("trace-capacity", "A8_TRACE_CAPACITY", "lots"),
    ("trace-capacity", "A8_TRACE_CAPACITY", "0"),
    ("trace-capacity", "A8_TRACE_CAPACITY", "-5"),
    ("trace-capacity", "A8_TRACE_CAPACITY", "1.5"),
    ("proxy-report-interval", "A8_PROXY_REPORT_INTERVAL", "soon"),
    ("proxy-report-interval", "A8_PROXY_REPORT_INTERVAL", "-30s"),
]


class OptionsTests(OptionsTestCase):
    """Each setting is an option and an environment variable; the option wins."""

    def test_defaults(self):
        """With nothing given, every setting has its default."""
        options = self.parse()
        self.assertEqual(options["auth-mode"], ("default",))
        self.assertIsNone(options["jwt-secret"])
        self.assertIs(options["require-https"], False)
        self.assertEqual(options["log-level"], LogLevel.info)
        self.assertIsNone(options["metrics-token"])
        self.assertEqual(options["database-type"], "memory")
        self.assertIsNone(options["database-host"])
        self.assertIsNone(options["database-password"])
        self.assertEqual(options["trace-capacity"], 100_000)
        self.assertEqual(options["proxy-report-interval"], 30.0)
        self.assertEqual(options["listen"], ["tcp:8080"])
        self.assertIsInstance(options["rule-store"], MemoryStore)
        self.assertNotIsInstance(options["rule-store"], FileStore)

    def test_option(self):
        """Each setting given as an option is parsed."""
        for option, _, text, value in GOOD:
            self.assertEqual(self.parse(["--" + option, text])[option], value, option)

    def test_option_equals(self):
        """An option may be written --name=value."""
        self.assertEqual(self.parse(["--trace-capacity=7"])["trace-capacity"], 7)

    def test_environment(self):
        """Each setting given as an environment variable is parsed."""
        for option, env, text, value in GOOD:
            self.assertEqual(self.parse(environ={env: text})[option], value, env)

    def test_option_beats_environment(self):
        """When both are given, the option wins."""
        path = os.path.join(self.directory(), "rules.json")
        options = self.parse(
            ["--auth-mode", "trusted", "--trace-capacity", "20", "--log-level", "error",
             "--require-https", "false", "--proxy-report-interval", "10s",
             "--database-type", "file", "--database-host", path],
            environ={"A8_AUTH_MODE": "default", "A8_TRACE_CAPACITY": "40",
                     "A8_LOG_LEVEL": "debug", "A8_REQUIRE_HTTPS": "true",
                     "A8_PROXY_REPORT_INTERVAL": "1m", "A8_DATABASE_TYPE": "memory",
                     "A8_DATABASE_HOST": "/nowhere/rules.json"})
        self.assertEqual(options["auth-mode"], ("trusted",))
        self.assertEqual(options["trace-capacity"], 20)
        self.assertEqual(options["log-level"], LogLevel.error)
        self.assertIs(options["require-https"], False)
        self.assertEqual(options["proxy-report-interval"], 10.0)
        self.assertEqual(options["database-type"], "file")
        self.assertEqual(options["rule-store"].path, path)

    def test_option_beats_bad_environment(self):
        """A bad environment value is not looked at when the option is given."""
        options = self.parse(["--trace-capacity", "3"], environ={"A8_TRACE_CAPACITY": "x"})
        self.assertEqual(options["trace-capacity"], 3)

    def test_database_names(self):
        """The memory database is memory or inmem, any case; file is file."""
        for text in ("memory", "MEMORY", "inmem"):
            self.assertEqual(self.parse(["--database-type", text])["database-type"],
                             "memory")
        path = os.path.join(self.directory(), "rules.json")
        self.assertEqual(self.parse(["--database-type", "FILE", "--database-host", path])
                         ["database-type"], "file")

    def test_file_store(self):
        """--database-type file with --database-host makes a file store on that path."""
        path = os.path.join(self.directory(), "rules.json")
        store = self.parse(["--database-type", "file", "--database-host", path])["rule-store"]
        self.assertIsInstance(store, FileStore)
        self.assertEqual(store.path, path)
        self.assertFalse(os.path.exists(path))

    def test_file_store_environment(self):
        """The file store can be chosen entirely in the environment."""
        path = os.path.join(self.directory(), "rules.json")
        store = self.parse(environ={"A8_DATABASE_TYPE": "file",
                                    "A8_DATABASE_HOST": path})["rule-store"]
        self.assertEqual(store.path, path)

    def test_file_store_relative(self):
        """A relative path is taken from the working directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "r.json")
        self.assertFalse(os.path.isabs(path))
        store = self.parse(["--database-type", "file", "--database-host", path])[
            "rule-store"]
        self.assertEqual(store.path, os.path.join(os.getcwd(), path))

    def test_file_store_loads(self):
        """An existing rule file is loaded at start."""
        path = os.path.join(self.directory(), "rules.json")
        with open(path, "w") as f:
            json.dump({"format": "amalgam8-rules/1", "namespaces": {
                "default": {"revision": 4, "rules": [RULE]}}}, f)
        store = self.parse(["--database-type", "file", "--database-host", path])["rule-store"]
        ruleset = self.successResultOf(store.get("default"))
        self.assertEqual((ruleset.revision, list(ruleset.rules)), (4, [RULE]))

    def test_memory_ignores_host(self):
        """The memory database ignores a database host."""
        options = self.parse(["--database-host", "/nowhere/rules.json"])
        self.assertNotIsInstance(options["rule-store"], FileStore)

    def test_api_port(self):
        """A8_API_PORT sets the port when no --listen is given."""
        self.assertEqual(self.parse(environ={"A8_API_PORT": "8081"})["listen"],
                         ["tcp:8081"])

    def test_listen_repeatable(self):
        """--listen is repeatable and beats A8_API_PORT."""
        options = self.parse(["--listen", "tcp:8081", "--listen",
                              "tcp:9000:interface=127.0.0.1"],
                             environ={"A8_API_PORT": "x"})
        self.assertEqual(options["listen"], ["tcp:8081", "tcp:9000:interface=127.0.0.1"])

    def test_auth_chain(self):
        """A chain of modes with a secret is accepted, in order (a fallback chain with
        --allow-trusted-fallback)."""
        options = self.parse(["--auth-mode", "jwt,trusted", "--jwt-secret", "k",
                              "--allow-trusted-fallback", "true"])
        self.assertEqual(options["auth-mode"], ("jwt", "trusted"))


class BadOptionsTests(OptionsTestCase):
    """A bad option or value stops the program with one line naming it and status 2."""

    def test_bad_option_values(self):
        """Each bad value given as an option names the option."""
        for option, _, text in BAD:
            self.parse_bad(["--" + option, text], names=["--" + option])

    def test_bad_environment_values(self):
        """Each bad value given in the environment names the variable."""
        for _, env, text in BAD:
            self.parse_bad(environ={env: text}, names=[env])

    def test_zero_interval(self):
        """A report interval of zero is refused, named."""
        self.parse_bad(["--proxy-report-interval", "0"], names=["proxy-report-interval"])
        self.parse_bad(environ={"A8_PROXY_REPORT_INTERVAL": "0s"},
                       names=["proxy-report-interval"])

    def test_bad_api_port(self):
        """A bad A8_API_PORT names it."""
        for text in ("http", "70000", "-1", ""):
            self.parse_bad(environ={"A8_API_PORT": text}, names=["A8_API_PORT"])

    def test_bad_listen(self):
        """A --listen that is not an endpoint string names --listen."""
        for description in ("bogus:1", "tcp:notaport", "tcp:8080:colour=red"):
            self.parse_bad(["--listen", description], names=["--listen"])

    def test_unknown_option(self):
        """An unknown option is named."""
        self.parse_bad(["--store", "memory"], names=["store"])

    def test_missing_value(self):
        """An option without its value is named."""
        self.parse_bad(["--database-type"], names=["database-type"])

    def test_extra_argument(self):
        """A stray argument is refused."""
        self.parse_bad(["serve"])

    def test_jwt_without_secret(self):
        """jwt mode without a secret names the secret's option and variable."""
        self.parse_bad(["--auth-mode", "jwt"], names=["--jwt-secret", "A8_JWT_SECRET"])
        self.parse_bad(environ={"A8_AUTH_MODE": "trusted,jwt"},
                       names=["--jwt-secret", "A8_JWT_SECRET"])

    def test_file_without_host(self):
        """--database-type file without --database-host names both ways to give it."""
        self.parse_bad(["--database-type", "file"],
                       names=["--database-host", "A8_DATABASE_HOST"])
        self.parse_bad(environ={"A8_DATABASE_TYPE": "file", "A8_DATABASE_HOST": ""},
                       names=["--database-host"])

    def test_corrupt_file(self):
        """A rule file that is not JSON stops the start, naming the file, which is left
        as it was."""
        path = os.path.join(self.directory(), "rules.json")
        with open(path, "wb") as f:
            f.write(b'{"format": "amalgam8-rules/1", "names')
        line = self.parse_bad(["--database-type", "file", "--database-host", path],
                              names=[path, "not valid JSON"])
        self.assertNotIn("Traceback", line)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b'{"format": "amalgam8-rules/1", "names')

    def test_invalid_rule_in_file(self):
        """A rule file holding an invalid rule stops the start, naming file and rule."""
        path = os.path.join(self.directory(), "rules.json")
        bad = dict(RULE, route={"backends": [{"tags": ["v1"], "weight": 3}]})
        with open(path, "w") as f:
            json.dump({"format": "amalgam8-rules/1", "namespaces": {
                "default": {"revision": 1, "rules": [bad]}}}, f)
        self.parse_bad(["--database-type", "file", "--database-host", path],
                       names=[path, "rule 0", "weight"])

    def test_other_json_file(self):
        """A JSON file that is not a rule file stops the start, naming it."""
        path = os.path.join(self.directory(), "rules.json")
        with open(path, "w") as f:
            json.dump({"rules": []}, f)
        self.parse_bad(["--database-type", "file", "--database-host", path], names=[path])

    def test_unreadable_file(self):
        """A rule file path that cannot be read (a directory) stops the start."""
        path = self.directory()
        self.parse_bad(["--database-type", "file", "--database-host", path], names=[path])

    def test_missing_directory(self):
        """A rule file in a directory that does not exist stops the start."""
        path = os.path.join(self.directory(), "no", "rules.json")
        self.parse_bad(["--database-type", "file", "--database-host", path],
                       names=[os.path.dirname(path)])

    def test_value_with_newline(self):
        """A bad value with a line break still gives exactly one line."""
        self.parse_bad(environ={"A8_TRACE_CAPACITY": "3\n0"}, names=["A8_TRACE_CAPACITY"])
        self.parse_bad(["--database-type", "fi\nle"], names=["--database-type"])
        path = os.path.join(self.directory(), "a\nb", "rules.json")
        self.parse_bad(["--database-type", "file", "--database-host", path])


class FailingListenReactor(MemoryReactorClock):
    """A reactor on which every port is taken."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class MakeServiceTests(OptionsTestCase):
    """L{makeService} builds the rule store and one listener per --listen."""

    def build(self, argv=(), environ=None, reactor=None):
        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        self.options = self.parse(argv, environ)
        self.service = makeService(self.options, reactor=self.reactor)
        return self.service

    def start(self):
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.stop)

    def stop(self):
        if self.service.running:
            self.service.stopService()

    def stores(self):
        return [child for child in self.service if isinstance(child, MemoryStore)]

    def listeners(self):
        return [child for child in self.service
                if isinstance(child, StreamServerEndpointService)]

    def site_http(self, index=0):
        """A StubTreq over the resource of the site listening on port C{index}."""
        factory = self.reactor.tcpServers[index][1]
        return StubTreq(factory.resource)

    def call(self, http, method, path, body=None, token=None):
        headers = {}
        kwargs = {}
        if token is not None:
            headers["authorization"] = "Bearer " + token
        if body is not None:
            headers["content-type"] = "application/json"
            kwargs["data"] = json.dumps(body).encode("utf-8")
        d = http.request(method, "http://controller.test" + path, headers=headers,
                         allow_redirects=False, **kwargs)
        http.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return response.code, content

    def test_children(self):
        """One store and one listener per --listen."""
        self.build(["--listen", "tcp:8081", "--listen", "tcp:9000:interface=127.0.0.1"])
        self.assertProvides(IService, self.service)
        self.assertEqual(len(self.stores()), 1)
        self.assertIs(self.stores()[0], self.options["rule-store"])
        self.assertEqual(len(self.listeners()), 2)
        self.assertEqual(len(list(self.service)), 3)

    def test_default_listener(self):
        """Without --listen there is one listener on tcp:8080."""
        self.build()
        self.start()
        self.assertEqual([(port, interface) for port, _, _, interface
                          in self.reactor.tcpServers], [(8080, "")])

    def test_api_port_listener(self):
        """A8_API_PORT moves the default listener."""
        self.build(environ={"A8_API_PORT": "8081"})
        self.start()
        self.assertEqual([port for port, _, _, _ in self.reactor.tcpServers], [8081])

    def test_listens(self):
        """Starting listens on each endpoint and announces it; stopping leaves no timer."""
        self.build(["--listen", "tcp:8081", "--listen", "tcp:9000:interface=127.0.0.1"])
        self.assertEqual(self.reactor.tcpServers, [])
        with capturedLogs() as events:
            self.start()
        self.assertEqual([(port, interface) for port, _, _, interface
                          in self.reactor.tcpServers],
                         [(8081, ""), (9000, "127.0.0.1")])
        self.assertTrue(self.stores()[0].running)
        announced = [e for e in events
                     if e.get("program") == "a8controller" and "port" in e]
        self.assertEqual([e["endpoint"] for e in announced],
                         ["tcp:8081", "tcp:9000:interface=127.0.0.1"])
        self.service.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(self.stores()[0].running)

    def test_site_answers(self):
        """The listener's site serves the controller API."""
        self.build()
        self.start()
        http = self.site_http()
        self.assertEqual(self.call(http, "GET", "/health")[0], 200)
        code, body = self.call(http, "POST", "/v1/rules", {"rules": [RULE]})
        self.assertEqual((code, json.loads(body)), (201, {"ids": ["r1"]}))
        code, body = self.call(http, "GET", "/v1/rules")
        self.assertEqual(json.loads(body), {"rules": [RULE], "revision": 1})

    def test_listeners_share_state(self):
        """Every listener serves the same rules."""
        self.build(["--listen", "tcp:8081", "--listen", "tcp:8082"])
        self.start()
        self.call(self.site_http(0), "POST", "/v1/rules", {"rules": [RULE]})
        code, body = self.call(self.site_http(1), "GET", "/v1/rules")
        self.assertEqual(json.loads(body)["revision"], 1)

    def test_site_auth_mode(self):
        """The auth mode is wired into the API."""
        self.build(["--auth-mode", "trusted"])
        self.start()
        self.assertEqual(self.call(self.site_http(), "GET", "/v1/rules")[0], 401)
        self.assertEqual(self.call(self.site_http(), "GET", "/v1/rules", token="a")[0], 200)

    def test_site_jwt(self):
        """The JWT secret is wired into the API; the reactor is its clock."""
        import jwt

        self.build(["--auth-mode", "jwt", "--jwt-secret", "k" * 32])
        self.start()
        self.reactor.advance(1000)
        good = jwt.encode({"namespace": "a", "exp": 1010}, "k" * 32, algorithm="HS256")
        self.assertEqual(self.call(self.site_http(), "GET", "/v1/rules", token=good)[0], 200)
        self.reactor.advance(10)
        self.assertEqual(self.call(self.site_http(), "GET", "/v1/rules", token=good)[0], 401)

    def test_site_require_https(self):
        """--require-https is wired into the API."""
        self.build(["--require-https", "true"])
        self.start()
        self.assertEqual(self.call(self.site_http(), "GET", "/health")[0], 301)

    def test_site_metrics_token(self):
        """--metrics-token is wired into the API."""
        self.build(["--metrics-token", "scrape"])
        self.start()
        self.assertEqual(self.call(self.site_http(), "GET", "/metrics")[0], 401)
        code, body = self.call(self.site_http(), "GET", "/metrics", token="scrape")
        self.assertEqual(code, 200)
        self.assertIn(b"a8_controller_http_requests_total", body)

    def test_site_trace_capacity(self):
        """--trace-capacity bounds the trace records of a namespace."""
        self.build(["--trace-capacity", "2"])
        self.start()
        code, body = self.call(self.site_http(), "POST", "/v1/traces",
                               {"records": [{"n": 1}, {"n": 2}, {"n": 3}]})
        self.assertEqual((code, json.loads(body)), (202, {"accepted": 3, "dropped": 1}))

    def test_site_report_interval(self):
        """--proxy-report-interval sets when a silent proxy drops out, on the reactor's
        clock."""
        self.build(["--proxy-report-interval", "10s"])
        self.start()
        http = self.site_http()
        self.call(http, "PUT", "/v1/proxies/p1", {"service": "web", "revision": 0})
        self.reactor.advance(30)
        self.assertEqual(json.loads(self.call(http, "GET", "/v1/rules/status")[1])["proxies"],
                         1)
        self.reactor.advance(0.5)
        self.assertEqual(json.loads(self.call(http, "GET", "/v1/rules/status")[1])["proxies"],
                         0)

    def test_site_blocking_read(self):
        """Blocking reads time out on the reactor's clock."""
        self.build()
        self.start()
        http = self.site_http()
        d = http.get("http://controller.test/v1/rules?wait=5s&revision=0")
        http.flush()
        self.assertNoResult(d)
        self.reactor.advance(5)
        http.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_file_store_used(self):
        """With the file database, changes through the site are in the file, and a new
        store on it finds them."""
        path = os.path.join(self.directory(), "rules.json")
        self.build(["--database-type", "file", "--database-host", path])
        self.assertIsInstance(self.stores()[0], FileStore)
        self.start()
        self.assertEqual(self.call(self.site_http(), "POST", "/v1/rules",
                                   {"rules": [RULE]})[0], 201)
        again = FileStore(path)
        ruleset = self.successResultOf(again.get("default"))
        self.assertEqual((ruleset.revision, list(ruleset.rules)), (1, [RULE]))

    def test_cannot_listen(self):
        """A port that cannot be bound stops the start with one line and status 2."""
        self.build(reactor=FailingListenReactor())
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, self.service.privilegedStartService)
        self.assertEqual(error.code, 2)
        text = stderr.getvalue()
        self.assertEqual(text.count("\n"), 1, text)
        self.assertIn("cannot listen", text)
        self.assertIn("8080", text)


class RedisDatabaseTests(OptionsTestCase):
    """--database-type redis and --database-host make the Redis rule store."""

    def test_address(self):
        """host:port and the password make the store's address."""
        options = self.parse(["--database-type", "redis", "--database-host", "10.0.0.5:7000",
                              "--database-password", "pw"])
        self.assertEqual(options["redis-address"],
                         RedisAddress("10.0.0.5", 7000, password="pw"))

    def test_environment_url(self):
        """A8_DATABASE_TYPE=redis with a redis:// A8_DATABASE_HOST (database, TLS)."""
        options = self.parse(environ={"A8_DATABASE_TYPE": "redis",
                                      "A8_DATABASE_HOST": "rediss://:pw@redis.local/4"})
        self.assertEqual(options["redis-address"],
                         RedisAddress("redis.local", 6379, password="pw", database=4,
                                      tls=True))

    def test_needs_host(self):
        """--database-type redis without a host stops the start naming it."""
        self.parse_bad(["--database-type", "redis"], names=["--database-host"])

    def test_bad_host(self):
        """A host that is not host:port or a Redis URL stops the start."""
        for bad in ("redis.local:port", "http://redis.local", "a:b:c"):
            self.parse_bad(["--database-type", "redis", "--database-host", bad],
                           names=["--database-host"])
        self.parse_bad(environ={"A8_DATABASE_TYPE": "redis", "A8_DATABASE_HOST": "h:0"},
                       names=["A8_DATABASE_HOST"])

    def test_sentinels(self):
        """--database-sentinels with --database-master make an address of the master the
        Sentinels name (database 0, the password given)."""
        options = self.parse(["--database-type", "redis", "--database-sentinels",
                              "s1:26379,s2:26380", "--database-master", "a8",
                              "--database-password", "pw"])
        self.assertEqual(options["redis-address"], RedisAddress.of_sentinels(
            [("s1", 26379), ("s2", 26380)], "a8", password="pw"))
        options = self.parse(environ={"A8_DATABASE_TYPE": "redis",
                                      "A8_DATABASE_SENTINELS": "s:26379",
                                      "A8_DATABASE_MASTER": "a8"})
        self.assertEqual(options["redis-address"].sentinels, (("s", 26379),))

    def test_sentinels_bad(self):
        """Sentinels without a master name, a master name without Sentinels, and both
        Sentinels and a host stop the start: one line naming the settings, status 2."""
        redis = ["--database-type", "redis"]
        self.parse_bad(redis + ["--database-sentinels", "s:26379"],
                       names=["--database-master"])
        self.parse_bad(redis + ["--database-master", "a8"], names=["--database-sentinels"])
        self.parse_bad(redis + ["--database-sentinels", "s:26379", "--database-master", "a8",
                                "--database-host", "h:1"],
                       names=["--database-sentinels", "--database-host"])
        self.parse_bad(environ={"A8_DATABASE_TYPE": "redis",
                                "A8_DATABASE_MASTER": "a8"},
                       names=["A8_DATABASE_MASTER", "--database-sentinels"])

    def test_make_service_sentinels(self):
        """makeService gives the rule store the Sentinels' address; nothing connects
        before the start."""
        reactor = MemoryReactorClock()
        options = self.parse(["--database-type", "redis", "--database-sentinels",
                              "127.0.0.1:26379", "--database-master", "a8"])
        service = makeService(options, reactor=reactor)
        [store] = [child for child in service if isinstance(child, RedisStore)]
        self.assertEqual(store.link.address.sentinels, (("127.0.0.1", 26379),))
        self.assertEqual(reactor.tcpClients, [])

    def test_make_service(self):
        """makeService puts a Redis rule store in the tree; nothing connects before the
        start."""
        reactor = MemoryReactorClock()
        options = self.parse(["--database-type", "redis", "--database-host", "127.0.0.1"])
        service = makeService(options, reactor=reactor)
        [store] = [child for child in service if isinstance(child, RedisStore)]
        self.assertEqual(store.link.address, RedisAddress("127.0.0.1", 6379))
        self.assertProvides(IRuleStore, store)
        self.assertEqual(reactor.tcpClients, [])

    def test_make_service_shares_reports_and_traces(self):
        """With the Redis database the proxy reports and the trace records are in the same
        Redis (with --proxy-report-interval and --trace-capacity), on the reactor's clock;
        nothing connects before the start."""
        reactor = MemoryReactorClock()
        options = self.parse(["--database-type", "redis", "--database-host",
                              "redis://:pw@10.0.0.5:7000/3", "--proxy-report-interval",
                              "10s", "--trace-capacity", "500"])
        service = makeService(options, reactor=reactor)
        address = RedisAddress("10.0.0.5", 7000, password="pw", database=3)
        [proxies] = [child for child in service if isinstance(child, RedisProxyReports)]
        [traces] = [child for child in service if isinstance(child, RedisTraceStore)]
        self.assertProvides(IProxyReports, proxies)
        self.assertProvides(ITraceStore, traces)
        self.assertEqual((proxies.link.address, proxies.interval, proxies.clock),
                         (address, 10.0, reactor))
        self.assertEqual((traces.link.address, traces.capacity, traces.clock),
                         (address, 500, reactor))
        self.assertEqual(reactor.tcpClients, [])

    def test_memory_keeps_reports_in_process(self):
        """Without Redis, no report or trace store is a service of the tree (they are
        in memory, in the API)."""
        service = makeService(self.parse([]), reactor=MemoryReactorClock())
        self.assertEqual([child for child in service
                          if isinstance(child, (RedisProxyReports, RedisTraceStore))], [])


class EtcdDatabaseTests(OptionsTestCase):
    """--database-type etcd and --database-host make the etcd rule store."""

    def test_urls(self):
        """The comma-separated client URLs, in order; the default prefix."""
        options = self.parse(["--database-type", "etcd", "--database-host",
                              "http://10.0.0.1:2379, https://etcd.local:2379/"])
        self.assertEqual(options["etcd-urls"],
                         ("http://10.0.0.1:2379", "https://etcd.local:2379"))
        self.assertEqual(options["database-prefix"], "/amalgam8/controller/")

    def test_environment(self):
        """A8_DATABASE_TYPE=etcd with A8_DATABASE_HOST and A8_DATABASE_PREFIX."""
        options = self.parse(environ={"A8_DATABASE_TYPE": "ETCD",
                                      "A8_DATABASE_HOST": "http://127.0.0.1:2379",
                                      "A8_DATABASE_PREFIX": "/a8/staging"})
        self.assertEqual(options["etcd-urls"], ("http://127.0.0.1:2379",))
        self.assertEqual(options["database-prefix"], "/a8/staging/")

    def test_needs_host(self):
        """--database-type etcd without URLs stops the start naming --database-host."""
        self.parse_bad(["--database-type", "etcd"],
                       names=["--database-host", "A8_DATABASE_HOST"])
        self.parse_bad(environ={"A8_DATABASE_TYPE": "etcd", "A8_DATABASE_HOST": " , "},
                       names=["--database-host", "A8_DATABASE_HOST"])

    def test_bad_urls(self):
        """A host that is not http(s) URLs stops the start, naming it."""
        for bad in ("127.0.0.1:2379", "etcd://h:2379", "http://h:99999",
                    "http://a:1,http://a:1"):
            self.parse_bad(["--database-type", "etcd", "--database-host", bad],
                           names=["--database-host"])

    def test_password_refused(self):
        """A password for etcd is refused: user authentication is not supported."""
        text = self.parse_bad(["--database-type", "etcd", "--database-host",
                               "http://127.0.0.1:2379", "--database-password", "pw"],
                              names=["--database-password"])
        self.assertIn("not supported", text)
        self.parse_bad(environ={"A8_DATABASE_TYPE": "etcd",
                                "A8_DATABASE_HOST": "http://127.0.0.1:2379",
                                "A8_DATABASE_PASSWORD": "pw"},
                       names=["A8_DATABASE_PASSWORD"])

    def test_bad_prefix(self):
        """A prefix that is not a key path stops the start, naming it."""
        self.parse_bad(["--database-type", "etcd", "--database-host",
                        "http://127.0.0.1:2379", "--database-prefix", "a8//x"],
                       names=["--database-prefix"])

    def test_make_service(self):
        """makeService puts an etcd rule store on those URLs and that prefix in the tree;
        nothing connects before the start."""
        reactor = MemoryReactorClock()
        options = self.parse(["--database-type", "etcd", "--database-host",
                              "http://127.0.0.1:2379,http://127.0.0.1:22379",
                              "--database-prefix", "/a8/"])
        service = makeService(options, reactor=reactor)
        [store] = [child for child in service if isinstance(child, EtcdStore)]
        self.assertEqual(store.client.urls, ("http://127.0.0.1:2379", "http://127.0.0.1:22379"))
        self.assertEqual(store.prefix, "/a8/")
        self.assertProvides(IRuleStore, store)
        self.assertProvides(IService, store)
        self.assertEqual(reactor.tcpClients, [])

    def test_processes_allowed(self):
        """--processes above 1 is allowed with etcd (a shared store): makeService is told
        the store is shared."""
        seen = []
        from amalgam8.server import ServerParts
        real = ServerParts.serve

        def serve(parts, resource, shared_store=False):
            seen.append(shared_store)
            return real(parts, resource, shared_store=False)

        self.patch(ServerParts, "serve", serve)
        makeService(self.parse(["--database-type", "etcd", "--database-host",
                                "http://127.0.0.1:2379"]), reactor=MemoryReactorClock())
        makeService(self.parse([]), reactor=MemoryReactorClock())
        self.assertEqual(seen, [True, False])


class StoreInterfaceTests(OptionsTestCase):
    """Both rule stores provide their interfaces."""

    def test_memory(self):
        """MemoryStore provides IRuleStore and IService."""
        self.assertProvides(IRuleStore, MemoryStore())
        self.assertProvides(IService, MemoryStore())

    def test_file(self):
        """FileStore provides IRuleStore and IService."""
        store = FileStore(os.path.join(self.directory(), "rules.json"))
        self.assertProvides(IRuleStore, store)
        self.assertProvides(IService, store)



class AuthFallbackTests(AuthFallbackChecks, OptionsTestCase):
    """A weaker auth mode after a stronger one needs --allow-trusted-fallback (issue 10)."""

    make_service = staticmethod(makeService)
    path = "/v1/rules"
    prefix = "a8_controller"
