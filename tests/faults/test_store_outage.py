"""
Fault (issue 13): the Redis server under two registries and two controllers
(L{tests.faults.replicas.RedisMesh}) is SIGKILLed under steady traffic, and started again on
its port (with its append-only file) a moment later. While it is gone every replica answers
503 with a clear JSON error and changes nothing; the proxies keep routing on their last state,
so not one proxied request fails; once it is back the servers serve again by themselves, and
the sidecars' heartbeats and a rule change flow again without anything being restarted.

The figures (requests sent and failed, how long the servers took to serve again) are printed.
"""

import time

from tests.faults.replicas import RedisMesh, other_rules

#: How long Redis stays down.
KILLED_FOR = 1.5


class StoreOutageTests(RedisMesh):
    """redis-server SIGKILLed under traffic, then started again."""

    timeout = 90
    # Leases outlive the outage and a heartbeat's retry after it (5 s after a failure):
    # what is asserted is that nothing is lost, not how the sidecars re-register.
    ttl = 12.0
    persist = True

    async def refused(self, method, url, body=None):
        """C{method url} answers 503 now: the decoded error body."""
        code, answer, response = await self.call(method, url, body)
        self.assertEqual(code, 503, "{} {}: {!r}".format(method, url, answer))
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertIsInstance(answer, dict, answer)
        return answer

    async def serving(self):
        """Whether every replica of both servers answers reads with 200 again."""
        for base in self.registry_urls:
            if (await self.get_json(base + "/api/v1/services/hello"))[0] != 200:
                return False
        for base in self.controller_urls:
            if (await self.get_json(base + "/v1/rules"))[0] != 200:
                return False
        return True

    async def test_redis_killed_and_back(self):
        """
        SIGKILL to redis-server under traffic: every API answers 503 with the store named,
        nothing is written, no proxied request fails; after its restart on the same port
        the servers serve again, every lease and rule is as it was, each sidecar's
        heartbeats go through again and a route change reaches the caller's proxy.
        """
        r1 = self.registry_urls[0]
        code, body, _ = await self.call("POST", self.controller_urls[1] + "/v1/rules",
                                        {"rules": other_rules(3)})
        self.assertEqual(code, 201, body)
        await self.set_route("v1")
        revision, rules = await self.rules_at(self.controller_urls[0])
        instances = await self.hello_instances(r1)
        self.assertEqual(set(instances), {"v1", "v2"})

        stop = self.start_traffic()
        await self.wait(0.5)
        killed_at = time.time()
        self.redis.kill()

        registration = {"service_name": "refused",
                        "endpoint": {"type": "http", "value": "127.0.0.1:9"}}
        for base in self.registry_urls:
            answer = await self.refused("POST", base + "/api/v1/instances", registration)
            self.assertIn("the registry store (redis {} db 0) is unavailable".format(
                self.redis.address), answer["Error"])
            await self.refused("PUT", base + "/api/v1/instances/{}/heartbeat".format(
                instances["v1"]))
            await self.refused("GET", base + "/api/v1/services/hello")
        for base in self.controller_urls:
            answer = await self.refused("POST", base + "/v1/rules",
                                        {"rules": other_rules(1, prefix="refused")})
            self.assertEqual(answer["error"], "error_store_unavailable", answer)
            self.assertIn("redis {}".format(self.redis.address), answer["description"])
            await self.refused("PUT", base + "/v1/rules/routes/hello",
                               {"rules": self.route("v2")})
            await self.refused("GET", base + "/v1/rules")
        await self.wait(max(0.0, killed_at + KILLED_FOR - time.time()))

        self.redis.start()
        restarted_at = time.time()
        await self.until(self.serving, "every replica to serve again", timeout=15)
        serving_at = time.time()
        # Nothing half-written: the leases and rules of before, nothing of the refused.
        for base in self.registry_urls:
            self.assertEqual(await self.hello_instances(base), instances)
        for base in self.controller_urls:
            self.assertEqual(await self.rules_at(base), (revision, rules))
        code, body = await self.get_json(r1 + "/api/v1/services/refused")
        self.assertEqual(code, 404, body)

        # The sidecars' changes flow again by themselves: heartbeats, and a rule change.
        async def heartbeats_after_restart():
            states = {v: await self.registration(v) for v in sorted(self.apps)}
            if all((s["last_heartbeat"] or 0) > restarted_at for s in states.values()):
                return states
        states = await self.until(heartbeats_after_restart,
                                  "every sidecar to heartbeat again", timeout=self.ttl)
        delay = await self.route_change_delay("v2", timeout=15)
        results = await stop()
        failed = [answer for _, answer in results if answer[0] != 200]
        print("\nredis-server SIGKILLed for {:.1f} s under traffic: {} requests sent, {} "
              "failed; every replica served again {:.2f} s after its restart; {} heartbeats "
              "refused meanwhile; a route change then showed in {:.2f} s".format(
                  restarted_at - killed_at, len(results), len(failed),
                  serving_at - restarted_at,
                  sum(s["counts"]["failures"] for s in states.values()), delay))
        self.assertEqual(failed, [])
        self.assertEqual({answer[1] for at, answer in results
                          if killed_at < at < serving_at}, {"v1"})
        for version, state in states.items():
            self.assertEqual((state["counts"]["registrations"],
                              state["counts"]["expirations"]), (1, 0), state)
            self.assertEqual(state["id"], instances[version])
        self.assertEqual((await self.rules_at(self.controller_urls[1]))[0], revision + 1)
