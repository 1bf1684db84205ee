# -*- test-case-name: tests.test_gremlin_e2e -*-
"""
End-to-end tests of C{a8ctl recipe-run} (SPEC A6, B2, B5) on a live mesh: the registry, the
controller, C{hello:v1} and C{hello:v2} under register-only sidecars and the proxy-only
C{caller} of L{tests.test_sidecar_integration.Mesh}, all real processes on 127.0.0.1. The
recipe is a two-service chain, C{caller -> hello}, with an C{abort_requests} fault (503) on
its one edge; a8ctl runs as its console script, a child process of the test.

Each test asserts what the run printed and exited with, and what it left on the controller
(rules, revision, trace records): a run never leaves a rule of its recipe behind.
"""

import json
import os
import signal
import sys
import xml.etree.ElementTree as ET

from twisted.internet import reactor

from tests.helpers import ServerProcess, child_environment
from tests.test_sidecar_integration import LOCAL, Mesh, MeshTestCase, alive

A8CTL = os.path.join(os.path.dirname(sys.executable), "a8ctl")

TOPOLOGY = {"services": [{"name": "caller"}, {"name": "hello"}],
            "dependencies": {"caller": ["hello"]}}
ABORT = {"gremlins": [{"scenario": "abort_requests", "source": "caller", "dest": "hello",
                       "errorcode": 503, "abortprobability": 1}]}
#: The checks a healthy caller -> hello passes; under ABORT the first one fails.
HEALTHY = [
    {"name": "http_status", "source": "caller", "dest": "hello", "status": 200},
    {"name": "bounded_response_time", "source": "caller", "dest": "hello",
     "max_latency": "2s"},
]
#: Under ABORT: http_status 200 fails, http_status 503 and the time bound pass.
UNDER_ABORT = HEALTHY + [
    {"name": "http_status", "source": "caller", "dest": "hello", "status": [503]},
]
REQUESTS = 8


def _a8ctl_command():
    """The console script a8ctl, or the same entry point under this interpreter."""
    if os.access(A8CTL, os.X_OK):
        return [A8CTL]
    return [sys.executable, "-c", "from amalgam8.cli.main import entry; entry()"]


class RecipeRunMixin:
    """Writing recipe files and running C{a8ctl recipe-run} against the test's controller."""

    def write(self, name, value):
        """Write C{value} as JSON (or text, when a str) to C{name} in the test's directory."""
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(value if isinstance(value, str) else json.dumps(value))
        return path

    def recipe_files(self, scenarios=ABORT, checks=UNDER_ABORT):
        return ["--topology", self.write("topology.json", TOPOLOGY),
                "--scenarios", self.write("scenarios.json", scenarios),
                "--checks", self.write("checks.json", {"checks": checks})]

    def load(self):
        """Send the test requests through the caller's proxy."""
        return ["--load", str(REQUESTS), "--concurrency", "4", "--gateway",
                "http://127.0.0.1:{}/hello/x".format(self.caller.proxy_port)]

    def a8ctl(self, *args):
        """Start a8ctl ARGS (a L{ServerProcess} collecting its lines); stopped in cleanup."""
        process = ServerProcess(reactor, "\0")
        command = _a8ctl_command() + list(args)
        env = child_environment({"A8_CONTROLLER_URL": self.controller_url,
                                 "A8_REGISTRY_URL": getattr(self, "registry_url",
                                                            "http://127.0.0.1:1")})
        reactor.spawnProcess(process, command[0], command, env=env, path=self.directory)
        self.processes.append(("a8ctl", process))
        return process

    async def recipe_run(self, *args, timeout=45):
        """Run C{a8ctl recipe-run ARGS} to its end: C{(exit code, stdout, stderr)}."""
        process = self.a8ctl("recipe-run", "--timeout", "30", *args)
        code, _ = await process.ended(timeout=timeout)
        return code, "\n".join(process.stdout), "\n".join(process.stderr)

    async def rules(self):
        """C{(revision, rules)} of the controller."""
        code, body = await self.get_json(self.controller_url + "/v1/rules")
        self.assertEqual(code, 200, body)
        return body["revision"], body["rules"]

    async def recipe_records(self):
        """Every trace record of any recipe at the controller."""
        records, after = [], 0
        while True:
            code, body = await self.get_json(
                self.controller_url + "/v1/traces?log_key=gremlin_recipe_id&limit=1000"
                "&after={}".format(after))
            self.assertEqual(code, 200, body)
            records += body["records"]
            if len(body["records"]) < 1000:
                return records
            after = body["next"]

    def report(self, code, out, err):
        """The --json report on stdout, failing the test with all output if it is none."""
        try:
            return json.loads(out)
        except ValueError:
            self.fail("no JSON report (exit {}):\nstdout: {}\nstderr: {}\n{}".format(
                code, out, err, self.describe()))


def _outcomes(results):
    return sorted((r["name"], r["source"], r["dest"], r["passed"]) for r in results)


class RecipeRunTests(RecipeRunMixin, Mesh):
    """C{a8ctl recipe-run} on caller -> hello."""

    timeout = 60

    async def test_fault_fails_the_checks_it_breaks(self):
        """
        Under a 503 abort on caller -> hello, http_status 200 fails and http_status 503 and
        the time bound pass: exit status 1, the --json report says so check by check, the
        --junit file has one testcase per check and a failure element for the failed
        one only, and the recipe's rules are gone afterwards.
        """
        before, _ = await self.rules()
        junit = os.path.join(self.directory, "junit.xml")
        code, out, err = await self.recipe_run(*self.recipe_files() + self.load()
                                               + ["--json", "--junit", junit])
        report = self.report(code, out, err)
        self.assertEqual(code, 1, (out, err))
        self.assertFalse(report["passed"])
        self.assertIsNone(report["baseline"])
        self.assertEqual(_outcomes(report["results"]), sorted([
            ("http_status", "caller", "hello", False),
            ("bounded_response_time", "caller", "hello", True),
            ("http_status", "caller", "hello", True)]))
        self.assertEqual(report["load"]["sent"], REQUESTS)
        self.assertEqual(report["load"]["statuses"], {"503": REQUESTS})
        failed = [r for r in report["results"] if not r["passed"]]
        self.assertIn("503", failed[0]["seen"])

        root = ET.parse(junit).getroot()
        cases = list(root.iter("testcase"))
        self.assertEqual(len(cases), len(UNDER_ABORT), ET.tostring(root))
        failures = [case for case in cases if case.find("failure") is not None]
        self.assertEqual(len(failures), 1, ET.tostring(root))
        self.assertIn("http_status", failures[0].get("name") + failures[0].get("classname", ""))
        self.assertEqual([case.find("error") for case in cases], [None] * len(cases))

        revision, rules = await self.rules()
        self.assertEqual(rules, [])
        self.assertGreater(revision, before + 1, "the rules were pushed, then deleted")
        records = await self.recipe_records()
        self.assertTrue(records)
        self.assertEqual({r["gremlin_recipe_id"] for r in records}, {report["recipe_id"]})
        self.assertEqual({r["status"] for r in records}, {503})

    async def test_baseline(self):
        """
        --baseline on a healthy mesh passes the baseline (trace-only rules) and then reports
        the fault: exit 1. With hello routed to a version that has no instance the
        baseline fails already: exit 2, and no fault rule was pushed (no record of an
        abort), and no rule of the recipe is left.
        """
        code, out, err = await self.recipe_run(*self.recipe_files(checks=HEALTHY)
                                               + self.load() + ["--baseline", "--json"])
        report = self.report(code, out, err)
        self.assertEqual(code, 1, (out, err))
        self.assertTrue(report["baseline"]["passed"], report["baseline"])
        self.assertEqual(_outcomes(report["baseline"]["results"]), sorted([
            ("http_status", "caller", "hello", True),
            ("bounded_response_time", "caller", "hello", True)]))
        self.assertEqual(_outcomes(report["results"]), sorted([
            ("http_status", "caller", "hello", False),
            ("bounded_response_time", "caller", "hello", True)]))
        self.assertEqual((await self.rules())[1], [])

        await self.put_rules("routes", self.route("v9"))
        await self.applied(await self.revision())
        seen = {r["gremlin_recipe_id"] for r in await self.recipe_records()}
        code, out, err = await self.recipe_run(*self.recipe_files(checks=HEALTHY)
                                               + self.load() + ["--baseline"])
        self.assertEqual(code, 2, (out, err))
        self.assertIn("baseline", (out + err).lower())
        records = [r for r in await self.recipe_records()
                   if r["gremlin_recipe_id"] not in seen]
        self.assertTrue(records, "the baseline's requests left no trace record")
        self.assertEqual({r["status"] for r in records}, {503})
        self.assertEqual([r for r in records if "abort" in r.get("actions", "")], [])
        _, rules = await self.rules()
        self.assertEqual([rule["route"] for rule in rules], [self.route("v9")[0]["route"]])

    async def test_cleanup_when_the_load_fails_or_is_interrupted(self):
        """
        A load script that exits 3 makes the run exit 2; SIGINT to a8ctl while its load
        script runs stops the script and the run (exit 130); both times the rules the run
        pushed are deleted.
        """
        before, _ = await self.rules()
        failing = self.write("load_fails.py", "import sys\nsys.exit(3)\n")
        code, out, err = await self.recipe_run(
            *self.recipe_files() + ["--run-load-script", "{} {}".format(sys.executable,
                                                                         failing)])
        self.assertEqual(code, 2, (out, err))
        self.assertIn("3", out + err)
        revision, rules = await self.rules()
        self.assertEqual(rules, [])
        self.assertGreater(revision, before + 1, "the rules were pushed, then deleted")

        started = os.path.join(self.directory, "load-started")
        hanging = self.write("load_hangs.py", (
            "import os, sys, time\n"
            "with open(sys.argv[1], 'w') as f:\n"
            "    f.write(str(os.getpid()))\n"
            "time.sleep(30)\n"))
        process = self.a8ctl("recipe-run", "--timeout", "30", *self.recipe_files()
                             + ["--run-load-script", "{} {} {}".format(
                                 sys.executable, hanging, started)])

        def script_pid():
            with open(started) as f:
                return int(f.read())
        pid = await self.until(script_pid, "the load script to start")
        self.addCleanup(self.kill_if_alive, pid)
        _, rules = await self.rules()
        self.assertTrue(rules, "the recipe's rules are pushed before its load")
        process.transport.signalProcess("INT")
        code, _ = await process.ended(timeout=15)
        self.assertEqual(code, 130, process.stdout + process.stderr)
        self.assertEqual((await self.rules())[1], [])
        self.assertFalse(alive(pid), "the load script outlived the interrupted run")

    def kill_if_alive(self, pid):
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class BadRecipeTests(RecipeRunMixin, MeshTestCase):
    """A bad recipe file, with only a controller: nothing is pushed."""

    timeout = 30

    async def setUp(self):
        MeshTestCase.setUp(self)
        controller = self.spawn("controller", ["a8controller", "--listen", LOCAL])
        _, port = await controller.listening()
        self.controller_url = "http://127.0.0.1:{}".format(port)

    async def test_bad_check_entry(self):
        """
        A check without its required field: exit 2, one line on stderr naming the file, the
        entry and the field, no traceback, and the controller's revision is unchanged.
        """
        before = await self.rules()
        checks = HEALTHY + [{"name": "http_status", "source": "caller", "dest": "hello"}]
        code, out, err = await self.recipe_run(
            *self.recipe_files(checks=checks) + ["--load", "1", "--gateway",
                                                 "http://127.0.0.1:1/hello/x"])
        self.assertEqual(code, 2, (out, err))
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, err)
        self.assertIn("checks.json", lines[0])
        self.assertIn("status", lines[0])
        self.assertIn("checks[2]", lines[0], "names the entry")
        self.assertNotIn("Traceback", out + err)
        self.assertEqual(await self.rules(), before)
