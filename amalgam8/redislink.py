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
"""

import hashlib
import ipaddress

import attrs
import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import (
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
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from amalgam8.errors import StoreUnavailable

__all__ = [
    "MAX_RETRY_DELAY",
    "RedisAddress",
    "RedisLink",
    "Script",
    "parse_address",
    "parse_ca_file",
    "parse_database",
    "parse_prefix",
    "parse_redis_address",
    "parse_sentinels",
]

#: The longest wait between two connection attempts (seconds).
MAX_RETRY_DELAY = 2.0
#: How long a command may wait for its answer (seconds) before the link gives up on it.
COMMAND_TIMEOUT = 5.0
DEFAULT_PORT = 6379


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
    """A comma-separated list of C{host:port} of Sentinels; blank is none."""
    value = str(text).strip()
    if not value:
        return None
    found = []
    for item in value.split(","):
        found.append(parse_address(item))
    return tuple(found)


@attrs.frozen
class RedisAddress:
    """
    Where a Redis server is and how to speak to it.

    @ivar database: the database number (C{SELECT}).
    @ivar tls: whether to speak TLS; C{ca} is then the PEM file of the authority to trust
        (L{None}: the platform's).
    """

    host: str
    port: int = DEFAULT_PORT
    password: str = None
    database: int = 0
    tls: bool = False
    ca: str = None

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
        """C{redis 10.0.0.5:6379 db 2} (never the password), for messages."""
        host = "[{}]".format(self.host) if ":" in self.host else self.host
        return "redis{} {}:{} db {}".format("s" if self.tls else "", host, self.port,
                                           self.database)

    def endpoint(self, reactor):
        """The client endpoint of the server (TLS-wrapped when asked)."""
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            ip = None
        if ip is None:
            endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=5)
        elif ip.version == 4:
            endpoint = TCP4ClientEndpoint(reactor, self.host, self.port, timeout=5)
        else:
            endpoint = TCP6ClientEndpoint(reactor, self.host, self.port, timeout=5)
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


class _Commands(txredisapi.RedisProtocol):
    """txredisapi's protocol, on the link's reactor."""


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.link._message(channel, message)


class _Factory(Factory):
    """Builds one kind of connection of a link; reports when each is ready or lost."""

    noisy = False
    isLazy = False

    def __init__(self, link, protocol, database):
        self.link = link
        self.protocol = protocol
        self.database = database

    def buildProtocol(self, addr):
        address = self.link.address
        p = self.protocol(charset="utf-8", password=address.password,
                          dbid=self.database or None, convertNumbers=False)
        p.factory = self
        p.callLater = self.link.reactor.callLater
        p.whenConnected().addCallback(self.link._ready)
        return p

    # What txredisapi's protocol calls when AUTH or SELECT fails: the connection is closed
    # and the link tries again later (the operator may be fixing the server).
    def stopTrying(self):
        pass

    def connectionError(self, why):
        self.link.log.error("cannot use {what} at {address}: {why}",
                            what=self.link.what, address=self.link.address.describe(),
                            why=why)


class RedisLink(Service):
    """
    A store's connections to one Redis server.

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
                 timeout=COMMAND_TIMEOUT, what="the store"):
        self.reactor = reactor
        self.address = address
        self.channel = None if channel is None else "{}@{}".format(channel, address.database)
        self.on_message = on_message or (lambda text: None)
        self.on_subscribed = on_subscribed or (lambda: None)
        self.timeout = timeout
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

    # -- IService ---------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        policy = backoffPolicy(initialDelay=0.05, maxDelay=MAX_RETRY_DELAY, factor=2.0)
        endpoint = self.address.endpoint(self.reactor)
        kinds = [(_Commands, self.address.database)]
        if self.channel is not None:
            kinds.append((_Subscriber, None))
        self._services = []
        for protocol, database in kinds:
            service = ClientService(endpoint, _Factory(self, protocol, database),
                                    retryPolicy=policy, clock=self.reactor)
            service.startService()
            self._services.append(service)
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
        self._commands = self._subscriber = None
        self._subscribed = False
        return gatherResults([s.stopService() for s in services], consumeErrors=True)

    # -- connections ------------------------------------------------------------------------

    @property
    def connected(self):
        """Whether commands can be sent now."""
        return self._commands is not None

    @property
    def subscribed(self):
        """Whether the change channel is listened to now."""
        return self._subscribed

    def _ready(self, protocol):
        if not self.running:
            protocol.transport.loseConnection()
            return
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
                          address=self.address.describe())
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
                              what=self.what, address=self.address.describe())
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

    # -- commands ---------------------------------------------------------------------------

    def _unavailable(self, why):
        return StoreUnavailable("{} ({}) is unavailable: {}".format(
            self.what, self.address.describe(), why))

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
