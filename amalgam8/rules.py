# -*- test-case-name: tests.test_rules -*-
"""
The rule format, and its only validator: the JSON Schema (draft 2020-12,
C{amalgam8/schemas/rule.json}), the checks a schema cannot express, and the data plane's
defaults and limits (C{amalgam8/schemas/dataplane.json}, which the proxy's configuration is
rendered from too). The controller, a8ctl and Gremlin all validate rules here.

Header patterns are compiled by the regular-expression engine the proxy's C{ngx.re} runs,
with the options it uses (L{PATTERN_ENGINE}), so that a rule the controller accepts compiles
in every proxy.

Rules are stored and returned as they were written (plus a server-assigned C{id} when the
client gave none); defaults are applied by readers (the proxy), never written into a rule.
"""

import ctypes
import ctypes.util
import json
import uuid

from jsonschema import Draft202012Validator

from amalgam8.errors import InvalidRequest
from amalgam8.schemas import DATAPLANE_DEFAULTS, RULE_SCHEMA_BYTES

__all__ = [
    "DATAPLANE_DEFAULTS",
    "PATTERN_ENGINE",
    "WEIGHT_SLACK",
    "SCHEMA",
    "InvalidRule",
    "pattern_error",
    "weight_in_range",
    "weights_exceed_one",
    "validate_rule",
    "validate_rules",
    "sort_key",
    "kind_of",
]

SCHEMA_BYTES = RULE_SCHEMA_BYTES
SCHEMA = json.loads(SCHEMA_BYTES)
_validator = Draft202012Validator(SCHEMA)


WEIGHT_SLACK = 1e-9
"""How far above 1 backend weights may add up (rounding: 0.1 + 0.2 + 0.7)."""


class _Pcre:
    """
    The PCRE library the proxy's C{ngx.re} calls: Debian 12's lua-nginx-module (0.10.23)
    links C{libpcre.so.3} (PCRE 8.x; nginx itself links PCRE2, which C{ngx.re} does not use).
    Our Lua passes the flags C{"jo"} (C{"j"} for its check): JIT and the compile cache, which
    add no compile options, so the proxy calls C{pcre_compile(pattern, 0, ...)} with no
    character tables; a failed JIT study is not an error there, so it is not one here.
    """

    name = "PCRE"

    def __init__(self, soname="libpcre.so.3"):
        path = ctypes.util.find_library("pcre") or soname
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise ImportError(
                "amalgam8.rules checks header patterns with the proxy's regular-expression "
                "library, {} (Debian: libpcre3): {}".format(soname, e))
        lib.pcre_compile.restype = ctypes.c_void_p
        lib.pcre_compile.argtypes = [ctypes.c_char_p, ctypes.c_int,
                                     ctypes.POINTER(ctypes.c_char_p),
                                     ctypes.POINTER(ctypes.c_int), ctypes.c_void_p]
        lib.pcre_version.restype = ctypes.c_char_p
        self._compile = lib.pcre_compile
        self._free = ctypes.CFUNCTYPE(None, ctypes.c_void_p).in_dll(lib, "pcre_free")
        self.version = lib.pcre_version().decode("ascii", "replace")

    def error(self, pattern):
        """L{None} when C{pattern} compiles in the proxy, else why not."""
        try:
            data = pattern.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode"
        message = ctypes.c_char_p()
        offset = ctypes.c_int()
        # Like the proxy, which hands PCRE the Lua string: it ends at a NUL byte.
        code = self._compile(data, 0, ctypes.byref(message), ctypes.byref(offset), None)
        if code:
            self._free(code)
            return None
        return "{} at offset {}".format(
            (message.value or b"error").decode("utf-8", "replace"), offset.value)


PATTERN_ENGINE = _Pcre()
"""The engine header patterns are checked with: C{.error(pattern)}, C{.name}, C{.version}."""


class InvalidRule(InvalidRequest):
    """A rule that fails the schema or a semantic check (C{error_invalid_rule})."""

    error_id = "error_invalid_rule"


def _path(parts):
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += "[{}]".format(part)
        else:
            text += ("." if text else "") + str(part)
    return text or "(rule)"


def _fail(index, path, message):
    raise InvalidRule("rule {}: {}: {}".format(index, _path(path), message))


def _schema_message(error):
    if error.validator == "oneOf" and not error.absolute_path:
        return "a rule needs exactly one of route or actions"
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties", "unknown fields")
    if error.validator == "required":
        return error.message
    if error.validator == "enum":
        return "{!r} is not one of {}".format(error.instance, ", ".join(
            map(str, error.validator_value)))
    return error.message


def validate_rule(rule, index=0):
    """
    Check one rule.

    @param rule: the decoded JSON of one rule.
    @param index: its index in the request, for the message.
    @raise InvalidRule: naming the index, the field path and the problem.
    """
    errors = sorted(_validator.iter_errors(rule),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # The deepest error is the most specific one.
        error = max(errors, key=lambda e: len(e.absolute_path))
        _fail(index, error.absolute_path, _schema_message(error))
    _check_match(rule.get("match"), index)
    route = rule.get("route")
    if route is not None:
        _check_route(route, index)
    for n, action in enumerate(rule.get("actions", ())):
        if action["action"] == "abort":
            code = action["return_code"]
            if not (code < 0 or 100 <= code <= 599):
                _fail(index, ["actions", n, "return_code"],
                      "must be an HTTP status 100-599, or -1 to -5 to reset the connection")
        if action["action"] == "delay" and "stddev" in action:
            if action.get("distribution") != "normal":
                _fail(index, ["actions", n, "stddev"],
                      "only a normal distribution takes a stddev")


def _check_match(match, index):
    if match is None:
        return
    conditions = [(["match"], match)]
    for combinator in ("all", "any", "none"):
        for n, condition in enumerate(match.get(combinator, ())):
            conditions.append((["match", combinator, n], condition))
    for path, condition in conditions:
        for name, pattern in condition.get("headers", {}).items():
            problem = pattern_error(pattern)
            if problem is not None:
                _fail(index, path + ["headers", name], problem)


def pattern_error(pattern):
    """
    L{None} when the header pattern C{pattern} compiles in the proxy, else a message for
    people ("not a valid regular expression ...").
    """
    problem = PATTERN_ENGINE.error(pattern)
    if problem is None:
        return None
    return "not a valid regular expression for the proxy ({} {}): {}".format(
        PATTERN_ENGINE.name, PATTERN_ENGINE.version, problem)


def _check_route(route, index):
    backends = route["backends"]
    total = 0.0
    seen = {}
    retries_max = DATAPLANE_DEFAULTS["retries_max"]
    if route.get("http_req_retries", 0) > retries_max:
        _fail(index, ["route", "http_req_retries"], "at most {}".format(retries_max))
    for n, backend in enumerate(backends):
        total += backend.get("weight", 0)
        if backend.get("retries", 0) > retries_max:
            _fail(index, ["route", "backends", n, "retries"], "at most {}".format(retries_max))
        key = (backend.get("name"), frozenset(backend["tags"]))
        if key in seen:
            _fail(index, ["route", "backends", n, "tags"],
                  "same tags as backend {}".format(seen[key]))
        seen[key] = n
        if "lb" in backend and "lb_type" in backend and backend["lb"] != backend["lb_type"]:
            _fail(index, ["route", "backends", n, "lb_type"], "disagrees with lb")
    if weights_exceed_one(total):
        _fail(index, ["route", "backends"], "weights add up to {:g}, more than 1".format(total))


def weight_in_range(weight):
    """Whether one backend's C{weight} is allowed (the schema's bounds: 0 < w <= 1)."""
    bounds = SCHEMA["$defs"]["backend"]["properties"]["weight"]
    return bounds["exclusiveMinimum"] < weight <= bounds["maximum"]


def weights_exceed_one(total):
    """Whether backend weights adding up to C{total} are too many (SPEC A3)."""
    return total > 1 + WEIGHT_SLACK


def validate_rules(body, require_id=False, assign_ids=True):
    """
    Validate a request body C{{"rules": [...]}} as a whole (all or nothing).

    @param require_id: every rule must carry an C{id} (C{PUT /v1/rules}).
    @param assign_ids: give a fresh UUID to each rule without an C{id}.
    @return: the list of rules, with ids.
    @raise InvalidRequest: C{error_no_rules_provided} or L{InvalidRule}.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be an object {\"rules\": [...]}")
    unknown = set(body) - {"rules"}
    if unknown:
        raise InvalidRequest("unknown fields in the body: {}".format(", ".join(sorted(unknown))))
    rules = body.get("rules")
    if not isinstance(rules, list):
        raise InvalidRequest("the body must be an object {\"rules\": [...]}")
    if not rules:
        raise NoRules("no rules provided")
    ids = set()
    result = []
    for index, rule in enumerate(rules):
        validate_rule(rule, index)
        if require_id and "id" not in rule:
            _fail(index, ["id"], "an id is required here")
        if "id" in rule:
            if rule["id"] in ids:
                _fail(index, ["id"], "id {} given twice".format(rule["id"]))
            ids.add(rule["id"])
        elif assign_ids:
            rule = dict(rule, id=str(uuid.uuid4()))
        result.append(rule)
    return result


class NoRules(InvalidRequest):
    """An empty list of rules (C{error_no_rules_provided})."""

    error_id = "error_no_rules_provided"


def kind_of(rule):
    """C{"route"} or C{"action"}."""
    return "route" if "route" in rule else "action"


def sort_key(rule):
    """Listing order: priority descending, then id."""
    return (-rule.get("priority", 0), rule["id"])
