# -*- test-case-name: tests.test_durations -*-
"""
Durations as Amalgam8 0.4 wrote them: plain seconds (``30``, ``0.5``) or Go-style units
(``30s``, ``1m30s``, ``500ms``, ``1h``).
"""

import math
import re

__all__ = ["parse_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")
_PLAIN = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text):
    """
    Parse a duration into seconds.

    @param text: C{"30"}, C{"0.5"}, C{"1m30s"}, C{"500ms"}; a non-negative int or float is
        taken as seconds.
    @return: the number of seconds as a float.
    @raise ValueError: for anything else (negative, empty, unknown unit, not finite).
    """
    if isinstance(text, bool):
        raise ValueError("not a duration: {!r}".format(text))
    if isinstance(text, (int, float)):
        seconds = float(text)
    elif isinstance(text, str):
        value = text.strip()
        if _PLAIN.fullmatch(value):
            seconds = float(value)
        else:
            seconds = 0.0
            position = 0
            for match in _PART.finditer(value):
                if match.start() != position:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                position = match.end()
            if position == 0 or position != len(value):
                raise ValueError("not a duration: {!r}".format(text))
    else:
        raise ValueError("not a duration: {!r}".format(text))
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("not a duration: {!r}".format(text))
    return seconds
