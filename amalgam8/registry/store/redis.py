# -*- test-case-name: tests.test_registry_redis -*-
"""
The Redis registry store: every replica of the registry that uses the same Redis database
is one registry.

Each change (a registration, a heartbeat, a deregistration, an expiry sweep) is one Lua
script, so the namespace's index and its instances move together and two replicas writing
at once never lose an update. A namespace C{ns} lives under the keys C{<prefix>r:<ns>:*}
(the name percent-encoded):

    meta        hash: name, index, seq (the registration order counter)
    reg         hash: id -> the registration (compact JSON)
    hb          hash: id -> the last heartbeat (POSIX seconds, as text)
    ttl         hash: id -> ttl, for the instances that expire
    exp         sorted set: id -> deadline (last heartbeat + ttl), same instances
    ids         sorted set: id -> seq (registration order)
    s:<service> sorted set: id -> seq, the service's instances
    svcs        hash: service -> number of instances

and C{<prefix>r:due} is a sorted set of namespaces by their earliest deadline, which the
sweep of every replica reads (once a second, on the store's clock): it never scans a
namespace with nothing due. Time is the store's injected clock, passed to every script, so
expiry is exact to the second with or without a sweep: a read never returns an instance
past its ttl, and a heartbeat or a deregistration of one removes it.

A namespace's index starts, at its first change, from the clock in microseconds and then
grows by one per change: it never goes backwards, even when Redis loses its data (a
restart without persistence), so no blocking reader is left waiting for an index it will
not see again. Each script is also sent the highest index this replica has seen of the
namespace (its floor): a Redis found behind it (a failover to a replica that had not yet
received the last changes) has what it holds recorded as a change past the floor, and no
index is handed out twice.

Every change publishes C{"<index> <namespace>"} on the channel C{<prefix>r:changes@<db>};
each replica is subscribed, so a change made through one wakes the blocking reads held on
every other within milliseconds. When the subscription is (re)made the store asks Redis for
the index of every namespace it has waiters on, so a message lost meanwhile costs nothing.

The counters of L{RedisStore.stats} are this replica's (each replica is scraped); the
instance counts are the last ones this replica learnt from Redis.
"""

from urllib.parse import quote

import json

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from amalgam8.errors import QuotaExceeded, UnknownInstance
from amalgam8.interfaces import IRegistryStore
from amalgam8.redislink import RedisLink, Script
from amalgam8.registry.model import Instance, Registration

__all__ = ["RedisStore"]

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False).encode

#: Registrations decoded, by their JSON text (the same text is the same registration).
MAX_DECODED = 200_000


# -- the scripts ------------------------------------------------------------------------------

# What every script shares. KEYS[1] is the namespace's key prefix (the sweep sets `base` to
# each due namespace's in turn), KEYS[2] the due set; ARGV[1] the channel, ARGV[2] the
# namespace, ARGV[3] the first index of a new namespace, ARGV[4] the time, ARGV[5] the
# floor: the highest index of the namespace this replica has seen (0 for the sweep).
_PRELUDE = r"""
local base = KEYS[1]
local due = KEYS[2]
local channel = ARGV[1]
local now_text = ARGV[4]
local now = tonumber(now_text)
local floor = tonumber(ARGV[5])

local function index()
  return tonumber(redis.call('HGET', base .. 'meta', 'index') or '0')
end

-- A change: the next index, never at or below the floor.
local function bump(name)
  local meta = base .. 'meta'
  local idx
  if redis.call('HEXISTS', meta, 'index') == 1 then
    idx = redis.call('HINCRBY', meta, 'index', 1)
    if idx <= floor then
      idx = floor + 1
      redis.call('HSET', meta, 'index', string.format('%d', idx))
    end
  else
    idx = math.max(tonumber(ARGV[3]), floor + 1)
    redis.call('HSET', meta, 'index', string.format('%d', idx), 'name', name)
  end
  redis.call('PUBLISH', channel, string.format('%d', idx) .. ' ' .. name)
  return idx
end

-- Redis behind what the replica has seen lost changes (its data, or writes a failover did
-- not carry over): what it holds now is a change past them, so no index is handed out
-- twice and readers waiting past the lost ones wake.
local function catch_up(name)
  if floor > 0 and index() < floor then
    bump(name)
  end
end

local function reschedule()
  local first = redis.call('ZRANGE', base .. 'exp', 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZADD', due, first[2], base)
  else
    redis.call('ZREM', due, base)
  end
end

local function remove(id)
  local reg = redis.call('HGET', base .. 'reg', id)
  if not reg then
    return false
  end
  local service = cjson.decode(reg).service_name
  redis.call('HDEL', base .. 'reg', id)
  redis.call('HDEL', base .. 'hb', id)
  redis.call('HDEL', base .. 'ttl', id)
  redis.call('ZREM', base .. 'exp', id)
  redis.call('ZREM', base .. 'ids', id)
  redis.call('ZREM', base .. 's:' .. service, id)
  if redis.call('HINCRBY', base .. 'svcs', service, -1) <= 0 then
    redis.call('HDEL', base .. 'svcs', service)
  end
  return true
end

-- The registration of a live instance, or false; an expired one is removed (expired[1]
-- counts it).
local function live(id, expired)
  local reg = redis.call('HGET', base .. 'reg', id)
  if not reg then
    return false
  end
  local deadline = redis.call('ZSCORE', base .. 'exp', id)
  if deadline and tonumber(deadline) < now then
    remove(id)
    expired[1] = expired[1] + 1
    return false
  end
  return reg
end

local function count()
  return redis.call('ZCARD', base .. 'ids')
end
"""

# ARGV[6] id, ARGV[7] service, ARGV[8] registration JSON, ARGV[9] ttl ('-1': never
# expires), ARGV[10] capacity ('-1': none).
# -> {status ('new'|'changed'|'same'|'quota'), index, count, expired}
_REGISTER = _PRELUDE + r"""
catch_up(ARGV[2])
local id = ARGV[6]
local service = ARGV[7]
local capacity = tonumber(ARGV[10])
local expired = {0}
local old = live(id, expired)
if not old and capacity >= 0 and count() >= capacity then
  local dead = redis.call('ZRANGEBYSCORE', base .. 'exp', '-inf', '(' .. now_text)
  for _, other in ipairs(dead) do
    remove(other)
    expired[1] = expired[1] + 1
  end
  if count() >= capacity then
    local idx = index()
    if expired[1] > 0 then
      reschedule()
      idx = bump(ARGV[2])
    end
    return {'quota', idx, count(), expired[1]}
  end
end
local status = 'same'
if not old then
  local seq = redis.call('HINCRBY', base .. 'meta', 'seq', 1)
  redis.call('ZADD', base .. 'ids', seq, id)
  redis.call('ZADD', base .. 's:' .. service, seq, id)
  redis.call('HINCRBY', base .. 'svcs', service, 1)
  redis.call('HSET', base .. 'reg', id, ARGV[8])
  status = 'new'
elseif old ~= ARGV[8] then
  redis.call('HSET', base .. 'reg', id, ARGV[8])
  status = 'changed'
end
redis.call('HSET', base .. 'hb', id, now_text)
if ARGV[9] == '-1' then
  redis.call('HDEL', base .. 'ttl', id)
  redis.call('ZREM', base .. 'exp', id)
else
  redis.call('HSET', base .. 'ttl', id, ARGV[9])
  redis.call('ZADD', base .. 'exp', now + tonumber(ARGV[9]), id)
end
reschedule()
local idx
if status ~= 'same' or expired[1] > 0 then
  idx = bump(ARGV[2])
else
  idx = index()
end
return {status, idx, count(), expired[1]}
"""

# ARGV[6] id -> {status ('ok'|'unknown'|'expired'), index, count, expired, registration}
_HEARTBEAT = _PRELUDE + r"""
catch_up(ARGV[2])
local id = ARGV[6]
local expired = {0}
local reg = live(id, expired)
if not reg then
  if expired[1] > 0 then
    reschedule()
    return {'expired', bump(ARGV[2]), count(), 1}
  end
  return {'unknown', index(), count(), 0}
end
redis.call('HSET', base .. 'hb', id, now_text)
local ttl = redis.call('HGET', base .. 'ttl', id)
if ttl then
  redis.call('ZADD', base .. 'exp', now + tonumber(ttl), id)
  reschedule()
end
return {'ok', index(), count(), 0, reg}
"""

# ARGV[6] id -> {status, index, count, expired, registration, heartbeat}
_DEREGISTER = _PRELUDE + r"""
catch_up(ARGV[2])
local id = ARGV[6]
local expired = {0}
local reg = live(id, expired)
if not reg then
  if expired[1] > 0 then
    reschedule()
    return {'expired', bump(ARGV[2]), count(), 1}
  end
  return {'unknown', index(), count(), 0}
end
local hb = redis.call('HGET', base .. 'hb', id)
remove(id)
reschedule()
return {'ok', bump(ARGV[2]), count(), 0, reg, hb}
"""

# ARGV[6] the service ('' for all) -> {index, count, "id\nregistration\nheartbeat\n..."}:
# one text, not a bulk string per field, so that a large listing is one reply to parse
# (compact JSON never holds a raw newline; ids and times never do).
_LIST = _PRELUDE + r"""
catch_up(ARGV[2])
local ids
if ARGV[6] ~= '' then
  ids = redis.call('ZRANGE', base .. 's:' .. ARGV[6], 0, -1)
else
  ids = redis.call('ZRANGE', base .. 'ids', 0, -1)
end
local out = {}
for first = 1, #ids, 1000 do
  local chunk = {}
  for i = first, math.min(first + 999, #ids) do
    chunk[#chunk + 1] = ids[i]
  end
  local regs = redis.call('HMGET', base .. 'reg', unpack(chunk))
  local hbs = redis.call('HMGET', base .. 'hb', unpack(chunk))
  for i = 1, #chunk do
    if regs[i] and hbs[i] then
      out[#out + 1] = chunk[i]
      out[#out + 1] = regs[i]
      out[#out + 1] = hbs[i]
    end
  end
end
return {index(), count(), table.concat(out, '\n')}
"""

# -> {index, the names of the services with a live instance, one a line}
_SERVICES = _PRELUDE + r"""
catch_up(ARGV[2])
local names = redis.call('HKEYS', base .. 'svcs')
local alive = {}
for _, name in ipairs(names) do
  local ids = redis.call('ZRANGE', base .. 's:' .. name, 0, -1)
  for _, id in ipairs(ids) do
    local deadline = redis.call('ZSCORE', base .. 'exp', id)
    if not deadline or tonumber(deadline) >= now then
      alive[#alive + 1] = name
      break
    end
  end
end
return {index(), table.concat(alive, '\n')}
"""

# KEYS[1] unused, ARGV[6] the most instances to expire
# -> {name, expired, index, count, name, ...}; the namespaces' earliest deadlines are moved
_SWEEP = _PRELUDE + r"""
local budget = tonumber(ARGV[6])
local out = {}
local bases = redis.call('ZRANGEBYSCORE', due, '-inf', '(' .. now_text, 'LIMIT', 0, 1000)
for _, b in ipairs(bases) do
  base = b
  local dead = redis.call('ZRANGEBYSCORE', base .. 'exp', '-inf', '(' .. now_text,
                          'LIMIT', 0, budget)
  for _, id in ipairs(dead) do
    remove(id)
  end
  reschedule()
  local name = redis.call('HGET', base .. 'meta', 'name')
  if #dead > 0 and name then
    out[#out + 1] = name
    out[#out + 1] = #dead
    out[#out + 1] = bump(name)
    out[#out + 1] = count()
  end
  budget = budget - #dead
  if budget <= 0 then
    break
  end
end
return out
"""

REGISTER = Script("register", _REGISTER)
HEARTBEAT = Script("heartbeat", _HEARTBEAT)
DEREGISTER = Script("deregister", _DEREGISTER)
LIST = Script("list", _LIST)
SERVICES = Script("services", _SERVICES)
SWEEP = Script("sweep", _SWEEP)


def _number(value):
    """A ttl as the scripts and the JSON keep it: whole numbers without a fraction."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def encode_registration(registration):
    """The JSON text a registration is kept as (the same registration, the same text)."""
    value = {
        "service_name": registration.service_name,
        "endpoint_type": registration.endpoint_type,
        "endpoint_value": registration.endpoint_value,
        "ttl": _number(registration.ttl),
        "status": registration.status,
    }
    if registration.tags:
        value["tags"] = list(registration.tags)
    if registration.metadata is not None:
        value["metadata"] = registration.metadata
    return _compact(value)


def _time(seconds):
    return repr(float(seconds))


@implementer(IRegistryStore)
class RedisStore(Service):
    """
    @ivar clock: the C{IReactorTime} of the store's logical time and of its sweep.
    @ivar link: the L{RedisLink} (its reactor connects and times out the commands).
    @ivar capacity: the most instances a namespace may hold, or L{None}.
    @ivar granularity: seconds between sweeps.
    """

    log = Logger()

    def __init__(self, clock, reactor, address, capacity=None, prefix="a8:",
                 granularity=1.0, sweep_limit=10_000, timeout=5.0):
        """
        @param reactor: the reactor that connects to Redis (C{IReactorTCP}, C{IReactorTime}).
        @param address: the L{amalgam8.redislink.RedisAddress}.
        @param prefix: the prefix of every key and of the channel (several registries may
            share a database under different prefixes).
        """
        self.clock = clock
        self.capacity = capacity
        self.granularity = granularity
        self.sweep_limit = sweep_limit
        self.prefix = prefix
        self._due = prefix + "r:due"
        self.link = RedisLink(reactor, address, channel=prefix + "r:changes",
                              on_message=self._message, on_subscribed=self._resubscribed,
                              timeout=timeout, what="the registry store")
        self._known = {}
        self._waiters = {}
        self._instances = {}
        self._checking = set()
        self._decoded = {}
        self._sweeper = None
        self._sweeping = None
        self._sweep_failed = False
        #: The Deferred of the last stopService (it fires once the connections are closed).
        self.stopping = None
        self._counts = {"registrations": 0, "heartbeats": 0, "deregistrations": 0,
                        "expirations": 0}

    # -- IService ---------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self.link.startService()
        self._schedule()

    def stopService(self):
        Service.stopService(self)
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        waiting, self._waiters = self._waiters, {}
        for namespace, entries in waiting.items():
            for _wanted, waiter in entries:
                # Blocking readers get the current state now rather than a dropped line.
                waiter.callback(self._known.get(namespace, 0))
        self.stopping = self.link.stopService()
        return self.stopping

    def _schedule(self):
        self._sweeper = self.clock.callLater(self.granularity, self._tick)

    def _tick(self):
        self._sweeper = None
        if self._sweeping is None:
            self.sweep()
        if self.running:
            self._schedule()

    # -- keys and answers -------------------------------------------------------------------

    def _base(self, namespace):
        return "{}r:{}:".format(self.prefix, quote(namespace, safe=""))

    def _run(self, script, namespace, now, *args):
        start = "%d" % int(now * 1_000_000)
        floor = "%d" % self._known.get(namespace, 0)
        return self.link.run(script, [self._base(namespace), self._due],
                             [self.link.channel, namespace, start, _time(now), floor]
                             + list(args))

    def _registration(self, text):
        registration = self._decoded.get(text)
        if registration is None:
            value = json.loads(text)
            registration = Registration(
                value["service_name"], value["endpoint_type"], value["endpoint_value"],
                value["ttl"], value["status"], tuple(value.get("tags", ())),
                value.get("metadata"))
            if len(self._decoded) >= MAX_DECODED:
                self._decoded.clear()
            self._decoded[text] = registration
        return registration

    def _note(self, namespace, index, count=None):
        """Record what Redis said of C{namespace}; wake the waiters it satisfies."""
        index = int(index)
        if count is not None:
            self._instances[namespace] = int(count)
        if index <= self._known.get(namespace, 0):
            return
        self._known[namespace] = index
        entries = self._waiters.get(namespace)
        if not entries:
            return
        woken = [entry for entry in entries if entry[0] < index]
        if not woken:
            return
        remaining = [entry for entry in entries if entry[0] >= index]
        if remaining:
            self._waiters[namespace] = remaining
        else:
            del self._waiters[namespace]
        for _wanted, waiter in woken:
            waiter.callback(index)

    # -- IRegistryStore ---------------------------------------------------------------------

    def register(self, namespace, registration):
        now = self.clock.seconds()
        if registration.status == "OUT_OF_SERVICE":
            ttl = "-1"
        else:
            ttl = repr(_number(registration.ttl))
        capacity = "-1" if self.capacity is None else "%d" % self.capacity
        d = self._run(REGISTER, namespace, now, registration.id, registration.service_name,
                      encode_registration(registration), ttl, capacity)

        def done(reply):
            status, index, count, expired = reply[:4]
            self._counts["expirations"] += int(expired)
            self._note(namespace, index, count)
            if status == "quota":
                raise QuotaExceeded("namespace is at its capacity of {} instances".format(
                    self.capacity))
            self._counts["registrations"] += 1
            return Instance(registration, now)

        return d.addCallback(done)

    def heartbeat(self, namespace, instance_id):
        now = self.clock.seconds()
        d = self._run(HEARTBEAT, namespace, now, instance_id)

        def done(reply):
            status, index, count, expired = reply[:4]
            self._counts["expirations"] += int(expired)
            self._note(namespace, index, count)
            if status != "ok":
                raise UnknownInstance("no instance {}".format(instance_id))
            self._counts["heartbeats"] += 1
            return Instance(self._registration(reply[4]), now)

        return d.addCallback(done)

    def deregister(self, namespace, instance_id):
        now = self.clock.seconds()
        d = self._run(DEREGISTER, namespace, now, instance_id)

        def done(reply):
            status, index, count, expired = reply[:4]
            self._counts["expirations"] += int(expired)
            self._note(namespace, index, count)
            if status != "ok":
                raise UnknownInstance("no instance {}".format(instance_id))
            self._counts["deregistrations"] += 1
            return Instance(self._registration(reply[4]), float(reply[5]))

        return d.addCallback(done)

    def instances(self, namespace, service_name=None):
        now = self.clock.seconds()
        d = self._run(LIST, namespace, now, service_name or "")

        def done(reply):
            index, count, text = reply
            self._note(namespace, index, count)
            live = []
            if not text:
                return int(index), live
            decode = self._registration
            fields = text.split("\n")
            for at in range(0, len(fields) - 2, 3):
                instance = Instance(decode(fields[at + 1]), float(fields[at + 2]))
                expires = instance.expires_at
                if expires is None or now <= expires:
                    live.append(instance)
            return int(index), live

        return d.addCallback(done)

    def services(self, namespace):
        d = self._run(SERVICES, namespace, self.clock.seconds())

        def done(reply):
            index, names = reply
            self._note(namespace, index)
            return int(index), sorted(names.split("\n")) if names else []

        return d.addCallback(done)

    def wait_for_change(self, namespace, index):
        known = self._known.get(namespace, 0)
        if known > index:
            return succeed(known)
        entries = self._waiters.setdefault(namespace, [])

        def forget(waiter):
            entries[:] = [e for e in entries if e[1] is not waiter]
            if not entries and self._waiters.get(namespace) is entries:
                del self._waiters[namespace]

        waiter = Deferred(forget)
        entries.append((index, waiter))
        self._check(namespace)
        return waiter

    def _check(self, namespace):
        """Ask Redis for C{namespace}'s index (one question in flight per namespace)."""
        if namespace in self._checking:
            return
        self._checking.add(namespace)
        d = self.link.call("HGET", self._base(namespace) + "meta", "index")

        def answered(index):
            self._note(namespace, int(index or 0))

        def failed(failure):
            # The waiters stay; the next subscription (Redis back) looks again.
            self.log.debug("cannot read the index of {namespace}: {why}",
                           namespace=namespace, why=failure.getErrorMessage())

        def over(_):
            self._checking.discard(namespace)

        d.addCallbacks(answered, failed).addBoth(over)

    def _message(self, text):
        index, _, namespace = text.partition(" ")
        try:
            index = int(index)
        except ValueError:
            self.log.warn("ignored a change message that is not '<index> <namespace>': "
                          "{text!r}", text=text)
            return
        self._note(namespace, index)

    def _resubscribed(self):
        for namespace in list(self._waiters):
            self._check(namespace)

    def stats(self):
        result = dict(self._counts)
        result["instances"] = dict(self._instances)
        result["waiters"] = sum(len(entries) for entries in self._waiters.values())
        return result

    # -- expiry -----------------------------------------------------------------------------

    def sweep(self):
        """
        Remove every instance whose lease has run out, in every namespace (at most
        C{sweep_limit} at a time; the rest at the next sweep, which is then at once).

        @return: a Deferred firing with the number of instances expired (0 when Redis
            could not be reached: the failure is logged once per outage).
        """
        d = self.link.run(SWEEP, ["", self._due],
                          [self.link.channel, "", "0", _time(self.clock.seconds()), "0",
                           "%d" % self.sweep_limit])
        self._sweeping = d

        def swept(reply):
            if self._sweep_failed:
                self._sweep_failed = False
                self.log.info("the registry store sweeps again")
            total = 0
            for at in range(0, len(reply), 4):
                namespace, expired, index, count = reply[at:at + 4]
                total += int(expired)
                self._note(namespace, index, count)
            if total:
                self._counts["expirations"] += total
                self.log.info("expired {count} instances", count=total)
            return total

        def failed(failure):
            failure.trap(Exception)
            if not self._sweep_failed:
                self._sweep_failed = True
                self.log.warn("the registry store cannot sweep: {why}",
                              why=failure.getErrorMessage())
            return 0

        def over(total):
            self._sweeping = None
            if total and total >= self.sweep_limit and self.running:
                self.sweep()
            return total

        return d.addCallbacks(swept, failed).addCallback(over)

    # -- quiet (tests, benchmarks) ----------------------------------------------------------

    @property
    def idle(self):
        """Whether nothing is in flight to Redis."""
        return self.link.idle and self._sweeping is None and not self._checking

    def settled(self):
        """See L{RedisLink.settled}."""
        return self.link.settled()
