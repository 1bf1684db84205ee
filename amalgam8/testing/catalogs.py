# -*- test-case-name: tests.test_adapters -*-
"""
For tests of read-only catalogs: L{StaticCatalog} (an L{ICatalog} whose content a test
sets) and L{catalog_tests}, the contract suite every adapter runs.

    class FileCatalogContract(catalog_tests(FileFixture)):
        pass

A fixture is built per test with C{make_fixture(case)} and has:

- C{namespace}: the registry namespace the catalog serves;
- C{added_tags}: tags the adapter puts on every instance (C{("kubernetes",)}), else C{()};
- C{catalog}: the L{ICatalog} under test, not started;
- C{async start()}, C{async stop()}: start/stop the catalog (and whatever it reads from);
- C{async add(service, host, port, tags=())}, C{async remove(service, host, port)}: change
  the source (the API server, etcd, the file) as the platform would;
- C{async eventually(condition)}: wait until C{condition()} is true (advance a Clock, or
  poll on the real reactor) and fail the test with a clear message after a few seconds.
"""

from twisted.application.service import Service
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from amalgam8.adapters import ICatalog, add_listener

__all__ = ["StaticCatalog", "catalog_tests"]


@implementer(ICatalog)
class StaticCatalog(Service):
    """A catalog whose instances a test sets with L{set}."""

    kind = "static"

    def __init__(self):
        self._instances = {}
        self._generations = {}
        self._listeners = []

    def set(self, namespace, instances):
        """Replace the instances of C{namespace} (a list of C{Instance}s)."""
        self._instances[namespace] = list(instances)
        self._generations[namespace] = self._generations.get(namespace, 0) + 1
        for listener in list(self._listeners):
            listener(namespace)

    def namespaces(self):
        return [n for n, instances in self._instances.items() if instances]

    def instances(self, namespace):
        return list(self._instances.get(namespace, ()))

    def generation(self, namespace):
        return self._generations.get(namespace, 0)

    def subscribe(self, listener):
        return add_listener(self._listeners, listener)


def catalog_tests(make_fixture):
    """
    @param make_fixture: C{case -> fixture} (see the module docstring).
    @return: a trial C{TestCase} subclass holding the ICatalog contract.
    """

    class CatalogContract(TestCase):
        async def setUp(self):
            self.fixture = make_fixture(self)
            self.catalog = self.fixture.catalog
            self.changes = []
            self.unsubscribe = self.catalog.subscribe(self.changes.append)
            await self.fixture.start()
            self.addCleanup(self.fixture.stop)

        def listed(self):
            return sorted((i.service_name, i.registration.endpoint_value)
                          for i in self.catalog.instances(self.fixture.namespace))

        def test_interface(self):
            """The adapter provides ICatalog."""
            self.assertTrue(verifyObject(ICatalog, self.catalog))
            self.assertIsInstance(self.catalog.kind, str)

        def test_starts_empty(self):
            """An empty source mirrors as no instances."""
            self.assertEqual(self.listed(), [])

        async def test_add(self):
            """
            An instance added at the source appears, with its endpoint, tags and status UP,
            and the generation grows; listeners hear of the namespace.
            """
            before = self.catalog.generation(self.fixture.namespace)
            await self.fixture.add("reviews", "127.0.0.1", 9080, tags=("v1",))
            await self.fixture.eventually(lambda: self.listed() == [
                ("reviews", "127.0.0.1:9080")])
            [instance] = self.catalog.instances(self.fixture.namespace)
            self.assertEqual(instance.status, "UP")
            for tag in ("v1",) + tuple(self.fixture.added_tags):
                self.assertIn(tag, instance.tags)
            self.assertGreater(self.catalog.generation(self.fixture.namespace), before)
            self.assertIn(self.fixture.namespace, self.changes)
            self.assertIn(self.fixture.namespace, self.catalog.namespaces())
            instance.as_dict()   # encodable as the registry lists it

        async def test_change_and_remove(self):
            """Instances follow the source: a second one added, the first removed."""
            await self.fixture.add("reviews", "127.0.0.1", 9080, tags=("v1",))
            await self.fixture.add("reviews", "127.0.0.2", 9080, tags=("v1",))
            await self.fixture.eventually(lambda: len(self.listed()) == 2)
            generation = self.catalog.generation(self.fixture.namespace)
            await self.fixture.remove("reviews", "127.0.0.1", 9080)
            await self.fixture.eventually(lambda: self.listed() == [
                ("reviews", "127.0.0.2:9080")])
            self.assertGreater(self.catalog.generation(self.fixture.namespace), generation)
            await self.fixture.remove("reviews", "127.0.0.2", 9080)
            await self.fixture.eventually(lambda: self.listed() == [])

        async def test_two_services(self):
            await self.fixture.add("reviews", "127.0.0.1", 9080)
            await self.fixture.add("ratings", "127.0.0.1", 9081)
            await self.fixture.eventually(lambda: self.listed() == [
                ("ratings", "127.0.0.1:9081"), ("reviews", "127.0.0.1:9080")])

        async def test_other_namespace(self):
            """Nothing of the catalog shows in a namespace it does not serve."""
            await self.fixture.add("reviews", "127.0.0.1", 9080)
            await self.fixture.eventually(lambda: len(self.listed()) == 1)
            self.assertEqual(self.catalog.instances("not-" + self.fixture.namespace), [])
            self.assertEqual(self.catalog.generation("not-" + self.fixture.namespace), 0)

        async def test_unsubscribe(self):
            self.unsubscribe()
            await self.fixture.add("reviews", "127.0.0.1", 9080)
            await self.fixture.eventually(lambda: len(self.listed()) == 1)
            self.assertEqual(self.changes, [])

    return CatalogContract
