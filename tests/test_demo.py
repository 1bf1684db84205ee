"""
The end-to-end test of the whole mesh: the bookinfo demo (scripts/demo.py) run with short
delays and every step checked: registry, controller, six bookinfo services under their
sidecars and a gateway, driven by a8ctl, the bookinfo Gremlin recipe included
(C{a8ctl recipe-run} against reviews v2, then v3).
"""

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.helpers import child_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "scripts", "demo.py")


class _Collect(ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.ended = Deferred()

    def childDataReceived(self, fd, data):
        self.out += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class DemoTests(TestCase):
    timeout = 300

    async def test_demo_steps(self):
        """Every step of the demo holds: v1 for all; jason on v2; jason's delayed ratings
        time his reviews out while others are unaffected; the bookinfo recipe fails the
        page's time bound and productpage -> reviews on v2, passes the page's checks on v3
        with only reviews -> ratings failing, and leaves no rule behind in either run; the
        shift to v3 follows each step's split within a statistical bound; everything
        stops."""
        protocol = _Collect()
        process = reactor.spawnProcess(
            protocol, sys.executable, [sys.executable, DEMO, "--fast", "--check", "--json"],
            env=child_environment({}), path=ROOT)

        def kill():
            try:
                process.signalProcess("INT")
            except Exception:
                pass

        self.addCleanup(kill)
        code = await protocol.ended
        output = protocol.out.decode("utf-8", "replace")
        results = [json.loads(line[len("RESULT "):]) for line in output.splitlines()
                   if line.startswith("RESULT ")]
        self.assertEqual(code, 0, output[-3000:])
        self.assertEqual(sorted({r["step"] for r in results}), [1, 2, 3, 4, 5],
                         output[-3000:])
        self.assertEqual([r for r in results if not r["ok"]], [])
        # The recipe step: three assertions (outcomes, verdict, rules removed) per run.
        recipe = [r["check"] for r in results if r["step"] == 4]
        self.assertEqual(len(recipe), 6, recipe)
        self.assertEqual([c.split(":")[0] for c in recipe], ["v2"] * 3 + ["v3"] * 3)
        self.assertEqual(len([r for r in results if r["step"] == 5]), 4)
        self.assertIn("FAIL", output)
        self.assertIn("PASS", output)
        self.assertIn("Done: everything stopped.", output)
