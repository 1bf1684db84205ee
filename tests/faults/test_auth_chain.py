# -*- test-case-name: tests.faults.test_auth_chain -*-
"""
Fault: an auth chain with a weaker mode after a stronger one (issue 10, item 2).

With C{A8_AUTH_MODE=jwt,trusted} a bare C{Bearer tenant-b} was accepted as tenant-b, which
made the JWT worthless. The real servers must refuse such a chain at start (exit 2, one
line, no traceback) unless C{--allow-trusted-fallback} names the migration; then they start,
warn, and count each request the fallback accepts.
"""

import os

import treq
from twisted.internet import reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.helpers import ServerProcess, child_environment, sample_value, twistd_command

LOCAL = "tcp:0:interface=127.0.0.1"
SERVERS = ("a8registry", "a8controller")


class AuthChainTests(TestCase):
    """C{twistd -n a8registry|a8controller --auth-mode jwt,trusted} on 127.0.0.1."""

    timeout = 60

    def spawn(self, program, *options, env=None):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        protocol = ServerProcess(reactor, program + " listening on ")
        argv = twistd_command() + [
            "-n", "--pidfile=", "--logger", "amalgam8.logs.json_observer", program,
            "--listen", LOCAL, "--jwt-secret", "k"] + list(options)
        reactor.spawnProcess(protocol, argv[0], argv, env=child_environment(env or {}),
                             path=directory)
        self.addCleanup(self.stop, protocol)
        return protocol

    async def stop(self, protocol):
        if protocol.exit is not None:
            return
        try:
            protocol.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        await protocol.ended(timeout=10)

    def assertRefused(self, protocol, exit, name):
        self.assertEqual(exit, (2, None))
        self.assertEqual(len(protocol.stderr), 1, protocol.stderr)
        line = protocol.stderr[0]
        for part in (name, "jwt,trusted", "silent downgrade", "--allow-trusted-fallback"):
            self.assertIn(part, line)
        self.assertNotIn("Traceback", "\n".join(protocol.stderr + protocol.stdout))
        self.assertIsNone(protocol.address)

    async def test_refused(self):
        """Each server exits 2 with one line naming the chain and the flag."""
        for program in SERVERS:
            protocol = self.spawn(program, "--auth-mode", "jwt,trusted")
            self.assertRefused(protocol, await protocol.ended(timeout=30), "--auth-mode")
            protocol = self.spawn(program, env={"A8_AUTH_MODE": "jwt,trusted"})
            self.assertRefused(protocol, await protocol.ended(timeout=30),
                               "A8_AUTH_MODE (environment)")

    async def test_allowed(self):
        """With the flag the registry starts, warns once, accepts a bare tenant token
        through the fallback and counts it."""
        protocol = self.spawn("a8registry", "--auth-mode", "jwt,trusted",
                              "--allow-trusted-fallback", "true", "--metrics-token", "m")
        host, port = await protocol.listening(timeout=30)
        base = "http://{}:{}".format(host, port)
        pool = HTTPConnectionPool(reactor, persistent=False)
        warnings = [e for e in protocol.events if "auth fallback allowed" in
                    str(e.get("message", ""))]
        self.assertEqual(len(warnings), 1, protocol.events)
        response = await treq.get(base + "/api/v1/instances",
                                  headers={"authorization": "Bearer tenant-b"}, pool=pool)
        self.assertEqual(response.code, 200)
        await response.content()
        response = await treq.get(base + "/metrics", headers={"authorization": "Bearer m"},
                                  pool=pool)
        text = await response.text()
        self.assertEqual(sample_value(text, "a8_registry_auth_fallback_total", mode="trusted"),
                         1)
