"""
The Lua unit tests of the proxy (C{tests/lua/*_spec.lua}): the router, the compile step and
the balancer run under plain Lua with busted (Debian's C{lua-busted}) and the C{ngx} stand-in
C{tests/lua/ngx_stub.lua}, without nginx. This module runs busted as a child process so that
the Trial suite (C{make test}) runs them too, and fails with busted's output when a spec fails.
"""

import os
import re
import shutil

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = os.path.join(ROOT, "tests", "lua")
BUSTED = shutil.which("busted")

_SUMMARY = re.compile(rb"(\d+) successes? / (\d+) failures? / (\d+) errors? / (\d+) pending")


class LuaUnitTests(TestCase):
    """busted over C{tests/lua}."""

    timeout = 120

    def setUp(self):
        if BUSTED is None:
            # Only where busted is not installed. `make test` installs it (TEST_DEBS) and
            # sets A8_REQUIRE_PROXY, so there a missing busted fails instead.
            message = "needs busted (Debian: apt-get install lua-busted lua-rex-pcre2)"
            if os.environ.get("A8_REQUIRE_PROXY"):
                self.fail(message)
            raise SkipTest(message)

    async def test_specs_pass(self):
        """Every spec passes, and there are specs of the router, the compile step and the
        balancer."""
        specs = sorted(name for name in os.listdir(SPECS) if name.endswith("_spec.lua"))
        self.assertIn("balancer_spec.lua", specs)
        self.assertIn("router_spec.lua", specs)
        out, err, code = await getProcessOutputAndValue(
            BUSTED, ["--output=plainTerminal", "tests/lua"], env=dict(os.environ),
            path=ROOT, reactor=reactor)
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, "busted failed:\n" + output)
        summary = _SUMMARY.search(out)
        self.assertIsNotNone(summary, "no busted summary in:\n" + output)
        successes, failures, errors, pending = (int(n) for n in summary.groups())
        self.assertEqual((failures, errors, pending), (0, 0, 0), output)
        self.assertGreaterEqual(successes, 30, output)
