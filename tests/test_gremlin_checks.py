"""
Tests for L{amalgam8.gremlin.checks}: every check on records that pass and records that fail
(with the exact sentences), no records, unordered, malformed and unreadable records, tags
narrowing an edge, several checks over one pass, and bench/gremlin's record generator.
"""

from twisted.trial.unittest import SynchronousTestCase

from amalgam8.gremlin import checks as checks_module
from amalgam8.gremlin.checks import _KINDS, _Router, describe_edge, run_checks
from amalgam8.gremlin.model import Result, Service
from bench.gremlin_records import bench_checks, make_check, records

T0 = 1700000000000  # ms


def rec(src="gateway:", dst="productpage:v1", status=200, at=0.0, took=0.01,
        request_id="r1", **more):
    """A record as the proxy logs it; C{at} in seconds after T0."""
    record = {"status": status, "timestamp_in_ms": T0 + int(round(at * 1000)),
              "request_time": took, "upstream_response_time": str(took), "src": src,
              "dst": dst, "upstream_addr": "127.0.0.1:9080",
              "upstream_status": str(status), "method": "GET", "path": "/",
              "request_id": request_id, "actions": "trace", "retries": 0,
              "gremlin_recipe_id": "ab12"}
    record.update(more)
    return record


def one(check, records_):
    (result,) = run_checks([check], records_)
    return result


class Once:
    """An iterable that can be iterated only once, and counts what it gave."""

    def __init__(self, items):
        self.items = list(items)
        self.iterations = 0
        self.given = 0

    def __iter__(self):
        self.iterations += 1
        if self.iterations > 1:
            raise AssertionError("iterated twice")
        for item in self.items:
            self.given += 1
            yield item


class BoundedResponseTimeTests(SynchronousTestCase):
    check = make_check("bounded_response_time", "gateway", "productpage", max_latency=7.0)

    def test_pass(self):
        result = one(self.check, [rec(took=0.5), rec(took=7.0), rec(took=0.2)])
        self.assertIsInstance(result, Result)
        self.assertTrue(result.passed)
        self.assertEqual(result.seen, "all 3 requests took at most 7 s (max 7 s)")

    def test_fail(self):
        result = one(self.check, [rec(took=0.5, request_id="a"), rec(took=9.8, request_id="b"),
                                  rec(took=7.5, request_id="c"), rec(took=1.0)])
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "2 of 4 requests took longer than 7 s (max 9.8 s)")
        self.assertEqual(result.details["over"], 2)
        self.assertEqual(result.details["max"], 9.8)
        self.assertEqual(result.details["examples"], ["b", "c"])

    def test_no_records(self):
        result = one(self.check, [rec(src="productpage:v1", dst="reviews:v1")])
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "no records from gateway to productpage")
        self.assertEqual(result.details["records"], 0)

    def test_malformed(self):
        """A record without a number for request_time is skipped, counted and said."""
        result = one(self.check, [rec(took=0.1), rec(took="slow"), rec(took=None),
                                  rec(took=True)])
        self.assertTrue(result.passed)
        self.assertEqual(result.seen,
                         "all 1 request took at most 7 s (max 0.1 s) "
                         "(3 malformed records skipped)")
        self.assertEqual(result.details["malformed"], 3)

    def test_only_malformed(self):
        result = one(self.check, [rec(took="x")])
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "no records from gateway to productpage "
                                      "(1 malformed record skipped)")


class HttpStatusTests(SynchronousTestCase):
    def check(self, *status):
        return make_check("http_status", "gateway", "productpage", status=frozenset(status))

    def test_pass(self):
        result = one(self.check(200, 302), [rec(status=200), rec(status=302), rec(status=200)])
        self.assertTrue(result.passed)
        self.assertEqual(result.seen, "all 3 requests answered as expected (2 x 200, 1 x 302)")
        self.assertEqual(result.details["statuses"], {"200": 2, "302": 1})

    def test_cut_and_reset(self):
        """A cut connection (499) and a reset (< 0) are named as such."""
        rows = [rec(status=200)] * 37 + [rec(status=499), rec(status=499), rec(status=-1)]
        result = one(self.check(200), rows)
        self.assertFalse(result.passed)
        self.assertEqual(result.seen,
                         "2 of 40 requests were cut by the caller (499), 1 reset")
        self.assertEqual((result.details["cut"], result.details["reset"],
                          result.details["wrong"]), (2, 1, 3))

    def test_plain_statuses(self):
        rows = [rec(status=200), rec(status=503), rec(status=503), rec(status=500),
                rec(status=-2), rec(status=499)]
        result = one(self.check(200), rows)
        self.assertEqual(result.seen, "2 of 6 requests answered 503, 1 answered 500, "
                                      "1 were cut by the caller (499), 1 reset")

    def test_499_allowed(self):
        result = one(self.check(200, 499), [rec(status=499)])
        self.assertTrue(result.passed)

    def test_malformed(self):
        result = one(self.check(200), [rec(status="200"), rec(status=200.0), rec(status=200)])
        self.assertTrue(result.passed)
        self.assertEqual(result.details["malformed"], 2)


class AtMostRequestsTests(SynchronousTestCase):
    def check(self, number, by_uri=False):
        return make_check("at_most_requests", "productpage", "reviews", num_requests=number,
                          by_uri=by_uri)

    def calls(self):
        edge = {"src": "productpage:v1", "dst": "reviews:v2"}
        return [rec(request_id="a", path="/r/1", **edge), rec(request_id="a", path="/r/2", **edge),
                rec(request_id="a", path="/r/1", **edge), rec(request_id="b", path="/r/1", **edge)]

    def test_pass(self):
        result = one(self.check(3), self.calls())
        self.assertTrue(result.passed)
        self.assertEqual(result.seen, "each of 2 request ids made at most 3 calls (max 3)")

    def test_fail(self):
        result = one(self.check(2), self.calls())
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "1 of 2 request ids made more than 2 calls (max 3)")
        self.assertEqual(result.details["examples"], ["a"])

    def test_by_uri(self):
        result = one(self.check(1, by_uri=True), self.calls())
        self.assertFalse(result.passed)
        self.assertEqual(result.seen,
                         "1 of 3 request id and path pairs made more than 1 call (max 2)")
        self.assertEqual(result.details["examples"], ["a /r/1"])
        self.assertTrue(one(self.check(2, by_uri=True), self.calls()).passed)

    def test_no_request_id(self):
        result = one(self.check(1), [rec(src="productpage:v1", dst="reviews:v1",
                                         request_id=None)])
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "no records from productpage to reviews "
                                      "(1 malformed record skipped)")
        edge = {"src": "productpage:v1", "dst": "reviews:v1"}
        rows = [rec(request_id="", **edge), rec(path=None, **edge), rec(**edge)]
        self.assertEqual(one(self.check(1, by_uri=True), rows).details["malformed"], 2)
        self.assertEqual(one(self.check(1), rows).details["malformed"], 1)


class BoundedRetriesTests(SynchronousTestCase):
    edge = {"src": "productpage:v1", "dst": "reviews:v2"}

    def check(self, retries, wait_time=None, errdelta=0.01):
        return make_check("bounded_retries", "productpage", "reviews", retries=retries,
                          wait_time=wait_time, errdelta=errdelta)

    def attempts(self, request_id, *spans, **more):
        return [rec(request_id=request_id, at=at, took=took, **dict(self.edge, **more))
                for at, took in spans]

    def test_count_pass(self):
        rows = self.attempts("a", (0, 0.1), (1.1, 0.1)) + self.attempts("b", (0, 0.1))
        result = one(self.check(1), rows)
        self.assertTrue(result.passed)
        self.assertEqual(result.seen,
                         "1 of 2 request ids retried, each at most 1 time (max 1)")

    def test_proxy_retries_count(self):
        """The proxy's retries inside a record count with the app's attempts."""
        rows = self.attempts("a", (0, 0.1)) + self.attempts("a", (1, 0.1), retries=2)
        result = one(self.check(2), rows)
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "1 of 1 request id retried more than 2 times (max 3)")
        self.assertEqual(result.details["examples"], ["a"])

    def test_spacing_pass(self):
        """Gaps from one attempt's end to the next start, in time order whatever the order."""
        rows = self.attempts("a", (2.2, 0.1), (0, 0.1), (1.1, 0.1))
        result = one(self.check(2, wait_time=1.0), rows)
        self.assertTrue(result.passed)
        self.assertEqual(result.seen, "1 of 1 request id retried, each at most 2 times (max 2);"
                                      " retries spaced at least 1 s (min 1 s)")
        self.assertEqual(result.details["gaps"], 2)

    def test_spacing_errdelta(self):
        rows = self.attempts("a", (0, 0.1), (1.095, 0.1))
        self.assertTrue(one(self.check(1, wait_time=1.0), rows).passed)
        self.assertFalse(one(self.check(1, wait_time=1.0, errdelta=0.001), rows).passed)

    def test_spacing_fail(self):
        rows = (self.attempts("a", (0, 0.1), (0.3, 0.1), (1.5, 0.1))
                + self.attempts("b", (0, 0.1), (1.2, 0.1)))
        result = one(self.check(2, wait_time=1.0), rows)
        self.assertFalse(result.passed)
        self.assertEqual(result.seen,
                         "2 of 2 request ids retried, each at most 2 times (max 2); 1 of 3 "
                         "retries came sooner than 1 s after the attempt before (min 0.2 s)")
        self.assertEqual(result.details["early"], 1)
        self.assertEqual(result.details["examples"], ["a"])

    def test_spacing_needs_times(self):
        rows = self.attempts("a", (0, 0.1)) + [rec(request_id="a", took=None, **self.edge)]
        result = one(self.check(1, wait_time=1.0), rows)
        self.assertEqual(result.details["malformed"], 1)
        self.assertEqual(result.details["records"], 1)
        self.assertEqual(one(self.check(1), rows).details["malformed"], 0)


class CircuitBreakerTests(SynchronousTestCase):
    edge = {"src": "productpage:v1", "dst": "reviews:v2"}

    def check(self, closed=3, reset=5.0, halfopen=1):
        return make_check("circuit_breaker", "productpage", "reviews", closed_attempts=closed,
                          reset_time=reset, halfopen_attempts=halfopen)

    def call(self, at, status=200, took=0.1, request_id=None):
        return rec(at=at, status=status, took=took,
                   request_id=request_id or "c{}".format(at), **self.edge)

    def failures(self, *starts, status=503):
        return [self.call(at, status) for at in starts]

    def test_pass(self):
        """Three failures open it; the next call comes after reset_time and closes it."""
        rows = (self.failures(0, 1, 2) + [self.call(7.2), self.call(8)]
                + self.failures(9, 10, 11, status=-1) + [self.call(16.2)])
        result = one(self.check(), list(reversed(rows)))
        self.assertTrue(result.passed)
        self.assertEqual(result.seen, "the circuit opened 2 times, no call while open, "
                                      "2 probes after reset_time 5 s")
        self.assertEqual(result.details["opened"], 2)

    def test_call_while_open(self):
        rows = self.failures(0, 1, 2) + [self.call(3.3, request_id="x"), self.call(4),
                                         self.call(6), self.call(7.2)]
        result = one(self.check(), rows)
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "3 calls while the circuit was open (first 1.2 s after "
                                      "it opened; reset_time 5 s)")
        self.assertEqual(result.details["examples"][0], "x")

    def test_errdelta(self):
        """A call errdelta before reset_time is allowed."""
        rows = self.failures(0, 1, 2) + [self.call(7.095)]
        self.assertTrue(one(self.check(), rows).passed)

    def test_halfopen_attempts(self):
        """Half-open: at most halfopen_attempts calls start before one of them ends."""
        rows = self.failures(0, 1, 2) + [self.call(7.2, took=1.0), self.call(7.5),
                                         self.call(8.0), self.call(8.3)]
        result = one(self.check(), rows)
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "2 calls beyond halfopen_attempts 1 while half-open")
        self.assertTrue(one(self.check(halfopen=3), rows).passed)

    def test_failed_probe_reopens(self):
        rows = self.failures(0, 1, 2, 7.2) + [self.call(8.3)]
        result = one(self.check(), rows)
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "1 call while the circuit was open (first 1 s after it "
                                      "opened; reset_time 5 s)")
        self.assertEqual(result.details["opened"], 2)

    def test_cut_is_a_failure(self):
        rows = self.failures(0, 1, status=499) + self.failures(2) + [self.call(3.5)]
        self.assertFalse(one(self.check(), rows).passed)

    def test_in_flight_calls(self):
        """Calls that started before the circuit opened are no violation."""
        rows = self.failures(0, 1, 2) + [self.call(1.5, took=3.0), self.call(2.05)]
        self.assertTrue(one(self.check(), rows).passed)

    def test_success_resets_the_count(self):
        rows = self.failures(0, 1) + [self.call(2)] + self.failures(3, 4) + [self.call(5)]
        result = one(self.check(), rows)
        self.assertFalse(result.passed)
        self.assertEqual(result.seen,
                         "not exercised: at most 2 consecutive failures, closed_attempts 3")

    def test_edges_apart(self):
        """Each source label and destination has its own breaker."""
        other = {"src": "productpage:v2", "dst": "reviews:v1"}
        rows = self.failures(0, 1) + [rec(at=2, status=503, **other), self.call(2.5)]
        self.assertEqual(one(self.check(), rows).details["opened"], 0)


class BulkheadTests(SynchronousTestCase):
    def check(self, rate):
        return make_check("bulkhead", "productpage", None,
                          dependencies=(Service("details"), Service("reviews"),
                                        Service("ratings")),
                          slow_dest=Service("reviews"), rate=rate)

    def rows(self):
        out = []
        for i in range(10):
            out.append(rec(src="productpage:v1", dst="details:v1", at=i, took=0.05))
            out.append(rec(src="productpage:v1", dst="reviews:v2", at=i, took=9.0))
        for i in range(4):
            out.append(rec(src="productpage:v1", dst="ratings:v1", at=i * 2, took=0.05))
        out.append(rec(src="gateway:", dst="details:v1", at=50, took=0.05))
        return out

    def test_pass(self):
        """The window runs from the first start to the last end (0 to 18 s)."""
        result = one(self.check(0.2), self.rows())
        self.assertTrue(result.passed)
        self.assertEqual(result.seen,
                         "details 0.556/s, ratings 0.222/s over 18 s (each at least 0.2/s)")
        self.assertEqual(result.details["calls"], {"details": 10, "ratings": 4})

    def test_fail(self):
        result = one(self.check(0.5), self.rows())
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "details 0.556/s, ratings 0.222/s over 18 s "
                                      "(below 0.5/s: ratings)")

    def test_no_records(self):
        result = one(self.check(1), [rec(src="gateway:", dst="productpage:v1")])
        self.assertEqual(result.seen, "no records from productpage")

    def test_no_window(self):
        result = one(self.check(1), [rec(src="productpage:v1", dst="details:v1", took=0)])
        self.assertFalse(result.passed)
        self.assertEqual(result.seen,
                         "no test window: every record of productpage took 0 s at one instant")

    def test_slow_dest_by_name(self):
        """A dependency named as slow_dest without tags is the slow one."""
        check = make_check("bulkhead", "productpage", None,
                           dependencies=(Service("reviews"),),
                           slow_dest=Service("reviews", ("v2",)), rate=1.0)
        result = one(check, self.rows())
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "no dependency other than reviews:v2 to check")


class NoProxyErrorsTests(SynchronousTestCase):
    def test_pass(self):
        """Upstream errors, aborts and cut connections are not the proxy's errors."""
        rows = [rec(), rec(status=503, upstream_status="503"),
                rec(status=503, upstream_status="", actions="abort,trace"),
                rec(status=-1, upstream_status="", actions="abort"),
                rec(status=499, upstream_status="")]
        result = one(make_check("no_proxy_errors"), rows)
        self.assertTrue(result.passed)
        self.assertEqual(result.seen, "none of 5 records was an error of the proxy itself")

    def test_fail(self):
        rows = [rec(), rec(status=503, upstream_status="", request_id="x"),
                rec(status=503, upstream_status="-", request_id="y"),
                rec(status=404, upstream_status="", request_id="z"),
                rec(retry_budget_exhausted=True, request_id="w")]
        result = one(make_check("no_proxy_errors"), rows)
        self.assertFalse(result.passed)
        self.assertEqual(result.seen, "3 of 5 records were an error of the proxy itself "
                                      "(2 x 503, 1 x 404); 1 request exhausted the retry budget")
        self.assertEqual(result.details["examples"], ["x", "y", "z", "w"])

    def test_budget_only(self):
        result = one(make_check("no_proxy_errors"), [rec(), rec(retry_budget_exhausted=True)])
        self.assertEqual(result.seen, "1 of 2 records exhausted the retry budget")

    def test_edge(self):
        check = make_check("no_proxy_errors", "productpage", "reviews")
        rows = [rec(status=503, upstream_status=""),
                rec(src="productpage:v1", dst="reviews:v1")]
        self.assertTrue(one(check, rows).passed)
        self.assertEqual(one(check, []).seen, "no records from productpage to reviews")
        self.assertEqual(one(make_check("no_proxy_errors"), []).seen, "no records")


class RunChecksTests(SynchronousTestCase):
    def test_one_pass_many_checks(self):
        """Every check is fed from one iteration; results come in the order of the checks."""
        checks = [make_check("http_status", "gateway", "productpage", status=frozenset({200})),
                  make_check("no_proxy_errors"),
                  make_check("bounded_response_time", "productpage", "reviews",
                             max_latency=1.0)]
        rows = Once([rec(), rec(status=503, upstream_status=""),
                     rec(src="productpage:v1", dst="reviews:v1", took=2.0)])
        results = run_checks(checks, rows)
        self.assertEqual((rows.iterations, rows.given), (1, 3))
        self.assertEqual([r.check for r in results], checks)
        self.assertEqual([r.passed for r in results], [False, False, False])
        self.assertEqual([r.details["records"] for r in results], [2, 3, 1])

    def test_generator(self):
        rows = (rec(request_id=str(i)) for i in range(5))
        (result,) = run_checks([make_check("no_proxy_errors")], rows)
        self.assertEqual(result.details["records"], 5)
        self.assertEqual(list(rows), [])

    def test_tags_narrow(self):
        """reviews:v2 sees only the records of backends carrying v2, exactly per tag."""
        check = make_check("bounded_response_time", "productpage:v1", "reviews:v2",
                           max_latency=1.0)
        rows = [rec(src="productpage:v1", dst="reviews:v2", took=0.5),
                rec(src="productpage:v1", dst="reviews:v20", took=5.0),
                rec(src="productpage:v1", dst="reviews:v1", took=5.0),
                rec(src="productpage:v2", dst="reviews:v2", took=5.0),
                rec(src="productpage:v1", dst="reviews:beta,v2", took=0.7)]
        result = one(check, rows)
        self.assertTrue(result.passed)
        self.assertEqual(result.details["records"], 2)

    def test_unreadable(self):
        """Records without readable labels are counted in every result; nothing raises."""
        rows = [42, "text", None, ["src"], {"dst": "productpage:v1"},
                {"src": ["gateway"], "dst": "productpage:v1"},
                {"src": {}, "dst": "x"}, rec()]
        results = run_checks([make_check("no_proxy_errors"),
                              make_check("http_status", "reviews", "ratings",
                                         status=frozenset({200}))], rows)
        self.assertEqual([r.details["unreadable_records"] for r in results], [7, 7])
        self.assertTrue(results[0].passed)
        self.assertEqual(results[1].seen, "no records from reviews to ratings "
                                          "(7 records unreadable)")

    def test_huge_numbers(self):
        """A number beyond floats makes its record unreadable; nothing raises."""
        huge = rec(src="productpage:v1", dst="reviews:v1", at=0)
        huge["timestamp_in_ms"] = 10 ** 400
        results = run_checks(bench_checks(), [huge])
        self.assertEqual(results[4].details["unreadable_records"], 1)
        self.assertEqual(results[4].details["records"], 0)

    def test_every_kind_survives_junk_fields(self):
        """Every check counts a record with junk in every field as malformed."""
        junk = {key: [] for key in rec()}
        junk.update(src="gateway:", dst="productpage:v1")
        checks = [make_check(c.name, "gateway", "productpage", **c.args)
                  for c in bench_checks()]
        for result in run_checks(checks, [junk]):
            self.assertFalse(result.passed)
            self.assertEqual(result.details["malformed"], 1, result.check.name)

    def test_router(self):
        """A record is offered only to the checks of its edge."""
        checks = [make_check("no_proxy_errors"),
                  make_check("no_proxy_errors", "gateway"),
                  make_check("no_proxy_errors", None, "reviews"),
                  make_check("no_proxy_errors", "reviews", "ratings")]
        router = _Router([_KINDS[c.name](c) for c in checks])
        self.assertEqual([o.__self__.check for o in router.route("gateway:", "productpage")],
                         [checks[1], checks[0]])
        self.assertEqual([o.__self__.check for o in router.route("productpage:v1",
                                                                  "reviews:v2")],
                         [checks[0], checks[2]])
        self.assertEqual(len(router.route("reviews:v3", "ratings:v1")), 2)

    def test_route_cache_full(self):
        """Past ROUTE_CACHE label pairs, records are routed one by one, with the same verdicts."""
        self.patch(checks_module, "ROUTE_CACHE", 1)
        small = [r.to_json() for r in run_checks(bench_checks(), records(500))]
        self.patch(checks_module, "ROUTE_CACHE", 10000)
        self.assertEqual(small, [r.to_json() for r in run_checks(bench_checks(), records(500))])

    def test_describe_edge(self):
        self.assertEqual(describe_edge(Service("a"), Service("b", ("v1",))), "from a to b:v1")
        self.assertEqual(describe_edge(None, Service("b")), "to b")
        self.assertEqual(describe_edge(None, None), "")

    def test_bench_records(self):
        """bench/gremlin's generator, small, through every kind of check."""
        self.assertEqual(list(records(1000)), list(records(1000)))
        results = run_checks(bench_checks(), records(1000))
        self.assertEqual([r.check.name for r in results],
                         ["bounded_response_time", "http_status", "at_most_requests",
                          "bounded_retries", "circuit_breaker", "bulkhead", "no_proxy_errors"])
        for result in results:
            self.assertGreater(result.details["records"], 0, result.seen)
            self.assertEqual(result.details["malformed"], 0, result.seen)
        self.assertEqual(results[-1].details["records"], 1000)
        self.assertTrue(results[2].details["over"] > 0)  # the app retries some calls
