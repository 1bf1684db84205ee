# -*- test-case-name: tests.test_a8ctl -*-
"""
What a8ctl prints: bordered, left-aligned tables (as a8ctl 0.3 printed them), JSON or
YAML for scripts.

A command answers with an L{Outcome}: the data (what C{--json} and C{-o yaml} print) and
the text a person reads (a table or a sentence).
"""

import json

import attrs
import yaml

__all__ = ["Outcome", "table", "render"]

FORMATS = ("table", "json", "yaml")


@attrs.define
class Outcome:
    """
    What a command did or found.

    @ivar data: JSON-able data, printed by C{--json} and C{-o yaml}.
    @ivar text: the lines printed by default (a table, or sentences).
    @ivar revision: the rule revision a change made (L{None} when nothing changed rules);
        C{--wait} waits until it is live on every proxy.
    @ivar changes: whether the command changes rules (so C{--wait} applies).
    @ivar status: the exit status (C{recipe-run}: 1 when a check failed).
    """

    data: object
    text: str
    revision: int = None
    changes: bool = False
    status: int = 0


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def table(headers, rows):
    """
    A table with C{+---+} borders, each column as wide as its widest cell, left-aligned.

    @param headers: the column titles.
    @param rows: lists of cells (L{None} is empty, a list is joined with commas).
    @return: the text, without a trailing newline.
    """
    rows = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for n, cell in enumerate(row):
            widths[n] = max(widths[n], len(cell))
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    lines = [rule, line(headers), rule]
    lines.extend(line(row) for row in rows)
    lines.append(rule)
    return "\n".join(lines)


def render(outcome, output):
    """The text to print for C{outcome} in format C{output} (table, json or yaml)."""
    if output == "json":
        return json.dumps(outcome.data, indent=2, sort_keys=False)
    if output == "yaml":
        return yaml.safe_dump(outcome.data, sort_keys=False, default_flow_style=False,
                              allow_unicode=True).rstrip("\n")
    return outcome.text
