# -*- test-case-name: tests.test_registry_tap -*-
"""
C{twistd -n a8registry}: options, environment and the service tree of the registry.
"""

import sys

from amalgam8.adapters.config import ADAPTER_SETTINGS, build_catalogs
from amalgam8.adapters.merge import CatalogMerge
from amalgam8.registry.api import RegistryAPI, TTLPolicy
from amalgam8.redislink import (
    RedisAddress,
    parse_ca_file,
    parse_database,
    parse_master_name,
    parse_prefix,
    parse_redis_address,
    parse_sentinels,
)
from amalgam8.registry.store import MemoryStore
from amalgam8.registry.store.redis import RedisStore
from amalgam8.server import server_parts
from amalgam8.settings import SERVER_SETTINGS, Setting, SettingError
from amalgam8.settings import SettingsOptions, check_server
from amalgam8.settings import parse_bool, parse_duration_setting, parse_text

__all__ = ["SETTINGS", "Options", "makeService"]


def _store_kind(text):
    kind = text.strip().lower()
    if kind in ("inmem", "memory"):
        return "inmem"
    if kind == "redis":
        return "redis"
    raise ValueError("unknown store {!r} (expected inmem or redis)".format(text))


def _capacity(text):
    value = int(text) if text.strip().lstrip("-").isdigit() else None
    if value is None:
        raise ValueError("expected a whole number, not {!r}".format(text))
    if value in (-1, 0):
        return None
    if value < 0:
        raise ValueError("expected a positive number, or -1 for no limit")
    return value


def _not_yet(name):
    def parse(text):
        if text.strip():
            raise ValueError("the {} catalog is not available in this version".format(name))
        return None
    return parse


_NOT_YET = "Not available in this version: a non-empty value is refused at start."

# The registry's settings (SPEC Part C): the servers' common ones, then its own.
SETTINGS = SERVER_SETTINGS + (
    Setting("default-ttl", "A8_DEFAULT_TTL", parse_duration_setting, "30s",
            "The ttl of a registration that asks for none (or for 0)."),
    Setting("min-ttl", "A8_MIN_TTL", parse_duration_setting, "10s",
            "Smaller requested ttls are raised to this. Must be above 0."),
    Setting("max-ttl", "A8_MAX_TTL", parse_duration_setting, "10m",
            "Larger requested ttls are lowered to this. `min-ttl <= default-ttl <= max-ttl` "
            "is checked at start."),
    Setting("namespace-capacity", "A8_NAMESPACE_CAPACITY", _capacity, "-1",
            "The most instances one namespace may hold; a registration beyond it gets 403. "
            "`-1` (or `0`) means no limit.", shown_default="no limit"),
    Setting("store", "A8_STORE", _store_kind, "inmem",
            "Where instances are kept: `inmem` (alias `memory`), in this process and empty "
            "at every start; or `redis`, in the Redis server of `store-address`, shared by "
            "every registry replica that uses it (docs/registry.md, 'The Redis store')."),
    Setting("store-address", "A8_STORE_ADDRESS", parse_redis_address, None,
            "For `redis` (required, unless `store-sentinels` name the master): `host:port` "
            "(port 6379 when left out, `[v6]:port`), or a URL "
            "`redis://[:password@]host[:port][/database]` (`rediss://` speaks TLS)."),
    Setting("store-password", "A8_STORE_PASSWORD", parse_text, None,
            "For `redis`: the password (`AUTH`); beats one in the URL."),
    Setting("store-database", "A8_STORE_DATABASE", parse_database, None,
            "For `redis`: the database number; beats one in the URL.", shown_default="`0`"),
    Setting("store-tls", "A8_STORE_TLS", parse_bool, "false",
            "For `redis`: speak TLS; the server's certificate must match its host and be "
            "signed by `store-tls-ca` (else by an authority the system trusts)."),
    Setting("store-tls-ca", "A8_STORE_TLS_CA", parse_ca_file, None,
            "For `redis` with TLS: the PEM file of the authority that signed the server's "
            "certificate (read at start)."),
    Setting("store-prefix", "A8_STORE_PREFIX", parse_prefix, "a8:",
            "For `redis`: the prefix of every key and channel; registries that share a "
            "database under different prefixes are separate registries."),
    Setting("store-sentinels", "A8_STORE_SENTINELS", parse_sentinels, None,
            "For `redis`, instead of `store-address`: comma-separated `host:port` of Redis "
            "Sentinels to ask for the master `store-master`; the registry follows the "
            "master through failovers (docs/registry.md, 'Redis Sentinel'). "
            "`store-password`, `store-database` and `store-tls` are the master's."),
    Setting("store-master", "A8_STORE_MASTER", parse_master_name, None,
            "For `store-sentinels` (required with them): the name the Sentinels know the "
            "master by (`sentinel monitor <name> ...`)."),
    Setting("eureka-url", "A8_EUREKA_URL", _not_yet("Eureka server"), None,
            "Mirror a Eureka server's apps. " + _NOT_YET + " (Eureka clients register "
            "with the registry's own Eureka API instead.)"),
) + ADAPTER_SETTINGS


class Options(SettingsOptions):
    """Options of C{a8registry}: L{SETTINGS}."""

    program = "a8registry"
    settings = SETTINGS

    def check(self):
        check_server(self)
        low, default, high = self["min-ttl"], self["default-ttl"], self["max-ttl"]
        if low <= 0:
            raise SettingError("--min-ttl must be above 0{}".format(
                self.loaded.origins("min-ttl")))
        if not low <= default <= high:
            raise SettingError(
                "TTLs must satisfy min-ttl <= default-ttl <= max-ttl "
                "(got {:g} <= {:g} <= {:g}){}".format(
                    low, default, high,
                    self.loaded.origins("min-ttl", "default-ttl", "max-ttl")))
        self["redis-address"] = None
        if self["store"] != "redis":
            return
        sentinels, master = self["store-sentinels"], self["store-master"]
        if sentinels and self["store-address"]:
            raise SettingError(
                "--store-sentinels and --store-address: give one, not both (the Sentinels "
                "name the master){}".format(
                    self.loaded.origins("store-sentinels", "store-address")))
        if sentinels and not master:
            raise SettingError("--store-sentinels needs --store-master NAME "
                               "(A8_STORE_MASTER), the name they know the master by{}"
                               .format(self.loaded.origins("store-sentinels")))
        if master and not sentinels:
            raise SettingError("--store-master needs --store-sentinels HOST:PORT,... "
                               "(A8_STORE_SENTINELS){}".format(
                                   self.loaded.origins("store-master")))
        if sentinels:
            self["redis-address"] = RedisAddress.of_sentinels(
                sentinels, master, password=self["store-password"],
                database=self["store-database"], tls=self["store-tls"],
                ca=self["store-tls-ca"])
            return
        if not self["store-address"]:
            raise SettingError("--store redis needs --store-address HOST:PORT "
                               "(A8_STORE_ADDRESS) or --store-sentinels with --store-master{}"
                               .format(self.loaded.origins("store")))
        self["redis-address"] = RedisAddress.from_settings(
            self["store-address"], password=self["store-password"],
            database=self["store-database"], tls=self["store-tls"],
            ca=self["store-tls-ca"])


def makeService(options, reactor=None):
    """
    Build the registry: the store (expiry included) with the catalogs the settings ask for
    merged in, and one listener per C{--listen}.
    """
    if reactor is None:
        from twisted.internet import reactor
    parts = server_parts("registry", options, reactor)
    if options.get("redis-address") is not None:
        store = RedisStore(reactor, reactor, options["redis-address"],
                           capacity=options["namespace-capacity"],
                           prefix=options["store-prefix"])
    else:
        store = MemoryStore(clock=reactor, capacity=options["namespace-capacity"])
    try:
        catalogs = build_catalogs(options, reactor)
    except SettingError as e:
        # Like a bad option (SettingsOptions.parseOptions): one line, exit status 2.
        sys.stderr.write("a8registry: {}\n".format(e))
        sys.stderr.flush()
        raise SystemExit(2)
    if catalogs:
        store = CatalogMerge(store, catalogs)
    store.setServiceParent(parts.top)
    api = RegistryAPI(
        store,
        parts.authenticator,
        reactor,
        ttl=TTLPolicy(options["default-ttl"], options["min-ttl"], options["max-ttl"]),
        metrics=parts.metrics,
        require_https=options["require-https"],
        metrics_token=options["metrics-token"],
    )
    return parts.serve(api.resource(), shared_store=options.get("redis-address") is not None)
