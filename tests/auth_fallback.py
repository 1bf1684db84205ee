# -*- test-case-name: tests.test_registry_tap,tests.test_controller_tap -*-
"""
The checks of issue 10 item 2 that both servers' tap tests share: an auth chain with a weaker
mode after a stronger one is refused at option parsing, allowed with
C{--allow-trusted-fallback}, warned at start and counted per request.
"""

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs

from tests.helpers import sample_value


class AuthFallbackChecks:
    """
    Mixed into a tap module's tests (before its C{OptionsTestCase}, which gives C{parse} and
    C{parse_bad}): a weaker auth mode after a stronger one needs --allow-trusted-fallback.

    @cvar make_service: the tap's C{makeService}.
    @cvar path: a tenant's GET path on that server.
    @cvar prefix: the server's metric prefix.
    """

    CHAINS = ("jwt,trusted", "jwt,default", "trusted,default", "jwt,trusted,default")

    def test_refused(self):
        """Each fallback chain stops the start with one line saying why and naming the
        flag, given as an option or in the environment."""
        for chain in self.CHAINS:
            text = self.parse_bad(["--auth-mode", chain, "--jwt-secret", "k"],
                                  names=["--auth-mode", chain, "silent downgrade",
                                         "--allow-trusted-fallback",
                                         "A8_ALLOW_TRUSTED_FALLBACK"])
            self.assertNotIn("Traceback", text)
        self.parse_bad(environ={"A8_AUTH_MODE": "jwt,trusted", "A8_JWT_SECRET": "k"},
                       names=["A8_AUTH_MODE (environment)", "silent downgrade"])
        self.parse_bad(["--auth-mode", "jwt,trusted", "--jwt-secret", "k",
                        "--allow-trusted-fallback", "false"], names=["silent downgrade"])

    def test_allowed(self):
        """With the flag (option or environment) each fallback chain is accepted."""
        for chain in self.CHAINS:
            options = self.parse(["--auth-mode", chain, "--jwt-secret", "k",
                                  "--allow-trusted-fallback", "true"])
            self.assertEqual(",".join(options["auth-mode"]), chain)
        options = self.parse(environ={"A8_AUTH_MODE": "jwt,trusted", "A8_JWT_SECRET": "k",
                                      "A8_ALLOW_TRUSTED_FALLBACK": "yes"})
        self.assertEqual(options["auth-mode"], ("jwt", "trusted"))

    def test_stronger_after_weaker(self):
        """A chain that only climbs needs no flag."""
        for chain in ("default,trusted", "trusted,jwt", "default,trusted,jwt"):
            self.assertEqual(",".join(self.parse(["--auth-mode", chain,
                                                  "--jwt-secret", "k"])["auth-mode"]), chain)

    def build(self, *argv):
        self.reactor = MemoryReactorClock()
        options = self.parse(["--auth-mode", "jwt,trusted", "--jwt-secret", "k",
                              "--allow-trusted-fallback", "true", "--listen", "tcp:0"]
                             + list(argv))
        with capturedLogs() as events:
            service = self.make_service(options, reactor=self.reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return events

    def test_warned(self):
        """makeService logs one warning naming the fallback chain."""
        events = self.build()
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, events)
        self.assertEqual(warnings[0]["modes"], "jwt,trusted")
        self.assertIn("trusted after jwt", warnings[0]["problem"])

    def get(self, path, token):
        http = StubTreq(self.reactor.tcpServers[0][1].resource)
        d = http.get("http://server.test" + path, headers={"authorization": "Bearer " + token})
        http.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.text())

    def test_counted(self):
        """Each request the trusted fallback accepts is counted in /metrics."""
        self.build("--metrics-token", "scrape")
        self.assertEqual(self.get(self.path, "tenant-b")[0], 200)
        self.assertEqual(self.get(self.path, "tenant-c")[0], 200)
        code, text = self.get("/metrics", "scrape")
        self.assertEqual(code, 200)
        self.assertEqual(sample_value(text, self.prefix + "_auth_fallback_total", mode="trusted"), 2)
