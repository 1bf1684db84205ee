# -*- test-case-name: tests.test_rules -*-
"""
The data files of the rule format: C{rule.json} (the JSON Schema of a rule) and
C{dataplane.json} (the data plane's defaults and limits). This is their one reader:
L{amalgam8.rules} validates with them and the proxy's renderer writes the defaults into the
proxy's configuration.
"""

import json
from importlib import resources

__all__ = ["RULE_SCHEMA_BYTES", "DATAPLANE_DEFAULTS"]


def _read(name):
    return resources.files(__name__).joinpath(name).read_bytes()


RULE_SCHEMA_BYTES = _read("rule.json")
"""The rule schema as shipped (served as it is by C{GET /v1/schema})."""

DATAPLANE_DEFAULTS = json.loads(_read("dataplane.json"))
"""The data plane's defaults and limits (C{lb}, C{retries_max}, timeouts, ejection, budget)."""
