"""
Tests for C{a8ctl recipe-run} (L{amalgam8.cli.recipe}): run in-process through L{dispatch}
against the real controller API (in memory, StubTreq, a Clock) and a gateway that stands in
for a mesh (its test requests leave the trace records proxies would ship).
"""

import json
import xml.etree.ElementTree as ET

from treq.testing import StubTreq
from twisted.web.resource import Resource

from amalgam8.auth import Authenticator
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.traces import TraceBuffer
from amalgam8.gremlin.model import LOG_KEY
from tests.test_a8ctl import A8ctlTestCase, Hosts
from tests.test_gremlin_run import ABORT, CHECKS, TOPOLOGY


class Gateway(Resource):
    """
    A mesh behind a gateway: each request leaves the records of gateway -> productpage
    (200) and productpage -> reviews (the abort's code while the recipe's abort rule is
    live, else 200), shipped half a second later.
    """

    isLeaf = True

    def __init__(self, case):
        Resource.__init__(self)
        self.case = case
        self.seen = []
        self.log_path = None    # write the records to this access log instead

    def render_GET(self, request):
        rid = request.getHeader(b"x-request-id").decode()
        self.seen.append(rid)
        actions = [a for r in self.case.server_rules() for a in r.get("actions", [])]
        traced = [a["log_value"] for a in actions if a["action"] == "trace"]
        abort = [a["return_code"] for a in actions if a["action"] == "abort"]
        if traced:
            base = {"timestamp_in_ms": int(self.case.clock.seconds() * 1000),
                    "request_id": rid, "request_time": 0.01, LOG_KEY: traced[0]}
            records = [dict(base, src="gateway:", dst="productpage:v1", status=200),
                       dict(base, src="productpage:v1", dst="reviews:v1",
                            status=abort[0] if abort else 200)]
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
            else:
                self.case.clock.callLater(0.5, self.case.buffer.add, "default", records)
        return b"ok"


class RecipeRunTests(A8ctlTestCase):
    def setUp(self):
        A8ctlTestCase.setUp(self)
        self.buffer = TraceBuffer()
        auth = Authenticator(modes=self.modes, clock=self.clock)
        self.controller_http = StubTreq(ControllerAPI(self.rules, auth, self.clock,
                                                      traces=self.buffer).resource())
        self.gateway = Gateway(self)
        self.gateway_http = StubTreq(self.gateway)
        self.http = Hosts(registry=self.registry_http, controller=self.controller_http,
                          gateway=self.gateway_http)

    def flush(self):
        A8ctlTestCase.flush(self)
        for _ in range(3):
            self.gateway_http.flush()
            self.controller_http.flush()

    def files(self, topology=TOPOLOGY, scenarios=ABORT, checks=CHECKS):
        paths = []
        for name, data in (("topology", topology), ("scenarios", scenarios),
                           ("checks", checks)):
            path = self.mktemp() + ".json"
            with open(path, "w") as f:
                f.write(json.dumps(data) if not isinstance(data, str) else data)
            paths += ["--" + name, path]
        return paths

    def run_recipe(self, *argv, **files):
        d, out, err = self.start("recipe-run", *(self.files(**files) + list(argv)))
        for _ in range(1200):
            self.flush()
            if d.called:
                break
            self.clock.advance(0.1)
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def test_fails(self):
        """
        A check fails: the table says which and what was seen, exit 1, and the rules are
        gone.
        """
        code, out, err = self.run_recipe("--load", "4", "--gateway", "http://gateway/pp/")
        self.assertEqual((code, err), (1, ""))
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("Recipe "), lines[0])
        self.assertIn("| http_status | gateway     | productpage | PASS", out)
        self.assertIn("| http_status | productpage | reviews     | FAIL", out)
        self.assertEqual(lines[-1], "1 of 2 checks failed.")
        self.assertEqual(self.server_rules(), [])
        self.assertEqual(len(self.gateway.seen), 4)

    def test_passes(self):
        code, out, err = self.run_recipe("--load", "4", "--gateway", "http://gateway/pp/",
                                         checks={"checks": [CHECKS["checks"][0]]})
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines()[-1], "All 1 checks passed.")

    def test_json(self):
        code, out, err = self.run_recipe("--load", "3", "--gateway", "http://gateway/pp/",
                                         "--json")
        self.assertEqual(code, 1)
        data = json.loads(out)
        self.assertEqual(data["passed"], False)
        self.assertEqual(data["exit_status"], 1)
        self.assertEqual([r["passed"] for r in data["results"]], [True, False])
        self.assertEqual(data["load"]["sent"], 3)
        self.assertEqual(data["baseline"], None)
        self.assertEqual(data["records"], 6)

    def test_junit(self):
        path = self.mktemp()
        code, out, err = self.run_recipe("--load", "2", "--gateway", "http://gateway/pp/",
                                         "--junit", path)
        self.assertEqual(code, 1)
        root = ET.parse(path).getroot()
        cases = root.findall("testsuite/testcase")
        self.assertEqual(len(cases), 2)
        self.assertEqual([c.find("failure") is not None for c in cases], [False, True])

    def test_bad_file(self):
        """A bad recipe file: one line naming it, exit 2, nothing pushed."""
        code, out, err = self.run_recipe(
            "--load", "2", "--gateway", "http://gateway/pp/",
            scenarios={"gremlins": [{"scenario": "delay_requests", "source": "productpage",
                                     "dest": "reviews", "delaytime": "soon"}]})
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertTrue(err.startswith("a8ctl: "), err)
        self.assertIn("gremlins[0]", err)
        self.assertIn("delaytime", err)
        self.assertEqual(self.revision(), 0)
        self.assertEqual(self.gateway.seen, [])

    def test_not_json(self):
        code, out, err = self.run_recipe("--load", "2", "--gateway", "http://gateway/pp/",
                                         topology="{not json")
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1)
        self.assertEqual(self.revision(), 0)

    def test_usage(self):
        """Options that cannot run: exit 2, one line, nothing pushed."""
        for argv, message in (
                ([], "give the test traffic: --load N --gateway URL, or "
                     "--run-load-script CMD"),
                (["--load", "3"], "--load needs --gateway URL"),
                (["--load", "0", "--gateway", "http://g/"], "--load must be at least 1"),
                (["--load", "3", "--gateway", "ftp://g/"],
                 "--gateway must be an http:// or https:// URL"),
                (["--load", "3", "--gateway", "http://g/", "--run-load-script", "x"],
                 "give one of --load and --run-load-script, not both"),
                (["--load", "3", "--gateway", "http://g/", "--concurrency", "0"],
                 "--concurrency must be at least 1")):
            code, out, err = self.run_recipe(*argv)
            self.assertEqual((code, out, err), (2, "", "a8ctl: " + message + "\n"), argv)
        self.assertEqual(self.revision(), 0)

    def test_missing_files(self):
        code, out, err = self.a8ctl("recipe-run", "--topology", "t.json")
        self.assertEqual((code, err), (2, "a8ctl: recipe-run needs --topology, --scenarios "
                                          "and --checks\n"))

    def test_unreadable_junit(self):
        code, out, err = self.run_recipe("--load", "2", "--gateway", "http://gateway/pp/",
                                         "--junit", "/nonexistent/dir/x.xml")
        self.assertEqual(code, 2)
        self.assertEqual(err, "a8ctl: cannot write --junit /nonexistent/dir/x.xml: no "
                              "directory /nonexistent/dir\n")
        self.assertEqual(self.revision(), 0)

    def test_logs(self):
        """--logs DIR: the records are read from the proxies' access logs there."""
        import os
        logs = self.mktemp()
        os.makedirs(os.path.join(logs, "productpage"))
        self.gateway.log_path = os.path.join(logs, "productpage", "access.log")
        code, out, err = self.run_recipe("--load", "3", "--gateway", "http://gateway/pp/",
                                         "--logs", logs, "--json")
        self.assertEqual((code, err), (1, ""))
        data = json.loads(out)
        self.assertEqual(data["records"], 6)
        self.assertEqual([r["passed"] for r in data["results"]], [True, False])
        self.assertEqual(len(self.successResultOf(self.buffer.query("default"))[0]), 0)

    def test_logs_missing(self):
        code, out, err = self.run_recipe("--load", "3", "--gateway", "http://gateway/pp/",
                                         "--logs", "/nonexistent/logs")
        self.assertEqual((code, err), (2, "a8ctl: --logs /nonexistent/logs: no such "
                                          "directory\n"))
        self.assertEqual(self.revision(), 0)
