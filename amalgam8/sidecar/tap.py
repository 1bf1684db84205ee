# -*- test-case-name: tests.test_sidecar_tap -*-
"""
C{twistd -n a8sidecar [options] [-- app argv...]}: the process beside each microservice.

It joins the registry, the controller and the proxy into a working mesh: registration with
health checks, the route manager feeding the nginx + Lua proxy, supervision of the proxy and
the app, trace shipping and a debug API. Lifecycle (SPEC B4): the app starts only once the
proxy holds its first state; a graceful stop deregisters first, waits one propagation
interval, then stops the app and drains and stops the proxy, all under one deadline.
"""

import os
import signal
import socket
import sys
import tempfile
import uuid

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage
from amalgam8.web import A8Site

from amalgam8.client import ControllerClient, RegistryClient, http_client
from amalgam8.sidecar import config as configuration
from amalgam8.sidecar.debug import DebugAPI
from amalgam8.sidecar.proxy import AdminClient, ProxyConfig, command, find_nginx, write
from amalgam8.sidecar.routes import RouteManager
from amalgam8.sidecar.tracelog import TraceShipper
from amalgam8.settings import SettingsOptions

__all__ = ["Options", "makeService", "Sidecar"]

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


class Sidecar(MultiService):
    """
    The sidecar's parts, started and stopped in the order SPEC B4 asks for.
    """

    log = Logger()

    def __init__(self, reactor, config, http, nginx_binary=None, nginx_modules=(),
                 supervisor=None, propagation_delay=1.0):
        MultiService.__init__(self)
        self._reactor = reactor
        self.config = config
        self._http = http
        self.exit_code = None
        self._propagation_delay = propagation_delay
        self._stopping = None
        self.proxy_id = "{}-{}-{}".format(config.service_name or "sidecar", socket.gethostname(),
                                          uuid.uuid4().hex[:8])
        from amalgam8.sidecar.supervisor import Supervisor

        self.supervisor = supervisor or Supervisor(reactor, on_terminate=self._app_ended)
        self.registrar = None
        self.health = None
        self.routes = None
        self.traces = None
        self.proxy_config = None
        registry = RegistryClient(http, config.registry_url, config.registry_token or None,
                                  reactor=reactor) if config.registry_url else None
        if config.proxy:
            runtime = config.runtime_dir or tempfile.mkdtemp(prefix="a8sidecar-")
            self.proxy_config = ProxyConfig(
                runtime_dir=runtime, port=config.proxy_port, address=config.proxy_address,
                admin_port=config.proxy_admin_port, workers=config.proxy_workers,
                service_name=config.service_name, service_tags=config.service_tags)
            write(self.proxy_config, nginx_modules)
            self.admin = AdminClient(http, config.proxy_admin_port, reactor=reactor)
            controller = ControllerClient(http, config.controller_url,
                                          config.controller_token or None, reactor=reactor)
            self.routes = RouteManager(
                reactor, registry, controller, self.admin.push, self.proxy_id,
                config.service_name, config.service_tags,
                registry_poll=config.registry_poll, controller_poll=config.controller_poll)
            self.traces = TraceShipper(reactor, self.proxy_config.access_log_path,
                                       controller.post_traces, reopen=self._reopen_logs)
            self.supervisor.add_proxy(command(self.proxy_config, nginx_binary),
                                      on_start=self.routes.proxy_restarted, kill_group=True)
        for n, app in enumerate(config.commands):
            self.supervisor.add_app(app, name="app" if n == 0 else "app{}".format(n))
        if config.register:
            from amalgam8.sidecar.registration import Registrar

            body = {
                "service_name": config.service_name,
                "endpoint": {"type": config.endpoint_type,
                             "value": "{}:{}".format(config.endpoint_host,
                                                     config.endpoint_port)},
                "ttl": config.ttl,
            }
            if config.service_tags:
                body["tags"] = list(config.service_tags)
            self.registrar = Registrar(reactor, registry, body,
                                       gated=bool(config.healthchecks))
            if config.healthchecks:
                from amalgam8.sidecar.health import HealthChecker

                self.health = HealthChecker(reactor, config.healthchecks, http,
                                            self.registrar.set_healthy)

    # -- start -----------------------------------------------------------------------------

    def startService(self):
        MultiService.startService(self)
        self.supervisor.startService()
        if self.routes is not None:
            self.routes.startService()
            self.traces.startService()
            ready = self.routes.first_state()
        else:
            ready = succeed(None)
        ready.addCallback(self._ready)
        ready.addErrback(lambda f: self.log.failure("sidecar start failed", f))

    def _ready(self, _):
        if self.routes is not None:
            self.log.info("proxy holds its first state; starting the app")
        self.supervisor.start_apps()
        if self.health is not None:
            self.health.startService()
        if self.registrar is not None:
            self.registrar.startService()

    def _reopen_logs(self):
        pid_path = self.proxy_config.pid_path
        try:
            with open(pid_path) as f:
                os.kill(int(f.read().strip()), signal.SIGUSR1)
        except (OSError, ValueError) as e:
            self.log.warn("cannot ask nginx to reopen its logs: {error}", error=str(e))

    # -- stop ------------------------------------------------------------------------------

    def _app_ended(self, code):
        """An app with on_exit terminate ended: stop everything, exit with its code."""
        if self.exit_code is not None:
            return
        self.exit_code = code
        self.log.info("the app exited with {code}; stopping the sidecar", code=code)
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass

    def stopService(self):
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        return self._stopping

    async def _stop(self):
        deadline = self._reactor.seconds() + self.config.stop_timeout
        MultiService.stopService(self)
        # 1. Out of the registry first, so callers stop choosing us.
        if self.health is not None:
            self.health.stopService()
        if self.registrar is not None and self.registrar.running:
            await self._within(self.registrar.stopService(), deadline)
            # 2. One propagation interval for the callers' proxies to drop us.
            wait = min(self._propagation_delay, max(0, deadline - self._reactor.seconds()))
            await deferLater(self._reactor, wait, lambda: None)
        # 3. The app, then the proxy (nginx drains its in-flight requests on QUIT).
        await self._within(self.supervisor.stop_apps(deadline), deadline)
        if self.routes is not None:
            self.routes.stopService()
            self.traces.stopService()
        await self._within(self.supervisor.stopService(), deadline)

    async def _within(self, work, deadline):
        remaining = max(0.0, deadline - self._reactor.seconds())
        d = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work) \
            if hasattr(work, "__await__") and not isinstance(work, Deferred) else succeed(work)
        d.addTimeout(remaining, self._reactor)
        try:
            await d
        except Exception as e:
            self.log.warn("graceful stop step cut short: {error}", error=str(e) or repr(e))

    def debug_state(self):
        result = {
            "service": {"name": self.config.service_name,
                        "tags": list(self.config.service_tags)},
            "proxy_id": self.proxy_id,
            "children": self.supervisor.state(),
        }
        if self.routes is not None:
            result["routes"] = self.routes.debug_state()
            result["state"] = self.routes.state()
            result["traces"] = self.traces.state()
            result["proxy"] = {"runtime_dir": self.proxy_config.runtime_dir,
                               "port": self.proxy_config.port,
                               "admin_port": self.proxy_config.admin_port}
        if self.registrar is not None:
            result["registration"] = self.registrar.state()
        if self.health is not None:
            result["health"] = self.health.state()
        return result


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from amalgam8.logs import configure, parse_level

    config = options["sidecar"]
    configure(parse_level(config.log_level))
    http = http_client(reactor)
    sidecar = Sidecar(reactor, config, http, options.get("nginx-binary"),
                      options.get("nginx-modules", ()))
    if config.debug_port:
        debug = StreamServerEndpointService(
            serverFromString(reactor, "tcp:{}:interface=127.0.0.1".format(config.debug_port)),
            A8Site(DebugAPI(sidecar).resource()))
        debug.setServiceParent(sidecar)

    def exit_with_app_code():
        if sidecar.exit_code is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(sidecar.exit_code)

    reactor.addSystemEventTrigger("after", "shutdown", exit_with_app_code)
    return sidecar
