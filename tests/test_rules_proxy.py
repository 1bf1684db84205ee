"""
The rule format has one owner (issue 9): a rule L{amalgam8.rules} accepts is one the real
proxy compiles, and the other way round. The same rules go to both sides: every rule of
C{proxy_cases.json} and a few thousand generated ones (hypothesis) whose header patterns are
regex-ish strings full of the constructs where regular-expression dialects differ.

The proxy is the real nginx of L{tests.test_proxy}. A rule counts as compiled when the admin
endpoint took a state holding it (2xx) and does not list it in C{rejected}: today's proxy
refuses a whole state for one bad rule (400), a newer one skips the rule and names it. The
rules go in batches, those rules.py accepts apart from those it refuses (so that with today's
proxy most batches of the first kind are taken whole); a refused batch is pushed again one
rule at a time.
"""

import copy

from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from twisted.trial.unittest import TestCase

from amalgam8.rules import InvalidRule, validate_rule
from tests.test_proxy import CASES, _ProxyTestMixin

GENERATED = 3000
BATCH = 50

# Pieces of patterns: where PCRE, Python's re and JavaScript disagree, and plain text.
_PIECES = [
    "\\u0041", "\\u{41}", "\\x41", "\\x{41}", "\\x{100}", "\\x{110000}", "\\x", "\\o{101}",
    "\\101", "\\0", "\\N", "\\N{U+41}", "\\N{LATIN SMALL LETTER A}", "\\p{L}", "\\P{Lu}",
    "\\pL", "\\p{Greek}", "\\p{Nope}", "\\p", "\\X", "\\R", "\\h", "\\v", "\\K", "\\C",
    "\\G", "\\z", "\\Z", "\\A", "\\b", "\\B", "\\c", "\\cA", "\\L", "\\l", "\\U", "\\E",
    "\\Q", "\\Qa(b\\E", "\\", "\\\\", "\\1", "\\g1", "\\g{-1}", "\\g<n>", "\\k<n>",
    "\\k{n}", "(?P=n)", "(?<n>", "(?P<n>", "(?'n'", "(?<1n>", "(?<=", "(?<!", "(?=",
    "(?!", "(?>", "(?:", "(?|", "(?i)", "(?-i)", "(?^)", "(?x)", "(?s:", "(?J)", "(?U)",
    "(?R)", "(?1)", "(?+1)", "(?&n)", "(?P>n)", "(?C)", "(?C1)", "(?C\"x\")", "(?#c)",
    "(?(1)a|b)", "(?(<n>)a)", "(?(DEFINE)", "(?(VERSION>=10)a)", "(*UTF8)", "(*UTF)",
    "(*UCP)", "(*CR)", "(*ANY)", "(*NO_JIT)", "(*LIMIT_MATCH=10)", "(*LIMIT_HEAP=9)",
    "(*FAIL)", "(*ACCEPT)", "(*SKIP)", "(*PRUNE)", "(*MARK:x)", "(*THEN)", "(*COMMIT)",
    "(*pla:", "(*atomic:", "(?*", "++", "*+", "?+", "{2,1}", "{,3}", "{3}", "{1,}",
    "{99999}", "{", "}", "*", "+", "?", "??", "[", "]", "[^", "[]a]", "[a-]", "[z-a]",
    "[:alpha:]", "[[:alpha:]]", "[[:nope:]]", "[[.a.]]", "[\\d-z]", "(", ")", "|", "^",
    "$", ".", "-", " ", "#", "a", "b", "n", "1", "=", ";", "\u00e9", "\u20ac", "\x00",
    "\ud800", "\n",
]

_PLAIN = ["a", "b", "x", ".", ".*", "^", "$", "(a)", "[a-z]", "\\d", "\\w+", "|"]
# Plain pieces weigh as much as the odd ones: about half the patterns compile.
_pattern = st.lists(st.sampled_from(_PIECES + _PLAIN * (len(_PIECES) // len(_PLAIN))),
                    min_size=1, max_size=5).map("".join)
_HEADERS = ["X-A", "Cookie", "User-Agent", "x-b"]
_PLACES = ["headers", "all", "any", "none"]

# One hypothesis example costs far more than one draw: each draws a batch of patterns, and
# where each goes in its rule (header, place, route or actions, a second condition).
PER_EXAMPLE = 30
_batch = st.lists(st.tuples(_pattern, st.integers(0, 63)), min_size=PER_EXAMPLE,
                  max_size=PER_EXAMPLE, unique_by=lambda drawn: drawn[0])


def rule_for(pattern, shape):
    """A valid route or action rule but for the header C{pattern}, placed by C{shape}."""
    condition = {"headers": {_HEADERS[shape % 4]: pattern}}
    place = _PLACES[shape // 4 % 4]
    if place == "headers":
        match = condition
    else:
        match = {place: ([{"headers": {"X-Ok": "^ok$"}}] if shape & 16 else []) + [condition]}
    if shape & 32:
        return {"destination": "reviews", "match": match,
                "route": {"backends": [{"tags": ["v1"]}]}}
    return {"destination": "ratings", "match": match,
            "actions": [{"action": "abort", "return_code": 503}]}


def generated_rules(count=GENERATED):
    """About C{count} rules with distinct header patterns, the same ones every run."""
    found = {}

    @settings(max_examples=count * 3 // 2 // PER_EXAMPLE, derandomize=True, database=None,
              deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(_batch)
    def collect(batch):
        for pattern, shape in batch:
            found.setdefault(pattern, rule_for(pattern, shape))

    collect()
    return list(found.values())


def case_rules():
    """Every rule of the proxy cases."""
    return [copy.deepcopy(rule) for case in CASES for rule in case["state"].get("rules", [])]


def accepted(rule):
    """Whether rules.py takes C{rule}: L{None}, or its message."""
    try:
        validate_rule(rule)
    except InvalidRule as e:
        return e.message
    return None


class EquivalenceTests(_ProxyTestMixin, TestCase):
    """rules.py accepts a rule <=> the proxy compiles it."""

    timeout = 240

    async def compiled(self, fixture, rules):
        """For each rule (each with a unique id): L{None} if the proxy compiled it, or why
        not (the admin's answer)."""
        results = {}

        async def push(batch):
            code, answer = await fixture.push({"instances": [], "rules": batch})
            if not 200 <= code < 300:
                return code, answer
            rejected = {r.get("id"): r.get("error") for r in answer.get("rejected") or []}
            for rule in batch:
                results[rule["id"]] = (None if rule["id"] not in rejected
                                       else "rejected: {}".format(rejected[rule["id"]]))
            return code, answer

        for start in range(0, len(rules), BATCH):
            batch = rules[start:start + BATCH]
            code, answer = await push(batch)
            if 200 <= code < 300:
                continue
            for rule in batch:
                code, answer = await push([rule])
                if not 200 <= code < 300:
                    results[rule["id"]] = "{}: {}".format(code, answer)
        return [results[rule["id"]] for rule in rules]

    async def assertSameVerdicts(self, rules, what):
        rules = [dict(rule, id="{}-{}".format(what, n)) for n, rule in enumerate(rules)]
        ours_all = [accepted(rule) for rule in rules]
        fixture = await self.start_proxy(names=())
        order = sorted(range(len(rules)), key=lambda n: ours_all[n] is None)
        compiled = await self.compiled(fixture, [rules[n] for n in order])
        by_proxy = [None] * len(rules)
        for n, verdict in zip(order, compiled):
            by_proxy[n] = verdict
        differ = []
        for rule, ours, proxy_error in zip(rules, ours_all, by_proxy):
            if (ours is None) != (proxy_error is None):
                differ.append("{!r}\n    rules.py: {}\n    proxy: {}".format(
                    rule.get("match"), ours or "accepted", proxy_error or "compiled"))
        self.assertEqual(differ, [], "{} of {} {} rules judged differently:\n{}".format(
            len(differ), len(rules), what, "\n".join(differ[:10])))
        return by_proxy

    async def test_case_rules(self):
        """Every rule of proxy_cases.json: accepted by rules.py exactly when compiled."""
        rules = case_rules()
        self.assertGreater(len(rules), 50)
        await self.assertSameVerdicts(rules, "case")

    async def test_generated_rules(self):
        """A few thousand rules with generated header patterns: accepted by rules.py
        exactly when compiled by the proxy, and both verdicts occur often."""
        rules = generated_rules()
        self.assertGreater(len(rules), GENERATED // 2)
        by_proxy = await self.assertSameVerdicts(rules, "generated")
        refused = sum(1 for error in by_proxy if error is not None)
        self.assertGreater(refused, len(rules) // 10)
        self.assertGreater(len(rules) - refused, len(rules) // 10)

    async def test_reported_defect(self):
        """\\u0041 (Python's re takes it): the proxy refuses it, and so does rules.py."""
        rule = {"destination": "reviews", "match": {"headers": {"X-A": "^\\u0041$"}},
                "route": {"backends": [{"tags": ["v1"]}]}}
        by_proxy = await self.assertSameVerdicts([rule], "defect")
        self.assertIsNotNone(by_proxy[0])
        self.assertIn("not a valid regular expression for the proxy", accepted(rule))
