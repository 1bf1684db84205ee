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
from amalgam8.settings import SettingsOptions

__all__ = ["Options", "makeService"]


class Options(SettingsOptions):
    """
    Options of C{a8sidecar}: L{configuration.SETTINGS} (flags > A8_* environment > YAML
    file > defaults); C{self["sidecar"]} is the resulting L{configuration.SidecarConfig}.
    """

    program = "a8sidecar"
    synopsis = "[options] [-- app argv...]"
    settings = configuration.SETTINGS

    def __init__(self, environ=None):
        SettingsOptions.__init__(self, environ)
        self["app"] = ()

    def parseArgs(self, *app):
        self["app"] = app

    def postOptions(self):
        flags = {name.replace("-", "_"): value for name, value in self.given_flags().items()}
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
