"""
Tests for L{amalgam8.settings}: the one settings engine of every program. Each source beats
the next (flags > environment > YAML file > defaults), a bad value is one line naming it and
its source, the YAML file works for the servers and a8ctl as for the sidecar, and C{--help}
and the docs' tables come from the same tables.
"""

import io
import os
import subprocess
import sys
from io import StringIO

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from amalgam8 import settings
from amalgam8.cli import dispatch
from amalgam8.cli.main import SETTINGS as A8CTL_SETTINGS
from amalgam8.controller.tap import Options as ControllerOptions
from amalgam8.registry.tap import SETTINGS as REGISTRY_SETTINGS
from amalgam8.registry.tap import Options as RegistryOptions
from amalgam8.settings import CONFIG, Setting, SettingError, load, parse_port
from amalgam8.sidecar.tap import Options as SidecarOptions

from .helpers import child_environment, twistd_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TABLE = (
    CONFIG,
    Setting("port", "A8_PORT", parse_port, "80", "A port.", yaml=("server.port",)),
    Setting("name", "A8_NAME", str.strip, None, "A name."),
    Setting("peer", None, str.strip, None, "A peer.", repeat=True),
    Setting("fallback", "A8_FALLBACK", parse_port, "1", "Unless peer.", option=False,
            unless="peer"),
)


class Files:
    def yaml(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path


class LayerTests(Files, SynchronousTestCase):
    """Each source beats the next, and the source of each value is recorded."""

    def test_default(self):
        """With nothing given, the default text is parsed; no default is None."""
        loaded = load(TABLE, {}, {})
        self.assertEqual((loaded["port"], loaded["name"], loaded["peer"]), (80, None, None))
        self.assertEqual(loaded.sources["port"], "default")

    def test_file_beats_default(self):
        path = self.yaml("server: {port: 81}\nname: ' f '\npeer: [a, b]\n")
        loaded = load(TABLE, {}, {"A8_CONFIG": path})
        self.assertEqual((loaded["port"], loaded["name"], loaded["peer"]), (81, "f", ["a", "b"]))
        self.assertEqual(loaded.sources["port"], "server.port in " + path)

    def test_environment_beats_file(self):
        path = self.yaml("port: 81\n")
        loaded = load(TABLE, {}, {"A8_CONFIG": path, "A8_PORT": "82"})
        self.assertEqual(loaded["port"], 82)
        self.assertEqual(loaded.sources["port"], "A8_PORT (environment)")

    def test_flag_beats_environment(self):
        path = self.yaml("port: 81\n")
        loaded = load(TABLE, {"port": "83", "config": path}, {"A8_PORT": "82"})
        self.assertEqual(loaded["port"], 83)
        self.assertEqual(loaded.sources["port"], "--port")

    def test_config_flag_beats_environment(self):
        """--config names the file over A8_CONFIG."""
        one, two = self.yaml("port: 1\n"), self.yaml("port: 2\n")
        self.assertEqual(load(TABLE, {"config": two}, {"A8_CONFIG": one})["port"], 2)

    def test_winner_only_parsed(self):
        """A bad value of a source that lost is never looked at."""
        path = self.yaml("port: nope\n")
        self.assertEqual(load(TABLE, {"port": "5"}, {"A8_CONFIG": path, "A8_PORT": "x"})
                         ["port"], 5)

    def test_unless(self):
        """A setting read only when another is not given (A8_API_PORT beside --listen)."""
        self.assertEqual(load(TABLE, {}, {"A8_FALLBACK": "7"})["fallback"], 7)
        self.assertIsNone(load(TABLE, {"peer": ["p"]}, {"A8_FALLBACK": "x"})["fallback"])
        path = self.yaml("peer: p\n")
        self.assertIsNone(load(TABLE, {}, {"A8_CONFIG": path, "A8_FALLBACK": "x"})
                          ["fallback"])

    def test_yaml_scalars(self):
        """YAML numbers and booleans reach the parsers as the text they would be."""
        table = (CONFIG, Setting("flag", None, settings.parse_bool, "false", "."),
                 Setting("port", None, parse_port, None, "."))
        loaded = load(table, {}, {"A8_CONFIG": self.yaml("flag: 1\nport: 8\n")})
        self.assertEqual((loaded["flag"], loaded["port"]), (True, 8))
        self.assertIs(load(table, {}, {"A8_CONFIG": self.yaml("flag: true\n")})["flag"], True)


class ErrorTests(Files, SynchronousTestCase):
    """One error type; its one line names the setting and where it came from."""

    def bad(self, flags, environ, expected):
        error = self.assertRaises(SettingError, load, TABLE, flags, environ)
        self.assertEqual(str(error), expected)
        return error

    def test_environment(self):
        error = self.bad({}, {"A8_PORT": "x"},
                         "A8_PORT (environment): expected a port number, not 'x'")
        self.assertEqual((error.setting, error.source), ("port", "A8_PORT (environment)"))

    def test_flag(self):
        self.bad({"port": "70000"}, {}, "--port: port 70000 is out of range 0-65535")

    def test_file(self):
        path = self.yaml("server:\n  port: [1, 2]\n")
        self.bad({}, {"A8_CONFIG": path},
                 "server.port in {}: expected a single value, not a list".format(path))

    def test_unknown_keys(self):
        path = self.yaml("prot: 1\n")
        self.bad({}, {"A8_CONFIG": path}, "{}: unknown key prot".format(path))
        path = self.yaml("server: {prot: 1}\n")
        self.bad({}, {"A8_CONFIG": path}, "{}: unknown key server.prot".format(path))
        path = self.yaml("config: other.yaml\n")
        self.bad({}, {"A8_CONFIG": path}, "{}: unknown key config".format(path))

    def test_files(self):
        """A file that cannot be read, is not YAML or not a mapping: one line."""
        error = self.assertRaises(SettingError, load, TABLE, {"config": "/nonexistent/a"}, {})
        self.assertTrue(str(error).startswith("--config: cannot read /nonexistent/a"))
        for text, words in (("a: [\n", "is not valid YAML"), ("- 1\n", "must be a mapping")):
            error = self.assertRaises(SettingError, load, TABLE, {},
                                      {"A8_CONFIG": self.yaml(text)})
            self.assertIn(words, str(error))
            self.assertNotIn("\n", str(error))

    def test_binary_and_deep_files(self):
        """A binary file and YAML nested 10,000 deep: one line each, not a traceback."""
        binary = self.mktemp()
        with open(binary, "wb") as f:
            f.write(b"\xcb\x00\xff\xfe" * 50)
        deep = self.yaml("a: " + "[" * 10000 + "]" * 10000 + "\n")
        for path, words in ((binary, "is not UTF-8 text"), (deep, "is nested too deeply")):
            error = self.assertRaises(SettingError, load, TABLE, {}, {"A8_CONFIG": path})
            self.assertEqual(str(error), "A8_CONFIG (environment): {} {}".format(path, words))
            self.assertEqual(error.setting, "config")

    def test_url(self):
        """A URL that cannot be split, or with port 0 or out of range, is refused."""
        for text, words in (("http://[::1", "is not a URL: Invalid IPv6 URL"),
                            ("http://h:0", "has a bad port (1-65535)"),
                            ("http://h:65536", "has a bad port (1-65535)"),
                            ("http://h:x", "has a bad port (1-65535)")):
            error = self.assertRaises(ValueError, settings.parse_url, text)
            self.assertEqual(str(error), "{!r} {}".format(text, words))
        self.assertEqual(settings.parse_url("http://[::1]:80/"), "http://[::1]:80")

    def test_urls(self):
        """
        Several URLs (a server's replicas) are comma-separated or a YAML list; each is
        checked as one URL, none may repeat, blank is none.
        """
        self.assertEqual(settings.parse_urls(" http://a:1/ , https://b "),
                         "http://a:1,https://b")
        self.assertEqual(settings.parse_urls(["http://a:1", "http://b:2/"]),
                         "http://a:1,http://b:2")
        self.assertEqual(settings.parse_urls("http://a"), "http://a")
        self.assertIsNone(settings.parse_urls(" , "))
        for text, words in (("http://a,ftp://b", "'ftp://b' is not an http(s) URL"),
                            ("http://a,http://a/", "'http://a,http://a/' names a URL twice"),
                            ("http://a,http://h:0", "'http://h:0' has a bad port (1-65535)")):
            error = self.assertRaises(ValueError, settings.parse_urls, text)
            self.assertEqual(str(error), words)

    def test_one_line(self):
        """A message with line breaks is one line."""
        self.assertEqual(str(SettingError("a\nb")), "a b")


class ServerFileTests(Files, SynchronousTestCase):
    """The servers read the YAML file too, under the options and the environment."""

    def parse(self, options_class, argv, environ):
        options = options_class(environ=environ)
        options.parseOptions(argv)
        return options

    def parse_bad(self, options_class, argv, environ):
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, options_class(environ=environ).parseOptions, argv)
        self.assertEqual(error.code, 2)
        self.assertEqual(stderr.getvalue().count("\n"), 1, stderr.getvalue())
        return stderr.getvalue()

    def test_registry(self):
        path = self.yaml("default_ttl: 45s\nlog_level: debug\nlisten: [tcp:0, tcp:1]\n"
                         "auth_mode: jwt,trusted\nallow_trusted_fallback: true\njwt_secret: k\n"
                         "namespace_capacity: 5\n")
        options = self.parse(RegistryOptions, [], {"A8_CONFIG": path})
        self.assertEqual((options["default-ttl"], options["log-level"], options["listen"],
                          options["auth-mode"], options["namespace-capacity"]),
                         (45.0, LogLevel.debug, ["tcp:0", "tcp:1"], ("jwt", "trusted"), 5))
        options = self.parse(RegistryOptions, ["--config", path, "--default-ttl", "20"],
                             {"A8_LOG_LEVEL": "error"})
        self.assertEqual((options["default-ttl"], options["log-level"]), (20.0, LogLevel.error))

    def test_api_port_in_file(self):
        path = self.yaml("api_port: 9091\n")
        self.assertEqual(self.parse(ControllerOptions, [], {"A8_CONFIG": path})["listen"],
                         ["tcp:9091"])

    def test_bad_value_in_file(self):
        path = self.yaml("trace_capacity: lots\n")
        line = self.parse_bad(ControllerOptions, [], {"A8_CONFIG": path})
        self.assertEqual(line, "a8controller: trace_capacity in {}: expected a whole number, "
                               "not 'lots'\n".format(path))

    def test_unknown_key(self):
        """A registry-only key is refused by the controller."""
        path = self.yaml("default_ttl: 30s\n")
        self.assertIn("unknown key default_ttl", self.parse_bad(ControllerOptions, [],
                                                                {"A8_CONFIG": path}))

    def test_cross_check_names_source(self):
        """A cross-setting error says where the values came from."""
        path = self.yaml("min_ttl: 0\n")
        self.assertEqual(self.parse_bad(RegistryOptions, [], {"A8_CONFIG": path}),
                         "a8registry: --min-ttl must be above 0 (from min_ttl in {})\n"
                         .format(path))
        self.assertIn("(from A8_AUTH_MODE (environment))",
                      self.parse_bad(ControllerOptions, [], {"A8_AUTH_MODE": "jwt"}))

    def test_sidecar_flat_keys(self):
        """The sidecar takes each setting's flat key as well as the nested one."""
        path = self.yaml("service: a\nregister: true\nendpoint_port: 80\n"
                         "registry_url: http://r:1\n")
        config = self.parse(SidecarOptions, [], {"A8_CONFIG": path})["sidecar"]
        self.assertEqual((config.endpoint_port, config.registry_url), (80, "http://r:1"))


class HelpTests(SynchronousTestCase):
    """--help comes from the tables."""

    def test_twistd_help(self):
        """Each option of a table is in --help, with its variable and its default."""
        for options_class in (RegistryOptions, ControllerOptions, SidecarOptions):
            text = str(options_class(environ={}))
            for setting in options_class.settings:
                if setting.option:
                    self.assertIn("--" + setting.name, text)
                if setting.option and setting.env:
                    self.assertIn(setting.env, " ".join(text.split()))
            self.assertIn("default 30s", " ".join(str(RegistryOptions(environ={})).split()))

    def test_a8ctl_help(self):
        out = StringIO()
        d = Deferred.fromCoroutine(dispatch(Clock(), ["--help"], out, StringIO(), None,
                                            environ={}))
        self.assertEqual(self.successResultOf(d), 0)
        text = " ".join(out.getvalue().split())
        for setting in A8CTL_SETTINGS:
            self.assertIn("--" + setting.name, text)
            self.assertIn(setting.env, text)
        self.assertIn("default http://localhost:8081", text)


class A8ctlSettingsTests(Files, SynchronousTestCase):
    """a8ctl's global settings: layered like the others; a bad one is exit 2, one line."""

    def run_a8ctl(self, argv, environ):
        out, err = StringIO(), StringIO()
        d = Deferred.fromCoroutine(dispatch(Clock(), argv, out, err, None, environ=environ))
        return self.successResultOf(d), err.getvalue()

    def test_bad_setting(self):
        for argv, environ, words in (
                (["info"], {"A8_CONTROLLER_URL": "localhost:8081"}, "A8_CONTROLLER_URL "
                                                                    "(environment)"),
                (["info", "--a8-registry-url", "ftp://x"], {}, "--a8-registry-url"),
                (["info"], {"A8_CONFIG": self.yaml("registry_url: x\n")}, "registry_url in"),
                (["info"], {"A8_CONFIG": self.yaml("colour: red\n")}, "unknown key colour")):
            code, err = self.run_a8ctl(argv, environ)
            self.assertEqual(code, 2, err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith("a8ctl: "), err)
            self.assertIn(words, err)

    def test_layers(self):
        """The values dispatch uses: flag > environment > file > default."""
        path = self.yaml("registry_url: http://file:1\ncontroller_token: filetok\n")
        flags = {"a8-registry-url": None}
        loaded = load(A8CTL_SETTINGS, flags, {"A8_CONFIG": path})
        self.assertEqual((loaded["a8-registry-url"], loaded["a8-controller-token"],
                          loaded["a8-controller-url"]),
                         ("http://file:1", "filetok", "http://localhost:8081"))
        loaded = load(A8CTL_SETTINGS, {}, {"A8_CONFIG": path, "A8_REGISTRY_URL": "http://e:2"})
        self.assertEqual(loaded["a8-registry-url"], "http://e:2")

    def test_blank_environment(self):
        """A blank A8_CONTROLLER_URL means the default, as before."""
        loaded = load(A8CTL_SETTINGS, {}, {"A8_CONTROLLER_URL": "", "A8_REGISTRY_TOKEN": ""})
        self.assertEqual((loaded["a8-controller-url"], loaded["a8-registry-token"]),
                         ("http://localhost:8081", None))


class DocsTests(SynchronousTestCase):
    """docs/*.md hold the tables the generator writes from the code's tables."""

    def test_docs_match_tables(self):
        for program, (_, doc) in settings.PROGRAMS.items():
            with open(os.path.join(ROOT, doc)) as f:
                text = f.read()
            self.assertEqual(settings.rewrite(text, program), text,
                             "{} is out of date: run python -m amalgam8.settings --write"
                             .format(doc))

    def test_every_setting_in_docs(self):
        """Every option and variable of the registry is in its doc's table."""
        table = settings.markdown(REGISTRY_SETTINGS)
        for setting in REGISTRY_SETTINGS:
            self.assertIn(setting.env or setting.name, table)

    def test_rewrite(self):
        """Only the text between the markers changes; missing markers are refused."""
        begin, end = settings.markers("a8ctl")
        text = "head\n{}\nold\n{}\ntail\n".format(begin, end)
        new = settings.rewrite(text, "a8ctl")
        self.assertTrue(new.startswith("head\n" + begin + "\n"))
        self.assertTrue(new.endswith(end + "\ntail\n"))
        self.assertIn("`A8_REGISTRY_TOKEN`", new)
        self.assertNotIn("old", new)
        self.assertRaises(ValueError, settings.rewrite, "no markers", "a8ctl")

    def test_markdown_command(self):
        out = StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(settings.main(["--markdown", "controller"]), 0)
        self.assertIn("`A8_DATABASE_TYPE`", out.getvalue())
        err = StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(settings.main(["--markdown", "nope"]), 2)
        self.assertIn("usage", err.getvalue())


class TwistdExitTests(SynchronousTestCase):
    """
    Integration: twistd itself, on a bad setting, prints the one line and exits 2 (no
    usage text, no traceback).
    """

    def test_exit_2(self):
        for plugin, argv, environ, line in (
                ("a8registry", ["--listen", "tcp:0:interface=127.0.0.1", "--min-ttl", "0"], {},
                 "a8registry: --min-ttl must be above 0"),
                ("a8controller", ["--listen", "tcp:0:interface=127.0.0.1"],
                 {"A8_TRACE_CAPACITY": "x"},
                 "a8controller: A8_TRACE_CAPACITY (environment): expected a whole number, "
                 "not 'x'"),
                ("a8sidecar", ["--register", "maybe"], {},
                 "a8sidecar: --register: expected true or false, not 'maybe'"),
                ("a8registry", ["--colour", "red"], {},
                 "a8registry: option --colour not recognized")):
            result = subprocess.run(
                twistd_command() + ["-n", "--pidfile=", plugin] + argv,
                env=child_environment(environ), capture_output=True, text=True, timeout=60)
            self.assertEqual((result.returncode, result.stderr, result.stdout),
                             (2, line + "\n", ""), plugin)
