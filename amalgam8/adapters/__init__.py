# -*- test-case-name: tests.test_adapters -*-
"""
Read-only catalogs (SPEC A2 "Read-only catalogs", issue 12): services that a platform
already tracks (Kubernetes endpoints, Weave Flux's records in etcd, files) mirrored into the
registry's listings of the namespace each catalog serves, with no sidecar registration.

Every adapter is an L{ICatalog}: it keeps an in-memory mirror of its source up to date (a
watch, a poll) and tells its listeners when a namespace's mirror changed. The registry
merges the mirrors into its store's answers (L{amalgam8.adapters.merge.CatalogMerge}), so
listings, blocking reads (C{A8-Index} moves when a catalog changes), the sidecars' routing
and the proxies treat catalog instances like registered ones; they cannot be heartbeated
(410) or deleted (403).

One contract suite (L{amalgam8.testing.catalogs}) runs against every adapter.
"""

from twisted.application.service import IService
from zope.interface import Attribute

__all__ = ["ICatalog", "catalog_instance", "add_listener"]


class ICatalog(IService):
    """
    A read-only source of instances. Starting the service starts mirroring (connecting,
    listing, watching, with reconnects and backoff); stopping it cancels every connection
    and timer. While the source is unreachable the last mirror is kept (instances that are
    still there are never dropped by a reconnect or a resync).
    """

    kind = Attribute("A short name for logs and metrics: 'kubernetes', 'etcd', 'file'.")

    def namespaces():
        """@return: the namespaces this catalog has instances for (synchronously)."""

    def instances(namespace):
        """
        The mirror of one namespace, synchronously.

        @return: a list of L{amalgam8.registry.model.Instance} (build them with
            L{catalog_instance}), in a stable order; empty for a namespace not served.
        """

    def generation(namespace):
        """
        @return: an int that grows by at least one whenever C{instances(namespace)} changes
            (0 before the first change), and never goes back.
        """

    def subscribe(listener):
        """
        Call C{listener(namespace)} after each change of a namespace's mirror.

        @return: a no-argument callable that unsubscribes.
        """


def catalog_instance(service_name, endpoint_value, endpoint_type="http", tags=(),
                     status="UP", metadata=None, seen_at=0.0):
    """
    An instance of a catalog, validated like a registration (SPEC A2 limits).

    @param seen_at: when the catalog last saw it (POSIX seconds): its C{last_heartbeat}.
    @return: an L{amalgam8.registry.model.Instance} whose id is the registry's own
        deterministic one, with ttl 0 (catalog instances do not expire: they leave when the
        catalog drops them).
    @raise ValueError: the values cannot be an instance (the message says which field);
        adapters skip such an entry and log it.
    """
    from amalgam8.errors import InvalidRequest
    from amalgam8.registry.model import Instance, parse_registration

    body = {"service_name": service_name,
            "endpoint": {"type": endpoint_type, "value": endpoint_value},
            "status": status, "tags": list(tags)}
    if metadata is not None:
        body["metadata"] = metadata
    try:
        registration = parse_registration(body, lambda requested: 0)
    except InvalidRequest as e:
        raise ValueError(e.message) from None
    return Instance(registration, float(seen_at))


def add_listener(listeners, listener):
    """
    C{ICatalog.subscribe} for a catalog that keeps its listeners in the list C{listeners}.

    @return: the no-argument callable that unsubscribes C{listener}.
    """
    listeners.append(listener)

    def unsubscribe():
        if listener in listeners:
            listeners.remove(listener)
    return unsubscribe
