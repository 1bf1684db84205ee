# -*- test-case-name: tests.test_adapters -*-
"""
The registry's store with the read-only catalogs merged in (SPEC A2): an L{IRegistryStore}
that answers the registered instances of a namespace plus the catalogs' instances of it.

- The index of a namespace is the store's index plus the catalogs' generations of it, so
  it grows whenever either changes and blocking reads wake for a catalog change too.
- A registered instance with the same id as a catalog instance is listed once: the
  registration wins (it carries a lease the catalog's copy does not).
- Catalog instances cannot be heartbeated (the store does not know them: 410) or deleted
  (L{ReadOnlyInstance}: 403).

Starting the merge starts the store and every catalog; stopping it stops them. (It is not
a C{MultiService}: that class's C{services} attribute would hide the store's method.)
"""

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred
from zope.interface import implementer

from amalgam8.errors import ReadOnlyInstance, UnknownInstance
from amalgam8.interfaces import IRegistryStore

__all__ = ["CatalogMerge"]


@implementer(IRegistryStore)
class CatalogMerge(Service):
    """
    @param store: the L{IRegistryStore} registrations go to.
    @param catalogs: L{amalgam8.adapters.ICatalog}s.
    """

    def __init__(self, store, catalogs):
        self.store = store
        self.catalogs = list(catalogs)
        self._services = {}   # (id(catalog), namespace) -> (generation, {service: [...]})

    def startService(self):
        Service.startService(self)
        self.store.startService()
        for catalog in self.catalogs:
            catalog.startService()

    def stopService(self):
        Service.stopService(self)
        return gatherResults([maybeDeferred(part.stopService)
                              for part in [self.store] + self.catalogs])

    @property
    def clock(self):
        return self.store.clock

    def _generation(self, namespace):
        return sum(catalog.generation(namespace) for catalog in self.catalogs)

    def _by_service(self, catalog, namespace):
        """
        A catalog's instances of a namespace by service name, kept while its generation
        stays (a listing of one service costs that service, not the whole catalog).
        """
        generation = catalog.generation(namespace)
        if not generation:
            return {}   # (a namespace the catalog never served: nothing to keep)
        key = (id(catalog), namespace)
        kept = self._services.get(key)
        if kept is None or kept[0] != generation:
            groups = {}
            for instance in catalog.instances(namespace):
                groups.setdefault(instance.service_name, []).append(instance)
            kept = self._services[key] = (generation, groups)
        return kept[1]

    def _catalog_instances(self, namespace, service_name=None):
        for catalog in self.catalogs:
            if service_name is None:
                yield from catalog.instances(namespace)
            else:
                yield from self._by_service(catalog, namespace).get(service_name, ())

    def _catalog_ids(self, namespace):
        return {instance.id for instance in self._catalog_instances(namespace)}

    def register(self, namespace, registration):
        return self.store.register(namespace, registration)

    def heartbeat(self, namespace, instance_id):
        return self.store.heartbeat(namespace, instance_id)

    def deregister(self, namespace, instance_id):
        def read_only(failure):
            failure.trap(UnknownInstance)
            if instance_id in self._catalog_ids(namespace):
                raise ReadOnlyInstance(
                    "instance {} comes from a read-only catalog: remove it there".format(
                        instance_id))
            return failure
        return self.store.deregister(namespace, instance_id).addErrback(read_only)

    def instances(self, namespace, service_name=None):
        def merged(answer):
            index, registered = answer
            generation = self._generation(namespace)
            if not generation and not self.catalogs:
                return index, registered
            seen = {instance.id for instance in registered}
            extra = [i for i in self._catalog_instances(namespace, service_name)
                     if i.id not in seen]
            return index + generation, (registered + extra) if extra else registered
        return self.store.instances(namespace, service_name).addCallback(merged)

    def services(self, namespace):
        def merged(answer):
            index, names = answer
            extra = {name for catalog in self.catalogs
                     for name in self._by_service(catalog, namespace)}
            if extra - set(names):
                names = sorted(set(names) | extra)
            return index + self._generation(namespace), names
        return self.store.services(namespace).addCallback(merged)

    def wait_for_change(self, namespace, index):
        """
        Fire with the new merged index once it is greater than C{index}: when the store's
        index passes C{index} less the catalogs' part, or when a catalog changes the
        namespace.
        """
        generation = self._generation(namespace)
        pending = []
        unsubscribes = []

        def finish():
            for unsubscribe in unsubscribes:
                unsubscribe()
            del unsubscribes[:]
            for d in pending:
                d.cancel()
            del pending[:]

        def cancel(d):
            finish()

        result = Deferred(cancel)

        def store_moved(store_index):
            if result.called:
                return
            pending[:] = [d for d in pending if not d.called]
            finish()
            result.callback(store_index + self._generation(namespace))

        def store_failed(failure):
            if not result.called and not failure.check(CancelledError):
                finish()
                result.errback(failure)

        def watch(target):
            d = self.store.wait_for_change(namespace, target)
            pending.append(d)
            d.addCallbacks(store_moved, store_failed)

        def catalog_changed(changed):
            if changed != namespace or result.called:
                return
            if self._generation(namespace) != generation:
                # The store's current index: a wait on an index below any it has.
                watch(-1)

        for catalog in self.catalogs:
            unsubscribes.append(catalog.subscribe(catalog_changed))
        watch(index - generation)
        return result

    def stats(self):
        stats = dict(self.store.stats())
        stats["catalogs"] = {
            catalog.kind: sum(len(catalog.instances(n)) for n in catalog.namespaces())
            for catalog in self.catalogs}
        return stats

