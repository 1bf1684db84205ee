# -*- test-case-name: tests.test_rules -*-
"""
The rule format: its JSON Schema (draft 2020-12, C{amalgam8/schemas/rule.json}), the checks a
schema cannot express, and the defaults the data plane applies. The controller, a8ctl and
Gremlin all validate rules here.

Rules are stored and returned as they were written (plus a server-assigned C{id} when the
client gave none); defaults are applied by readers (the proxy), never written into a rule.
"""

import json
import re
import uuid
from importlib import resources

from jsonschema import Draft202012Validator

from amalgam8.errors import InvalidRequest

__all__ = [
    "SCHEMA",
    "InvalidRule",
    "validate_rule",
    "validate_rules",
    "sort_key",
    "kind_of",
]

SCHEMA_BYTES = resources.files("amalgam8.schemas").joinpath("rule.json").read_bytes()
SCHEMA = json.loads(SCHEMA_BYTES)
_validator = Draft202012Validator(SCHEMA)
WEIGHT_SLACK = 1e-9


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
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as e:
                _fail(index, path + ["headers", name], "not a valid regular expression: {}"
                      .format(e))


def _check_route(route, index):
    backends = route["backends"]
    total = 0.0
    seen = {}
    for n, backend in enumerate(backends):
        total += backend.get("weight", 0)
        key = (backend.get("name"), frozenset(backend["tags"]))
        if key in seen:
            _fail(index, ["route", "backends", n, "tags"],
                  "same tags as backend {}".format(seen[key]))
        seen[key] = n
        if "lb" in backend and "lb_type" in backend and backend["lb"] != backend["lb_type"]:
            _fail(index, ["route", "backends", n, "lb_type"], "disagrees with lb")
    if total > 1 + WEIGHT_SLACK:
        _fail(index, ["route", "backends"], "weights add up to {:g}, more than 1".format(total))


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
