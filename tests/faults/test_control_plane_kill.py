"""
Fault: the control plane is SIGKILLed and restarted under traffic. The proxies keep routing on
their last state, so not one proxied request fails while the controller or the registry is
gone or coming back, and changes flow again once it is back.
"""

import signal
import time

from twisted.internet.defer import Deferred, gatherResults

from tests.test_sidecar_integration import Mesh

KILLED_FOR = 2.0


class ControlPlaneKillTests(Mesh):
    """SIGKILL of the controller, then of the registry, under steady traffic."""

    timeout = 90

    async def traffic_while(self, fault):
        """
        Three request loops through the caller's proxy while C{fault()} runs, and half a
        second either side; the answers as C{(time, (status, instance))}.
        """
        results = []
        sending = [True]

        async def loop():
            while sending[0]:
                results.append((time.monotonic(), await self.request()))

        loops = [Deferred.fromCoroutine(loop()) for _ in range(3)]
        await self.wait(0.5)
        await fault()
        await self.wait(0.5)
        sending[0] = False
        await gatherResults(loops)
        return results

    async def kill(self, process):
        process.transport.signalProcess("KILL")
        self.assertEqual((await process.ended(timeout=10))[1], signal.SIGKILL)

    async def test_controller_killed(self):
        """
        SIGKILL to the controller, two seconds down, a restart on its port and rule file:
        no proxied request fails, and a route change reaches the proxy afterwards.
        """
        await self.set_route("v1")

        async def fault():
            await self.kill(self.controller)
            await self.wait(KILLED_FOR)
            self.controller = self.start_controller(
                "tcp:{}:interface=127.0.0.1".format(self.controller_port))
            await self.controller.listening()

        results = await self.traffic_while(fault)
        failed = [answer for _, answer in results if answer != (200, "v1")]
        print("\ncontroller SIGKILLed for {:.0f} s under traffic: {} requests sent, {} failed, "
              "0 lost".format(KILLED_FOR, len(results), len(failed)))
        self.assertEqual(failed, [])
        delay = await self.route_change_delay("v2", timeout=15)
        print("a route change after the restart showed in {:.2f} s".format(delay))

    async def test_registry_killed(self):
        """
        SIGKILL to the registry, two seconds down, and a restart on its port (an empty memory
        store): the caller's proxy keeps its instances and no proxied request fails while the
        registry is gone or coming back.
        """
        port = self.registry_url.rsplit(":", 1)[1]

        async def fault():
            await self.kill(self.registry)
            await self.wait(KILLED_FOR)
            self.registry = self.spawn("registry", [
                "a8registry", "--listen", "tcp:{}:interface=127.0.0.1".format(port)])
            await self.registry.listening()
            await self.wait(3.0)

        results = await self.traffic_while(fault)
        failed = [answer for _, answer in results if answer[0] != 200]
        print("\nregistry SIGKILLed for {:.0f} s and restarted under traffic: {} requests sent, {} failed"
              .format(KILLED_FOR, len(results), len(failed)))
        self.assertEqual(failed, [])
        self.assertEqual({answer[1] for _, answer in results}, {"v1", "v2"})
