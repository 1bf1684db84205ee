"""
Slow and idle clients against a real C{twistd} registry on 127.0.0.1 (issue 10 item 5):
slow-loris clients beside normal ones (the normal requests keep answering quickly; a slow
one is cut with 408 after the read timeout), idle connections closed after the idle
timeout, and more connections than the open-file limit allows answered 503 instead of
failing accept. Each case is bounded in time (a few seconds).
"""

import json
import shutil
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from tests.faults.web_servers import connect, raw_exchange, start_server
from tests.test_web import parse_answer

SERVICES = b"GET /api/v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


class SlowClientTests(TestCase):
    timeout = 60

    async def timed_request(self, port):
        started = time.monotonic()
        raw = await raw_exchange(port, SERVICES, timeout=5)
        return parse_answer(raw)[0], time.monotonic() - started

    async def test_slow_loris(self):
        """Five clients sending a header byte every 0.2 s are cut with 408 after the 2 s
        read timeout; requests sent beside them are answered within a second."""
        _, port = await start_server(self, "a8registry", "--read-timeout", "2s")
        slow = [await connect(port) for _ in range(5)]
        started = time.monotonic()
        cut = {}
        for client in slow:
            client.closed.addCallback(
                lambda raw, client=client: cut.setdefault(client, time.monotonic()))
        header = b"GET /api/v1/services HTTP/1.1\r\nX-Slow: " + b"a" * 200
        normal = []
        for i in range(len(header)):
            for client in slow:
                if client not in cut:
                    client.transport.write(header[i:i + 1])
            if i % 5 == 0:
                normal.append(await self.timed_request(port))
            if len(cut) == len(slow):
                break
            await sleep(0.2)
        self.assertEqual(len(cut), len(slow), "slow clients still open")
        for client in slow:
            code, headers, body = parse_answer(client.received)
            self.assertEqual(code, 408, client.received[:200])
            self.assertIn(b"a8-request-id", headers)
            self.assertEqual(list(json.loads(body)), ["Error"])
            self.assertGreaterEqual(cut[client] - started, 1.5)
            self.assertLess(cut[client] - started, 5)
        self.assertGreaterEqual(len(normal), 2)
        for code, seconds in normal:
            self.assertEqual(code, 200)
            self.assertLess(seconds, 1.0)

    async def test_idle_closed(self):
        """A connection with no request is closed after the idle timeout (1 s here)."""
        _, port = await start_server(self, "a8registry", "--idle-timeout", "1s")
        client = await connect(port)
        started = time.monotonic()
        await client.closed.addTimeout(10, reactor)
        self.assertLess(time.monotonic() - started, 5)
        self.assertGreaterEqual(time.monotonic() - started, 0.8)

    async def test_fd_limit(self):
        """
        Under an open-file limit of 128 (soft and hard), 150 idle connections leave the
        server answering: the ones over the automatic cap (128 - 64) are answered 503 with
        Retry-After at once, a request then gets 503 too (not a failed accept), and once
        the idle ones leave requests are answered 200 again.
        """
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            raise SkipTest("prlimit (util-linux) is not installed")
        _, port = await start_server(self, "a8registry", prefix=[prlimit, "--nofile=128:128"])
        idle = [await connect(port) for _ in range(150)]
        await sleep(0.5)
        refused = [client for client in idle if client.received]
        self.assertGreater(len(refused), 50)
        for client in refused:
            code, headers, _ = parse_answer(client.received)
            self.assertEqual((code, headers.get(b"retry-after")), (503, b"1"))
        raw = await raw_exchange(port, SERVICES, timeout=5)
        self.assertEqual(parse_answer(raw)[0], 503)
        for client in idle:
            client.transport.loseConnection()
        await sleep(0.5)
        code, seconds = await self.timed_request(port)
        self.assertEqual(code, 200)
