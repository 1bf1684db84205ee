"""
Tests for L{amalgam8.sidecar.tap.makeService}: the twistd plugin's service is the one the
builder makes from the parsed options (its parts: tests.test_sidecar_service).
"""

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from amalgam8 import logs
from amalgam8.sidecar.config import load
from amalgam8.sidecar.service import SidecarService
from amalgam8.sidecar.tap import makeService
from amalgam8.testing.process import FakeProcessReactor

ENVIRON = {"A8_SERVICE": "reviews:v2", "A8_REGISTER": "true", "A8_ENDPOINT_PORT": "9080",
           "A8_ENDPOINT_HOST": "10.0.0.5", "A8_REGISTRY_URL": "http://registry:8080",
           "A8_LOG_LEVEL": "warn"}


class MakeServiceTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.patch(logs, "_configured", [])

    def test_builds_the_sidecar_service(self):
        """makeService returns the builder's SidecarService, wired from the options, and
        arranges for the app's exit code to be the process's; it starts nothing."""
        options = {"sidecar": load({}, ENVIRON, app=("python", "app.py"))}
        service = makeService(options, reactor=self.reactor)
        self.assertIsInstance(service, SidecarService)
        self.assertEqual([part.name for part in service],
                         ["supervisor", "debug", "apps", "registration"])
        self.assertEqual(service.config, options["sidecar"])
        self.assertEqual(self.reactor.triggers["after"]["shutdown"][0][0].__name__,
                         "exit_with_app_code")
        self.assertEqual(self.reactor.processes, [])
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertFalse(service.running)

    def test_missing_nginx_is_a_usage_error(self):
        """With the proxy, a missing nginx is a UsageError naming A8_NGINX."""
        environ = dict(ENVIRON, A8_PROXY="true", A8_CONTROLLER_URL="http://controller:8081",
                       A8_NGINX="/nonexistent/nginx")
        options = {"sidecar": load({}, environ, app=())}
        error = self.assertRaises(usage.UsageError, makeService, options,
                                  reactor=self.reactor)
        self.assertIn("A8_NGINX", str(error))
