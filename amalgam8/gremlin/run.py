# -*- test-case-name: tests.test_gremlin_run -*-
"""
A whole recipe run (issue 11, SPEC A6): push the recipe's rules in one request and wait
until every proxy has them, drive the test traffic, wait until the trace records of that
traffic have reached their source, run the checks in one pass, and remove the recipe's rules
by their tag whatever happens (a failed check, a load script that crashed, a cancellation:
Ctrl-C in a8ctl).

With C{baseline}, the same load and checks first run on trace-only rules (no fault): when
the system already fails them, the run stops there (a failure under faults then means the
fault caused it).

    run = RecipeRun(reactor, controller, ControllerTraces(controller), recipe,
                    RunOptions(load=40, gateway="http://127.0.0.1:32000/productpage/"))
    report = await run.run()
    report.exit_status   # 0 every check passed, 1 one failed, 2 the recipe could not run
"""

import os
import uuid

import attrs
from twisted.internet.task import deferLater
from twisted.logger import Logger

from amalgam8 import live
from amalgam8.client import APIError, Unreachable
from amalgam8.gremlin.checks import run_checks
from amalgam8.gremlin.load import run_script, send_requests
from amalgam8.gremlin.traces import TraceSourceError
from amalgam8.gremlin.recipe import (RecipeError, fault_rules, header_value, max_delay,
                                     request_id_prefix, trace_rules)

__all__ = ["CannotRun", "RunOptions", "PassReport", "RunReport", "RecipeRun", "new_recipe_id"]

log = Logger()


class CannotRun(Exception):
    """The recipe could not be run to a verdict; the message is one line saying why."""


def new_recipe_id():
    """A fresh recipe id: short, unique, and safe in a header and a URL."""
    return uuid.uuid4().hex[:12]


@attrs.define
class RunOptions:
    """
    How to run a recipe.

    @ivar header: the header that marks test traffic (the rules match it).
    @ivar pattern: its value's prefix (L{None}: C{gremlin-}; see
        L{amalgam8.gremlin.recipe.fault_rules}).
    @ivar load: send this many GETs of C{gateway}, C{concurrency} at a time...
    @ivar script: ...or run this shell command as the load (exit status 0 expected).
    @ivar baseline: run the load and checks without faults first.
    @ivar live_timeout: seconds to wait until every proxy has the rules.
    @ivar records_timeout: seconds, from the load's end, to wait for the trace records.
    @ivar settle: the records have all arrived once none came for this long (the sidecars
        ship every half second) and the longest injected delay has passed since the load.
    @ivar poll: seconds between reads of the trace records.
    @ivar request_timeout: seconds a test request may take.
    """

    header: str = "X-Request-ID"
    pattern: str = None
    load: int = None
    gateway: str = None
    concurrency: int = 10
    script: str = None
    baseline: bool = False
    live_timeout: float = 60.0
    records_timeout: float = 60.0
    settle: float = 2.0
    poll: float = 0.25
    request_timeout: float = 30.0


@attrs.define
class PassReport:
    """
    One pass of a recipe: its rules, its load, the records it saw and the checks' results.

    @ivar load: a L{amalgam8.gremlin.load.LoadResult}, or C{{"script", "exit_status"}}.
    """

    recipe_id: str
    rules: int = 0
    load: object = None
    records: int = 0
    results: list = attrs.Factory(list)

    @property
    def passed(self):
        return all(result.passed for result in self.results)

    def failures(self):
        return [result for result in self.results if not result.passed]

    def to_json(self):
        load = self.load
        if load is not None and not isinstance(load, dict):
            load = load.to_json()
        return {"recipe_id": self.recipe_id, "passed": self.passed, "rules": self.rules,
                "records": self.records, "load": load,
                "results": [result.to_json() for result in self.results]}


@attrs.define
class RunReport:
    """
    What a run found.

    @ivar faults: the pass with the faults (L{None} when the run stopped before it).
    @ivar baseline: the pass without faults (L{None} without C{baseline}).
    @ivar error: why the recipe could not run to a verdict (L{None} when it did).
    """

    recipe_id: str
    faults: PassReport = None
    baseline: PassReport = None
    error: str = None

    @property
    def exit_status(self):
        if self.error is not None or self.faults is None:
            return 2
        return 0 if self.faults.passed else 1

    def to_json(self):
        faults = self.faults.to_json() if self.faults else None
        return {
            "recipe_id": self.recipe_id,
            "passed": self.exit_status == 0,
            "exit_status": self.exit_status,
            "error": self.error,
            "results": faults["results"] if faults else [],
            "load": faults["load"] if faults else None,
            "records": faults["records"] if faults else 0,
            "rules": faults["rules"] if faults else 0,
            "baseline": self.baseline.to_json() if self.baseline else None,
        }


def _missing_text(missing, total):
    shown = ", ".join(sorted(missing)[:5]) + (", ..." if len(missing) > 5 else "")
    return "{} of {} test requests have no trace record ({})".format(len(missing), total, shown)


@attrs.define
class RecipeRun:
    """
    One run of a recipe against a live mesh.

    @ivar reactor: C{IReactorTime} (and C{IReactorProcess} for a load script).
    @ivar controller: an L{amalgam8.client.ControllerClient}.
    @ivar traces: an L{amalgam8.gremlin.traces.ITraceSource}.
    @ivar recipe: a L{amalgam8.gremlin.model.Recipe}.
    @ivar http: the treq-like client the test requests go through.
    @ivar progress: called with one line of text at each step (a terminal shows it).
    @ivar environ: the environment a load script starts from.
    @ivar send: how test requests are sent (L{amalgam8.gremlin.load.send_requests}).
    @ivar script: how a load script is run (L{amalgam8.gremlin.load.run_script}).
    """

    reactor: object
    controller: object
    traces: object
    recipe: object
    options: RunOptions = attrs.Factory(RunOptions)
    http: object = None
    recipe_id: str = attrs.Factory(new_recipe_id)
    progress: object = None
    environ: dict = attrs.Factory(lambda: dict(os.environ))
    send: object = send_requests
    script: object = run_script

    def _say(self, text, **fields):
        log.info("gremlin: " + text, **fields)
        if self.progress is not None:
            self.progress(text.format(**fields))

    async def run(self):
        """
        Run the recipe: the baseline when asked for, then the faults.

        @return: a L{RunReport} (errors that stop the run are in its C{error}).
        @raise twisted.internet.defer.CancelledError: when cancelled, once the rules
            pushed are removed.
        """
        report = RunReport(self.recipe_id)
        options = self.options
        try:
            if options.baseline:
                tag = self.recipe_id + "-baseline"
                report.baseline = PassReport(tag)
                await self._pass(report.baseline, trace_rules(
                    self.recipe, tag, options.header, options.pattern), 0.0)
                failures = report.baseline.failures()
                if failures:
                    report.error = "the baseline (no faults) already fails {} of {} checks: {}" \
                        .format(len(failures), len(report.baseline.results), "; ".join(
                            "{}: {}".format(r.check.describe(), r.seen) for r in failures))
                    return report
            report.faults = PassReport(self.recipe_id)
            await self._pass(report.faults, fault_rules(
                self.recipe, self.recipe_id, options.header, options.pattern),
                max_delay(self.recipe))
        except CannotRun as e:
            report.error = str(e)
        except RecipeError as e:
            report.error = str(e)
        return report

    async def _pass(self, report, rules, delay):
        """Push C{rules}, load, collect the records and check them; then remove the rules."""
        tag = report.recipe_id
        report.rules = len(rules)
        try:
            self._say("pushing {count} rules tagged {tag}", count=len(rules), tag=tag)
            try:
                revision, _ = await self.controller.create_rules(rules)
            except (APIError, Unreachable) as e:
                raise CannotRun("the controller did not take the recipe's rules: {}".format(e))
            self._say("waiting until revision {revision} is live on every proxy",
                      revision=revision)
            try:
                await live.wait_until_live(self.reactor, self.controller, revision,
                                           self.options.live_timeout)
            except live.NotLive as e:
                raise CannotRun("the recipe's rules are not live: {}".format(e))
            except (APIError, Unreachable) as e:
                raise CannotRun("cannot read the rules' status: {}".format(e))
            expected = await self._load(report, tag)
            records = await self._collect(tag, expected, delay)
            report.records = len(records)
            self._say("checking {count} trace records", count=len(records))
            report.results = run_checks(self.recipe.checks, records)
        except BaseException as e:
            # Whatever stopped the pass (a cancellation too), its rules go; a rule that a
            # timed-out POST still created is found by its tag as well.
            try:
                await self._remove(tag)
            except CannotRun as cleanup:
                if isinstance(e, CannotRun):
                    raise CannotRun("{}; {}".format(e, cleanup)) from None
                log.error("gremlin: {why}", why=str(cleanup))
            raise
        await self._remove(tag)

    async def _remove(self, tag):
        if not tag:
            # DELETE /v1/rules with no filter deletes every rule of the namespace.
            raise AssertionError("a recipe's rules are removed by their tag only")
        try:
            await self.controller.delete_rules(tag=tag)
        except (APIError, Unreachable) as e:
            raise CannotRun("could not remove the recipe's rules ({}); remove them with "
                            "a8ctl rule-delete or DELETE /v1/rules?tag={}".format(e, tag))
        self._say("removed the rules tagged {tag}", tag=tag)

    async def _load(self, report, tag):
        """
        Drive the test traffic.

        @return: the request ids whose records must arrive (L{None}: unknown, a script).
        """
        options = self.options
        prefix = request_id_prefix(options.header, options.pattern) + tag + "-"
        if options.script is not None:
            env = dict(self.environ,
                       A8_GREMLIN_RECIPE_ID=tag,
                       A8_GREMLIN_HEADER=options.header,
                       A8_GREMLIN_PATTERN=options.pattern or "",
                       A8_GREMLIN_REQUEST_ID_PREFIX=prefix)
            self._say("running the load script: {script}", script=options.script)
            status = await self.script(self.reactor, options.script, env)
            report.load = {"script": options.script, "exit_status": status}
            if status != 0:
                raise CannotRun("the load script exited with status {}: {}".format(
                    status, options.script))
            return None
        if not options.load or not options.gateway:
            raise CannotRun("give the test traffic: --load N --gateway URL, or "
                            "--run-load-script CMD")
        extra = {}
        if options.header.lower() != "x-request-id":
            extra[options.header] = header_value(options.header, options.pattern)

        def headers_for(i):
            headers = {"X-Request-ID": prefix + str(i)}
            headers.update(extra)
            return headers

        def progress(done, count):
            if self.progress is not None:
                self.progress("test requests: {} of {}".format(done, count))

        self._say("sending {count} test requests to {url}", count=options.load,
                  url=options.gateway)
        result = await self.send(self.http, self.reactor, options.gateway, options.load,
                                  options.concurrency, headers_for,
                                  timeout=options.request_timeout, progress=progress)
        report.load = result
        if not any(code for code in result.statuses if code):
            raise CannotRun("none of the {} test requests was answered by {}: {}".format(
                result.sent, options.gateway,
                "; ".join(list(result.errors)[:3]) or "no answer"))
        # A request that got no answer at all may never have reached a proxy.
        return set(result.request_ids) - set(result.unanswered)

    async def _collect(self, tag, expected, delay):
        """
        Read the recipe's trace records until they have all arrived: every answered test
        request has one, and none came for C{settle} seconds, counted from the last record
        or from the end of the longest injected delay after the load, whichever is later (a
        delayed call is logged when it ends).

        @raise CannotRun: when C{records_timeout} passes first, naming what is missing.
        """
        clock = self.reactor
        options = self.options
        started = clock.seconds()
        deadline = started + options.records_timeout
        earliest = started + delay
        missing = set(expected) if expected is not None else None
        total = len(missing) if missing is not None else 0
        records = []
        cursor = None
        last_new = started
        problem = None
        self._say("waiting for the trace records at {source}", source=self.traces.describe())
        while True:
            try:
                new, cursor = await self.traces.fetch(tag, cursor)
                problem = None
            except (APIError, Unreachable, TraceSourceError, OSError) as e:
                new, problem = [], str(e)
            now = clock.seconds()
            if new:
                records.extend(new)
                last_new = now
                if missing:
                    missing.difference_update(r.get("request_id") for r in new)
                if self.progress is not None:
                    self.progress("trace records: {}{}".format(
                        len(records), ", waiting for {} requests".format(len(missing))
                        if missing else ""))
            # A delayed call is logged when its delay ends: quiet counts from then on.
            if (records and not missing
                    and now - max(last_new, earliest) >= options.settle):
                return records
            if now >= deadline:
                break
            await deferLater(clock, min(options.poll, max(deadline - now, 0)), lambda: None)
        where = self.traces.describe()
        if problem is not None and not records:
            raise CannotRun("cannot read the trace records from {}: {}".format(where, problem))
        if not records:
            raise CannotRun(
                "no trace record of recipe {} reached {} within {:g}s of the load's end: are "
                "the sidecars shipping traces to the controller, and does the test traffic "
                "carry {} matching the pattern?".format(tag, where, options.records_timeout,
                                                        options.header))
        if missing:
            raise CannotRun("after {:g}s, {} at {}".format(
                options.records_timeout, _missing_text(missing, total), where))
        raise CannotRun("trace records were still arriving at {} {:g}s after the load ended "
                        "({} so far)".format(where, options.records_timeout, len(records)))

