# -*- test-case-name: tests.test_registry_tap -*-
"""
C{twistd -n a8registry}: options, environment and the service tree of the registry.
"""


from twisted.logger import Logger
from twisted.python import usage

from amalgam8.auth import Authenticator, parse_modes
from amalgam8.logs import configure as configure_logs, parse_level
from amalgam8.registry.api import RegistryAPI, TTLPolicy
from amalgam8.registry.store import MemoryStore
from amalgam8.settings import (
    ServerService,
    Setting,
    SettingsOptions,
    add_listeners,
    parse_bool,
    parse_duration_setting,
)
from amalgam8.web import A8Site, Metrics

__all__ = ["Options", "makeService"]


def _store_kind(text):
    kind = text.strip().lower()
    if kind in ("inmem", "memory"):
        return "inmem"
    if kind == "redis":
        raise ValueError("the redis store is not available in this version (use inmem)")
    raise ValueError("unknown store {!r} (expected inmem)".format(text))


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


def _text(text):
    return text


class Options(SettingsOptions):
    """Options of C{a8registry}; each one also an C{A8_*} environment variable."""

    program = "a8registry"
    synopsis = "[options]"
    settings = (
        Setting("auth-mode", "A8_AUTH_MODE", parse_modes, ("default",),
                "Auth modes, chained in order: default, trusted, jwt [default: default]."),
        Setting("jwt-secret", "A8_JWT_SECRET", _text, None, "HS256 secret for jwt mode."),
        Setting("require-https", "A8_REQUIRE_HTTPS", parse_bool, False,
                "Redirect plain HTTP to HTTPS [default: false]."),
        Setting("default-ttl", "A8_DEFAULT_TTL", parse_duration_setting, 30.0,
                "TTL when a registration asks for none [default: 30s]."),
        Setting("min-ttl", "A8_MIN_TTL", parse_duration_setting, 10.0,
                "Smallest TTL granted [default: 10s]."),
        Setting("max-ttl", "A8_MAX_TTL", parse_duration_setting, 600.0,
                "Largest TTL granted [default: 10m]."),
        Setting("namespace-capacity", "A8_NAMESPACE_CAPACITY", _capacity, None,
                "Most instances per namespace; -1 for no limit [default: -1]."),
        Setting("store", "A8_STORE", _store_kind, "inmem", "Store: inmem [default: inmem]."),
        Setting("store-address", "A8_STORE_ADDRESS", _text, None, "Address of the store."),
        Setting("store-password", "A8_STORE_PASSWORD", _text, None, "Password of the store."),
        Setting("k8s-url", "A8_K8S_URL", _not_yet("Kubernetes"), None, "Kubernetes API URL."),
        Setting("k8s-token", "A8_K8S_TOKEN", _text, None, "Kubernetes API token."),
        Setting("fs-catalog", "A8_FS_CATALOG", _not_yet("file system"), None,
                "Directory of a file catalog."),
        Setting("eureka-url", "A8_EUREKA_URL", _not_yet("Eureka"), None, "Eureka server URL."),
        Setting("log-level", "A8_LOG_LEVEL", parse_level, parse_level("info"),
                "debug, info, warn or error [default: info]."),
        Setting("metrics-token", "A8_METRICS_TOKEN", _text, None,
                "Bearer token that GET /metrics requires [default: none required]."),
    )

    def check(self):
        if "jwt" in self["auth-mode"] and not self["jwt-secret"]:
            raise usage.UsageError("--auth-mode jwt needs --jwt-secret (A8_JWT_SECRET)")
        low, default, high = self["min-ttl"], self["default-ttl"], self["max-ttl"]
        if low <= 0:
            raise usage.UsageError("--min-ttl must be above 0")
        if not low <= default <= high:
            raise usage.UsageError(
                "TTLs must satisfy min-ttl <= default-ttl <= max-ttl "
                "(got {:g} <= {:g} <= {:g})".format(low, default, high))


def makeService(options, reactor=None):
    """
    Build the registry: the store (expiry included) and one listener per C{--listen}.
    """
    if reactor is None:
        from twisted.internet import reactor
    configure_logs(options["log-level"])
    top = ServerService("a8registry")
    store = MemoryStore(clock=reactor, capacity=options["namespace-capacity"])
    store.setServiceParent(top)
    authenticator = Authenticator(
        modes=options["auth-mode"], clock=reactor, jwt_secret=options["jwt-secret"])
    api = RegistryAPI(
        store,
        authenticator,
        reactor,
        ttl=TTLPolicy(options["default-ttl"], options["min-ttl"], options["max-ttl"]),
        metrics=Metrics("a8_registry"),
        require_https=options["require-https"],
        metrics_token=options["metrics-token"],
    )
    site = A8Site(api.resource())
    add_listeners(top, reactor, options["listen"], site, Logger(namespace="amalgam8.registry"))
    return top
