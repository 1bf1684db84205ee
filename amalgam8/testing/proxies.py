# -*- test-case-name: tests.test_controller_proxies -*-
"""
The contract every L{amalgam8.interfaces.IProxyReports} keeps, as a test-case factory.

    class MemoryReportsTests(proxy_reports_tests(
            lambda case, clock, interval: ProxyReports(clock, interval))):
        pass

C{make_reports(case, clock, interval)} returns reports (started, if they are a service, and
stopped in the case's clean-up) that read the time from C{clock} (a
L{twisted.internet.task.Clock}) and assume C{interval} for a report that names none. The
suite holds for reports whose Deferreds fire later too: it flushes C{case.later} (an
L{amalgam8.testing.late.Later}, or the L{amalgam8.testing.redis.Settle} of a Redis case)
before it looks at a result, so C{LateStore(reports, case.later)} runs it unchanged.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.interfaces import IProxyReports
from amalgam8.testing.late import FlushingResults

__all__ = ["proxy_reports_tests", "report_of"]

#: The clock's time when a suite starts (any fixed time will do).
START = 1_800_000_000.0


def report_of(revision=0, service="reviews", tags=("v1",), index=4,
              applied_at="2027-01-15T08:00:00Z", interval=None, rejected=()):
    """The keyword arguments of L{IProxyReports.report} after the proxy id."""
    return {"service": service, "tags": list(tags), "revision": revision, "index": index,
            "applied_at": applied_at, "interval": interval, "rejected": tuple(rejected)}


def proxy_reports_tests(make_reports):
    """
    @param make_reports: C{(case, clock, interval) -> IProxyReports}.
    @return: a L{SynchronousTestCase} subclass holding the contract.
    """

    class ProxyReportsContract(FlushingResults, SynchronousTestCase):
        interval = 30.0

        def setUp(self):
            self.setUpLater()
            self.clock = Clock()
            self.clock.advance(START)
            self.reports = make_reports(self, self.clock, self.interval)

        def report(self, proxy_id, namespace="default", reports=None, **kwargs):
            d = (reports or self.reports).report(namespace, proxy_id, **report_of(**kwargs))
            self.assertIsNone(self.successResultOf(d))

        def live(self, namespace="default", reports=None):
            return [r.as_dict() for r in self.successResultOf(
                (reports or self.reports).live(namespace))]

        def ids(self, namespace="default"):
            return [r["proxy_id"] for r in self.live(namespace)]

        def status(self, revision, namespace="default"):
            return self.successResultOf(self.reports.status(namespace, revision))

        def test_interface(self):
            """The reports provide IProxyReports, with their clock and interval."""
            self.assertTrue(verifyObject(IProxyReports, self.reports))
            self.assertIs(self.reports.clock, self.clock)
            self.assertEqual(self.reports.interval, self.interval)

        def test_empty(self):
            """With no report, nothing is live and the status counts no proxy."""
            self.assertEqual(self.live(), [])
            self.assertEqual(self.status(3), {"revision": 3, "proxies": 0, "in_sync": 0,
                                              "lagging": []})

        def test_report_listed(self):
            """A report is listed with what it said, and the interval assumed for it."""
            self.report("p1", revision=2, tags=("v1", "eu"))
            self.assertEqual(self.live(), [{
                "proxy_id": "p1", "service": "reviews", "tags": ["v1", "eu"],
                "revision": 2, "index": 4, "applied_at": "2027-01-15T08:00:00Z",
                "interval": self.interval}])

        def test_fields_as_given(self):
            """A report without an index has none; its own interval is listed as given;
            rejected rules are listed in their order; text outside ASCII is kept."""
            self.report("p1", index=None, interval=5, applied_at="",
                        rejected=(("r2", "pcre_compile() failed: é"), ("r1", "x")))
            [listed] = self.successResultOf(self.reports.live("default"))
            self.assertEqual(listed.as_dict(), {
                "proxy_id": "p1", "service": "reviews", "tags": ["v1"], "revision": 0,
                "applied_at": "", "interval": 5,
                "rejected": [{"id": "r2", "error": "pcre_compile() failed: é"},
                             {"id": "r1", "error": "x"}]})
            self.assertIsNone(listed.index)
            self.assertEqual(listed.received, START)
            self.assertEqual(listed.tags, ("v1",))
            self.assertEqual(listed.rejected, (("r2", "pcre_compile() failed: é"),
                                               ("r1", "x")))

        def test_report_replaces(self):
            """A later report of the same proxy replaces the earlier one, rejected rules
            included."""
            self.report("p1", revision=0, rejected=(("r1", "bad"),))
            self.report("p1", revision=3)
            self.assertEqual([(r["proxy_id"], r["revision"], "rejected" in r)
                              for r in self.live()], [("p1", 3, False)])

        def test_sorted_by_id(self):
            """Live reports come sorted by proxy id, whatever the order of reporting."""
            for proxy_id in ("p3", "a", "p10", "p1", "Z"):
                self.report(proxy_id)
            self.assertEqual(self.ids(), ["Z", "a", "p1", "p10", "p3"])

        def test_status(self):
            """The status counts the proxies at the revision and lists the lagging ones,
            by proxy id; a proxy ahead of the revision is in sync."""
            self.report("p2", revision=1)
            self.report("p1", revision=2)
            self.report("p4", revision=3)
            self.report("p3", revision=0, service="ratings")
            status = self.status(2)
            self.assertEqual((status["revision"], status["proxies"], status["in_sync"]),
                             (2, 4, 2))
            self.assertEqual([(p["proxy_id"], p["revision"]) for p in status["lagging"]],
                             [("p2", 1), ("p3", 0)])
            self.assertEqual(status["lagging"][1]["service"], "ratings")
            self.assertNotIn("rejected", status)

        def test_status_rejected(self):
            """The status lists the rules of its revision that proxies at it skipped,
            with those proxies; what a proxy at another revision skipped is not
            listed."""
            bad = ("r2", "pcre_compile() failed")
            self.report("p1", revision=2, rejected=(bad,))
            self.report("p2", revision=2, rejected=(bad, ("r1", "x")))
            self.report("p3", revision=1, rejected=(("old", "y"),))
            self.report("p4", revision=2)
            status = self.status(2)
            self.assertEqual((status["proxies"], status["in_sync"]), (4, 3))
            self.assertEqual(status["rejected"], [
                {"id": "r1", "error": "x", "proxies": ["p2"]},
                {"id": "r2", "error": bad[1], "proxies": ["p1", "p2"]}])

        def test_stale_exactly(self):
            """A report is live for exactly three of its intervals: at 90 s it counts,
            a millisecond later it is gone."""
            self.report("p1")
            self.clock.advance(60)
            self.report("p2")
            self.clock.advance(30)
            self.assertEqual(self.ids(), ["p1", "p2"])
            self.clock.advance(0.001)
            self.assertEqual(self.ids(), ["p2"])
            self.assertEqual(self.status(0)["proxies"], 1)
            self.clock.advance(60)
            self.assertEqual(self.ids(), [])

        def test_gone_for_good(self):
            """A stale report does not come back when the clock is set back."""
            self.report("p1")
            self.clock.advance(91)
            self.assertEqual(self.ids(), [])
            self.clock.rightNow -= 10
            self.assertEqual(self.ids(), [])

        def test_own_interval(self):
            """A report naming its interval is live for three of its own intervals."""
            self.report("p1", interval=5)
            self.report("p2", interval=0.5)
            self.clock.advance(1.5)
            self.assertEqual(self.ids(), ["p1", "p2"])
            self.clock.advance(0.25)
            self.assertEqual(self.ids(), ["p1"])
            self.clock.advance(13.25)
            self.assertEqual(self.ids(), ["p1"])
            self.clock.advance(0.25)
            self.assertEqual(self.ids(), [])

        def test_report_renews(self):
            """A proxy that keeps reporting stays live, long past its first interval."""
            for _ in range(10):
                self.report("p1")
                self.clock.advance(60)
            self.assertEqual(self.ids(), ["p1"])

        def test_namespaces_apart(self):
            """Reports of one namespace are not seen in another, even under the same
            proxy id."""
            self.report("p1", namespace="a", revision=1)
            self.report("p1", namespace="b", revision=2)
            self.report("p2", namespace="a/b c", revision=3)
            self.assertEqual([r["revision"] for r in self.live("a")], [1])
            self.assertEqual([r["revision"] for r in self.live("b")], [2])
            self.assertEqual([r["revision"] for r in self.live("a/b c")], [3])
            self.assertEqual(self.live("c"), [])
            self.assertEqual(self.status(0, namespace="c")["proxies"], 0)

        def test_odd_ids(self):
            """Proxy ids and tags with spaces, colons and text outside ASCII are kept as
            given."""
            odd = "host 1:6379/é"
            self.report(odd, tags=("a b", "ü:1"), service="x y")
            [listed] = self.live()
            self.assertEqual((listed["proxy_id"], listed["tags"], listed["service"]),
                             (odd, ["a b", "ü:1"], "x y"))

    return ProxyReportsContract
