"""
The zope Interfaces that several parts of amalgam8 share.
"""

from zope.interface import Attribute, Interface

__all__ = ["IRegistryStore"]


class IRegistryStore(Interface):
    """
    Where the registry keeps the instances of every namespace.

    Every method takes the namespace first: nothing of one namespace is visible to or
    changeable by another. Every change of what a namespace lists (a registration, a
    deregistration, an expiry, a changed registration) raises that namespace's index by at
    least one; a heartbeat alone does not. Instances whose last heartbeat is older than their
    ttl are never returned, even before they are swept away. Implementations are also
    C{IService}s: starting one starts its expiry, stopping it cancels every timer.
    """

    clock = Attribute("The IReactorTime the store reads the time from.")

    def register(namespace, registration):
        """
        Add an instance, or replace the instance with the same id (a re-registration).

        @param namespace: L{str}
        @param registration: an L{amalgam8.registry.model.Registration}, already validated.
        @return: a Deferred that fires with the stored L{amalgam8.registry.model.Instance},
            or fails with L{amalgam8.errors.QuotaExceeded} when the namespace is full.
        """

    def heartbeat(namespace, instance_id):
        """
        Renew an instance's lease.

        @return: a Deferred that fires with the renewed L{Instance}, or fails with
            L{amalgam8.errors.UnknownInstance} for an unknown or expired id.
        """

    def deregister(namespace, instance_id):
        """
        Remove an instance.

        @return: a Deferred that fires with the removed L{Instance}, or fails with
            L{amalgam8.errors.UnknownInstance} for an unknown or expired id.
        """

    def instances(namespace, service_name=None):
        """
        The live instances of a namespace (every status), optionally of one service only.

        @return: a Deferred that fires with C{(index, instances)}: the namespace's index and
            a list of L{Instance}s in registration order.
        """

    def services(namespace):
        """
        @return: a Deferred that fires with C{(index, names)}: the sorted names of the
            services that have at least one live instance.
        """

    def wait_for_change(namespace, index):
        """
        Wait until the namespace's index is greater than C{index}.

        @return: a Deferred that fires with the new index (at once when it is already
            greater). Cancelling it forgets the waiter and costs nothing more.
        """

    def stats():
        """
        Counters for metrics, read synchronously.

        @return: a dict with C{"instances"} (namespace -> count), and the totals
            C{"registrations"}, C{"heartbeats"}, C{"deregistrations"}, C{"expirations"}.
        """


class IRuleStore(Interface):
    """
    Where the controller keeps each namespace's rules, and their revision.

    A namespace's rules change only as a whole: C{put} replaces the full list when the
    caller's revision is still the current one, and the revision grows by one. Rules are kept
    exactly as written (JSON objects with an C{id}). Implementations are C{IService}s.
    """

    def get(namespace):
        """
        @return: a Deferred that fires with the namespace's L{amalgam8.controller.model.RuleSet}
            (revision 0 and no rules for a namespace never written).
        """

    def put(namespace, revision, rules):
        """
        Replace the namespace's rules.

        @param revision: the revision the new rules were computed from.
        @param rules: the full new list of rules (dicts), each with a unique C{id}.
        @return: a Deferred that fires with the new L{RuleSet} (revision + 1) once the change
            is durable, or fails with L{amalgam8.errors.Conflict} when the revision moved on.
        """

    def wait_for_change(namespace, revision):
        """
        @return: a Deferred that fires with the new revision once it is greater than
            C{revision} (at once when it already is). Cancelling it forgets the waiter.
        """

    def namespaces():
        """
        @return: the names of the namespaces that have rules (synchronously).
        """
