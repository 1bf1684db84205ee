# -*- test-case-name: tests.test_registry_store -*-
"""
The contract every L{amalgam8.interfaces.IRegistryStore} keeps, as a test-case factory.

    class MemoryStoreTests(registry_store_tests(lambda case, clock: MemoryStore(clock=clock))):
        pass

C{make_store(case, clock, capacity=None)} returns a store reading time from C{clock} (a
L{twisted.internet.task.Clock}); the suite starts and stops it. The suite holds for a store
whose Deferreds fire later too: it flushes C{case.later} (an L{amalgam8.testing.late.Later})
before it looks at a result, so C{LateStore(store, case.later)} runs it unchanged.
"""

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from amalgam8.errors import QuotaExceeded, UnknownInstance
from amalgam8.interfaces import IRegistryStore
from amalgam8.testing.late import FlushingResults
from amalgam8.registry.model import Registration

__all__ = ["registry_store_tests", "registration"]


def registration(service="reviews", value="10.0.0.1:9080", ttl=30, status="UP", tags=(),
                 metadata=None, endpoint_type="http"):
    """A valid L{Registration} for tests."""
    return Registration(service, endpoint_type, value, ttl, status, tuple(tags), metadata)


def registry_store_tests(make_store):
    """
    @param make_store: C{(case, clock, capacity=None) -> IRegistryStore}.
    @return: a L{SynchronousTestCase} subclass holding the contract.
    """

    class RegistryStoreContract(FlushingResults, SynchronousTestCase):
        def setUp(self):
            self.setUpLater()
            self.clock = Clock()
            self.clock.advance(1_700_000_000)
            self.store = self.make()

        def make(self, capacity=None):
            store = make_store(self, self.clock, capacity=capacity)
            store.startService()
            self.addCleanup(store.stopService)
            return store

        def register(self, namespace="default", store=None, **kwargs):
            store = store or self.store
            return self.successResultOf(store.register(namespace, registration(**kwargs)))

        def listed(self, namespace="default", service=None, store=None):
            store = store or self.store
            index, instances = self.successResultOf(store.instances(namespace, service))
            return index, sorted(i.id for i in instances)

        def test_interface(self):
            """The store provides IRegistryStore."""
            self.assertTrue(verifyObject(IRegistryStore, self.store))

        def test_register_lists(self):
            """A registered instance is listed with its registration and heartbeat time."""
            instance = self.register(tags=("v1",))
            index, instances = self.successResultOf(self.store.instances("default"))
            self.assertEqual([i.id for i in instances], [instance.id])
            self.assertEqual(instances[0].registration, registration(tags=("v1",)))
            self.assertEqual(instances[0].last_heartbeat, self.clock.seconds())
            self.assertGreater(index, 0)

        def test_reregister_replaces(self):
            """Registering the same triple again replaces the instance under the same id."""
            first = self.register(tags=("v1",))
            second = self.register(tags=("v2",))
            self.assertEqual(first.id, second.id)
            _, instances = self.successResultOf(self.store.instances("default"))
            self.assertEqual([i.tags for i in instances], [("v2",)])

        def test_service_filter(self):
            """instances(ns, service) lists only that service's instances."""
            a = self.register(service="a")
            self.register(service="b", value="10.0.0.2:1")
            self.assertEqual(self.listed(service="a")[1], [a.id])
            self.assertEqual(self.listed(service="nope")[1], [])

        def test_services(self):
            """services() names each service with a live instance, sorted."""
            self.register(service="b")
            self.register(service="a", value="x:1")
            self.assertEqual(self.successResultOf(self.store.services("default"))[1],
                             ["a", "b"])

        def test_namespaces_isolated(self):
            """Nothing of one namespace is visible to, or changeable by, another."""
            instance = self.register(namespace="red")
            self.assertEqual(self.listed("blue")[1], [])
            self.assertEqual(self.successResultOf(self.store.services("blue"))[1], [])
            self.failureResultOf(self.store.heartbeat("blue", instance.id), UnknownInstance)
            self.failureResultOf(self.store.deregister("blue", instance.id), UnknownInstance)
            self.assertEqual(self.listed("red")[1], [instance.id])

        def test_heartbeat_renews(self):
            """A heartbeat moves the lease forward."""
            instance = self.register(ttl=30)
            self.clock.advance(20)
            renewed = self.successResultOf(self.store.heartbeat("default", instance.id))
            self.assertEqual(renewed.last_heartbeat, self.clock.seconds())
            self.clock.advance(20)
            self.assertEqual(self.listed()[1], [instance.id])

        def test_heartbeat_keeps_index(self):
            """A heartbeat alone does not change the namespace's index."""
            instance = self.register()
            before = self.listed()[0]
            self.successResultOf(self.store.heartbeat("default", instance.id))
            self.assertEqual(self.listed()[0], before)

        def test_heartbeat_unknown(self):
            """A heartbeat of an unknown id fails with UnknownInstance."""
            self.failureResultOf(self.store.heartbeat("default", "0" * 16), UnknownInstance)

        def test_expiry_exact(self):
            """An instance is listed up to its ttl and gone right after, sweep or not."""
            instance = self.register(ttl=30)
            self.clock.advance(30)
            self.assertEqual(self.listed()[1], [instance.id])
            self.clock.advance(0.001)
            self.assertEqual(self.listed()[1], [])
            self.failureResultOf(self.store.heartbeat("default", instance.id), UnknownInstance)

        def test_expiry_changes_index(self):
            """Expiry raises the index and wakes waiters within a second."""
            self.register(ttl=10)
            index = self.listed()[0]
            waiter = self.store.wait_for_change("default", index)
            self.assertNoResult(waiter)
            self.clock.advance(11.5)
            self.assertGreater(self.successResultOf(waiter), index)
            self.assertEqual(self.store.stats()["expirations"], 1)

        def test_expired_gone_from_services(self):
            """An expired instance's service is no longer listed."""
            self.register(service="a", ttl=10)
            self.clock.advance(10.5)
            self.assertEqual(self.successResultOf(self.store.services("default"))[1], [])

        def test_out_of_service_never_expires(self):
            """OUT_OF_SERVICE instances never expire."""
            instance = self.register(status="OUT_OF_SERVICE", ttl=10)
            self.clock.advance(1000)
            self.assertEqual(self.listed()[1], [instance.id])

        def test_status_change_to_up_expires(self):
            """An instance re-registered from OUT_OF_SERVICE to UP expires again."""
            instance = self.register(status="OUT_OF_SERVICE", ttl=10)
            self.clock.advance(100)
            self.register(status="UP", ttl=10)
            self.clock.advance(12)
            self.assertEqual(self.listed()[1], [])
            self.failureResultOf(self.store.heartbeat("default", instance.id), UnknownInstance)

        def test_shorter_ttl_on_reregister(self):
            """Re-registering with a shorter ttl makes the instance expire sooner."""
            self.register(ttl=600)
            self.register(ttl=10)
            self.clock.advance(12)
            self.assertEqual(self.listed()[1], [])

        def test_deregister(self):
            """Deregistering removes the instance; a second time fails."""
            instance = self.register()
            self.successResultOf(self.store.deregister("default", instance.id))
            self.assertEqual(self.listed()[1], [])
            self.failureResultOf(self.store.deregister("default", instance.id),
                                 UnknownInstance)

        def test_deregister_expired(self):
            """Deregistering an expired instance fails with UnknownInstance."""
            instance = self.register(ttl=10)
            self.clock.advance(10.5)
            self.failureResultOf(self.store.deregister("default", instance.id),
                                 UnknownInstance)

        def test_index_grows_on_change(self):
            """Registration, changed re-registration and deregistration raise the index."""
            seen = [self.listed()[0]]
            instance = self.register()
            seen.append(self.listed()[0])
            self.register(tags=("v2",))
            seen.append(self.listed()[0])
            self.successResultOf(self.store.deregister("default", instance.id))
            seen.append(self.listed()[0])
            self.assertEqual(seen, sorted(set(seen)))

        def test_wait_immediate(self):
            """wait_for_change answers at once when the index is already greater."""
            self.register()
            index = self.listed()[0]
            self.assertEqual(self.successResultOf(self.store.wait_for_change("default", 0)),
                             index)

        def test_wait_wakes_all(self):
            """Every waiter of the namespace wakes on one change; other namespaces do not."""
            index = self.listed()[0]
            waiters = [self.store.wait_for_change("default", index) for _ in range(100)]
            other = self.store.wait_for_change("other", 0)
            self.register()
            new = self.listed()[0]
            self.assertEqual({self.successResultOf(w) for w in waiters}, {new})
            self.assertNoResult(other)
            other.cancel()
            self.failureResultOf(other, CancelledError)

        def test_wait_cancel_forgets(self):
            """A cancelled waiter is forgotten."""
            waiter = self.store.wait_for_change("default", 0)
            self.assertEqual(self.store.stats()["waiters"], 1)
            waiter.cancel()
            self.failureResultOf(waiter, CancelledError)
            self.assertEqual(self.store.stats()["waiters"], 0)

        def test_capacity(self):
            """A full namespace refuses new instances but takes re-registrations."""
            store = self.make(capacity=2)
            self.register(store=store, value="a:1")
            self.register(store=store, value="a:2")
            self.failureResultOf(store.register("default", registration(value="a:3")),
                                 QuotaExceeded)
            self.register(store=store, value="a:2", tags=("v2",))
            self.register(store=store, namespace="other", value="a:3")
            self.assertEqual(len(self.listed(store=store)[1]), 2)

        def test_capacity_counts_live_only(self):
            """Expired instances do not count against the capacity."""
            store = self.make(capacity=1)
            self.register(store=store, value="a:1", ttl=10)
            self.clock.advance(10.5)
            self.register(store=store, value="a:2")

        def test_stats(self):
            """stats() counts instances per namespace and each kind of event."""
            instance = self.register(namespace="a")
            self.register(namespace="b", ttl=10)
            self.successResultOf(self.store.heartbeat("a", instance.id))
            self.clock.advance(11)
            # The sweep of a networked store answers later: let it.
            self.later.flush()
            stats = self.store.stats()
            self.assertEqual(stats["instances"].get("a"), 1)
            self.assertEqual(stats["instances"].get("b", 0), 0)
            self.assertEqual(
                (stats["registrations"], stats["heartbeats"], stats["expirations"]),
                (2, 1, 1))

        def test_stop_cancels_timers(self):
            """A stopped store leaves no delayed call behind."""
            self.register()
            self.store.stopService()
            self.assertEqual(self.clock.getDelayedCalls(), [])

    return RegistryStoreContract
