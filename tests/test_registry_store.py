"""
Tests for L{amalgam8.registry.store.memory}: the IRegistryStore contract, and how its
expiry scales.
"""

import tracemalloc

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.registry.store import MemoryStore
from amalgam8.testing.late import LateStore
from amalgam8.testing.registry import registration, registry_store_tests


class MemoryStoreContractTests(
    registry_store_tests(lambda case, clock, capacity=None: MemoryStore(clock=clock,
                                                                        capacity=capacity))
):
    """The in-memory store keeps the IRegistryStore contract."""


class LateMemoryStoreContractTests(
    registry_store_tests(lambda case, clock, capacity=None: LateStore(
        MemoryStore(clock=clock, capacity=capacity), case.later))
):
    """The contract holds when every answer of the store comes later."""

    def test_answers_later(self):
        """The wrapped store's answers are held until the flush (the suite is not run on
        a store that answers at once by mistake)."""
        d = self.store.instances("default")
        self.assertFalse(d.called)
        self.assertEqual(self.successResultOf(d), (0, []))


class MemoryStoreScaleTests(SynchronousTestCase):
    """Expiry scales: one timer, no full scans, little memory."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock)
        self.store.startService()
        self.addCleanup(self.store.stopService)

    def fill(self, count, ttl=30):
        for n in range(count):
            self.store.register("default", registration(
                service="svc{}".format(n % 100), value="10.{}.{}.{}:80".format(
                    n >> 16, (n >> 8) & 255, n & 255), ttl=ttl, tags=("v1",)))

    def test_one_timer(self):
        """However many instances, the store keeps a single delayed call."""
        self.fill(1000)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_100k_expire_on_time(self):
        """100,000 instances with a 30 s ttl are listed at 30 s and all swept by 31 s."""
        self.fill(100_000)
        self.clock.advance(30)
        self.assertEqual(len(self.successResultOf(self.store.instances("default"))[1]),
                         100_000)
        self.clock.advance(1)
        self.assertEqual(self.store.stats()["instances"]["default"], 0)
        self.assertEqual(self.store.stats()["expirations"], 100_000)
        self.assertEqual(self.store._wheel, {})

    def test_sweep_touches_only_due(self):
        """A sweep with nothing due does no work per instance."""
        self.fill(10_000, ttl=600)
        self.clock.advance(1)
        calls = []
        original = self.store._file
        self.store._file = lambda *a: (calls.append(a), original(*a))
        self.clock.advance(5)
        self.assertEqual(calls, [])

    def test_heartbeats_keep_alive(self):
        """Instances heartbeated every 10 s outlive many ttls; the others expire."""
        self.fill(1000)
        ids = [i.id for i in self.successResultOf(self.store.instances("default"))[1]]
        keep = ids[:500]
        for _ in range(20):
            self.clock.advance(10)
            for instance_id in keep:
                self.successResultOf(self.store.heartbeat("default", instance_id))
        listed = sorted(i.id for i in self.successResultOf(
            self.store.instances("default"))[1])
        self.assertEqual(listed, sorted(keep))
        self.assertLessEqual(sum(len(b) for b in self.store._wheel.values()), 500)

    def test_memory_per_instance(self):
        """An instance costs well under 1 kB of Python memory in the store."""
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            self.fill(20_000)
            listed = self.successResultOf(self.store.instances("default"))[1]
            for instance in listed:
                instance.encode()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        per_instance = (after - before) / 20_000
        self.assertLess(per_instance, 1024, "{:.0f} bytes per instance".format(per_instance))
