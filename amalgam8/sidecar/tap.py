# -*- test-case-name: tests.test_sidecar_tap -*-
"""
C{twistd -n a8sidecar [options] [-- app argv...]}: the process beside each microservice.

It joins the registry, the controller and the proxy into a working mesh: registration with
health checks, the route manager feeding the nginx + Lua proxy, supervision of the proxy and
the app, trace shipping and a debug API. The parts, their start order and the graceful stop
(SPEC B4) are L{amalgam8.sidecar.service.SidecarService}'s; this module parses the options
and L{makeService} calls the service's builder.
"""

import os
import sys

from twisted.python import usage

from amalgam8.client import http_client
from amalgam8.sidecar import config as configuration
from amalgam8.sidecar.proxy import find_nginx
from amalgam8.sidecar.service import SidecarService

__all__ = ["Options", "makeService"]

_FLAGS = [
    ("config", "A8_CONFIG", "YAML configuration file."),
    ("service", "A8_SERVICE", "This service: name[:tag1,tag2]."),
    ("endpoint-host", "A8_ENDPOINT_HOST", "Address to register [default: first non-loopback IPv4]."),
    ("endpoint-port", "A8_ENDPOINT_PORT", "Port to register."),
    ("endpoint-type", "A8_ENDPOINT_TYPE", "Endpoint type [default: http]."),
    ("register", "A8_REGISTER", "Register this service (true/false)."),
    ("proxy", "A8_PROXY", "Run the proxy (true/false)."),
    ("registry-url", "A8_REGISTRY_URL", "Registry URL."),
    ("registry-token", "A8_REGISTRY_TOKEN", "Registry bearer token."),
    ("registry-poll", "A8_REGISTRY_POLL", "Registry poll interval when it cannot block [15s]."),
    ("controller-url", "A8_CONTROLLER_URL", "Controller URL."),
    ("controller-token", "A8_CONTROLLER_TOKEN", "Controller bearer token."),
    ("controller-poll", "A8_CONTROLLER_POLL", "Controller poll interval when it cannot block [15s]."),
    ("healthchecks", "A8_HEALTHCHECKS", "Comma list of http://, https://, tcp://, file:// checks."),
    ("log-level", "A8_LOG_LEVEL", "debug, info, warn or error."),
    ("proxy-port", "A8_PROXY_PORT", "Proxy port [6379]."),
    ("proxy-admin-port", "A8_PROXY_ADMIN_PORT", "Proxy admin port on 127.0.0.1 [5813]."),
    ("debug-port", "A8_DEBUG_PORT", "Debug API port on 127.0.0.1 [6116]; 0 turns it off."),
    ("stop-timeout", "A8_STOP_TIMEOUT", "Deadline of a graceful stop [30s]."),
    ("proxy-workers", "A8_PROXY_WORKERS", "nginx worker processes [1]."),
    ("runtime-dir", "A8_RUNTIME_DIR", "Where the proxy's files go [a new temporary directory]."),
    ("nginx", "A8_NGINX", "The nginx (or openresty) binary [found on PATH]."),
]


class Options(usage.Options):
    """Options of C{a8sidecar}; flags > A8_* environment > YAML file > defaults."""

    synopsis = "[options] [-- app argv...]"
    optParameters = [[flag, None, None, "{} ({})".format(text, env)] for flag, env, text in _FLAGS]

    def __init__(self, environ=None):
        usage.Options.__init__(self)
        self.environ = os.environ if environ is None else environ
        self["app"] = ()

    def parseArgs(self, *app):
        self["app"] = app

    def parseOptions(self, options=None):
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            sys.stderr.write("a8sidecar: {}\n".format(e))
            sys.stderr.flush()
            raise SystemExit(2)

    def postOptions(self):
        flags = {flag.replace("-", "_"): self[flag] for flag, _, _ in _FLAGS}
        try:
            self["sidecar"] = configuration.load(flags, self.environ, self["app"])
        except configuration.ConfigError as e:
            raise usage.UsageError(str(e))
        sidecar = self["sidecar"]
        if sidecar.proxy:
            try:
                self["nginx-binary"], self["nginx-modules"] = find_nginx(sidecar.nginx or None)
            except Exception as e:
                raise usage.UsageError("A8_NGINX: {}".format(e))


def makeService(options, reactor=None):
    """
    The sidecar of the parsed options: L{SidecarService.from_config}, plus exiting with the
    code of the app that ended it (SPEC A5: the app after C{--} has C{on_exit: terminate}).
    """
    if reactor is None:
        from twisted.internet import reactor
    from amalgam8.logs import configure, parse_level

    config = options["sidecar"]
    configure(parse_level(config.log_level))
    sidecar = SidecarService.from_config(reactor, config, http_client(reactor),
                                         nginx_binary=options.get("nginx-binary"),
                                         nginx_modules=options.get("nginx-modules", ()))

    def exit_with_app_code():
        if sidecar.exit_code is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(sidecar.exit_code)

    reactor.addSystemEventTrigger("after", "shutdown", exit_with_app_code)
    return sidecar
