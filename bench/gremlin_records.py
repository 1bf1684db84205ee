# -*- test-case-name: tests.test_gremlin_checks -*-
"""
Synthetic access-log records of the bookinfo call graph under a recipe, for bench/gremlin
and its test: L{records} (a generator, deterministic for a seed) and L{bench_checks} (one
check of every kind over them).

Each test request (request id C{gremlin-bench-<n>}, 200 a second) makes the calls
gateway -> productpage:v1 -> details:v1 and reviews:v1|v2|v3 (in turn), and reviews v2/v3
-> ratings:v1. The mix: about 1 in 20 reviews calls fails once and is retried by the app
0.1 s later, 1 in 25 carries a proxy retry, 1 in 8 ratings calls from v2 is delayed 7 s,
some answers are 503 from the proxy itself (no upstream), 499 (cut) or -1 (reset), and
every 2,000th request starts a burst of failing reviews calls (a circuit breaker's
business). A request's records are yielded callee first, the gateway's last, as the
proxies write them.
"""

import random

from amalgam8.gremlin.model import CHECKS, REQUIRED, Check, Service

__all__ = ["records", "bench_checks", "make_check", "RECIPE_ID"]

RECIPE_ID = "bench"
_REVIEWS = ("reviews:v1", "reviews:v2", "reviews:v3")
_TOOK = {took: "%.3f" % took for took in (0.002, 0.003, 0.004, 0.01, 0.013)}
_PATHS = {label: "/" + label.partition(":")[0] for label in _REVIEWS + (
    "productpage:v1", "details:v1", "ratings:v1")}


def _record(src, dst, status, start, took, request_id, actions="trace", retries=0,
            upstream="200"):
    return {
        "status": status, "timestamp_in_ms": int(start * 1000), "request_time": took,
        "upstream_response_time": _TOOK.get(took) or "%.3f" % took, "src": src, "dst": dst,
        "upstream_addr": "127.0.0.1:9080", "upstream_status": upstream, "method": "GET",
        "path": _PATHS[dst], "request_id": request_id, "actions": actions,
        "retries": retries, "gremlin_recipe_id": RECIPE_ID,
    }


def _request(n, start, roll, burst):
    """The records of test request C{n} (started at C{start}), callee first."""
    request_id = "gremlin-bench-%d" % n
    out = []
    at = start + 0.001
    out.append(_record("productpage:v1", "details:v1", 200, at, 0.004, request_id))
    reviews = _REVIEWS[n % 3]
    at += 0.005
    if burst or roll < 0.05:
        out.append(_record("productpage:v1", reviews, 503, at, 0.002, request_id,
                           upstream="503"))
        at += 0.102
    retries = 1 if roll > 0.96 else 0
    took = 0.01
    if reviews != "reviews:v1":
        delayed = reviews == "reviews:v2" and roll < 0.125
        rating_took = 7.0 + roll if delayed else 0.003
        out.append(_record(reviews, "ratings:v1", 200, at + 0.001, rating_took, request_id,
                           actions="delay,trace" if delayed else "trace"))
        took += rating_took
    status, upstream = 200, "200"
    if 0.5 < roll < 0.502:
        status, upstream = 503, "-"
    elif 0.6 < roll < 0.601:
        status = -1
    out.append(_record("productpage:v1", reviews, status, at, took, request_id,
                       retries=retries, upstream=upstream))
    gateway_status = 499 if 0.7 < roll < 0.701 else 200
    out.append(_record("gateway:", "productpage:v1", gateway_status, start,
                       at + took + 0.002 - start, request_id))
    return out


def records(count, seed=11, start=1700000000.0):
    """Exactly C{count} records (a generator), the same ones for the same C{seed}."""
    rolls = random.Random(seed)
    left = count
    n = 0
    while left > 0:
        batch = _request(n, start + n * 0.005, rolls.random(), n % 2000 < 8)
        if len(batch) > left:
            del batch[left:]
        yield from batch
        left -= len(batch)
        n += 1


def make_check(name, source=None, dest=None, **args):
    """A L{Check} as the recipe loader makes it: C{args} over the defaults of CHECKS."""
    full = {key: default for key, (_, default) in CHECKS[name].items()
            if default is not REQUIRED}
    full.update(args)
    return Check(name, Service.parse(source) if source else None,
                 Service.parse(dest) if dest else None, full, 0)


def bench_checks():
    """One check of every kind over the records of L{records} (in the order of CHECKS)."""
    return [
        make_check("bounded_response_time", "gateway", "productpage", max_latency=3.0),
        make_check("http_status", "gateway", "productpage", status=frozenset({200, 302})),
        make_check("at_most_requests", "productpage", "reviews", num_requests=1),
        make_check("bounded_retries", "productpage", "reviews", retries=1, wait_time=0.1),
        make_check("circuit_breaker", "productpage", "reviews", closed_attempts=5,
                   reset_time=1.0),
        make_check("bulkhead", "productpage", None,
                   dependencies=(Service("details"), Service("reviews")),
                   slow_dest=Service("reviews"), rate=50.0),
        make_check("no_proxy_errors", None, None),
    ]
