"""
Fault: the leader of a 3-member etcd cluster is killed (SIGKILL) under a burst of rule writes
to a real a8controller given the three client URLs. Every rule the controller acknowledged
with a 201 is there afterwards, no revision was answered twice, the writes that failed got a
503 with a clear error, and writes succeed again by themselves.
"""

import json
import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from amalgam8.testing.etcd import etcd_missing, start_etcd
from tests.helpers import ServerProcess, child_environment, twistd_command

WRITERS = 4
TOTAL = 200
PACE = 0.01          # seconds between one writer's writes
KILL_AFTER = 60      # acknowledgements before the leader is killed


def route(rule_id):
    return {"id": rule_id, "destination": "reviews",
            "route": {"backends": [{"tags": ["v1"]}]}}


class EtcdLeaderKillTests(TestCase):
    """SIGKILL of the etcd leader under a burst of POST /v1/rules."""

    timeout = 60
    skip = etcd_missing()

    async def setUp(self):
        self.etcd = await start_etcd(self, reactor, size=3)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = WRITERS + 2
        self.addCleanup(pool.closeCachedConnections)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))

    async def leader(self):
        """The index of the member that leads (its status: leader == its member id)."""
        for index, member in enumerate(self.etcd.members):
            response = await self.etcd.http().post(
                member.client_url + "/v3/maintenance/status", data=b"{}",
                headers={b"Content-Type": [b"application/json"]}, timeout=2)
            status = json.loads(await treq.content(response))
            if status.get("leader") == status["header"]["member_id"]:
                return index
        self.fail("no member says it leads")

    async def spawn(self, urls):
        protocol = ServerProcess(reactor, "a8controller listening on ")
        argv = twistd_command() + ["-n", "--pidfile=", "--logger",
                                   "amalgam8.logs.json_observer", "a8controller",
                                   "--listen", "tcp:0:interface=127.0.0.1"]
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        env = {"A8_DATABASE_TYPE": "etcd", "A8_DATABASE_HOST": ",".join(urls)}
        reactor.spawnProcess(protocol, argv[0], argv, env=child_environment(env),
                             path=directory)
        self.addCleanup(self._stop, protocol)
        host, port = await protocol.listening(timeout=20)
        return protocol, "http://{}:{}".format(host, port)

    async def _stop(self, protocol):
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

    async def post(self, base, rule, timeout=15):
        d = self.http.post(base + "/v1/rules", json={"rules": [rule]})
        d.addTimeout(timeout, reactor)
        response = await d
        body = json.loads(await treq.content(response) or b"null")
        revision = response.headers.getRawHeaders(b"a8-revision")
        return response.code, body, int(revision[0]) if revision else None

    async def test_leader_killed_under_writes(self):
        """
        Four writers POST 200 rules in about 2 s; after 60 acknowledgements the etcd leader
        (the controller's first URL) is killed. Afterwards every acknowledged rule is
        listed, each acknowledged write had its own revision (increasing along each
        writer), every failed write got 503 error_store_unavailable or
        error_store_unconfirmed naming etcd, and a write after the burst succeeds.
        """
        leader = await self.leader()
        urls = self.etcd.urls
        urls = [urls[leader]] + urls[:leader] + urls[leader + 1:]
        controller, base = await self.spawn(urls)
        acked = []          # (writer, rule id, revision, sent at, acknowledged at)
        failed = []         # (rule id, status, body)
        sent = [0]
        killed = []

        async def writer(n):
            while sent[0] < TOTAL:
                sent[0] += 1
                rule_id = "burst-{}-{}".format(n, sent[0])
                at = reactor.seconds()
                code, body, revision = await self.post(base, route(rule_id))
                if code == 201:
                    self.assertEqual(body["ids"], [rule_id])
                    acked.append((n, rule_id, revision, at, reactor.seconds()))
                    if len(acked) == KILL_AFTER:
                        killed.append(reactor.seconds())
                        await self.etcd.kill_member(leader)
                else:
                    failed.append((rule_id, code, body))
                await deferLater(reactor, PACE, lambda: None)

        started = reactor.seconds()
        await DeferredList([Deferred.fromCoroutine(writer(n)) for n in range(WRITERS)],
                           fireOnOneErrback=True, consumeErrors=True)
        burst = reactor.seconds() - started
        self.assertEqual(len(killed), 1, "the leader was not killed")

        # Writes work again (they may have already during the burst).
        recovered = None
        deadline = reactor.seconds() + 15
        while recovered is None:
            code, body, revision = await self.post(base, route("after"), timeout=10)
            if code == 201:
                recovered = reactor.seconds()
                break
            self.assertLess(reactor.seconds(), deadline, "no write succeeded after the kill")
            await deferLater(reactor, 0.05, lambda: None)
        # Recovery: the first acknowledgement of a write sent after the kill.
        first_after = min([done for _, _, _, at, done in acked if at >= killed[0]]
                          or [recovered])

        response = await self.http.get(base + "/v1/rules")
        listing = json.loads(await treq.content(response))
        stored = {rule["id"] for rule in listing["rules"]}
        lost = [entry[1] for entry in acked if entry[1] not in stored]
        revisions = [entry[2] for entry in acked]
        print("\netcd leader killed under {} rule writes in {:.2f} s: acknowledged {}, "
              "failed {} ({}), lost {}, revisions {}..{} all distinct: {}; recovered "
              "(first write sent after the kill acknowledged) {:.3f} s after the kill; "
              "revision now {}".format(
                  sent[0], burst, len(acked), len(failed),
                  ", ".join(sorted({str(code) for _, code, _ in failed})) or "none",
                  len(lost), min(revisions), max(revisions),
                  len(set(revisions)) == len(revisions), first_after - killed[0],
                  listing["revision"]))
        for rule_id, code, body in failed:
            print("  {} got {}: {}".format(rule_id, code, body))
        self.assertEqual(lost, [])
        self.assertEqual(len(set(revisions)), len(revisions), "a revision was answered twice")
        for n in range(WRITERS):
            mine = [entry[2] for entry in acked if entry[0] == n]
            self.assertEqual(mine, sorted(mine), "writer {} saw revisions go back".format(n))
        self.assertGreater(listing["revision"], max(revisions))
        for rule_id, code, body in failed:
            self.assertEqual(code, 503, (rule_id, body))
            self.assertIn(body["error"], ("error_store_unavailable", "error_store_unconfirmed"))
            self.assertIn("etcd", body["description"])
        self.assertFalse([line for line in controller.stderr + controller.stdout
                          if "Traceback" in line])
