# -*- test-case-name: tests.test_gremlin_recipe -*-
"""
Recipe files (SPEC A6) into a L{Recipe}, and a recipe into the rules that inject its faults
and trace its test requests.

Files are Amalgam8's JSON, or YAML (by the extension C{.yaml}/C{.yml}, or when the text does
not start like JSON). Every problem is a L{RecipeError} of one line naming the file, the
entry and the field; nothing is half-loaded.

How scenarios become faults, given that our proxy applies a rule's actions I{before} it
forwards the request (SPEC A4):

- C{delay_requests}, C{abort_requests}: a delay or an abort of the calls over the edge.
- C{delay_responses}, C{abort_responses}: translated the same way. For the caller the effect
  is the same (the answer comes C{delaytime} later, or is C{errorcode}); for the destination
  it is not: a delayed "response" is a request that reaches it C{delaytime} late, and an
  aborted "response" is a request it never sees, so it does no work and logs nothing for it
  (Amalgam8's proxy could let the destination do the work and drop the answer; ours cannot).
- C{partition_services}: resets (code -1) both ways, source -> dest and dest -> source where
  the topology has that edge.
- C{crash_service}: resets (-1) every call into dest.
- C{overload_service}: a delay and a 503 abort, each with its own probability (defaults:
  half the calls delayed 10 s, half answered 503; a call may get both).
"""

import json
import math
import re

import yaml

from amalgam8.cli.selectors import BadSyntax, cookie_pattern, parse_header
from amalgam8.durations import parse_duration
from amalgam8.gremlin.model import (
    CHECK_ENDPOINTS, CHECKS, LOG_KEY, REQUIRED, SCENARIOS, Check, Edge, Gremlin, Recipe,
    Service)

__all__ = ["RecipeError", "load_recipe", "parse_recipe", "gremlin_edges", "fault_rules",
           "trace_rules", "max_delay", "request_id_prefix", "header_value",
           "DEFAULT_HEADER", "DEFAULT_PATTERN"]

DEFAULT_HEADER = "X-Request-ID"
DEFAULT_PATTERN = "gremlin-"

#: The priorities of the rules a recipe pushes (SPEC A6: faults at 10).
FAULT_PRIORITY = 10
# A trace-only rule must lose against a fault rule whose source is narrower (reviews:v2
# against the topology's reviews): the proxy applies only the first matching action rule,
# so at equal priority the order (by rule id) would decide whether the faults apply.
TRACE_PRIORITY = 9

#: Per-service keys of Amalgam8's topology files that we accept and ignore.
LEGACY_SERVICE_KEYS = frozenset({"service_proxies", "instances"})

#: Which scenarios need a dest (they fault the calls into one service).
NEEDS_DEST = frozenset({"crash_service", "overload_service"})

_DISTRIBUTIONS = ("uniform", "exponential", "normal")
_MAX_DELAY = 3600.0         # the rule schema's bound on a delay
_MAX_FAULTS = 15            # a rule holds at most 16 actions, one of them the trace
_SERVICE_NAME = re.compile(r"[^/\s]{1,64}")
_TAG = re.compile(r"[^\s,:]{1,128}")
_REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}")
# How far a random delay may reach: the 99.9th percentile of its distribution.
_EXPONENTIAL_TAIL = math.log(1000)
_NORMAL_TAIL = 3.1


class RecipeError(Exception):
    """A recipe that cannot run: one line naming the file, the entry and the field."""


def _show(value, limit=60):
    """A value for a message: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _field(key):
    return key if isinstance(key, str) and key.isprintable() and key else _show(key)


def _fail(*parts):
    raise RecipeError(": ".join(str(part) for part in parts if part))


def _known(names):
    return "(known: {})".format(", ".join(sorted(names)))


# -- reading files ------------------------------------------------------------------------

def _decode(text, name):
    """JSON, or YAML when the file says so or the text does not start like JSON."""
    as_yaml = name.lower().endswith((".yaml", ".yml")) or text.lstrip()[:1] not in ("{", "[")
    if not as_yaml:
        try:
            return json.loads(text, parse_constant=_no_constant)
        except RecursionError:
            _fail(name, "nested too deeply")
        except ValueError as e:
            line = getattr(e, "lineno", None)
            where = "line {}: ".format(line) if line else ""
            _fail(name, "{}not valid JSON ({})".format(where, getattr(e, "msg", e)))
    try:
        return yaml.safe_load(text)
    except RecursionError:
        _fail(name, "nested too deeply")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = "line {}: ".format(mark.line + 1) if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        _fail(name, "{}not valid YAML ({})".format(where, problem))


def _no_constant(constant):
    raise ValueError("{} is not a number JSON allows".format(constant))


def _read(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        _fail(path, "cannot read: {}".format(e.strerror or e))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(path, "not UTF-8 text (byte {})".format(e.start))
    return _decode(text, path)


def load_recipe(topology_path, scenarios_path, checks_path):
    """
    Read and validate the three files of a recipe.

    @raise RecipeError: for the first problem found, naming the file (as given), the entry
        and the field.
    """
    return parse_recipe(_read(topology_path), _read(scenarios_path), _read(checks_path),
                        names=(topology_path, scenarios_path, checks_path))


# -- validating ---------------------------------------------------------------------------

def _top(data, name, key, shape, others=()):
    """The list under C{key} of a file's top-level object."""
    if not isinstance(data, dict):
        _fail(name, "must be an object {}, not {}".format(shape, _kind(data)))
    for k in data:
        if k != key and k not in others:
            _fail(name, _field(k), "unknown field " + _known((key,) + tuple(others)))
    if key not in data:
        _fail(name, key, "missing")
    entries = data[key]
    if not isinstance(entries, list):
        _fail(name, key, "must be a list, not {}".format(_kind(entries)))
    return entries


def _kind(value):
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _service(text):
    """L{Service.parse} with the names and tags a rule can carry."""
    service = Service.parse(text)
    if not _SERVICE_NAME.fullmatch(service.name):
        raise ValueError("{} is not a service name (at most 64 characters, no '/' or space)"
                         .format(_show(service.name)))
    for tag in service.tags:
        if not _TAG.fullmatch(tag):
            raise ValueError("{} is not a tag (at most 128 characters, no space, ',' or ':')"
                             .format(_show(tag)))
    return service


def _declared(text, names):
    """A service of the topology, by name."""
    service = _service(text)
    if service.name not in names:
        raise ValueError("{} is not a service of the topology {}".format(
            _show(service.name), _known(names)))
    return service


def _topology(data, name):
    entries = _top(data, name, "services", '{"services": [...], "dependencies": {...}}',
                   ("dependencies",))
    services = []
    for n, entry in enumerate(entries):
        where = "services[{}]".format(n)
        if not isinstance(entry, dict):
            _fail(name, where, 'must be an object {{"name": ...}}, not {}'.format(_kind(entry)))
        for key in entry:
            if key != "name" and key not in LEGACY_SERVICE_KEYS:
                _fail(name, where, _field(key),
                      "unknown field " + _known({"name"} | LEGACY_SERVICE_KEYS))
        if "name" not in entry:
            _fail(name, where, "name", "missing")
        try:
            service = _service(entry["name"])
        except ValueError as e:
            _fail(name, where, "name", e)
        if service in services:
            _fail(name, where, "name", "{} is declared twice".format(service))
        services.append(service)
    if not services:
        _fail(name, "services", "the topology declares no service")
    names = {s.name for s in services}
    dependencies = data.get("dependencies", {})
    if not isinstance(dependencies, dict):
        _fail(name, "dependencies", 'must be an object {{"a": ["b", ...]}}, not {}'
              .format(_kind(dependencies)))
    edges = []
    for caller, callees in dependencies.items():
        where = "dependencies"
        try:
            source = _declared(caller, names)
        except ValueError as e:
            _fail(name, where, _field(caller), e)
        where = "dependencies.{}".format(_field(caller))
        if not isinstance(callees, list):
            _fail(name, where, "must be a list of service names, not {}".format(
                _kind(callees)))
        for n, callee in enumerate(callees):
            try:
                edge = Edge(source, _declared(callee, names))
            except ValueError as e:
                _fail(name, "{}[{}]".format(where, n), e)
            if edge not in edges:
                edges.append(edge)
    return tuple(services), tuple(edges)


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number, not {}".format(_show(value)))
    try:
        float(value)
    except OverflowError:
        raise ValueError("{} is out of range".format(_show(value)))
    return value


def _int(value, least):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError("must be a whole number {} or more, not {}".format(
            least, _show(value)))
    return value


def _code(value, what="an abort code"):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if (isinstance(value, bool) or not isinstance(value, int)
            or not (-5 <= value <= -1 or 100 <= value <= 599)):
        raise ValueError("must be {}: an HTTP status 100-599, or -1 to -5 for a reset "
                         "connection, not {}".format(what, _show(value)))
    return value


def _duration(value):
    try:
        return parse_duration(value)
    except (ValueError, OverflowError):
        raise ValueError("not a duration: {}".format(_show(value)))


def _probability(value):
    if not 0 < _number(value) <= 1:
        raise ValueError("must be a probability above 0 and at most 1, not {}".format(
            _show(value)))
    return float(value)


def _status(value):
    values = value if isinstance(value, list) else [value]
    try:
        if not values:
            raise ValueError("empty")
        return frozenset(_code(v, "a status") for v in values)
    except ValueError:
        raise ValueError("must be an HTTP status or a list of them, such as 200 or "
                         "[200, 302], not {}".format(_show(value)))


def _rate(value):
    if not (_number(value) > 0 and math.isfinite(value)):
        raise ValueError("must be a number of requests per second above 0, not {}".format(
            _show(value)))
    return float(value)


def _distribution(value):
    if value not in _DISTRIBUTIONS or not isinstance(value, str):
        raise ValueError("must be one of {}, not {}".format(", ".join(_DISTRIBUTIONS),
                                                            _show(value)))
    return value


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false, not {}".format(_show(value)))
    return value


def _services(value, names):
    if not isinstance(value, list) or not value:
        raise ValueError("must be a list of service names, not {}".format(_show(value)))
    return tuple(_declared(v, names) for v in value)


def _convert(kind, value, names):
    """A parameter's value of the kind named in L{amalgam8.gremlin.model}."""
    if kind == "duration":
        return _duration(value)
    if kind == "probability":
        return _probability(value)
    if kind == "code":
        return _code(value)
    if kind == "int":
        return _int(value, 0)
    if kind == "count":
        return _int(value, 1)
    if kind == "rate":
        return _rate(value)
    if kind == "status":
        return _status(value)
    if kind == "services":
        return _services(value, names)
    if kind == "service":
        return _declared(value, names)
    if kind == "distribution":
        return _distribution(value)
    if kind == "bool":
        return _bool(value)
    raise AssertionError("unknown parameter kind {!r}".format(kind))


def _entry(entry, n, name, section, what, table, names):
    """
    One gremlin or check: C{(kind, where, source, dest, params)}, validated against
    C{table} (L{SCENARIOS} or L{CHECKS}).
    """
    where = "{}[{}]".format(section, n)
    if not isinstance(entry, dict):
        _fail(name, where, "must be an object, not {}".format(_kind(entry)))
    if what not in entry:
        _fail(name, where, what, "missing")
    kind = entry[what]
    if not isinstance(kind, str) or kind not in table:
        _fail(name, where, what, "unknown {} {} {}".format(
            "scenario" if what == "scenario" else "check", _show(kind), _known(table)))
    where = "{} ({})".format(where, kind)
    parameters = table[kind]
    endpoints = {}
    for end in ("source", "dest"):
        if entry.get(end) is None:
            endpoints[end] = None
            continue
        try:
            endpoints[end] = _declared(entry[end], names)
        except ValueError as e:
            _fail(name, where, end, e)
    params = {}
    for key, value in entry.items():
        if key in (what, "source", "dest"):
            continue
        if key not in parameters:
            _fail(name, where, _field(key), "unknown parameter " + _known(
                set(parameters) | {"source", "dest"}))
        try:
            params[key] = _convert(parameters[key][0], value, names)
        except ValueError as e:
            _fail(name, where, key, e)
    for key, (_, default) in parameters.items():
        if key not in params:
            if default is REQUIRED:
                _fail(name, where, key, "missing")
            params[key] = default
    return kind, where, endpoints["source"], endpoints["dest"], params


def _gremlin(entry, n, name, names):
    kind, where, source, dest, params = _entry(entry, n, name, "gremlins", "scenario",
                                               SCENARIOS, names)
    if kind in NEEDS_DEST and dest is None:
        _fail(name, where, "dest", "missing ({} faults the calls into dest)".format(kind))
    if "delaytime" in params:
        if not 0 < params["delaytime"] <= _MAX_DELAY:
            _fail(name, where, "delaytime", "must be above 0 and at most {:g} s, not {:g} s"
                  .format(_MAX_DELAY, params["delaytime"]))
        stddev = params["stddev"]
        if stddev is not None:
            if params["distribution"] != "normal":
                _fail(name, where, "stddev", "only a normal distribution takes a stddev")
            if stddev > _MAX_DELAY:
                _fail(name, where, "stddev", "at most {:g} s, not {:g} s".format(
                    _MAX_DELAY, stddev))
    return Gremlin(kind, source, dest, params, n), where


def _check(entry, n, name, names):
    kind, where, source, dest, params = _entry(entry, n, name, "checks", "name", CHECKS,
                                               names)
    for end in CHECK_ENDPOINTS[kind]:
        if (source, dest)[end == "dest"] is None:
            _fail(name, where, end, "missing")
    return Check(kind, source, dest, params, n)


def parse_recipe(topology, scenarios, checks, names=("topology", "scenarios", "checks")):
    """
    Validate a recipe already decoded from JSON or YAML.

    @param names: the names of the three files, for the messages.
    @raise RecipeError: for the first problem found.
    """
    topology_name, scenarios_name, checks_name = names
    services, edges = _topology(topology, topology_name)
    declared = {s.name for s in services}
    gremlins = []
    faults = {}
    for n, entry in enumerate(_top(scenarios, scenarios_name, "gremlins",
                                   '{"gremlins": [...]}')):
        gremlin, where = _gremlin(entry, n, scenarios_name, declared)
        expanded = gremlin_edges(gremlin, edges)
        if not expanded:
            _fail(scenarios_name, where, "no edge of the topology {}".format(
                _describe(gremlin)))
        for edge in expanded:
            key = (edge.source, edge.dest.name)
            _check_overlap(faults, key, gremlin, scenarios_name, where)
            count = faults.setdefault(key, [gremlin.index, 0])
            count[1] += len(_faults(gremlin, edge.dest))
            if count[1] > _MAX_FAULTS:
                _fail(scenarios_name, where, "more than {} faults on the calls {} -> {}"
                      .format(_MAX_FAULTS, edge.source, edge.dest.name))
        gremlins.append(gremlin)
    if not gremlins:
        _fail(scenarios_name, "gremlins", "the scenarios expand to no edge of the topology")
    result = [_check(entry, n, checks_name, declared)
              for n, entry in enumerate(_top(checks, checks_name, "checks",
                                             '{"checks": [...]}'))]
    return Recipe(services, edges, tuple(gremlins), tuple(result))


def _describe(gremlin):
    if gremlin.source is None and gremlin.dest is None:
        return "(the topology has no dependencies)"
    parts = []
    if gremlin.source is not None:
        parts.append("from {}".format(gremlin.source))
    if gremlin.dest is not None:
        parts.append("into {}".format(gremlin.dest))
    return " ".join(parts)


def _check_overlap(faults, key, gremlin, name, where):
    """
    Two fault rules whose sources differ only in tags (C{reviews} and C{reviews:v2}) would
    both match a call from reviews v2 at the same priority; the proxy applies one of them,
    by rule id. Refuse that instead of guessing.
    """
    source, dest = key
    for (other, other_dest), (index, _) in faults.items():
        if other_dest == dest and other.name == source.name and other != source:
            _fail(name, where, "source", "the calls {} -> {} overlap those of gremlins[{}] "
                  "({} -> {}): the proxy applies one rule per call, give both gremlins the "
                  "same source".format(source, dest, index, other, dest))


# -- expansion and rules ------------------------------------------------------------------

def _narrow(declared, wanted):
    """The topology's service C{declared} narrowed to C{wanted} (L{None}: no match)."""
    if wanted is None:
        return declared
    if wanted.name != declared.name:
        return None
    return Service(declared.name,
                   declared.tags + tuple(t for t in wanted.tags if t not in declared.tags))


def gremlin_edges(gremlin, edges):
    """
    The edges a gremlin faults: every topology edge its source and dest match (a missing
    one matches any service, tags narrow), and for C{partition_services} the reverse ones.
    """
    wanted = [(gremlin.source, gremlin.dest)]
    if gremlin.scenario == "partition_services":
        wanted.append((gremlin.dest, gremlin.source))
    result = []
    for edge in edges:
        for source, dest in wanted:
            narrowed = (_narrow(edge.source, source), _narrow(edge.dest, dest))
            if None not in narrowed and Edge(*narrowed) not in result:
                result.append(Edge(*narrowed))
    return result


def _delay(params, tags):
    action = {"action": "delay", "duration": params["delaytime"],
              "probability": params["delayprobability"]}
    if params["distribution"] is not None:
        action["distribution"] = params["distribution"]
    if params["stddev"] is not None:
        action["stddev"] = params["stddev"]
    return _tagged(action, tags)


def _abort(code, probability, tags):
    return _tagged({"action": "abort", "return_code": code, "probability": probability},
                   tags)


def _tagged(action, tags):
    if tags:
        action["tags"] = list(tags)
    return action


def _faults(gremlin, dest):
    """The delay and abort actions of one gremlin on a call into C{dest}."""
    params = gremlin.params
    if gremlin.scenario in ("delay_requests", "delay_responses"):
        return [_delay(params, dest.tags)]
    if gremlin.scenario in ("abort_requests", "abort_responses"):
        return [_abort(params["errorcode"], params["abortprobability"], dest.tags)]
    if gremlin.scenario in ("partition_services", "crash_service"):
        return [_abort(-1, params["abortprobability"], dest.tags)]
    return [_delay(params, dest.tags),
            _abort(params["errorcode"], params["abortprobability"], dest.tags)]


def _header_pattern(header, pattern):
    """The regular expression the test header must match."""
    pattern = DEFAULT_PATTERN if pattern is None else pattern
    if not isinstance(pattern, str) or not isinstance(header, str):
        raise RecipeError("header {} with pattern {}: both must be text".format(
            _show(header), _show(pattern)))
    literal, anything = _split_glob(pattern)
    if header.lower() == "cookie" and (literal or not anything):
        name, equals, value = literal.partition("=")
        if anything and equals and value:
            raise RecipeError("pattern {}: a Cookie pattern is one cookie, name=value (or "
                              "name=* for any value)".format(_show(pattern)))
        regex = cookie_pattern(name if anything or not value else literal)
    elif anything and not literal:
        regex = ".*"
    else:
        regex = "^" + "".join("\\" + c if c in _REGEX_SPECIAL else c for c in literal)
    try:
        parse_header("{}:{}".format(header, regex))
    except BadSyntax as e:
        raise RecipeError("header {} with pattern {}: {}".format(_show(header),
                                                                 _show(pattern), e))
    return regex


def _split_glob(pattern):
    """C{"abc*"} -> C{("abc", True)}: Amalgam8's trailing glob means any value."""
    if pattern.endswith("*"):
        return pattern[:-1], True
    return pattern, False


def _rule(recipe_id, source, dest_name, actions, priority, headers):
    match = {"source": {"name": source.name}, "headers": dict(headers)}
    if source.tags:
        match["source"]["tags"] = list(source.tags)
    trace = {"action": "trace", "log_key": LOG_KEY, "log_value": recipe_id}
    return {"priority": priority, "tags": [recipe_id], "destination": dest_name,
            "match": match, "actions": actions + [trace]}


def _trace_only(recipe, recipe_id, headers, skip):
    rules = []
    for edge in recipe.edges:
        key = (edge.source, edge.dest.name)
        if key not in skip:
            skip.add(key)
            rules.append(_rule(recipe_id, edge.source, edge.dest.name, [],
                               TRACE_PRIORITY, headers))
    return rules


def fault_rules(recipe, recipe_id, header=DEFAULT_HEADER, pattern=None):
    """
    The rules of a recipe run: one action rule per faulted edge (all its gremlins' faults,
    delays first, then aborts, tagged with the dest's tags, and a trace), priority 10, and
    a trace-only rule (priority 9) for every other edge of the topology. Faulted edges with
    one source into differently tagged versions of one dest share a rule (the actions'
    tags tell them apart). Every rule carries the tag C{recipe_id} and matches the test
    header.

    @raise RecipeError: for a header or pattern the proxy cannot match.
    """
    headers = {header: _header_pattern(header, pattern)}
    grouped = {}
    for gremlin in recipe.gremlins:
        for edge in gremlin_edges(gremlin, recipe.edges):
            grouped.setdefault((edge.source, edge.dest.name), []).append(
                _faults(gremlin, edge.dest))
    rules = []
    for (source, dest_name), faults in grouped.items():
        actions = [a for group in faults for a in group if a["action"] == "delay"]
        actions += [a for group in faults for a in group if a["action"] == "abort"]
        rules.append(_rule(recipe_id, source, dest_name, actions, FAULT_PRIORITY, headers))
    return rules + _trace_only(recipe, recipe_id, headers, set(grouped))


def trace_rules(recipe, recipe_id, header=DEFAULT_HEADER, pattern=None):
    """Trace-only rules for every edge of the topology (the C{--baseline} run)."""
    return _trace_only(recipe, recipe_id, {header: _header_pattern(header, pattern)}, set())


def _reach(action):
    """How long one delay action may last (its distribution's 99.9th percentile)."""
    mean = action["duration"]
    distribution = action.get("distribution")
    if distribution == "uniform":
        return 2 * mean
    if distribution == "exponential":
        return mean * _EXPONENTIAL_TAIL
    if distribution == "normal":
        return mean + _NORMAL_TAIL * action.get("stddev", mean / 4)
    return mean


def max_delay(recipe):
    """
    The longest a test call may be held by the recipe's delays, in seconds (0 when it has
    none): per faulted call, the delays that apply to its backend add up (the proxy runs
    each in turn); a random delay counts with its 99.9th percentile.
    """
    longest = 0.0
    for rule in fault_rules(recipe, "max-delay"):
        delays = [(set(a.get("tags", ())), _reach(a)) for a in rule["actions"]
                  if a["action"] == "delay"]
        # A call routed to a backend with the tags of one delay gets every delay whose
        # tags it carries too.
        for tags, _ in delays:
            longest = max(longest, sum(reach for have, reach in delays if have <= tags))
    return longest


def request_id_prefix(header=DEFAULT_HEADER, pattern=None):
    """The literal prefix of the X-Request-IDs the load generator sends."""
    if header.lower() != DEFAULT_HEADER.lower() or pattern is None:
        return DEFAULT_PATTERN
    return _split_glob(pattern)[0]


def header_value(header, pattern=None):
    """
    The value to send in the test header when it is not X-Request-ID (L{None} when it
    is): the pattern's literal, e.g. C{user=jason} for C{Cookie}.

    @raise RecipeError: when no literal value matches only what the pattern means (C{*},
        a bare cookie name) or it cannot travel in a header.
    """
    if header.lower() == DEFAULT_HEADER.lower():
        return None
    pattern = DEFAULT_PATTERN if pattern is None else pattern
    literal, anything = _split_glob(pattern)
    if header.lower() == "cookie" and (anything or not literal.partition("=")[2]):
        literal = ""
    if (not literal or literal != literal.strip()
            or not all(" " <= c <= "~" or "\x80" <= c <= "\xff" for c in literal)):
        raise RecipeError("pattern {}: not a value the load generator can send in {} "
                          "(give a literal{})".format(
                              _show(pattern), header,
                              ", name=value" if header.lower() == "cookie" else ""))
    return literal
