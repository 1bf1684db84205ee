"""
Tests for L{amalgam8.sidecar.config} and the a8sidecar options: precedence of the sources
and one clear error for every bad value.
"""

import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from amalgam8.sidecar.config import ConfigError, load
from amalgam8.sidecar.tap import Options

BASE = {"A8_SERVICE": "reviews:v1", "A8_REGISTER": "true", "A8_ENDPOINT_PORT": "9080",
        "A8_REGISTRY_URL": "http://127.0.0.1:8080"}


class LoadTests(SynchronousTestCase):
    """Flags > environment > YAML file > defaults."""

    def yaml(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        """A register-only sidecar gets the documented defaults."""
        config = load({}, dict(BASE))
        self.assertEqual((config.service_name, config.service_tags, config.endpoint_type,
                          config.ttl, config.proxy_port, config.proxy_admin_port,
                          config.debug_port, config.stop_timeout, config.registry_poll),
                         ("reviews", ("v1",), "http", 60, 6379, 5813, 6116, 30.0, 15.0))
        self.assertFalse(config.endpoint_host.startswith("127.") and
                         config.endpoint_host != "127.0.0.1")

    def test_precedence(self):
        """A flag beats the environment, which beats the file."""
        path = self.yaml("service:\n  name: fromfile\n  tags: [f]\nendpoint:\n  port: 1\n"
                         "register: true\nregistry:\n  url: http://file:1\n")
        config = load({"config": path}, {})
        self.assertEqual((config.service_name, config.endpoint_port), ("fromfile", 1))
        config = load({"config": path}, {"A8_ENDPOINT_PORT": "2"})
        self.assertEqual(config.endpoint_port, 2)
        config = load({"config": path, "endpoint_port": "3"}, {"A8_ENDPOINT_PORT": "2"})
        self.assertEqual(config.endpoint_port, 3)
        config = load({}, {"A8_CONFIG": path})
        self.assertEqual(config.registry_url, "http://file:1")

    def test_yaml_healthchecks_and_commands(self):
        """YAML health checks and commands are read with their defaults."""
        path = self.yaml(
            "service: {name: a}\nregister: true\nendpoint: {port: 80}\n"
            "registry: {url: 'http://r:1'}\n"
            "healthchecks:\n  - type: http\n    value: http://localhost:80/health\n"
            "    interval: 10s\n  - {type: tcp, value: 'localhost:80'}\n"
            "commands:\n  - cmd: [python, app.py]\n    env: [A=1]\n    on_exit: terminate\n")
        config = load({"config": path}, {})
        self.assertEqual([(c.type, c.interval, c.timeout, c.code) for c in config.healthchecks],
                         [("http", 10.0, 5.0, 200), ("tcp", 30.0, 5.0, 200)])
        self.assertEqual([(c.cmd, c.env, c.on_exit) for c in config.commands],
                         [(("python", "app.py"), ("A=1",), "terminate")])

    def test_env_healthchecks(self):
        """A8_HEALTHCHECKS is a comma list of URL-like checks."""
        config = load({}, dict(BASE, A8_HEALTHCHECKS="http://localhost:9080/h,tcp://db:5432,"
                                                     "file://true"))
        self.assertEqual([(c.type, c.value) for c in config.healthchecks],
                         [("http", "http://localhost:9080/h"), ("tcp", "db:5432"),
                          ("file", "true")])

    def test_app_terminates(self):
        """Trailing arguments are one app with on_exit terminate."""
        config = load({}, dict(BASE), app=("python", "app.py"))
        self.assertEqual([(c.cmd, c.on_exit) for c in config.commands],
                         [(("python", "app.py"), "terminate")])

    def test_proxy_only(self):
        """A gateway: proxy without registration needs both server URLs."""
        config = load({}, {"A8_SERVICE": "gateway", "A8_PROXY": "true",
                           "A8_REGISTRY_URL": "http://r:1", "A8_CONTROLLER_URL": "http://c:2"})
        self.assertTrue(config.proxy)
        self.assertFalse(config.register)

    def bad(self, environ, words, flags=None):
        error = self.assertRaises(ConfigError, load, flags or {}, environ)
        self.assertIn(words, str(error))
        self.assertNotIn("\n", str(error))

    def test_bad_values(self):
        """Each bad value is refused, naming where it came from."""
        self.bad({}, "at least one of register and proxy")
        self.bad(dict(BASE, A8_REGISTER="maybe"), "A8_REGISTER")
        self.bad(dict(BASE, A8_ENDPOINT_PORT="99999"), "A8_ENDPOINT_PORT")
        self.bad(dict(BASE, A8_ENDPOINT_PORT="http"), "A8_ENDPOINT_PORT")
        self.bad(dict(BASE, A8_REGISTRY_URL="localhost:8080"), "A8_REGISTRY_URL")
        self.bad(dict(BASE, A8_REGISTRY_URL="http://h:notaport"), "A8_REGISTRY_URL")
        self.bad(dict(BASE, A8_HEALTHCHECKS="ftp://x"), "A8_HEALTHCHECKS")
        self.bad(dict(BASE, A8_HEALTHCHECKS="tcp://nohostport"), "A8_HEALTHCHECKS")
        self.bad(dict(BASE, A8_REGISTRY_POLL="soon"), "A8_REGISTRY_POLL")
        self.bad(dict(BASE, A8_ENDPOINT_TYPE="carrier-pigeon"), "A8_ENDPOINT_TYPE")
        self.bad(dict(BASE, A8_LOG_LEVEL="loud"), "A8_LOG_LEVEL")
        self.bad(dict(BASE, A8_SERVICE="a/b"), "A8_SERVICE")
        self.bad(dict(BASE, A8_PROXY="true"), "A8_CONTROLLER_URL")
        self.bad({"A8_SERVICE": "a", "A8_REGISTER": "true",
                  "A8_REGISTRY_URL": "http://r:1"}, "A8_ENDPOINT_PORT")
        self.bad(dict(BASE), "--endpoint-port", flags={"endpoint_port": "0"})
        # nginx cannot listen on port 0; only the debug API may be turned off with it.
        self.bad(dict(BASE, A8_PROXY_PORT="0"), "A8_PROXY_PORT")
        self.bad(dict(BASE, A8_PROXY_ADMIN_PORT="0"), "A8_PROXY_ADMIN_PORT")

    def test_bad_service(self):
        """An empty tag (C{a:}, C{a:v1,,v2}) is a typo, refused; no colon is no tags."""
        self.bad(dict(BASE, A8_SERVICE="a:"), "A8_SERVICE (environment): 'a:' has an empty tag")
        self.bad(dict(BASE, A8_SERVICE="a:v1,,v2"), "'a:v1,,v2' has an empty tag")
        self.bad(dict(BASE, A8_SERVICE="a:v1, ,v2"), "has an empty tag")
        self.bad(dict(BASE, A8_SERVICE="a:v 1"), "a tag with a space")
        config = load({}, dict(BASE, A8_SERVICE="a"))
        self.assertEqual((config.service_name, config.service_tags), ("a", ()))
        config = load({}, dict(BASE, A8_SERVICE="a: v1 ,v2"))
        self.assertEqual(config.service_tags, ("v1", "v2"))

    def test_endpoint_host(self):
        """An address or a host name; anything else is refused."""
        for host in ("a b", "a/b", "-a", "a..b", "http://a", "a_b" + "x" * 70):
            self.bad(dict(BASE, A8_ENDPOINT_HOST=host), "A8_ENDPOINT_HOST (environment): "
                     "{!r} is not an IP address or host name".format(host))
        for host in ("10.0.0.5", "::1", "reviews-v1.default.svc", "host_1", "example.com."):
            self.assertEqual(load({}, dict(BASE, A8_ENDPOINT_HOST=host)).endpoint_host, host)

    def test_ports_must_differ(self):
        """The proxy port, its admin port and the debug port cannot be the same port."""
        proxy = dict(BASE, A8_PROXY="true", A8_CONTROLLER_URL="http://c:2")
        self.bad(dict(proxy, A8_PROXY_PORT="7000", A8_PROXY_ADMIN_PORT="7000"),
                 "A8_PROXY_ADMIN_PORT: port 7000 is also A8_PROXY_PORT (from "
                 "A8_PROXY_ADMIN_PORT (environment), A8_PROXY_PORT (environment))")
        self.bad(dict(proxy, A8_DEBUG_PORT="5813"),
                 "A8_DEBUG_PORT: port 5813 is also A8_PROXY_ADMIN_PORT")
        self.assertEqual(load({}, dict(proxy, A8_DEBUG_PORT="0")).debug_port, 0)

    def test_runtime_dir_must_be_a_directory(self):
        """A8_RUNTIME_DIR naming a file, or under one, is refused; a new path is fine."""
        proxy = dict(BASE, A8_PROXY="true", A8_CONTROLLER_URL="http://c:2")
        path = self.yaml("not a directory\n")
        self.bad(dict(proxy, A8_RUNTIME_DIR=path),
                 "A8_RUNTIME_DIR: {} is not a directory (from A8_RUNTIME_DIR "
                 "(environment))".format(path))
        self.bad(dict(proxy, A8_RUNTIME_DIR=os.path.join(path, "sub", "dir")),
                 "cannot be made: {} is not a directory".format(os.path.abspath(path)))
        fresh = os.path.join(self.mktemp(), "runtime")
        self.assertEqual(load({}, dict(proxy, A8_RUNTIME_DIR=fresh)).runtime_dir, fresh)

    def test_bad_files(self):
        """A missing file, bad YAML and unknown keys are refused."""
        self.bad({"A8_CONFIG": "/nonexistent/a8.yaml"}, "cannot read")
        self.bad({"A8_CONFIG": self.yaml("service: [unclosed\n")}, "not valid YAML")
        self.bad({"A8_CONFIG": self.yaml("servce: x\n")}, "unknown key servce")
        self.bad({"A8_CONFIG": self.yaml("registry: {urll: x}\n")}, "registry.urll")
        self.bad({"A8_CONFIG": self.yaml(
            "service: {name: a}\nregister: true\nendpoint: {port: 1}\n"
            "registry: {url: 'http://r:1'}\ncommands:\n  - cmd: x\n    on_exit: explode\n")},
            "on_exit")
        self.bad({"A8_CONFIG": self.yaml(
            "service: {name: a}\nregister: true\nendpoint: {port: 1}\n"
            "registry: {url: 'http://r:1'}\nhealthchecks:\n  - {type: http, value: nope}\n")},
            "not an http(s) URL")


class OptionsTests(SynchronousTestCase):
    """a8sidecar's options: bad configuration exits with status 2 and one line."""

    def parse(self, argv, environ):
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        options = Options(environ=environ)
        try:
            options.parseOptions(argv)
        except SystemExit as e:
            return e.code, stderr.getvalue(), None
        return 0, stderr.getvalue(), options

    def test_app_after_dashes(self):
        """Arguments after -- are the app."""
        code, _, options = self.parse(["--", "python", "-c", "pass"], dict(BASE))
        self.assertEqual(code, 0)
        self.assertEqual(options["sidecar"].commands[0].cmd, ("python", "-c", "pass"))

    def test_flag_beats_env(self):
        """A flag beats its environment variable."""
        _, _, options = self.parse(["--endpoint-port", "7000"], dict(BASE))
        self.assertEqual(options["sidecar"].endpoint_port, 7000)

    def test_bad_exit_2(self):
        """A bad value: exit status 2 and exactly one line naming it."""
        for argv, environ, words in (
                (["--endpoint-port", "70000"], dict(BASE), "--endpoint-port"),
                ([], dict(BASE, A8_REGISTER="no"), "register and proxy"),
                (["--bogus"], dict(BASE), "bogus"),
                ([], dict(BASE, A8_HEALTHCHECKS="gopher://x"), "A8_HEALTHCHECKS")):
            code, err, _ = self.parse(argv, environ)
            self.assertEqual(code, 2, argv)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(words, err)
