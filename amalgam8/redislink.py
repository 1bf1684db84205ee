# -*- test-case-name: tests.test_redislink -*-
"""
What the Redis stores of the registry and the controller share: the address and options
of a Redis server, and L{RedisLink}, the two non-blocking connections a store holds to it
(one for commands, one subscribed to the store's change channel), built on txredisapi's
protocol.

The link never queues work for a Redis it cannot reach: a command sent while it is
disconnected fails at once with L{amalgam8.errors.StoreUnavailable} (the APIs answer 503),
and so does a command in flight when the connection is lost or that gets no answer within
the link's timeout. Meanwhile it reconnects by itself with a short backoff (at most
L{MAX_RETRY_DELAY} seconds between attempts), so service resumes when Redis is back.

Lua scripts (L{Script}) are sent as C{EVALSHA}, and as C{EVAL} only when the server
answers C{NOSCRIPT} (a restarted server, or C{SCRIPT FLUSH}): each change a store makes is
one script, so it is atomic in Redis whatever the number of replicas.

With Redis Sentinel (an address made by L{RedisAddress.of_sentinels}) the link follows the
master through failovers, as Redis's guide for Sentinel clients describes: before each
connection it asks the Sentinels in turn (C{SENTINEL get-master-addr-by-name}, the one that
answered last first, a short timeout each), connects to the master they name and checks
with C{ROLE} that it is one. It asks again and reconnects at once when a connection is
lost, when Redis answers C{READONLY} (a master demoted under it), and when a Sentinel
announces C{+switch-master} on the connection the link keeps subscribed to one of them; the
subscriber connection (the change messages) follows the master the same way. txredisapi's
own C{Sentinel} is not used: it runs on the global reactor and queues commands until a
master is found, where the link must fail fast.
"""

import hashlib
import ipaddress

import attrs
import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError as DeferredTimeout,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from amalgam8.errors import StoreUnavailable

__all__ = [
    "MAX_RETRY_DELAY",
    "MasterNotFound",
    "RedisAddress",
    "RedisLink",
    "SENTINEL_TIMEOUT",
    "Script",
    "parse_address",
    "parse_ca_file",
    "parse_database",
    "parse_master_name",
    "parse_prefix",
    "parse_redis_address",
    "parse_sentinels",
]

#: The longest wait between two connection attempts (seconds).
MAX_RETRY_DELAY = 2.0
#: How long a command may wait for its answer (seconds) before the link gives up on it.
COMMAND_TIMEOUT = 5.0
#: How long one Sentinel may take to be connected to and answer (seconds) before the link
#: asks the next one.
SENTINEL_TIMEOUT = 1.0
DEFAULT_PORT = 6379
#: The channel on which Sentinels announce a new master.
SWITCH_MASTER = "+switch-master"


def parse_address(text):
    """
    C{host:port}, C{host} (port 6379) or C{[v6 address]:port} -> C{(host, port)}.

    @raise ValueError: naming what is wrong.
    """
    value = str(text).strip()
    if not value:
        raise ValueError("expected host:port, not an empty address")
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("expected [address]:port, not {!r}".format(text))
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif ":" in value:
        raise ValueError("an IPv6 address must be in brackets: [{}]:6379".format(value))
    else:
        host, port_text = value, ""
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ValueError("{!r} has no usable host".format(text))
    if port_text == "":
        if value.endswith(":"):
            raise ValueError("{!r} has an empty port".format(text))
        return host, DEFAULT_PORT
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError("{!r} has a bad port {!r}".format(text, port_text))
    if not 1 <= port <= 65535:
        raise ValueError("{!r} has a port out of range 1-65535".format(text))
    return host, port


def _split_url(text):
    """C{redis://[:password@]host[:port][/database]} -> (host, port, password, database,
    tls); L{ValueError} naming what is wrong."""
    from urllib.parse import unquote, urlsplit

    value = text.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise ValueError("{!r} is not a Redis URL: {}".format(text, e))
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("{!r} is not a redis:// or rediss:// URL".format(text))
    if not parts.hostname:
        raise ValueError("{!r} has no host".format(text))
    if parts.query or parts.fragment:
        raise ValueError("{!r}: a Redis URL takes no query or fragment".format(text))
    database = None
    path = parts.path.strip("/")
    if path:
        database = parse_database(path)
    password = unquote(parts.password) if parts.password else None
    return (parts.hostname, port or DEFAULT_PORT, password, database,
            parts.scheme == "rediss")


def parse_redis_address(text):
    """
    A setting's Redis address: C{host:port}, C{host}, C{[v6]:port}, or a URL
    C{redis://[:password@]host[:port][/database]} (C{rediss://} for TLS); checked and
    returned as given (stripped). Blank is no address (L{None}).
    """
    value = str(text).strip()
    if not value:
        return None
    if "://" in value:
        _split_url(value)
    else:
        parse_address(value)
    return value


def parse_database(text):
    """A Redis database number (0 or more)."""
    value = str(text).strip()
    if not value.isdigit():
        raise ValueError("expected a database number (0, 1, ...), not {!r}".format(text))
    return int(value)


def parse_prefix(text):
    """A key prefix: printable, no spaces."""
    value = str(text)
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("expected a key prefix without spaces, such as a8:, not {!r}"
                         .format(text))
    return value


def parse_ca_file(text):
    """The path of a readable PEM certificate file; blank is none."""
    value = str(text).strip()
    if not value:
        return None
    from twisted.internet.ssl import Certificate

    try:
        with open(value, "rb") as f:
            Certificate.loadPEM(f.read())
    except OSError as e:
        raise ValueError("cannot read {}: {}".format(value, e.strerror))
    except Exception:
        raise ValueError("{} is not a PEM certificate".format(value))
    return value


def parse_sentinels(text):
    """A comma-separated list of C{host:port} of Sentinels (port 6379 when left out:
    Sentinels usually listen on 26379, so give it); blank is none."""
    value = str(text).strip()
    if not value:
        return None
    found = []
    for item in value.split(","):
        address = parse_address(item)
        if address in found:
            raise ValueError("{}:{} is named twice".format(*address))
        found.append(address)
    return tuple(found)


def parse_master_name(text):
    """The name the Sentinels know a master by (C{sentinel monitor <name> ...}): printable,
    without spaces; blank is none."""
    value = str(text).strip()
    if not value:
        return None
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("a master name has no spaces or control characters, not {!r}"
                         .format(text))
    return value


def _host_port(host, port):
    return "{}:{}".format("[{}]".format(host) if ":" in host else host, port)


def _server(reply):
    """A Sentinel's C{[host, port]} -> C{(host, port)}, or L{None} if it is not one."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 2:
        return None
    host, port = (str(part) for part in reply)
    if not host or any(c.isspace() for c in host) or not port.isdigit():
        return None
    port = int(port)
    if not 1 <= port <= 65535:
        return None
    return host, port


@attrs.frozen
class RedisAddress:
    """
    Where a Redis server is (or which Sentinels to ask for it) and how to speak to it.

    @ivar host: the server's host, or L{None} when the Sentinels name it.
    @ivar database: the database number (C{SELECT}).
    @ivar tls: whether to speak TLS; C{ca} is then the PEM file of the authority to trust
        (L{None}: the platform's). With Sentinels, TLS is spoken to the master (whose
        certificate must then hold the address the Sentinels give), not to the Sentinels.
    @ivar sentinels: C{((host, port), ...)} of the Sentinels to ask for the master, or
        C{()}.
    @ivar master: the name the Sentinels know the master by.
    """

    host: str = None
    port: int = DEFAULT_PORT
    password: str = None
    database: int = 0
    tls: bool = False
    ca: str = None
    sentinels: tuple = attrs.field(default=(), converter=tuple)
    master: str = None

    @classmethod
    def of_sentinels(cls, sentinels, master, password=None, database=None, tls=False,
                     ca=None):
        """
        The master C{master} as the Sentinels C{sentinels} (C{((host, port), ...)}, at
        least one) name it, with the password, database and TLS of that master.
        """
        if not sentinels or not master:
            raise ValueError("Sentinels need at least one address and a master name")
        return cls(None, DEFAULT_PORT, password=password, database=database or 0,
                   tls=bool(tls), ca=ca, sentinels=tuple(sentinels), master=master)

    def at(self, host, port):
        """This address with the server C{host:port} (the master the Sentinels named)."""
        return attrs.evolve(self, host=host, port=port)

    @classmethod
    def parse(cls, text, **kwargs):
        host, port = parse_address(text)
        return cls(host, port, **kwargs)

    @classmethod
    def from_settings(cls, address, password=None, database=None, tls=False, ca=None):
        """
        The address the settings give: C{address} as L{parse_redis_address} takes it; a
        URL's password and database are used unless given on their own, and
        C{rediss://} or C{tls} asks for TLS.
        """
        if "://" in address:
            host, port, url_password, url_database, url_tls = _split_url(address)
        else:
            (host, port), url_password, url_database, url_tls = \
                parse_address(address), None, None, False
        return cls(host, port,
                   password=password if password is not None else url_password,
                   database=database if database is not None else (url_database or 0),
                   tls=bool(tls or url_tls), ca=ca)

    def describe(self):
        """C{redis 10.0.0.5:6379 db 2} (never the password), for messages; with Sentinels
        C{redis 10.0.0.7:6379 db 0 (master a8)} once the server is known, or
        C{redis master a8 (Sentinels 10.0.0.1:26379, 10.0.0.2:26379) db 0}."""
        scheme = "rediss" if self.tls else "redis"
        if self.host is None:
            return "{} master {} (Sentinels {}) db {}".format(
                scheme, self.master, ", ".join(_host_port(h, p) for h, p in self.sentinels),
                self.database)
        text = "{} {} db {}".format(scheme, _host_port(self.host, self.port), self.database)
        if self.sentinels:
            text += " (master {})".format(self.master)
        return text

    def endpoint(self, reactor, timeout=5):
        """The client endpoint of the server (TLS-wrapped when asked), giving up on a
        connection attempt after C{timeout} seconds."""
        if self.host is None:
            raise ValueError("the Sentinels name the server: ask them first")
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            ip = None
        if ip is None:
            endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        elif ip.version == 4:
            endpoint = TCP4ClientEndpoint(reactor, self.host, self.port, timeout=timeout)
        else:
            endpoint = TCP6ClientEndpoint(reactor, self.host, self.port, timeout=timeout)
        if self.tls:
            from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust

            if self.ca:
                with open(self.ca, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            else:
                trust = platformTrust()
            endpoint = wrapClientTLS(optionsForClientTLS(self.host, trustRoot=trust),
                                     endpoint)
        return endpoint


class Script:
    """A Lua script, sent by its SHA-1 (L{RedisLink.run})."""

    def __init__(self, name, source):
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


class MasterNotFound(Exception):
    """No Sentinel named the master (the message says what each one answered)."""


class _Commands(txredisapi.RedisProtocol):
    """txredisapi's protocol, on the link's reactor."""

    #: With Sentinels: the C{(host, port)} the Sentinels named when this connection was
    #: made (the master it is meant to be on).
    master = None


class _Subscriber(txredisapi.SubscriberProtocol):
    master = None

    def messageReceived(self, pattern, channel, message):
        self.factory.link._message(channel, message)


class _SentinelWatch(txredisapi.SubscriberProtocol):
    """The connection subscribed to a Sentinel's C{+switch-master} announcements."""

    def messageReceived(self, pattern, channel, message):
        if channel == SWITCH_MASTER:
            self.factory.link._switched(message)


class _Factory(Factory):
    """Builds one kind of connection of a link; reports when each is ready or lost."""

    noisy = False
    isLazy = False

    def __init__(self, link, protocol, database, password=None):
        self.link = link
        self.protocol = protocol
        self.database = database
        self.password = password

    def buildProtocol(self, addr):
        p = self.protocol(charset="utf-8", password=self.password,
                          dbid=self.database or None, convertNumbers=False)
        p.factory = self
        p.callLater = self.link.reactor.callLater
        if self.protocol is not _SentinelWatch:
            p.master = self.link._connecting_to
        p.whenConnected().addCallback(self.ready)
        return p

    def ready(self, protocol):
        if self.protocol is _SentinelWatch:
            self.link._watching(protocol)
        else:
            self.link._ready(protocol)

    # What txredisapi's protocol calls when AUTH or SELECT fails: the connection is closed
    # and the link tries again later (the operator may be fixing the server).
    def stopTrying(self):
        pass

    def connectionError(self, why):
        self.link.log.error("cannot use {what} at {address}: {why}",
                            what=self.link.what, address=self.link.describe(), why=why)


class _Question(Factory):
    """One question to one Sentinel: the connection that carries it."""

    noisy = False
    isLazy = False

    def __init__(self, link):
        self.link = link

    def buildProtocol(self, addr):
        p = _Commands(charset="utf-8", convertNumbers=False)
        p.factory = self
        p.callLater = self.link.reactor.callLater
        return p

    def stopTrying(self):
        pass

    def connectionError(self, why):
        pass


class _Noting:
    """A protocol factory that notes, while C{factory} builds a protocol, which server the
    connection is to (L{RedisLink._connecting_to})."""

    def __init__(self, link, factory, server):
        self._link = link
        self._factory = factory
        self._server = server

    def buildProtocol(self, addr):
        self._link._connecting_to = self._server
        try:
            return self._factory.buildProtocol(addr)
        finally:
            self._link._connecting_to = None

    def __getattr__(self, name):
        return getattr(self._factory, name)


@implementer(IStreamClientEndpoint)
class _MasterEndpoint:
    """Connects to the master the Sentinels name at the time of each attempt."""

    def __init__(self, link):
        self.link = link

    def connect(self, factory):
        link = self.link

        def located(server):
            host, port = server
            endpoint = link.address.at(host, port).endpoint(link.reactor)
            return endpoint.connect(_Noting(link, factory, server))

        return link._locate().addCallback(located)


@implementer(IStreamClientEndpoint)
class _SentinelEndpoint:
    """Connects to a Sentinel: the same one again after a lost connection, the next one
    (in the order given) after a failed attempt."""

    def __init__(self, link):
        self.link = link
        self._failures = 0

    def connect(self, factory):
        sentinels = self.link.address.sentinels
        host, port = sentinels[self._failures % len(sentinels)]
        d = RedisAddress(host, port).endpoint(self.link.reactor).connect(factory)

        def connected(protocol):
            self._failures = 0
            return protocol

        def failed(failure):
            self._failures += 1
            return failure

        return d.addCallbacks(connected, failed)


class _Query:
    """One round of questions to the Sentinels, shared by the connections waiting for its
    answer."""

    def __init__(self):
        self.waiters = []
        self.deferred = None


class RedisLink(Service):
    """
    A store's connections to one Redis server (or to the master a set of Sentinels name).

    @ivar reactor: the C{IReactorTCP} and C{IReactorTime} to connect and time out with.
    @ivar address: the L{RedisAddress}.
    @ivar channel: the channel to subscribe to (its name gets C{@<database>}: channels are
        shared by every database of a server), or L{None} for no subscriber.
    @ivar on_message: C{(text) -> None}, called with each message of the channel.
    @ivar on_subscribed: C{() -> None}, called each time the subscription is (re)made,
        and when the command connection is made again while subscribed: messages sent
        while the subscription was down are lost (and questions sent while the commands
        were down failed), so the store looks again.
    @ivar what: what the link is for, in messages (C{"the registry store"}).
    """

    log = Logger()

    def __init__(self, reactor, address, channel=None, on_message=None, on_subscribed=None,
                 timeout=COMMAND_TIMEOUT, what="the store",
                 sentinel_timeout=SENTINEL_TIMEOUT):
        self.reactor = reactor
        self.address = address
        self.channel = None if channel is None else "{}@{}".format(channel, address.database)
        self.on_message = on_message or (lambda text: None)
        self.on_subscribed = on_subscribed or (lambda: None)
        self.timeout = timeout
        self.sentinel_timeout = sentinel_timeout
        self.what = what
        self._commands = None
        self._subscriber = None
        self._subscribed = False
        self._services = []
        self._busy = 0
        self._idle_waiters = []
        self._subscription_waiters = []
        self._starting = False
        self._start_waiters = []
        self._start_timer = None
        # Sentinels: who to ask (the last to answer first), the round of questions in
        # flight, what went wrong (for messages), the watching connection.
        self._sentinels = list(address.sentinels)
        self._query = None
        self._trouble = None
        self._watch = None
        self._watched = False
        self._connecting_to = None

    # -- IService ---------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        policy = backoffPolicy(initialDelay=0.05, maxDelay=MAX_RETRY_DELAY, factor=2.0)
        if self.address.sentinels:
            endpoint = _MasterEndpoint(self)
        else:
            endpoint = self.address.endpoint(self.reactor)
        kinds = [(_Commands, self.address.database)]
        if self.channel is not None:
            kinds.append((_Subscriber, None))
        self._services = []
        for protocol, database in kinds:
            factory = _Factory(self, protocol, database, self.address.password)
            service = ClientService(endpoint, factory, retryPolicy=policy,
                                    clock=self.reactor)
            service.startService()
            self._services.append(service)
        if self.address.sentinels:
            self._watched = False
            self._watch = ClientService(_SentinelEndpoint(self),
                                        _Factory(self, _SentinelWatch, None),
                                        retryPolicy=policy, clock=self.reactor)
            self._watch.startService()
        # Until the first attempt to connect is over, commands wait for it (a server that
        # has just started is not "down"); after that, none waits.
        self._starting = True
        self._start_timer = self.reactor.callLater(self.timeout, self._started)
        self._services[0].whenConnected(failAfterFailures=1).addErrback(self._started)

    def _started(self, _ignored=None):
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._start_timer = None
        self._starting = False
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def stopService(self):
        Service.stopService(self)
        self._started()
        services, self._services = self._services, []
        if self._watch is not None:
            services.append(self._watch)
            self._watch = None
        self._commands = self._subscriber = None
        self._subscribed = False
        stopped = gatherResults([s.stopService() for s in services], consumeErrors=True)
        query, self._query = self._query, None
        if query is not None and query.deferred is not None and not query.deferred.called:
            query.deferred.cancel()
        return stopped

    # -- connections ------------------------------------------------------------------------

    @property
    def connected(self):
        """Whether commands can be sent now."""
        return self._commands is not None

    @property
    def subscribed(self):
        """Whether the change channel is listened to now."""
        return self._subscribed

    @property
    def master(self):
        """With Sentinels: the C{(host, port)} of the master the commands go to now, or
        L{None}."""
        return self._commands.master if self._commands is not None else None

    def describe(self):
        """The server (with Sentinels: the master now, when there is one), for messages."""
        master = self.master
        if master is not None:
            return self.address.at(*master).describe()
        return self.address.describe()

    def _ready(self, protocol):
        if not self.running:
            protocol.transport.loseConnection()
            return
        if not self.address.sentinels:
            self._adopt(protocol)
            return
        # The Sentinels may name a master that is one no more (a failover under way, or
        # an old master back as a replica): ask the server itself.
        d = protocol.execute_command("ROLE").addTimeout(self.timeout, self.reactor)
        d.addCallbacks(self._role, self._role_unknown, callbackArgs=(protocol,),
                       errbackArgs=(protocol,))

    def _role(self, reply, protocol):
        role = reply[0] if isinstance(reply, list) and reply else reply
        if role == "master":
            self._adopt(protocol)
            return
        self.log.warn("{what}: {server} is not the master {master} (its ROLE: {role}); "
                      "asking the Sentinels again", what=self.what,
                      server=_host_port(*protocol.master), master=self.address.master,
                      role=role if role in ("slave", "sentinel") else "unknown")
        self._trouble = "{} is not a master".format(_host_port(*protocol.master))
        self._drop(protocol)

    def _role_unknown(self, failure, protocol):
        self.log.warn("{what}: cannot ask {server} its ROLE: {why}", what=self.what,
                      server=_host_port(*protocol.master), why=failure.getErrorMessage())
        self._drop(protocol)

    def _drop(self, protocol):
        if isinstance(protocol, _Commands):
            # The first attempt is over: commands waiting for it fail now.
            self._started()
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    def _adopt(self, protocol):
        if not self.running or protocol.transport is None or not protocol.connected:
            return
        self._trouble = None
        protocol.whenDisconnected().addCallback(self._lost)
        if isinstance(protocol, _Subscriber):
            self._subscriber = protocol
            d = protocol.subscribe(self.channel)
            d.addCallbacks(self._subscription_made, self._subscription_failed,
                           callbackArgs=(protocol,), errbackArgs=(protocol,))
        else:
            self._commands = protocol
            self._started()
            self.log.info("{what} is connected to {address}", what=self.what,
                          address=self.describe())
            if self._subscribed:
                # Questions the store asked while the commands were down failed: ask again.
                self._catch_up()

    def _subscription_made(self, _reply, protocol):
        if protocol is not self._subscriber:
            return
        self._subscribed = True
        self._catch_up()
        waiters, self._subscription_waiters = self._subscription_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _catch_up(self):
        try:
            self.on_subscribed()
        except Exception:
            self.log.failure("the store failed to catch up after (re)connecting")

    def _subscription_failed(self, failure, protocol):
        self.log.warn("{what} could not subscribe to {channel}: {why}", what=self.what,
                      channel=self.channel, why=failure.getErrorMessage())
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    def _lost(self, protocol):
        if protocol is self._commands:
            self._commands = None
            if self.running:
                self.log.warn("{what} lost its connection to {address}; reconnecting",
                              what=self.what,
                              address=self.address.at(*protocol.master).describe()
                              if protocol.master else self.address.describe())
        elif protocol is self._subscriber:
            self._subscriber = None
            self._subscribed = False

    def _message(self, channel, message):
        if channel != self.channel:
            return
        try:
            self.on_message(message)
        except Exception:
            self.log.failure("the store failed on the change message {message!r}",
                             message=message)

    # -- Sentinels --------------------------------------------------------------------------

    def _locate(self):
        """
        Ask the Sentinels for the master (one round of questions at a time, shared).

        @return: a Deferred firing with its C{(host, port)}, or failing with
            L{MasterNotFound}; cancelling it leaves the round to the other waiters.
        """
        query = self._query
        fresh = query is None
        if fresh:
            query = self._query = _Query()

        def forget(waiter):
            if waiter in query.waiters:
                query.waiters.remove(waiter)
            if not query.waiters and query.deferred is not None \
                    and not query.deferred.called:
                query.deferred.cancel()

        waiter = Deferred(forget)
        query.waiters.append(waiter)
        if fresh:
            query.deferred = Deferred.fromCoroutine(self._ask_sentinels())
            query.deferred.addBoth(self._answered, query)
        return waiter

    def _answered(self, result, query):
        if self._query is query:
            self._query = None
        if isinstance(result, Failure) and result.check(MasterNotFound):
            if self._trouble != result.getErrorMessage():
                self.log.warn("{what}: {why}", what=self.what, why=result.getErrorMessage())
            self._trouble = result.getErrorMessage()
        waiters, query.waiters = query.waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _ask_sentinels(self):
        reasons = []
        for sentinel in list(self._sentinels):
            where = _host_port(*sentinel)
            try:
                reply = await self._ask(sentinel)
            except CancelledError:
                raise
            except DeferredTimeout:
                reasons.append("{}: no answer within {:g} s".format(
                    where, self.sentinel_timeout))
                continue
            except Exception as e:
                reasons.append("{}: {}".format(where, str(e) or e.__class__.__name__))
                continue
            server = _server(reply)
            if server is None:
                reasons.append("{}: {}".format(where, "does not know it" if reply is None
                                               else "answered {!r}".format(reply)))
                continue
            if self._sentinels[0] != sentinel:
                self._sentinels.remove(sentinel)
                self._sentinels.insert(0, sentinel)
            return server
        raise MasterNotFound("no Sentinel named the master {} ({})".format(
            self.address.master, "; ".join(reasons)))

    def _ask(self, sentinel):
        """C{SENTINEL get-master-addr-by-name} of one Sentinel, on a connection of its
        own; the reply, or a failure after L{sentinel_timeout}."""
        held = []

        def connected(protocol):
            held.append(protocol)
            return protocol.whenConnected()

        def ask(protocol):
            return protocol.execute_command("SENTINEL", "get-master-addr-by-name",
                                            self.address.master)

        def close(result):
            for protocol in held:
                if protocol.transport is not None:
                    protocol.transport.abortConnection()
            return result

        host, port = sentinel
        endpoint = RedisAddress(host, port).endpoint(self.reactor,
                                                     timeout=self.sentinel_timeout)
        d = endpoint.connect(_Question(self))
        d.addCallback(connected).addCallback(ask)
        d.addTimeout(self.sentinel_timeout, self.reactor)
        return d.addBoth(close)

    def _watching(self, protocol):
        if not self.running:
            protocol.transport.loseConnection()
            return
        d = protocol.subscribe(SWITCH_MASTER)

        def subscribed(_):
            again, self._watched = self._watched, True
            if again:
                # A switch announced while no Sentinel was watched would be missed.
                self._locate().addCallbacks(self._check_master, lambda _: None)

        def failed(failure):
            self.log.warn("{what} could not subscribe to a Sentinel's {channel}: {why}",
                          what=self.what, channel=SWITCH_MASTER,
                          why=failure.getErrorMessage())
            if protocol.transport is not None:
                protocol.transport.loseConnection()

        d.addCallbacks(subscribed, failed)

    def _check_master(self, server):
        if self.master is not None and self.master != server:
            self._follow("the Sentinels name {} as the master".format(_host_port(*server)),
                         server)

    def _switched(self, text):
        parts = str(text).split()
        if len(parts) != 5 or parts[0] != self.address.master:
            return
        server = _server(parts[3:])
        if server is None:
            self.log.warn("ignored a {channel} announcement that names no address: "
                          "{text!r}", channel=SWITCH_MASTER, text=text)
            return
        self.log.info("{what}: the Sentinels switched the master {master} from {old} to "
                      "{new}", what=self.what, master=self.address.master,
                      old=_host_port(parts[1], parts[2]), new=_host_port(*server))
        self._follow("the Sentinels switched the master", server)

    def _follow(self, why, server=None):
        """
        Connect again now, to the master the Sentinels name, rather than after the
        backoff: the commands and the subscriber connection, unless they are on
        C{server} already.
        """
        if not self.running or not self.address.sentinels:
            return
        # An answer asked for before now may name the old master.
        self._query = None
        protocols = [self._commands, self._subscriber]
        for service, protocol in zip(self._services, protocols):
            if server is not None and protocol is not None and protocol.master == server:
                continue
            if protocol is not None:
                self.log.info("{what} leaves {address}: {why}", what=self.what,
                              address=self.address.at(*protocol.master).describe(),
                              why=why)
                if protocol.transport is not None:
                    protocol.transport.abortConnection()
            service.stopService()
            service.startService()

    # -- commands ---------------------------------------------------------------------------

    def _unavailable(self, why):
        if self._trouble and why == "not connected":
            why = "not connected: {}".format(self._trouble)
        return StoreUnavailable("{} ({}) is unavailable: {}".format(
            self.what, self.describe(), why))

    def _send(self, args):
        protocol = self._commands
        if protocol is None and self._starting:
            self._busy += 1
            waiter = Deferred()
            self._start_waiters.append(waiter)

            def resume(_):
                self._done(None, None)
                return self._send(args)

            return waiter.addCallback(resume)
        if protocol is None:
            return fail(self._unavailable("not connected"))
        try:
            d = protocol.execute_command(*args)
        except txredisapi.ConnectionError:
            return fail(self._unavailable("not connected"))
        self._busy += 1
        d.addTimeout(self.timeout, self.reactor)
        d.addBoth(self._done, protocol)
        return d

    def _done(self, result, protocol):
        self._busy -= 1
        if protocol is not None and isinstance(getattr(result, "value", None),
                                               DeferredTimeout):
            # A Redis that answers nothing for that long is taken for lost: the
            # connection is dropped (failing what else was waiting) and made again.
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        if not self._busy and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def _translate(self, failure):
        if failure.check(StoreUnavailable):
            return failure
        if failure.check(DeferredTimeout):
            raise self._unavailable("no answer within {:g} s".format(self.timeout))
        if failure.check(txredisapi.ConnectionError):
            raise self._unavailable("the connection was lost")
        if failure.check(txredisapi.ResponseError):
            message = failure.getErrorMessage()
            if message.startswith("READONLY") or "-READONLY " in message:
                # A master demoted under the link (scripts say it after their own words).
                self._follow("it answered READONLY")
            if not message.startswith(("LOADING", "READONLY", "MASTERDOWN", "NOAUTH",
                                       "BUSY", "OOM", "CLUSTERDOWN", "TRYAGAIN")):
                self.log.error("{what}: Redis refused a command: {why}", what=self.what,
                               why=message)
            raise self._unavailable(message)
        return failure

    def call(self, *args):
        """
        Send one command.

        @return: a Deferred firing with its reply (text, integers, L{None} and lists of
            them), or failing with L{StoreUnavailable}.
        """
        return self._send(args).addErrback(self._translate)

    def run(self, script, keys=(), args=()):
        """
        Run C{script} (a L{Script}) atomically: C{EVALSHA}, then C{EVAL} if the server does
        not know it yet.

        @return: a Deferred firing with the script's reply, or failing with
            L{StoreUnavailable}.
        """
        keys = list(keys)
        args = list(args)
        d = self._send(["EVALSHA", script.sha, len(keys)] + keys + args)

        def missing(failure):
            failure.trap(txredisapi.ResponseError)
            if not failure.getErrorMessage().startswith("NOSCRIPT"):
                return failure
            return self._send(["EVAL", script.source, len(keys)] + keys + args)

        return d.addErrback(missing).addErrback(self._translate)

    # -- quiet (tests, benchmarks) ----------------------------------------------------------

    @property
    def idle(self):
        """Whether no command is waiting for its answer."""
        return self._busy == 0

    def settled(self):
        """
        @return: a Deferred firing once the subscription is made (a link that has just
            started), no command is in flight, and every message
            published before that has reached the subscriber (a C{PING} on the subscriber
            connection has come back: Redis answers it after the messages queued before
            it). It never fails; with Redis away it fires after at most the link's timeout.
        """
        if self.channel is not None and self.running and not self._subscribed:
            # A link that has just started: its subscription is on the way (or Redis is
            # away, and then the wait runs out).
            d = Deferred()
            self._subscription_waiters.append(d)
            d.addTimeout(self.timeout, self.reactor).addErrback(lambda _: None)
        else:
            d = succeed(None)

        def idle(_):
            if not self._busy:
                return None
            waiter = Deferred()
            self._idle_waiters.append(waiter)
            return waiter

        d.addCallback(idle)

        def ping(_):
            subscriber = self._subscriber
            if subscriber is None or not self._subscribed:
                return None
            try:
                pong = subscriber.execute_command("PING")
            except txredisapi.ConnectionError:
                return None
            return pong.addTimeout(self.timeout, self.reactor).addErrback(lambda _: None)

        return d.addCallback(ping)
