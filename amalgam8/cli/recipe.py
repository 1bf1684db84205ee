# -*- test-case-name: tests.test_a8ctl_recipe -*-
"""
C{a8ctl recipe-run} (SPEC A6, issue 11): load a recipe, run it with
L{amalgam8.gremlin.run.RecipeRun}, print what each check saw, and exit 0 when every check
passed, 1 when one failed, 2 when the recipe could not run (a bad file or option, rules that
do not go live, a load script that failed, records that never came), 130 after Ctrl-C. The
recipe's rules are removed in every case.
"""

import os
import signal
import threading

from twisted.internet.defer import CancelledError, Deferred

from amalgam8.cli.commands import CommandError
from amalgam8.cli.output import Outcome, table
from amalgam8.gremlin.recipe import RecipeError, load_recipe
from amalgam8.gremlin.report import junit_xml, result_rows
from amalgam8.gremlin.run import RecipeRun, RunOptions
from amalgam8.gremlin.traces import ControllerTraces, LogDirTraces

__all__ = ["recipe_run", "add_arguments"]

INTERRUPTED = 130


class RecipeUsage(CommandError):
    """The recipe or the options cannot run: exit 2."""

    status = 2


def add_arguments(sub, duration):
    """recipe-run's options (C{duration}: the argparse type of a duration)."""
    sub.add_argument("--topology", metavar="FILE", help="the services and who calls whom")
    sub.add_argument("--scenarios", metavar="FILE", help="the failures to inject")
    sub.add_argument("--checks", metavar="FILE", help="what must hold under them")
    sub.add_argument("--header", default="X-Request-ID",
                     help="the header that marks test traffic (default X-Request-ID)")
    sub.add_argument("--pattern", help="its value's prefix (default gremlin-); for Cookie, "
                                       "a cookie such as user=jason")
    sub.add_argument("--run-load-script", metavar="CMD",
                     help="a shell command that sends the test traffic")
    sub.add_argument("--load", type=int, metavar="N",
                     help="send N test requests to --gateway instead")
    sub.add_argument("--gateway", metavar="URL",
                     help="where --load sends them, e.g. http://gw:32000/productpage/")
    sub.add_argument("--concurrency", type=int, default=10, metavar="C",
                     help="--load requests at a time (default 10)")
    sub.add_argument("--baseline", action="store_true",
                     help="first run the load and checks without faults; stop (exit 2) if "
                          "they already fail")
    sub.add_argument("--logs", metavar="DIR",
                     help="read the trace records from the access logs in DIR instead of "
                          "the controller")
    sub.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    sub.add_argument("--timeout", type=duration, default=60.0, metavar="DURATION",
                     help="how long to wait for the rules to go live and, after the load, "
                          "for the trace records (default 60s)")


def _run_options(options):
    if options.load is not None and options.run_load_script is not None:
        raise RecipeUsage("give one of --load and --run-load-script, not both")
    if options.load is None and options.run_load_script is None:
        raise RecipeUsage("give the test traffic: --load N --gateway URL, or "
                          "--run-load-script CMD")
    if options.load is not None:
        if options.load < 1:
            raise RecipeUsage("--load must be at least 1")
        if not options.gateway:
            raise RecipeUsage("--load needs --gateway URL")
        if not options.gateway.startswith(("http://", "https://")):
            raise RecipeUsage("--gateway must be an http:// or https:// URL")
    if options.concurrency < 1:
        raise RecipeUsage("--concurrency must be at least 1")
    if not options.header or not options.header.strip():
        raise RecipeUsage("--header must not be empty")
    return RunOptions(header=options.header.strip(), pattern=options.pattern,
                      load=options.load, gateway=options.gateway,
                      concurrency=options.concurrency, script=options.run_load_script,
                      baseline=options.baseline, live_timeout=options.timeout,
                      records_timeout=options.timeout)


class _Progress:
    """One line on a terminal, rewritten at each step; nothing elsewhere."""

    def __init__(self, stream):
        self._stream = stream
        self.shown = False

    def __call__(self, text):
        self._stream.write("\r\x1b[K" + text)
        self._stream.flush()
        self.shown = True

    def done(self):
        if self.shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def _progress(stream):
    isatty = getattr(stream, "isatty", None)
    if stream is not None and isatty is not None and isatty():
        return _Progress(stream)
    return None


class _Interrupts:
    """
    While a run is going: SIGINT and SIGTERM cancel it (so that its rules are removed)
    instead of stopping the reactor at once. Only on a real reactor in the main thread.
    """

    def __init__(self, reactor, deferred):
        self._reactor = reactor
        self._deferred = deferred
        self._saved = {}
        self.interrupted = False

    def __enter__(self):
        if (hasattr(self._reactor, "callFromThread")
                and threading.current_thread() is threading.main_thread()):
            for number in (signal.SIGINT, signal.SIGTERM):
                self._saved[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        if not self.interrupted:
            self.interrupted = True
            self._reactor.callFromThread(self._deferred.cancel)

    def __exit__(self, *exc):
        for number, handler in self._saved.items():
            signal.signal(number, handler)


def _text(report, interrupted):
    lines = []
    for name, part in (("Baseline (no faults)", report.baseline),
                       ("Recipe " + report.recipe_id, report.faults)):
        if part is None or not part.results:
            continue
        lines.append("{}: {} rules, {} trace records".format(name, part.rules, part.records))
        lines.append(table(["Check", "Source", "Dest", "Result", "Seen"],
                           result_rows(part.results)))
    if interrupted:
        lines.append("Interrupted; the recipe's rules were removed.")
    elif report.error is not None:
        lines.append("The recipe could not run: " + report.error)
    else:
        failed = len(report.faults.failures())
        total = len(report.faults.results)
        lines.append("All {} checks passed.".format(total) if not failed else
                     "{} of {} checks failed.".format(failed, total))
    return "\n".join(lines)


async def recipe_run(ctx, options):
    for name in ("topology", "scenarios", "checks"):
        if not getattr(options, name):
            raise RecipeUsage("recipe-run needs --topology, --scenarios and --checks")
    try:
        recipe = load_recipe(options.topology, options.scenarios, options.checks)
    except RecipeError as e:
        raise RecipeUsage(str(e))
    run_options = _run_options(options)
    if options.junit is not None:
        folder = os.path.dirname(os.path.abspath(options.junit))
        if not os.path.isdir(folder):
            raise RecipeUsage("cannot write --junit {}: no directory {}".format(
                options.junit, folder))
    if options.logs is not None:
        if not os.path.isdir(options.logs):
            raise RecipeUsage("--logs {}: no such directory".format(options.logs))
        if hasattr(ctx.reactor, "getThreadPool"):
            traces = LogDirTraces.from_reactor(ctx.reactor, options.logs)
        else:
            traces = LogDirTraces(options.logs)
    else:
        traces = ControllerTraces(ctx.controller)
    progress = _progress(ctx.stderr)
    run = RecipeRun(ctx.reactor, ctx.controller, traces, recipe, run_options,
                    http=ctx.controller.http, progress=progress)
    if options.run_load_script is not None and not hasattr(ctx.reactor, "spawnProcess"):
        raise RecipeUsage("--run-load-script needs a reactor that runs processes")
    deferred = Deferred.fromCoroutine(run.run())
    with _Interrupts(ctx.reactor, deferred) as interrupts:
        try:
            report = await deferred
        except CancelledError:
            report = None
    if progress is not None:
        progress.done()
    if report is None:
        return Outcome({"recipe_id": run.recipe_id, "interrupted": True},
                       "Interrupted; the recipe's rules were removed.", status=INTERRUPTED)
    if options.junit:
        try:
            with open(options.junit, "wb") as f:
                f.write(junit_xml(report))
        except OSError as e:
            raise RecipeUsage("cannot write --junit {}: {}".format(
                options.junit, e.strerror or e))
    return Outcome(report.to_json(), _text(report, interrupts.interrupted),
                   status=report.exit_status)
