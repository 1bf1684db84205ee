"""
Integration tests of the real controller process: C{twistd -n a8controller} with the file
store, started with C{spawnProcess} and spoken to over HTTP on 127.0.0.1 (SPEC A3, B1, C).
"""

import datetime
import json
import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, ProcessExitedAlready
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.helpers import ServerProcess, child_environment, twistd_command

LISTENING = "a8controller listening on "
LOCAL = "tcp:0:interface=127.0.0.1"
LEVELS = {"debug", "info", "warn", "error", "critical"}


def route(rule_id, destination="reviews", tags=("v1",), **extra):
    rule = {"id": rule_id, "destination": destination,
            "route": {"backends": [{"tags": list(tags)}]}}
    rule.update(extra)
    return rule


class ControllerProcess:
    """
    A mixin for a L{TestCase}: the real C{twistd -n a8controller} process over the network,
    on a rule file in the test's directory (also used by the fault suite).
    """

    timeout = 60

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "rules.json")

    def spawn(self, *options, env=None):
        """
        Start C{twistd -n --pidfile= --logger amalgam8.logs.json_observer a8controller
        *options} in the test's directory; it is stopped in cleanup.
        """
        protocol = ServerProcess(reactor, LISTENING)
        argv = twistd_command() + [
            "-n", "--pidfile=", "--logger", "amalgam8.logs.json_observer",
            "a8controller",
        ] + list(options)
        reactor.spawnProcess(protocol, argv[0], argv, env=child_environment(env or {}),
                             path=self.directory)
        self.addCleanup(self._stop, protocol)
        return protocol

    async def _stop(self, protocol):
        if protocol.exit is not None:
            return
        try:
            protocol.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            pass
        try:
            await protocol.ended(timeout=5)
        except Exception:
            try:
                protocol.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            await protocol.ended(timeout=5)

    async def start(self, *options):
        """Spawn the controller on 127.0.0.1 with the file store at C{self.path}."""
        protocol = self.spawn("--listen", LOCAL, "--database-type", "file",
                              "--database-host", self.path, *options)
        host, port = await protocol.listening()
        self.assertEqual(host, "127.0.0.1")
        return protocol, "http://127.0.0.1:{}".format(port)

    async def stop(self, protocol):
        """SIGTERM, and check that the process ended cleanly."""
        protocol.transport.signalProcess("TERM")
        code, signal = await protocol.ended()
        self.assertIn((code, signal), [(0, None), (None, 15)])
        self.assertNoTraceback(protocol)
        self.assertEqual(protocol.stderr, [])

    def client(self):
        """A treq client of its own (persistent pool, emptied in cleanup)."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        return treq.client.HTTPClient(Agent(reactor, pool=pool))

    async def call(self, http, method, url, body=None, timeout=5):
        """One request; returns C{(response, decoded JSON body or None)}."""
        kwargs = {} if body is None else {"json": body}
        d = http.request(method, url, **kwargs)
        d.addTimeout(timeout, reactor)
        response = await d
        content = await treq.content(response)
        return response, (json.loads(content) if content else None)

    async def rules(self, http, base, query="", timeout=5):
        """C{(A8-Revision, body)} of a 200 GET /v1/rules."""
        response, body = await self.call(http, "GET", base + "/v1/rules" + query,
                                         timeout=timeout)
        self.assertEqual(response.code, 200, body)
        revision = int(response.headers.getRawHeaders(b"a8-revision")[0])
        self.assertEqual(revision, body["revision"])
        return revision, body

    def assertNoTraceback(self, protocol):
        self.assertFalse([line for line in protocol.stderr + protocol.stdout
                          if "Traceback" in line],
                         "traceback in the output: {!r}".format(protocol.stdout[-5:]))
        self.assertFalse([e for e in protocol.events if "traceback" in e])



class ControllerProcessTests(ControllerProcess, TestCase):
    """The real C{twistd -n a8controller} process over the network, on a rule file."""

    async def test_rules_survive_restart(self):
        """
        Rules posted to a controller on a file store are there, with the same revision and
        exactly as written, after SIGTERM and a restart on the same file; the restarted
        controller goes on counting from that revision.
        """
        protocol, base = await self.start()
        http = self.client()
        response, body = await self.call(http, "GET", base + "/health")
        self.assertEqual(response.code, 200)

        rules = [route("a", priority=5, tags=("v2",)), route("b"),
                 {"id": "c", "destination": "ratings", "tags": ["recipe"],
                  "actions": [{"action": "abort", "return_code": 503,
                               "probability": 0.5}]}]
        response, body = await self.call(http, "POST", base + "/v1/rules", {"rules": rules})
        self.assertEqual((response.code, body), (201, {"ids": ["a", "b", "c"]}))
        response, body = await self.call(http, "PUT", base + "/v1/rules/routes/reviews",
                                         {"rules": [route("a", priority=7), route("d")]})
        self.assertEqual(response.code, 201, body)
        revision, before = await self.rules(http, base)
        self.assertEqual(revision, 2)
        self.assertEqual([r["id"] for r in before["rules"]], ["a", "c", "d"])
        await self.stop(protocol)
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(sorted(os.listdir(self.directory)), ["rules.json"])

        protocol, base = await self.start()
        http = self.client()
        revision, after = await self.rules(http, base)
        self.assertEqual(after, before)
        response, body = await self.call(http, "DELETE", base + "/v1/rules?id=c")
        self.assertEqual(response.code, 200)
        revision, _ = await self.rules(http, base)
        self.assertEqual(revision, 3)
        await self.stop(protocol)

    async def test_blocking_read(self):
        """
        C{GET /v1/rules?wait=10s&revision=N} at the current revision stays open until
        another client changes the rules, then answers at once with the new revision; with
        no change it answers the unchanged state when the wait runs out.
        """
        protocol, base = await self.start()
        http = self.client()
        other = self.client()
        await self.call(http, "POST", base + "/v1/rules", {"rules": [route("a")]})
        revision, _ = await self.rules(http, base)

        started = reactor.seconds()
        blocked = Deferred.fromCoroutine(self.rules(
            http, base, "?wait=10s&revision={}".format(revision), timeout=15))
        await deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(blocked.called, "the blocking read answered before any change")

        response, _ = await self.call(other, "POST", base + "/v1/rules",
                                      {"rules": [route("b", destination="ratings")]})
        self.assertEqual(response.code, 201)
        blocked.addTimeout(5, reactor)
        new_revision, body = await blocked
        self.assertLess(reactor.seconds() - started, 5, "answered only when wait ran out")
        self.assertEqual(new_revision, revision + 1)
        self.assertEqual(sorted(r["id"] for r in body["rules"]), ["a", "b"])

        started = reactor.seconds()
        same, body = await self.rules(http, base,
                                      "?wait=500ms&revision={}".format(new_revision))
        elapsed = reactor.seconds() - started
        self.assertEqual(same, new_revision)
        self.assertEqual(len(body["rules"]), 2)
        self.assertGreaterEqual(elapsed, 0.4)
        self.assertLess(elapsed, 3)
        await self.stop(protocol)

    async def test_sigterm_with_waiting_read(self):
        """
        SIGTERM while a blocking read is open stops the controller cleanly: the read is
        answered with the current rules (or its connection closed), the port is closed,
        and stdout holds only JSON lines and stderr nothing.
        """
        protocol, base = await self.start()
        http = self.client()
        revision, _ = await self.rules(http, base)
        url = base + "/v1/rules?wait=30s&revision={}".format(revision)

        async def blocking_read():
            try:
                response = await http.get(url)
                await treq.content(response)
                return response.code
            except Exception as e:
                return e

        outcome = []
        blocked = Deferred.fromCoroutine(blocking_read())
        blocked.addCallback(lambda result: outcome.append(result) or result)
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(outcome, [], "the blocking read answered before any change")
        await self.stop(protocol)
        result = await blocked.addTimeout(5, reactor)
        if isinstance(result, int):
            self.assertEqual(result, 200)
        for line in protocol.stdout:
            event = json.loads(line)
            self.assertIn(event["level"], LEVELS, line)
            self.assertIsInstance(event["message"], str)
            datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        listening = [e for e in protocol.events if e["message"].startswith(LISTENING)]
        self.assertEqual(len(listening), 1)
        self.assertEqual(listening[0]["host"], "127.0.0.1")
        with self.assertRaises(ConnectionRefusedError):
            await self.call(http, "GET", base + "/health", timeout=3)

    async def test_corrupt_file_refuses_start(self):
        """
        A rule file that is not valid JSON stops the start with exit status 2 and one line
        on stderr naming the file; the file is left as it was and nothing listens.
        """
        with open(self.path, "wb") as f:
            f.write(b'{"format": "amalgam8-rules/1", "namespaces": {"default": ')
        protocol = self.spawn("--listen", LOCAL, "--database-type", "file",
                              "--database-host", self.path)
        self.assertEqual(await protocol.ended(), (2, None))
        self.assertEqual(len(protocol.stderr), 1, protocol.stderr)
        self.assertTrue(protocol.stderr[0].startswith("a8controller: "), protocol.stderr)
        self.assertIn(self.path, protocol.stderr[0])
        self.assertIsNone(protocol.address)
        self.assertNoTraceback(protocol)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(),
                             b'{"format": "amalgam8-rules/1", "namespaces": {"default": ')

    async def test_file_without_host_refuses_start(self):
        """
        The file database without a path, given in the environment, stops the start with
        exit status 2 and one line naming the missing setting.
        """
        protocol = self.spawn("--listen", LOCAL, env={"A8_DATABASE_TYPE": "file"})
        self.assertEqual(await protocol.ended(), (2, None))
        self.assertEqual(len(protocol.stderr), 1, protocol.stderr)
        self.assertIn("A8_DATABASE_HOST", protocol.stderr[0])
        self.assertNoTraceback(protocol)
