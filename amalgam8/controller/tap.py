# -*- test-case-name: tests.test_controller_tap -*-
"""
C{twistd -n a8controller}: options, environment and the service tree of the controller.
"""

from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.proxies import ProxyReports
from amalgam8.controller.proxies_redis import RedisProxyReports
from amalgam8.controller.store import FileStore, MemoryStore
from amalgam8.controller.store.etcd import DEFAULT_PREFIX, EtcdStore, parse_prefix
from amalgam8.controller.store.redis import RedisStore
from amalgam8.controller.traces import TraceBuffer
from amalgam8.controller.traces_redis import RedisTraceStore
from amalgam8.errors import StoreCorrupt
from amalgam8.redislink import (
    RedisAddress,
    parse_ca_file,
    parse_master_name,
    parse_redis_address,
    parse_sentinels,
)
from amalgam8.server import server_parts
from amalgam8.settings import SERVER_SETTINGS, Setting, SettingError
from amalgam8.settings import SettingsOptions, check_server
from amalgam8.settings import parse_duration_setting, parse_positive_int, parse_text
from amalgam8.settings import parse_urls

__all__ = ["SETTINGS", "Options", "makeService"]


def _database(text):
    kind = text.strip().lower()
    if kind in ("memory", "inmem", ""):
        return "memory"
    if kind in ("file", "redis", "etcd"):
        return kind
    raise ValueError("unknown database type {!r} (expected memory, file, redis or etcd)"
                     .format(text))


# The controller's settings (SPEC Part C): the servers' common ones, then its own.
SETTINGS = SERVER_SETTINGS + (
    Setting("database-type", "A8_DATABASE_TYPE", _database, "memory",
            "Where rules are kept: `memory`, `file`, `redis` or `etcd` (`redis` and `etcd` "
            "are shared by every controller replica on the same Redis database or etcd "
            "cluster; Redis also keeps the proxy status reports and the trace records: "
            "docs/controller.md, 'The Redis store' and 'The etcd store')."),
    Setting("database-host", "A8_DATABASE_HOST", parse_text, None,
            "For `file`: the path of the rule file. For `redis` (unless "
            "`database-sentinels` name the master): `host:port` (port 6379 when left out) "
            "or a URL `redis://[:password@]host[:port][/database]` (`rediss://` speaks "
            "TLS). For `etcd`: the client URLs of the cluster's members, comma-separated "
            "(`http://10.0.0.1:2379,http://10.0.0.2:2379`; `https://` speaks TLS)."),
    Setting("database-password", "A8_DATABASE_PASSWORD", parse_text, None,
            "For `redis`: the password (`AUTH`); beats one in the URL. Refused for `etcd` "
            "(etcd user authentication is not supported in this version)."),
    Setting("database-sentinels", "A8_DATABASE_SENTINELS", parse_sentinels, None,
            "For `redis`, instead of `database-host`: comma-separated `host:port` of Redis "
            "Sentinels to ask for the master `database-master` (its database 0, with "
            "`database-password`); the controller follows the master through failovers "
            "(docs/controller.md, 'Redis Sentinel')."),
    Setting("database-master", "A8_DATABASE_MASTER", parse_master_name, None,
            "For `database-sentinels` (required with them): the name the Sentinels know "
            "the master by."),
    Setting("database-tls-ca", "A8_DATABASE_TLS_CA", parse_ca_file, None,
            "For `redis` over TLS (`rediss://`) and `etcd` over `https://`: the PEM file "
            "of the authority that signed the server's certificate (else the system's "
            "authorities)."),
    Setting("database-prefix", "A8_DATABASE_PREFIX", parse_prefix, DEFAULT_PREFIX,
            "For `etcd`: the key prefix the rules are kept under (replicas share rules when "
            "they share it)."),
    Setting("trace-capacity", "A8_TRACE_CAPACITY", parse_positive_int, "100000",
            "Trace records kept per namespace (the oldest are dropped); with `redis`, per "
            "namespace in Redis (give every replica the same)."),
    Setting("proxy-report-interval", "A8_PROXY_REPORT_INTERVAL", parse_duration_setting,
            "30s", "Report interval assumed for proxies that name none."),
)


class Options(SettingsOptions):
    """Options of C{a8controller}: L{SETTINGS}."""

    program = "a8controller"
    settings = SETTINGS

    def check(self):
        check_server(self)
        if self["proxy-report-interval"] <= 0:
            raise SettingError("--proxy-report-interval must be above 0{}".format(
                self.loaded.origins("proxy-report-interval")))
        if self["database-type"] == "file":
            path = self["database-host"]
            if not path:
                raise SettingError(
                    "--database-type file needs --database-host PATH (A8_DATABASE_HOST){}"
                    .format(self.loaded.origins("database-type", "database-host")))
            try:
                self["rule-store"] = FileStore(path)
            except StoreCorrupt as e:
                raise SettingError("{}{}".format(e, self.loaded.origins("database-host")))
        elif self["database-type"] == "redis":
            host = self["database-host"]
            sentinels, master = self["database-sentinels"], self["database-master"]
            if sentinels and host:
                raise SettingError(
                    "--database-sentinels and --database-host: give one, not both (the "
                    "Sentinels name the master){}".format(
                        self.loaded.origins("database-sentinels", "database-host")))
            if sentinels and not master:
                raise SettingError(
                    "--database-sentinels needs --database-master NAME "
                    "(A8_DATABASE_MASTER), the name they know the master by{}".format(
                        self.loaded.origins("database-sentinels")))
            if master and not sentinels:
                raise SettingError(
                    "--database-master needs --database-sentinels HOST:PORT,... "
                    "(A8_DATABASE_SENTINELS){}".format(
                        self.loaded.origins("database-master")))
            # Made by makeService, which has the reactor.
            self["rule-store"] = None
            if sentinels:
                self["redis-address"] = RedisAddress.of_sentinels(
                    sentinels, master, password=self["database-password"])
                return
            try:
                if not parse_redis_address(host or ""):
                    raise ValueError("needs --database-host HOST:PORT (A8_DATABASE_HOST), or "
                                     "--database-sentinels with --database-master")
                self["redis-address"] = RedisAddress.from_settings(
                    host, password=self["database-password"], ca=self["database-tls-ca"])
            except ValueError as e:
                raise SettingError("--database-type redis: --database-host: {}{}".format(
                    e, self.loaded.origins("database-type", "database-host")))
        elif self["database-type"] == "etcd":
            self._check_etcd()
        else:
            self["rule-store"] = MemoryStore()

    def _check_etcd(self):
        where = self.loaded.origins("database-type", "database-host")
        try:
            urls = parse_urls(self["database-host"] or "")
        except ValueError as e:
            raise SettingError("--database-type etcd: --database-host: {}{}".format(e, where))
        if not urls:
            raise SettingError(
                "--database-type etcd needs --database-host with the etcd client URLs "
                "(A8_DATABASE_HOST=http://HOST:2379[,...]){}".format(where))
        if self["database-password"]:
            raise SettingError(
                "--database-type etcd: --database-password is not supported (etcd user "
                "authentication is not in this version: use https:// with "
                "--database-tls-ca, or a private network){}".format(
                    self.loaded.origins("database-password")))
        self["etcd-urls"] = tuple(urls.split(","))
        # Made by makeService, which has the reactor.
        self["rule-store"] = None


def makeService(options, reactor=None):
    """
    Build the controller: the rule store, the proxy reports and the trace records, and one
    listener per C{--listen}. With C{--database-type redis} all three are in that Redis,
    shared by every replica (and every process of C{--processes N}); with C{etcd} the rules
    are in etcd (shared) and the other two in this process; else all three are in this
    process.
    """
    if reactor is None:
        from twisted.internet import reactor
    parts = server_parts("controller", options, reactor)
    address = options.get("redis-address")
    shared = address is not None or bool(options.get("etcd-urls"))
    if address is not None:
        store = RedisStore(reactor, address)
        proxies = RedisProxyReports(reactor, reactor, address,
                                    interval=options["proxy-report-interval"])
        traces = RedisTraceStore(reactor, reactor, address,
                                 capacity=options["trace-capacity"])
        services = [store, proxies, traces]
    else:
        if options.get("etcd-urls"):
            store = EtcdStore.from_settings(reactor, options["etcd-urls"],
                                            prefix=options["database-prefix"],
                                            ca=options["database-tls-ca"])
        else:
            store = options.get("rule-store") or MemoryStore()
        # With etcd the rules are shared; the proxy reports and the trace records are this
        # process's (docs/controller.md, 'The etcd store').
        proxies = ProxyReports(reactor, options["proxy-report-interval"])
        traces = TraceBuffer(options["trace-capacity"])
        services = [store]
    for service in services:
        service.setServiceParent(parts.top)
    api = ControllerAPI(
        store,
        parts.authenticator,
        reactor,
        proxies=proxies,
        traces=traces,
        metrics=parts.metrics,
        require_https=options["require-https"],
        metrics_token=options["metrics-token"],
    )
    return parts.serve(api.resource(), shared_store=shared)
