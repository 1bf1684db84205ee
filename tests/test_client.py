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
from twisted.web.resource import Resource
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


class _Unavailable(Resource):
    """A replica whose store is down: 503 to everything."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(503)
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"error": "store_unavailable", "description": "the store is down"}'


class _Replicas:
    """
    An HTTP client in front of several replicas, by host: C{"up"} hosts are answered by a
    StubTreq of one shared controller; others fail as their C{behaviour} says.
    """

    def __init__(self, behaviour, stub, unavailable=None):
        self.behaviour = behaviour
        self.stub = stub
        self.unavailable = unavailable
        self.sent = []

    def request(self, method, url, **kwargs):
        from twisted.internet.defer import fail
        from twisted.web._newclient import ResponseNeverReceived
        host = url.split("/")[2]
        self.sent.append((method, host))
        how = self.behaviour[host]
        if how == "refused":
            return fail(ConnectionRefusedError())
        if how == "lost":
            return fail(ResponseNeverReceived([Failure(ConnectionRefusedError())]))
        if how == "unavailable":
            return self.unavailable.request(method, url, **kwargs)
        return self.stub.request(method, url, **kwargs)


class ReplicaFailoverTests(SynchronousTestCase):
    """
    A client whose url names several replicas fails over between them (issue 13): on a
    refused connection always, on a lost request only where sending it again is safe, and
    on a 503; it keeps using the replica that answered.
    """

    def client(self, **behaviour):
        clock = Clock()
        store = MemoryStore()
        api = ControllerAPI(store, Authenticator(("default",), clock), clock)
        self.http = _Replicas(behaviour, StubTreq(api.resource()), StubTreq(_Unavailable()))
        urls = ",".join("http://{}".format(host) for host in behaviour)
        return ControllerClient(self.http, urls, reactor=clock)

    def hosts(self):
        return [host for _, host in self.http.sent]

    def test_split_urls(self):
        from amalgam8.client import split_urls
        self.assertEqual(split_urls(" http://a:1/, http://b:2 ,,"), ["http://a:1", "http://b:2"])
        self.assertEqual(split_urls("http://a"), ["http://a"])
        self.assertEqual(split_urls(""), [])

    def test_refused_fails_over_and_sticks(self):
        """A refused replica is skipped, even for a POST; the next call starts at the one
        that answered."""
        client = self.client(**{"a.test": "refused", "b.test": "up"})
        revision, ids = self.successResultOf(client.create_rules([
            {"id": "r1", "destination": "reviews", "route": {"backends": [{"tags": ["v1"]}]}}]))
        self.assertEqual(ids, ["r1"])
        self.assertEqual(self.hosts(), ["a.test", "b.test"])
        self.successResultOf(client.rules())
        self.assertEqual(self.hosts(), ["a.test", "b.test", "b.test"])

    def test_lost_post_not_sent_again(self):
        """A POST that may have reached a replica is not sent to another: it fails."""
        from amalgam8.client import Unreachable
        client = self.client(**{"a.test": "lost", "b.test": "up"})
        self.failureResultOf(client.create_rules([
            {"id": "r1", "destination": "reviews", "route": {"backends": [{"tags": ["v1"]}]}}]),
            Unreachable)
        self.assertEqual(self.hosts(), ["a.test"])

    def test_lost_read_fails_over(self):
        """A read (or a PUT, DELETE, registration) lost at one replica goes to the next."""
        client = self.client(**{"a.test": "lost", "b.test": "up"})
        revision, rules = self.successResultOf(client.rules())
        self.assertEqual(rules, [])
        self.assertEqual(self.hosts(), ["a.test", "b.test"])

    def test_unavailable_fails_over(self):
        """A 503 (the replica's store is down: nothing changed) goes to the next replica."""
        client = self.client(**{"a.test": "unavailable", "b.test": "up"})
        self.successResultOf(client.create_rules([
            {"id": "r1", "destination": "reviews", "route": {"backends": [{"tags": ["v1"]}]}}]))
        self.assertEqual(self.hosts(), ["a.test", "b.test"])

    def test_other_errors_answer(self):
        """A 4xx is the server's answer: no failover."""
        from amalgam8.client import APIError
        client = self.client(**{"a.test": "up", "b.test": "up"})
        failure = self.failureResultOf(client.rules_of_destination("nonsense", "x"), APIError)
        self.assertEqual(failure.value.status, 404)
        self.assertEqual(self.hosts(), ["a.test"])

    def test_all_fail(self):
        """When every replica fails, the last error is raised."""
        from amalgam8.client import APIError, Unreachable
        client = self.client(**{"a.test": "refused", "b.test": "unavailable"})
        failure = self.failureResultOf(client.rules(), APIError)
        self.assertEqual(failure.value.status, 503)
        client = self.client(**{"a.test": "unavailable", "b.test": "refused"})
        self.failureResultOf(client.rules(), Unreachable)
        self.assertEqual(self.hosts(), ["a.test", "b.test"])

    def test_registration_sent_again(self):
        """A registration replaces the instance with the same id: it may go to the next."""
        from amalgam8.client import RegistryClient
        http = _Replicas({"a.test": "lost", "b.test": "refused"}, None)
        client = RegistryClient(http, "http://a.test,http://b.test", reactor=Clock())
        self.failureResultOf(client.register({"service_name": "x"}))
        self.assertEqual([h for _, h in http.sent], ["a.test", "b.test"])
