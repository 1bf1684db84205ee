# -*- test-case-name: tests.test_sidecar_service -*-
"""
The sidecar as one L{SidecarService}, built from its configuration by
L{SidecarService.from_config}: each part is a named child service, attached in the order it
must start.

    supervisor    the L{Supervisor} of nginx and the apps
    proxy         nginx under the supervisor; its runtime directory and nginx.conf are made
                  when it starts (L{ProxyService})
    routes        the route manager (blocking reads -> the proxy's admin endpoint)
    traces        trace shipping from the proxy's access log
    debug         the debug API on 127.0.0.1
    --- once the proxy holds its first state (SPEC B4; at once without the proxy) ---
    apps          the apps (L{AppsService})
    health        the health checks
    registration  the L{Registrar}

C{proxy}, C{routes} and C{traces} exist with the proxy; C{health} with health checks;
C{registration} when registering; C{debug} unless its port is 0; C{apps} always.

A stop (L{SidecarService.stopService}) is SPEC B4's graceful stop, under one deadline
(C{stop_timeout}): the debug API and the health checks stop, the instance is deregistered,
one propagation interval passes (only if it was registered), the apps are stopped, the route
manager and trace shipping stop, nginx drains and stops (QUIT), then the supervisor. A step
that overruns the deadline is cut short and logged, and the next one runs.
"""

import shutil
import signal
import socket
import tempfile
import uuid

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage

from amalgam8.client import ControllerClient, RegistryClient
from amalgam8.sidecar.debug import DebugAPI
from amalgam8.sidecar.health import HealthChecker
from amalgam8.sidecar.proxy import AdminClient, ProxyConfig, command, find_nginx, write
from amalgam8.sidecar.registration import Registrar
from amalgam8.sidecar.routes import RouteManager
from amalgam8.sidecar.supervisor import ProcessGroupSignaller, Supervisor
from amalgam8.sidecar.tracelog import TraceShipper
from amalgam8.settings import ServerService
from amalgam8.web import A8Site

__all__ = ["SidecarService", "ProxyService", "AppsService", "AppExit", "GATED", "STOP_ORDER"]

# The children started only once the proxy holds its first state, in their start order.
GATED = ("apps", "health", "registration")
# The order of the graceful stop.
STOP_ORDER = ("debug", "health", "registration", "apps", "traces", "routes", "proxy",
              "supervisor")


def _runtime_directory():
    return tempfile.mkdtemp(prefix="a8sidecar-")


class ProxyService(Service):
    """
    nginx, run by the supervisor. Starting makes the runtime directory (C{runtime_dir}, or
    a new temporary one from C{make_directory}), writes nginx.conf into it and hands nginx
    to the supervisor (restarted with backoff, as the leader of its own process group);
    stopping drains nginx (QUIT, then TERM and KILL, within the supervisor's deadline), then
    removes the runtime directory if this service made it (never C{runtime_dir}).

    @ivar config: the L{ProxyConfig}, L{None} until the service has started.
    """

    log = Logger()

    def __init__(self, supervisor, settings, binary, modules, on_start, make_directory):
        """
        @param supervisor: the L{Supervisor}.
        @param settings: the L{amalgam8.sidecar.config.SidecarConfig}.
        @param binary: the nginx binary; C{modules}: the dynamic modules it loads.
        @param on_start: called after every spawn of nginx (it comes up empty).
        @param make_directory: C{() -> path}: makes a new runtime directory.
        """
        self._supervisor = supervisor
        self._settings = settings
        self._binary = binary
        self._modules = modules
        self._on_start = on_start
        self._make_directory = make_directory
        self.config = None
        self.made_directory = None      # the runtime directory this service made itself

    @property
    def access_log_path(self):
        """The access log nginx writes (L{None} before the start)."""
        return None if self.config is None else self.config.access_log_path

    def startService(self):
        Service.startService(self)
        if self.config is not None:
            return                      # started before: nginx is the supervisor's already
        settings = self._settings
        runtime_dir = settings.runtime_dir
        if not runtime_dir:
            runtime_dir = self.made_directory = self._make_directory()
        self.config = ProxyConfig(
            runtime_dir=runtime_dir,
            port=settings.proxy_port, address=settings.proxy_address,
            admin_port=settings.proxy_admin_port, workers=settings.proxy_workers,
            service_name=settings.service_name, service_tags=settings.service_tags)
        write(self.config, self._modules)
        self.log.info("nginx.conf written in {runtime_dir}", runtime_dir=self.config.runtime_dir)
        self._supervisor.add_proxy(command(self.config, self._binary),
                                   on_start=self._on_start, kill_group=True)

    def stopService(self):
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        await self._supervisor.stop_proxy()
        # nginx has stopped: the temporary runtime directory goes with it (one the operator
        # named in A8_RUNTIME_DIR stays, with its logs).
        if self.made_directory is not None:
            shutil.rmtree(self.made_directory, ignore_errors=True)
            self.log.info("removed the runtime directory {runtime_dir}",
                          runtime_dir=self.made_directory)
            self.made_directory = None

    def reopen_logs(self):
        """Ask nginx to reopen its log files (after a rotation of the access log)."""
        if not self._supervisor.signal_proxy(signal.SIGUSR1):
            self.log.warn("cannot ask nginx to reopen its logs: it is not running")


class AppsService(Service):
    """The apps, started by the supervisor when this starts, stopped for good when it stops."""

    def __init__(self, supervisor):
        self._supervisor = supervisor

    def startService(self):
        Service.startService(self)
        self._supervisor.start_apps()

    def stopService(self):
        Service.stopService(self)
        return Deferred.fromCoroutine(self._supervisor.stop_apps())


class AppExit:
    """
    The supervisor's C{on_terminate}: an app with C{on_exit: terminate} ended, so the sidecar
    stops (the reactor, hence the graceful stop) and will exit with the app's code.

    @ivar code: the first such exit code, or L{None}.
    """

    log = Logger()

    def __init__(self, reactor):
        self._reactor = reactor
        self.code = None

    def __call__(self, code):
        if self.code is not None:
            return
        self.code = code
        self.log.info("the app exited with {code}; stopping the sidecar", code=code)
        # An app that cannot be run ends while twistd starts the services, before the
        # reactor runs: stopping then would raise ReactorNotRunning and the sidecar would
        # run on. callWhenRunning stops it at once if it runs, else as soon as it does.
        self._reactor.callWhenRunning(self._stop)

    def _stop(self):
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass                        # already stopping (a signal came first)


class SidecarService(ServerService):
    """
    The sidecar's parts as child services (see the module docstring); built by
    L{from_config}. As a L{ServerService}, a debug port in use stops the start (before any
    app runs) with one line and exit status 2.
    """

    log = Logger()

    def __init__(self, reactor, config, supervisor, app_exit, proxy_id,
                 propagation_delay=1.0):
        """
        @param reactor: the C{IReactorTime} of the stop's deadline and propagation wait.
        @param config: the L{amalgam8.sidecar.config.SidecarConfig}.
        @param supervisor: the L{Supervisor} (also attached as the C{supervisor} child).
        @param app_exit: the L{AppExit} given to the supervisor.
        @param proxy_id: this proxy's id in the status reports (SPEC B2).
        @param propagation_delay: seconds between the deregistration and the apps' stop.
        """
        ServerService.__init__(self, "a8sidecar")
        self._reactor = reactor
        self.config = config
        self.supervisor = supervisor
        self._app_exit = app_exit
        self.proxy_id = proxy_id
        self._propagation_delay = propagation_delay
        self._stopping = None

    @classmethod
    def from_config(cls, reactor, config, http, nginx_binary=None, nginx_modules=(),
                    signaller=None, propagation_delay=1.0, make_directory=None,
                    hostname=None):
        """
        The sidecar of a L{amalgam8.sidecar.config.SidecarConfig}, its parts attached in
        start order. Nothing is spawned, written or listened on before it starts.

        @param reactor: an C{IReactorProcess}, C{IReactorTime} and C{IReactorTCP}.
        @param http: a treq-like HTTP client (L{amalgam8.client.http_client}).
        @param nginx_binary: the nginx binary and C{nginx_modules} its dynamic modules
            (default: L{find_nginx} of C{config.nginx}).
        @param signaller: the L{IProcessSignaller} (default: the real one).
        @param make_directory: makes the runtime directory when C{runtime_dir} is not set
            (default: a new temporary directory).
        @param hostname: this host's name, for the proxy id (default: the real one).
        @raise usage.UsageError: the proxy is wanted but no usable nginx was found.
        """
        if config.proxy and nginx_binary is None:
            try:
                nginx_binary, nginx_modules = find_nginx(config.nginx or None)
            except Exception as e:
                raise usage.UsageError("A8_NGINX: {}".format(e))
        proxy_id = "{}-{}-{}".format(config.service_name or "sidecar",
                                     hostname or socket.gethostname(), uuid.uuid4().hex[:8])
        app_exit = AppExit(reactor)
        supervisor = Supervisor(reactor, signaller or ProcessGroupSignaller(),
                                on_terminate=app_exit)
        sidecar = cls(reactor, config, supervisor, app_exit, proxy_id, propagation_delay)
        registry = RegistryClient(http, config.registry_url, config.registry_token or None,
                                  reactor=reactor) if config.registry_url else None

        supervisor.setName("supervisor")
        supervisor.setServiceParent(sidecar)
        if config.proxy:
            controller = ControllerClient(http, config.controller_url,
                                          config.controller_token or None, reactor=reactor)
            admin = AdminClient(http, config.proxy_admin_port, reactor=reactor)
            routes = RouteManager(
                reactor, registry, controller, admin.push, proxy_id,
                config.service_name, config.service_tags,
                registry_poll=config.registry_poll, controller_poll=config.controller_poll)
            proxy = ProxyService(supervisor, config, nginx_binary, nginx_modules,
                                 routes.proxy_restarted, make_directory or _runtime_directory)
            traces = TraceShipper(reactor, lambda: proxy.access_log_path,
                                  controller.post_traces, reopen=proxy.reopen_logs)
            for name, part in (("proxy", proxy), ("routes", routes), ("traces", traces)):
                part.setName(name)
                part.setServiceParent(sidecar)
        if config.debug_port:
            debug = StreamServerEndpointService(
                serverFromString(reactor, "tcp:{}:interface=127.0.0.1".format(
                    config.debug_port)),
                A8Site(DebugAPI(sidecar).resource()))
            debug._raiseSynchronously = True    # a port in use fails the start
            debug.setName("debug")
            debug.setServiceParent(sidecar)

        for n, app in enumerate(config.commands):
            supervisor.add_app(app, name="app" if n == 0 else "app{}".format(n))
        apps = AppsService(supervisor)
        apps.setName("apps")
        apps.setServiceParent(sidecar)
        if config.register:
            registrar = Registrar.from_config(reactor, registry, config)
            if config.healthchecks:
                health = HealthChecker(reactor, config.healthchecks, http,
                                       registrar.set_healthy)
                health.setName("health")
                health.setServiceParent(sidecar)
            registrar.setName("registration")
            registrar.setServiceParent(sidecar)
        return sidecar

    def part(self, name):
        """The child named C{name}, or L{None}."""
        return self.namedServices.get(name)

    @property
    def exit_code(self):
        """The exit code of the app that ended the sidecar (C{on_exit: terminate}), or None."""
        return self._app_exit.code

    # -- start -----------------------------------------------------------------------------


    def startService(self):
        """Start the ungated parts in order; the gated ones once the proxy has its state."""
        Service.startService(self)
        for part in self:
            if part.name not in GATED:
                part.startService()
        routes = self.part("routes")
        ready = routes.first_state() if routes is not None else succeed(None)
        ready.addCallback(self._ready)
        ready.addErrback(lambda f: self.log.failure("sidecar start failed", f))

    def _ready(self, _):
        if not self.running:
            return
        if self.part("routes") is not None:
            self.log.info("proxy holds its first state; starting the app")
        for part in self:
            if part.name not in GATED:
                continue
            if not self.running or self.exit_code is not None:
                # The app ended as it started (it could not be run): nothing to register.
                self.log.info("not starting {name}: the sidecar is stopping", name=part.name)
                return
            part.startService()

    # -- stop ------------------------------------------------------------------------------

    def stopService(self):
        """The graceful stop (see the module docstring); idempotent."""
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        return self._stopping

    async def _stop(self):
        deadline = self._reactor.seconds() + self.config.stop_timeout
        Service.stopService(self)
        self.supervisor.limit(deadline)
        for name in STOP_ORDER:
            part = self.part(name)
            if part is None or not part.running:
                continue
            await self._within(maybeDeferred(part.stopService), deadline)
            if name == "registration":
                # One propagation interval for the callers' proxies to drop us.
                wait = min(self._propagation_delay,
                           max(0.0, deadline - self._reactor.seconds()))
                await deferLater(self._reactor, wait, lambda: None)

    async def _within(self, work, deadline):
        work.addTimeout(max(0.0, deadline - self._reactor.seconds()), self._reactor)
        try:
            await work
        except Exception as e:
            self.log.warn("graceful stop step cut short: {error}", error=str(e) or repr(e))

    # -- the debug API's view --------------------------------------------------------------

    def debug_state(self):
        """What C{GET /state} of the debug API shows (docs/sidecar.md)."""
        result = {
            "service": {"name": self.config.service_name,
                        "tags": list(self.config.service_tags)},
            "proxy_id": self.proxy_id,
            "children": self.supervisor.state(),
        }
        routes, proxy = self.part("routes"), self.part("proxy")
        if routes is not None:
            result["routes"] = routes.debug_state()
            result["state"] = routes.state()
            result["traces"] = self.part("traces").state()
            config = proxy.config
            result["proxy"] = {"runtime_dir": None if config is None else config.runtime_dir,
                               "port": self.config.proxy_port,
                               "admin_port": self.config.proxy_admin_port}
        registration, health = self.part("registration"), self.part("health")
        if registration is not None:
            result["registration"] = registration.state()
        if health is not None:
            result["health"] = health.state()
        return result
