# -*- test-case-name: tests.test_registry_store -*-
"""
The in-memory registry store.

Expiry costs one timer for the whole store, not one per instance, and never a full scan:
instances are filed in a wheel of one-second slots by when their lease runs out. A heartbeat
only records the new time; when a slot comes due, each instance in it is either gone (its lease
really ran out) or is filed again under its current expiry. So an instance is in exactly one
slot, a heartbeat costs no wheel work, and a sweep touches only the instances due in it.
Reads check the lease exactly, so an instance is never listed after its ttl even if the sweep
has not reached it yet.
"""

import math

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from amalgam8.errors import QuotaExceeded, UnknownInstance
from amalgam8.interfaces import IRegistryStore
from amalgam8.registry.model import Instance

__all__ = ["MemoryStore"]


class _Entry:
    """One instance as the store holds it: the current snapshot and its wheel slot."""

    __slots__ = ("instance", "slot", "namespace")

    def __init__(self, instance, slot, namespace):
        self.instance = instance
        self.slot = slot
        self.namespace = namespace


class _Namespace:
    __slots__ = ("by_id", "by_service", "index", "waiters")

    def __init__(self):
        self.by_id = {}
        self.by_service = {}
        self.index = 0
        self.waiters = set()


@implementer(IRegistryStore)
@define(eq=False)
class MemoryStore(Service):
    """
    @ivar clock: an C{IReactorTime}.
    @ivar capacity: the most instances a namespace may hold, or L{None} for no limit.
    @ivar granularity: seconds per wheel slot (and between sweeps).
    """

    log = Logger()

    clock: object
    capacity: int = None
    granularity: float = 1.0
    _namespaces: dict = field(factory=dict, init=False)
    _wheel: dict = field(factory=dict, init=False)
    _next_slot: int = field(default=None, init=False)
    _sweeper: object = field(default=None, init=False)
    _counts: dict = field(init=False, factory=lambda: {
        "registrations": 0, "heartbeats": 0, "deregistrations": 0, "expirations": 0,
    })

    def __attrs_post_init__(self):
        # Service's own attributes (attrs replaced Service.__init__).
        self.running = 0
        self.name = None
        self.parent = None

    # -- IService ---------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self._schedule()

    def stopService(self):
        Service.stopService(self)
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        for namespace in self._namespaces.values():
            waiters, namespace.waiters = namespace.waiters, set()
            for waiter in waiters:
                # Blocking readers get the current state now rather than a dropped line.
                waiter.callback(namespace.index)

    def _schedule(self):
        self._sweeper = self.clock.callLater(self.granularity, self._tick)

    def _tick(self):
        self._sweeper = None
        try:
            self.sweep()
        except Exception:
            self.log.failure("registry expiry sweep failed")
        if self.running:
            self._schedule()

    # -- the wheel --------------------------------------------------------------------------

    def _slot_of(self, instance):
        expires = instance.expires_at
        if expires is None:
            return None
        return int(math.floor(expires / self.granularity))

    def _file(self, entry):
        slot = self._slot_of(entry.instance)
        if slot is not None and self._next_slot is not None and slot < self._next_slot:
            # That slot has been swept already: the next sweep looks at it.
            slot = self._next_slot
        entry.slot = slot
        if slot is not None:
            bucket = self._wheel.get(slot)
            if bucket is None:
                bucket = self._wheel[slot] = []
            bucket.append(entry)

    def sweep(self):
        """
        Remove every instance whose lease has run out and re-file the rest of the due slots.

        @return: the number of instances expired.
        """
        now = self.clock.seconds()
        due = int(math.floor(now / self.granularity))
        if self._next_slot is None:
            self._next_slot = min(self._wheel, default=due + 1)
        expired = 0
        changed = set()
        first = min(self._next_slot, due)
        if due - first > len(self._wheel):
            # The clock jumped far ahead: visit the filled slots, not every empty one.
            slots = sorted(s for s in self._wheel if s <= due)
        else:
            slots = range(first, due + 1)
        self._next_slot = due + 1
        for slot in slots:
            bucket = self._wheel.pop(slot, None)
            if not bucket:
                continue
            for entry in bucket:
                if entry.slot != slot:
                    continue
                namespace_name = entry.namespace
                namespace = self._namespaces.get(namespace_name)
                if namespace is None:
                    continue
                instance = entry.instance
                if namespace.by_id.get(instance.id) is not entry:
                    continue
                if instance.expired(now):
                    self._remove(namespace, instance)
                    expired += 1
                    changed.add(namespace_name)
                else:
                    self._file(entry)
        for name in changed:
            self._bump(self._namespaces[name])
        if expired:
            self._counts["expirations"] += expired
            self.log.info("expired {count} instances", count=expired)
        return expired

    # -- helpers ----------------------------------------------------------------------------

    def _remove(self, namespace, instance):
        del namespace.by_id[instance.id]
        service = namespace.by_service.get(instance.service_name)
        if service is not None:
            service.pop(instance.id, None)
            if not service:
                del namespace.by_service[instance.service_name]

    def _bump(self, namespace):
        namespace.index += 1
        if namespace.waiters:
            waiters, namespace.waiters = namespace.waiters, set()
            for waiter in waiters:
                waiter.callback(namespace.index)

    def _live(self, namespace, instance_id, now):
        entry = namespace.by_id.get(instance_id) if namespace is not None else None
        if entry is None:
            return None
        if entry.instance.expired(now):
            self._remove(namespace, entry.instance)
            self._counts["expirations"] += 1
            self._bump(namespace)
            return None
        return entry

    def _purge_expired(self, namespace, now):
        dead = [e.instance for e in namespace.by_id.values() if e.instance.expired(now)]
        for instance in dead:
            self._remove(namespace, instance)
        if dead:
            self._counts["expirations"] += len(dead)
            self._bump(namespace)

    # -- IRegistryStore ---------------------------------------------------------------------

    def register(self, namespace_name, registration):
        now = self.clock.seconds()
        namespace = self._namespaces.get(namespace_name)
        if namespace is None:
            namespace = self._namespaces[namespace_name] = _Namespace()
        instance_id = registration.id
        entry = self._live(namespace, instance_id, now)
        if entry is None and self.capacity is not None:
            if len(namespace.by_id) >= self.capacity:
                self._purge_expired(namespace, now)
            if len(namespace.by_id) >= self.capacity:
                return fail(QuotaExceeded(
                    "namespace is at its capacity of {} instances".format(self.capacity)))
        instance = Instance(registration, now)
        self._counts["registrations"] += 1
        if entry is not None:
            old = entry.instance.registration
            entry.instance = instance
            if old.same_as(registration):
                # Nothing a reader sees has changed: this is a heartbeat.
                if entry.slot is None:
                    self._file(entry)
                return succeed(instance)
            slot = self._slot_of(instance)
            if slot is None:
                entry.slot = None
            elif entry.slot is None or slot < entry.slot:
                self._file(entry)
            namespace.by_service[registration.service_name][instance_id] = entry
        else:
            entry = _Entry(instance, None, namespace_name)
            self._file(entry)
            namespace.by_id[instance_id] = entry
            service = namespace.by_service.get(registration.service_name)
            if service is None:
                service = namespace.by_service[registration.service_name] = {}
            service[instance_id] = entry
        self._bump(namespace)
        return succeed(instance)

    def heartbeat(self, namespace_name, instance_id):
        now = self.clock.seconds()
        entry = self._live(self._namespaces.get(namespace_name), instance_id, now)
        if entry is None:
            return fail(UnknownInstance("no instance {}".format(instance_id)))
        entry.instance = instance = Instance(entry.instance.registration, now)
        self._counts["heartbeats"] += 1
        return succeed(instance)

    def deregister(self, namespace_name, instance_id):
        namespace = self._namespaces.get(namespace_name)
        entry = self._live(namespace, instance_id, self.clock.seconds())
        if entry is None:
            return fail(UnknownInstance("no instance {}".format(instance_id)))
        self._remove(namespace, entry.instance)
        self._counts["deregistrations"] += 1
        self._bump(namespace)
        return succeed(entry.instance)

    def instances(self, namespace_name, service_name=None):
        namespace = self._namespaces.get(namespace_name)
        if namespace is None:
            return succeed((0, []))
        now = self.clock.seconds()
        if service_name is None:
            entries = namespace.by_id.values()
        else:
            entries = namespace.by_service.get(service_name, {}).values()
        live = []
        for entry in entries:
            instance = entry.instance
            expires = instance.expires_at
            if expires is None or now <= expires:
                live.append(instance)
        return succeed((namespace.index, live))

    def services(self, namespace_name):
        namespace = self._namespaces.get(namespace_name)
        if namespace is None:
            return succeed((0, []))
        now = self.clock.seconds()
        names = [
            name for name, entries in namespace.by_service.items()
            if any(not e.instance.expired(now) for e in entries.values())
        ]
        return succeed((namespace.index, sorted(names)))

    def wait_for_change(self, namespace_name, index):
        namespace = self._namespaces.get(namespace_name)
        if namespace is None:
            namespace = self._namespaces[namespace_name] = _Namespace()
        if namespace.index > index:
            return succeed(namespace.index)

        def forget(waiter):
            namespace.waiters.discard(waiter)
            self._drop_if_unused(namespace_name, namespace)

        waiter = Deferred(forget)
        namespace.waiters.add(waiter)
        return waiter

    def _drop_if_unused(self, name, namespace):
        """Forget a namespace that never held an instance once nobody waits on it."""
        if namespace.index == 0 and not namespace.waiters and not namespace.by_id:
            if self._namespaces.get(name) is namespace:
                del self._namespaces[name]

    def stats(self):
        result = dict(self._counts)
        result["instances"] = {
            name: len(namespace.by_id) for name, namespace in self._namespaces.items()
        }
        result["waiters"] = sum(len(n.waiters) for n in self._namespaces.values())
        return result
