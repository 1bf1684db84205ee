# -*- test-case-name: tests.test_registry_tap,tests.test_controller_tap -*-
"""
What the registry's and the controller's C{makeService} share: logging configured from the
options, the top L{ServerService}, the server's logger and metrics, the authenticator of its
auth chain (with the fallback counted and announced), and the site on every C{--listen}.
"""

import os
import sys

import attrs
from twisted.application.service import Service
from twisted.logger import Logger

from amalgam8.auth import Authenticator, announce_fallback
from amalgam8.logs import configure as configure_logs
from amalgam8.settings import ServerService, add_listeners, site_limits
from amalgam8.web import A8Site, Metrics
from amalgam8.workers import (WORKER_ENV, ParentWatch, Workers, listen_sockets, twistd_argv,
                              twistd_options, worker_arguments)

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

    def serve(self, resource, shared_store=False):
        """
        Serve C{resource} on every C{--listen} endpoint; returns the top service.

        With C{--processes N} above 1 (L{amalgam8.workers}), this process binds the
        sockets, serves on them and supervises N-1 workers that serve on them too; a worker
        (started so) watches its parent.

        @param shared_store: whether the server's store is shared between processes (only
            then may there be several).
        """
        site = A8Site(resource, reactor=self._reactor, **site_limits(self._options))
        count = self._options["processes"]
        if count > 1:
            self._serve_processes(site, count, shared_store)
        else:
            add_listeners(self.top, self._reactor, self._options["listen"], site, self.log)
            if os.environ.get(WORKER_ENV):
                ParentWatch(self._reactor).setServiceParent(self.top)
        return self.top

    def _serve_processes(self, site, count, shared_store):
        program = self.top.program
        if not shared_store:
            _refuse(program, "--processes {} needs a shared store (the registry's "
                    "A8_STORE=redis, the controller's A8_DATABASE_TYPE=redis or etcd): "
                    "processes of an in-process store would not see each other's "
                    "changes".format(count))
        try:
            sockets = listen_sockets(self._reactor, self._options["listen"])
        except ValueError as e:
            _refuse(program, str(e))
        except OSError as e:
            _refuse(program, "cannot listen: {}".format(e))
        for listening in sockets:
            _Adopted(self._reactor, listening, site, self.log, program).setServiceParent(
                self.top)
        argv = twistd_argv(program, worker_arguments(self._options.given, sockets),
                           twistd=twistd_options(sys.argv, program))
        Workers(self._reactor, argv, sockets, count, program=program).setServiceParent(
            self.top)


def _refuse(program, message):
    """Stop the start like a bad option: one line, exit status 2."""
    sys.stderr.write("{}: {}\n".format(program, message))
    sys.stderr.flush()
    raise SystemExit(2)


class _Adopted(Service):
    """Serve C{site} on a socket this process bound (L{amalgam8.workers.listen_sockets})."""

    def __init__(self, reactor, listening, site, log, program):
        self._reactor = reactor
        self._listening = listening
        self._site = site
        self._log = log
        self._program = program
        self._port = None

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self._port = self._reactor.adoptStreamPort(
            self._listening.fileno(), self._listening.family, self._site)
        address = self._port.getHost()
        self._log.info("{program} listening on {host}:{port} ({endpoint})",
                       program=self._program, host=getattr(address, "host", "?"),
                       port=getattr(address, "port", 0),
                       endpoint=self._listening.description)

    def startService(self):
        Service.startService(self)

    def stopService(self):
        Service.stopService(self)
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()


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
