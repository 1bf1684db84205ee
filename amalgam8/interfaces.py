"""
The zope Interfaces that several parts of amalgam8 share.
"""

from zope.interface import Attribute, Interface

__all__ = ["IRegistryStore", "IRuleStore", "IProxyReports", "ITraceStore"]


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


class IProxyReports(Interface):
    """
    What each sidecar's proxy says it has applied (SPEC B2), by namespace and proxy id.

    A report replaces the proxy's last one. A proxy whose last report is older than
    L{amalgam8.controller.proxies.MISSED_REPORTS} times its interval (more than that many
    seconds of C{clock}) is no longer live: it is never listed again, though its report may
    linger until it is swept away. Nothing of one namespace is visible in another.
    """

    clock = Attribute("The IReactorTime that dates the reports and says when they go stale.")
    interval = Attribute("The report interval assumed for a report that names none "
                         "(seconds).")

    def report(namespace, proxy_id, service, tags, revision, index, applied_at,
               interval=None, rejected=()):
        """
        Keep a proxy's report (already validated), dated now.

        @param tags: a sequence of L{str}.
        @param revision: the rule revision the proxy applied (L{int}).
        @param index: the registry index it applied (L{int}), or L{None}.
        @param applied_at: an RFC 3339 time (L{str}, possibly empty).
        @param interval: the proxy's report interval (seconds), or L{None} for the default.
        @param rejected: C{((rule id, error), ...)}: the rules it skipped.
        @return: a Deferred that fires with L{None} once the report is kept, or fails with
            L{amalgam8.errors.StoreUnavailable} (and then nothing changed, unless only the
            answer was lost).
        """

    def live(namespace):
        """
        @return: a Deferred that fires with the live L{amalgam8.controller.proxies.Report}s
            of the namespace, sorted by proxy id, or fails with L{StoreUnavailable}.
        """

    def status(namespace, revision):
        """
        The answer of C{GET /v1/rules/status} for the rules at C{revision}: see
        L{amalgam8.controller.proxies.status_of}.

        @return: a Deferred that fires with the dict, or fails with L{StoreUnavailable}.
        """


class ITraceStore(Interface):
    """
    The trace records of test traffic that sidecars forward (SPEC B5), kept per namespace up
    to L{capacity} records: past it the oldest are dropped, and the drops counted.

    Every record kept gets a sequence number of its namespace, greater than that of every
    record kept before it in the namespace (the order of L{query}); the numbers are the
    cursors of paging (C{after}), and mean nothing else. Records come back equal to what
    was added (JSON objects).
    """

    capacity = Attribute("The most records kept per namespace.")

    def add(namespace, records):
        """
        Keep a batch of records, in its order.

        @param records: a list of dicts (JSON objects, already validated).
        @return: a Deferred that fires with how many records were dropped to make room
            (records of this batch included, when it is bigger than the room), or fails
            with L{amalgam8.errors.StoreUnavailable}: then none of the batch was kept (or,
            when only the answer was lost, all of it; never a part).
        """

    def query(namespace, log_key=None, log_value=None, src=None, dst=None, after=0,
              limit=1000):
        """
        The records that match, oldest first, among those numbered after C{after}.

        A record matches C{log_key} when it has that key, and C{log_value} (with
        C{log_key}) when C{str()} of that key's value is C{log_value}; C{src} (C{dst})
        when its C{"src"} (C{"dst"}) is a string equal to it or whose part before the
        first C{":"} is equal to it (a service name, or C{name:tags}).

        @param after: a sequence number: 0, or a C{next_cursor} of an earlier query.
        @param limit: the most records to return (1 or more).
        @return: a Deferred that fires with C{(records, next_cursor)}: C{next_cursor} is
            the sequence number of the last record returned when more matching records
            follow it (pass it as C{after}), and L{None} when none does. It fails with
            L{StoreUnavailable}.
        """

    def dropped(namespace):
        """
        @return: a Deferred that fires with how many records of the namespace were
            dropped to keep the bound, in all, or fails with L{StoreUnavailable}.
        """

    def stats():
        """
        Counters for metrics, read synchronously: this process's share.

        @return: a dict with C{"received"} (records received by this process),
            C{"dropped"} (namespace -> records dropped by this process's additions) and
            C{"records"} (namespace -> records kept, as last seen).
        """
