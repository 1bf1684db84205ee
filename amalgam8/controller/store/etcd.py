# -*- test-case-name: tests.test_controller_etcd -*-
"""
The etcd rule store: every replica of the controller that uses the same etcd cluster (and
the same prefix) sees the same rules and revisions. It speaks etcd's v3 JSON gateway through
L{amalgam8.etcd.EtcdV3}, the client the Weave Flux catalog uses too.

Keys, under the prefix (C{/amalgam8/controller/} by default; namespaces percent-encoded):

    <prefix>rules/<namespace>             the namespace's rules: a header line, then the
                                          rules as written: {"revision":N,"stamp":S,"rules":K}
                                          \\n [rule, ...]
    <prefix>writes/<namespace>/<N>        the stamp of the write that made revision N (the
                                          last C{history} revisions of each namespace)

A write is one transaction: if the rules key's C{mod_revision} is still the one the rules
were read at, put the new rules (revision + 1, a fresh random stamp) and the write's record,
and drop the record C{history} revisions back; else read the key back, and fail with
L{Conflict} (nothing changed). The revision and the rules therefore move together, two
replicas writing at once never lose an update, and a revision never repeats.

A write whose answer was lost (the member it went to died, or answered 503 or timed out: the
client's C{maybe_applied}) is resolved before the caller hears anything. The store sends a
fence: a transaction that, if the key is unchanged, puts its value back as it was, so the
lost write can never apply later; then the lost write is sent again. If the key did change,
the record of revision N + 1 tells whether it was this write (then it landed: success) or
another one (L{Conflict}, and the API computes the change again). Only when etcd cannot be
reached for C{resolve_timeout} seconds does the caller get L{StoreUnconfirmed} (503: the
rules may be there; read them back).

Each replica watches C{<prefix>rules/}: a change made through any replica wakes the blocking
reads held on all of them. A broken watch is created again from the revision after the last
one seen (etcd replays what was missed); when that revision is compacted the replica lists
the namespaces again. Reads are linearizable: a read of rules this replica holds already is
a transaction comparing the key's C{mod_revision} (nothing comes back when nothing changed),
so an encoding cached for a revision is always that revision's; the reads of one namespace
that come while one is with etcd share the next one.

Each request to etcd gives an endpoint C{attempt_timeout} seconds (a member that lost its
leader holds requests for seconds): a read then goes to the next endpoint, and is tried
again while etcd answers but cannot serve (503) for C{election_grace} seconds; a write is
resolved as above. When no endpoint can be reached at all, reads and writes fail at once
with L{StoreUnavailable} (503).
"""

import json
import random
import uuid
from urllib.parse import quote, unquote

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from amalgam8.controller.model import RuleSet, encode
from amalgam8.errors import Conflict, PayloadTooLarge, StoreUnavailable, StoreUnconfirmed
from amalgam8.etcd import Compacted, EtcdError, EtcdUnavailable, compare, op_delete
from amalgam8.etcd import op_put, op_range
from amalgam8.interfaces import IRuleStore

__all__ = ["EtcdStore", "DEFAULT_PREFIX", "parse_prefix"]

#: The default key prefix.
DEFAULT_PREFIX = "/amalgam8/controller/"

_EMPTY = b'{"revision":0,"stamp":"","rules":0}\n[]'
_FENCES = 5          # fences in a row (by other replicas too) before a write gives up


def parse_prefix(text):
    """
    A key prefix: a path such as C{/amalgam8/controller/} (a C{/} is added at the end).

    @raise ValueError: a prefix that is not one.
    """
    value = str(text).strip()
    if not value.startswith("/") or "//" in value or any(c.isspace() for c in value):
        raise ValueError("{!r} is not a key path such as {}".format(text, DEFAULT_PREFIX))
    return value if value.endswith("/") else value + "/"


class _Corrupt(Exception):
    """A rules key whose value is not this store's."""


def _header(value):
    """C{(revision, stamp, count, rest)} of a rules key's value."""
    head, newline, rest = bytes(value).partition(b"\n")
    try:
        decoded = json.loads(head)
    except ValueError:
        decoded = None
    if not newline or not isinstance(decoded, dict):
        raise _Corrupt("it does not start with the header line")
    revision, stamp, count = (decoded.get("revision"), decoded.get("stamp"),
                              decoded.get("rules"))
    if not (type(revision) is int and revision >= 0 and isinstance(stamp, str)
            and type(count) is int and count >= 0):
        raise _Corrupt("its header is {!r}".format(head[:200]))
    return revision, stamp, count, rest


def _value(revision, stamp, count, body):
    return encode({"revision": revision, "stamp": stamp, "rules": count}).encode(
        "utf-8") + b"\n" + body


@attrs.frozen
class _Held:
    """
    What this replica last read of a namespace's rules key.

    @ivar mod: the key's C{mod_revision} (0: there is no key).
    @ivar value: the key's value (a fence puts it back).
    @ivar stamp: the stamp of the write that made it.
    """

    mod: int
    value: bytes
    stamp: str
    ruleset: RuleSet


_NOTHING = _Held(0, _EMPTY, "", RuleSet())


@implementer(IRuleStore)
class EtcdStore(Service):
    """
    @ivar client: the L{amalgam8.etcd.EtcdV3} client.
    @ivar prefix: the key prefix (ends with C{/}).
    """

    log = Logger()

    def __init__(self, client, clock, prefix=DEFAULT_PREFIX, history=1000,
                 resolve_timeout=10.0, attempt_timeout=1.0, election_grace=3.0,
                 retry=(0.05, 1.0), pool=None, random=random.random):
        """
        @param client: an L{amalgam8.etcd.EtcdV3}.
        @param clock: the C{IReactorTime} of the watch's retries and of resolving lost
            writes.
        @param prefix: the key prefix (see L{parse_prefix}).
        @param history: how many write records each namespace keeps (a lost write is
            resolved while its record is there).
        @param resolve_timeout: how long a lost write is tried to be resolved before the
            caller gets L{StoreUnconfirmed}.
        @param attempt_timeout: how long one endpoint has to answer a read or a write (a
            member that lost its leader may hold a request for seconds: the next one is
            asked instead, or the write resolved).
        @param election_grace: how long a read is tried again while etcd answers but
            cannot serve (503, no answer in time), as while it elects a leader.
        @param retry: the first and the longest pause between attempts to watch again (and
            between the attempts of a read or of resolving a write).
        @param pool: the C{HTTPConnectionPool} of the client, closed on stop (L{None}: not
            this store's).
        @param random: C{() -> float in [0, 1)}, the retries' jitter.
        """
        self.client = client
        self.clock = clock
        self.prefix = parse_prefix(prefix)
        self.history = history
        self.resolve_timeout = resolve_timeout
        self.attempt_timeout = attempt_timeout
        self.election_grace = election_grace
        self.retry = retry
        self._pool = pool
        self._random = random
        self._rules_prefix = (self.prefix + "rules/").encode("utf-8")
        self._held = {}
        self._known = {}
        self._waiters = {}
        self._checking = set()
        self._namespaces = set()
        self._busy = 0
        self._calls = {}         # {Deferred fired at its end: the call if internal}
        self._reading = {}       # {namespace: the read of it with etcd}
        self._readers = {}       # {namespace: [callers of get waiting for the next read]}
        self._from = None        # the etcd revision the watch goes on from (None: list)
        self._seen = 0           # the etcd revision the watch has delivered up to
        self._watch = None
        self._step = None        # what the watch loop awaits (cancelled on stop)
        self._following = None
        self._progress = []      # (etcd revision, Deferred) of settled()
        #: The Deferred of the last stopService.
        self.stopping = None

    @classmethod
    def from_settings(cls, reactor, urls, prefix=DEFAULT_PREFIX, ca=None, timeout=5.0):
        """
        The production store: its own pooled HTTP client of the endpoints C{urls}.

        @param ca: the PEM file of the authorities of C{https} endpoints (L{None}: the
            system's).
        """
        from amalgam8.etcd import EtcdV3, etcd_http_client

        http, pool = etcd_http_client(reactor, ca=ca, connections_per_endpoint=16)
        return cls(EtcdV3(http, urls, reactor, timeout=timeout), reactor, prefix=prefix,
                   pool=pool)

    # -- IService ---------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self.stopping = None
        self._following = Deferred.fromCoroutine(self._follow())
        self._following.addErrback(lambda f: self.log.failure(
            "the rule store's watch of etcd stopped", f))

    def stopService(self):
        Service.stopService(self)
        if self._step is not None:
            self._step.cancel()
        if self._watch is not None:
            self._watch.cancel()
        waiting, self._waiters = self._waiters, {}
        for namespace, entries in waiting.items():
            for _wanted, waiter in entries:
                # Blocking readers get the current rules now rather than a dropped line.
                waiter.callback(self._known.get(namespace, 0))
        progress, self._progress = self._progress, []
        for _revision, waiter in progress:
            waiter.callback(None)
        for call in list(self._calls.values()):
            if call is not None:
                call.cancel()
        ends = list(self._calls)
        if self._following is not None:
            ends.append(self._following)
        stopping = DeferredList(ends)
        if self._pool is not None:
            pool = self._pool
            stopping.addCallback(lambda _: pool.closeCachedConnections())
        self.stopping = stopping
        return stopping

    # -- keys -------------------------------------------------------------------------------

    def _key(self, namespace):
        return self._rules_prefix + quote(namespace, safe="").encode("ascii")

    def _record_key(self, namespace, revision):
        return "{}writes/{}/{:020d}".format(self.prefix, quote(namespace, safe=""),
                                            revision).encode("ascii")

    def _namespace_of(self, key):
        return unquote(bytes(key[len(self._rules_prefix):]).decode("ascii", "replace"))

    def _describe(self):
        return ", ".join(self.client.urls)

    def _unavailable(self, error, doing):
        return StoreUnavailable("the rule store (etcd at {}) is unavailable: {} failed: {}"
                                .format(self._describe(), doing, _why(error)))

    # -- what this replica knows ------------------------------------------------------------

    def _note(self, namespace, revision, has_rules=None):
        if has_rules is not None:
            if has_rules:
                self._namespaces.add(namespace)
            else:
                self._namespaces.discard(namespace)
        if revision <= self._known.get(namespace, 0):
            return
        self._known[namespace] = revision
        entries = self._waiters.get(namespace)
        if not entries:
            return
        woken = [entry for entry in entries if entry[0] < revision]
        remaining = [entry for entry in entries if entry[0] >= revision]
        if remaining:
            self._waiters[namespace] = remaining
        else:
            del self._waiters[namespace]
        for _wanted, waiter in woken:
            waiter.callback(revision)

    def _keep(self, namespace, kv):
        """
        Hold what a read found of C{namespace}'s key (a C{KeyValue}, or L{None}: no key).

        @return: the L{_Held}.
        @raise StoreUnavailable: the value is not this store's.
        """
        before = self._held.get(namespace)
        if kv is None:
            if before is not None and before.ruleset.revision:
                self.log.error(
                    "the rules of {namespace} are gone from etcd (this controller saw "
                    "revision {revision}): someone deleted {key}", namespace=namespace,
                    revision=before.ruleset.revision,
                    key=self._key(namespace).decode("ascii"))
            held = _NOTHING
        else:
            try:
                revision, stamp, _count, rest = _header(kv.value)
                if before is not None and (before.ruleset.revision, before.stamp) == (
                        revision, stamp):
                    ruleset = before.ruleset       # the same write (put back by a fence)
                else:
                    rules = json.loads(rest)
                    if not isinstance(rules, list) or not all(
                            isinstance(r, dict) and "id" in r for r in rules):
                        raise _Corrupt("its rules are not a list of rules")
                    ruleset = RuleSet(revision, rules)
            except (_Corrupt, ValueError, TypeError) as e:
                raise StoreUnavailable(
                    "the rules of {} in etcd ({}) are not an amalgam8 rule store's: {}; "
                    "repair or delete the key".format(
                        namespace, kv.key.decode("utf-8", "replace"), e))
            held = _Held(kv.mod_revision, bytes(kv.value), stamp, ruleset)
        self._held[namespace] = held
        self._note(namespace, held.ruleset.revision, bool(held.ruleset.rules))
        return held

    # -- IRuleStore -------------------------------------------------------------------------

    def _run(self, coroutine, internal=False):
        """
        Run C{coroutine}, counted as in flight until it ends; stopService waits for it
        (and cancels it first when it is C{internal}: nobody waits for its answer).
        """
        self._busy += 1
        ended = Deferred()
        d = Deferred.fromCoroutine(coroutine)
        self._calls[ended] = d if internal else None

        def done(result):
            self._busy -= 1
            del self._calls[ended]
            ended.callback(None)
            return result

        return d.addBoth(done)

    def get(self, namespace):
        """
        The namespace's current rules. Reads of one namespace that come while one is with
        etcd share the next read, sent as soon as that one is answered: each caller is
        answered by a read sent after it asked (so it sees every change made before), and
        etcd gets one read of a namespace at a time however many callers there are.
        """
        waiter = Deferred(lambda d: self._forget_reader(namespace, d))
        self._readers.setdefault(namespace, []).append(waiter)
        if namespace not in self._reading:
            self._next_read(namespace)
        return waiter

    def _forget_reader(self, namespace, waiter):
        waiting = self._readers.get(namespace)
        if waiting and waiter in waiting:
            waiting.remove(waiter)

    def _next_read(self, namespace):
        """Send one read for every caller waiting on C{namespace} now."""
        waiting = self._readers.pop(namespace, [])
        if not waiting:
            self._reading.pop(namespace, None)
            return
        if self.stopping is not None:
            self._reading.pop(namespace, None)
            for waiter in waiting:
                waiter.errback(StoreUnavailable("the rule store is stopping"))
            return
        self._reading[namespace] = d = self._run(self._read(namespace))

        def answered(result):
            for waiter in waiting:
                if not waiter.called:
                    if isinstance(result, Failure):
                        waiter.errback(result)
                    else:
                        waiter.callback(result.ruleset)
            self._next_read(namespace)

        d.addBoth(answered)

    async def _read(self, namespace):
        """
        Read C{namespace}'s rules key (nothing comes back when it is the one held). While
        etcd answers but cannot serve (it elects a leader: 503, or no answer in
        C{attempt_timeout}) the read is tried again, for at most C{election_grace}
        seconds; when no endpoint can be reached at all it fails at once.

        @return: the L{_Held}.
        @raise StoreUnavailable: it could not be read.
        """
        key = self._key(namespace)
        deadline = self.clock.seconds() + self.election_grace
        delay = self.retry[0]
        while True:
            held = self._held.get(namespace)
            try:
                if held is None:
                    kvs = (await self.client.range(key, timeout=self.attempt_timeout)).kvs
                else:
                    result = await self.client.txn(
                        [compare(key, "mod", "==", held.mod)], [], [op_range(key)],
                        readonly=True, timeout=self.attempt_timeout)
                    if result.succeeded:
                        self._note(namespace, held.ruleset.revision,
                                   bool(held.ruleset.rules))
                        return held
                    kvs = result.responses[0].kvs
            except EtcdError as e:
                if not (_electing(e) and self.running
                        and self.clock.seconds() + delay < deadline):
                    raise self._unavailable(e, "reading the rules of {}".format(namespace))
                await self._sleep(delay)
                delay = min(delay * 2, self.retry[1])
                continue
            return self._keep(namespace, kvs[0] if kvs else None)

    def put(self, namespace, revision, rules):
        return self._run(self._put(namespace, revision, list(rules)))

    async def _put(self, namespace, revision, rules):
        held = self._held.get(namespace)
        if held is None or held.ruleset.revision != revision:
            held = await self._read(namespace)
            if held.ruleset.revision != revision:
                raise _conflict(held.ruleset.revision, revision)
        key = self._key(namespace)
        stamp = uuid.uuid4().hex
        value = _value(revision + 1, stamp, len(rules), encode(rules).encode("utf-8"))
        writes = [op_put(key, value), op_put(self._record_key(namespace, revision + 1), stamp)]
        if revision + 1 > self.history:
            writes.append(op_delete(self._record_key(namespace, revision + 1 - self.history)))
        deadline = self.clock.seconds() + self.resolve_timeout
        for _ in range(_FENCES):
            try:
                result = await self.client.txn([compare(key, "mod", "==", held.mod)],
                                               writes, [op_range(key)],
                                               timeout=self.attempt_timeout)
            except EtcdError as e:
                _refused(e, namespace)
                if isinstance(e, EtcdUnavailable) and not e.maybe_applied:
                    raise self._unavailable(e, "writing the rules of {}".format(namespace))
                landed, held = await self._resolve(namespace, revision, held, stamp, e,
                                                   deadline)
                if landed:
                    return self._landed(namespace, revision + 1, stamp, rules, held)
                continue
            if result.succeeded:
                return self._landed(namespace, revision + 1, stamp, rules, _Held(
                    result.revision, value, stamp, RuleSet(revision + 1, rules)))
            kvs = result.responses[0].kvs
            held = self._keep(namespace, kvs[0] if kvs else None)
            if held.ruleset.revision != revision:
                raise _conflict(held.ruleset.revision, revision)
            # The same revision with another mod_revision: a replica's fence; again.
        raise StoreUnavailable("the rule store (etcd at {}): the rules of {} kept being "
                               "rewritten at revision {}; nothing was written".format(
                                   self._describe(), namespace, revision))

    def _landed(self, namespace, revision, stamp, rules, held):
        """The write C{stamp} made C{revision}: hold it (when C{held} is it) and note it."""
        if held is not None and held.stamp == stamp:
            self._held[namespace] = held
            ruleset = held.ruleset
        else:
            ruleset = RuleSet(revision, rules)
        self._note(namespace, revision, bool(rules))
        return ruleset

    async def _resolve(self, namespace, revision, held, stamp, error, deadline):
        """
        Learn whether the write C{stamp} of C{revision} + 1, whose answer was lost, landed;
        make sure it never lands later if it did not.

        @return: C{(True, the L{_Held} of the key now or None)} when it landed;
            C{(False, the L{_Held} to write from)} when it did not and cannot any more.
        @raise Conflict: another write made C{revision} + 1.
        @raise StoreUnconfirmed: etcd could not be asked until C{deadline}, or the record of
            C{revision} + 1 is gone.
        """
        key = self._key(namespace)
        record = self._record_key(namespace, revision + 1)
        self.log.warn("the answer to a write of the rules of {namespace} (revision "
                      "{revision}) was lost ({why}): finding out whether it was applied",
                      namespace=namespace, revision=revision + 1, why=_why(error))
        delay = self.retry[0]
        while True:
            try:
                result = await self.client.txn(
                    [compare(key, "mod", "==", held.mod)], [op_put(key, held.value)],
                    [op_range(key), op_range(record)], timeout=self.attempt_timeout)
            except EtcdError as e:
                if self.clock.seconds() + delay > deadline or not self.running:
                    raise StoreUnconfirmed(
                        "the rules of {} may have been written (revision {}) but etcd (at "
                        "{}) could not be reached to learn whether: {}; read them back "
                        "before trying again".format(namespace, revision + 1,
                                                     self._describe(), _why(e)))
                await self._sleep(delay)
                delay = min(delay * 2, self.retry[1])
                continue
            if result.succeeded:
                self.log.info("the lost write of {namespace} (revision {revision}) was "
                              "not applied: fenced off, writing again",
                              namespace=namespace, revision=revision + 1)
                return False, attrs.evolve(held, mod=result.revision)
            current, found = result.responses
            now = current.kvs[0] if current.kvs else None
            made_by = found.kvs[0].value.decode("ascii", "replace") if found.kvs else None
            if made_by == stamp:
                self.log.info("the lost write of {namespace} (revision {revision}) was "
                              "applied", namespace=namespace, revision=revision + 1)
                try:
                    return True, (self._keep(namespace, now) if now is not None else None)
                except StoreUnavailable:
                    return True, None
            kept = self._keep(namespace, now)
            if made_by is not None:
                raise _conflict(kept.ruleset.revision, revision)
            if kept.ruleset.revision == revision:
                return False, kept          # fenced by another replica meanwhile
            raise StoreUnconfirmed(
                "the rules of {} may have been written (revision {}): the record of that "
                "revision is gone from etcd (more than {} writes since); read them back "
                "before trying again".format(namespace, revision + 1, self.history))

    def _sleep(self, seconds):
        d = Deferred()
        call = self.clock.callLater(seconds, d.callback, None)
        d.addErrback(lambda f: (call.cancel() if call.active() else None, f)[1])
        return d

    def wait_for_change(self, namespace, revision):
        known = self._known.get(namespace, 0)
        if known > revision:
            return succeed(known)
        entries = self._waiters.setdefault(namespace, [])

        def forget(waiter):
            entries[:] = [e for e in entries if e[1] is not waiter]
            if not entries and self._waiters.get(namespace) is entries:
                del self._waiters[namespace]

        waiter = Deferred(forget)
        entries.append((revision, waiter))
        self._check(namespace)
        return waiter

    def _check(self, namespace):
        """Read C{namespace}'s revision (a waiter may wait on one this replica missed)."""
        if namespace in self._checking or not self.running:
            return
        self._checking.add(namespace)
        d = self._run(self._read(namespace), internal=True)

        def failed(failure):
            if failure.check(StoreUnavailable, CancelledError):
                self.log.debug("cannot read the revision of {namespace}: {why}",
                               namespace=namespace, why=failure.getErrorMessage())
            else:
                self.log.failure("reading the revision of {namespace} failed", failure,
                                 namespace=namespace)

        def over(_):
            self._checking.discard(namespace)

        d.addErrback(failed).addBoth(over)

    def waiting(self):
        """How many readers are waiting for a change."""
        return sum(len(entries) for entries in self._waiters.values())

    def namespaces(self):
        return sorted(self._namespaces)

    # -- the watch --------------------------------------------------------------------------

    async def _await(self, thing):
        """Await C{thing} (a coroutine or Deferred) so that stopService can cancel it."""
        d = Deferred.fromCoroutine(thing) if not isinstance(thing, Deferred) else thing
        self._step = d
        try:
            return await d
        finally:
            self._step = None

    async def _follow(self):
        """List the namespaces, then follow every change of a rules key, until stopped."""
        delay = self.retry[0]
        failures = 0
        while self.running:
            try:
                if self._from is None:
                    listing = await self._await(
                        self.client.range_all(self._rules_prefix, prefix=True))
                    self._listed(listing)
                watch = await self._await(self.client.watch(
                    self._rules_prefix, prefix=True, start_revision=self._from))
                self._watch = watch
                if failures:
                    self.log.info("the rule store watches etcd again (from {url})",
                                  url=watch.url)
                    for namespace in list(self._waiters):
                        self._check(namespace)
                failures = 0
                delay = self.retry[0]
                self._caught_up(self._seen)
                while True:
                    self._changes(await self._await(watch.next()))
            except CancelledError:
                if not self.running:
                    return
            except Compacted as e:
                self.log.info("the rule store's watch is behind etcd's compaction ({why}): "
                              "listing again", why=_why(e))
                self._from = None
                continue
            except EtcdError as e:
                if not self.running:
                    return
                failures += 1
                # The first failure of a run is worth a warning; the retries are not.
                emit = self.log.warn if failures == 1 else self.log.debug
                emit("the rule store cannot watch etcd ({why}); trying again",
                     why=_why(e))
            finally:
                if self._watch is not None:
                    self._watch.cancel()
                    self._watch = None
            if not self.running:
                return
            try:
                await self._await(self._sleep(delay * (0.5 + self._random() / 2)))
            except CancelledError:
                return
            delay = min(delay * 2, self.retry[1])

    def _listed(self, listing):
        names = set()
        for kv in listing.kvs:
            namespace = self._namespace_of(kv.key)
            try:
                revision, _stamp, count, _rest = _header(kv.value)
            except _Corrupt as e:
                self.log.warn("ignored the rules key {key}: {why}",
                              key=kv.key.decode("utf-8", "replace"), why=str(e))
                continue
            if count:
                names.add(namespace)
            self._note(namespace, revision)
        self._namespaces = names
        self._from = listing.revision + 1
        self._seen = max(self._seen, listing.revision)

    def _changes(self, result):
        for event in result.events:
            kv = event.kv
            self._from = kv.mod_revision + 1
            self._seen = max(self._seen, kv.mod_revision)
            namespace = self._namespace_of(kv.key)
            if event.type == "DELETE":
                self._namespaces.discard(namespace)
                self.log.warn("the rules key of {namespace} was deleted from etcd",
                              namespace=namespace)
                continue
            try:
                revision, _stamp, count, _rest = _header(kv.value)
            except _Corrupt as e:
                self.log.warn("ignored a change of the rules key {key}: {why}",
                              key=kv.key.decode("utf-8", "replace"), why=str(e))
                continue
            self._note(namespace, revision, bool(count))
        if result.progress:
            self._from = max(self._from or 0, result.revision + 1)
            self._seen = max(self._seen, result.revision)
        self._caught_up(self._seen)

    def _caught_up(self, revision):
        if self._watch is None:
            return
        due = [entry for entry in self._progress if entry[0] <= revision]
        if due:
            self._progress = [entry for entry in self._progress if entry[0] > revision]
            for _revision, waiter in due:
                waiter.callback(None)

    # -- quiet (tests, benchmarks) ----------------------------------------------------------

    @property
    def watching(self):
        """Whether the watch of etcd is up."""
        return self._watch is not None

    @property
    def idle(self):
        """Whether nothing is in flight to etcd (the watch aside) and the watch is up."""
        return self._busy == 0 and not self._checking and (
            self._watch is not None or not self.running)

    def settled(self):
        """
        A Deferred that fires once the watch has delivered every change of a rules key
        made so far (at once when the store is stopped).
        """
        if not self.running:
            return succeed(None)

        async def settle():
            try:
                listing = await self.client.range(self._rules_prefix, prefix=True,
                                                  keys_only=True)
            except EtcdError:
                return
            last = max([kv.mod_revision for kv in listing.kvs] or [0])
            if self._watch is not None and self._seen >= last:
                return
            waiter = Deferred()
            self._progress.append((last, waiter))
            await waiter

        return Deferred.fromCoroutine(settle())


def _conflict(current, revision):
    return Conflict("the rules changed meanwhile (revision {}, not {})".format(
        current, revision))


def _refused(error, namespace):
    """
    Raise for an error that says etcd refused the request as it is, so nothing was
    applied: HTTP 400 (InvalidArgument: "request is too large") or 429 (ResourceExhausted:
    "received message larger than max", "too many requests").
    """
    if isinstance(error, EtcdUnavailable) or error.status not in (400, 429):
        return
    if "too large" in error.message or "larger than max" in error.message:
        raise PayloadTooLarge(
            "the rules of {} are too large for etcd ({}); nothing changed".format(
                namespace, error.message))
    raise StoreUnavailable("etcd refused the rules of {}: {}; nothing changed".format(
        namespace, error.message))


def _electing(error):
    """
    Whether C{error} says etcd is there but cannot serve now (an election): an endpoint
    answered 503 or did not answer in time, rather than every one refusing the connection.
    """
    if not isinstance(error, EtcdUnavailable):
        return False
    if error.status == 503:
        return True
    return any(why.startswith(("HTTP 503", "no answer within"))
               for _url, why in error.attempts)


def _why(error):
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
