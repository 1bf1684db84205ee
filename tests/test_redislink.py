"""
Tests for L{amalgam8.redislink}: Redis addresses and settings, and the link's commands,
scripts, timeouts and failures over an in-memory connection (no network, no real time);
the link through Sentinels (asking them, ROLE, following a failover) the same way.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.errors import StoreUnavailable
from amalgam8.redislink import (
    MAX_RETRY_DELAY,
    RedisAddress,
    RedisLink,
    Script,
    parse_address,
    parse_database,
    parse_master_name,
    parse_redis_address,
    parse_sentinels,
)


class AddressTests(SynchronousTestCase):
    """Addresses and URLs of Redis servers."""

    def test_parse(self):
        """host:port, host alone, and bracketed IPv6 addresses."""
        self.assertEqual(parse_address("redis:7000"), ("redis", 7000))
        self.assertEqual(parse_address(" redis "), ("redis", 6379))
        self.assertEqual(parse_address("[::1]:7000"), ("::1", 7000))
        self.assertEqual(parse_address("[::1]"), ("::1", 6379))

    def test_parse_bad(self):
        """Bad addresses are refused with a message."""
        for bad in ("", "h:", "h:x", "h:0", "h:70000", "::1:6379", "[::1", "[::1]x",
                    "a b:1", "user@h:1", ":6379"):
            self.assertRaises(ValueError, parse_address, bad)

    def test_setting_forms(self):
        """A setting is host:port or a redis(s):// URL; blank is none."""
        self.assertIsNone(parse_redis_address("  "))
        self.assertEqual(parse_redis_address("h:1 "), "h:1")
        self.assertEqual(parse_redis_address("redis://:pw@h:1/3"), "redis://:pw@h:1/3")
        for bad in ("http://h", "redis://", "redis://h/x", "redis://h:99999",
                    "redis://h?db=1"):
            self.assertRaises(ValueError, parse_redis_address, bad)

    def test_from_settings(self):
        """The URL's password, database and TLS, unless given apart."""
        self.assertEqual(RedisAddress.from_settings("rediss://:a%20b@h:1/2"),
                         RedisAddress("h", 1, password="a b", database=2, tls=True))
        self.assertEqual(RedisAddress.from_settings("redis://:a@h/2", password="b",
                                                    database=0),
                         RedisAddress("h", 6379, password="b"))
        self.assertEqual(RedisAddress.from_settings("h", tls=True, ca="/ca.pem"),
                         RedisAddress("h", tls=True, ca="/ca.pem"))

    def test_describe_hides_password(self):
        """Messages name the server and database, never the password."""
        text = RedisAddress("::1", 7000, password="s3cret", database=2, tls=True).describe()
        self.assertEqual(text, "rediss [::1]:7000 db 2")

    def test_endpoints(self):
        """An IP address is connected to directly (no resolver), a name through
        HostnameEndpoint; TLS wraps either."""
        reactor = MemoryReactorClock()
        self.assertIsInstance(RedisAddress("127.0.0.1").endpoint(reactor), TCP4ClientEndpoint)
        self.assertIsInstance(RedisAddress("::1").endpoint(reactor), TCP6ClientEndpoint)
        self.assertIsInstance(RedisAddress("redis").endpoint(reactor), HostnameEndpoint)
        wrapped = RedisAddress("redis", tls=True).endpoint(reactor)
        self.assertNotIsInstance(wrapped, HostnameEndpoint)
        self.assertIsInstance(wrapped._wrappedEndpoint, HostnameEndpoint)

    def test_small_parsers(self):
        """Database numbers and Sentinel lists."""
        self.assertEqual(parse_database(" 3 "), 3)
        self.assertRaises(ValueError, parse_database, "-1")
        self.assertEqual(parse_sentinels("a:1, b"), (("a", 1), ("b", 6379)))
        self.assertIsNone(parse_sentinels(""))
        self.assertRaises(ValueError, parse_sentinels, "a:1,,b")


class LinkTests(SynchronousTestCase):
    """The link over an in-memory connection on a MemoryReactorClock."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.messages = []
        self.link = RedisLink(self.reactor, RedisAddress("127.0.0.1", 7000),
                              channel="a8:test", on_message=self.messages.append)
        self.link.startService()
        self.addCleanup(self.stop)

    def stop(self):
        if self.link.running:
            self.link.stopService()

    def connect(self, index=0):
        """Complete the connection attempt C{index}; its transport."""
        factory = self.reactor.tcpClients[index][2]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.reactor.advance(0)
        return protocol, transport

    def test_commands_wait_for_the_first_connection(self):
        """A command sent before the first attempt is over waits for it."""
        d = self.link.call("PING")
        self.assertNoResult(d)
        _, transport = self.connect()
        self.assertEqual(transport.value(), b"*1\r\n$4\r\nPING\r\n")
        protocol = self.link._commands
        protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), "PONG")

    def test_fail_fast_when_down(self):
        """Once the first attempt is over without a connection, commands fail at once
        with StoreUnavailable, saying so; stopping leaves no timer behind."""
        d = self.link.call("PING")
        self.reactor.advance(self.link.timeout)
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertIn("(redis 127.0.0.1:7000 db 0) is unavailable: not connected",
                      failure.getErrorMessage())
        self.failureResultOf(self.link.call("PING"), StoreUnavailable)
        self.link.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout(self):
        """A command without an answer in time fails with StoreUnavailable and the
        connection is dropped (it reconnects)."""
        _, transport = self.connect()
        d = self.link.call("GET", "k")
        self.reactor.advance(self.link.timeout)
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertIn("no answer within 5 s", failure.getErrorMessage())
        self.assertTrue(transport.disconnecting)

    def test_script_noscript(self):
        """A script goes as EVALSHA, and again as EVAL when Redis does not know it."""
        self.connect()
        protocol = self.link._commands
        protocol.transport.clear()
        script = Script("test", "return ARGV[1]")
        d = self.link.run(script, ["k"], ["v"])
        self.assertIn(b"EVALSHA", protocol.transport.value())
        self.assertIn(script.sha.encode(), protocol.transport.value())
        protocol.transport.clear()
        protocol.dataReceived(b"-NOSCRIPT No matching script.\r\n")
        self.assertIn(b"$4\r\nEVAL\r\n", protocol.transport.value())
        self.assertIn(b"return ARGV[1]", protocol.transport.value())
        protocol.dataReceived(b"$1\r\nv\r\n")
        self.assertEqual(self.successResultOf(d), "v")

    def test_refusals_are_unavailable(self):
        """Redis refusing a command (a read-only replica, loading) is StoreUnavailable
        with Redis's words."""
        self.connect()
        protocol = self.link._commands
        d = self.link.call("SET", "k", "v")
        protocol.dataReceived(b"-READONLY You can't write against a read only replica.\r\n")
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertIn("READONLY", failure.getErrorMessage())

    def test_lost_connection(self):
        """Commands in flight when the connection is lost fail with StoreUnavailable;
        later ones fail at once."""
        self.connect()
        protocol = self.link._commands
        d = self.link.call("GET", "k")
        protocol.connectionLost(None)
        self.failureResultOf(d, StoreUnavailable)
        self.assertFalse(self.link.connected)
        self.failureResultOf(self.link.call("PING"), StoreUnavailable)

    def test_messages(self):
        """The subscriber subscribes to the channel (with the database) and hands its
        messages on; other channels are ignored."""
        self.connect(0)
        subscriber, transport = self.connect(1)
        self.assertIn(b"SUBSCRIBE", transport.value())
        self.assertIn(b"a8:test@0", transport.value())
        subscriber.dataReceived(b"*3\r\n$9\r\nsubscribe\r\n$9\r\na8:test@0\r\n:1\r\n")
        # txredisapi reads the rest of a data chunk on the next reactor turn.
        self.reactor.advance(0)
        self.assertTrue(self.link.subscribed)
        subscriber.dataReceived(b"*3\r\n$7\r\nmessage\r\n$9\r\na8:test@0\r\n$4\r\n1 ns\r\n")
        self.reactor.advance(0)
        subscriber.dataReceived(b"*3\r\n$7\r\nmessage\r\n$5\r\nother\r\n$1\r\nx\r\n")
        self.reactor.advance(0)
        self.assertEqual(self.messages, ["1 ns"])


SENTINEL_A, SENTINEL_B = 26379, 26380
MASTER, REPLICA = 7001, 7002

ADDRESS_OF = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n%d\r\n"
ROLE_MASTER = b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"
ROLE_REPLICA = b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:7001\r\n$9\r\nconnected\r\n:0\r\n"
WATCHING = b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
SUBSCRIBED = b"*3\r\n$9\r\nsubscribe\r\n$9\r\na8:test@0\r\n:1\r\n"


def announcement(text):
    """A +switch-master message carrying C{text}."""
    data = text.encode()
    return b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$%d\r\n%s\r\n" % (len(data), data)


class SentinelAddressTests(SynchronousTestCase):
    """Addresses of masters that Sentinels name, and their settings."""

    def test_describe(self):
        """Before a master is known the Sentinels are named; then the master."""
        address = RedisAddress.of_sentinels([("10.0.0.1", 26379), ("::1", 26380)], "a8",
                                            password="s3cret", database=2)
        self.assertEqual(address.describe(),
                         "redis master a8 (Sentinels 10.0.0.1:26379, [::1]:26380) db 2")
        self.assertEqual(address.at("10.0.0.7", 6379).describe(),
                         "redis 10.0.0.7:6379 db 2 (master a8)")
        self.assertRaises(ValueError, address.endpoint, MemoryReactorClock())

    def test_needs_sentinels_and_name(self):
        """An address of Sentinels has at least one and a master name."""
        self.assertRaises(ValueError, RedisAddress.of_sentinels, (), "a8")
        self.assertRaises(ValueError, RedisAddress.of_sentinels, [("s", 26379)], None)

    def test_parse_master_name(self):
        """A master name is printable and has no spaces; blank is none."""
        self.assertEqual(parse_master_name(" a8-master.1 "), "a8-master.1")
        self.assertIsNone(parse_master_name(" "))
        for bad in ("a b", "a\tb", "a\x00b"):
            self.assertRaises(ValueError, parse_master_name, bad)

    def test_sentinel_named_twice(self):
        """A Sentinel given twice is refused (a typo)."""
        self.assertRaises(ValueError, parse_sentinels, "s:26379, s:26379")


class SentinelLinkTests(SynchronousTestCase):
    """
    A link through two Sentinels over in-memory connections: the master asked of the
    Sentinels, checked with ROLE, and followed on +switch-master, READONLY and lost
    connections.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.messages = []
        self.caught_up = []
        self.address = RedisAddress.of_sentinels(
            [("127.0.0.1", SENTINEL_A), ("127.0.0.1", SENTINEL_B)], "a8master")
        self.link = RedisLink(self.reactor, self.address, channel="a8:test",
                              on_message=self.messages.append,
                              on_subscribed=lambda: self.caught_up.append(True))
        self.made = set()
        self.link.startService()
        self.addCleanup(self.stop)

    def stop(self):
        if self.link.running:
            self.link.stopService()

    def attempts(self, port, question=None):
        """
        The connection attempts made to C{port} so far, not yet completed or failed.

        @param question: C{True} for the questions to a Sentinel only (whose connection
            attempts time out after the link's sentinel_timeout), C{False} for the other
            connections only.
        """
        return [client for client in self.reactor.tcpClients
                if client[1] == port and id(client) not in self.made
                and (question is None
                     or question == (client[3] == self.link.sentinel_timeout))]

    def connect(self, port, question=None):
        """Complete the oldest open attempt to C{port}: its protocol and transport."""
        client = self.attempts(port, question)[0]
        self.made.add(id(client))
        protocol = client[2].buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.reactor.advance(0)
        return protocol, transport

    def refuse(self, port, question=True):
        """Fail the oldest open attempt to C{port} (connection refused)."""
        client = self.attempts(port, question)[0]
        self.made.add(id(client))
        client[2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.reactor.advance(0)

    def reply(self, protocol, data):
        protocol.dataReceived(data)
        self.reactor.advance(0)

    def answer(self, sentinel, port):
        """The Sentinel C{sentinel} is connected to and names C{port} as the master."""
        protocol, transport = self.connect(sentinel, question=True)
        self.assertEqual(transport.value(),
                         b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n"
                         b"$8\r\na8master\r\n")
        self.reply(protocol, ADDRESS_OF % port)
        self.assertFalse(transport.connected, "the question's connection is closed")

    def master(self, port, subscribe=True):
        """The commands (and subscriber) connections to C{port} are made and ROLE says
        master; their protocols and transports."""
        made = []
        # Reconnections wait with a random jitter: either connection may come first.
        for _ in range(2 if subscribe else 1):
            protocol, transport = self.connect(port)
            self.assertEqual(transport.value(), b"*1\r\n$4\r\nROLE\r\n")
            transport.clear()
            self.reply(protocol, ROLE_MASTER)
            made.append((protocol, transport))
        if not subscribe:
            return made[0]
        made.sort(key=lambda connection: b"SUBSCRIBE" in connection[1].value())
        commands, subscriber = made
        self.assertIn(b"a8:test@0", subscriber[1].value())
        self.reply(subscriber[0], SUBSCRIBED)
        return commands, subscriber

    def watch(self, sentinel=SENTINEL_A):
        """The watching connection to C{sentinel} is made and subscribed."""
        protocol, transport = self.connect(sentinel, question=False)
        self.assertEqual(transport.value(),
                         b"*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n")
        self.reply(protocol, WATCHING)
        return protocol, transport

    def test_master_of_the_sentinels(self):
        """The link asks the first Sentinel (one question for both connections), connects
        to the master it names and, once ROLE says master, sends the commands waiting for
        it there and subscribes."""
        waiting = self.link.call("PING")
        self.answer(SENTINEL_A, MASTER)
        (commands, transport), _ = self.master(MASTER)
        self.assertEqual(self.link.master, ("127.0.0.1", MASTER))
        self.assertIn(b"PING", transport.value())
        self.reply(commands, b"+PONG\r\n")
        self.assertEqual(self.successResultOf(waiting), "PONG")
        self.assertTrue(self.link.subscribed)
        self.assertEqual(self.link.describe(), "redis 127.0.0.1:7001 db 0 (master a8master)")
        # The other attempt to A is the watcher; nothing else asked a Sentinel.
        self.assertEqual(len(self.attempts(SENTINEL_A, question=False)), 1)
        self.assertEqual(self.attempts(SENTINEL_A, question=True), [])
        self.assertEqual(self.attempts(SENTINEL_B), [])

    def test_next_sentinel(self):
        """A Sentinel that refuses the connection, or does not know the master, is passed
        over for the next; the one that answered is asked first the next time."""
        self.refuse(SENTINEL_A)
        self.answer(SENTINEL_B, MASTER)
        (commands, _), (subscriber, _) = self.master(MASTER)
        self.assertEqual(self.link._sentinels,
                         [("127.0.0.1", SENTINEL_B), ("127.0.0.1", SENTINEL_A)])
        commands.connectionLost(Failure(ConnectionRefusedError()))
        subscriber.connectionLost(Failure(ConnectionRefusedError()))
        self.reactor.advance(MAX_RETRY_DELAY + 1)
        self.assertEqual(len(self.attempts(SENTINEL_B, question=True)), 1)
        protocol, _ = self.connect(SENTINEL_B, question=True)
        self.reply(protocol, b"*-1\r\n")            # B forgot it: A is asked
        self.answer(SENTINEL_A, MASTER)
        self.assertEqual(len(self.attempts(MASTER)), 2)

    def test_sentinel_timeout(self):
        """A Sentinel that does not answer within sentinel_timeout is left (its
        connection closed) for the next."""
        _, silent = self.connect(SENTINEL_A, question=True)
        self.reactor.advance(self.link.sentinel_timeout)
        self.assertFalse(silent.connected)
        self.answer(SENTINEL_B, MASTER)
        self.master(MASTER)
        self.assertTrue(self.link.connected)

    def test_no_sentinel_names_it(self):
        """When no Sentinel names the master, commands fail at once with StoreUnavailable
        saying what each answered (warned once); the link keeps asking."""
        with capturedLogs() as events:
            protocol, _ = self.connect(SENTINEL_A, question=True)
            self.reply(protocol, b"*-1\r\n")
            self.refuse(SENTINEL_B)
            failure = self.failureResultOf(self.link.call("PING"), StoreUnavailable)
            self.reactor.advance(MAX_RETRY_DELAY + 1)
            protocol, _ = self.connect(SENTINEL_A, question=True)
            self.reply(protocol, b"*-1\r\n")
            self.refuse(SENTINEL_B)
        self.assertIn("the store (redis master a8master (Sentinels 127.0.0.1:26379, "
                      "127.0.0.1:26380) db 0) is unavailable: not connected: no Sentinel "
                      "named the master a8master (127.0.0.1:26379: does not know it; "
                      "127.0.0.1:26380: ", failure.getErrorMessage())
        warnings = [e for e in events if "no Sentinel named" in e.get("why", "")]
        self.assertEqual(len(warnings), 1)

    def test_not_a_master(self):
        """A server the Sentinels named that ROLE says is a replica is not used: its
        connection is closed, commands waiting fail, and the Sentinels are asked again."""
        waiting = self.link.call("PING")
        self.answer(SENTINEL_A, MASTER)
        for _ in range(2):                          # the commands, then the subscriber
            protocol, transport = self.connect(MASTER)
            self.reply(protocol, ROLE_REPLICA)
            self.assertFalse(transport.connected)
        self.assertFalse(self.link.connected)
        self.assertFalse(self.link.subscribed)
        self.assertIn("127.0.0.1:7001 is not a master",
                      self.failureResultOf(waiting, StoreUnavailable).getErrorMessage())
        self.reactor.advance(MAX_RETRY_DELAY + 1)
        self.answer(SENTINEL_A, REPLICA)
        self.master(REPLICA)
        self.assertEqual(self.link.master, ("127.0.0.1", REPLICA))

    def test_switch_master(self):
        """+switch-master for the link's master: both connections leave the old master
        at once (no backoff), the Sentinels are asked again, and the new master gets
        the commands and the subscription, after which the store catches up."""
        self.answer(SENTINEL_A, MASTER)
        (_, old_commands), (_, old_subscriber) = self.master(MASTER)
        watcher, _ = self.watch()
        self.assertEqual(len(self.caught_up), 1)
        self.reply(watcher, announcement("a8master 127.0.0.1 7001 127.0.0.1 7002"))
        self.assertFalse(old_commands.connected)
        self.assertFalse(old_subscriber.connected)
        self.assertFalse(self.link.connected)
        self.answer(SENTINEL_A, REPLICA)
        (commands, transport), _ = self.master(REPLICA)
        self.assertEqual(self.link.master, ("127.0.0.1", REPLICA))
        self.assertTrue(self.link.subscribed)
        self.assertEqual(len(self.caught_up), 2)
        d = self.link.call("GET", "k")
        self.assertIn(b"GET", transport.value())
        self.reply(commands, b"$1\r\nv\r\n")
        self.assertEqual(self.successResultOf(d), "v")

    def test_switch_of_others_ignored(self):
        """Announcements of another master, malformed ones, or of the master the link is
        on already leave the connections alone."""
        self.answer(SENTINEL_A, MASTER)
        (_, commands), (_, subscriber) = self.master(MASTER)
        watcher, _ = self.watch()
        with capturedLogs() as events:
            for text in ("other 127.0.0.1 7001 127.0.0.1 7002", "a8master 127.0.0.1",
                         "a8master 127.0.0.1 7001 127.0.0.1 port",
                         "a8master 127.0.0.1 7002 127.0.0.1 7001"):
                self.reply(watcher, announcement(text))
        self.assertTrue(commands.connected and subscriber.connected)
        self.assertEqual(self.attempts(SENTINEL_A, question=True), [])
        self.assertEqual(len([e for e in events if "names no address" in
                              e.get("log_format", "")]), 1)

    def test_readonly_follows(self):
        """A READONLY answer (a master demoted under the link) fails that command with
        StoreUnavailable and sends the link back to the Sentinels at once."""
        self.answer(SENTINEL_A, MASTER)
        (commands, transport), _ = self.master(MASTER)
        d = self.link.run(Script("w", "return redis.call('SET', KEYS[1], 'v')"), ["k"])
        self.reply(commands, b"-READONLY You can't write against a read only replica. "
                             b"script: 1, on @user_script:1.\r\n")
        self.assertIn("READONLY", self.failureResultOf(d, StoreUnavailable)
                      .getErrorMessage())
        self.assertFalse(transport.connected)
        self.answer(SENTINEL_A, REPLICA)
        self.master(REPLICA)
        self.assertEqual(self.link.master, ("127.0.0.1", REPLICA))

    def test_lost_connection_asks_again(self):
        """A lost command connection is made again to the master the Sentinels name
        then."""
        self.answer(SENTINEL_A, MASTER)
        (commands, _), _ = self.master(MASTER)
        commands.connectionLost(Failure(ConnectionRefusedError()))
        self.failureResultOf(self.link.call("PING"), StoreUnavailable)
        self.reactor.advance(MAX_RETRY_DELAY + 1)
        self.answer(SENTINEL_A, REPLICA)
        self.master(REPLICA, subscribe=False)
        self.assertEqual(self.link.master, ("127.0.0.1", REPLICA))

    def test_watch_again_checks_master(self):
        """When the watching connection is made again, the link asks whether the master
        changed meanwhile (an announcement it could not hear) and follows it."""
        self.answer(SENTINEL_A, MASTER)
        self.master(MASTER)
        watcher, _ = self.watch()
        watcher.connectionLost(Failure(ConnectionRefusedError()))
        self.reactor.advance(MAX_RETRY_DELAY + 1)
        self.watch(SENTINEL_A)
        self.answer(SENTINEL_A, REPLICA)            # the question after watching again
        self.answer(SENTINEL_A, REPLICA)            # the connections' question
        self.master(REPLICA)
        self.assertEqual(self.link.master, ("127.0.0.1", REPLICA))

    def test_stop_while_asking(self):
        """Stopping while a Sentinel is being asked closes that connection and leaves no
        timer behind."""
        _, transport = self.connect(SENTINEL_A, question=True)
        self.link.stopService()
        self.assertFalse(transport.connected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
