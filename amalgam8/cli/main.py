# -*- test-case-name: tests.test_a8ctl -*-
"""
C{a8ctl}: the command line of the registry and controller (SPEC A7, B2).

L{dispatch} runs one command line with everything injected (reactor, streams, HTTP client,
environment), so every path is tested in-process; L{entry} is the console script, which
runs L{main} under C{react}.

The options are parsed with C{argparse} rather than C{twisted.python.usage}: a8ctl's
command lines put options after the positional arguments (C{route-set reviews --default
v1}), which C{usage.Options} (POSIX C{getopt}, stopping at the first argument) refuses.
"""

import argparse
import os
import sys
import traceback

from amalgam8 import __version__
from amalgam8.client import APIError, Unreachable
from amalgam8.cli.api import Controller, Registry
from amalgam8.cli.commands import (
    COMMANDS,
    USER_ERRORS,
    CommandError,
    Context,
    WaitTimeout,
    wait_until_live,
)
from amalgam8.cli.output import FORMATS, render
from amalgam8.cli import recipe
from amalgam8.durations import parse_duration
from amalgam8.settings import CONFIG, Setting, SettingError, add_arguments, given_arguments
from amalgam8.settings import load as load_settings
from amalgam8.settings import parse_urls

__all__ = ["SETTINGS", "dispatch", "main", "entry"]

DEFAULT_WAIT_TIMEOUT = 30.0

ALL_COMMANDS = dict(COMMANDS, **{"recipe-run": recipe.recipe_run})


def _token(text):
    return text or None


# a8ctl's settings (SPEC A7): global options, which may go before the command or after it.
SETTINGS = (
    CONFIG,
    Setting("a8-controller-url", "A8_CONTROLLER_URL", parse_urls, "http://localhost:8081",
            "The controller (several replicas: comma-separated URLs).", yaml=("controller_url",), metavar="URL"),
    Setting("a8-registry-url", "A8_REGISTRY_URL", parse_urls, "http://localhost:8080",
            "The registry (several replicas: comma-separated URLs).", yaml=("registry_url",), metavar="URL"),
    Setting("a8-controller-token", "A8_CONTROLLER_TOKEN", _token, None,
            "Bearer token for the controller.", yaml=("controller_token",), metavar="TOKEN"),
    Setting("a8-registry-token", "A8_REGISTRY_TOKEN", _token, None,
            "Bearer token for the registry.", yaml=("registry_token",), metavar="TOKEN"),
)


class UsageError(Exception):
    """The command line does not parse."""


class _Exit(Exception):
    """argparse asked to exit (after C{--help} or C{--version})."""

    def __init__(self, status):
        Exception.__init__(self, status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An C{ArgumentParser} that writes to the given stream and never exits the process."""

    def __init__(self, *args, out=None, **kwargs):
        self._out = out
        argparse.ArgumentParser.__init__(self, *args, **kwargs)

    def error(self, message):
        raise UsageError("{}: {}".format(self.prog, message))

    def exit(self, status=0, message=None):
        if message:
            self._print_message(message)
        raise _Exit(status)

    def _print_message(self, message, file=None):
        if message and self._out is not None:
            self._out.write(message)


def _duration(text):
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a duration: {!r} (such as 30s or 1m)"
                                         .format(text))


def _add_globals(parser, suppress):
    """
    The global options: L{SETTINGS} (absent unless given: L{dispatch} layers them over the
    environment, the file and the defaults) and how to answer. On each command's parser
    they default to SUPPRESS, so that one given before the command is not overridden by
    its absence after it.
    """

    def default(value):
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    add_arguments(group, SETTINGS)
    group.add_argument("--json", action="store_const", const="json", dest="output",
                       default=default("table"), help="print JSON (same as -o json)")
    group.add_argument("-o", "--output", choices=FORMATS, default=default("table"),
                       help="output format: table (default), json or yaml")
    group.add_argument("--debug", action="store_true", default=default(False),
                       help="show a traceback for unexpected errors")


def _add_wait(parser, suppress):
    def default(value):
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("waiting")
    group.add_argument("--wait", action="store_true", default=default(False),
                       help="after the change, wait until every proxy has applied it")
    group.add_argument("--wait-timeout", type=_duration, metavar="DURATION",
                       default=default(DEFAULT_WAIT_TIMEOUT),
                       help="give up waiting after this long (default 30s); exit 1")


def build_parser(stdout):
    """The C{a8ctl} argument parser."""
    parser = _Parser(prog="a8ctl", out=stdout,
                     description="Amalgam8 command line: services, routes, fault "
                                 "injection and rules.")
    parser.add_argument("--version", action="version",
                        version="a8ctl (amalgam8) {}".format(__version__))
    _add_globals(parser, suppress=False)
    _add_wait(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=_Parser)

    def command(name, help, changes=False):
        sub = commands.add_parser(name, help=help, description=help, out=stdout)
        _add_globals(sub, suppress=True)
        if changes:
            _add_wait(sub, suppress=True)
        return sub

    command("service-list", "List services with their versions and instance counts.")
    command("route-list", "List the routing of every service: default version and "
                          "selectors.")

    sub = command("route-set", "Replace the route rules of a service.", changes=True)
    sub.add_argument("service", metavar="SERVICE")
    sub.add_argument("--default", required=True, metavar="TAGS",
                     help="the version that takes the rest of the traffic")
    sub.add_argument("--selector", action="append", metavar="SELECTOR",
                     help='TAGS(weight=W), TAGS(user="NAME") or '
                          'TAGS(header="NAME:PATTERN") (repeatable; first tried first)')
    sub.add_argument("--source", metavar="SERVICE[:TAGS]",
                     help="apply the selectors only to requests from this service")

    sub = command("route-delete", "Delete the route rules of a service.", changes=True)
    sub.add_argument("service", metavar="SERVICE")

    command("action-list", "List the action (fault injection) rules.")

    sub = command("action-add", "Add an action (fault injection) rule.", changes=True)
    sub.add_argument("--destination", required=True, metavar="SERVICE")
    sub.add_argument("--source", metavar="SERVICE[:TAGS]")
    sub.add_argument("--header", action="append", metavar="NAME:PATTERN")
    sub.add_argument("--cookie", action="append", metavar="NAME=VALUE")
    sub.add_argument("--action", action="append", metavar="ACTION",
                     help="TAGS(P->delay=SECONDS) or TAGS(P->abort=CODE) (repeatable)")
    sub.add_argument("--priority", type=int,
                     help="default: 10 above the destination's highest action rule")

    sub = command("action-clear", "Delete action rules (of one destination, or all).",
                  changes=True)
    sub.add_argument("--destination", metavar="SERVICE")
    sub.add_argument("service", nargs="?", metavar="SERVICE",
                     help="same as --destination (as a8ctl 0.3 took it)")

    sub = command("rule-delete", "Delete rules by id.", changes=True)
    sub.add_argument("ids", nargs="+", metavar="ID")

    for name, help in (("rule-create", "Create rules from a JSON or YAML file."),
                       ("rule-update", "Update rules (by id) from a JSON or YAML file.")):
        sub = command(name, help, changes=True)
        sub.add_argument("-f", "--file", required=True, metavar="FILE",
                         help="a .json or .yaml file ({\"rules\": [...]}, a list or a "
                              "rule); - reads stdin")

    sub = command("rule-get", "Show rules, filtered by id, tag and destination.")
    sub.add_argument("-i", "--id", action="append", metavar="ID")
    sub.add_argument("-t", "--tag", action="append", metavar="TAG")
    sub.add_argument("-d", "--destination", action="append", metavar="SERVICE")

    sub = command("traffic-start", "Start moving traffic to a new version.", changes=True)
    sub.add_argument("service", metavar="SERVICE")
    sub.add_argument("version", metavar="TAGS")
    sub.add_argument("--amount", type=float, default=10.0,
                     help="percent of traffic to send to the new version (default 10)")

    sub = command("traffic-step", "Move more traffic to the new version.", changes=True)
    sub.add_argument("service", metavar="SERVICE")
    sub.add_argument("--amount", type=float, default=10.0,
                     help="percent to add (default 10); at 100 the move is complete")

    sub = command("traffic-abort", "Send all traffic back to the old version.",
                  changes=True)
    sub.add_argument("service", metavar="SERVICE")

    command("info", "Show the servers, their state and the rule revision.")

    sub = command("recipe-run", "Run a Gremlin recipe: inject its faults into test "
                  "traffic and check what happens (exit 0 pass, 1 fail, 2 cannot run).")
    recipe.add_arguments(sub, _duration)
    return parser


def _one_line(text):
    return " ".join(str(text).split())


def _describe(error, options):
    """The one line that explains an error of a command."""
    if isinstance(error, USER_ERRORS):
        return str(error)
    role = getattr(error, "role", None) or "server"
    base = getattr(error, "base_url", None) or ""
    if isinstance(error, Unreachable):
        cause = error.__cause__ or error
        reason = _one_line(str(cause)) or type(cause).__name__
        return "cannot reach the {} at {}: {}".format(role, base, reason)
    if isinstance(error, APIError):
        if error.status == 401:
            return ("the {} refused the credentials (401: {}); set --a8-{}-token or "
                    "A8_{}_TOKEN".format(role, _one_line(error.message), role,
                                         role.upper()))
        if error.status == 403:
            return "the {} refused the request (403): {}".format(
                role, _one_line(error.message))
        return "the {} answered {}: {}".format(role, error.status, _one_line(error.message))
    if isinstance(error, RecursionError):
        # A rules file of lists inside lists 10,000 deep: the YAML parser recurses.
        return "the input is nested too deeply"
    return "unexpected error: {}: {}".format(type(error).__name__, _one_line(error))


async def dispatch(reactor, argv, stdout, stderr, client, environ=None, stdin=None):
    """
    Run one a8ctl command line.

    @param reactor: the C{IReactorTime} for request timeouts and C{--wait} (a C{Clock} in
        tests).
    @param argv: the arguments, without the program name.
    @param stdout: the text stream for results.
    @param stderr: the text stream for the one-line errors.
    @param client: the treq-like HTTP client that reaches both servers (C{HTTPClient},
        C{StubTreq}).
    @param environ: the environment (C{A8_*_URL}, C{A8_*_TOKEN}); default C{os.environ}.
    @param stdin: the text stream C{-f -} reads.
    @return: the exit status: 0; 1 after an error; 2 after a bad setting.
    """
    environ = os.environ if environ is None else environ
    parser = build_parser(stdout)
    try:
        options = parser.parse_args(list(argv))
    except _Exit as e:
        return e.status
    except UsageError as e:
        stderr.write("{} (see a8ctl --help)\n".format(_one_line(e)))
        return 1
    try:
        loaded = load_settings(SETTINGS, given_arguments(options, SETTINGS), environ)
    except SettingError as e:
        stderr.write("a8ctl: {}\n".format(e))
        return 2
    for setting in SETTINGS:
        setattr(options, setting.key, loaded[setting.name])
    if options.command is None:
        stderr.write("a8ctl: give a command (see a8ctl --help)\n")
        return 1
    ctx = Context(
        reactor=reactor,
        registry=Registry(client, options.a8_registry_url, options.a8_registry_token,
                          reactor=reactor),
        controller=Controller(client, options.a8_controller_url,
                              options.a8_controller_token, reactor=reactor),
        stdin=stdin,
        stderr=stderr,
    )
    outcome = None
    try:
        outcome = await ALL_COMMANDS[options.command](ctx, options)
        if options.wait and outcome.changes:
            status = await wait_until_live(ctx, outcome.revision, options.wait_timeout)
            live = {"revision": status["target"], "proxies": status.get("proxies", 0),
                    "in_sync": status.get("in_sync", 0)}
            if isinstance(outcome.data, dict):
                outcome.data["live"] = live
            if live["proxies"]:
                outcome.text += "\nLive on all {} prox{} (revision {})".format(
                    live["proxies"], "y" if live["proxies"] == 1 else "ies",
                    live["revision"])
            else:
                outcome.text += ("\nRevision {} is current; no proxy is reporting"
                                 .format(live["revision"]))
    except Exception as e:
        if isinstance(e, WaitTimeout) and outcome is not None:
            # The change was made: say what it was before saying it is not live yet.
            stdout.write(render(outcome, options.output) + "\n")
        if getattr(options, "debug", False) and not isinstance(
                e, USER_ERRORS + (APIError, Unreachable)):
            stderr.write(traceback.format_exc())
        stderr.write("a8ctl: {}\n".format(_describe(e, options)))
        return e.status if isinstance(e, CommandError) else 1
    stdout.write(render(outcome, options.output) + "\n")
    return outcome.status


async def main(reactor, argv=None):
    """Run a8ctl against the real servers; raise C{SystemExit} with its status."""
    from amalgam8.client import http_client

    argv = sys.argv[1:] if argv is None else argv
    client = http_client(reactor, persistent=False)
    status = await dispatch(reactor, argv, sys.stdout, sys.stderr, client,
                            environ=os.environ, stdin=sys.stdin)
    raise SystemExit(status)


def entry():
    """The C{a8ctl} console script."""
    from twisted.internet.task import react

    react(main)

