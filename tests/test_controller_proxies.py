"""
Tests for the proxy status reports (SPEC B2): the IProxyReports contract on the in-memory
L{ProxyReports} (also behind answers that come later) and on L{RedisProxyReports} over a
real C{redis-server} on a free loopback port; two Redis replicas sharing the reports; Redis
going away.
"""

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from amalgam8.controller.proxies import ProxyReports, Report
from amalgam8.controller.proxies_redis import (
    RedisProxyReports,
    decode_report,
    encode_report,
)
from amalgam8.errors import StoreUnavailable
from amalgam8.interfaces import IProxyReports
from amalgam8.redislink import RedisAddress
from amalgam8.testing.late import LateStore
from amalgam8.testing.proxies import START, proxy_reports_tests, report_of
from amalgam8.testing.redis import RedisServer, RedisStoreCase, redis_missing

_missing = redis_missing()


class MemoryReportsContractTests(proxy_reports_tests(
        lambda case, clock, interval: ProxyReports(clock, interval))):
    """The in-memory reports keep the IProxyReports contract."""


class LateMemoryReportsContractTests(proxy_reports_tests(
        lambda case, clock, interval: LateStore(ProxyReports(clock, interval),
                                                case.later))):
    """The contract holds when every answer comes later, as a networked store's do."""


class RedisReportsCase(RedisStoreCase):
    """L{RedisStoreCase} with a maker of Redis proxy reports."""

    server_key = "proxy-reports"

    def redis_reports(self, clock, interval=30.0, **kwargs):
        reports = self.track(RedisProxyReports(clock, reactor, self.address(),
                                               interval=interval, **kwargs))
        reports.startService()
        return reports


class RedisReportsContractTests(RedisReportsCase, proxy_reports_tests(
        lambda case, clock, interval: case.redis_reports(clock, interval))):
    """The Redis reports keep the IProxyReports contract, on a real redis-server."""


class RedisReportsReplicaTests(RedisReportsCase, SynchronousTestCase):
    """Two report stores on one Redis are the reports of two replicas of one controller."""

    def setUp(self):
        self.setUpLater()
        self.clock = Clock()
        self.clock.advance(START)
        self.one = self.redis_reports(self.clock)
        self.two = self.redis_reports(self.clock)

    def result(self, deferred):
        self.later.wait(deferred)
        return self.successResultOf(deferred)

    def live(self, reports, namespace="default"):
        return [(r.proxy_id, r.revision) for r in self.result(reports.live(namespace))]

    def test_shared(self):
        """A report made through one replica is listed and counted through the other;
        a later report through the other replaces it for both."""
        self.result(self.one.report("default", "p1", **report_of(revision=2)))
        self.result(self.one.report("default", "p2", **report_of(revision=1)))
        self.assertEqual(self.live(self.two), [("p1", 2), ("p2", 1)])
        status = self.result(self.two.status("default", 2))
        self.assertEqual((status["proxies"], status["in_sync"]), (2, 1))
        self.assertEqual([p["proxy_id"] for p in status["lagging"]], ["p2"])
        self.result(self.two.report("default", "p2", **report_of(revision=2)))
        self.assertEqual(self.live(self.one), [("p1", 2), ("p2", 2)])
        self.assertEqual(self.result(self.one.status("default", 2))["in_sync"], 2)

    def test_expiry_seen_by_both(self):
        """A report made through one replica goes stale at the same instant of the clock
        for both, whichever reads first."""
        self.result(self.one.report("default", "p1", **report_of(interval=10)))
        self.clock.advance(30)
        self.assertEqual(self.live(self.two), [("p1", 0)])
        self.assertEqual(self.live(self.one), [("p1", 0)])
        self.clock.advance(0.001)
        self.assertEqual(self.live(self.two), [])
        self.assertEqual(self.live(self.one), [])

    def test_stale_removed_from_redis(self):
        """Reading removes the stale reports from Redis; both keys expire in Redis's own
        time a minute after the last report in them is due."""
        self.result(self.one.report("default", "p1", **report_of(interval=5)))
        self.result(self.one.report("default", "p2", **report_of(interval=20)))
        # The last deadline is 60 s away (3 x 20 s), the margin 60 s more; a second's slack
        # for the time the test takes.
        for key in ("a8:p:default:rep", "a8:p:default:due"):
            ttl = self.redis.command("PTTL", key)
            self.assertTrue(119_000 < ttl <= 120_000, (key, ttl))
        self.clock.advance(16)
        self.assertEqual(self.live(self.two), [("p2", 0)])
        self.assertEqual(self.redis.command("HKEYS", "a8:p:default:rep"), [b"p2"])
        self.assertEqual(self.redis.command("ZRANGE", "a8:p:default:due", 0, -1), [b"p2"])

    def test_garbage_ignored(self):
        """A value in Redis that is not a report (written by something else) is left out
        of the listing, and the others are listed."""
        self.result(self.one.report("default", "p1", **report_of()))
        self.redis.command("HSET", "a8:p:default:rep", "p0", "1 2 {not json")
        self.redis.command("ZADD", "a8:p:default:due", START + 1000, "p0")
        with capturedLogs() as events:
            self.assertEqual(self.live(self.two), [("p1", 0)])
        [warned] = [e for e in events if e.get("proxy_id") == "p0"]
        self.assertEqual((warned["log_level"], warned["namespace"]),
                         (LogLevel.warn, "default"))

    def test_prefix(self):
        """Reports under another key prefix are another controller's."""
        other = self.redis_reports(self.clock, prefix="b8:")
        self.result(self.one.report("default", "p1", **report_of()))
        self.assertEqual(self.live(other), [])
        self.assertEqual(self.live(self.two), [("p1", 0)])


class EncodingTests(SynchronousTestCase):
    """What a report is kept as in Redis."""

    def test_round_trip(self):
        """A report comes back as it was, the interval as given."""
        report = Report("p é", "reviews", ("v1", "a b"), 3, None, "", 5, START + 0.1,
                        (("r1", "bad \"x\""),))
        self.assertEqual(decode_report("p é", encode_report(report)), report)
        text = encode_report(report)
        self.assertTrue(text.startswith("{!r} 5.0 {{".format(START + 0.1)), text)

    def test_not_a_report(self):
        """Text that is not a kept report is a ValueError."""
        for text in ("", "1 2", "1 2 {}", "1 2 []", "x 2 {\"service\": 1}",
                     '1 2 {"service":"s","tags":[],"revision":0,"index":null,'
                     '"applied_at":"","interval":1,"rejected":[1]}'):
            self.assertRaises(ValueError, decode_report, "p", text)

    def test_provides(self):
        """Both implementations provide IProxyReports (verifyObject is in the
        contract)."""
        self.assertTrue(IProxyReports.providedBy(ProxyReports(Clock())))
        self.assertTrue(IProxyReports.providedBy(
            RedisProxyReports(Clock(), reactor, RedisAddress("127.0.0.1", 1))))


class RedisReportsOutageTests(TestCase):
    """Redis going away under the reports, and coming back; its own server."""

    timeout = 30

    async def test_unavailable_then_back(self):
        """With Redis down, reports and reads fail at once with StoreUnavailable; once
        it is back the reports work again by themselves, the earlier ones kept."""
        if _missing:
            raise SkipTest(_missing)
        server = RedisServer(self.mktemp(), persist=True)
        server.start()
        self.addCleanup(server.stop)
        clock = Clock()
        clock.advance(START)
        reports = RedisProxyReports(clock, reactor, RedisAddress("127.0.0.1", server.port))
        reports.startService()
        self.addCleanup(reports.stopService)
        await reports.report("default", "p1", **report_of(revision=1))
        server.kill()
        deadline = reactor.seconds() + 5
        while reports.link.connected:
            self.assertLess(reactor.seconds(), deadline)
            await deferLater(reactor, 0.01, lambda: None)
        error = await self.assertFailure(
            reports.report("default", "p2", **report_of()), StoreUnavailable)
        self.assertIn("the proxy reports", error.message)
        await self.assertFailure(reports.live("default"), StoreUnavailable)
        await self.assertFailure(reports.status("default", 1), StoreUnavailable)
        server.start()
        deadline = reactor.seconds() + 10
        while True:
            try:
                live = await reports.live("default")
                break
            except StoreUnavailable:
                self.assertLess(reactor.seconds(), deadline)
                await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([(r.proxy_id, r.revision) for r in live], [("p1", 1)])
