"""
Fault: the controller is killed (SIGKILL) in the middle of a burst of rule writes. Every rule
the controller acknowledged with a 201 is there after a restart on the same rule file, the
revision went on from where it was, and no temporary file of a cut-short write is left.
"""

import os

from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from tests.test_controller_process import ControllerProcess, route

WRITERS = 8
PER_WRITER = 60
KILL_AFTER = 120


class RuleBurstKillTests(ControllerProcess, TestCase):
    """SIGKILL under a burst of POST /v1/rules."""

    async def test_acknowledged_rules_survive_a_kill(self):
        """
        Eight writers POST one rule each at a time; after 120 acknowledgements the controller
        is killed. After a restart every acknowledged rule is there, the revision is at least
        the number acknowledged, and no C{.rules-*} file is left in the store's directory.
        """
        protocol, base = await self.start()
        http = self.client()
        acknowledged = []
        failed = []
        sent = [0]

        async def writer(n):
            for i in range(PER_WRITER):
                if protocol.exit is not None:
                    return
                rule_id = "burst-{}-{}".format(n, i)
                sent[0] += 1
                try:
                    response, body = await self.call(
                        http, "POST", base + "/v1/rules", {"rules": [route(rule_id)]},
                        timeout=5)
                except Exception:
                    failed.append(rule_id)
                    return
                if response.code == 201:
                    self.assertEqual(body["ids"], [rule_id])
                    acknowledged.append(rule_id)
                    if len(acknowledged) == KILL_AFTER:
                        protocol.transport.signalProcess("KILL")
                else:
                    failed.append(rule_id)

        await DeferredList([Deferred.fromCoroutine(writer(n)) for n in range(WRITERS)])
        await protocol.ended(timeout=10)
        self.assertEqual(protocol.exit[1], 9)
        self.assertGreaterEqual(len(acknowledged), KILL_AFTER)

        again, base = await self.start()
        revision, body = await self.rules(self.client(), base)
        stored = {rule["id"] for rule in body["rules"]}
        lost = [rule_id for rule_id in acknowledged if rule_id not in stored]
        print("\nrule burst, controller killed: sent {}, acknowledged {}, failed {}, "
              "lost {}, revision after restart {}".format(
                  sent[0], len(acknowledged), len(failed), len(lost), revision))
        self.assertEqual(lost, [])
        self.assertGreaterEqual(revision, len(acknowledged))
        self.assertEqual([name for name in os.listdir(self.directory)
                          if name.startswith(".rules-")], [])
        await self.stop(again)
