# -*- test-case-name: tests.test_controller_traces -*-
"""
The trace records (SPEC B5) in Redis: every controller replica (and every process of
C{--processes N}) on the same Redis database keeps the records of a namespace in one
sequence, so Gremlin reads every record the sidecars forwarded, whichever replica each
sidecar sent them to and whichever one Gremlin reads from.

A namespace's records live under C{<prefix>t:<ns>:} (the name percent-encoded):

    meta  hash: seq (the last sequence number given), dropped (records dropped, in all)
    rec   sorted set: "<seq> <record JSON>", scored by seq

Adding a batch is one Lua script: it takes the batch's sequence numbers from C{seq}
(C{HINCRBY}), so they are unique and increasing across replicas, adds the records, drops the
oldest past the capacity and counts them: the whole batch or nothing. A namespace's first
sequence number is the clock in microseconds, and no replica takes a number at or below the
highest it has seen of the namespace (its floor), so the numbers never go back, even when
Redis lost its data: a reader's cursor (C{after}) never skips new records.

A query reads the records after the cursor in order, a bounded scan per script call: the
script passes on only records that contain the text each filter needs (the JSON of
C{log_key} as a key, the escaped text of C{log_value}, C{src} and C{dst}), and this side
decides with L{amalgam8.controller.traces.matches}, the memory buffer's filter, so the
answers are the memory buffer's. Redis away, a call fails at once with
L{amalgam8.errors.StoreUnavailable} (the API answers 503).
"""

import collections
import json
from urllib.parse import quote

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from amalgam8.controller.traces import matches
from amalgam8.interfaces import ITraceStore
from amalgam8.redislink import RedisLink, Script

__all__ = ["RedisTraceStore", "SCAN"]

#: The most records one query script reads (a bound on the time Redis spends in it).
SCAN = 1000
#: The most records of a batch one ZADD takes (Lua's stack bounds a call's arguments).
_CHUNK = 500
#: No sequence number reaches this (the clock in microseconds is about 2**51 now).
_NO_NUMBER = 2 ** 62

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False).encode

# KEYS[1] meta, KEYS[2] rec; ARGV[1] the capacity, ARGV[2] the floor (the highest sequence
# number this replica has seen), ARGV[3] the first sequence number of a new namespace,
# ARGV[4] the most records one ZADD takes, ARGV[5..] the records' JSON
# -> {first seq, last seq, dropped now, dropped in all, kept}
_ADD = r"""
local meta, rec = KEYS[1], KEYS[2]
local capacity = tonumber(ARGV[1])
local floor = tonumber(ARGV[2])
local chunk = tonumber(ARGV[4])
local count = #ARGV - 4
local seq = tonumber(redis.call('HGET', meta, 'seq') or '')
if not seq then
  seq = math.max(tonumber(ARGV[3]) - 1, floor)
  redis.call('HSET', meta, 'seq', string.format('%d', seq))
elseif seq < floor then
  redis.call('HSET', meta, 'seq', string.format('%d', floor))
end
local last = redis.call('HINCRBY', meta, 'seq', count)
local first = last - count + 1
local args = {}
for n = 1, count do
  local number = string.format('%d', first + n - 1)
  args[#args + 1] = number
  args[#args + 1] = number .. ' ' .. ARGV[n + 4]
  if #args >= 2 * chunk or n == count then
    redis.call('ZADD', rec, unpack(args))
    args = {}
  end
end
local kept = redis.call('ZCARD', rec)
local dropped = 0
if kept > capacity then
  dropped = kept - capacity
  redis.call('ZREMRANGEBYRANK', rec, 0, dropped - 1)
  kept = capacity
end
local total = redis.call('HINCRBY', meta, 'dropped', dropped)
return {first, last, dropped, total, kept}
"""

# KEYS[1] rec; ARGV[1] after, ARGV[2] the most records to read, ARGV[3] the most
# candidates to return, ARGV[4..] texts a candidate must contain
# -> {records read, the sequence number of the last one read (or ''), 1 when none follows
#     it, the candidates joined by newlines}: one bulk string for them all, not one reply
#     element each (txredisapi takes a reactor turn for each element of a reply); a kept
#     record has no newline (compact JSON escapes them)
_QUERY = r"""
local read = tonumber(ARGV[2])
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, read)
local want = tonumber(ARGV[3])
local out = {0, '', 1}
local candidates = {}
local found = 0
for n, item in ipairs(items) do
  local keep = true
  for k = 4, #ARGV do
    if not string.find(item, ARGV[k], 1, true) then
      keep = false
      break
    end
  end
  out[1] = n
  out[2] = string.match(item, '^(%d+) ')
  if keep then
    found = found + 1
    candidates[found] = item
    if found >= want then
      break
    end
  end
end
if found >= want or #items >= read then
  out[3] = 0
end
out[4] = table.concat(candidates, '\n')
return out
"""

# KEYS[1] meta, KEYS[2] rec -> {dropped in all, kept}
_COUNTS = r"""
return {tonumber(redis.call('HGET', KEYS[1], 'dropped') or '0'), redis.call('ZCARD', KEYS[2])}
"""

ADD = Script("add", _ADD)
QUERY = Script("query", _QUERY)
COUNTS = Script("counts", _COUNTS)

#: Values whose str() is not their JSON text (True, None, lists, ...): no text filter.
_NOT_JSON_TEXT = ("True", "False", "None")


def _escaped(text):
    """How C{text} appears inside a JSON string of the encoder records are kept with."""
    return _compact(text)[1:-1]


def needles(log_key=None, log_value=None, src=None, dst=None):
    """
    Texts every record that passes the filters contains, as kept (its compact JSON):
    the script passes on only records that contain all of them. Each is a necessary
    condition, never a sufficient one (L{matches} decides).
    """
    found = []
    if log_key is not None:
        found.append(_compact(log_key) + ":")
        if log_value is not None and log_value not in _NOT_JSON_TEXT \
                and not log_value.startswith(("[", "{")):
            # str() of a string, an integer or a float is its JSON text (escaped).
            found.append(_escaped(log_value))
    for name, wanted in (("src", src), ("dst", dst)):
        if wanted is not None:
            found.append(_compact(name) + ":")
            found.append(_escaped(wanted))
    return [needle for needle in found if needle]


@implementer(ITraceStore)
class RedisTraceStore(Service):
    """
    @ivar capacity: the most records kept per namespace.
    @ivar clock: the C{IReactorTime} that gives a new namespace its first sequence number.
    @ivar link: the L{RedisLink} (commands only: nothing here waits for a change).
    @ivar received: how many records this replica added.
    """

    log = Logger()

    def __init__(self, clock, reactor, address, capacity=100_000, prefix="a8:",
                 timeout=5.0, scan=SCAN):
        """
        @param reactor: the reactor that connects to Redis (C{IReactorTCP}, C{IReactorTime}).
        @param address: the L{amalgam8.redislink.RedisAddress}.
        @param prefix: the prefix of every key.
        @param scan: the most records one query script reads.
        """
        self.clock = clock
        self.capacity = capacity
        self.prefix = prefix
        self.scan = scan
        self.link = RedisLink(reactor, address, timeout=timeout, what="the trace records")
        self.received = 0
        self._floor = {}
        self._dropped = collections.Counter()
        self._kept = {}
        #: The Deferred of the last stopService (it fires once the connections are closed).
        self.stopping = None

    def startService(self):
        Service.startService(self)
        self.link.startService()

    def stopService(self):
        Service.stopService(self)
        self.stopping = self.link.stopService()
        return self.stopping

    def _keys(self, namespace):
        base = "{}t:{}:".format(self.prefix, quote(namespace, safe=""))
        return [base + "meta", base + "rec"]

    def _seen(self, namespace, sequence):
        if sequence > self._floor.get(namespace, 0):
            self._floor[namespace] = sequence

    # -- ITraceStore ------------------------------------------------------------------------

    def add(self, namespace, records):
        records = list(records)
        if not records:
            return self.dropped(namespace).addCallback(lambda _: 0)
        texts = [_compact(record) for record in records]
        start = int(self.clock.seconds() * 1_000_000)
        d = self.link.run(ADD, self._keys(namespace),
                          ["%d" % self.capacity, "%d" % self._floor.get(namespace, 0),
                           "%d" % max(start, 1), "%d" % _CHUNK] + texts)

        def added(reply):
            _first, last, dropped, _total, kept = (int(value) for value in reply)
            self._seen(namespace, last)
            self.received += len(records)
            self._dropped[namespace] += dropped
            self._kept[namespace] = kept
            return dropped

        return d.addCallback(added)

    def query(self, namespace, log_key=None, log_value=None, src=None, dst=None, after=0,
              limit=1000):
        return Deferred.fromCoroutine(self._query(
            namespace, log_key, log_value, src, dst, int(after), limit))

    async def _query(self, namespace, log_key, log_value, src, dst, after, limit):
        if after >= _NO_NUMBER:
            # No record has such a number (and Redis would refuse a score past a double).
            return [], None
        texts = needles(log_key, log_value, src, dst)
        rec = self._keys(namespace)[1]
        page = []
        last = after
        position = after
        while True:
            want = limit + 1 - len(page)
            reply = await self.link.run(
                QUERY, [rec], ["%d" % position, "%d" % max(self.scan, want), "%d" % want]
                + texts)
            read, done = int(reply[0]), int(reply[2])
            candidates = reply[3].split("\n") if reply[3] else ()
            if read:
                position = int(reply[1])
                self._seen(namespace, position)
            for item in candidates:
                number, _, text = item.partition(" ")
                try:
                    record = json.loads(text)
                except ValueError:
                    self.log.warn("ignored trace record {number} of {namespace}: not JSON",
                                  number=number, namespace=namespace)
                    continue
                if not isinstance(record, dict) or not matches(record, log_key, log_value,
                                                               src, dst):
                    continue
                if len(page) == limit:
                    return page, last
                page.append(record)
                last = int(number)
            if done:
                return page, None

    def dropped(self, namespace):
        d = self.link.run(COUNTS, self._keys(namespace))

        def counted(reply):
            total, kept = int(reply[0]), int(reply[1])
            self._kept[namespace] = kept
            return total

        return d.addCallback(counted)

    def stats(self):
        return {
            "records": dict(self._kept),
            "dropped": dict(self._dropped),
            "received": self.received,
        }

    # -- quiet (tests, benchmarks) ----------------------------------------------------------

    @property
    def idle(self):
        """Whether nothing is in flight to Redis."""
        return self.link.idle

    def settled(self):
        """See L{amalgam8.redislink.RedisLink.settled}."""
        return self.link.settled()
