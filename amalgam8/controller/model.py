# -*- test-case-name: tests.test_controller_store -*-
"""
A namespace's rules at one revision, with the encodings readers ask for computed once.
"""

import functools
import json

import attrs

from amalgam8.rules import kind_of, sort_key

__all__ = ["RuleSet", "encode"]

encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _sorted(rules):
    return tuple(sorted(rules, key=sort_key))


@attrs.frozen(weakref_slot=False)
class RuleSet:
    """
    @ivar revision: the namespace's revision (0 before its first change).
    @ivar rules: the rules (dicts, never changed in place), priority descending then id.
    """

    revision: int = 0
    rules: tuple = attrs.field(default=(), converter=_sorted)

    @functools.cached_property
    def by_id(self):
        return {rule["id"]: rule for rule in self.rules}

    def select(self, ids=None, tags=(), destinations=None, kind=None):
        """
        The rules that pass the filters: C{ids} and C{destinations} are sets (any of them),
        C{tags} a collection the rule must carry all of, C{kind} C{"route"} or C{"action"}.
        """
        result = []
        for rule in self.rules:
            if ids is not None and rule["id"] not in ids:
                continue
            if destinations is not None and rule["destination"] not in destinations:
                continue
            if tags:
                carried = rule.get("tags", ())
                if not all(tag in carried for tag in tags):
                    continue
            if kind is not None and kind_of(rule) != kind:
                continue
            result.append(rule)
        return result
