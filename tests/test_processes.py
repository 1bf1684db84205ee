"""
Integration tests of C{--processes N} (L{amalgam8.workers}, issue 13) with real processes:
C{twistd -n a8registry --processes 2 --store redis} and C{a8controller --processes 2
--database-type redis} on a real C{redis-server}, on a free loopback port. Both processes
answer on the one port (the pid in C{/uptime} and C{/health} tells them apart) as one
service; a worker SIGKILLed is started again by the parent; SIGTERM to the parent stops
every worker; a parent SIGKILLed leaves no worker behind (each watches its stdin pipe).

Waits poll with deadlines on the reactor; nothing sleeps for a fixed time.
"""

import json
import os
import signal

import treq
from twisted.internet import reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from amalgam8.testing.redis import RedisServer, redis_missing
from tests.helpers import ServerProcess, child_environment, twistd_command, until
from tests.test_sidecar_integration import alive

LOCAL = "tcp:0:interface=127.0.0.1"


class ProcessesTests(TestCase):
    """A server of two processes on one port and one Redis."""

    timeout = 60

    def setUp(self):
        missing = redis_missing()
        if missing:
            raise SkipTest(missing)
        self.redis = RedisServer(self.mktemp())
        self.redis.start()
        self.addCleanup(self.redis.stop)
        # A new connection per request, so that the kernel may hand each to either process.
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.pids = set()       # every pid of a parent or worker, killed if left in clean-up
        self.addCleanup(self.kill_leftovers)

    def kill_leftovers(self):
        left = sorted(pid for pid in self.pids if alive(pid))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        self.assertEqual(left, [], "processes outlived the test")

    async def start(self, program, args):
        """
        Start C{twistd -n <program> --processes 2 ...} with JSON logs; once the parent and
        its worker listen, returns C{(protocol, base URL, worker pid)}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.program = program
        protocol = ServerProcess(reactor, "{} listening on ".format(program))
        argv = twistd_command() + ["-n", "--pidfile=", "--logger",
                                   "amalgam8.logs.json_observer", program, "--listen", LOCAL,
                                   "--processes", "2"] + list(args)
        reactor.spawnProcess(protocol, argv[0], argv, env=child_environment({}),
                             path=directory)
        self.pids.add(protocol.transport.pid)
        self.addCleanup(self.stop, protocol)
        host, port = await protocol.listening(timeout=20)
        worker = await self.until(lambda: self.workers(protocol)[-1:], "a worker to start")
        await self.until(lambda: len(self.listening(protocol)) >= 2,
                         "the worker to listen too")
        return protocol, "http://{}:{}".format(host, port), worker[0]

    def workers(self, protocol):
        """The pids of the workers the parent started, in order (from its log)."""
        pids = [event["pid"] for event in protocol.events
                if str(event.get("message", "")).startswith(
                    "{} started worker".format(self.program))]
        self.pids.update(pids)
        return pids

    def listening(self, protocol):
        """The 'listening on' events of the parent and of its workers (one stdout)."""
        return [event for event in protocol.events
                if str(event.get("message", "")).startswith(
                    "{} listening on".format(self.program))]

    async def stop(self, protocol):
        if protocol.exit is not None:
            return
        try:
            protocol.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        try:
            await protocol.ended(timeout=15)
        except Exception:
            protocol.transport.signalProcess("KILL")
            await protocol.ended(timeout=5)

    def until(self, check, what, timeout=15.0):
        return until(reactor, check, what, timeout)

    async def call(self, method, url, body=None, timeout=5):
        kwargs = {} if body is None else {"json": body}
        response = await self.http.request(method, url, timeout=timeout, **kwargs)
        content = await response.content()
        return response.code, json.loads(content) if content else None

    async def answering(self, url, wanted, tries=300):
        """
        GET C{url} (C{/uptime} or C{/health}) on new connections until every pid of
        C{wanted} answered; every answer must be 200 from one of them.

        @return: how many requests that took.
        """
        seen = set()
        for sent in range(1, tries + 1):
            code, body = await self.call("GET", url)
            self.assertEqual(code, 200, body)
            self.assertIn(body["pid"], wanted, body)
            seen.add(body["pid"])
            if seen == set(wanted):
                return sent
        self.fail("after {} requests only {} of {} answered".format(tries, seen, wanted))

    def assertNoCrash(self, protocol):
        lines = [line for line in protocol.stdout + protocol.stderr
                 if "Traceback" in line or '"level": "critical"' in line]
        self.assertEqual(lines, [])

    async def test_registry(self):
        """
        Both processes of C{a8registry --processes 2} answer on the port, as one registry
        (what one registered, every listing shows); the worker SIGKILLed is started again
        and serves; SIGTERM to the parent stops parent and worker.
        """
        protocol, base, worker = await self.start("a8registry", [
            "--store", "redis", "--store-address", self.redis.address])
        parent = protocol.transport.pid
        # The worker logs as the parent does (its twistd --logger was passed on).
        self.assertEqual(len(self.listening(protocol)), 2)
        self.assertIn("fd:fileno=", self.listening(protocol)[1]["endpoint"])
        sent = await self.answering(base + "/uptime", {parent, worker})
        print("\nboth processes answered within {} requests".format(sent))

        body = {"service_name": "reviews", "endpoint": {"type": "http", "value": "a:1"}}
        code, answer = await self.call("POST", base + "/api/v1/instances", body)
        self.assertEqual(code, 201, answer)
        for _ in range(20):
            code, listing = await self.call("GET", base + "/api/v1/services/reviews")
            self.assertEqual((code, [i["id"] for i in listing["instances"]]),
                             (200, [answer["id"]]))

        os.kill(worker, signal.SIGKILL)
        second = await self.until(
            lambda: [pid for pid in self.workers(protocol) if pid != worker],
            "the parent to start the worker again")
        self.assertFalse(alive(worker))
        await self.until(lambda: len(self.listening(protocol)) >= 3,
                         "the new worker to listen")
        await self.answering(base + "/uptime", {parent, second[0]})
        exited = [event for event in protocol.events
                  if "exited" in str(event.get("message", ""))]
        self.assertEqual([e["signal"] for e in exited], [signal.SIGKILL])

        protocol.transport.signalProcess("TERM")
        # twistd ends with the signal that stopped it (or 0); the protocol ends once the
        # worker, which holds the same stdout, has exited too.
        self.assertIn(await protocol.ended(timeout=20), [(0, None), (None, signal.SIGTERM)])
        self.assertFalse(alive(second[0]))
        self.assertNoCrash(protocol)

    async def test_controller(self):
        """
        Both processes of C{a8controller --processes 2} answer on the port, as one
        controller (a rule written is read by both, and so are a proxy's report and a
        trace record); the parent SIGKILLed, the worker sees
        its stdin close and exits by itself, and the port is closed.
        """
        protocol, base, worker = await self.start("a8controller", [
            "--database-type", "redis", "--database-host", self.redis.address])
        parent = protocol.transport.pid
        await self.answering(base + "/health", {parent, worker})
        rule = {"id": "r1", "destination": "reviews",
                "route": {"backends": [{"tags": ["v1"]}]}}
        code, answer = await self.call("POST", base + "/v1/rules", {"rules": [rule]})
        self.assertEqual(code, 201, answer)
        for _ in range(20):
            code, rules = await self.call("GET", base + "/v1/rules")
            self.assertEqual((code, rules["revision"], [r["id"] for r in rules["rules"]]),
                             (200, 1, ["r1"]))
        # The proxy status and the trace records are the controller's, not a process's:
        # every answer, from either process, has the one report and the one record.
        report = {"service": "reviews", "tags": ["v1"], "revision": 1}
        code, answer = await self.call("PUT", base + "/v1/proxies/p1", report)
        self.assertEqual(code, 200, answer)
        code, answer = await self.call("POST", base + "/v1/traces",
                                       {"records": [{"gremlin_recipe_id": "r1"}]})
        self.assertEqual(code, 202, answer)
        for _ in range(20):
            code, status = await self.call("GET", base + "/v1/rules/status")
            self.assertEqual((code, status["proxies"], status["in_sync"]), (200, 1, 1))
            code, traces = await self.call("GET", base + "/v1/traces")
            self.assertEqual((code, traces["records"]), (200, [{"gremlin_recipe_id": "r1"}]))

        os.kill(parent, signal.SIGKILL)
        # The protocol ends once the worker, which holds the same stdout, has exited too.
        self.assertEqual(await protocol.ended(timeout=20), (None, signal.SIGKILL))
        # Its descriptors are closed just before it is a zombie (or gone): a moment later.
        await self.until(lambda: not alive(worker), "the worker to exit", timeout=5)
        gone = [event for event in protocol.events
                if event.get("message") == "the parent process is gone: stopping"]
        self.assertEqual(len(gone), 1, protocol.stdout[-10:])
        with self.assertRaises(Exception):
            await self.call("GET", base + "/health", timeout=2)
        self.assertNoCrash(protocol)
