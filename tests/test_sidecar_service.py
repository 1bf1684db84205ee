"""
Tests for L{amalgam8.sidecar.service}: the sidecar built from its configuration, its parts
started and stopped in the order SPEC B4 asks for, with a fake process reactor, a fake
process-group signaller and in-memory servers.
"""

import io
import json
import os
import signal
import sys
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.application.service import IService
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject
from twisted.web.resource import Resource

from amalgam8.auth import Authenticator
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.store import MemoryStore as RuleStore
from amalgam8.registry.api import RegistryAPI
from amalgam8.registry.store import MemoryStore as InstanceStore
from amalgam8.sidecar.config import load
from amalgam8.sidecar.debug import DebugAPI
from amalgam8.sidecar.service import GATED, STOP_ORDER, SidecarService
from amalgam8.testing.process import FakeProcessReactor, FakeSignaller, signal_number


class FakeAdmin(Resource):
    """The proxy's admin endpoint: records the states pushed."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.states = []
        self.up = True

    def render(self, request):
        if not self.up:
            request.setResponseCode(502)
            return b"{}"
        self.states.append(json.loads(request.content.read()))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"version": len(self.states)}).encode()


class Routing:
    """One treq-like client for several in-memory servers, chosen by host:port."""

    def __init__(self, servers):
        self.stubs = {host: StubTreq(resource) for host, resource in servers.items()}

    def _stub(self, url):
        return self.stubs[urlsplit(url).netloc]

    def request(self, method, url, **kwargs):
        return self._stub(url).request(method, url, **kwargs)

    def get(self, url, **kwargs):
        return self._stub(url).get(url, **kwargs)

    def post(self, url, **kwargs):
        return self._stub(url).post(url, **kwargs)

    def flush(self):
        for stub in self.stubs.values():
            stub.flush()


class SidecarTestsMixin:
    """A sidecar on a fake process reactor, beside an in-memory registry and controller."""

    def setUp(self):
        self.reactor = FakeProcessReactor()
        # Group signals reach the fake process leading the group.
        self.signaller = FakeSignaller(self.reactor)
        self.reactor.advance(1_700_000_000)
        self.reactor.running = True
        auth = Authenticator(modes=("default",), clock=self.reactor)
        self.instances = InstanceStore(clock=self.reactor)
        self.instances.startService()
        self.addCleanup(self.instances.stopService)
        self.admin = FakeAdmin()
        self.http = Routing({
            "registry:8080": RegistryAPI(self.instances, auth, self.reactor).resource(),
            "controller:8081": ControllerAPI(RuleStore(), auth, self.reactor).resource(),
            "127.0.0.1:5813": self.admin,
        })
        self.runtime = self.mktemp()
        self.made = []

    def sidecar(self, app=("python", "app.py"), **environ):
        env = {"A8_SERVICE": "reviews:v2", "A8_REGISTER": "true", "A8_PROXY": "true",
               "A8_ENDPOINT_PORT": "9080", "A8_ENDPOINT_HOST": "10.0.0.5",
               "A8_REGISTRY_URL": "http://registry:8080",
               "A8_CONTROLLER_URL": "http://controller:8081",
               "A8_RUNTIME_DIR": self.runtime}
        env.update(environ)
        config = load({}, env, app=app)
        return SidecarService.from_config(
            self.reactor, config, self.http, nginx_binary="/usr/sbin/nginx", nginx_modules=[],
            signaller=self.signaller, propagation_delay=1.0, make_directory=self.make_directory,
            hostname="host1")

    def make_directory(self):
        """The runtime directory when A8_RUNTIME_DIR is not set (recorded)."""
        path = self.mktemp()
        os.makedirs(path)
        self.made.append(path)
        return path

    def settle(self, seconds=0.01, rounds=10):
        for _ in range(rounds):
            self.http.flush()
            self.reactor.advance(seconds)

    def spawned(self):
        """The programs started, seen through a setsid(1) wrapper (kill_group)."""
        names = []
        for p in self.reactor.processes:
            args = p.args
            if os.path.basename(args[0]) == "setsid" or args[:2] == [sys.executable, "-c"]:
                args = args[args.index("--") + 1:] if "--" in args else args[3:]
            names.append(args[0])
        return names

    def registered(self):
        return [i.id for i in self.successResultOf(self.instances.instances("default"))[1]]



class SidecarTests(SidecarTestsMixin, SynchronousTestCase):
    """The sidecar's behaviour: start order, restarts, graceful stop, exit code, state."""

    def test_app_waits_for_first_state(self):
        """nginx starts first; the app only once the proxy holds its first state; then the
        instance registers."""
        self.admin.up = False
        sidecar = self.sidecar()
        sidecar.startService()
        self.settle()
        self.assertEqual(self.spawned(), ["/usr/sbin/nginx"])
        self.assertEqual(self.registered(), [])
        self.admin.up = True
        self.settle(0.1, rounds=30)
        self.assertEqual(self.spawned(), ["/usr/sbin/nginx", "python"])
        self.assertEqual(len(self.registered()), 1)
        self.assertEqual(sorted(self.admin.states[-1]), ["instances", "rules"])

    def test_proxy_restart_repushes(self):
        """When nginx dies it is restarted and the state pushed again."""
        sidecar = self.sidecar()
        sidecar.startService()
        self.settle()
        pushes = len(self.admin.states)
        self.reactor.processes[0].end(exitCode=1)
        self.settle(0.5, rounds=10)
        self.assertEqual(self.spawned().count("/usr/sbin/nginx"), 2)
        self.assertGreater(len(self.admin.states), pushes)

    def test_graceful_stop_order(self):
        """A stop deregisters first, waits a propagation interval, then stops the app and
        then nginx."""
        sidecar = self.sidecar()
        sidecar.startService()
        self.settle()
        self.assertEqual(len(self.registered()), 1)
        nginx, app = self.reactor.processes
        stopping = sidecar.stopService()
        self.settle(0.01, rounds=5)
        self.assertEqual(self.registered(), [])
        self.assertEqual(app.signals, [])
        self.settle(0.5, rounds=4)
        self.assertEqual([signal_number(s) for s in app.signals], [signal.SIGTERM])
        self.assertEqual([signal_number(s) for s in nginx.signals][:1], [signal.SIGQUIT])
        nginx.end(exitCode=0)
        self.settle(0.5, rounds=10)
        self.successResultOf(stopping)

    def test_app_exit_code(self):
        """An app with on_exit terminate that exits stops the sidecar with its code."""
        stopped = []
        self.reactor.stop = lambda: stopped.append(True)
        sidecar = self.sidecar()
        sidecar.startService()
        self.settle()
        self.reactor.processes[1].end(exitCode=7)
        self.settle()
        self.assertEqual((sidecar.exit_code, stopped), (7, [True]))

    def test_register_only(self):
        """A leaf service without a proxy starts its app at once and registers."""
        sidecar = self.sidecar(A8_PROXY="false")
        sidecar.startService()
        self.settle()
        self.assertEqual(self.spawned(), ["python"])
        self.assertEqual(len(self.registered()), 1)
        self.assertEqual(self.admin.states, [])

    def test_debug_state(self):
        """GET /state shows the state, versions, registration and children."""
        sidecar = self.sidecar()
        sidecar.startService()
        self.settle()
        debug = StubTreq(DebugAPI(sidecar).resource())
        response = self.successResultOf(debug.get("http://127.0.0.1:6116/state"))
        state = json.loads(self.successResultOf(response.content()))
        self.assertEqual(state["service"], {"name": "reviews", "tags": ["v2"]})
        self.assertEqual(len(state["state"]["instances"]), 1)
        self.assertTrue(state["registration"]["registered"])
        self.assertEqual(len(state["children"]), 2)
        self.assertIsNotNone(state["routes"]["pushed"])
        response = self.successResultOf(debug.get("http://127.0.0.1:6116/metrics"))
        text = self.successResultOf(response.text())
        self.assertIn("a8_sidecar_proxy_pushes_total {}.0".format(state["routes"]["pushes"]), text)
        self.assertIn("a8_sidecar_registered 1.0", text)


class WiringTests(SidecarTestsMixin, SynchronousTestCase):
    """The builder's children, their start and stop order, the runtime directory, errors."""

    def test_children_in_start_order(self):
        """Every part is a named child, attached in the order it starts."""
        sidecar = self.sidecar(A8_HEALTHCHECKS="tcp://10.0.0.5:9080")
        self.assertEqual([part.name for part in sidecar],
                         ["supervisor", "proxy", "routes", "traces", "debug", "apps", "health",
                          "registration"])
        self.assertIs(sidecar.part("supervisor"), sidecar.supervisor)
        self.assertEqual([part.parent for part in sidecar], [sidecar] * 8)
        self.assertEqual(GATED, ("apps", "health", "registration"))

    def test_services(self):
        """The sidecar and each of its parts provide IService."""
        sidecar = self.sidecar(A8_HEALTHCHECKS="tcp://10.0.0.5:9080")
        for service in [sidecar] + list(sidecar):
            self.assertTrue(verifyObject(IService, service), service.name)

    def test_register_only_children(self):
        """Without the proxy there is no proxy, route manager or trace shipping."""
        sidecar = self.sidecar(A8_PROXY="false", A8_DEBUG_PORT="0")
        self.assertEqual([part.name for part in sidecar],
                         ["supervisor", "apps", "registration"])

    def test_gated_children_wait_for_the_first_state(self):
        """apps, health and registration start only once the proxy holds its first state,
        in that order; the other parts start at once."""
        started = []
        self.admin.up = False
        sidecar = self.sidecar(A8_HEALTHCHECKS="tcp://10.0.0.5:9080")
        for part in sidecar:
            part.startService = self.recording(started, part.name, part.startService)
        sidecar.startService()
        self.settle()
        names = [name for name, _ in started]
        self.assertEqual(names, ["supervisor", "proxy", "routes", "traces", "debug"])
        self.assertEqual([p.name for p in sidecar if p.running], names)
        self.admin.up = True
        self.settle(0.1, rounds=30)
        self.assertEqual([name for name, _ in started[5:]], ["apps", "health", "registration"])
        self.assertTrue(all(part.running for part in sidecar))

    def recording(self, calls, name, method):
        """C{method}, wrapped to append C{(name, time)} to C{calls} when it is called."""
        def record(*args):
            calls.append((name, self.reactor.seconds()))
            return method(*args)
        return record

    def test_stop_order(self):
        """stopService stops the parts one after the other, in SPEC B4's order, with the
        propagation interval after the deregistration."""
        stopped = []
        sidecar = self.sidecar(A8_HEALTHCHECKS="tcp://10.0.0.5:9080")
        sidecar.startService()
        self.settle()
        for part in sidecar:
            part.stopService = self.recording(stopped, part.name, part.stopService)
        stopping = sidecar.stopService()
        self.settle(0.5, rounds=10)
        for process in self.reactor.live_processes:
            process.end(0)
        self.settle(0.5, rounds=4)
        self.successResultOf(stopping)
        self.assertEqual([name for name, _ in stopped], list(STOP_ORDER))
        at = dict(stopped)
        self.assertGreaterEqual(at["apps"] - at["registration"], 1.0)
        self.assertFalse(any(part.running for part in sidecar))
        self.assertFalse(sidecar.running)
        self.assertIs(sidecar.stopService(), stopping)

    def test_one_deadline_for_the_stop(self):
        """The whole stop ends by A8_STOP_TIMEOUT: nginx, which ignores QUIT here, gets KILL
        at the deadline rather than after its grace periods."""
        sidecar = self.sidecar(A8_STOP_TIMEOUT="3")
        sidecar.startService()
        self.settle()
        start = self.reactor.seconds()
        stopping = sidecar.stopService()
        while not stopping.called and self.reactor.seconds() - start < 20:
            self.settle(0.25, rounds=1)
        self.successResultOf(stopping)
        self.assertLessEqual(self.reactor.seconds() - start, 3.25)
        nginx, app = self.reactor.processes
        self.assertEqual([signal_number(s) for s in nginx.signals],
                         [signal.SIGQUIT, signal.SIGKILL])
        self.assertEqual([signal_number(s) for s in app.signals], [signal.SIGTERM])

    def test_stop_before_the_first_state(self):
        """A sidecar stopped while it waits for its first state never starts the app."""
        self.admin.up = False
        sidecar = self.sidecar()
        sidecar.startService()
        self.settle()
        stopping = sidecar.stopService()
        self.settle(0.5, rounds=4)
        self.reactor.processes[0].end(0)        # nginx drained after its QUIT
        self.settle()
        self.successResultOf(stopping)
        self.admin.up = True
        self.settle(0.5, rounds=10)
        self.assertEqual(self.spawned(), ["/usr/sbin/nginx"])
        self.assertEqual(self.registered(), [])

    def test_runtime_directory_made_when_the_proxy_starts(self):
        """Building writes nothing; the proxy's start makes a new runtime directory with
        nginx.conf in it, and nginx runs from there."""
        sidecar = self.sidecar(A8_RUNTIME_DIR="")
        self.assertEqual(self.made, [])
        self.assertIsNone(sidecar.part("proxy").config)
        sidecar.startService()
        [runtime] = self.made
        self.assertTrue(os.path.isfile(os.path.join(runtime, "nginx.conf")))
        self.assertEqual(sidecar.part("proxy").config.runtime_dir, runtime)
        self.assertIn(runtime, self.reactor.processes[0].args)
        self.assertEqual(sidecar.part("traces").path, os.path.join(runtime, "access.log"))

    def stop(self, sidecar):
        """Stop C{sidecar} to the end, nginx and the app leaving when told."""
        stopping = sidecar.stopService()
        for _ in range(40):
            for process in self.reactor.processes:
                if process.running and process.signals:
                    process.end(exitCode=0)
            self.settle(0.1, rounds=1)
        self.successResultOf(stopping)

    def test_runtime_directory_made_is_removed_after_the_stop(self):
        """The runtime directory the sidecar made itself goes once nginx has stopped."""
        sidecar = self.sidecar(A8_RUNTIME_DIR="")
        sidecar.startService()
        self.settle()
        [runtime] = self.made
        self.assertTrue(os.path.isdir(runtime))
        self.stop(sidecar)
        self.assertFalse(os.path.exists(runtime))

    def test_given_runtime_directory_stays_after_the_stop(self):
        """A8_RUNTIME_DIR, the operator's, is never removed."""
        sidecar = self.sidecar()
        sidecar.startService()
        self.settle()
        self.stop(sidecar)
        self.assertTrue(os.path.isfile(os.path.join(self.runtime, "nginx.conf")))

    def test_given_runtime_directory_made_at_start(self):
        """A8_RUNTIME_DIR is created at the proxy's start, not by the builder."""
        sidecar = self.sidecar()
        self.assertFalse(os.path.exists(self.runtime))
        sidecar.startService()
        self.assertTrue(os.path.isfile(os.path.join(self.runtime, "nginx.conf")))
        self.assertEqual(self.made, [])

    def test_missing_nginx_is_a_usage_error(self):
        """A proxy without a usable nginx is a UsageError naming A8_NGINX; nothing is built."""
        env = {"A8_SERVICE": "gateway", "A8_PROXY": "true",
               "A8_REGISTRY_URL": "http://registry:8080",
               "A8_CONTROLLER_URL": "http://controller:8081",
               "A8_NGINX": "/nonexistent/nginx", "A8_RUNTIME_DIR": self.runtime}
        config = load({}, env, app=())
        error = self.assertRaises(usage.UsageError, SidecarService.from_config,
                                  self.reactor, config, self.http, signaller=self.signaller)
        self.assertTrue(str(error).startswith("A8_NGINX: "), str(error))
        self.assertFalse(os.path.exists(self.runtime))

    def test_ipv6_endpoint_registers_in_brackets(self):
        """Registration goes through the Registrar: endpoint ::1 port 80 is [::1]:80."""
        sidecar = self.sidecar(A8_PROXY="false", A8_ENDPOINT_HOST="::1",
                               A8_ENDPOINT_PORT="80")
        sidecar.startService()
        self.settle()
        _, [instance] = self.successResultOf(self.instances.instances("default"))
        self.assertEqual(instance.registration.endpoint_value, "[::1]:80")

    def test_app_that_cannot_start_is_not_registered(self):
        """An app that cannot be run ends the sidecar with 127 and registers nothing
        (no phantom instance)."""
        self.reactor.stop = lambda: None
        self.reactor.spawn_error = FileNotFoundError(2, "No such file or directory")
        sidecar = self.sidecar(app=("/nonexistent/app",), A8_PROXY="false")
        sidecar.startService()
        self.settle()
        self.assertEqual(sidecar.exit_code, 127)
        self.assertEqual(self.registered(), [])
        self.assertFalse(sidecar.part("registration").running)

    def test_app_that_cannot_start_before_the_reactor_runs(self):
        """twistd starts the services before the reactor runs: an app that cannot be run
        then still stops the reactor, as soon as it runs (no sidecar left running)."""
        self.reactor.running = False
        stops = []

        def stop():
            if not self.reactor.running:
                raise ReactorNotRunning()
            stops.append(True)

        self.reactor.stop = stop
        self.reactor.spawn_error = FileNotFoundError(2, "No such file or directory")
        sidecar = self.sidecar(app=("/nonexistent/app",), A8_PROXY="false")
        sidecar.startService()
        self.assertEqual((sidecar.exit_code, stops), (127, []))
        self.reactor.running = True
        for hook, args, kwargs in self.reactor.whenRunningHooks:
            hook(*args, **kwargs)
        self.assertEqual(stops, [True])
        self.assertEqual(self.registered(), [])

    def test_debug_listener(self):
        """The debug API listens on 127.0.0.1 at A8_DEBUG_PORT once the sidecar starts."""
        sidecar = self.sidecar(A8_DEBUG_PORT="7000")
        self.assertEqual(self.reactor.tcpServers, [])
        sidecar.startService()
        self.assertEqual([(port, interface) for port, _, _, interface
                          in self.reactor.tcpServers], [(7000, "127.0.0.1")])

    def test_debug_port_in_use(self):
        """A debug port in use stops the start (before any app runs): one line, exit 2."""
        def in_use(port, factory, backlog=50, interface=""):
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))

        self.reactor.listenTCP = in_use
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        sidecar = self.sidecar(A8_DEBUG_PORT="7000")
        error = self.assertRaises(SystemExit, sidecar.privilegedStartService)
        self.assertEqual(error.code, 2)
        [line] = stderr.getvalue().splitlines()
        self.assertTrue(line.startswith("a8sidecar: cannot listen: "), line)
        self.assertIn("7000", line)
        self.assertEqual(self.reactor.processes, [])

    def test_reopen_logs_signals_nginx(self):
        """After a rotation, nginx's master (not its group) gets SIGUSR1."""
        sidecar = self.sidecar()
        sidecar.startService()
        self.settle()
        sent = list(self.signaller.sent)
        sidecar.part("proxy").reopen_logs()
        nginx = self.reactor.processes[0]
        self.assertEqual(nginx.signals[-1], signal.SIGUSR1)
        self.assertEqual(self.signaller.sent, sent)
