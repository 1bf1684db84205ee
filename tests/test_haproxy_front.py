"""
Integration test (issue 13): haproxy in front of two C{a8registry} replicas on one real
C{redis-server}, all on free loopback ports. A client given the one haproxy URL keeps
registering, heartbeating and reading while one replica is SIGKILLed, and not one call
fails: haproxy's health checks (C{GET /uptime}) take the dead replica out, and the requests
it had sent there are sent again to the other one (C{retry-on}, C{option redispatch}); every
registry call may be sent twice (a registration replaces the instance with the same id).

The haproxy configuration (L{HAPROXY_CONFIG}) is the one docs/registry.md shows.
"""

import os
import shutil
import signal
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from amalgam8.client import RegistryClient
from amalgam8.testing.redis import RedisServer, free_port, redis_missing
from tests.helpers import ServerProcess, child_environment, twistd_command, until

HAPROXY = os.environ.get("A8_TEST_HAPROXY") or shutil.which("haproxy") or "/usr/sbin/haproxy"

#: http mode; a replica is checked every 200 ms and out after one failed check; a request
#: whose connection failed, or that the replica dropped without an answer, is sent again
#: (up to 3 times) to another replica.
HAPROXY_CONFIG = """\
global
    maxconn 256
    nbthread 1

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 10s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend registry
    bind 127.0.0.1:{port}
    default_backend registries

backend registries
    balance roundrobin
    option httpchk
    http-check send meth GET uri /uptime
    default-server check inter 200ms fall 1 rise 2
{servers}
"""


class _Output(ProcessProtocol):
    """haproxy's output, and its end."""

    def __init__(self):
        self.output = []
        self.ended = Deferred()

    def childDataReceived(self, fd, data):
        self.output.append(data.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.ended.callback(getattr(reason.value, "exitCode", None))


class HaproxyFrontTests(TestCase):
    """Two registry replicas behind haproxy, one of them SIGKILLed under load."""

    timeout = 60

    def setUp(self):
        missing = redis_missing()
        if missing:
            raise SkipTest(missing)
        if not os.access(HAPROXY, os.X_OK):
            raise SkipTest("haproxy is not installed ({}; make setup installs it)".format(
                HAPROXY))
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.redis = RedisServer(os.path.join(self.directory, "redis"))
        self.redis.start()
        self.addCleanup(self.redis.stop)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        from treq.client import HTTPClient
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def start_registry(self):
        protocol = ServerProcess(reactor, "a8registry listening on ")
        argv = twistd_command() + [
            "-n", "--pidfile=", "--logger", "amalgam8.logs.json_observer", "a8registry",
            "--listen", "tcp:0:interface=127.0.0.1", "--store", "redis",
            "--store-address", self.redis.address, "--auth-mode", "trusted"]
        reactor.spawnProcess(protocol, argv[0], argv, env=child_environment({}),
                             path=self.directory)
        self.addCleanup(self.stop, protocol)
        _, port = await protocol.listening(timeout=20)
        return protocol, port

    async def stop(self, protocol):
        if protocol.exit is not None:
            return
        try:
            protocol.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        try:
            await protocol.ended(timeout=10)
        except Exception:
            protocol.transport.signalProcess("KILL")
            await protocol.ended(timeout=5)

    def start_haproxy(self, port, backends):
        path = os.path.join(self.directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(HAPROXY_CONFIG.format(port=port, servers="\n".join(
                "    server {} 127.0.0.1:{}".format(name, p) for name, p in backends)))
        check = _Output()
        reactor.spawnProcess(check, HAPROXY, [HAPROXY, "-c", "-q", "-f", path],
                             env={}, path=self.directory)
        haproxy = _Output()

        async def start():
            self.assertEqual(await check.ended, 0, "".join(check.output))
            reactor.spawnProcess(haproxy, HAPROXY, [HAPROXY, "-db", "-f", path], env={},
                                 path=self.directory)
            self.addCleanup(self.stop_haproxy, haproxy)
            return haproxy
        return Deferred.fromCoroutine(start())

    async def stop_haproxy(self, haproxy):
        if haproxy.ended.called:
            return
        try:
            haproxy.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        await haproxy.ended.addTimeout(5, reactor)

    async def pids_answering(self, client, tries=50):
        """The pids of the replicas that answer C{/uptime} through haproxy."""
        seen = set()
        for _ in range(tries):
            _, body = await client._call("GET", "/uptime")
            seen.add(body["pid"])
        return seen

    async def test_replica_killed_behind_haproxy(self):
        """
        Registrations, heartbeats, listings and a held blocking read through haproxy go on
        while one of the two replicas is SIGKILLed: every call answers, and a registration
        after the kill wakes the read held before it.
        """
        (one, port_one), (two, port_two) = await gatherResults([
            Deferred.fromCoroutine(self.start_registry()),
            Deferred.fromCoroutine(self.start_registry())])
        front = free_port()
        await self.start_haproxy(front, [("r1", port_one), ("r2", port_two)])
        url = "http://127.0.0.1:{}".format(front)
        # The load in one namespace, the held read in another (indexes are per namespace).
        client = RegistryClient(self.http, url, token="load", timeout=10, reactor=reactor)
        watcher = RegistryClient(self.http, url, token="held", timeout=10, reactor=reactor)
        pids = {one.transport.pid, two.transport.pid}

        async def both_answer():
            return await self.pids_answering(client, tries=10) == pids
        await until(reactor, both_answer, "both replicas to answer through haproxy")

        index, _ = await watcher.instances()
        held = Deferred.fromCoroutine(watcher.instances(wait=20, index=index))
        calls = {"register": 0, "heartbeat": 0, "list": 0}
        failures = []
        running = [True]

        async def sidecar(n):
            """One instance's life, again and again: register, heartbeat, be listed."""
            round_ = 0
            while running[0]:
                registration = {"service_name": "svc{}".format(n), "endpoint": {
                    "type": "http", "value": "10.0.{}.{}:80".format(n, round_ % 200)},
                    "ttl": 60}
                try:
                    instance = await client.register(registration)
                    calls["register"] += 1
                    for _ in range(3):
                        await client.heartbeat(instance["id"])
                        calls["heartbeat"] += 1
                    listed = await client.service("svc{}".format(n))
                    calls["list"] += 1
                    if instance["id"] not in [i["id"] for i in listed]:
                        failures.append(("not listed", instance["id"]))
                except Exception as e:
                    failures.append(("error", str(e)))
                round_ += 1

        loops = [Deferred.fromCoroutine(sidecar(n)) for n in range(4)]

        async def stop_loops():
            running[0] = False
            await gatherResults(loops)
            if not held.called:
                held.cancel()
                await held.addErrback(lambda f: None)
        self.addCleanup(stop_loops)
        await until(reactor, lambda: calls["heartbeat"] > 50, "some load")
        killed_at = time.monotonic()
        one.transport.signalProcess("KILL")
        self.assertEqual((await one.ended(timeout=10))[1], signal.SIGKILL)
        before = dict(calls)
        await until(reactor, lambda: calls["heartbeat"] > before["heartbeat"] + 150,
                    "load on the survivor")
        self.assertFalse(held.called)
        await watcher.register({"service_name": "held",
                                "endpoint": {"type": "http", "value": "10.9.9.9:80"}})
        new_index, listed = await held
        await stop_loops()
        print("\nhaproxy in front of two registries, one SIGKILLed: {} registrations, {} "
              "heartbeats, {} listings ({} after the kill, over {:.1f} s), {} failed".format(
                  calls["register"], calls["heartbeat"], calls["list"],
                  sum(calls.values()) - sum(before.values()),
                  time.monotonic() - killed_at, len(failures)))
        self.assertEqual(failures, [])
        self.assertGreater(new_index, index)
        self.assertEqual([i["service_name"] for i in listed], ["held"])
        self.assertEqual(await self.pids_answering(client, tries=10), {two.transport.pid})
