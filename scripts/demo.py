#!/usr/bin/env python3
"""
The bookinfo demo (`make demo`): starts the registry, the controller, bookinfo's services
each under its own a8sidecar and a gateway sidecar, all on loopback with free ports, then walks
through routing and fault injection with a8ctl, printing each command and what the product
page now shows:

  1. every service routed to v1;
  2. the user jason routed to reviews v2;
  3. a 7 s delay from reviews v2 to ratings for jason: jason's page loses its reviews after
     productpage's 3 s timeout, other users are unaffected;
  4. the same fault as a Gremlin recipe (examples/bookinfo/gremlin) run with
     `a8ctl recipe-run` on jason's traffic: its checks FAIL on reviews v2; then jason is
     routed to reviews v3 (a 2.5 s ratings timeout) and the recipe, the delay now from v3,
     is run again: the page checks pass and only the cut call to ratings fails;
  5. a gradual shift of reviews to v3, measuring the real split at each step.

It stops everything it started at the end, on an error and on Ctrl-C.
`--keep` leaves the mesh running and prints its URLs and a8ctl settings. `--check` turns
every step into an assertion (exit status 1 when one fails) and `--fast` shortens the waits
(a 4 s delay, fewer recipe requests): the end-to-end test runs `demo.py --fast --check`.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(os.path.abspath(sys.executable))
TWISTD = os.path.join(BIN, "twistd")
A8CTL = os.path.join(BIN, "a8ctl")
BOOKINFO = os.path.join(ROOT, "examples", "bookinfo", "bookinfo.py")
RECIPE = os.path.join("examples", "bookinfo", "gremlin")       # relative to ROOT
MARKERS = re.compile(r"<!-- bookinfo: (.*?) -->")


class StepFailed(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, headers=None, timeout=30):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as e:
        return 0, str(e)


class Mesh:
    """Every process the demo starts, and how to reach them."""

    def __init__(self, workdir, fast):
        self.workdir = workdir
        self.fast = fast
        self.children = []
        self.registry = "http://127.0.0.1:{}".format(free_port())
        self.controller = "http://127.0.0.1:{}".format(free_port())
        self.gateway_port = free_port()
        self.gateway = "http://127.0.0.1:{}".format(self.gateway_port)
        self.env = dict(os.environ, A8_REGISTRY_URL=self.registry,
                        A8_CONTROLLER_URL=self.controller, A8_LOG_LEVEL="info")
        for key in ("A8_CONFIG", "A8_SERVICE", "A8_REGISTER", "A8_PROXY", "A8_AUTH_MODE"):
            self.env.pop(key, None)

    def spawn(self, name, argv, env=None):
        log = open(os.path.join(self.workdir, name + ".log"), "w")
        child = subprocess.Popen(argv, cwd=self.workdir, env=env or self.env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append((name, child))
        return child

    def twistd(self, name, plugin, args, env=None):
        return self.spawn(name, [TWISTD, "-n", "--pidfile=", plugin] + args, env)

    def sidecar(self, name, service, tags, register=True, proxy=True, app=None):
        port = free_port()
        proxy_port = free_port()
        env = dict(self.env, A8_SERVICE="{}:{}".format(service, tags) if tags else service,
                   A8_REGISTER=str(register).lower(), A8_PROXY=str(proxy).lower(),
                   A8_ENDPOINT_HOST="127.0.0.1", A8_ENDPOINT_PORT=str(port),
                   A8_PROXY_PORT=str(proxy_port if name != "gateway" else self.gateway_port),
                   A8_PROXY_ADMIN_PORT=str(free_port()), A8_DEBUG_PORT=str(free_port()),
                   A8_RUNTIME_DIR=os.path.join(self.workdir, name),
                   A8_STOP_TIMEOUT="10s")
        if name == "gateway":
            proxy_port = self.gateway_port
        argv = []
        if app is not None:
            argv = ["--", sys.executable, BOOKINFO, "--service", service, "--port", str(port),
                    "--proxy-url", "http://127.0.0.1:{}".format(proxy_port)]
            if tags:
                argv += ["--version", tags]
        return self.twistd(name, "a8sidecar", argv, env)

    def start(self):
        self.twistd("registry", "a8registry",
                    ["--listen", "tcp:{}:interface=127.0.0.1".format(self.registry.rsplit(":", 1)[1])])
        self.twistd("controller", "a8controller",
                    ["--listen", "tcp:{}:interface=127.0.0.1".format(self.controller.rsplit(":", 1)[1]),
                     "--database-type", "file",
                     "--database-host", os.path.join(self.workdir, "rules.json")])
        self.wait_for(self.registry + "/uptime", "the registry")
        self.wait_for(self.controller + "/health", "the controller")
        self.sidecar("productpage-v1", "productpage", "v1", app=True)
        self.sidecar("details-v1", "details", "v1", proxy=False, app=True)
        self.sidecar("reviews-v1", "reviews", "v1", proxy=False, app=True)
        self.sidecar("reviews-v2", "reviews", "v2", app=True)
        self.sidecar("reviews-v3", "reviews", "v3", app=True)
        self.sidecar("ratings-v1", "ratings", "v1", proxy=False, app=True)
        self.sidecar("gateway", "gateway", "", register=False)
        deadline = time.time() + 60
        while time.time() < deadline:
            self.check_children()
            _, body = http(self.registry + "/api/v1/instances")
            services = {(i["service_name"], tuple(i.get("tags", [])))
                        for i in json.loads(body)["instances"]}
            status, _ = http(self.gateway + "/productpage/health")
            if len(services) == 6 and status == 200:
                return
            time.sleep(0.3)
        raise StepFailed("the mesh did not come up within 60 s; logs in " + self.workdir)

    def wait_for(self, url, what):
        for _ in range(150):
            self.check_children()
            if http(url, timeout=2)[0] == 200:
                return
            time.sleep(0.1)
        raise StepFailed("{} did not start; logs in {}".format(what, self.workdir))

    def check_children(self):
        for name, child in self.children:
            if child.poll() is not None:
                raise StepFailed("{} exited with {}; see {}".format(
                    name, child.returncode, os.path.join(self.workdir, name + ".log")))

    def stop(self):
        for name, child in reversed(self.children):
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.time() + 15
        for name, child in self.children:
            try:
                child.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except OSError:
                    pass
                child.wait()


class Demo:
    def __init__(self, mesh, check, json_out):
        self.mesh = mesh
        self.check = check
        self.json_out = json_out
        self.failures = []

    def a8ctl(self, *args, statuses=(0,), echo=True, timeout=60):
        """
        Run a8ctl from the repository's root, printing the command and (with C{echo}) what
        it wrote; its exit status must be one of C{statuses}. Returns what it printed.
        """
        print("$ a8ctl " + " ".join(_quote(a) for a in args), flush=True)
        done = subprocess.run([A8CTL] + list(args), env=self.mesh.env, capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)
        for line in ((done.stdout if echo else "") + done.stderr).strip().splitlines():
            print("  " + line)
        if done.returncode not in statuses:
            raise StepFailed("a8ctl {} failed with status {}".format(args[0], done.returncode))
        return done.stdout

    def page(self, user=None):
        headers = {"Cookie": "user=" + user} if user else {}
        started = time.time()
        status, body = http(self.mesh.gateway + "/productpage/productpage", headers)
        found = MARKERS.search(body)
        markers = dict(part.split("=", 1) for part in found.group(1).split()) if found else {}
        markers["status"] = status
        markers["seconds"] = round(time.time() - started, 2)
        return markers

    def show(self, who, markers):
        print("  page for {:<7} -> reviews {:<11} version {:<5} stars {:<6} ({:.1f} s)".format(
            who, markers.get("reviews", "?"), markers.get("reviews-version", "?"),
            markers.get("stars", "?"), markers["seconds"]), flush=True)

    def expect(self, step, condition, text):
        result = {"step": step, "ok": bool(condition), "check": text}
        if self.json_out:
            print("RESULT " + json.dumps(result), flush=True)
        if not condition:
            self.failures.append("step {}: {}".format(step, text))
            print("  !! expected: " + text, flush=True)

    def settle(self):
        time.sleep(0.5)

    def run(self, fast):
        delay = 4 if fast else 7
        print("\n== 1. every service routed to v1", flush=True)
        for service in ("productpage", "details", "reviews", "ratings"):
            self.a8ctl("route-set", service, "--default", "v1", "--wait")
        jason, other = self.page("jason"), self.page()
        self.show("jason", jason)
        self.show("(guest)", other)
        self.expect(1, jason.get("reviews-version") == "v1" and other.get("reviews-version")
                    == "v1" and other.get("stars") == "none", "everyone sees reviews v1")

        print("\n== 2. the user jason routed to reviews v2", flush=True)
        self.route_jason("v2")
        jason, other = self.page("jason"), self.page()
        self.show("jason", jason)
        self.show("(guest)", other)
        self.expect(2, jason.get("reviews-version") == "v2" and jason.get("stars") == "black"
                    and other.get("reviews-version") == "v1",
                    "jason sees v2 (black stars), others v1")

        print("\n== 3. a {} s delay from reviews v2 to ratings, for jason".format(delay),
              flush=True)
        self.a8ctl("action-add", "--source", "reviews:v2", "--destination", "ratings",
                   "--cookie", "user=jason", "--action", "v1(1->delay={})".format(delay),
                   "--wait")
        jason, other = self.page("jason"), self.page()
        self.show("jason", jason)
        self.show("(guest)", other)
        print("  (productpage gives reviews 3 s and tries twice, as bookinfo does)")
        self.expect(3, jason.get("reviews") == "unavailable" and jason["seconds"] >= 2.5
                    and other.get("reviews") == "ok" and other["seconds"] < 2.5,
                    "jason's reviews time out after productpage's 3 s; others are unaffected")
        self.a8ctl("action-clear", "--destination", "ratings", "--wait")

        self.recipe_step(fast)

        print("\n== 5. shifting reviews from v1 to v3", flush=True)
        samples = 200
        self.a8ctl("route-set", "reviews", "--default", "v1", "--wait")
        self.a8ctl("traffic-start", "reviews", "v3", "--amount", "25", "--wait")
        for percent in (25, 50, 75, 100):
            if percent > 25:
                self.a8ctl("traffic-step", "reviews", "--amount", "25", "--wait")
            seen = [self.page().get("reviews-version") for _ in range(samples)]
            share = seen.count("v3") / len(seen)
            bar = "#" * int(round(share * 40))
            print("  v3 share: {:3d} % (target {:3d} %) {}".format(int(round(share * 100)),
                                                                   percent, bar), flush=True)
            expected = percent / 100.0
            bound = 4 * math.sqrt(max(expected * (1 - expected), 0.0001) / len(seen)) + 0.02
            self.expect(5, abs(share - expected) <= bound,
                        "v3 share {:.2f} within {:.2f} of {:.2f}".format(share, bound, expected))
        return not self.failures

    def recipe_step(self, fast):
        """
        Step 4: the fault of step 3 as a Gremlin recipe, run by C{a8ctl recipe-run} on
        jason's traffic (the test header is his cookie), first against reviews v2, then,
        with jason routed to reviews v3 and the delay moved along, against v3.
        """
        delay = 4 if fast else 7
        requests, concurrency = (4, 4) if fast else (20, 10)
        print("\n== 4. the bookinfo recipe: a {} s delay from reviews to ratings, for "
              "jason's test requests".format(delay), flush=True)
        for version, scenarios, note, expected in RECIPE_RUNS:
            if version != "v2":             # step 2 sent jason to v2 already
                self.route_jason(version)
            report = self.recipe(scenarios, requests, concurrency, fast)
            print("  (" + note + ")", flush=True)
            self.expect_results(4, version, report, expected)
        # Back to where step 3 left jason (step 5 starts from there).
        self.route_jason("v2")

    def route_jason(self, version):
        self.a8ctl("route-set", "reviews", "--default", "v1", "--selector",
                   '{}(user="jason")'.format(version), "--wait")

    def recipe(self, scenarios, requests, concurrency, fast):
        """
        Run the recipe with C{scenarios} (in --fast, a copy with a 4 s delay) through the
        gateway as jason; print its table and return its --json report, with
        C{"rules_left"}: the rules still tagged with its id.

        @raise StepFailed: when the recipe could not run (exit status 2).
        """
        path = os.path.join(RECIPE, scenarios)
        if fast:
            with open(os.path.join(ROOT, path)) as f:
                recipe = json.load(f)
            for gremlin in recipe["gremlins"]:
                gremlin["delaytime"] = "4s"
            path = os.path.join(self.mesh.workdir, "fast-" + scenarios)
            with open(path, "w") as f:
                json.dump(recipe, f, indent=2)
        output = self.a8ctl(
            "recipe-run", "--topology", os.path.join(RECIPE, "topology.json"),
            "--scenarios", path, "--checks", os.path.join(RECIPE, "checks.json"),
            "--header", "Cookie", "--pattern", "user=jason",
            "--load", str(requests), "--concurrency", str(concurrency),
            "--gateway", self.mesh.gateway + "/productpage/productpage", "--json",
            statuses=(0, 1, 2), echo=False, timeout=180)
        try:
            report = json.loads(output)
        except ValueError:
            raise StepFailed("a8ctl recipe-run printed no JSON report: {!r}".format(
                output[-300:]))
        if report.get("error"):
            raise StepFailed("the recipe could not run: " + report["error"])
        load = report.get("load") or {}
        answers = ", ".join("{} x {}".format(n, code)
                            for code, n in sorted((load.get("statuses") or {}).items()))
        print("  recipe {}: {} requests, answered {}, in {:.1f} s".format(
            report["recipe_id"], load.get("sent"), answers or "never",
            load.get("elapsed") or 0), flush=True)
        print("  {:<22} {:<24} {:<6} {}".format("check", "source -> dest", "result", "seen"))
        for result in report["results"]:
            print("  {:<22} {:<24} {:<6} {}".format(
                result["name"], "{} -> {}".format(result["source"], result["dest"]),
                "PASS" if result["passed"] else "FAIL", result["seen"]), flush=True)
        left = json.loads(self.a8ctl("--json", "rule-get", "-t", report["recipe_id"],
                                     echo=False))["rules"]
        print("  the recipe's rules left behind: {}".format(len(left)), flush=True)
        report["rules_left"] = left
        return report

    def expect_results(self, step, label, report, expected):
        """Every check of C{report} came out as C{expected} says, and no rule is left."""
        outcome = {(r["name"], r["source"], r["dest"]): r["passed"] for r in report["results"]}
        self.expect(step, outcome == expected, "{}: checks {}, seen {}".format(
            label, _verdicts(expected), _verdicts(outcome)))
        self.expect(step, report["passed"] == all(expected.values()),
                    "{}: the recipe {}".format(label, "passes" if all(expected.values())
                                               else "fails"))
        self.expect(step, report["rules_left"] == [],
                    "{}: recipe-run removed its rules".format(label))


#: The outcome of each bookinfo check (name, source, dest) in the two runs of step 4: the
#: delay makes reviews v2 too slow for productpage, which cuts both its tries (499) and
#: serves the page late; reviews v3 cuts its call to ratings in time instead.
RECIPE_V2 = {
    ("bounded_response_time", "gateway", "productpage"): False,
    ("http_status", "gateway", "productpage"): True,
    ("http_status", "productpage", "reviews"): False,
    ("http_status", "reviews", "ratings"): False,
}
RECIPE_V3 = {
    ("bounded_response_time", "gateway", "productpage"): True,
    ("http_status", "gateway", "productpage"): True,
    ("http_status", "productpage", "reviews"): True,
    ("http_status", "reviews", "ratings"): False,
}


#: Step 4's runs: jason's reviews version, the scenarios file, what it shows, the outcome.
RECIPE_RUNS = (
    ("v2", "gremlins.json", "the page takes two of productpage's 3 s tries of reviews: too "
     "slow, and both calls to reviews are cut", RECIPE_V2),
    ("v3", "gremlins-v3.json", "reviews v3 gives ratings 2.5 s and answers without them: "
     "the page is in time, only the call to ratings is cut", RECIPE_V3),
)


def _verdicts(outcome):
    return ", ".join("{} {}->{} {}".format(name, source, dest, "PASS" if passed else "FAIL")
                     for (name, source, dest), passed in sorted(outcome.items()))


def _quote(arg):
    return "'{}'".format(arg) if any(c in arg for c in " ()\"=|>") else arg


def main():
    parser = argparse.ArgumentParser(description="The amalgam8 bookinfo demo.")
    parser.add_argument("--keep", action="store_true", help="leave the mesh running")
    parser.add_argument("--fast", action="store_true", help="shorter waits (tests)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a step fails")
    parser.add_argument("--json", action="store_true", help="print RESULT lines as JSON")
    args = parser.parse_args()

    for tool, what in ((shutil.which("nginx") or "/usr/sbin/nginx", "nginx"),
                       (A8CTL, "a8ctl"), (TWISTD, "twistd")):
        if not os.path.exists(tool):
            sys.exit("demo: {} is missing; run make setup".format(what))
    # Ctrl-C (and a TERM) stop the demo and everything it started, even where the shell
    # started us with SIGINT ignored.
    def interrupt(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    workdir = tempfile.mkdtemp(prefix="a8demo-")
    mesh = Mesh(workdir, args.fast)
    demo = Demo(mesh, args.check, args.json)
    ok = False
    interrupted = False
    try:
        print("Starting the registry, the controller, bookinfo and the gateway "
              "(logs in {}) ...".format(workdir), flush=True)
        mesh.start()
        print("The mesh is up: product page at {}/productpage/productpage".format(mesh.gateway))
        ok = demo.run(args.fast)
        if args.keep:
            print("\nThe mesh keeps running:")
            print("  product page: {}/productpage/productpage".format(mesh.gateway))
            print("  export A8_REGISTRY_URL={} A8_CONTROLLER_URL={}".format(
                mesh.registry, mesh.controller))
            print("  stop it with: kill -- " + " ".join(
                "-{}".format(c.pid) for _, c in mesh.children))
            return 0
    except StepFailed as e:
        print("demo: " + str(e), file=sys.stderr)
        demo.failures.append(str(e))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; stopping everything", flush=True)
    finally:
        if not (args.keep and ok):
            # A second Ctrl-C must not cut the clean-up short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            mesh.stop()
    if interrupted:
        return 130
    if demo.failures:
        print("demo: {} step(s) failed:\n  {}".format(len(demo.failures),
              "\n  ".join(demo.failures)), file=sys.stderr)
        return 1 if args.check else 0
    print("\nDone: everything stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
