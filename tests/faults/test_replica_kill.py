"""
Fault (issue 13): two registries and two controllers on one Redis, the sidecars spread over
them (L{tests.faults.replicas.RedisMesh}), steady traffic through the caller's proxy; one
replica of each is SIGKILLed, the one the most sidecars talk to. Nothing is lost: every
instance stays listed (its lease renewed through the survivor, not one registered again),
every rule is still there, no proxied request fails, and the survivors carry every sidecar:
the heartbeats of each reach the surviving registry within one heartbeat interval, and the
caller follows changes written through the survivors.

The figures (requests sent and failed, how long until the survivors carried every sidecar)
are printed.
"""

import time

from twisted.internet.defer import Deferred, gatherResults

from tests.faults.replicas import RedisMesh, other_rules

#: The relative jitter of the sidecar's heartbeat interval (amalgam8.sidecar.registration).
JITTER = 0.1
#: Time allowed on top of one heartbeat interval for a loaded machine (the sidecar's timer
#: fires late, the request queues): the bound is functional, not a speed figure.
SLACK = 1.0


class ReplicaKillTests(RedisMesh):
    """SIGKILL of one registry replica and one controller replica under traffic."""

    timeout = 90

    def failed_over(self, sidecar):
        """The replica URLs C{sidecar}'s clients failed over from (its log says)."""
        return {event["url"] for event in sidecar.process.events
                if "failed, trying the next" in str(event.get("message", ""))}

    async def test_kill_one_replica_of_each(self):
        """
        SIGKILL to registry r1 (which carries hello:v1 and the caller) and controller c1
        (which carries the caller): zero lost registrations, zero lost rules, zero failed
        proxied requests; every sidecar's heartbeats reach r2 within one heartbeat interval
        (ttl/3).
        """
        r1, r2 = self.registry_urls
        c1, c2 = self.controller_urls
        # Rules written through both controllers, all held by the caller's proxy.
        for n, rule in enumerate(other_rules(10)):
            code, body, _ = await self.call("POST", self.controller_urls[n % 2] + "/v1/rules",
                                            {"rules": [rule]})
            self.assertEqual(code, 201, body)
        revision, rules = await self.rules_at(c1)
        self.assertEqual((revision, len(rules)), (10, 10))
        self.assertEqual(await self.rules_at(c2), (revision, rules))
        await self.applied(revision)
        instances = await self.hello_instances(r2)
        self.assertEqual(set(instances), {"v1", "v2"})
        self.assertEqual(await self.hello_instances(r1), instances)
        for version in self.apps:
            registration = await self.registration(version)
            self.assertEqual(registration["ttl"], self.ttl)
            self.assertEqual(registration["counts"]["registrations"], 1)

        stop = self.start_traffic()
        await self.wait(0.5)
        killed_at = time.time()
        await gatherResults([Deferred.fromCoroutine(self.kill(p))
                             for p in (self.registries[0], self.controllers[0])])

        # The caller: an instance registered through r2 and a rule written through c2 at
        # once reach its proxy (its blocking reads moved to the survivors).
        code, marker, _ = await self.call("POST", r2 + "/api/v1/instances", {
            "service_name": "marker", "endpoint": {"type": "http", "value": "127.0.0.1:9"}})
        self.assertEqual(code, 201, marker)
        after = other_rules(1, prefix="after-kill")
        code, body, _ = await self.call("POST", c2 + "/v1/rules", {"rules": after})
        self.assertEqual(code, 201, body)

        # The registering sidecars: a heartbeat after the kill can only have reached r2.
        async def heartbeats_after_kill():
            states = {v: await self.registration(v) for v in sorted(self.apps)}
            if all((s["last_heartbeat"] or 0) > killed_at for s in states.values()):
                return states

        async def caller_follows():
            await self.until(self.caller_holds(lambda state: (
                "marker" in {i["service_name"] for i in state["instances"]}
                and "after-kill-0" in {r["id"] for r in state["rules"]})),
                "the caller to follow the survivors", interval=0.02)
            return time.time() - killed_at

        states, caller_carried = await gatherResults([
            Deferred.fromCoroutine(self.until(
                heartbeats_after_kill, "every sidecar to heartbeat the surviving registry",
                timeout=self.ttl * 2)),
            Deferred.fromCoroutine(caller_follows())])
        carried = {v: s["last_heartbeat"] - killed_at for v, s in states.items()}
        code, body, _ = await self.call("DELETE", r2 + "/api/v1/instances/" + marker["id"])
        self.assertEqual(code, 200, body)

        # A whole ttl after the kill: a lease nobody renewed would be gone by now.
        await self.wait(max(0.0, killed_at + self.ttl + 0.5 - time.time()))
        results = await stop()
        failed = [answer for _, answer in results if answer[0] != 200]
        print("\none registry and one controller of two SIGKILLed under traffic: {} requests "
              "sent, {} failed; heartbeats reached the surviving registry {} s after the "
              "kill (interval {:.2f} s); the caller followed the survivors {:.2f} s after it"
              .format(len(results), len(failed),
                      ", ".join("{} {:.2f}".format(v, d) for v, d in sorted(carried.items())),
                      self.ttl / 3, caller_carried))

        self.assertEqual(failed, [])
        self.assertEqual({answer[1] for at, answer in results if at > killed_at},
                         {"v1", "v2"})
        # Zero lost registrations: the same instances, never expired nor registered again.
        self.assertEqual(await self.hello_instances(r2), instances)
        for version in self.apps:
            registration = await self.registration(version)
            self.assertEqual((registration["counts"]["registrations"],
                              registration["counts"]["expirations"],
                              registration["counts"]["failures"]), (1, 0, 0), registration)
        self.assertEqual(await self.metric(r2, "a8_registry_expirations_total"), 0)
        # Zero lost rules: those of before, and the one written after the kill.
        self.assertEqual(await self.rules_at(c2),
                         (revision + 1, sorted(rules + after, key=lambda r: r["id"])))
        # The kill did hit them: hello:v1 and the caller failed over from r1, the caller
        # from c1 too (hello:v2 was on r2 all along).
        self.assertEqual(self.failed_over(self.apps["v1"]), {r1})
        self.assertEqual(self.failed_over(self.caller), {r1, c1})
        self.assertEqual(self.failed_over(self.apps["v2"]), set())
        # Within one heartbeat interval (jittered), with slack for a loaded machine.
        self.assertLess(max(carried.values()), self.ttl / 3 * (1 + JITTER) + SLACK, carried)
