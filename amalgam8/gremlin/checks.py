# -*- test-case-name: tests.test_gremlin_checks -*-
"""
The checks of a recipe, run in one pass over trace records.

L{run_checks} reads an iterable of access-log records once (it may be a generator over
millions of them, in any order). Each record is offered only to the checks whose edge it
concerns: the checks are indexed by source name, and the answer for each C{(src, dst)}
label pair is remembered, so a record costs one dictionary lookup plus the work of the
checks it concerns. Each check keeps its own state (counts, or per request id, or per
edge the times it needs) and gives its verdict at the end as a L{Result}: C{seen} is one
sentence for people, C{details} the figures behind it.

Records that cannot be read (not a JSON object, C{src}/C{dst} missing or not strings, a
number too large for a float) are counted as C{unreadable_records} in every result; a
record a check can route but that lacks a field that check needs (or has it with the wrong
type) is counted in that check's C{malformed} and said in its sentence. Nothing here
raises on bad records.
"""

import heapq
from array import array

from amalgam8.gremlin.model import Result

__all__ = ["run_checks", "describe_edge"]

#: How many offending request ids a result lists.
EXAMPLES = 5

#: The label pairs remembered; beyond that (a flood of distinct labels) each is routed anew.
ROUTE_CACHE = 10000

_NUMBER = (int, float)


def run_checks(checks, records):
    """
    Run C{checks} (L{amalgam8.gremlin.model.Check}s) over C{records} (an iterable of record
    dicts, read once) and return their L{Result}s, in the order of C{checks}.
    """
    states = [_KINDS[check.name](check) for check in checks]
    router = _Router(states)
    cache = router.cache
    for record in records:
        try:
            targets = cache[record["src"], record["dst"]]
        except (KeyError, TypeError):  # a new label pair, or not a readable record
            targets = router.miss(record)
        try:
            for offer in targets:
                offer(record)
        except ArithmeticError:  # a number beyond floats (10**400): the checks cannot read it
            router.unreadable += 1
    return [state.result(router.unreadable) for state in states]


class _Router:
    """
    Which checks a record with given C{src} and C{dst} labels concerns: C{cache} maps the
    label pairs seen to the offer functions of their checks; L{miss} routes the others,
    and counts the records that cannot be routed (C{unreadable}).
    """

    def __init__(self, states):
        self.cache = {}
        self.unreadable = 0
        self._by_source = {}
        self._any_source = []
        for state in states:
            source = state.check.source
            if source is None:
                self._any_source.append(state)
            else:
                self._by_source.setdefault(source.name, []).append(state)

    def miss(self, record):
        src = record.get("src") if isinstance(record, dict) else None
        dst = record.get("dst") if isinstance(record, dict) else None
        if type(src) is not str or type(dst) is not str:
            self.unreadable += 1
            return ()
        targets = self.route(src, dst)
        if len(self.cache) < ROUTE_CACHE:
            self.cache[src, dst] = targets
        return targets

    def route(self, src, dst):
        name = src.partition(":")[0]
        return tuple(
            state.offer_for(src, dst)
            for state in self._by_source.get(name, []) + self._any_source
            if (state.check.source is None or state.check.source.matches(src))
            and (state.check.dest is None or state.check.dest.matches(dst)))


def describe_edge(source, dest):
    """C{"from gateway to productpage"}, C{"from productpage"}, C{"to reviews"} or C{""}."""
    parts = []
    if source is not None:
        parts.append("from {}".format(source))
    if dest is not None:
        parts.append("to {}".format(dest))
    return " ".join(parts)


# -- wording --------------------------------------------------------------------------------


def _secs(value):
    """Seconds for people: C{7}, C{9.8}, C{0.012}, C{123}."""
    if abs(value) >= 100:
        return "{:.0f}".format(value)
    return "{:.3g}".format(value)


def _count(number, noun, plural=None):
    return "{} {}".format(number, noun if number == 1 else (plural or noun + "s"))


def _request_id(record):
    value = record.get("request_id")
    return value if type(value) is str and value else None


class _Check:
    """
    One check's state while the records stream by: C{offer(record)} for each record of its
    edge, then C{result(unreadable)}; subclasses give C{verdict()} -> (passed, seen,
    details), called only when some record was counted.
    """

    def __init__(self, check):
        self.check = check
        self.args = check.args
        self.records = 0
        self.malformed = 0
        self.examples = []

    def offer_for(self, src, dst):
        """The function to offer the records of these labels to (C{offer} by default)."""
        return self.offer

    def example(self, request_id):
        if (type(request_id) is str and len(self.examples) < EXAMPLES
                and request_id not in self.examples):
            self.examples.append(request_id)

    def no_records(self):
        edge = describe_edge(self.check.source, self.check.dest)
        return "no records" + (" " + edge if edge else "")

    def result(self, unreadable):
        if self.records:
            passed, seen, details = self.verdict()
        else:
            passed, seen, details = False, self.no_records(), {}
        notes = []
        if self.malformed:
            notes.append("{} skipped".format(_count(self.malformed, "malformed record")))
        if unreadable and not self.records:
            notes.append("{} unreadable".format(_count(unreadable, "record")))
        if notes:
            seen = "{} ({})".format(seen, ", ".join(notes))
        details = dict(details, records=self.records, malformed=self.malformed,
                       unreadable_records=unreadable)
        if self.examples:
            details["examples"] = list(self.examples)
        return Result(self.check, passed, seen, details)


class _BoundedResponseTime(_Check):
    def __init__(self, check):
        super().__init__(check)
        self.limit = self.args["max_latency"]
        self.over = 0
        self.max = 0.0

    def offer(self, record):
        took = record.get("request_time")
        if type(took) not in _NUMBER:
            self.malformed += 1
            return
        self.records += 1
        if took > self.max:
            self.max = took
        if took > self.limit:
            self.over += 1
            self.example(_request_id(record))

    def verdict(self):
        figures = {"over": self.over, "max": self.max, "max_latency": self.limit}
        if self.over:
            return False, "{} of {} took longer than {} s (max {} s)".format(
                self.over, _count(self.records, "request"), _secs(self.limit),
                _secs(self.max)), figures
        return True, "all {} took at most {} s (max {} s)".format(
            _count(self.records, "request"), _secs(self.limit), _secs(self.max)), figures


class _HttpStatus(_Check):
    def __init__(self, check):
        super().__init__(check)
        self.allowed = frozenset(self.args["status"])
        self.counts = {}

    def offer(self, record):
        status = record.get("status")
        if type(status) is not int:
            self.malformed += 1
            return
        self.records += 1
        self.counts[status] = self.counts.get(status, 0) + 1
        if status not in self.allowed:
            self.example(_request_id(record))

    def verdict(self):
        wrong = {s: n for s, n in self.counts.items() if s not in self.allowed}
        figures = {"statuses": {str(s): n for s, n in sorted(self.counts.items())},
                   "expected": sorted(self.allowed)}
        if not wrong:
            seen = ", ".join("{} x {}".format(n, s) for s, n in sorted(
                self.counts.items(), key=lambda item: (-item[1], item[0])))
            return True, "all {} answered as expected ({})".format(
                _count(self.records, "request"), seen), figures
        parts = []
        for status, number in sorted(wrong.items(), key=lambda item: (-item[1], item[0])):
            if status >= 0 and status != 499:
                parts.append((number, "answered {}".format(status)))
        if 499 in wrong:
            parts.append((wrong[499], "were cut by the caller (499)"))
        resets = sum(n for s, n in wrong.items() if s < 0)
        if resets:
            parts.append((resets, "reset"))
        first, rest = parts[0], parts[1:]
        seen = "{} of {} {}".format(first[0], _count(self.records, "request"), first[1])
        seen += "".join(", {} {}".format(n, what) for n, what in rest)
        figures.update(wrong=sum(wrong.values()), cut=wrong.get(499, 0), reset=resets)
        return False, seen, figures


def _group(record, with_path):
    """A record's group: its request id (with C{with_path}: and its path); L{None} if none."""
    key = record.get("request_id")
    if type(key) is not str or not key:
        return None
    return key if with_path is None else with_path(key, record)


class _PerRequest(_Check):
    """A check that groups its edge's records by request id (and path when C{by_uri})."""

    def __init__(self, check):
        super().__init__(check)
        self.by_uri = self.args.get("by_uri", False)
        self.groups = {}

    def with_path(self, request_id, record):
        """The group of a record with C{by_uri}: (request id, path), or L{None}."""
        path = record.get("path")
        return (request_id, path) if type(path) is str else None

    def units(self, number):
        if self.by_uri:
            return _count(number, "request id and path", "request id and path pairs")
        return _count(number, "request id")

    def name(self, key):
        return "{} {}".format(*key) if self.by_uri else key


class _AtMostRequests(_PerRequest):
    def offer_for(self, src, dst):
        groups, count = self.groups, self.groups.get
        with_path = self.with_path if self.by_uri else None

        def offer(record):
            key = _group(record, with_path)
            if key is None:
                self.malformed += 1
                return
            self.records += 1
            groups[key] = count(key, 0) + 1
        return offer

    def verdict(self):
        limit = self.args["num_requests"]
        most = max(self.groups.values())
        over = [key for key, number in self.groups.items() if number > limit]
        for key in over[:EXAMPLES]:
            self.example(self.name(key))
        figures = {"groups": len(self.groups), "over": len(over), "max": most,
                   "num_requests": limit}
        if over:
            return False, "{} of {} made more than {} (max {})".format(
                len(over), self.units(len(self.groups)), _count(limit, "call"), most), figures
        return True, "each of {} made at most {} (max {})".format(
            self.units(len(self.groups)), _count(limit, "call"), most), figures


class _BoundedRetries(_PerRequest):
    """
    Per group: C{groups} its attempts, C{retries} the proxy's retries inside them (when
    any); with C{wait_time}, C{times} the (start, end) of its attempts, as an array of
    floats when there are several (no object per attempt for the garbage collector to
    walk).
    """

    def __init__(self, check):
        super().__init__(check)
        self.wait = self.args.get("wait_time")
        self.retries = {}
        self.times = {}

    def offer_for(self, src, dst):
        groups, count, spans, extra = self.groups, self.groups.get, self.times, self.retries
        with_path = self.with_path if self.by_uri else None
        timed = self.wait is not None

        def offer(record):
            key = _group(record, with_path)
            retries = record.get("retries", 0)
            if key is None or type(retries) is not int:
                self.malformed += 1
                return
            if timed:
                start, took = record.get("timestamp_in_ms"), record.get("request_time")
                if type(start) not in _NUMBER or type(took) not in _NUMBER:
                    self.malformed += 1
                    return
                start = start / 1000.0
                times = spans.get(key)
                if times is None:
                    # The common case, one attempt: a complex number (start, end), one
                    # small object the garbage collector never walks.
                    spans[key] = complex(start, start + took)
                elif type(times) is complex:
                    spans[key] = array("d", (times.real, times.imag, start, start + took))
                else:
                    times.append(start)
                    times.append(start + took)
            self.records += 1
            groups[key] = count(key, 0) + 1
            if retries:
                extra[key] = extra.get(key, 0) + retries
        return offer

    def verdict(self):
        limit = self.args["retries"]
        extra = self.retries.get
        most, retried, over = 0, 0, []
        for key, attempts in self.groups.items():
            count = attempts - 1 + extra(key, 0)
            if count:
                retried += 1
                if count > most:
                    most = count
                if count > limit:
                    over.append(key)
        for key in over:
            self.example(self.name(key))
        figures = {"groups": len(self.groups), "retried": retried, "over": len(over),
                   "max": most, "retries": limit}
        groups = self.units(len(self.groups))
        if over:
            seen = "{} of {} retried more than {} (max {})".format(
                len(over), groups, _count(limit, "time"), most)
        else:
            seen = "{} of {} retried, each at most {} (max {})".format(
                retried, groups, _count(limit, "time"), most)
        passed = not over
        if self.wait is not None:
            early, gaps, least = self.spacing()
            least_seen = "none" if least is None else "{} s".format(_secs(least))
            figures.update(wait_time=self.wait, gaps=gaps, early=early, min_gap=least)
            if early:
                passed = False
                seen += "; {} of {} came sooner than {} s after the attempt before (min {})".format(
                    early, _count(gaps, "retry", "retries"), _secs(self.wait), least_seen)
            else:
                seen += "; retries spaced at least {} s (min {})".format(
                    _secs(self.wait), least_seen)
        return passed, seen, figures

    def spacing(self):
        """(gaps below wait_time - errdelta, gaps, the smallest gap or L{None})."""
        floor = self.wait - self.args["errdelta"]
        early, gaps, least = 0, 0, None
        for key, times in self.times.items():
            if type(times) is complex:
                continue
            pairs = sorted(zip(times[::2], times[1::2]))
            bad = False
            for (_, end), (start, _) in zip(pairs, pairs[1:]):
                gap = start - end
                gaps += 1
                if least is None or gap < least:
                    least = gap
                if gap < floor:
                    early += 1
                    bad = True
            if bad:
                self.example(self.name(key))
        return early, gaps, least


_CLOSED, _OPEN, _HALF_OPEN = "closed", "open", "half-open"


class _CircuitBreaker(_Check):
    """
    The calls of each edge (source label, destination name): their starts, ends and
    whether they failed, replayed in time order at the end.
    """

    def __init__(self, check):
        super().__init__(check)
        self.edges = {}

    def offer_for(self, src, dst):
        edge = (src, dst.partition(":")[0])
        calls = self.edges.get(edge)
        if calls is None:
            calls = self.edges[edge] = (array("d"), array("d"), bytearray(), [])
        starts, ends, failures, request_ids = (c.append for c in calls)

        def offer(record):
            start, took = record.get("timestamp_in_ms"), record.get("request_time")
            status = record.get("status")
            if type(start) not in _NUMBER or type(took) not in _NUMBER or type(status) is not int:
                self.malformed += 1
                return
            start = start / 1000.0
            self.records += 1
            starts(start)
            ends(start + took)
            failures(status >= 500 or status < 0 or status == 499)
            request_ids(record.get("request_id"))
        return offer

    def verdict(self):
        total = _Replay(self.args)
        for calls in self.edges.values():
            total.replay(*calls)
        for request_id in total.examples:
            self.example(request_id)
        figures = {"opened": total.opened, "while_open": total.while_open,
                   "first_after_open": total.first_after_open,
                   "halfopen_excess": total.halfopen_excess, "probes": total.probes,
                   "max_consecutive_failures": total.most_failures,
                   "closed_attempts": self.args["closed_attempts"],
                   "reset_time": self.args["reset_time"]}
        if not total.opened:
            return False, "not exercised: at most {}, closed_attempts {}".format(
                _count(total.most_failures, "consecutive failure"),
                self.args["closed_attempts"]), figures
        problems = []
        if total.while_open:
            problems.append("{} while the circuit was open (first {} s after it opened; "
                            "reset_time {} s)".format(
                                _count(total.while_open, "call"),
                                _secs(total.first_after_open),
                                _secs(self.args["reset_time"])))
        if total.halfopen_excess:
            problems.append("{} beyond halfopen_attempts {} while half-open".format(
                _count(total.halfopen_excess, "call"), self.args["halfopen_attempts"]))
        if problems:
            return False, "; ".join(problems), figures
        return True, "the circuit opened {}, no call while open, {} after reset_time {} s".format(
            _count(total.opened, "time"), _count(total.probes, "probe"),
            _secs(self.args["reset_time"])), figures


class _Replay:
    """Closed -> open -> half-open over the calls of one edge after another."""

    def __init__(self, args):
        self.threshold = args["closed_attempts"]
        self.reset = args["reset_time"] - args["errdelta"]
        self.halfopen = args["halfopen_attempts"]
        self.opened = 0
        self.while_open = 0
        self.first_after_open = None
        self.halfopen_excess = 0
        self.probes = 0
        self.most_failures = 0
        self.examples = []

    def example(self, request_id):
        if len(self.examples) < EXAMPLES:
            self.examples.append(request_id)

    def replay(self, starts, ends, failed, request_ids):
        order = sorted(range(len(starts)), key=starts.__getitem__)
        pending = []  # (end, call) of the calls under way
        state, failures, opened_at, probes = _CLOSED, 0, None, set()
        threshold = self.threshold

        def outcome(call, at):
            nonlocal state, failures, opened_at
            if state == _OPEN or (state == _HALF_OPEN and call not in probes):
                return
            if failed[call]:
                failures = failures + 1 if state == _CLOSED else threshold
                self.most_failures = max(self.most_failures, failures)
                if failures >= threshold:
                    state, opened_at = _OPEN, at
                    self.opened += 1
            else:
                failures = 0
                state = _CLOSED
            probes.clear()

        for call in order:
            start = starts[call]
            while pending and pending[0][0] <= start:
                at, done = heapq.heappop(pending)
                outcome(done, at)
            if state == _OPEN:
                if start < opened_at + self.reset:
                    self.while_open += 1
                    if self.first_after_open is None:
                        self.first_after_open = start - opened_at
                    self.example(request_ids[call])
                else:
                    state = _HALF_OPEN
            if state == _HALF_OPEN:
                if len(probes) >= self.halfopen:
                    self.halfopen_excess += 1
                    self.example(request_ids[call])
                else:
                    probes.add(call)
                    self.probes += 1
            heapq.heappush(pending, (ends[call], call))
        while pending:
            at, done = heapq.heappop(pending)
            outcome(done, at)


class _Bulkhead(_Check):
    """The check's source: its window (first start, last end) and its calls per dependency."""

    def __init__(self, check):
        super().__init__(check)
        slow = self.args["slow_dest"]
        # A dependency named as the slow one without tags is the slow one.
        self.dependencies = [d for d in self.args["dependencies"]
                             if d != slow and not (d.name == slow.name and not d.tags)]
        self.calls = [0] * len(self.dependencies)
        self.first, self.last = float("inf"), float("-inf")

    def offer_for(self, src, dst):
        hits = tuple(i for i, d in enumerate(self.dependencies) if d.matches(dst))
        calls = self.calls

        def offer(record):
            start, took = record.get("timestamp_in_ms"), record.get("request_time")
            if type(start) not in _NUMBER or type(took) not in _NUMBER:
                self.malformed += 1
                return
            start = start / 1000.0
            self.records += 1
            if start < self.first:
                self.first = start
            if start + took > self.last:
                self.last = start + took
            for i in hits:
                calls[i] += 1
        return offer

    def verdict(self):
        window = self.last - self.first
        rate = self.args["rate"]
        if window <= 0:
            return False, "no test window: every record of {} took 0 s at one instant".format(
                self.check.source), {"window": window}
        rates = {}
        for dependency, calls in zip(self.dependencies, self.calls):
            rates[str(dependency)] = calls / window
        slow = [name for name, seen in rates.items() if seen < rate]
        figures = {"window": window, "rates": rates, "rate": rate,
                   "calls": {str(d): n for d, n in zip(self.dependencies, self.calls)}}
        listed = ", ".join("{} {}/s".format(name, _secs(seen)) for name, seen in rates.items())
        if not rates:
            return False, "no dependency other than {} to check".format(
                self.args["slow_dest"]), figures
        seen = "{} over {} s".format(listed, _secs(window))
        if slow:
            return False, "{} (below {}/s: {})".format(seen, _secs(rate), ", ".join(slow)), figures
        return True, "{} (each at least {}/s)".format(seen, _secs(rate)), figures


class _NoProxyErrors(_Check):
    def __init__(self, check):
        super().__init__(check)
        self.errors = {}
        self.exhausted = 0

    def offer(self, record):
        status = record.get("status")
        if type(status) is not int:
            self.malformed += 1
            return
        exhausted = record.get("retry_budget_exhausted") is True
        if status < 400 or status == 499:
            self.records += 1
            if exhausted:
                self.exhausted += 1
                self.example(_request_id(record))
            return
        actions = record.get("actions", "")
        upstream = record.get("upstream_status", "")
        if type(actions) is not str or type(upstream) is not str:
            self.malformed += 1
            return
        self.records += 1
        if exhausted:
            self.exhausted += 1
        if "abort" not in actions and not upstream.replace("-", "").replace(",", "").strip():
            self.errors[status] = self.errors.get(status, 0) + 1
        elif not exhausted:
            return
        self.example(_request_id(record))

    def verdict(self):
        errors = sum(self.errors.values())
        figures = {"errors": {str(s): n for s, n in sorted(self.errors.items())},
                   "retry_budget_exhausted": self.exhausted}
        records = _count(self.records, "record")
        if not errors and not self.exhausted:
            return True, "none of {} was an error of the proxy itself".format(records), figures
        parts = []
        if errors:
            parts.append("{} of {} {} an error of the proxy itself ({})".format(
                errors, records, "was" if errors == 1 else "were",
                ", ".join("{} x {}".format(n, s) for s, n in sorted(
                    self.errors.items(), key=lambda item: (-item[1], item[0])))))
        if self.exhausted:
            parts.append("{} exhausted the retry budget".format(
                _count(self.exhausted, "request") if errors else "{} of {}".format(
                    self.exhausted, records)))
        return False, "; ".join(parts), figures


_KINDS = {
    "bounded_response_time": _BoundedResponseTime,
    "http_status": _HttpStatus,
    "at_most_requests": _AtMostRequests,
    "bounded_retries": _BoundedRetries,
    "circuit_breaker": _CircuitBreaker,
    "bulkhead": _Bulkhead,
    "no_proxy_errors": _NoProxyErrors,
}
