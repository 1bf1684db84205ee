"""
End-to-end tests of the whole mesh, as processes: C{twistd -n a8registry}, C{a8controller}
(file store) and three C{a8sidecar}s on 127.0.0.1. Two register-only sidecars supervise
C{tests/apps/echo_app.py} as C{hello:v1} and C{hello:v2}; a proxy-only sidecar, the
caller, runs the nginx + Lua proxy that the tests send traffic through (SPEC A4, A5, B1, B2,
B4, B5, C).

Each test gets a mesh of its own, stopped in cleanup (TERM, then KILL) whatever happened.
Nothing sleeps: waits poll with deadlines on the reactor. The measured figures (the delay of
a route change, the proxy's recovery) are printed.
"""

import json
import os
import signal
import socket
import sys
import time

import attrs
import treq
from treq.cookies import IndexableCookieJar
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from amalgam8.sidecar.proxy import find_nginx
from tests.helpers import ServerProcess, child_environment, twistd_command

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_APP = os.path.join(HERE, "apps", "echo_app.py")
LOCAL = "tcp:0:interface=127.0.0.1"
TWISTD = ["-n", "--pidfile=", "--logger", "amalgam8.logs.json_observer"]
ROUTE_CHANGE_LIMIT = 2.0

try:
    find_nginx()
    NO_PROXY = None if os.path.isdir("/proc") else "needs /proc (Linux)"
except Exception as e:          # nginx or its Lua module is missing
    NO_PROXY = str(e)

_ports = set()


def free_port():
    """A TCP port free on every address now, never handed out twice by this module."""
    while True:
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        if port not in _ports:
            _ports.add(port)
            return port


def _stat(pid):
    """C{(state, parent pid)} of a process from /proc, or None if it is gone."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            text = f.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def alive(pid):
    """Whether C{pid} runs (a zombie does not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def using(directory):
    """
    The live processes (other than this one) whose working directory or open files are in
    C{directory}: what is left of the processes a test started there.
    """
    found = []
    for pid in _pids():
        if pid == os.getpid() or not alive(pid):
            continue
        base = "/proc/{}/".format(pid)
        try:
            links = [os.readlink(base + "cwd")] + [
                os.readlink(base + "fd/" + fd) for fd in os.listdir(base + "fd")]
        except OSError:
            continue
        if any(link == directory or link.startswith(directory + os.sep) for link in links):
            found.append(pid)
    return found


def children_of(parent):
    """The live children of C{parent}."""
    return [pid for pid in _pids()
            if (_stat(pid) or ("Z", 0))[1] == parent and alive(pid)]


def cmdline(pid):
    try:
        with open("/proc/{}/cmdline".format(pid), "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class _NoCookies(IndexableCookieJar):
    """A cookie jar that keeps nothing: an app that ignores the proxy's version cookie."""

    def extract_cookies(self, response, request):
        pass


@attrs.frozen
class Sidecar:
    """A spawned C{a8sidecar}: its process (a L{ServerProcess}) and ports."""

    name: str
    process: ServerProcess
    debug_port: int
    app_port: int = None
    proxy_port: int = None
    runtime_dir: str = None

    @property
    def debug_url(self):
        return "http://127.0.0.1:{}".format(self.debug_port)


class MeshTestCase(TestCase):
    """Spawning and stopping processes, HTTP, and waiting with deadlines."""

    timeout = 60

    def setUp(self):
        if NO_PROXY:
            # Only where nginx or its Lua module is not installed. `make test` installs
            # them and sets A8_REQUIRE_PROXY, so there a missing proxy fails instead.
            if os.environ.get("A8_REQUIRE_PROXY"):
                self.fail("the proxy is required: " + NO_PROXY)
            raise SkipTest("needs nginx with its Lua module: " + NO_PROXY)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.processes = []             # (name, ServerProcess), in spawn order
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        self.http = treq.client.HTTPClient(agent)
        self.data = treq.client.HTTPClient(agent, cookiejar=_NoCookies())
        self.addCleanup(self.stop_all)

    # -- processes -------------------------------------------------------------------------

    async def stop_all(self):
        """
        Stop the sidecars (all at once), then the servers, each with TERM and then KILL;
        then make sure that nothing they started outlived them.
        """
        servers = [p for name, p in self.processes if name in ("registry", "controller")]
        others = [p for name, p in self.processes if name not in ("registry", "controller")]
        await gatherResults([Deferred.fromCoroutine(self.terminate(p)) for p in others])
        await gatherResults([Deferred.fromCoroutine(self.terminate(p)) for p in servers])
        leftovers = {pid: cmdline(pid) for pid in using(self.directory)}
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.assertEqual(leftovers, {}, "processes outlived their sidecar")
        crashes = ["{}: {}".format(name, line[:300]) for name, process in self.processes
                   for line in process.stdout + process.stderr
                   if "Traceback" in line or '"level": "critical"' in line]
        self.assertEqual(crashes, [], "a process logged a crash")

    def spawn(self, name, argv, env=None, listening="a8"):
        """Start C{twistd -n ... ARGV} in the test's directory; stopped in cleanup."""
        process = ServerProcess(reactor, listening)
        command = twistd_command() + TWISTD + list(argv)
        reactor.spawnProcess(process, command[0], command, env=child_environment(env or {}),
                             path=self.directory)
        self.processes.append((name, process))
        return process

    async def terminate(self, process, grace=10.0):
        """TERM, then KILL after C{grace} seconds; returns C{(exit code, signal)}."""
        if process.exit is not None:
            return process.exit
        try:
            process.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            pass
        try:
            return await process.ended(timeout=grace)
        except Exception:
            try:
                process.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            return await process.ended(timeout=5)

    def describe(self, lines=6):
        """The last lines each process wrote, for failure messages."""
        parts = []
        for name, process in self.processes:
            tail = [line[:300] for line in (process.stdout + process.stderr)[-lines:]]
            parts.append("--- {} (exit {}):\n{}".format(name, process.exit, "\n".join(tail)))
        for root, _, files in os.walk(self.directory):
            if "error.log" in files:
                with open(os.path.join(root, "error.log")) as f:
                    tail = f.read().splitlines()[-lines:]
                parts.append("--- {}/error.log:\n{}".format(root, "\n".join(tail)))
        return "\n".join(parts)

    # -- HTTP ------------------------------------------------------------------------------

    async def call(self, method, url, body=None, timeout=5.0, http=None):
        """One request; C{(code, decoded JSON body or None, response)}."""
        kwargs = {} if body is None else {"json": body}
        response = await (http or self.http).request(method, url, timeout=timeout, **kwargs)
        content = await response.content()
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = content.decode("utf-8", "replace")
        return response.code, decoded, response

    async def get_json(self, url, timeout=5.0):
        code, body, _ = await self.call("GET", url, timeout=timeout)
        return code, body

    # -- waiting ---------------------------------------------------------------------------

    async def until(self, check, what, timeout=15.0, interval=0.05):
        """
        Call C{check()} (plain or async) every C{interval} seconds until it returns
        something true, and return that; fail after C{timeout} seconds. Exceptions count as
        "not yet".
        """
        deadline = reactor.seconds() + timeout
        last = None
        while True:
            try:
                result = check()
                if hasattr(result, "__await__"):
                    result = await result
                if result:
                    return result
                last = result
            except Exception as e:
                last = e
            if reactor.seconds() >= deadline:
                self.fail("timed out after {} s waiting for {} (last: {!r})\n{}".format(
                    timeout, what, last, self.describe()))
            await deferLater(reactor, interval, lambda: None)

    def wait(self, seconds):
        return deferLater(reactor, seconds, lambda: None)


class Mesh(MeshTestCase):
    """
    The mesh: registry, controller, hello:v1 and hello:v2 under register-only sidecars, and
    a proxy-only caller; the helpers that read and steer it. No tests: L{MeshTests} has the
    scenarios, and the fault suite (C{tests/faults}) builds on it too.
    """

    async def setUp(self):
        MeshTestCase.setUp(self)
        await self.start_control_plane()
        self.apps = {version: self.start_app(version) for version in ("v1", "v2")}
        # The app sidecars register as their apps start, before these listen: the caller
        # comes once they answer, or its first requests would find them refusing.
        for version, sidecar in self.apps.items():
            await self.until(lambda s=sidecar, v=version: self.app_answers(s, v),
                             "hello:{} to listen".format(version))
        self.caller = self.start_caller()
        await self.until(self.both_versions_answer,
                         "hello:v1 and hello:v2 through the caller's proxy", timeout=20)

    async def start_control_plane(self):
        """
        Start the registry (in-memory store) and the controller (file store) and wait until
        they listen: sets C{registry}, C{controller} (their L{ServerProcess}es),
        C{registry_url}, C{controller_url} and C{controller_port}. A subclass may start
        others (replicas on Redis: L{tests.faults.replicas.RedisMesh}).
        """
        self.rules_path = os.path.join(self.directory, "rules.json")
        self.registry = self.spawn("registry", ["a8registry", "--listen", LOCAL])
        self.controller = self.start_controller(LOCAL)
        (_, registry_port), (_, controller_port) = await gatherResults(
            [self.registry.listening(), self.controller.listening()])
        self.registry_url = "http://127.0.0.1:{}".format(registry_port)
        self.controller_port = controller_port
        self.controller_url = "http://127.0.0.1:{}".format(controller_port)

    def urls_for(self, sidecar):
        """
        C{(A8_REGISTRY_URL, A8_CONTROLLER_URL)} of the sidecar C{sidecar} (C{"v1"},
        C{"v2"} or C{"caller"}): the one registry and controller here; a subclass with
        replicas gives each sidecar their URLs in its own order.
        """
        return self.registry_url, self.controller_url

    def start_controller(self, listen):
        return self.spawn("controller", ["a8controller", "--listen", listen,
                                         "--database-type", "file",
                                         "--database-host", self.rules_path])

    def start_app(self, version):
        """hello:VERSION: echo_app.py under a register-only sidecar."""
        app_port, debug_port = free_port(), free_port()
        env = {
            "A8_SERVICE": "hello:" + version,
            "A8_REGISTER": "true",
            "A8_PROXY": "false",
            "A8_ENDPOINT_HOST": "127.0.0.1",
            "A8_ENDPOINT_PORT": str(app_port),
            "A8_REGISTRY_URL": self.urls_for(version)[0],
            "A8_DEBUG_PORT": str(debug_port),
            "A8_STOP_TIMEOUT": "10s",
        }
        process = self.spawn("sidecar-" + version, [
            "a8sidecar", "--", sys.executable, ECHO_APP, str(app_port), version], env)
        return Sidecar(version, process, debug_port, app_port=app_port)

    def start_caller(self):
        """The caller: a proxy-only sidecar (poll and backoff capped at 2 s)."""
        proxy_port, admin_port, debug_port = free_port(), free_port(), free_port()
        runtime = os.path.join(self.directory, "caller")
        registry_url, controller_url = self.urls_for("caller")
        env = {
            "A8_SERVICE": "caller:v1",
            "A8_REGISTER": "false",
            "A8_PROXY": "true",
            "A8_REGISTRY_URL": registry_url,
            "A8_CONTROLLER_URL": controller_url,
            "A8_REGISTRY_POLL": "2s",
            "A8_CONTROLLER_POLL": "2s",
            "A8_PROXY_PORT": str(proxy_port),
            "A8_PROXY_ADMIN_PORT": str(admin_port),
            "A8_DEBUG_PORT": str(debug_port),
            "A8_RUNTIME_DIR": runtime,
            "A8_STOP_TIMEOUT": "10s",
        }
        process = self.spawn("caller", ["a8sidecar"], env)
        return Sidecar("caller", process, debug_port, proxy_port=proxy_port,
                       runtime_dir=runtime)

    # -- the mesh's state ------------------------------------------------------------------

    async def state(self, sidecar, timeout=5.0):
        """The sidecar's debug C{/state}."""
        code, body = await self.get_json(sidecar.debug_url + "/state", timeout=timeout)
        if code != 200:
            raise AssertionError("GET /state answered {}: {!r}".format(code, body))
        return body

    def child(self, state, kind):
        [child] = [c for c in state["children"] if c["kind"] == kind]
        return child

    async def app_answers(self, sidecar, version):
        """Whether the app of C{sidecar} answers straight (not through a proxy)."""
        url = "http://127.0.0.1:{}/".format(sidecar.app_port)
        code, body, _ = await self.call("GET", url, timeout=1, http=self.data)
        return code == 200 and body["instance"] == version

    async def request(self, path="/hello/x", timeout=5.0):
        """One GET through the caller's proxy: C{(status, instance)}, C{(None, error)}."""
        url = "http://127.0.0.1:{}{}".format(self.caller.proxy_port, path)
        try:
            code, body, _ = await self.call("GET", url, timeout=timeout, http=self.data)
        except Exception as e:
            return None, "{}: {}".format(e.__class__.__name__, e)
        if code == 200 and isinstance(body, dict):
            return code, body.get("instance")
        return code, str(body)[:200]

    async def both_versions_answer(self, tries=6):
        answers = [await self.request() for _ in range(tries)]
        if {instance for code, instance in answers if code == 200} == {"v1", "v2"}:
            return answers
        raise AssertionError("answers: {}".format(answers))

    async def registered_versions(self):
        """The tags of the hello instances the registry lists."""
        code, body = await self.get_json(self.registry_url + "/api/v1/services/hello")
        if code == 404:
            return set()
        return {",".join(i.get("tags", [])) for i in body["instances"]}

    async def revision(self):
        code, body = await self.get_json(self.controller_url + "/v1/rules")
        self.assertEqual(code, 200, body)
        return body["revision"]

    async def applied(self, revision):
        """Wait until the caller's proxy holds rules revision C{revision} or later."""
        async def check():
            pushed = (await self.state(self.caller))["routes"]["pushed"]
            return pushed is not None and pushed["revision"] >= revision
        await self.until(check, "the caller's proxy to apply revision {}".format(revision))

    async def put_rules(self, kind, rules):
        """PUT /v1/rules/{kind}/hello (replaces them); returns the answer's arrival time."""
        code, body, _ = await self.call(
            "PUT", self.controller_url + "/v1/rules/{}/hello".format(kind), {"rules": rules})
        answered = time.monotonic()
        self.assertEqual(code, 201, body)
        return answered

    def route(self, version):
        return [{"destination": "hello", "route": {"backends": [{"tags": [version]}]}}]

    async def set_route(self, version):
        """Route every hello request to VERSION and wait until the caller's proxy does."""
        await self.put_rules("routes", self.route(version))
        await self.applied(await self.revision())
        answers = [await self.request() for _ in range(4)]
        self.assertEqual(answers, [(200, version)] * 4)

    async def route_change_delay(self, version, timeout=ROUTE_CHANGE_LIMIT * 5):
        """
        Route to VERSION and send requests back to back through the caller's proxy: the
        seconds from the controller's answer until the first one lands on VERSION.
        """
        answered = await self.put_rules("routes", self.route(version))
        before = set()
        while True:
            code, instance = await self.request()
            delay = time.monotonic() - answered
            if (code, instance) == (200, version):
                self.assertLessEqual(before, {"v1", "v2"} - {version})
                return delay
            before.add(instance)
            if delay > timeout:
                self.fail("the route to {} did not show within {} s (answers: {})\n{}"
                          .format(version, timeout, before, self.describe()))



class MeshTests(Mesh):
    """The scenarios of the mesh (L{Mesh})."""


    async def test_route_change_reaches_the_traffic(self):
        """
        A route rule put to the controller steers the caller's traffic within
        ROUTE_CHANGE_LIMIT seconds of the controller's answer (SPEC B1: pushed, not polled),
        and the caller reports the revision it applied (SPEC B2).
        """
        await self.set_route("v1")
        delays = []
        for version in ("v2", "v1", "v2", "v1", "v2"):
            delays.append(await self.route_change_delay(version))
        delays.sort()
        print("\nroute change delay (controller answer -> first request on the new version): "
              "min {:.1f} ms, median {:.1f} ms, max {:.1f} ms over {} changes".format(
                  delays[0] * 1000, delays[len(delays) // 2] * 1000, delays[-1] * 1000,
                  len(delays)))
        self.assertLess(delays[-1], ROUTE_CHANGE_LIMIT)
        revision = await self.revision()

        async def in_sync():
            code, body = await self.get_json(self.controller_url + "/v1/rules/status")
            return code == 200 and body["revision"] == revision and body["in_sync"] >= 1
        await self.until(in_sync, "the caller to report revision {}".format(revision))

    async def test_killed_app_leaves_the_mesh(self):
        """
        An app killed with SIGKILL is deregistered, the caller's proxy stops sending to it,
        and its sidecar exits with the app's status, 128 + 9.
        """
        v1 = self.apps["v1"]
        pid = self.child(await self.state(v1), "app")["pid"]
        self.assertIn("echo_app.py", cmdline(pid))
        os.kill(pid, signal.SIGKILL)
        self.assertEqual(await v1.process.ended(timeout=15), (137, None), self.describe())
        self.assertFalse(alive(pid))
        self.assertEqual(await self.registered_versions(), {"v2"})

        async def one_instance():
            return (await self.state(self.caller))["routes"]["instances"]["count"] == 1
        await self.until(one_instance, "the caller's proxy to drop hello:v1")
        answers = [await self.request() for _ in range(10)]
        self.assertEqual(answers, [(200, "v2")] * 10)

    async def test_killed_proxy_is_restarted(self):
        """
        nginx killed with SIGKILL (its master; the workers are orphaned) is restarted by the
        caller's sidecar, the leftover workers are killed so that the new nginx can bind the
        ports, the state is pushed again, and traffic resumes.
        """
        state = await self.state(self.caller)
        proxy = self.child(state, "proxy")
        master, pushes = proxy["pid"], state["routes"]["pushes"]
        workers = children_of(master)
        self.assertTrue(workers, "nginx has no workers")
        killed = time.monotonic()
        os.kill(master, signal.SIGKILL)

        async def restarted():
            state = await self.state(self.caller)
            proxy = self.child(state, "proxy")
            return (proxy["running"] and proxy["pid"] != master and proxy["restarts"] >= 1
                    and state["routes"]["pushes"] > pushes)
        await self.until(restarted, "nginx to be restarted and given the state again")
        await self.until(self.both_versions_answer, "traffic through the new nginx")
        print("\nproxy killed -> traffic to both versions again: {:.2f} s".format(
            time.monotonic() - killed))
        # The old workers are gone, and the new master got past binding its ports: it has
        # workers of its own (nginx forks them once it listens).
        self.assertEqual([w for w in workers if alive(w)], [])
        proxy = self.child(await self.state(self.caller), "proxy")
        self.assertEqual(proxy["last_signal"], signal.SIGKILL)
        self.assertTrue(children_of(proxy["pid"]))

    async def test_graceful_stop_loses_no_request(self):
        """
        SIGTERM to hello:v1's sidecar while the caller sends traffic without pause: it
        deregisters, waits for the callers' proxies to drop it, then stops the app, so that
        no request fails (SPEC B4), and it exits with status 0.
        """
        results = []
        sending = [True]

        async def traffic():
            while sending[0]:
                answer = await self.request()
                results.append((time.monotonic(), answer))

        loops = [Deferred.fromCoroutine(traffic()) for _ in range(3)]
        await self.wait(0.5)
        v1 = self.apps["v1"]
        terminated = time.monotonic()
        v1.process.transport.signalProcess("TERM")
        status = await v1.process.ended(timeout=15)
        ended = time.monotonic()
        await self.wait(0.5)
        sending[0] = False
        await gatherResults(loops)
        failed = [answer for _, answer in results if answer[0] != 200]
        self.assertEqual(failed, [], "{} of {} requests failed".format(
            len(failed), len(results)))
        # twistd ends with the signal that stopped it (or 0).
        self.assertIn(status, [(0, None), (None, signal.SIGTERM)], self.describe())
        self.assertEqual({answer[1] for at, answer in results if at < terminated},
                         {"v1", "v2"})
        self.assertEqual({answer[1] for at, answer in results if at > ended}, {"v2"})
        self.assertEqual(await self.registered_versions(), {"v2"})
        print("\ngraceful stop: {} requests, none failed; the sidecar took {:.2f} s".format(
            len(results), ended - terminated))

    async def test_controller_restart(self):
        """
        With the controller stopped the caller's proxy keeps its last state and traffic
        flows; once it is back (same port, rules in its file), a rule put to it reaches the
        proxy again.
        """
        await self.set_route("v1")
        self.assertIn(await self.terminate(self.controller), [(0, None), (None, signal.SIGTERM)])

        async def noticed():
            return (await self.state(self.caller))["routes"]["rules"]["failures"] >= 1
        await self.until(noticed, "the caller to notice the controller is gone")
        answers = [await self.request() for _ in range(10)]
        self.assertEqual(answers, [(200, "v1")] * 10)

        self.controller = self.start_controller(
            "tcp:{}:interface=127.0.0.1".format(self.controller_port))
        await self.controller.listening()
        code, body = await self.get_json(self.controller_url + "/v1/rules")
        self.assertEqual([r["route"] for r in body["rules"]], [self.route("v1")[0]["route"]])
        delay = await self.route_change_delay("v2", timeout=15)
        print("\nafter the controller's restart, a route change showed in {:.2f} s".format(
            delay))
        answers = [await self.request() for _ in range(4)]
        self.assertEqual(answers, [(200, "v2")] * 4)

    async def test_trace_records_reach_the_controller(self):
        """
        Requests matched by a trace action are logged with its key and value, and the
        caller's sidecar ships those records to the controller, where GET /v1/traces finds
        them (SPEC B5).
        """
        await self.put_rules("actions", [{
            "destination": "hello",
            "actions": [{"action": "trace", "log_key": "gremlin_recipe_id",
                         "log_value": "r1"}]}])
        await self.applied(await self.revision())
        paths = ["/hello/traced/{}".format(n) for n in range(5)]
        for path in paths:
            code, _ = await self.request(path)
            self.assertEqual(code, 200)
        url = self.controller_url + "/v1/traces?log_key=gremlin_recipe_id&log_value=r1"

        async def shipped():
            code, body = await self.get_json(url)
            return code == 200 and len(body["records"]) >= len(paths) and body["records"]
        records = await self.until(shipped, "the trace records at the controller")
        self.assertEqual(len(records), len(paths))
        self.assertEqual(sorted(r["path"].split("/")[-1] for r in records),
                         [str(n) for n in range(5)])
        for record in records:
            self.assertEqual(record["gremlin_recipe_id"], "r1")
            self.assertEqual(record["status"], 200)
            self.assertEqual(record["src"], "caller:v1")
            self.assertTrue(record["dst"].startswith("hello"), record)
            self.assertIn("trace", record["actions"].split(","))


class BadConfigurationTests(MeshTestCase):
    """A bad setting stops a8sidecar at start: one line naming it, exit status 2 (SPEC C)."""

    async def test_bad_settings(self):
        """
        A port out of range, neither register nor proxy, an ftp:// health check and a YAML
        file that does not parse each print exactly one line and exit with status 2.
        """
        bad_yaml = os.path.join(self.directory, "bad.yaml")
        with open(bad_yaml, "w") as f:
            f.write("service: {name: hello\nendpoint: [\n")
        base = {
            "A8_SERVICE": "hello:v1",
            "A8_REGISTER": "true",
            "A8_PROXY": "false",
            "A8_ENDPOINT_HOST": "127.0.0.1",
            "A8_ENDPOINT_PORT": "8080",
            "A8_REGISTRY_URL": "http://127.0.0.1:1",
            "A8_DEBUG_PORT": "0",
        }
        cases = {
            "A8_ENDPOINT_PORT": {"A8_ENDPOINT_PORT": "99999"},
            "A8_REGISTER/A8_PROXY": {"A8_REGISTER": "false", "A8_PROXY": "false"},
            "A8_HEALTHCHECKS": {"A8_HEALTHCHECKS": "ftp://x"},
            "A8_CONFIG": {"A8_CONFIG": bad_yaml},
        }
        processes = {name: self.spawn(name, ["a8sidecar"], dict(base, **extra))
                     for name, extra in cases.items()}
        exits = await gatherResults([p.ended(timeout=30) for p in processes.values()])
        for (name, process), exit in zip(processes.items(), exits):
            lines = [line for line in process.stdout + process.stderr if line.strip()]
            self.assertEqual(exit, (2, None), "{}: {}".format(name, lines))
            self.assertEqual(len(lines), 1, "{}: {}".format(name, lines))
            self.assertIn(name, lines[0])
