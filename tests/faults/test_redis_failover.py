"""
Fault: the Redis master is SIGKILLed, with Redis Sentinel and one replica, under a burst of
writes through a real a8controller (and a real a8registry) that find Redis through the
Sentinels. The Sentinels promote the replica within about a second; the servers follow it
by themselves: writes succeed again, every rule whose POST got 201 is there (a write is
acknowledged only once the replica has it), revisions never went backwards, and every
registration that got 201 is listed or comes back through the heartbeat's 410 (SPEC A2:
clients re-register on 410).

Each test has its own redis-server master and replica and redis-sentinel processes (with
down-after-milliseconds 500) on free loopback ports; the Sentinel list the servers get
starts with a port nothing listens on.
"""

import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from amalgam8.testing.redis import RedisServer, free_port, redis_missing
from tests.helpers import ServerProcesses

#: Writes acknowledged before the master is killed, and after the failover.
BEFORE, AFTER = 20, 10
#: The longest the servers may take to serve writes again after the kill (seconds).
FOLLOW_WITHIN = 15
RULE = {"destination": "reviews", "route": {"backends": [{"tags": ["v1"]}]}}


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


class RedisFailoverTests(ServerProcesses, TestCase):
    """SIGKILL of the Redis master under writes, with Sentinel and one replica."""

    timeout = 60

    def setUp(self):
        missing = redis_missing()
        if missing:
            raise SkipTest(missing)
        self.master = RedisServer(self.mktemp()).start()
        self.addCleanup(self.master.stop)
        self.replica = RedisServer(self.mktemp(), replica_of=self.master).start()
        self.addCleanup(self.replica.stop)
        self.replica.wait_in_sync()
        self.setUpProcesses()

    def sentinels(self, count):
        """Start C{count} Sentinels of the master, wait until they know the replica and
        each other; the setting that names them (a dead address first)."""
        started = []
        for _ in range(count):
            sentinel = RedisServer(self.mktemp(), sentinel_of=self.master, down_after=500,
                                   failover_timeout=2000).start()
            self.addCleanup(sentinel.stop)
            started.append(sentinel)
        for sentinel in started:
            sentinel.wait_watching(replicas=1, sentinels=count - 1)
        return ",".join(["127.0.0.1:{}".format(free_port())]
                        + [sentinel.address for sentinel in started])

    async def burst(self, write, writers=4):
        """
        C{writers} loops calling C{write(n)} (-> C{(code, value)}) until L{BEFORE} have
        succeeded; the master is SIGKILLed; they go on until L{AFTER} more have
        succeeded after the kill.

        @return: C{(results, seconds from the kill to the first success of a write sent
            after it)}, results as C{(n, code, value, sent after the kill)}.
        """
        results = []
        state = {"killed_at": None, "back_at": None, "after": 0}
        counter = iter(range(10**6))

        async def loop():
            while state["after"] < AFTER:
                n = next(counter)
                # Sent after the kill: a request in flight at the kill may still have
                # been answered by the old master.
                after = state["killed_at"] is not None
                code, value = await write(n)
                results.append((n, code, value, after))
                if code in (200, 201):
                    if after:
                        state["after"] += 1
                        if state["back_at"] is None:
                            state["back_at"] = reactor.seconds()
                    elif sum(1 for r in results if r[1] in (200, 201)) >= BEFORE \
                            and state["killed_at"] is None:
                        state["killed_at"] = reactor.seconds()
                        self.master.kill()
                else:
                    await sleep(0.02)
                if state["killed_at"] is not None and state["back_at"] is None:
                    self.assertLess(reactor.seconds() - state["killed_at"], FOLLOW_WITHIN,
                                    "no write succeeded within {} s of the kill".format(
                                        FOLLOW_WITHIN))

        await gatherResults([Deferred.fromCoroutine(loop()) for _ in range(writers)])
        return results, state["back_at"] - state["killed_at"]

    def assertFollowed(self, results, what):
        """Only successes and 503s were answered; the process said it followed."""
        codes = {code for _, code, _, _ in results}
        self.assertLessEqual(codes - {200, 201}, {503}, codes)
        self.assertTrue(any(code == 503 for _, code, _, after in results if after),
                        "no write failed while the master was away: was it killed?")
        [process] = self.processes
        switched = [e for e in process.events
                    if "switched the master" in e.get("message", "")
                    or "is connected to" in e.get("message", "")]
        self.assertTrue(switched, "{} never reconnected: {}".format(what, process.stdout[-10:]))
        self.assertNoTraceback()

    async def test_controller_follows_failover(self):
        """
        Rules posted by four writers through an a8controller on two Sentinels while the
        master is killed: the controller follows the promoted replica, every rule whose
        POST got 201 is listed afterwards, the revisions of the 201s are all different,
        and no read ever saw a revision lower than one seen before it.
        """
        sentinels = self.sentinels(2)
        base = await self.spawn("a8controller", {
            "A8_DATABASE_TYPE": "redis", "A8_DATABASE_SENTINELS": sentinels,
            "A8_DATABASE_MASTER": "a8master"})
        seen = []
        reading = [True]

        async def read():
            while reading[0]:
                response, content = await self.call("GET", base + "/v1/rules")
                if response.code == 200:
                    seen.append(json.loads(content)["revision"])
                else:
                    self.assertEqual(response.code, 503, content)
                await sleep(0.01)

        reader = Deferred.fromCoroutine(read())

        async def write(n):
            rule = dict(RULE, id="rule-%d" % n)
            response, content = await self.call("POST", base + "/v1/rules",
                                                 {"rules": [rule]})
            if response.code == 201:
                revision = int(response.headers.getRawHeaders(b"a8-revision")[0])
                return 201, (rule["id"], revision)
            self.assertIn(json.loads(content)["error"],
                          ("error_store_unavailable", "error_store_unconfirmed"), content)
            return response.code, None

        results, back = await self.burst(write)
        reading[0] = False
        await reader
        acknowledged = [value for _, code, value, _ in results if code == 201]
        response, content = await self.call("GET", base + "/v1/rules")
        self.assertEqual(response.code, 200, content)
        answer = json.loads(content)
        listed = {rule["id"] for rule in answer["rules"]}
        missing = sorted(rule_id for rule_id, _ in acknowledged if rule_id not in listed)
        print("\ncontroller: Redis master SIGKILLed after {} rules; writes back after "
              "{:.2f} s; {} rules acknowledged, {} missing, {} writes refused (503); "
              "revision {}".format(BEFORE, back, len(acknowledged), len(missing),
                                   sum(1 for r in results if r[1] == 503),
                                   answer["revision"]))
        self.assertEqual(missing, [])
        revisions = [revision for _, revision in acknowledged]
        self.assertEqual(len(set(revisions)), len(revisions), "a revision was given twice")
        seen.append(answer["revision"])
        self.assertEqual(seen, sorted(seen), "a read saw the revision go backwards")
        self.assertGreaterEqual(answer["revision"], max(revisions))
        self.assertFollowed(results, "the controller")

    async def test_registry_follows_failover(self):
        """
        Registrations by four writers through an a8registry on one Sentinel while the
        master is killed: the registry follows the promoted replica and serves; no read
        saw the index go backwards; every instance whose registration got 201 is listed
        afterwards, or its heartbeat gets 410 and registering it again succeeds and lists
        it.
        """
        sentinels = self.sentinels(1)
        base = await self.spawn("a8registry", {
            "A8_STORE": "redis", "A8_STORE_SENTINELS": sentinels,
            "A8_STORE_MASTER": "a8master"})
        instances = base + "/api/v1/instances"
        seen = []
        reading = [True]

        async def read():
            while reading[0]:
                response, content = await self.call("GET", instances)
                if response.code == 200:
                    seen.append(int(response.headers.getRawHeaders(b"a8-index")[0]))
                else:
                    self.assertEqual(response.code, 503, content)
                await sleep(0.01)

        reader = Deferred.fromCoroutine(read())

        def body(n):
            return {"service_name": "reviews", "ttl": 60,
                    "endpoint": {"type": "http", "value": "10.0.0.%d:%d" % (n % 250, n)}}

        async def write(n):
            response, content = await self.call("POST", instances, body(n))
            if response.code == 201:
                return 201, json.loads(content)["id"]
            self.assertIn("unavailable", json.loads(content)["Error"], content)
            return response.code, None

        results, back = await self.burst(write)
        reading[0] = False
        await reader
        self.assertEqual(seen, sorted(seen), "a read saw the index go backwards")
        acknowledged = {n: value for n, code, value, _ in results if code == 201}
        response, content = await self.call("GET", instances + "?service_name=reviews")
        self.assertEqual(response.code, 200, content)
        listed = {i["id"] for i in json.loads(content)["instances"]}
        lost = [n for n, instance_id in acknowledged.items() if instance_id not in listed]
        for n in lost:
            # What a sidecar does: its heartbeat gets 410, and it registers again.
            response, _ = await self.call(
                "PUT", instances + "/" + acknowledged[n] + "/heartbeat")
            self.assertEqual(response.code, 410)
            response, content = await self.call("POST", instances, body(n))
            self.assertEqual(response.code, 201, content)
        response, content = await self.call("GET", instances + "?service_name=reviews")
        listed = {i["id"] for i in json.loads(content)["instances"]}
        print("\nregistry: Redis master SIGKILLed after {} registrations; writes back after "
              "{:.2f} s; {} acknowledged, {} lost in the failover and registered again "
              "after their heartbeat's 410".format(BEFORE, back, len(acknowledged),
                                                   len(lost)))
        self.assertLessEqual(set(acknowledged.values()), listed)
        self.assertFollowed(results, "the registry")
