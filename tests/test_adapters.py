"""
Tests for L{amalgam8.adapters}: catalog instances, the store with catalogs merged in (the
IRegistryStore contract, merged listings, indexes that move with a catalog, read-only
instances), the registry API over it, and the ICatalog contract on L{StaticCatalog}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.adapters import catalog_instance
from amalgam8.adapters.merge import CatalogMerge
from amalgam8.errors import ReadOnlyInstance, UnknownInstance
from amalgam8.registry.api import RegistryAPI
from amalgam8.registry.store import MemoryStore
from amalgam8.testing.catalogs import StaticCatalog, catalog_tests
from amalgam8.testing.registry import registration, registry_store_tests
from tests.test_registry_api import RegistryTestCase


class CatalogInstanceTests(SynchronousTestCase):
    def test_instance(self):
        instance = catalog_instance("reviews", "10.0.0.1:9080", tags=("v1", "kubernetes"),
                                    status="starting", seen_at=5)
        self.assertEqual(instance.as_dict(), {
            "id": instance.id, "service_name": "reviews",
            "endpoint": {"type": "http", "value": "10.0.0.1:9080"}, "ttl": 0,
            "status": "STARTING", "tags": ["v1", "kubernetes"],
            "last_heartbeat": "1970-01-01T00:00:05.000000Z"})
        self.assertEqual(instance.id, registration(value="10.0.0.1:9080").id)

    def test_refused(self):
        """Values a registration could not have are refused, naming the field."""
        for kwargs, message in (
                (dict(service_name="a/b"), "service_name must not contain"),
                (dict(service_name="x" * 65), "service_name is longer than 64 bytes"),
                (dict(endpoint_type="ftp"), "endpoint.type must be one of"),
                (dict(tags=("",)), "each tag must have")):
            arguments = dict(service_name="reviews", endpoint_value="10.0.0.1:80")
            arguments.update(kwargs)
            with self.assertRaises(ValueError) as caught:
                catalog_instance(**arguments)
            self.assertIn(message, str(caught.exception))


class MergeContractTests(registry_store_tests(
        lambda case, clock, capacity=None: CatalogMerge(
            MemoryStore(clock=clock, capacity=capacity), []))):
    """With no catalog, the merge keeps the IRegistryStore contract."""


class MergeWithCatalogContractTests(registry_store_tests(
        lambda case, clock, capacity=None: CatalogMerge(
            MemoryStore(clock=clock, capacity=capacity), [StaticCatalog()]))):
    """With an empty catalog too."""


def catalog_reviews(value="10.1.0.1:9080", tags=("v1",)):
    return catalog_instance("reviews", value, tags=tags, seen_at=1)


class MergeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.catalog = StaticCatalog()
        self.merge = CatalogMerge(MemoryStore(clock=self.clock), [self.catalog])
        self.merge.startService()
        self.addCleanup(self.merge.stopService)

    def listed(self, namespace="default", service=None):
        index, instances = self.successResultOf(self.merge.instances(namespace, service))
        return index, [i.id for i in instances]

    def test_started_together(self):
        self.assertTrue(self.catalog.running)
        self.assertTrue(self.merge.store.running)

    def test_merged(self):
        """A namespace lists its registered instances, then the catalog's."""
        registered = self.successResultOf(self.merge.register("default", registration()))
        one = catalog_reviews()
        self.catalog.set("default", [one])
        index, ids = self.listed()
        self.assertEqual(ids, [registered.id, one.id])
        self.assertEqual(index, 2)
        self.assertEqual(self.listed(service="ratings")[1], [])
        self.assertEqual(self.listed(service="reviews")[1], [registered.id, one.id])
        self.assertEqual(self.listed("other")[1], [])

    def test_services(self):
        self.catalog.set("default", [catalog_instance("ratings", "10.1.0.2:80")])
        self.successResultOf(self.merge.register("default", registration()))
        index, names = self.successResultOf(self.merge.services("default"))
        self.assertEqual(names, ["ratings", "reviews"])
        self.assertEqual(self.successResultOf(self.merge.services("other"))[1], [])

    def test_registered_wins(self):
        """The same instance registered and in a catalog is listed once, as registered."""
        registered = self.successResultOf(self.merge.register(
            "default", registration(value="10.1.0.1:9080", tags=("v2",))))
        self.catalog.set("default", [catalog_reviews()])
        _, instances = self.successResultOf(self.merge.instances("default"))
        self.assertEqual([(i.id, i.tags) for i in instances], [(registered.id, ("v2",))])

    def test_index_moves_with_catalog(self):
        """A catalog change raises the index, and wakes a waiter of that namespace only."""
        index, _ = self.listed()
        waiting = self.merge.wait_for_change("default", index)
        other = self.merge.wait_for_change("other", 0)
        self.assertNoResult(waiting)
        self.catalog.set("default", [catalog_reviews()])
        self.assertEqual(self.successResultOf(waiting), index + 1)
        self.assertNoResult(other)
        self.assertEqual(self.listed()[0], index + 1)
        other.cancel()
        self.failureResultOf(other)

    def test_index_moves_with_store(self):
        self.catalog.set("default", [catalog_reviews()])
        index, _ = self.listed()
        waiting = self.merge.wait_for_change("default", index)
        self.assertNoResult(waiting)
        self.successResultOf(self.merge.register("default", registration()))
        self.assertEqual(self.successResultOf(waiting), index + 1)

    def test_wait_already_passed(self):
        self.catalog.set("default", [catalog_reviews()])
        self.assertEqual(self.successResultOf(self.merge.wait_for_change("default", 0)), 1)

    def test_wait_cancel(self):
        """A cancelled wait unsubscribes from the catalogs and costs nothing more."""
        waiting = self.merge.wait_for_change("default", 0)
        waiting.cancel()
        self.failureResultOf(waiting)
        self.assertEqual(self.catalog._listeners, [])
        self.catalog.set("default", [catalog_reviews()])

    def test_read_only(self):
        """A catalog instance cannot be deleted (403) or heartbeated (unknown: 410)."""
        one = catalog_reviews()
        self.catalog.set("default", [one])
        self.failureResultOf(self.merge.deregister("default", one.id), ReadOnlyInstance)
        self.failureResultOf(self.merge.heartbeat("default", one.id), UnknownInstance)
        self.failureResultOf(self.merge.deregister("default", "nope"), UnknownInstance)
        self.assertEqual(self.listed()[1], [one.id])

    def test_stats(self):
        self.catalog.set("default", [catalog_reviews(), catalog_reviews("10.1.0.2:80")])
        self.assertEqual(self.merge.stats()["catalogs"], {"static": 2})


class MergedRegistryAPITests(RegistryTestCase):
    """The registry API over the merge: catalog instances list, block and refuse changes."""

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.catalog = StaticCatalog()
        self.merge = CatalogMerge(self.store, [self.catalog])
        self.api = RegistryAPI(self.merge, self.auth, self.clock, ttl=self.ttl_policy)
        self.http.__init__(self.api.resource())

    def test_listed(self):
        one = catalog_reviews()
        self.catalog.set("default", [one])
        answer = self.request("GET", "/api/v1/instances")
        self.assertEqual(answer.code, 200)
        self.assertEqual([i["id"] for i in answer.json()["instances"]], [one.id])
        self.assertEqual(answer.header(b"A8-Index"), "1")
        answer = self.request("GET", "/api/v1/services/reviews")
        self.assertEqual(answer.json()["instances"][0]["endpoint"]["value"], "10.1.0.1:9080")

    def test_blocking_read_wakes(self):
        d = self.start("GET", "/api/v1/instances?wait=30s&index=0")
        self.http.flush()
        self.assertNoResult(d)
        self.catalog.set("default", [catalog_reviews()])
        self.http.flush()
        answer = self.successResultOf(d)
        self.assertEqual(len(answer.json()["instances"]), 1)
        self.assertEqual(answer.header(b"A8-Index"), "1")

    def test_delete_refused(self):
        one = catalog_reviews()
        self.catalog.set("default", [one])
        answer = self.request("DELETE", "/api/v1/instances/" + one.id)
        self.assertEqual(answer.code, 403)
        self.assertIn("read-only catalog", answer.json()["Error"])
        answer = self.request("PUT", "/api/v1/instances/{}/heartbeat".format(one.id))
        self.assertEqual(answer.code, 410)


class StaticFixture:
    """The ICatalog contract's fixture for L{StaticCatalog}."""

    namespace = "default"
    added_tags = ()

    def __init__(self, case):
        self.catalog = StaticCatalog()
        self._entries = {}

    async def start(self):
        self.catalog.startService()

    async def stop(self):
        self.catalog.stopService()

    async def add(self, service, host, port, tags=()):
        value = "{}:{}".format(host, port)
        self._entries[(service, value)] = catalog_instance(service, value, tags=tags)
        self.catalog.set(self.namespace, list(self._entries.values()))

    async def remove(self, service, host, port):
        del self._entries[(service, "{}:{}".format(host, port))]
        self.catalog.set(self.namespace, list(self._entries.values()))

    async def eventually(self, condition):
        if not condition():
            raise AssertionError("the catalog did not follow its source")


class StaticCatalogContractTests(catalog_tests(StaticFixture)):
    """The contract suite holds on its reference implementation."""
