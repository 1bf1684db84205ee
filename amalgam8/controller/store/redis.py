# -*- test-case-name: tests.test_controller_redis -*-
"""
The Redis rule store: every replica of the controller that uses the same Redis database
sees the same rules and revisions.

A namespace's rules are one hash, C{<prefix>c:<ns>} (the name percent-encoded), with the
fields C{revision}, C{rules} (the JSON list, as written) and C{stamp} (a random id of the
write). C{put} is one Lua script that compares the revision and replaces the rules only
when it is still the one the caller read (else L{Conflict}, and nothing changed), so two
replicas writing at once never lose an update and a revision never repeats.

Revisions never go backwards, even when Redis loses changes (a restart without
persistence, a failover to a replica that had not yet received the last write): each
script is sent the highest revision this replica has seen of the namespace (from its
answers and the change messages, which every replica hears), and a write never takes a
revision at or below it. A read that finds Redis behind it records what Redis holds as a
new revision past it (published like a write), so no reader is answered a revision it has
seen with other rules, and blocking readers waiting past the lost revision are woken.
C{<prefix>c:namespaces} is the set of the namespaces that have rules.

Every write publishes C{"<revision> <0|1: has rules> <namespace>"} on
C{<prefix>c:changes@<db>}: the blocking reads held on every replica wake within
milliseconds. Reads send the stamp of the rules this replica holds already and get the
rules back only when they changed, so a read of unchanged rules costs no parsing, and a
revision is never answered with another write's rules.

When the master has replicas (C{INFO replication}), a write waits for one of them to have
it (C{WAIT 1}, at most C{replica_timeout} seconds): an acknowledged rule survives the loss
of the master. A write no replica confirms in time fails with L{StoreUnconfirmed} (503),
saying that it may be there. Rules are the controller's only state: run Redis with
persistence (C{appendonly yes}).
"""

import json
import uuid
from urllib.parse import quote

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from amalgam8.controller.model import RuleSet, encode
from amalgam8.errors import Conflict, StoreUnconfirmed
from amalgam8.interfaces import IRuleStore
from amalgam8.redislink import RedisLink, Script

__all__ = ["RedisStore"]

# KEYS[1] the namespace's hash, KEYS[2] the set of namespaces with rules; ARGV[1] the
# channel, ARGV[2] the namespace, ARGV[3] the revision read, ARGV[4] the rules, ARGV[5]
# the stamp, ARGV[6] '1' when there are rules, ARGV[7] the floor (the highest revision the
# replica has seen) -> {1, new revision} or {0, current}
_PUT = r"""
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if current ~= tonumber(ARGV[3]) then
  return {0, current}
end
local new = math.max(current, tonumber(ARGV[7])) + 1
redis.call('HSET', KEYS[1], 'revision', string.format('%d', new), 'rules', ARGV[4],
           'stamp', ARGV[5])
if ARGV[6] == '1' then
  redis.call('SADD', KEYS[2], ARGV[2])
else
  redis.call('SREM', KEYS[2], ARGV[2])
end
redis.call('PUBLISH', ARGV[1], string.format('%d', new) .. ' ' .. ARGV[6] .. ' ' .. ARGV[2])
return {1, new}
"""

# KEYS[1] the namespace's hash, KEYS[2] the set of namespaces with rules; ARGV[1] the
# stamp held, ARGV[2] the floor (the highest revision the replica has seen), ARGV[3] the
# channel, ARGV[4] the namespace, ARGV[5] a fresh stamp -> {} (never written),
# {revision, stamp} (unchanged), {revision, stamp, rules}, or {revision, stamp, rules,
# what Redis had} when Redis was behind the floor (it lost changes: its data, or a write
# a failover did not carry over), which is a change: its rules get a revision past the
# floor, published like any other.
_GET = r"""
local found = redis.call('HMGET', KEYS[1], 'revision', 'stamp')
local current = tonumber(found[1] or '0')
local floor = tonumber(ARGV[2])
if current < floor then
  local rules = redis.call('HGET', KEYS[1], 'rules') or '[]'
  local new = string.format('%d', floor + 1)
  redis.call('HSET', KEYS[1], 'revision', new, 'rules', rules, 'stamp', ARGV[5])
  local has = '0'
  if rules ~= '[]' then
    has = '1'
    redis.call('SADD', KEYS[2], ARGV[4])
  else
    redis.call('SREM', KEYS[2], ARGV[4])
  end
  redis.call('PUBLISH', ARGV[3], new .. ' ' .. has .. ' ' .. ARGV[4])
  return {floor + 1, ARGV[5], rules, current}
end
if not found[1] then
  return {}
end
if found[2] == ARGV[1] then
  return {current, found[2]}
end
return {current, found[2], redis.call('HGET', KEYS[1], 'rules')}
"""

PUT = Script("put", _PUT)
GET = Script("get", _GET)


@implementer(IRuleStore)
class RedisStore(Service):
    """
    @ivar link: the L{RedisLink}.
    @ivar replica_timeout: how long a write waits for a replica to confirm it.
    """

    log = Logger()

    def __init__(self, reactor, address, prefix="a8:", timeout=5.0, replica_timeout=2.0):
        """
        @param reactor: the reactor that connects to Redis (C{IReactorTCP}, C{IReactorTime}).
        @param address: the L{amalgam8.redislink.RedisAddress}.
        @param prefix: the prefix of every key and of the channel.
        """
        self.prefix = prefix
        self.replica_timeout = replica_timeout
        self.link = RedisLink(reactor, address, channel=prefix + "c:changes",
                              on_message=self._message, on_subscribed=self._resubscribed,
                              timeout=max(timeout, replica_timeout + 1), what="the rule store")
        self._sets = {}
        self._known = {}
        self._waiters = {}
        self._checking = set()
        self._namespaces = set()
        self._listing = None
        #: The Deferred of the last stopService (it fires once the connections are closed).
        self.stopping = None

    # -- IService ---------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self.link.startService()

    def stopService(self):
        Service.stopService(self)
        waiting, self._waiters = self._waiters, {}
        for namespace, entries in waiting.items():
            for _wanted, waiter in entries:
                # Blocking readers get the current rules now rather than a dropped line.
                waiter.callback(self._known.get(namespace, 0))
        self.stopping = self.link.stopService()
        return self.stopping

    # -- keys and what this replica knows ---------------------------------------------------

    def _key(self, namespace):
        return "{}c:{}".format(self.prefix, quote(namespace, safe=""))

    def _note(self, namespace, revision, has_rules=None):
        revision = int(revision)
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

    # -- IRuleStore -------------------------------------------------------------------------

    def get(self, namespace):
        held = self._sets.get(namespace)
        floor = self._known.get(namespace, 0)
        d = self.link.run(GET, [self._key(namespace), self.prefix + "c:namespaces"],
                          [held[0] if held else "", "%d" % floor, self.link.channel,
                           namespace, uuid.uuid4().hex])

        def done(reply):
            if not reply:
                return RuleSet()
            revision, stamp = int(reply[0]), reply[1]
            if len(reply) == 4:
                self.log.error(
                    "Redis ({address}) is behind what this controller saw of {namespace}: "
                    "revision {had}, not {floor}; it lost changes (its data, or writes a "
                    "failover did not carry over). Its rules are now revision {revision}, "
                    "so no revision is handed out twice; run Redis with appendonly yes "
                    "and a replica", address=self.link.describe(), namespace=namespace,
                    had=int(reply[3]), floor=floor, revision=revision)
            if len(reply) == 2 and held is not None and held[0] == stamp:
                ruleset = held[1]
            else:
                ruleset = RuleSet(revision, json.loads(reply[2]))
                self._sets[namespace] = (stamp, ruleset)
            self._note(namespace, revision, bool(ruleset.rules))
            return ruleset

        return d.addCallback(done)

    def put(self, namespace, revision, rules):
        rules = list(rules)
        stamp = uuid.uuid4().hex
        d = self.link.run(PUT, [self._key(namespace), self.prefix + "c:namespaces"],
                          [self.link.channel, namespace, "%d" % revision, encode(rules),
                           stamp, "1" if rules else "0",
                           "%d" % self._known.get(namespace, 0)])

        def done(reply):
            written, current = int(reply[0]), int(reply[1])
            if not written:
                self._note(namespace, current)
                raise Conflict("the rules changed meanwhile (revision {}, not {})"
                               .format(current, revision))
            ruleset = RuleSet(current, rules)
            self._sets[namespace] = (stamp, ruleset)
            self._note(namespace, current, bool(rules))
            return self._confirmed(ruleset)

        return d.addCallback(done)

    def _confirmed(self, ruleset):
        """C{ruleset} once a replica has it too (at once when the master has none)."""
        d = self.link.call("INFO", "replication")

        def replicas(info):
            count = 0
            for line in str(info).splitlines():
                if line.startswith("connected_slaves:"):
                    count = int(line.split(":", 1)[1])
            if not count:
                return ruleset
            waited = self.link.call("WAIT", "1", "%d" % int(self.replica_timeout * 1000))
            return waited.addCallback(acknowledged)

        def acknowledged(count):
            if int(count) < 1:
                raise StoreUnconfirmed(
                    "the rules were written (revision {}) but no Redis replica confirmed "
                    "them within {:g} s: they may be lost if the master fails; read them "
                    "back before trying again".format(ruleset.revision,
                                                      self.replica_timeout))
            return ruleset

        return d.addCallback(replicas)

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
        if namespace in self._checking:
            return
        self._checking.add(namespace)
        d = self.link.call("HGET", self._key(namespace), "revision")

        def answered(revision):
            self._note(namespace, int(revision or 0))

        def failed(failure):
            self.log.debug("cannot read the revision of {namespace}: {why}",
                           namespace=namespace, why=failure.getErrorMessage())

        def over(_):
            self._checking.discard(namespace)

        d.addCallbacks(answered, failed).addBoth(over)

    def waiting(self):
        """How many readers are waiting for a change."""
        return sum(len(entries) for entries in self._waiters.values())

    def namespaces(self):
        return sorted(self._namespaces)

    # -- change messages --------------------------------------------------------------------

    def _message(self, text):
        parts = text.split(" ", 2)
        if len(parts) != 3 or parts[1] not in ("0", "1"):
            self.log.warn("ignored a change message that is not '<revision> <0|1> "
                          "<namespace>': {text!r}", text=text)
            return
        try:
            revision = int(parts[0])
        except ValueError:
            return
        self._note(parts[2], revision, parts[1] == "1")

    def _resubscribed(self):
        for namespace in list(self._waiters):
            self._check(namespace)
        if self._listing is None:
            self._listing = self.link.call("SMEMBERS", self.prefix + "c:namespaces")

            def listed(names):
                self._namespaces = set(names)

            def failed(failure):
                self.log.warn("cannot list the namespaces with rules: {why}",
                              why=failure.getErrorMessage())

            def over(_):
                self._listing = None

            self._listing.addCallbacks(listed, failed).addBoth(over)

    # -- quiet (tests, benchmarks) ----------------------------------------------------------

    @property
    def idle(self):
        """Whether nothing is in flight to Redis."""
        return self.link.idle and not self._checking and self._listing is None

    def settled(self):
        """See L{amalgam8.redislink.RedisLink.settled}."""
        return self.link.settled()
