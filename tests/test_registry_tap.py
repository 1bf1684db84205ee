"""
Tests for L{amalgam8.registry.tap}: the a8registry options (SPEC Part C) and the service
tree that C{makeService} builds.
"""

import io
import json
import sys

from treq.testing import StubTreq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.interfaces import IRegistryStore
from amalgam8.redislink import RedisAddress
from amalgam8.registry.store import MemoryStore
from amalgam8.registry.store.redis import RedisStore
from amalgam8.registry.tap import Options, makeService
from tests.auth_fallback import AuthFallbackChecks


class A8TestCase(SynchronousTestCase):
    """Shared assertions."""

    def assertProvides(self, interface, provider):
        """C{provider} declares and correctly implements C{interface}."""
        self.assertTrue(interface.providedBy(provider),
                        "{!r} does not provide {}".format(provider, interface.__name__))
        self.assertTrue(verifyObject(interface, provider))


class OptionsTestCase(A8TestCase):
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
        self.assertTrue(text.startswith("a8registry: "), context)
        for name in names:
            self.assertIn(name, text, context)
        return text


# (option, environment variable, given text, parsed value)
GOOD = [
    ("auth-mode", "A8_AUTH_MODE", "trusted", ("trusted",)),
    ("jwt-secret", "A8_JWT_SECRET", "s3cret", "s3cret"),
    ("require-https", "A8_REQUIRE_HTTPS", "true", True),
    ("default-ttl", "A8_DEFAULT_TTL", "45s", 45.0),
    ("min-ttl", "A8_MIN_TTL", "5", 5.0),
    ("max-ttl", "A8_MAX_TTL", "20m", 1200.0),
    ("namespace-capacity", "A8_NAMESPACE_CAPACITY", "100", 100),
    ("store", "A8_STORE", "memory", "inmem"),
    ("store-address", "A8_STORE_ADDRESS", "redis.local:6379", "redis.local:6379"),
    ("store-password", "A8_STORE_PASSWORD", "pw", "pw"),
    ("store-address", "A8_STORE_ADDRESS", "[::1]:7000", "[::1]:7000"),
    ("store-address", "A8_STORE_ADDRESS", "rediss://:pw@redis.local/2",
     "rediss://:pw@redis.local/2"),
    ("store-database", "A8_STORE_DATABASE", "3", 3),
    ("store-tls", "A8_STORE_TLS", "true", True),
    ("store-prefix", "A8_STORE_PREFIX", "mesh1:", "mesh1:"),
    ("store-sentinels", "A8_STORE_SENTINELS", "s1:26379, s2",
     (("s1", 26379), ("s2", 6379))),
    ("store-master", "A8_STORE_MASTER", "a8", "a8"),
    ("store-master", "A8_STORE_MASTER", " ", None),
    ("k8s-url", "A8_K8S_URL", "", None),
    ("k8s-url", "A8_K8S_URL", "https://k8s.local:6443/", "https://k8s.local:6443"),
    ("k8s-url", "A8_K8S_URL", "In-Cluster", "in-cluster"),
    ("k8s-token", "A8_K8S_TOKEN", "k8s-tok", "k8s-tok"),
    ("k8s-namespace", "A8_K8S_NAMESPACE", "bookinfo", "bookinfo"),
    ("etcd-url", "A8_ETCD_URL", "http://127.0.0.1:2379, http://127.0.0.2:2379",
     ("http://127.0.0.1:2379", "http://127.0.0.2:2379")),
    ("etcd-api", "A8_ETCD_API", "V2", "v2"),
    ("fs-catalog", "A8_FS_CATALOG", "", None),
    ("fs-catalog", "A8_FS_CATALOG", "/srv/catalog", "/srv/catalog"),
    ("fs-poll", "A8_FS_POLL", "500ms", 0.5),
    ("eureka-url", "A8_EUREKA_URL", "", None),
    ("log-level", "A8_LOG_LEVEL", "debug", LogLevel.debug),
    ("metrics-token", "A8_METRICS_TOKEN", "scrape", "scrape"),
]

# (option, environment variable, bad text)
BAD = [
    ("auth-mode", "A8_AUTH_MODE", "ldap"),
    ("auth-mode", "A8_AUTH_MODE", "trusted,trusted"),
    ("require-https", "A8_REQUIRE_HTTPS", "maybe"),
    ("default-ttl", "A8_DEFAULT_TTL", "soon"),
    ("default-ttl", "A8_DEFAULT_TTL", "-30s"),
    ("min-ttl", "A8_MIN_TTL", "10x"),
    ("max-ttl", "A8_MAX_TTL", "forever"),
    ("namespace-capacity", "A8_NAMESPACE_CAPACITY", "lots"),
    ("namespace-capacity", "A8_NAMESPACE_CAPACITY", "-5"),
    ("namespace-capacity", "A8_NAMESPACE_CAPACITY", "1.5"),
    ("store", "A8_STORE", "mongo"),
    ("store-address", "A8_STORE_ADDRESS", "redis.local:port"),
    ("store-address", "A8_STORE_ADDRESS", "redis.local:0"),
    ("store-address", "A8_STORE_ADDRESS", "::1:6379"),
    ("store-address", "A8_STORE_ADDRESS", "http://redis.local"),
    ("store-address", "A8_STORE_ADDRESS", "redis://redis.local/one"),
    ("store-database", "A8_STORE_DATABASE", "-1"),
    ("store-tls", "A8_STORE_TLS", "perhaps"),
    ("store-tls-ca", "A8_STORE_TLS_CA", "/no/such/ca.pem"),
    ("store-prefix", "A8_STORE_PREFIX", "a b"),
    ("store-sentinels", "A8_STORE_SENTINELS", "s1:26379,s2:x"),
    ("store-sentinels", "A8_STORE_SENTINELS", "s1:26379,,s2"),
    ("store-master", "A8_STORE_MASTER", "my master"),
    ("k8s-url", "A8_K8S_URL", "ftp://k8s.local"),
    ("etcd-url", "A8_ETCD_URL", "127.0.0.1:2379"),
    ("etcd-api", "A8_ETCD_API", "v4"),
    ("fs-poll", "A8_FS_POLL", "often"),
    ("eureka-url", "A8_EUREKA_URL", "http://eureka.local/eureka"),
    ("log-level", "A8_LOG_LEVEL", "loud"),
]


class OptionsTests(OptionsTestCase):
    """Each setting is an option and an environment variable; the option wins."""

    def test_defaults(self):
        """With nothing given, every setting has its default."""
        options = self.parse()
        self.assertEqual(options["auth-mode"], ("default",))
        self.assertIsNone(options["jwt-secret"])
        self.assertIs(options["require-https"], False)
        self.assertEqual((options["min-ttl"], options["default-ttl"], options["max-ttl"]),
                         (10.0, 30.0, 600.0))
        self.assertIsNone(options["namespace-capacity"])
        self.assertEqual(options["store"], "inmem")
        for key in ("store-address", "store-password", "k8s-url", "k8s-token",
                    "fs-catalog", "eureka-url", "metrics-token"):
            self.assertIsNone(options[key], key)
        self.assertEqual(options["log-level"], LogLevel.info)
        self.assertEqual(options["listen"], ["tcp:8080"])

    def test_option(self):
        """Each setting given as an option is parsed."""
        for option, _, text, value in GOOD:
            self.assertEqual(self.parse(["--" + option, text])[option], value, option)

    def test_option_equals(self):
        """An option may be written --name=value."""
        self.assertEqual(self.parse(["--default-ttl=1m"])["default-ttl"], 60.0)

    def test_environment(self):
        """Each setting given as an environment variable is parsed."""
        for option, env, text, value in GOOD:
            self.assertEqual(self.parse(environ={env: text})[option], value, env)

    def test_option_beats_environment(self):
        """When both are given, the option wins."""
        options = self.parse(
            ["--auth-mode", "trusted", "--default-ttl", "20", "--log-level", "error",
             "--require-https", "false", "--namespace-capacity", "7"],
            environ={"A8_AUTH_MODE": "default", "A8_DEFAULT_TTL": "40",
                     "A8_LOG_LEVEL": "debug", "A8_REQUIRE_HTTPS": "true",
                     "A8_NAMESPACE_CAPACITY": "9"})
        self.assertEqual(options["auth-mode"], ("trusted",))
        self.assertEqual(options["default-ttl"], 20.0)
        self.assertEqual(options["log-level"], LogLevel.error)
        self.assertIs(options["require-https"], False)
        self.assertEqual(options["namespace-capacity"], 7)

    def test_auth_chain(self):
        """A chain of modes with a secret is accepted, in order (a fallback chain with
        --allow-trusted-fallback)."""
        options = self.parse(["--auth-mode", "jwt,trusted", "--jwt-secret", "k",
                              "--allow-trusted-fallback", "true"])
        self.assertEqual(options["auth-mode"], ("jwt", "trusted"))
        options = self.parse(environ={"A8_AUTH_MODE": "jwt", "A8_JWT_SECRET": "k"})
        self.assertEqual(options["auth-mode"], ("jwt",))

    def test_booleans(self):
        """require-https takes the usual spellings of true and false."""
        for text, value in (("1", True), ("yes", True), ("on", True), ("TRUE", True),
                            ("0", False), ("no", False), ("off", False), ("", False)):
            self.assertIs(self.parse(environ={"A8_REQUIRE_HTTPS": text})["require-https"],
                          value, text)

    def test_capacity_unlimited(self):
        """A namespace capacity of -1 or 0 means no limit."""
        self.assertIsNone(self.parse(["--namespace-capacity", "-1"])["namespace-capacity"])
        self.assertIsNone(self.parse(["--namespace-capacity", "0"])["namespace-capacity"])

    def test_store_names(self):
        """The in-memory store is inmem or memory, any case."""
        for text in ("inmem", "INMEM", "memory"):
            self.assertEqual(self.parse(["--store", text])["store"], "inmem")

    def test_log_levels(self):
        """Log levels are case-insensitive names."""
        self.assertEqual(self.parse(["--log-level", "WARN"])["log-level"], LogLevel.warn)
        self.assertEqual(self.parse(["--log-level", "warning"])["log-level"], LogLevel.warn)

    def test_api_port(self):
        """A8_API_PORT sets the port when no --listen is given."""
        self.assertEqual(self.parse(environ={"A8_API_PORT": "9090"})["listen"],
                         ["tcp:9090"])

    def test_listen_repeatable(self):
        """--listen is repeatable and beats A8_API_PORT."""
        options = self.parse(["--listen", "tcp:8081", "--listen",
                              "tcp:9000:interface=127.0.0.1"],
                             environ={"A8_API_PORT": "9090"})
        self.assertEqual(options["listen"], ["tcp:8081", "tcp:9000:interface=127.0.0.1"])

    def test_listen_beats_bad_port(self):
        """With --listen given, A8_API_PORT is not used."""
        options = self.parse(["--listen", "tcp:8081"], environ={"A8_API_PORT": "x"})
        self.assertEqual(options["listen"], ["tcp:8081"])


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
        self.parse_bad(["--colour", "red"], names=["colour"])

    def test_missing_value(self):
        """An option without its value is named."""
        self.parse_bad(["--default-ttl"], names=["default-ttl"])

    def test_extra_argument(self):
        """A stray argument is refused."""
        self.parse_bad(["serve"])

    def test_jwt_without_secret(self):
        """jwt mode without a secret names the secret's option and variable."""
        self.parse_bad(["--auth-mode", "jwt"], names=["--jwt-secret", "A8_JWT_SECRET"])
        self.parse_bad(environ={"A8_AUTH_MODE": "trusted,jwt"},
                       names=["--jwt-secret", "A8_JWT_SECRET"])

    def test_min_ttl_zero(self):
        """A minimum ttl of zero is refused, naming min-ttl."""
        self.parse_bad(["--min-ttl", "0"], names=["min-ttl"])
        self.parse_bad(environ={"A8_MIN_TTL": "0s"}, names=["min-ttl"])

    def test_ttl_order(self):
        """The default ttl must lie between the minimum and the maximum."""
        self.parse_bad(["--default-ttl", "5"], names=["default-ttl", "min-ttl"])
        self.parse_bad(["--default-ttl", "11m"], names=["default-ttl", "max-ttl"])
        self.parse_bad(["--min-ttl", "1m", "--max-ttl", "30s", "--default-ttl", "45s"],
                       names=["min-ttl", "max-ttl"])
        self.parse_bad(environ={"A8_MIN_TTL": "40s"}, names=["min-ttl", "default-ttl"])

    def test_value_with_newline(self):
        """A bad value with a line break still gives exactly one line."""
        self.parse_bad(environ={"A8_DEFAULT_TTL": "3\n0"}, names=["A8_DEFAULT_TTL"])
        self.parse_bad(["--store", "in\nmem"], names=["--store"])


class FailingListenReactor(MemoryReactorClock):
    """A reactor on which every port is taken."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class MakeServiceTests(OptionsTestCase):
    """L{makeService} builds the store and one listener per --listen."""

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

    def get(self, http, path, **kwargs):
        d = http.get("http://registry.test" + path, allow_redirects=False, **kwargs)
        http.flush()
        return self.successResultOf(d)

    def test_children(self):
        """One store and one listener per --listen."""
        self.build(["--listen", "tcp:8081", "--listen", "tcp:9000:interface=127.0.0.1"])
        self.assertProvides(IService, self.service)
        self.assertEqual(len(self.stores()), 1)
        self.assertEqual(len(self.listeners()), 2)
        self.assertEqual(len(list(self.service)), 3)

    def test_default_listener(self):
        """Without --listen there is one listener on tcp:8080."""
        self.build()
        self.assertEqual(len(self.listeners()), 1)
        self.start()
        self.assertEqual([(port, interface) for port, _, _, interface
                          in self.reactor.tcpServers], [(8080, "")])

    def test_listens(self):
        """Starting listens on each endpoint; stopping leaves no timer behind."""
        self.build(["--listen", "tcp:8081", "--listen", "tcp:9000:interface=127.0.0.1"])
        self.assertEqual(self.reactor.tcpServers, [])
        with capturedLogs() as events:
            self.start()
        self.assertEqual([(port, interface) for port, _, _, interface
                          in self.reactor.tcpServers],
                         [(8081, ""), (9000, "127.0.0.1")])
        self.assertTrue(self.stores()[0].running)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        announced = [e for e in events
                     if e.get("program") == "a8registry" and "port" in e]
        self.assertEqual([e["endpoint"] for e in announced],
                         ["tcp:8081", "tcp:9000:interface=127.0.0.1"])
        self.service.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_capacity(self):
        """The store gets the namespace capacity."""
        self.build(["--namespace-capacity", "5"])
        self.assertEqual(self.stores()[0].capacity, 5)
        self.build()
        self.assertIsNone(self.stores()[0].capacity)

    def test_store_clock(self):
        """The store reads the time from the reactor it was given."""
        self.build()
        self.assertIs(self.stores()[0].clock, self.reactor)

    def test_site_answers(self):
        """The listener's site serves the registry API."""
        self.build()
        self.start()
        response = self.get(self.site_http(), "/uptime")
        self.assertEqual(response.code, 200)

    def test_site_auth_mode(self):
        """The auth mode is wired into the API."""
        self.build(["--auth-mode", "trusted"])
        self.start()
        self.assertEqual(self.get(self.site_http(), "/api/v1/instances").code, 401)
        self.assertEqual(self.get(self.site_http(), "/api/v1/instances",
                                  headers={"authorization": "Bearer a"}).code, 200)

    def test_site_require_https(self):
        """--require-https is wired into the API."""
        self.build(["--require-https", "true"])
        self.start()
        self.assertEqual(self.get(self.site_http(), "/uptime").code, 301)

    def test_site_ttl_policy(self):
        """The ttl settings are wired into the API."""
        self.build(["--default-ttl", "45", "--min-ttl", "20"])
        self.start()
        http = self.site_http()
        body = json.dumps({"service_name": "web",
                           "endpoint": {"type": "http", "value": "a"}}).encode()
        d = http.post("http://registry.test/api/v1/instances", data=body,
                      headers={"content-type": "application/json"})
        http.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 201)
        self.assertEqual(self.successResultOf(response.json())["ttl"], 45)

    def test_site_metrics_token(self):
        """--metrics-token is wired into the API."""
        self.build(["--metrics-token", "scrape"])
        self.start()
        self.assertEqual(self.get(self.site_http(), "/metrics").code, 401)
        self.assertEqual(self.get(self.site_http(), "/metrics",
                                  headers={"authorization": "Bearer scrape"}).code, 200)

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


    def test_redis_store(self):
        """--store redis makes a Redis store (with the capacity and the prefix) instead of
        the in-memory one; nothing connects before the start."""
        self.build(["--store", "redis", "--store-address", "127.0.0.1:7000",
                    "--namespace-capacity", "5", "--store-prefix", "m1:"])
        self.assertEqual(self.stores(), [])
        [store] = [child for child in self.service if isinstance(child, RedisStore)]
        self.assertEqual((store.link.address, store.capacity, store.prefix),
                         (RedisAddress("127.0.0.1", 7000), 5, "m1:"))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_processes_need_shared_store(self):
        """--processes above 1 on the in-memory store stops the start: one line, status 2."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, self.build, ["--processes", "2"])
        self.assertEqual(error.code, 2)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertIn("--processes 2 needs a shared store", stderr.getvalue())
        self.assertEqual(self.reactor.tcpServers, [])


class RedisSettingsTests(OptionsTestCase):
    """--store redis and its settings make the address of the Redis store."""

    def test_address(self):
        """host:port, the password and the database make the store's address."""
        options = self.parse(["--store", "redis", "--store-address", "10.0.0.5:7000",
                              "--store-password", "pw", "--store-database", "3"])
        self.assertEqual(options["redis-address"],
                         RedisAddress("10.0.0.5", 7000, password="pw", database=3))

    def test_environment(self):
        """A8_STORE=redis with A8_STORE_ADDRESS (port 6379 when left out)."""
        options = self.parse(environ={"A8_STORE": "REDIS", "A8_STORE_ADDRESS": "redis"})
        self.assertEqual(options["redis-address"], RedisAddress("redis", 6379))

    def test_url(self):
        """A redis:// URL gives the password (percent-decoded) and the database;
        rediss:// asks for TLS."""
        options = self.parse(["--store", "redis", "--store-address",
                              "redis://:p%40ss@10.0.0.5:6380/2"])
        self.assertEqual(options["redis-address"],
                         RedisAddress("10.0.0.5", 6380, password="p@ss", database=2))
        options = self.parse(["--store", "redis", "--store-address", "rediss://redis.local"])
        self.assertEqual(options["redis-address"],
                         RedisAddress("redis.local", 6379, tls=True))

    def test_settings_beat_url(self):
        """--store-password and --store-database beat the URL's."""
        options = self.parse(["--store", "redis", "--store-address", "redis://:a@h/2",
                              "--store-password", "b", "--store-database", "0"])
        self.assertEqual(options["redis-address"], RedisAddress("h", 6379, password="b"))

    def test_needs_address(self):
        """--store redis without an address stops the start naming the setting."""
        self.parse_bad(["--store", "redis"], names=["--store-address"])
        self.parse_bad(environ={"A8_STORE": "redis"}, names=["A8_STORE_ADDRESS"])

    def test_sentinels(self):
        """--store-sentinels with --store-master make an address of the master the
        Sentinels name, with the master's password, database and TLS."""
        options = self.parse(["--store", "redis", "--store-sentinels", "s1:26379, s2:26380",
                              "--store-master", "a8", "--store-password", "pw",
                              "--store-database", "2", "--store-tls", "true"])
        self.assertEqual(options["redis-address"], RedisAddress.of_sentinels(
            [("s1", 26379), ("s2", 26380)], "a8", password="pw", database=2, tls=True))
        options = self.parse(environ={"A8_STORE": "redis", "A8_STORE_SENTINELS": "s:26379",
                                      "A8_STORE_MASTER": "a8"})
        self.assertEqual(options["redis-address"].sentinels, (("s", 26379),))

    def test_sentinels_bad(self):
        """Sentinels without a master name, a master name without Sentinels, both
        Sentinels and an address, a bad master name or a Sentinel named twice stop the
        start: one line naming the settings, exit status 2."""
        redis = ["--store", "redis"]
        self.parse_bad(redis + ["--store-sentinels", "s:26379"], names=["--store-master"])
        self.parse_bad(redis + ["--store-master", "a8"], names=["--store-sentinels"])
        self.parse_bad(redis + ["--store-sentinels", "s:26379", "--store-master", "a8",
                                "--store-address", "h:1"],
                       names=["--store-sentinels", "--store-address"])
        self.parse_bad(environ={"A8_STORE": "redis", "A8_STORE_SENTINELS": "s:26379"},
                       names=["A8_STORE_MASTER", "A8_STORE_SENTINELS"])
        self.parse_bad(redis + ["--store-sentinels", "s:26379", "--store-master", "a b"],
                       names=["--store-master"])
        self.parse_bad(redis + ["--store-sentinels", "s:1,s:1", "--store-master", "a8"],
                       names=["--store-sentinels", "named twice"])

    def test_make_service_sentinels(self):
        """makeService gives the store the Sentinels' address; nothing connects before
        the start."""
        reactor = MemoryReactorClock()
        options = self.parse(["--store", "redis", "--store-sentinels", "127.0.0.1:26379",
                              "--store-master", "a8"])
        service = makeService(options, reactor=reactor)
        [store] = [child for child in service if isinstance(child, RedisStore)]
        self.assertEqual(store.link.address.master, "a8")
        self.assertEqual(reactor.tcpClients, [])

    def test_memory_ignores_redis(self):
        """The in-memory store makes no Redis address."""
        self.assertIsNone(self.parse(["--store-address", "h:1"])["redis-address"])


class StoreInterfaceTests(A8TestCase):
    """The in-memory store provides its interfaces."""

    def test_registry_store(self):
        """MemoryStore provides IRegistryStore."""
        self.assertProvides(IRegistryStore, MemoryStore(clock=Clock()))

    def test_service(self):
        """MemoryStore is an IService."""
        self.assertProvides(IService, MemoryStore(clock=Clock()))



class AuthFallbackTests(AuthFallbackChecks, OptionsTestCase):
    """A weaker auth mode after a stronger one needs --allow-trusted-fallback (issue 10)."""

    make_service = staticmethod(makeService)
    path = "/api/v1/instances"
    prefix = "a8_registry"
