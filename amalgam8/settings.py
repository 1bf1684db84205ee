# -*- test-case-name: tests.test_settings -*-
"""
Server settings as SPEC Part C has them: each one an option and an environment variable
(the option wins), parsed and checked at start. A bad value stops the program with one line
naming it and exit status 2.
"""

import os
import sys

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python import usage

from amalgam8.durations import parse_duration

__all__ = [
    "Setting",
    "SettingsOptions",
    "parse_bool",
    "parse_port",
    "parse_duration_setting",
    "parse_positive_int",
    "check_endpoint",
    "ServerService",
    "add_listeners",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(text):
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false, not {!r}".format(text))


def parse_port(text):
    try:
        port = int(text)
    except ValueError:
        raise ValueError("expected a port number, not {!r}".format(text))
    if not 0 <= port <= 65535:
        raise ValueError("port {} is out of range 0-65535".format(port))
    return port


def parse_duration_setting(text):
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise ValueError("expected a duration such as 30, 0.5, 30s or 1m30s, not {!r}"
                         .format(text))
    return seconds


def parse_positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number, not {!r}".format(text))
    if value < 1:
        raise ValueError("expected a whole number above 0, not {}".format(value))
    return value


class _ParseOnly:
    """A stand-in reactor for checking endpoint strings without listening."""


def check_endpoint(description):
    """
    Check that C{description} is a server endpoint string Twisted can use (for C{ssl:},
    this reads the key and certificate files).

    @raise ValueError: naming the problem.
    """
    try:
        serverFromString(_ParseOnly(), description)
    except Exception as e:
        raise ValueError("bad endpoint {!r}: {}".format(description, e))
    return description


@attrs.frozen
class Setting:
    """
    @ivar option: the long option name (C{"auth-mode"}); the key in the options dict.
    @ivar env: the environment variable, or L{None}.
    @ivar parse: text -> value; raises L{ValueError} with a message.
    @ivar default: the value when neither is given (not parsed).
    """

    option: str
    env: str
    parse: object
    default: object
    help: str


class SettingsOptions(usage.Options):
    """
    C{usage.Options} driven by a list of L{Setting}s, plus a repeatable C{--listen}.
    Subclasses set C{settings}, C{program} and C{default_port}.
    """

    settings = ()
    program = "amalgam8"
    default_port = 8080
    port_env = "A8_API_PORT"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.optParameters = [[s.option, None, None, s.help] for s in cls.settings]

    def __init__(self, environ=None):
        usage.Options.__init__(self)
        self["listen"] = []
        self.environ = os.environ if environ is None else environ

    def opt_listen(self, description):
        """A Twisted endpoint to serve on, such as tcp:8080:interface=127.0.0.1 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem (repeatable)."""
        self["listen"].append(description)

    def parseOptions(self, options=None):
        """
        Parse, and on a bad value print one line naming it and exit with status 2 (twistd's
        own handling would print the whole usage text and exit with 1).
        """
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            # One line, whatever a value (a path, say) holds.
            text = str(e).replace("\r", "\\r").replace("\n", "\\n")
            sys.stderr.write("{}: {}\n".format(self.program, text))
            sys.stderr.flush()
            raise SystemExit(2)

    def postOptions(self):
        for setting in self.settings:
            key = setting.option
            given = self[key]
            source = "--" + key
            if given is None and setting.env and setting.env in self.environ:
                given = self.environ[setting.env]
                source = setting.env
            if given is None:
                self[key] = setting.default
                continue
            try:
                self[key] = setting.parse(given)
            except ValueError as e:
                raise usage.UsageError("{}: {}".format(source, e))
        port_text = self.environ.get(self.port_env)
        if not self["listen"]:
            port = self.default_port
            if port_text is not None:
                try:
                    port = parse_port(port_text)
                except ValueError as e:
                    raise usage.UsageError("{}: {}".format(self.port_env, e))
            self["listen"] = ["tcp:{}".format(port)]
        for description in self["listen"]:
            try:
                check_endpoint(description)
            except ValueError as e:
                raise usage.UsageError("--listen: {}".format(e))
        self.check()

    def check(self):
        """Cross-setting checks of a subclass; raise L{usage.UsageError}."""


def _text(text):
    return text


def common_settings():
    """The settings every amalgam8 server takes (SPEC Part C)."""
    from amalgam8.auth import parse_modes
    from amalgam8.logs import parse_level

    return (
        Setting("auth-mode", "A8_AUTH_MODE", parse_modes, ("default",),
                "Auth modes, chained in order: default, trusted, jwt [default: default]."),
        Setting("jwt-secret", "A8_JWT_SECRET", _text, None, "HS256 secret for jwt mode."),
        Setting("require-https", "A8_REQUIRE_HTTPS", parse_bool, False,
                "Redirect plain HTTP to HTTPS [default: false]."),
        Setting("log-level", "A8_LOG_LEVEL", parse_level, parse_level("info"),
                "debug, info, warn or error [default: info]."),
        Setting("metrics-token", "A8_METRICS_TOKEN", _text, None,
                "Bearer token that GET /metrics requires [default: none required]."),
    )


def check_common(options):
    """Cross-checks of the common settings."""
    if "jwt" in options["auth-mode"] and not options["jwt-secret"]:
        raise usage.UsageError("--auth-mode jwt needs --jwt-secret (A8_JWT_SECRET)")


class ServerService(MultiService):
    """
    A server's service tree. A port that cannot be bound stops the start with one line and
    exit status 2, like any other bad setting.

    @ivar program: the name in that line (C{a8registry}).
    """

    def __init__(self, program):
        MultiService.__init__(self)
        self.program = program

    def privilegedStartService(self):
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as e:
            sys.stderr.write("{}: cannot listen: {}\n".format(self.program, e))
            sys.stderr.flush()
            raise SystemExit(2)


def add_listeners(top, reactor, descriptions, site, log):
    """
    One listener per endpoint description under C{top}; each logs the address it bound
    (C{"<program> listening on HOST:PORT"}, with C{host} and C{port} keys: tests and
    scripts that listen on port 0 learn the port from it).
    """
    for description in descriptions:
        listener = StreamServerEndpointService(serverFromString(reactor, description), site)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
        _announce(listener, description, log, top.program)


def _announce(listener, description, log, program):
    original = listener.privilegedStartService

    def started():
        original()
        waiting = listener._waitingForPort
        if waiting is not None:
            def report(port):
                address = port.getHost()
                log.info("{program} listening on {host}:{port} ({endpoint})",
                         program=program, host=getattr(address, "host", "?"),
                         port=getattr(address, "port", 0), endpoint=description)
                return port
            waiting.addCallback(report)

    listener.privilegedStartService = started
