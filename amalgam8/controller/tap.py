# -*- test-case-name: tests.test_controller_tap -*-
"""
C{twistd -n a8controller}: options, environment and the service tree of the controller.
"""


from twisted.logger import Logger
from twisted.python import usage

from amalgam8.auth import Authenticator
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.proxies import ProxyReports
from amalgam8.controller.store import FileStore, MemoryStore
from amalgam8.controller.traces import TraceBuffer
from amalgam8.errors import StoreCorrupt
from amalgam8.logs import configure as configure_logs
from amalgam8.settings import (
    ServerService,
    Setting,
    SettingsOptions,
    add_listeners,
    check_common,
    common_settings,
    parse_duration_setting,
    parse_positive_int,
)
from amalgam8.web import A8Site, Metrics

__all__ = ["Options", "makeService"]


def _database(text):
    kind = text.strip().lower()
    if kind in ("memory", "inmem", ""):
        return "memory"
    if kind == "file":
        return "file"
    if kind == "redis":
        raise ValueError("the redis database is not available in this version "
                         "(use memory or file)")
    raise ValueError("unknown database type {!r} (expected memory or file)".format(text))


def _text(text):
    return text


class Options(SettingsOptions):
    """Options of C{a8controller}; each one also an C{A8_*} environment variable."""

    program = "a8controller"
    synopsis = "[options]"
    settings = common_settings() + (
        Setting("database-type", "A8_DATABASE_TYPE", _database, "memory",
                "Where rules are kept: memory or file [default: memory]."),
        Setting("database-host", "A8_DATABASE_HOST", _text, None,
                "For the file database: the path of the rule file."),
        Setting("database-password", "A8_DATABASE_PASSWORD", _text, None,
                "Password of the database (redis)."),
        Setting("trace-capacity", "A8_TRACE_CAPACITY", parse_positive_int, 100_000,
                "Trace records kept per namespace [default: 100000]."),
        Setting("proxy-report-interval", "A8_PROXY_REPORT_INTERVAL", parse_duration_setting,
                30.0, "Report interval assumed for proxies that name none [default: 30s]."),
    )

    def check(self):
        check_common(self)
        if self["proxy-report-interval"] <= 0:
            raise usage.UsageError("--proxy-report-interval must be above 0")
        if self["database-type"] == "file":
            path = self["database-host"]
            if not path:
                raise usage.UsageError(
                    "--database-type file needs --database-host PATH (A8_DATABASE_HOST)")
            try:
                self["rule-store"] = FileStore(path)
            except StoreCorrupt as e:
                raise usage.UsageError(str(e))
        else:
            self["rule-store"] = MemoryStore()


def makeService(options, reactor=None):
    """Build the controller: the rule store and one listener per C{--listen}."""
    if reactor is None:
        from twisted.internet import reactor
    configure_logs(options["log-level"])
    top = ServerService("a8controller")
    store = options.get("rule-store") or MemoryStore()
    store.setServiceParent(top)
    api = ControllerAPI(
        store,
        Authenticator(modes=options["auth-mode"], clock=reactor,
                      jwt_secret=options["jwt-secret"]),
        reactor,
        proxies=ProxyReports(reactor, options["proxy-report-interval"]),
        traces=TraceBuffer(options["trace-capacity"]),
        metrics=Metrics("a8_controller"),
        require_https=options["require-https"],
        metrics_token=options["metrics-token"],
    )
    site = A8Site(api.resource())
    add_listeners(top, reactor, options["listen"], site,
                  Logger(namespace="amalgam8.controller"))
    return top
