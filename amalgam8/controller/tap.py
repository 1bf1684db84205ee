# -*- test-case-name: tests.test_controller_tap -*-
"""
C{twistd -n a8controller}: options, environment and the service tree of the controller.
"""

from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.proxies import ProxyReports
from amalgam8.controller.proxies_redis import RedisProxyReports
from amalgam8.controller.store import FileStore, MemoryStore
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

__all__ = ["SETTINGS", "Options", "makeService"]


def _database(text):
    kind = text.strip().lower()
    if kind in ("memory", "inmem", ""):
        return "memory"
    if kind in ("file", "redis"):
        return kind
    if kind == "etcd":
        raise ValueError("the etcd database is not available in this version "
                         "(use memory, file or redis)")
    raise ValueError("unknown database type {!r} (expected memory, file or redis)"
                     .format(text))


# The controller's settings (SPEC Part C): the servers' common ones, then its own.
SETTINGS = SERVER_SETTINGS + (
    Setting("database-type", "A8_DATABASE_TYPE", _database, "memory",
            "Where rules are kept: `memory`, `file`, or `redis` (shared by every controller "
            "replica that uses the same Redis, with the proxy status reports and the trace "
            "records: docs/controller.md, 'The Redis store'). "
            "`etcd` is reserved for a later version and refused."),
    Setting("database-host", "A8_DATABASE_HOST", parse_text, None,
            "For `file`: the path of the rule file. For `redis` (unless "
            "`database-sentinels` name the master): `host:port` (port 6379 when left out) "
            "or a URL `redis://[:password@]host[:port][/database]` (`rediss://` speaks "
            "TLS)."),
    Setting("database-password", "A8_DATABASE_PASSWORD", parse_text, None,
            "For `redis`: the password (`AUTH`); beats one in the URL."),
    Setting("database-sentinels", "A8_DATABASE_SENTINELS", parse_sentinels, None,
            "For `redis`, instead of `database-host`: comma-separated `host:port` of Redis "
            "Sentinels to ask for the master `database-master` (its database 0, with "
            "`database-password`); the controller follows the master through failovers "
            "(docs/controller.md, 'Redis Sentinel')."),
    Setting("database-master", "A8_DATABASE_MASTER", parse_master_name, None,
            "For `database-sentinels` (required with them): the name the Sentinels know "
            "the master by."),
    Setting("database-tls-ca", "A8_DATABASE_TLS_CA", parse_ca_file, None,
            "For `redis` over TLS (`rediss://`): the PEM file of the authority that signed "
            "the server's certificate (else the system's authorities)."),
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
        else:
            self["rule-store"] = MemoryStore()


def makeService(options, reactor=None):
    """
    Build the controller: the rule store, the proxy reports and the trace records, and one
    listener per C{--listen}. With C{--database-type redis} all three are in that Redis,
    shared by every replica (and every process of C{--processes N}); else in this process.
    """
    if reactor is None:
        from twisted.internet import reactor
    parts = server_parts("controller", options, reactor)
    address = options.get("redis-address")
    if address is not None:
        store = RedisStore(reactor, address)
        proxies = RedisProxyReports(reactor, reactor, address,
                                    interval=options["proxy-report-interval"])
        traces = RedisTraceStore(reactor, reactor, address,
                                 capacity=options["trace-capacity"])
        shared = [store, proxies, traces]
    else:
        store = options.get("rule-store") or MemoryStore()
        proxies = ProxyReports(reactor, options["proxy-report-interval"])
        traces = TraceBuffer(options["trace-capacity"])
        shared = [store]
    for service in shared:
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
    return parts.serve(api.resource(), shared_store=options.get("redis-address") is not None)
