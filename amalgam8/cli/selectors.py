# -*- test-case-name: tests.test_a8ctl -*-
"""
The a8ctl mini-languages (SPEC A7), and the rules they stand for.

- A version is a comma-separated list of tags: C{v2}, C{v2,us-east}.
- A service is C{name} or C{name:TAGS} (C{--source reviews:v2}).
- A route selector is C{TAGS(weight=0.25)}, C{TAGS(user="jason")} or
  C{TAGS(header="X-Foo:bar.*")}; conditions may be combined, comma-separated:
  C{v2(user="jason", header="X-Canary:yes", weight=0.5)}.
- An action is C{TAGS(P->delay=SECONDS)} or C{TAGS(P->abort=CODE)}; empty TAGS means any
  backend.

Route rules are built the way a8ctl 0.3 built them (L{route_rules}), and read back into
selectors for C{route-list} (L{describe_routes}).
"""

import re

import attrs

from amalgam8.durations import parse_duration
from amalgam8.rules import pattern_error, weight_in_range, weights_exceed_one

__all__ = [
    "BadSyntax",
    "Selector",
    "parse_tags",
    "parse_service",
    "parse_selector",
    "parse_action",
    "parse_header",
    "cookie_pattern",
    "route_rules",
    "describe_routes",
    "describe_match",
    "describe_action",
    "version_of",
    "NO_VERSION",
]

NO_VERSION = "-untagged-"
_TAG = re.compile(r"[^\s(),:;=\"']+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SELECTOR = re.compile(r"\s*([^()]*?)\s*\((.*)\)\s*", re.S)
_ACTION = re.compile(
    r"\s*([^()]*?)\s*\(\s*([^()]*?)\s*->\s*([A-Za-z]+)\s*=\s*([^()]*?)\s*\)\s*", re.S)
_KEY = re.compile(r"([A-Za-z_]+)\s*=\s*")
_USER_PATTERN = re.compile(r"\^\(\.\*\?;(?: \?)?\)\?\(user=(.+)\)\(;\.\*\)\?\$", re.S)
_OLD_USER_PATTERN = re.compile(r"\.\*\?user=(.+)", re.S)


class BadSyntax(ValueError):
    """A selector, action, service or tag list that does not parse (one-line message)."""


def parse_tags(text, what="version"):
    """
    Parse C{"v1,us-east"} into C{["v1", "us-east"]}.

    @raise BadSyntax: for an empty list, an empty tag or a character a tag cannot hold.
    """
    tags = [tag.strip() for tag in text.split(",")]
    if not text.strip() or not all(tags):
        raise BadSyntax("bad {} {!r}: expected tags separated by commas, such as v1 or "
                        "v2,us-east".format(what, text))
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise BadSyntax("bad {} {!r}: tag {!r} holds a character a tag cannot have"
                            .format(what, text, tag))
    if len(set(tags)) != len(tags):
        raise BadSyntax("bad {} {!r}: a tag is given twice".format(what, text))
    return tags


def parse_service(text, what="service"):
    """
    Parse C{"reviews"} or C{"reviews:v2,us"} into C{(name, tags or None)}.

    @raise BadSyntax: for an empty name or bad tags.
    """
    name, colon, tags = text.partition(":")
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise BadSyntax("bad {} {!r}: expected NAME or NAME:TAGS, such as reviews:v2"
                        .format(what, text))
    if not colon:
        return name, None
    return name, parse_tags(tags, what + " tags")


def version_of(tags):
    """The version text of a tag list: C{["v1", "us"]} -> C{"v1,us"}."""
    return ",".join(tags) if tags else NO_VERSION


def cookie_pattern(cookie):
    """
    The C{Cookie} header pattern that matches one cookie, C{name=value} (SPEC A7:
    C{user="x"} is C{^(.*?; ?)?(user=x)(;.*)?$}); a bare name matches any value. SPEC A7
    writes the pattern without the optional space, but browsers separate cookies with
    "; ", so C{a=1; user=x} would never match that one.
    """
    if "=" in cookie:
        inner = re.escape(cookie)
    else:
        inner = re.escape(cookie) + "=[^;]*"
    return "^(.*?; ?)?({})(;.*)?$".format(inner)


def parse_header(text, what="header"):
    """
    Parse C{"X-Foo:bar.*"} into C{("X-Foo", "bar.*")}, checking the name and the pattern.

    @raise BadSyntax: for a missing colon, a bad header name or a bad regular expression.
    """
    name, colon, pattern = text.partition(":")
    name = name.strip()
    if not colon or not _HEADER_NAME.fullmatch(name):
        raise BadSyntax("bad {} {!r}: expected NAME:PATTERN, such as X-Foo:bar.*"
                        .format(what, text))
    problem = pattern_error(pattern)
    if problem is not None:
        raise BadSyntax("bad {} {!r}: {!r} is {}".format(what, text, pattern, problem))
    return name, pattern


@attrs.frozen
class Selector:
    """
    One C{--selector}: the backend's tags, its weight (or L{None}) and the header
    conditions (C{(name, pattern)} pairs) a request must meet.
    """

    text: str
    tags: tuple
    weight: float = None
    headers: tuple = ()


def _pairs(body, text):
    """Split C{key=value, key="quoted, value"} into C{[(key, value)]}."""
    pairs = []
    position = 0
    length = len(body)

    def fail(why):
        raise BadSyntax("bad selector {!r}: {}".format(text, why))

    while True:
        while position < length and body[position].isspace():
            position += 1
        if position >= length:
            break
        match = _KEY.match(body, position)
        if match is None:
            fail("expected key=value inside the parentheses (weight=0.25, user=\"name\" "
                 "or header=\"Name:pattern\")")
        key = match.group(1)
        position = match.end()
        if position < length and body[position] in "\"'":
            quote = body[position]
            position += 1
            value = []
            while True:
                if position >= length:
                    fail("unterminated quote in the value of {}".format(key))
                char = body[position]
                if char == "\\" and position + 1 < length and body[position + 1] in (
                        quote, "\\"):
                    value.append(body[position + 1])
                    position += 2
                    continue
                position += 1
                if char == quote:
                    break
                value.append(char)
            value = "".join(value)
            while position < length and body[position].isspace():
                position += 1
            if position < length and body[position] != ",":
                fail("expected a comma after the value of {}".format(key))
        else:
            end = body.find(",", position)
            end = length if end < 0 else end
            value = body[position:end].strip()
            position = end
        pairs.append((key, value))
        if position < length:
            position += 1          # the comma
            if not body[position:].strip():
                fail("nothing after the last comma")
    return pairs


def parse_selector(text):
    """
    Parse one C{--selector}.

    @raise BadSyntax: with a one-line message that quotes the selector.
    """
    match = _SELECTOR.fullmatch(text)
    if match is None:
        raise BadSyntax("bad selector {!r}: expected TAGS(weight=W), TAGS(user=\"NAME\") or "
                        "TAGS(header=\"NAME:PATTERN\")".format(text))
    try:
        tags = parse_tags(match.group(1), "version")
    except BadSyntax as e:
        raise BadSyntax("bad selector {!r}: {}".format(text, e))
    weight = None
    headers = {}
    for key, value in _pairs(match.group(2), text):
        if key == "weight":
            if weight is not None:
                raise BadSyntax("bad selector {!r}: weight given twice".format(text))
            try:
                weight = float(value)
            except ValueError:
                weight = None
            if weight is None or not weight_in_range(weight):
                raise BadSyntax("bad selector {!r}: weight must be a number above 0 and at "
                                "most 1, not {!r}".format(text, value))
        elif key == "user":
            if not value or any(c in value for c in ";,\" \\"):
                raise BadSyntax("bad selector {!r}: user must be a cookie value, not {!r}"
                                .format(text, value))
            name, pattern = "Cookie", cookie_pattern("user=" + value)
            if name in headers:
                raise BadSyntax("bad selector {!r}: two Cookie conditions".format(text))
            headers[name] = pattern
        elif key == "header":
            try:
                name, pattern = parse_header(value)
            except BadSyntax as e:
                raise BadSyntax("bad selector {!r}: {}".format(text, e))
            if any(name.lower() == have.lower() for have in headers):
                raise BadSyntax("bad selector {!r}: two conditions on header {}"
                                .format(text, name))
            headers[name] = pattern
        else:
            raise BadSyntax("bad selector {!r}: unknown key {!r} (expected weight, user or "
                            "header)".format(text, key))
    if weight is None and not headers:
        raise BadSyntax("bad selector {!r}: give a weight, a user or a header".format(text))
    return Selector(text=text.strip(), tags=tuple(tags), weight=weight,
                    headers=tuple(headers.items()))


def parse_action(text):
    """
    Parse one C{--action}: C{TAGS(P->delay=SECONDS)} or C{TAGS(P->abort=CODE)}.

    @return: the rule action (a dict).
    @raise BadSyntax: with a one-line message that quotes the action.
    """
    match = _ACTION.fullmatch(text)
    if match is None:
        raise BadSyntax("bad action {!r}: expected TAGS(PROBABILITY->delay=SECONDS) or "
                        "TAGS(PROBABILITY->abort=CODE)".format(text))
    version, probability, kind, value = match.groups()
    action = {"action": kind.lower()}
    try:
        p = float(probability)
    except ValueError:
        p = None
    if p is None or not 0 < p <= 1:
        raise BadSyntax("bad action {!r}: the probability must be a number above 0 and at "
                        "most 1, not {!r}".format(text, probability))
    if action["action"] == "delay":
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = 0
        if not seconds > 0:
            raise BadSyntax("bad action {!r}: the delay must be a duration above 0, such as "
                            "7 or 1.5s, not {!r}".format(text, value))
        action["duration"] = _number(seconds)
    elif action["action"] == "abort":
        try:
            code = int(value)
        except ValueError:
            code = 0
        if not (-5 <= code <= -1 or 100 <= code <= 599):
            raise BadSyntax("bad action {!r}: the abort code must be an HTTP status 100-599 "
                            "(or -1 to reset the connection), not {!r}".format(text, value))
        action["return_code"] = code
    else:
        raise BadSyntax("bad action {!r}: unknown action {!r} (expected delay or abort)"
                        .format(text, kind))
    action["probability"] = _number(p)
    if version:
        try:
            action["tags"] = parse_tags(version, "version")
        except BadSyntax as e:
            raise BadSyntax("bad action {!r}: {}".format(text, e))
    return action


def _number(value):
    """C{7.0} -> C{7}: whole numbers stay integers in the rules."""
    return int(value) if float(value).is_integer() else value


def _source_match(source):
    name, tags = source
    match = {"name": name}
    if tags:
        match["tags"] = list(tags)
    return match


def route_rules(service, default, selectors, source=None):
    """
    The route rules of C{route-set}, as a8ctl 0.3 built them.

    - One rule per selector with header conditions (C{user}, C{header}), routing to its
      tags (weighted against the default when it has a weight); the first selector given
      gets the highest priority, so it is tried first.
    - One rule at the bottom (priority 1) with the weighted selectors' backends and the
      default backend, unweighted, which takes the rest of the traffic.
    - With C{source} (C{(name, tags)}), every rule above matches only that caller; the
      weighted rule moves to priority 2 and an unconditional rule at priority 1 sends the
      other callers to the default.

    @param default: the default version's tags.
    @param selectors: L{Selector}s in the order given.
    @return: the rules, highest priority first.
    @raise BadSyntax: when tags repeat or the weights add up to more than 1.
    """
    default = list(default)
    weighted = [s for s in selectors if not s.headers]
    matched = [s for s in selectors if s.headers]
    seen = {frozenset(default): "the default"}
    for selector in weighted:
        key = frozenset(selector.tags)
        if key in seen:
            raise BadSyntax("bad selector {!r}: version {} is {} already".format(
                selector.text, version_of(selector.tags),
                "the default" if seen[key] == "the default" else "weighted by " + seen[key]))
        seen[key] = repr(selector.text)
    total = sum(s.weight for s in weighted)
    if weights_exceed_one(total):
        raise BadSyntax("the weights of the selectors add up to {:g}, more than 1"
                        .format(total))
    for selector in matched:
        if selector.weight is not None and frozenset(selector.tags) == frozenset(default):
            raise BadSyntax("bad selector {!r}: a weight against the default needs another "
                            "version".format(selector.text))

    def rule(priority, backends, match=None):
        result = {"destination": service, "priority": priority,
                  "route": {"backends": backends}}
        if match:
            result["match"] = match
        return result

    backends = [{"tags": list(s.tags), "weight": s.weight} for s in weighted]
    backends.append({"tags": default})
    rules = []
    priority = 1
    if source is not None and weighted:
        rules.append(rule(priority, [{"tags": default}]))
        priority += 1
        rules.append(rule(priority, backends, {"source": _source_match(source)}))
    else:
        rules.append(rule(priority, backends))
    for selector in reversed(matched):
        priority += 1
        match = {"headers": dict(selector.headers)}
        if source is not None:
            match["source"] = _source_match(source)
        if selector.weight is not None:
            chosen = [{"tags": list(selector.tags), "weight": selector.weight},
                      {"tags": default}]
        else:
            chosen = [{"tags": list(selector.tags)}]
        rules.append(rule(priority, chosen, match))
    rules.reverse()
    return rules


def _quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unescape(pattern):
    return re.sub(r"\\(.)", r"\1", pattern, flags=re.S)


def describe_match(match):
    """The conditions of a rule's C{match}, in selector syntax (a list of C{key=value})."""
    parts = []
    if not match:
        return parts
    source = match.get("source")
    if source:
        name = source.get("name", "")
        if source.get("tags"):
            name += ":" + ",".join(source["tags"])
        parts.append("source=" + name)
    for header, pattern in (match.get("headers") or {}).items():
        user = None
        if header.lower() == "cookie":
            found = _USER_PATTERN.fullmatch(pattern) or _OLD_USER_PATTERN.fullmatch(pattern)
            if found:
                user = _unescape(found.group(1))
        if user is not None and not any(c in user for c in ";"):
            parts.append("user=" + _quote(user))
        else:
            parts.append("header=" + _quote(header + ":" + pattern))
    for combinator in ("all", "any", "none"):
        if match.get(combinator):
            parts.append("{}=({} conditions)".format(combinator, len(match[combinator])))
    return parts


def _selector(tags, conditions):
    return "{}({})".format(version_of(tags), ", ".join(conditions))


def describe_routes(rules):
    """
    Read a destination's route rules back into C{route-set} terms.

    @return: C{(default, selectors)}: the version that takes the rest of the traffic
        (L{None} when no rule routes everything) and the selectors, in the order they are
        tried.
    """
    ordered = sorted(rules, key=lambda r: (-r.get("priority", 0), r.get("id", "")))
    default = None
    selectors = []
    for rule in ordered:
        backends = rule.get("route", {}).get("backends", [])
        conditions = describe_match(rule.get("match"))
        for backend in backends:
            parts = list(conditions)
            if backend.get("name") and backend["name"] != rule.get("destination"):
                parts.append("name=" + backend["name"])
            if "weight" in backend:
                parts.append("weight={:g}".format(backend["weight"]))
            if parts:
                selectors.append(_selector(backend.get("tags", ()), parts))
            elif default is None:
                default = version_of(backend.get("tags", ()))
    return default, selectors


def describe_action(action):
    """One rule action in C{--action} syntax: C{v1(0.5->delay=7)}."""
    tags = ",".join(action.get("tags", ()))
    kind = action.get("action")
    probability = "{:g}".format(action.get("probability", 1))
    if kind == "delay":
        return "{}({}->delay={:g})".format(tags, probability, action.get("duration", 0))
    if kind == "abort":
        return "{}({}->abort={})".format(tags, probability, action.get("return_code"))
    if kind == "trace":
        return "{}(trace={}:{})".format(tags, action.get("log_key", ""),
                                        action.get("log_value", ""))
    return "{}({})".format(tags, kind)
