# -*- test-case-name: tests.test_controller_proxies -*-
"""
The proxy status reports (SPEC B2) in Redis: every controller replica (and every process of
C{--processes N}) on the same Redis database sees every proxy's report, so
C{GET /v1/rules/status} (and a8ctl's C{--wait}) counts every proxy, whichever replica each
sidecar reports to.

A namespace's reports live under C{<prefix>p:<ns>:} (the name percent-encoded):

    rep   hash: proxy id -> "<received> <interval> <report JSON>"
    due   sorted set: proxy id -> the time it goes stale (received + 3 intervals)

Time is the injected clock, passed to every script: a report is stale exactly when
L{amalgam8.controller.proxies.is_stale} says so (the script computes the same expression on
the same numbers, sent as exact decimal text), with or without a sweep. Reading the reports
removes the stale ones (only those the sorted set says are due, so a read never scans every
proxy); a namespace nobody reads any more goes away by itself: both keys expire (in Redis's
own time) a minute after the last report in them is due.

Each change is one Lua script, so a report and its deadline move together; Redis away, a
call fails at once with L{amalgam8.errors.StoreUnavailable} (the API answers 503) and
nothing changed.
"""

import json
from urllib.parse import quote

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from amalgam8.controller.proxies import MISSED_REPORTS, Report, is_stale, status_of
from amalgam8.interfaces import IProxyReports
from amalgam8.redislink import RedisLink, Script

__all__ = ["RedisProxyReports", "EXPIRY_MARGIN"]

#: How long (seconds of Redis's own clock) a namespace's keys outlive its last deadline.
EXPIRY_MARGIN = 60.0

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False).encode

# KEYS[1] rep, KEYS[2] due; ARGV[1] the proxy id, ARGV[2] the value, ARGV[3] its deadline,
# ARGV[4] now, ARGV[5] the expiry margin (seconds) -> 1
_REPORT = r"""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local ms = math.ceil((tonumber(last[2]) - tonumber(ARGV[4]) + tonumber(ARGV[5])) * 1000)
if ms < 1000 then
  ms = 1000
end
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
return 1
"""

# KEYS[1] rep, KEYS[2] due; ARGV[1] now, ARGV[2] the reports missed before a proxy is
# stale -> the JSON list [proxy id, value, ...] of the live reports (the stale ones are
# removed): one bulk reply, not one per report (txredisapi takes a reactor turn for each
# element of a reply)
_LIVE = r"""
local now = tonumber(ARGV[1])
local missed = tonumber(ARGV[2])
local near = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%.17g', now + 1))
for _, id in ipairs(near) do
  local value = redis.call('HGET', KEYS[1], id)
  local stale = true
  if value then
    local received, interval = string.match(value, '^(%S+) (%S+) ')
    received = tonumber(received)
    interval = tonumber(interval)
    if received and interval then
      stale = now - received > missed * interval
    end
  end
  if stale then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then
  return '[]'
end
return cjson.encode(all)
"""

REPORT = Script("report", _REPORT)
LIVE = Script("live", _LIVE)


def _time(seconds):
    return repr(float(seconds))


def encode_report(report):
    """The text a L{Report} is kept as: C{"<received> <interval> <JSON>"}."""
    body = {"service": report.service, "tags": list(report.tags),
            "revision": report.revision, "index": report.index,
            "applied_at": report.applied_at, "interval": report.interval,
            "rejected": [list(pair) for pair in report.rejected]}
    return "{} {} {}".format(_time(report.received), _time(report.interval), _compact(body))


def decode_report(proxy_id, text):
    """
    The L{Report} of L{encode_report}'s text.

    @raise ValueError: for text it did not make.
    """
    try:
        received, _interval, body = text.split(" ", 2)
        value = json.loads(body)
        return Report(proxy_id, value["service"], tuple(value["tags"]), value["revision"],
                      value["index"], value["applied_at"], value["interval"],
                      float(received),
                      tuple((rule_id, error) for rule_id, error in value["rejected"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError("not a proxy report: {}".format(e))


@implementer(IProxyReports)
class RedisProxyReports(Service):
    """
    @ivar clock: the C{IReactorTime} that dates the reports and says when they go stale.
    @ivar interval: the report interval assumed when a report names none (seconds).
    @ivar link: the L{RedisLink} (commands only: nothing here waits for a change).
    """

    log = Logger()

    def __init__(self, clock, reactor, address, interval=30.0, prefix="a8:", timeout=5.0):
        """
        @param reactor: the reactor that connects to Redis (C{IReactorTCP}, C{IReactorTime}).
        @param address: the L{amalgam8.redislink.RedisAddress}.
        @param prefix: the prefix of every key.
        """
        self.clock = clock
        self.interval = interval
        self.prefix = prefix
        self.link = RedisLink(reactor, address, timeout=timeout, what="the proxy reports")
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
        base = "{}p:{}:".format(self.prefix, quote(namespace, safe=""))
        return [base + "rep", base + "due"]

    # -- IProxyReports ----------------------------------------------------------------------

    def report(self, namespace, proxy_id, service, tags, revision, index, applied_at,
               interval=None, rejected=()):
        report = Report(proxy_id, service, tuple(tags), revision, index, applied_at,
                        interval or self.interval, self.clock.seconds(), tuple(rejected))
        deadline = report.received + MISSED_REPORTS * report.interval
        d = self.link.run(REPORT, self._keys(namespace),
                          [proxy_id, encode_report(report), _time(deadline),
                           _time(report.received), _time(EXPIRY_MARGIN)])
        return d.addCallback(lambda _: None)

    def live(self, namespace):
        now = self.clock.seconds()
        d = self.link.run(LIVE, self._keys(namespace), [_time(now), "%d" % MISSED_REPORTS])

        def decoded(reply):
            reply = json.loads(reply)
            reports = []
            for n in range(0, len(reply) - 1, 2):
                proxy_id, text = reply[n], reply[n + 1]
                try:
                    report = decode_report(proxy_id, text)
                except ValueError as e:
                    self.log.warn("ignored the report of proxy {proxy_id} in {namespace}: "
                                  "{why}", proxy_id=proxy_id, namespace=namespace, why=e)
                    continue
                if not is_stale(report, now):
                    reports.append(report)
            reports.sort(key=lambda r: r.proxy_id)
            return reports

        return d.addCallback(decoded)

    def status(self, namespace, revision):
        return self.live(namespace).addCallback(status_of, revision)

    # -- quiet (tests, benchmarks) ----------------------------------------------------------

    @property
    def idle(self):
        """Whether nothing is in flight to Redis."""
        return self.link.idle

    def settled(self):
        """See L{amalgam8.redislink.RedisLink.settled}."""
        return self.link.settled()
