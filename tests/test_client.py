"""
Tests for L{amalgam8.client}: the production HTTP client (L{amalgam8.client.http_client})
and the controller client's paged trace reads.
"""

from treq.testing import StubTreq
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface.verify import verifyObject

from amalgam8.auth import Authenticator
from amalgam8.client import ControllerClient, DirectEndpoints, http_client
from amalgam8.controller.api import ControllerAPI
from amalgam8.controller.store import MemoryStore


class DirectEndpointsTests(SynchronousTestCase):
    """IP addresses are connected to directly; names through a HostnameEndpoint."""

    def setUp(self):
        self.endpoints = DirectEndpoints(MemoryReactorClock())

    def endpoint(self, url):
        return self.endpoints.endpointForURI(URI.fromBytes(url))

    def test_interface(self):
        """It is an IAgentEndpointFactory."""
        self.assertTrue(verifyObject(IAgentEndpointFactory, self.endpoints))

    def test_addresses_and_names(self):
        """IPv4 and IPv6 addresses get TCP endpoints, names a HostnameEndpoint."""
        v4 = self.endpoint(b"http://127.0.0.1:8080/x")
        self.assertIsInstance(v4, TCP4ClientEndpoint)
        self.assertEqual((v4._host, v4._port), ("127.0.0.1", 8080))
        v6 = self.endpoint(b"http://[::1]:8080/x")
        self.assertIsInstance(v6, TCP6ClientEndpoint)
        self.assertEqual((v6._host, v6._port), ("::1", 8080))
        self.assertIsInstance(self.endpoint(b"http://registry:8080/"), HostnameEndpoint)

    def test_https_wrapped_in_tls(self):
        """An https URL gets TLS around the connection."""
        endpoint = self.endpoint(b"https://127.0.0.1:8443/")
        self.assertIsInstance(endpoint._wrappedEndpoint, TCP4ClientEndpoint)


class HttpClientTests(SynchronousTestCase):

    def test_refused_at_once(self):
        """
        A refused connection to an IP address fails the request at once, not at the next
        0.3 s attempt tick of a HostnameEndpoint (a restarting nginx is polled this way).
        """
        reactor = MemoryReactorClock()
        d = http_client(reactor, persistent=False).get("http://127.0.0.1:9/")
        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 9))
        factory.clientConnectionFailed(reactor.connectors[0],
                                       Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)


class ControllerTracesPageTests(SynchronousTestCase):
    """ControllerClient.traces_page reads one page of GET /v1/traces; traces every page."""

    def setUp(self):
        clock = Clock()
        store = MemoryStore()
        api = ControllerAPI(store, Authenticator(("default",), clock), clock)
        self.client = ControllerClient(StubTreq(api.resource()), "http://c.test",
                                       reactor=clock)
        self.records = [{"n": n, "k": "a" if n % 2 else "b"} for n in range(7)]
        self.successResultOf(self.client.post_traces(self.records))

    def test_pages(self):
        """A page holds at most limit records after the sequence after, and says next."""
        page, following = self.successResultOf(self.client.traces_page(0, limit=3))
        self.assertEqual((page, following), (self.records[:3], 3))
        page, following = self.successResultOf(self.client.traces_page(3, limit=3))
        self.assertEqual((page, following), (self.records[3:6], 6))
        page, following = self.successResultOf(self.client.traces_page(6, limit=3))
        self.assertEqual((page, following), (self.records[6:], None))

    def test_filters(self):
        """The filters are passed on; traces follows every page of them."""
        page, following = self.successResultOf(
            self.client.traces_page(0, log_key="k", log_value="a"))
        self.assertEqual((page, following), (self.records[1::2], None))
        self.assertEqual(self.successResultOf(self.client.traces(log_key="k", log_value="b")),
                         self.records[0::2])
