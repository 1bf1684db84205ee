"""
The mesh of L{tests.test_sidecar_integration.Mesh} with its control plane on Redis (issue
13): one real C{redis-server}, two C{a8registry} (C{--store redis}) and two
C{a8controller} (C{--database-type redis}) on it, each on a free loopback port, and the
sidecars given the URLs of every replica, each in its own order, so that they are spread
over the replicas:

    sidecar      registry URLs   controller URLs
    hello:v1     r1, r2          (none: register-only)
    hello:v2     r2, r1          (none: register-only)
    caller       r1, r2          c1, c2

A client talks to the first replica of its list until that one fails (L{amalgam8.client}),
so r1 carries hello:v1 and the caller, r2 carries hello:v2, and c1 carries the caller.

The registries grant a short ttl (L{RedisMesh.ttl}), so that heartbeats go every ttl/3 and a
lease that nobody renews is gone within a few seconds.
"""

import shutil
import signal
import tempfile
import time

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SkipTest

from amalgam8.testing.redis import RedisServer, redis_missing
from tests.helpers import sample_value
from tests.test_sidecar_integration import LOCAL, Mesh

__all__ = ["RedisMesh", "other_rules"]


class RedisMesh(Mesh):
    """
    L{Mesh} on Redis replicas; the helpers the replica and outage fault tests share.

    @ivar redis: the L{RedisServer}.
    @ivar registries: the registry replicas' L{ServerProcess}es, C{registry_urls} their URLs.
    @ivar controllers: the controller replicas', C{controller_urls} theirs.
    """

    #: Replicas of each server.
    replicas = 2
    #: The ttl every registration is granted (seconds): heartbeats go every third of it.
    ttl = 4.0
    #: Whether Redis keeps an append-only file (so that a restart keeps the data).
    persist = False

    async def setUp(self):
        missing = redis_missing()
        if missing:
            raise SkipTest(missing)
        # Registered before the mesh's own clean-up, so it runs after it: Redis stops once
        # every server is stopped. Its directory is apart from the mesh's, whose leftover
        # processes the mesh's clean-up hunts for.
        self.redis = RedisServer(tempfile.mkdtemp(prefix="a8-mesh-redis-"),
                                 persist=self.persist)
        self.addCleanup(self._stop_redis)
        await Mesh.setUp(self)

    def _stop_redis(self):
        self.redis.stop()
        shutil.rmtree(self.redis.directory, ignore_errors=True)

    async def start_control_plane(self):
        self.redis.start()
        ttl = "{}s".format(self.ttl)
        self.registries = [self.spawn("registry", [
            "a8registry", "--listen", LOCAL, "--store", "redis",
            "--store-address", self.redis.address, "--min-ttl", "1s", "--default-ttl", ttl,
            "--max-ttl", ttl]) for _ in range(self.replicas)]
        self.controllers = [self.spawn("controller", [
            "a8controller", "--listen", LOCAL, "--database-type", "redis",
            "--database-host", self.redis.address]) for _ in range(self.replicas)]
        addresses = await gatherResults(
            [p.listening(timeout=20) for p in self.registries + self.controllers])
        urls = ["http://127.0.0.1:{}".format(port) for _, port in addresses]
        self.registry_urls = urls[:self.replicas]
        self.controller_urls = urls[self.replicas:]
        # What the Mesh's helpers use: the first replica of each.
        self.registry, self.controller = self.registries[0], self.controllers[0]
        self.registry_url, self.controller_url = self.registry_urls[0], self.controller_urls[0]
        self.controller_port = addresses[self.replicas][1]

    def urls_for(self, sidecar):
        registries, controllers = self.registry_urls, self.controller_urls
        if sidecar == "v2":
            registries = registries[1:] + registries[:1]
        return ",".join(registries), ",".join(controllers)

    # -- under traffic ---------------------------------------------------------------------

    def start_traffic(self, loops=3):
        """
        C{loops} request loops through the caller's proxy, without pause, until the
        returned C{stop()} is called; C{await stop()} returns the answers as
        C{(time.time(), (status, instance))}.
        """
        results = []
        sending = [True]

        async def loop():
            while sending[0]:
                answer = await self.request()
                results.append((time.time(), answer))

        running = [Deferred.fromCoroutine(loop()) for _ in range(loops)]

        async def stop():
            sending[0] = False
            await gatherResults(running)
            return results
        return stop

    async def kill(self, process):
        """SIGKILL C{process} and wait until it is gone."""
        process.transport.signalProcess("KILL")
        self.assertEqual((await process.ended(timeout=10))[1], signal.SIGKILL)

    # -- reading the mesh ------------------------------------------------------------------

    async def registration(self, version):
        """The registration part of hello:VERSION's sidecar state."""
        return (await self.state(self.apps[version]))["registration"]

    async def hello_instances(self, base):
        """C{{tag: instance id}} of the hello instances listed by the registry at C{base}."""
        code, body = await self.get_json(base + "/api/v1/services/hello")
        self.assertEqual(code, 200, body)
        return {",".join(i.get("tags", [])): i["id"] for i in body["instances"]}

    async def rules_at(self, base):
        """C{(revision, rules)} of the controller at C{base}."""
        code, body = await self.get_json(base + "/v1/rules")
        self.assertEqual(code, 200, body)
        return body["revision"], sorted(body["rules"], key=lambda r: r["id"])

    async def metric(self, base, name):
        """The value of the unlabelled sample C{name} of C{base}'s C{/metrics}."""
        response = await self.http.get(base + "/metrics", timeout=5)
        text = (await response.content()).decode("utf-8")
        return sample_value(text, name)

    def caller_holds(self, predicate):
        """A check for L{until}: the caller's pushed state satisfies C{predicate}."""
        async def check():
            return predicate((await self.state(self.caller))["state"])
        return check


def other_rules(count, prefix="other"):
    """C{count} route rules of destinations nobody calls (they are only to be kept)."""
    return [{"id": "{}-{}".format(prefix, n), "destination": "{}-{}".format(prefix, n),
             "route": {"backends": [{"tags": ["v{}".format(n % 3 + 1)]}]}}
            for n in range(count)]

