"""
Fault: the app after C{--} cannot start, or ends at once (issue 10 item 1). As processes: a
real C{twistd -n a8registry} and a register-only C{twistd -n a8sidecar -- APP}. However early
the app ends, the sidecar ends with it, in bounded time, with the app's exit status, and the
registry lists no instance of the service afterwards (no phantom instance).

The statuses: a program that does not exist is 127 and one that is not executable is also
127 (the supervisor reports every failure to spawn as 127, "could not be run", whatever the
errno; a shell would say 126 for the second); C{sh -c 'exit 3'} is 3.
"""

import os
import time

from tests.test_sidecar_integration import LOCAL, MeshTestCase, free_port

# The sidecar must be gone within this many seconds of its start.
BOUND = 15.0


class AppEndsTheSidecarTests(MeshTestCase):
    """A register-only sidecar whose app cannot run, or exits at once."""

    async def setUp(self):
        MeshTestCase.setUp(self)
        self.registry = self.spawn("registry", ["a8registry", "--listen", LOCAL])
        _, port = await self.registry.listening()
        self.registry_url = "http://127.0.0.1:{}".format(port)

    async def ends_with(self, app, expected):
        """Run a sidecar of C{app}; it exits with C{expected} and registers nothing."""
        env = {
            "A8_SERVICE": "phantom:v1",
            "A8_REGISTER": "true",
            "A8_PROXY": "false",
            "A8_ENDPOINT_HOST": "127.0.0.1",
            "A8_ENDPOINT_PORT": str(free_port()),
            "A8_REGISTRY_URL": self.registry_url,
            "A8_DEBUG_PORT": str(free_port()),
            "A8_STOP_TIMEOUT": "5s",
        }
        started = time.monotonic()
        sidecar = self.spawn("sidecar", ["a8sidecar", "--"] + list(app), env)
        try:
            code, signal = await sidecar.ended(timeout=BOUND)
        except Exception:
            self.fail("the sidecar of {!r} still runs after {} s\n{}".format(
                app, BOUND, self.describe()))
        print("sidecar of {!r}: exit {} after {:.2f} s".format(
            app, code, time.monotonic() - started))
        self.assertEqual((code, signal), (expected, None), self.describe())
        status, body = await self.get_json(self.registry_url + "/api/v1/services/phantom")
        instances = body.get("instances", []) if isinstance(body, dict) else body
        self.assertIn(status, (200, 404), body)
        self.assertEqual(instances or [], [], "a phantom instance: {!r}".format(body))

    async def test_missing_program(self):
        """A program that does not exist: exit 127."""
        await self.ends_with(["/nonexistent/app"], 127)

    async def test_program_not_executable(self):
        """A regular file without the execute bit: exit 127 (see the module docstring)."""
        path = os.path.join(self.directory, "not-executable")
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o644)
        await self.ends_with([path], 127)

    async def test_app_exits_at_once(self):
        """C{sh -c 'exit 3'}: exit 3."""
        await self.ends_with(["sh", "-c", "exit 3"], 3)
