# -*- test-case-name: tests.test_registry_tap,tests.test_controller_tap -*-
"""
What the registry's and the controller's C{makeService} share: logging configured from the
options, the top L{ServerService}, the server's logger and metrics, the authenticator of its
auth chain (with the fallback counted and announced), and the site on every C{--listen}.
"""

import attrs
from twisted.logger import Logger

from amalgam8.auth import Authenticator, announce_fallback
from amalgam8.logs import configure as configure_logs
from amalgam8.settings import ServerService, add_listeners, site_limits
from amalgam8.web import A8Site, Metrics

__all__ = ["ServerParts", "server_parts"]


@attrs.frozen
class ServerParts:
    """
    The common parts of one server.

    @ivar top: the L{ServerService} every other service is a child of.
    @ivar log: the server's L{Logger}.
    @ivar metrics: its L{Metrics}.
    @ivar authenticator: its L{Authenticator}.
    """

    top: ServerService
    log: Logger
    metrics: Metrics
    authenticator: Authenticator
    _reactor: object
    _options: object

    def serve(self, resource):
        """Serve C{resource} on every C{--listen} endpoint; returns the top service."""
        site = A8Site(resource, reactor=self._reactor, **site_limits(self._options))
        add_listeners(self.top, self._reactor, self._options["listen"], site, self.log)
        return self.top


def server_parts(program, options, reactor):
    """
    The common parts of the server C{program} (C{"registry"} or C{"controller"}) for its
    parsed C{options}.
    """
    configure_logs(options["log-level"])
    log = Logger(namespace="amalgam8." + program)
    metrics = Metrics("a8_" + program)
    announce_fallback(log, options["auth-mode"])
    authenticator = Authenticator(
        modes=options["auth-mode"], clock=reactor, jwt_secret=options["jwt-secret"],
        fallback=metrics.auth_fallback)
    return ServerParts(ServerService("a8" + program), log, metrics, authenticator,
                       reactor, options)
