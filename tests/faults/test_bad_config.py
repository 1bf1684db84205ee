"""
Fault: bad configuration (issue 10 item 7). As processes: C{twistd -n a8sidecar} and
C{a8ctl} started with one bad setting each. Every one exits with status 2 and one line on
stderr naming the setting, never a traceback. A sidecar told to stop (SIGTERM) while its
registry cannot be reached stops without logging a crash.
"""

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from tests.helpers import ServerProcess, child_environment
from tests.test_sidecar_integration import MeshTestCase, free_port

# A register-only sidecar that would start but for the one bad setting.
REGISTER = {"A8_SERVICE": "bad:v1", "A8_REGISTER": "true", "A8_PROXY": "false",
            "A8_ENDPOINT_HOST": "127.0.0.1", "A8_ENDPOINT_PORT": "9",
            "A8_REGISTRY_URL": "http://127.0.0.1:9"}
# A proxy-only sidecar, likewise.
PROXY = {"A8_SERVICE": "bad:v1", "A8_REGISTER": "false", "A8_PROXY": "true",
         "A8_REGISTRY_URL": "http://127.0.0.1:9", "A8_CONTROLLER_URL": "http://127.0.0.1:9"}

DEEP = "a: " + "[" * 10000 + "]" * 10000 + "\n"


def a8ctl_command():
    """The argv that runs a8ctl under the interpreter running these tests."""
    return [sys.executable, "-c", "from amalgam8.cli.main import entry; entry()"]


class BadConfigTests(MeshTestCase):
    """Each bad setting: exit 2, one line on stderr, no traceback."""

    timeout = 120

    def file(self, name, content):
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    async def refused(self, process, words):
        """C{process} exits 2 with one line on stderr holding C{words}, no traceback."""
        self.assertEqual(await process.ended(timeout=20), (2, None), self.describe())
        self.assertEqual(len(process.stderr), 1, process.stderr)
        self.assertIn(words, process.stderr[0])
        output = "\n".join(process.stdout + process.stderr)
        self.assertNotIn("Traceback", output)

    async def sidecar_refuses(self, env, words):
        debug = {"A8_DEBUG_PORT": str(free_port())}
        await self.refused(self.spawn("sidecar", ["a8sidecar", "--", "sleep", "30"],
                                      dict(debug, **env), listening="never"), words)

    async def test_sidecar_bad_values(self):
        """Each bad value or file refused before anything starts."""
        regular = self.file("regular", b"not a directory\n")
        binary = self.file("binary.yaml", b"\xcb\xff\x00\xfe" * 64)
        deep = self.file("deep.yaml", DEEP.encode())
        port = str(free_port())
        for env, words in (
                (dict(REGISTER, A8_REGISTRY_URL="http://[::1"),
                 "A8_REGISTRY_URL (environment): 'http://[::1' is not a URL"),
                (dict(PROXY, A8_RUNTIME_DIR=regular),
                 "A8_RUNTIME_DIR: {} is not a directory".format(regular)),
                (dict(REGISTER, A8_CONFIG=binary), "{} is not UTF-8 text".format(binary)),
                (dict(REGISTER, A8_CONFIG=deep), "{} is nested too deeply".format(deep)),
                (dict(PROXY, A8_PROXY_PORT=port, A8_PROXY_ADMIN_PORT=port),
                 "A8_PROXY_ADMIN_PORT: port {} is also A8_PROXY_PORT".format(port)),
                (dict(REGISTER, A8_SERVICE="a:"), "A8_SERVICE (environment): 'a:' has an "
                                                   "empty tag"),
                (dict(REGISTER, A8_SERVICE="a:v1,,v2"), "'a:v1,,v2' has an empty tag"),
                (dict(REGISTER, A8_ENDPOINT_HOST="a b"),
                 "A8_ENDPOINT_HOST (environment): 'a b' is not an IP address or host name")):
            await self.sidecar_refuses(env, words)

    async def test_debug_port_in_use(self):
        """A debug port in use: exit 2 before the app starts, one complaint, no traceback.
        (Once twistd logs, stderr goes into the log: the line is its one error event.)"""
        held = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(held.stopListening)
        port = held.getHost().port
        marker = os.path.join(self.directory, "app-ran")
        process = self.spawn("sidecar", ["a8sidecar", "--", "touch", marker],
                             dict(REGISTER, A8_DEBUG_PORT=str(port)), listening="never")
        self.assertEqual(await process.ended(timeout=20), (2, None), self.describe())
        self.assertNotIn("Traceback", "\n".join(process.stdout + process.stderr))
        complaints = process.stderr + [e.get("message", "") for e in process.events
                                       if e.get("level") in ("error", "critical")]
        self.assertEqual(len(complaints), 1, complaints)
        self.assertIn("a8sidecar: cannot listen", complaints[0])
        self.assertIn(str(port), complaints[0])
        self.assertFalse(os.path.exists(marker), "the app ran")

    async def test_sigterm_while_the_registry_is_unreachable(self):
        """SIGTERM while registration keeps failing: a stop, not a crash (stop_all checks
        that no line holds a traceback or a critical event)."""
        process = self.spawn("sidecar", ["a8sidecar", "--", "sleep", "30"],
                             dict(REGISTER, A8_DEBUG_PORT=str(free_port())),
                             listening="never")
        await self.until(lambda: any("registration of bad failed" in json.dumps(e)
                                     for e in process.events),
                         "a failed registration")
        code, signal = await self.terminate(process)
        self.assertNotEqual(code, 1, self.describe())
        self.assertFalse([e for e in process.events if e.get("level") == "critical"])

    async def test_a8ctl_bad_settings(self):
        """a8ctl: a port out of range (0 too) or a deep A8_CONFIG is one line, exit 2."""
        deep = self.file("deep.yaml", DEEP.encode())
        for env, words in (({"A8_REGISTRY_URL": "http://127.0.0.1:0"}, "has a bad port"),
                           ({"A8_REGISTRY_URL": "http://127.0.0.1:70000"}, "has a bad port"),
                           ({"A8_CONFIG": deep}, "is nested too deeply")):
            process = ServerProcess(reactor, "never")
            command = a8ctl_command() + ["service-list"]
            reactor.spawnProcess(process, command[0], command, env=child_environment(env),
                                 path=self.directory)
            self.processes.append(("a8ctl", process))
            await self.refused(process, words)
            self.assertTrue(process.stderr[0].startswith("a8ctl: "), process.stderr)
