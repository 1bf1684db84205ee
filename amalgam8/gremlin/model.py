# -*- test-case-name: tests.test_gremlin_model -*-
"""
The values the parts of Gremlin share: a service as a recipe names it (C{svc[:tags]}), a
call-graph edge, a scenario entry, a check entry, a check's result, and the tables that
say which parameters each scenario and check takes (names as Amalgam8's recipe files write
them) with their kinds and defaults.
"""

import attrs

__all__ = ["Service", "Edge", "Gremlin", "Check", "Result", "Recipe", "SCENARIOS", "CHECKS",
           "LOG_KEY", "REQUIRED", "CHECK_ENDPOINTS"]

#: The trace key every recipe rule logs: C{gremlin_recipe_id=<id>}.
LOG_KEY = "gremlin_recipe_id"

#: A parameter without a default.
REQUIRED = object()


@attrs.frozen
class Service:
    """
    A service as recipes name it: C{"reviews"} (any version) or C{"reviews:v2"} (only the
    instances carrying every one of the tags; C{"a:v1,beta"} for several).
    """

    name: str
    tags: tuple = ()

    @classmethod
    def parse(cls, text):
        """
        @raise ValueError: not a non-empty C{name[:tag,...]} string.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("must be a service name such as 'reviews' or 'reviews:v2'")
        name, _, tags = text.strip().partition(":")
        name = name.strip()
        if not name:
            raise ValueError("must be a service name such as 'reviews' or 'reviews:v2'")
        return cls(name, tuple(t.strip() for t in tags.split(",") if t.strip()))

    @classmethod
    def from_label(cls, label):
        """The source or destination of an access-log record (C{"name:tag1,tag2"})."""
        if not isinstance(label, str):
            return cls("")
        name, _, tags = label.partition(":")
        return cls(name, tuple(t for t in tags.split(",") if t))

    def matches(self, label):
        """Whether a record's C{src}/C{dst} label is this service (with these tags)."""
        name, _, tags = label.partition(":") if isinstance(label, str) else ("", "", "")
        if name != self.name:
            return False
        if not self.tags:
            return True
        have = tags.split(",")
        return all(t in have for t in self.tags)

    def __str__(self):
        return self.name + (":" + ",".join(self.tags) if self.tags else "")


@attrs.frozen
class Edge:
    """A call from C{source} to C{dest} (both L{Service})."""

    source: Service
    dest: Service

    def __str__(self):
        return "{} -> {}".format(self.source, self.dest)


@attrs.frozen
class Gremlin:
    """
    One entry of a scenarios file, validated: C{params} holds every parameter of the
    scenario (the defaults of L{SCENARIOS} filled in, durations in seconds).
    C{source}/C{dest} are L{None} when the entry leaves them out (it then applies to every
    matching edge of the topology).
    """

    scenario: str
    source: object
    dest: object
    params: dict
    index: int


@attrs.frozen
class Check:
    """
    One entry of a checks file, validated: C{args} holds every parameter of the check (the
    defaults of L{CHECKS} filled in, durations in seconds, C{status} a frozenset of ints,
    C{dependencies} a tuple of L{Service}, C{slow_dest} a L{Service}).
    """

    name: str
    source: object
    dest: object
    args: dict
    index: int

    def describe(self):
        return "{} {} -> {}".format(self.name, self.source or "*", self.dest or "*")


@attrs.frozen
class Result:
    """
    The verdict of one check.

    @ivar seen: one sentence for people saying what the records showed, e.g.
        C{"3 of 40 requests took longer than 7 s (max 9.8 s)"}.
    @ivar details: JSON-able figures behind it (counts, maxima, offending request ids).
    """

    check: Check
    passed: bool
    seen: str
    details: dict = attrs.Factory(dict)

    def to_json(self):
        return {
            "name": self.check.name,
            "source": str(self.check.source) if self.check.source else None,
            "dest": str(self.check.dest) if self.check.dest else None,
            "passed": self.passed,
            "seen": self.seen,
            "details": self.details,
        }


@attrs.frozen
class Recipe:
    """A topology, its scenarios and its checks, validated."""

    services: tuple
    edges: tuple
    gremlins: tuple
    checks: tuple


# Kinds of parameter values: "duration" (seconds; a number or "1s500ms"), "probability"
# (0 < p <= 1), "code" (an abort code, -5..599), "int" (>= 0), "count" (>= 1),
# "rate" (> 0, per second), "status" (an HTTP status or a list of them), "services" (a
# list of service names), "service" (one), "distribution" (uniform|exponential|normal),
# "bool".

#: scenario -> {parameter: (kind, default or REQUIRED)}.
SCENARIOS = {
    "delay_requests": {"delaytime": ("duration", 1.0), "delayprobability": ("probability", 1.0),
                       "distribution": ("distribution", None), "stddev": ("duration", None)},
    "delay_responses": {"delaytime": ("duration", 1.0),
                        "delayprobability": ("probability", 1.0),
                        "distribution": ("distribution", None), "stddev": ("duration", None)},
    "abort_requests": {"errorcode": ("code", 503), "abortprobability": ("probability", 1.0)},
    "abort_responses": {"errorcode": ("code", 503), "abortprobability": ("probability", 1.0)},
    "partition_services": {"abortprobability": ("probability", 1.0)},
    "crash_service": {"abortprobability": ("probability", 1.0)},
    "overload_service": {"delaytime": ("duration", 10.0),
                         "delayprobability": ("probability", 0.5),
                         "distribution": ("distribution", None), "stddev": ("duration", None),
                         "errorcode": ("code", 503), "abortprobability": ("probability", 0.5)},
}

#: check -> {parameter: (kind, default or REQUIRED)}.
CHECKS = {
    "bounded_response_time": {"max_latency": ("duration", REQUIRED)},
    "http_status": {"status": ("status", REQUIRED)},
    "at_most_requests": {"num_requests": ("int", REQUIRED), "by_uri": ("bool", False)},
    "bounded_retries": {"retries": ("int", REQUIRED), "wait_time": ("duration", None),
                        "errdelta": ("duration", 0.01), "by_uri": ("bool", False)},
    "circuit_breaker": {"closed_attempts": ("count", REQUIRED),
                        "reset_time": ("duration", REQUIRED),
                        "halfopen_attempts": ("count", 1),
                        "errdelta": ("duration", 0.01)},
    "bulkhead": {"dependencies": ("services", REQUIRED), "slow_dest": ("service", REQUIRED),
                 "rate": ("rate", REQUIRED)},
    "no_proxy_errors": {},
}

#: Which of source/dest a check needs ("source", "dest"); the others may be left out (then
#: every source, or every destination, is checked).
CHECK_ENDPOINTS = {
    "bounded_response_time": ("source", "dest"),
    "http_status": ("source", "dest"),
    "at_most_requests": ("source", "dest"),
    "bounded_retries": ("source", "dest"),
    "circuit_breaker": ("source", "dest"),
    "bulkhead": ("source",),
    "no_proxy_errors": (),
}
