# -*- test-case-name: tests.test_settings -*-
"""
One settings engine for every amalgam8 program (SPEC Part C, A5, A7).

Each program declares its settings once, as a table of L{Setting}s: the option, the
C{A8_*} environment variable, the YAML key, the parser, the default and the help. L{load}
layers the sources, command line > environment > the YAML file named by C{--config} or
C{A8_CONFIG} > defaults, and records where each value came from. A bad value raises one
L{SettingError} whose one-line message names the setting and its source
(C{A8_REGISTRY_POLL (environment): expected a duration ...}); the front-ends print it and
exit with status 2.

The front-ends: L{SettingsOptions} (C{twisted.python.usage}, for the twistd plugins) and
L{add_arguments}/L{given_arguments} (C{argparse}, for a8ctl). C{--help} and the settings
tables of docs/*.md come from the same tables: C{python -m amalgam8.settings --write}
rewrites the tables between their marker comments, C{--markdown PROGRAM} prints one.
"""

import importlib
import os
import sys
from urllib.parse import urlsplit

import attrs
import yaml
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from amalgam8.durations import parse_duration

__all__ = [
    "Setting",
    "SettingError",
    "Loaded",
    "load",
    "SettingsOptions",
    "add_arguments",
    "given_arguments",
    "CONFIG",
    "SERVER_SETTINGS",
    "check_server",
    "parse_text",
    "parse_bool",
    "parse_port",
    "port_parser",
    "parse_duration_setting",
    "parse_positive_duration",
    "parse_positive_int",
    "parse_url",
    "parse_urls",
    "choice",
    "check_endpoint",
    "markdown",
    "ServerService",
    "add_listeners",
    "raise_fd_limit",
    "site_limits",
]

_log = Logger(namespace="amalgam8.settings")


# -- parsers: text (or a YAML value) -> value; ValueError with a message --------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_text(text):
    """Any text, as given."""
    return text


def parse_bool(text):
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false, not {!r}".format(text))


def port_parser(lowest):
    """A parser of port numbers from C{lowest} (0 or 1) to 65535."""

    def parse(text):
        try:
            port = int(str(text).strip())
        except ValueError:
            raise ValueError("expected a port number, not {!r}".format(text))
        if not lowest <= port <= 65535:
            raise ValueError("port {} is out of range {}-65535".format(port, lowest))
        return port

    return parse


parse_port = port_parser(0)


def parse_duration_setting(text):
    try:
        seconds = parse_duration(text.strip() if isinstance(text, str) else text)
    except ValueError:
        raise ValueError("expected a duration such as 30, 0.5, 30s or 1m30s, not {!r}"
                         .format(text))
    return seconds


def parse_positive_duration(text):
    seconds = parse_duration_setting(text)
    if seconds <= 0:
        raise ValueError("must be above 0")
    return seconds


def parse_positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number, not {!r}".format(text))
    if value < 1:
        raise ValueError("expected a whole number above 0, not {}".format(value))
    return value


def parse_url(text):
    """An http(s) URL without its trailing slash; blank is no URL (L{None})."""
    value = str(text).strip()
    if not value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError as e:             # 'http://[::1': Invalid IPv6 URL
        raise ValueError("{!r} is not a URL: {}".format(text, e))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("{!r} is not an http(s) URL".format(text))
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("{!r} has a bad port (1-65535)".format(text))
    return value.rstrip("/")


def parse_urls(text):
    """
    One http(s) URL or several, comma-separated (or a YAML list): the replicas of one server, which a client
    fails over between (L{amalgam8.client}). Blank is no URL (L{None}).

    @return: the URLs without trailing slashes, joined by commas.
    """
    if isinstance(text, (list, tuple)):      # a YAML list
        parts = [str(part) for part in text]
    else:
        parts = str(text).split(",")
    parts = [part for part in parts if part.strip()]
    urls = [parse_url(part) for part in parts]
    if not urls:
        return None
    if len(set(urls)) != len(urls):
        raise ValueError("{!r} names a URL twice".format(text))
    return ",".join(urls)


def choice(what, choices, aliases=None):
    """A parser of one of C{choices} (any case), C{aliases} mapping other names to them."""
    aliases = aliases or {}

    def parse(text):
        value = str(text).strip().lower()
        value = aliases.get(value, value)
        if value not in choices:
            raise ValueError("{} must be one of {}, not {!r}".format(
                what, ", ".join(choices), text))
        return value

    return parse


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


# -- declarations ---------------------------------------------------------------------------


@attrs.frozen
class Setting:
    """
    One setting of a program, declared once.

    @ivar name: the option (C{--auth-mode}) without its dashes; the key of the loaded value.
    @ivar env: the environment variable, or L{None}.
    @ivar parse: text (or a YAML value) -> value; raises L{ValueError} with a message. A
        value that parses to L{None} counts as not given: the default applies.
    @ivar default: the default as text (parsed like any other source), or L{None}.
    @ivar help: what it means (Markdown: the docs show it as it is, C{--help} without the
        backquotes).
    @ivar option: whether it is a command-line option.
    @ivar yaml: the YAML keys besides C{name} with underscores (C{"registry.url"} is the key
        C{url} of the mapping C{registry}); L{None} keeps it out of the file.
    @ivar structured: YAML lists and mappings are handed to C{parse} as they are.
    @ivar repeat: the option may be repeated (and the YAML value may be a list); the value
        is a list.
    @ivar unless: the name of another setting; when that one is given, this one is not read
        (its value is L{None}).
    @ivar shown_default: the default as the docs and C{--help} say it, when the text alone
        would mislead.
    @ivar metavar: the option's value as the docs and C{--help} name it.
    """

    name: str
    env: object
    parse: object
    default: object
    help: str
    option: bool = True
    yaml: object = ()
    structured: bool = False
    repeat: bool = False
    unless: object = None
    shown_default: object = None
    metavar: object = None

    @property
    def key(self):
        """The YAML key (and the keyword) of the setting: C{auth_mode}."""
        return self.name.replace("-", "_")

    def yaml_keys(self):
        if self.yaml is None:
            return ()
        return (self.key,) + tuple(self.yaml)

    def describe_default(self):
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return "none"
        return "`{}`".format(self.default)

    def usage_help(self):
        """The one-paragraph help of C{--help}."""
        text = self.help.replace("`", "")
        where = ["env " + self.env] if self.env else []
        where.append("default " + self.describe_default().replace("`", ""))
        return "{} [{}]".format(text, "; ".join(where))


CONFIG = Setting(
    "config", "A8_CONFIG", parse_text, None,
    "A YAML file of settings: a mapping of the YAML keys of this table. Options and "
    "environment variables beat it; an unknown key is refused.",
    yaml=None, metavar="FILE")


class SettingError(ValueError):
    """
    A bad setting. The message is one line naming the setting and where it came from.
    """

    def __init__(self, message, setting=None, source=None):
        ValueError.__init__(self, " ".join(str(message).splitlines()))
        self.setting = setting
        self.source = source


@attrs.frozen
class Loaded:
    """
    The values of a program's settings.

    @ivar values: name -> value (L{None} where none was given and there is no default).
    @ivar sources: name -> where the value came from (C{"--min-ttl"},
        C{"A8_MIN_TTL (environment)"}, C{"min_ttl in a8.yaml"} or C{"default"}).
    """

    values: dict
    sources: dict

    def __getitem__(self, name):
        return self.values[name]

    def given(self, name):
        return self.sources.get(name, "default") != "default"

    def origins(self, *names):
        """
        For a cross-setting error: C{" (from A8_MIN_TTL (environment))"} naming where those
        of C{names} that came from the environment or the file came from, else C{""}.
        """
        found = [self.sources[name] for name in names
                 if not self.sources.get(name, "default").startswith(("--", "default"))]
        return " (from {})".format(", ".join(found)) if found else ""


def _read_yaml(path, source):
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise SettingError("{}: cannot read {}: {}".format(source, path, e.strerror),
                           "config", source)
    except yaml.YAMLError as e:
        raise SettingError("{}: {} is not valid YAML ({})".format(
            source, path, str(e).splitlines()[0]), "config", source)
    except UnicodeDecodeError:
        raise SettingError("{}: {} is not UTF-8 text".format(source, path), "config", source)
    except RecursionError:
        raise SettingError("{}: {} is nested too deeply".format(source, path),
                           "config", source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingError("{}: the configuration must be a mapping".format(path),
                           "config", source)
    return data


def _file_values(table, data, path):
    """The YAML file's mapping -> {setting name: (value, key)}; unknown keys refused."""
    by_key = {}
    for setting in table:
        for key in setting.yaml_keys():
            by_key[key] = setting
    sections = {key.partition(".")[0] for key in by_key if "." in key}
    found = {}
    for key, value in data.items():
        key = str(key)
        if key in by_key:
            found[by_key[key].name] = (value, key)
        elif key in sections and isinstance(value, dict):
            for sub, subvalue in value.items():
                full = "{}.{}".format(key, sub)
                if full not in by_key:
                    raise SettingError("{}: unknown key {}".format(path, full))
                found[by_key[full].name] = (subvalue, full)
        else:
            raise SettingError("{}: unknown key {}".format(path, key))
    return found


@attrs.frozen
class _InFile:
    """A value read from the YAML file."""

    value: object


def _from_file(setting, value):
    """A YAML value as the parser takes it: scalars as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, dict)):
        if setting.structured:
            return value
        if setting.repeat and isinstance(value, list):
            return [_from_file(setting, v) for v in value]
        raise ValueError("expected a single value, not a {}".format(
            "list" if isinstance(value, list) else "mapping"))
    return value


def _parse(setting, given):
    if setting.repeat and isinstance(given, (list, tuple)):
        return [setting.parse(item) for item in given]
    if setting.repeat:
        return [setting.parse(given)]
    return setting.parse(given)


def load(table, flags=None, environ=None):
    """
    The values of C{table}'s settings: a command-line value beats the environment, which
    beats the YAML file named by C{config} (option or C{A8_CONFIG}), which beats the
    default.

    @param flags: name -> the text given on the command line (L{None}, or absent, when not
        given; a list for a repeatable option).
    @param environ: the environment (default C{os.environ}).
    @rtype: L{Loaded}
    @raise SettingError: for the first bad value, naming it and its source.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != []}
    environ = os.environ if environ is None else environ
    names = {setting.name for setting in table}
    from_file, path = {}, None
    if "config" in names:
        path, source = flags.get("config"), "--config"
        if path is None and CONFIG.env in environ:
            path, source = environ[CONFIG.env], CONFIG.env + " (environment)"
        if path:
            from_file = _file_values(table, _read_yaml(path, source), path)

    def raw(setting):
        """(text, source) of the first source that gives C{setting}, else L{None}."""
        if setting.option and setting.name in flags:
            return flags[setting.name], "--" + setting.name
        if setting.env and setting.env in environ:
            return environ[setting.env], setting.env + " (environment)"
        if setting.name in from_file:
            value, key = from_file[setting.name]
            if value is not None:
                return _InFile(value), "{} in {}".format(key, path)
        return None

    by_name = {setting.name: setting for setting in table}
    values, sources = {}, {}
    for setting in table:
        if setting.unless and raw(by_name[setting.unless]) is not None:
            values[setting.name], sources[setting.name] = None, "default"
            continue
        found = raw(setting)
        value = None
        if found is not None:
            given, source = found
            try:
                if isinstance(given, _InFile):
                    given = _from_file(setting, given.value)
                value = _parse(setting, given)
            except ValueError as e:
                raise SettingError("{}: {}".format(source, e), setting.name, source)
            sources[setting.name] = source
        if value is None and setting.default is not None:
            value = _parse(setting, setting.default)
        values[setting.name] = value
        sources.setdefault(setting.name, "default")
    return Loaded(values, sources)


# -- the twistd front-end -------------------------------------------------------------------


def _one_line(text):
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


class SettingsOptions(usage.Options):
    """
    C{usage.Options} of a table of L{Setting}s: one option per setting (a repeatable one
    through an C{opt_} method), C{--help} from the table, and every error one line and
    exit status 2 (twistd's own handling would print the whole usage text and exit 1).
    Subclasses set C{settings} and C{program}, and may add cross-checks in L{check}.
    After parsing, C{self[name]} is each setting's value, C{self.loaded} the
    L{Loaded}, and C{self.given} the options as the command line gave them (name -> text,
    a list for a repeatable one, L{None} when not given).
    """

    settings = ()
    program = "amalgam8"
    synopsis = "[options]"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.optParameters = [[s.name, None, None, s.usage_help()]
                             for s in cls.settings if s.option and not s.repeat]
        for setting in cls.settings:
            if setting.option and setting.repeat:
                setattr(cls, "opt_" + setting.key, _repeated(setting))

    def __init__(self, environ=None):
        usage.Options.__init__(self)
        self.environ = os.environ if environ is None else environ
        self.repeated = {}

    def parseOptions(self, options=None):
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            sys.stderr.write("{}: {}\n".format(self.program, _one_line(e)))
            sys.stderr.flush()
            raise SystemExit(2)

    def given_flags(self):
        flags = dict(self.repeated)
        for setting in self.settings:
            if setting.option and not setting.repeat:
                flags[setting.name] = self[setting.name]
        return flags

    def postOptions(self):
        # What the command line gave, as text (C{given}): what a worker is passed again.
        self.given = self.given_flags()
        try:
            self.loaded = load(self.settings, self.given, self.environ)
            self.update(self.loaded.values)
            self.check()
        except SettingError as e:
            raise usage.UsageError(str(e))

    def check(self):
        """Cross-setting checks of a subclass; raise L{SettingError}."""


def _repeated(setting):
    def opt(self, value):
        self.repeated.setdefault(setting.name, []).append(value)

    opt.__doc__ = setting.usage_help() + " (repeatable)"
    return opt


# -- the argparse front-end (a8ctl) ---------------------------------------------------------


def add_arguments(group, table):
    """
    Add C{table}'s options to an C{argparse} parser or group. They default to C{SUPPRESS}
    (absent unless given), so L{given_arguments} sees only what the command line gave.
    """
    import argparse

    for setting in table:
        if setting.option:
            group.add_argument("--" + setting.name, dest=setting.key, metavar=setting.metavar,
                               default=argparse.SUPPRESS, help=setting.usage_help()
                               .replace("%", "%%"))


def given_arguments(namespace, table):
    """The flags of L{load} from an C{argparse} namespace."""
    return {s.name: getattr(namespace, s.key, None) for s in table if s.option}


# -- the settings every server takes (SPEC Part C) ------------------------------------------

DEFAULT_PORT = "8080"


def _auth_modes(text):
    from amalgam8.auth import parse_modes

    return parse_modes(text)


def _level(text):
    from amalgam8.logs import parse_level

    return parse_level(text)


def _connection_cap(text):
    """C{auto} (L{None}: derived from the open-file limit at start) or a whole number."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        return parse_positive_int(text)
    except ValueError:
        raise ValueError("expected auto or a whole number above 0, not {!r}".format(text))


SERVER_SETTINGS = (
    CONFIG,
    Setting("listen", None, check_endpoint, None,
            "Where to listen: any Twisted endpoint string (`tcp:8080:interface=127.0.0.1`, "
            "`ssl:8443:privateKey=key.pem:certKey=cert.pem`).",
            repeat=True, shown_default="`tcp:8080` (`tcp:` and the API port)", metavar="ENDPOINT"),
    Setting("api-port", "A8_API_PORT", parse_port, DEFAULT_PORT,
            "The port to listen on (every interface) when no `--listen` is given.",
            option=False, unless="listen"),
    Setting("auth-mode", "A8_AUTH_MODE", _auth_modes, "default",
            "How a bearer token maps to a namespace: `default`, `trusted`, `jwt`, or a "
            "comma-separated chain such as `default,jwt`. A weaker mode after a stronger one "
            "(strength `jwt` > `trusted` > `default`) is refused at start unless "
            "`allow-trusted-fallback` is true."),
    Setting("allow-trusted-fallback", "A8_ALLOW_TRUSTED_FALLBACK", parse_bool, "false",
            "Allow an auth chain with a weaker mode after a stronger one (`jwt,trusted`, "
            "`jwt,default`, `trusted,default`), for a migration: warned at start, and each "
            "request the weaker mode accepts is counted in `/metrics` "
            "(`a8_registry_auth_fallback_total{mode}`, "
            "`a8_controller_auth_fallback_total{mode}`)."),
    Setting("jwt-secret", "A8_JWT_SECRET", parse_text, None,
            "The HS256 secret for the `jwt` mode (required when `jwt` is in the chain)."),
    Setting("require-https", "A8_REQUIRE_HTTPS", parse_bool, "false",
            "Redirect every plain-HTTP request with 301 to the same URL over https. "
            "`X-Forwarded-Proto: https` (from a TLS-terminating proxy) counts as HTTPS."),
    Setting("log-level", "A8_LOG_LEVEL", _level, "info",
            "`debug`, `info`, `warn` or `error`. Checked at start (a bad value stops it); "
            "the JSON log observer drops events below the level it reads from "
            "`A8_LOG_LEVEL`. In this version the `--log-level` option does not reach the "
            "observer: set the environment variable."),
    Setting("metrics-token", "A8_METRICS_TOKEN", parse_text, None,
            "When set, `GET /metrics` needs `Authorization: Bearer <this token>`."),
    Setting("read-timeout", "A8_READ_TIMEOUT", parse_positive_duration, "10s",
            "How long a request (line, headers and body) may take to arrive from its first "
            "byte; a slower one is answered 408 and its connection closed."),
    Setting("idle-timeout", "A8_IDLE_TIMEOUT", parse_positive_duration, "15s",
            "How long a connection may stay open with no request in it. Above the default "
            "heartbeat interval (ttl/3 = 10s), so a sidecar's connection is kept."),
    Setting("processes", "A8_PROCESSES", parse_positive_int, "1",
            "Serve from this many processes on the same listening sockets (the first one "
            "binds them and supervises the others), so one host uses all its cores. More "
            "than 1 needs a shared store (Redis, etcd) and `tcp` listeners."),
    Setting("max-connections", "A8_MAX_CONNECTIONS", _connection_cap, "auto",
            "The most client connections served at once; one more is answered 503 with "
            "`Retry-After` as soon as it is accepted. `auto`: the open-file limit (raised "
            "at start to the hard limit) less 64, so accepting never fails for want of a "
            "descriptor."),
)


def site_limits(options):
    """The connection limits of a server's L{amalgam8.web.A8Site}, as keyword arguments."""
    return {"read_timeout": options["read-timeout"],
            "idle_timeout": options["idle-timeout"],
            "max_connections": options["max-connections"]}


def check_server(options):
    """Cross-checks of the server settings; the default listener."""
    from amalgam8.auth import fallback_problem

    if "jwt" in options["auth-mode"] and not options["jwt-secret"]:
        raise SettingError("--auth-mode jwt needs --jwt-secret (A8_JWT_SECRET){}".format(
            options.loaded.origins("auth-mode")))
    problem = fallback_problem(options["auth-mode"])
    if problem is not None and not options["allow-trusted-fallback"]:
        raise SettingError("--auth-mode {}{}; set --allow-trusted-fallback true "
                           "(A8_ALLOW_TRUSTED_FALLBACK) to allow it during a migration".format(
                               problem, options.loaded.origins("auth-mode")))
    if not options["listen"]:
        options["listen"] = ["tcp:{}".format(options["api-port"])]


# -- the docs -------------------------------------------------------------------------------

# program -> (module holding its SETTINGS, the doc that shows them)
PROGRAMS = {
    "registry": ("amalgam8.registry.tap", "docs/registry.md"),
    "controller": ("amalgam8.controller.tap", "docs/controller.md"),
    "sidecar": ("amalgam8.sidecar.config", "docs/sidecar.md"),
    "a8ctl": ("amalgam8.cli.main", "docs/a8ctl.md"),
}


def table_of(program):
    return importlib.import_module(PROGRAMS[program][0]).SETTINGS


def _cell(text):
    return text.replace("|", "\\|")


_LAYERS = ("An option beats its `A8_*` environment variable, which beats the YAML file named "
           "by `--config` or `A8_CONFIG` (a mapping of the YAML keys below, such as "
           "`{}: ...`), which beats the default. A bad value stops the start with one line "
           "naming it and where it came from, and exit status 2.")


def markdown(table):
    """The Markdown of the settings in C{table}: how the sources layer, and the table."""
    example = next(k for s in table for k in s.yaml_keys() if "." not in k)
    lines = [_LAYERS.format(example), "",
             "| option | environment | YAML key | default | meaning |",
             "|---|---|---|---|---|"]
    for s in table:
        option = ""
        if s.option:
            option = "`--{}{}`".format(s.name, " " + s.metavar if s.metavar else "")
            if s.repeat:
                option += " (repeatable)"
        lines.append("| {} | {} | {} | {} | {} |".format(
            option, "`{}`".format(s.env) if s.env else "",
            ", ".join("`{}`".format(k) for k in s.yaml_keys()),
            _cell(s.describe_default()), _cell(s.help)))
    return "\n".join(lines) + "\n"


def markers(program):
    return ("<!-- settings table of {}: generated from its SETTINGS by "
            "`python -m amalgam8.settings --write`; do not edit -->".format(program),
            "<!-- end of the settings table of {} -->".format(program))


def rewrite(text, program):
    """C{text} (a doc) with its settings table of C{program} regenerated."""
    begin, end = markers(program)
    head, found, rest = text.partition(begin + "\n")
    _, found_end, tail = rest.partition(end)
    if not found or not found_end:
        raise ValueError("no settings table markers for {}".format(program))
    return head + begin + "\n" + markdown(table_of(program)) + end + tail


def main(argv, root="."):
    """C{python -m amalgam8.settings --markdown PROGRAM | --write}."""
    if len(argv) == 2 and argv[0] == "--markdown" and argv[1] in PROGRAMS:
        sys.stdout.write(markdown(table_of(argv[1])))
        return 0
    if argv == ["--write"]:
        for program, (_, doc) in PROGRAMS.items():
            path = os.path.join(root, doc)
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(rewrite(text, program))
        return 0
    sys.stderr.write("usage: python -m amalgam8.settings --markdown {} | --write\n"
                     .format("|".join(PROGRAMS)))
    return 2


# -- the servers' service tree --------------------------------------------------------------


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
        raise_fd_limit(self.program)
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as e:
            sys.stderr.write("{}: cannot listen: {}\n".format(self.program, e))
            sys.stderr.flush()
            raise SystemExit(2)


def raise_fd_limit(program, limits=None, log=None):
    """
    Raise the soft open-file limit (RLIMIT_NOFILE) to the hard one (to 2**20 when the hard
    one is unlimited) and log it: a server holds one descriptor per client connection.

    @param limits: the C{resource} module, or a stand-in with C{getrlimit}, C{setrlimit},
        C{RLIMIT_NOFILE} and C{RLIM_INFINITY}.
    @return: the soft limit in force.
    """
    if limits is None:
        import resource as limits
    log = log or _log
    soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    target = (1 << 20) if hard == limits.RLIM_INFINITY else hard
    if soft != limits.RLIM_INFINITY and soft < target:
        try:
            limits.setrlimit(limits.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warn("{program} could not raise its open-file limit from {soft} to "
                     "{target}: {error}", program=program, soft=soft, target=target,
                     error=str(e))
            return soft
        log.info("{program} raised its open-file limit from {soft} to {target}",
                 program=program, soft=soft, target=target)
        return target
    return soft


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


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
