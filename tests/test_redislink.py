"""
Tests for L{amalgam8.redislink}: Redis addresses and settings, and the link's commands,
scripts, timeouts and failures over an in-memory connection (no network, no real time).
"""

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.errors import StoreUnavailable
from amalgam8.redislink import (
    RedisAddress,
    RedisLink,
    Script,
    parse_address,
    parse_database,
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
