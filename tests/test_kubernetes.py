"""
Tests for L{amalgam8.adapters.kubernetes} through the fake API server of
L{amalgam8.testing.kubernetes} (over C{StubTreq} and a C{Clock}; TLS on a loopback port with
the real reactor), and of the fake against payloads recorded from the Kubernetes API
reference (tests/kubernetes_payloads/).
"""

import json
import os

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from amalgam8.adapters import ICatalog
from amalgam8.adapters.config import ADAPTER_SETTINGS, build_catalogs
from amalgam8.adapters.kubernetes import (Backoff, KubernetesCatalog, endpoint_type,
                                          from_settings, version_tag)
from amalgam8.adapters.merge import CatalogMerge
from amalgam8.registry.api import RegistryAPI
from amalgam8.settings import SettingError
from amalgam8.testing.catalogs import catalog_tests
from amalgam8.testing.kubernetes import (FakeKubernetes, TestCA, endpoint_slice, endpoints,
                                         pod)
from tests.test_registry_api import RegistryTestCase

PAYLOADS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kubernetes_payloads")
URL = "https://k8s.test:6443"


def payload(name):
    with open(os.path.join(PAYLOADS, name), "rb") as f:
        return f.read()


class Harness:
    """A catalog over the fake through StubTreq, its delays on a Clock."""

    def __init__(self, slices=False, token=None, random=lambda: 0.5, **kwargs):
        self.fake = FakeKubernetes(slices=slices, token=token)
        self.http = StubTreq(self.fake.resource())
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.catalog = KubernetesCatalog(URL, self.http, self.clock, namespace="default",
                                         serves="tenant", backoff=Backoff(random=random),
                                         **kwargs)
        self.seen = []          # the instance values listed at each change
        self.catalog.subscribe(lambda ns: self.seen.append(self.values()))

    def values(self):
        return sorted((i.service_name, i.registration.endpoint_value, i.status)
                      for i in self.catalog.instances("tenant"))

    def pump(self, rounds=8):
        for _ in range(rounds):
            self.http.flush()

    def start(self):
        self.catalog.startService()
        self.pump()

    def stop(self):
        self.catalog.stopService()
        self.pump()

    def wait(self, seconds):
        """Let C{seconds} pass on the clock (a backoff) and pump."""
        self.clock.advance(seconds)
        self.pump()

    def lists(self):
        return [uri for _, uri in self.fake.requests
                if uri.endswith("/endpoints") or uri.endswith("/endpointslices")]

    def watches(self):
        return [uri for _, uri in self.fake.requests if "watch=1" in uri]


class KubernetesFixture:
    """The ICatalog contract's fixture: Endpoints (and pods with a version label)."""

    namespace = "tenant"
    added_tags = ("kubernetes",)
    slices = False

    def __init__(self, case):
        self.harness = Harness(slices=self.slices)
        self.catalog = self.harness.catalog
        self.fake = self.harness.fake
        self._entries = {}      # service -> {(host, port): tags}

    async def start(self):
        self.harness.start()

    async def stop(self):
        self.harness.stop()

    def _publish(self, service):
        entries = self._entries.get(service, {})
        pods = []
        for (host, port), tags in sorted(entries.items()):
            name = "{}-{}".format(service, host.replace(".", "-"))
            if self.fake.get("pods", "default", name) is None:
                self.fake.put("pods", pod(name, {"version": tags[0]} if tags else {}))
            pods.append((host, name, port))
        if self.slices:
            obj = endpoint_slice(service + "-abcde", service, [
                (host, name, True) for host, name, _ in pods],
                ports=[("http", port, "TCP") for port in sorted({p for *_, p in pods})])
            kind = "endpointslices"
        else:
            obj = endpoints(service, [(host, name) for host, name, _ in pods], ports=[
                ("http", port, "TCP") for port in sorted({p for *_, p in pods})])
            kind = "endpoints"
        if entries:
            self.fake.put(kind, obj)
        else:
            self.fake.delete(kind, "default", obj["metadata"]["name"])

    async def add(self, service, host, port, tags=()):
        self._entries.setdefault(service, {})[(host, port)] = tuple(tags)
        self._publish(service)

    async def remove(self, service, host, port):
        del self._entries[service][(host, port)]
        self._publish(service)

    async def eventually(self, condition):
        for _ in range(20):
            if condition():
                return
            self.harness.pump(1)
        raise AssertionError("the catalog did not follow the fake API server")


class EndpointsContractTests(catalog_tests(KubernetesFixture)):
    """The ICatalog contract, mirroring Endpoints."""


class SlicesFixture(KubernetesFixture):
    slices = True


class EndpointSlicesContractTests(catalog_tests(SlicesFixture)):
    """The ICatalog contract, mirroring EndpointSlices."""


class WatchTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.fake = self.h.fake
        self.addCleanup(self.h.stop)

    def put_reviews(self, *ips, not_ready=()):
        self.fake.put("endpoints", endpoints(
            "reviews", [(ip, None) for ip in ips], [(ip, None) for ip in not_ready]))

    def test_list_then_watch(self):
        """Discovery (404: Endpoints), a list, the pods, then a watch from the list's RV."""
        self.put_reviews("10.0.0.1")
        version = self.fake.resource_version
        self.h.start()
        self.assertEqual([uri for _, uri in self.fake.requests], [
            "/apis/discovery.k8s.io/v1",
            "/api/v1/namespaces/default/endpoints",
            "/api/v1/namespaces/default/pods",
            "/api/v1/namespaces/default/endpoints?watch=1&allowWatchBookmarks=true"
            "&resourceVersion=" + version])
        self.assertEqual(self.h.values(), [("reviews", "10.0.0.1:9080", "UP")])
        self.assertEqual(self.fake.watching(), 1)
        self.put_reviews("10.0.0.1", "10.0.0.2")
        self.h.pump()
        self.assertEqual(len(self.h.values()), 2)
        self.assertEqual(self.h.catalog.resource_version, self.fake.resource_version)

    def test_slices_discovered(self):
        h = Harness(slices=True)
        h.fake.put("endpointslices", endpoint_slice("reviews-x1", "reviews", [
            ("10.0.0.1", None, True), ("10.0.0.2", None, False)]))
        h.start()
        self.addCleanup(h.stop)
        self.assertTrue(h.catalog.slices)
        self.assertTrue(h.watches()[0].startswith(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=1"))
        self.assertEqual(h.values(), [("reviews", "10.0.0.1:9080", "UP"),
                                      ("reviews", "10.0.0.2:9080", "STARTING")])

    def test_not_ready_starting(self):
        self.put_reviews("10.0.0.1", not_ready=("10.0.0.2",))
        self.h.start()
        self.assertEqual(self.h.values(), [("reviews", "10.0.0.1:9080", "UP"),
                                           ("reviews", "10.0.0.2:9080", "STARTING")])
        self.put_reviews("10.0.0.1", "10.0.0.2")
        self.h.pump()
        self.assertEqual(self.h.values(), [("reviews", "10.0.0.1:9080", "UP"),
                                           ("reviews", "10.0.0.2:9080", "UP")])

    def test_ports_and_types(self):
        """Each port of an address is an instance, its type from the port's name."""
        self.fake.put("endpoints", endpoints("web", [("10.0.0.1", None)], ports=[
            ("http", 80, "TCP"), ("https", 443, "TCP"), ("metrics", 9090, "TCP")]))
        self.h.start()
        self.assertEqual(sorted((i.registration.endpoint_value, i.registration.endpoint_type)
                                for i in self.h.catalog.instances("tenant")), [
            ("10.0.0.1:443", "https"), ("10.0.0.1:80", "http"), ("10.0.0.1:9090", "tcp")])

    def test_bookmark_moves_version(self):
        """A BOOKMARK moves the resourceVersion the next watch starts from; no relist."""
        self.put_reviews("10.0.0.1")
        self.h.start()
        self.fake.put("pods", pod("unrelated"))       # moves the RV, no endpoints event
        self.fake.bookmark()
        self.h.pump()
        self.assertEqual(self.h.catalog.resource_version, self.fake.resource_version)
        self.fake.drop_watches()
        self.h.pump()
        self.assertTrue(self.h.watches()[-1].endswith(
            "resourceVersion=" + self.fake.resource_version))
        self.assertEqual(len(self.h.lists()), 1)
        self.assertEqual(self.fake.watching(), 1)

    def test_error_410_relists(self):
        """An ERROR event with a Status 410 relists; the surviving instance never leaves."""
        self.put_reviews("10.0.0.1", "10.0.0.2")
        self.h.start()
        self.fake.expire_watches()
        self.put_reviews("10.0.0.2", "10.0.0.3")
        self.fake.compact()
        self.h.pump()
        self.assertEqual(len(self.h.lists()), 2)
        self.assertEqual(self.h.values(), [("reviews", "10.0.0.2:9080", "UP"),
                                           ("reviews", "10.0.0.3:9080", "UP")])
        self.assertTrue(self.h.seen)
        for listed in self.h.seen:
            self.assertIn(("reviews", "10.0.0.2:9080", "UP"), listed)
        self.assertEqual(self.fake.watching(), 1)

    def test_http_410_relists(self):
        """A watch answered 410 Gone (a Status body) relists."""
        self.fake.gone_as_http = True
        self.put_reviews("10.0.0.1")
        self.h.start()
        self.fake.compact()
        self.fake.drop_watches()
        self.put_reviews("10.0.0.1", "10.0.0.4")
        self.fake.compact()
        self.h.pump()
        self.assertEqual(len(self.h.lists()), 2)
        self.assertEqual(len(self.h.values()), 2)
        for listed in self.h.seen:
            self.assertIn(("reviews", "10.0.0.1:9080", "UP"), listed)

    def test_resync_no_change_is_quiet(self):
        """A relist that finds what the mirror has changes nothing (no generation)."""
        self.put_reviews("10.0.0.1")
        self.h.start()
        generation = self.h.catalog.generation("tenant")
        self.fake.expire_watches()
        self.h.pump()
        self.assertEqual(len(self.h.lists()), 2)
        self.assertEqual(self.h.catalog.generation("tenant"), generation)

    def test_stop_closes_the_watch(self):
        self.h.start()
        self.assertEqual(self.fake.watching(), 1)
        self.h.stop()
        self.assertEqual(self.fake.watching(), 0)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])


class BackoffTests(SynchronousTestCase):
    def test_schedule(self):
        """Delays double from 0.5 s up to 30 s, with the second half jittered."""
        randoms = iter([0.0, 1.0, 0.5, 0.25] + [0.0] * 10)
        backoff = Backoff(random=lambda: next(randoms))
        self.assertEqual([backoff.next() for _ in range(9)],
                         [0.25, 1.0, 1.5, 2.5, 4.0, 8.0, 15.0, 15.0, 15.0])
        backoff.reset()
        self.assertEqual(backoff.next(), 0.25)

    def test_reconnects_on_the_clock(self):
        """A server that keeps failing is retried after each delay of the schedule."""
        h = Harness(token="secret", random=lambda: 1.0)   # the catalog has no token
        h.start()
        self.addCleanup(h.stop)
        delays = []
        for _ in range(5):
            [call] = h.clock.getDelayedCalls()
            delays.append(call.getTime() - h.clock.seconds())
            h.wait(delays[-1])
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0])
        self.assertEqual(len(h.fake.requests), 6)
        h.fake.token = None
        [call] = h.clock.getDelayedCalls()
        h.wait(call.getTime() - h.clock.seconds())
        self.assertEqual(h.catalog.backoff.failures, 0)
        self.assertEqual(h.fake.watching(), 1)

    def test_broken_watch_backs_off(self):
        """A watch that ends with a malformed line reconnects after a delay, mirror kept."""
        h = Harness()
        h.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", None)]))
        h.start()
        self.addCleanup(h.stop)
        h.fake.send_raw(b"{not json")
        h.pump()
        self.assertEqual(h.values(), [("reviews", "10.0.0.1:9080", "UP")])
        self.assertEqual(h.fake.watching(), 0)
        [call] = h.clock.getDelayedCalls()
        h.wait(call.getTime() - h.clock.seconds())
        self.assertEqual(h.fake.watching(), 1)
        self.assertEqual(len(h.watches()), 2)


class VersionTests(SynchronousTestCase):
    def test_label(self):
        self.assertEqual(version_tag(pod("p", {"version": "v3"}, ("ReplicaSet", "x-v1-abc12")),
                                     "x"), "v3")

    def test_deployment(self):
        """ReplicaSet C{reviews-v2-5d8f9c} of Deployment C{reviews-v2} -> v2."""
        p = pod("reviews-v2-5d8f9c-xk4pl", {"pod-template-hash": "5d8f9c"},
                ("ReplicaSet", "reviews-v2-5d8f9c"))
        self.assertEqual(version_tag(p, "reviews"), "v2")
        p = pod("reviews-v2-5d8f9c-xk4pl", {}, ("ReplicaSet", "reviews-v2-5d8f9c"))
        self.assertEqual(version_tag(p, "reviews"), "v2")
        p = pod("details-canary-7c9d8", {}, ("ReplicaSet", "details-canary-7c9d8"))
        self.assertEqual(version_tag(p, "details"), "canary")

    def test_other_controllers(self):
        self.assertEqual(version_tag(pod("db-v1-0", {}, ("StatefulSet", "db-v1")), "db"),
                         "v1")
        self.assertEqual(version_tag(pod("x", {}, ("ReplicationController", "mongo-v4")),
                                     "store"), "v4")

    def test_none(self):
        self.assertIsNone(version_tag(pod("reviews"), "reviews"))
        self.assertIsNone(version_tag(pod("r-1", {"pod-template-hash": "5d8f9c"},
                                          ("ReplicaSet", "reviews-5d8f9c")), "reviews"))
        self.assertIsNone(version_tag(pod("x", {}, ("StatefulSet", "my-store")), "other"))

    def test_through_the_catalog(self):
        """The pods are read (listed, then fetched by name) for the tag; no pod: no tag."""
        h = Harness()
        h.fake.put("pods", pod("reviews-v2-5d8f9c-xk4pl", {"pod-template-hash": "5d8f9c"},
                               ("ReplicaSet", "reviews-v2-5d8f9c")))
        h.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", "reviews-v2-5d8f9c-xk4pl")]))
        h.start()
        self.addCleanup(h.stop)
        h.fake.put("pods", pod("reviews-v3-1", {"version": "v3"}))
        h.fake.put("endpoints", endpoints("reviews", [
            ("10.0.0.1", "reviews-v2-5d8f9c-xk4pl"), ("10.0.0.2", "reviews-v3-1"),
            ("10.0.0.3", "gone")]))
        h.pump()
        tags = {i.registration.endpoint_value: i.tags for i in h.catalog.instances("tenant")}
        self.assertEqual(tags, {"10.0.0.1:9080": ("v2", "kubernetes"),
                                "10.0.0.2:9080": ("v3", "kubernetes"),
                                "10.0.0.3:9080": ("kubernetes",)})
        self.assertIn(("GET", "/api/v1/namespaces/default/pods/reviews-v3-1"), h.fake.requests)
        self.assertNotIn(("GET", "/api/v1/namespaces/default/pods/reviews-v2-5d8f9c-xk4pl"),
                         h.fake.requests)


class TypeTests(SynchronousTestCase):
    def test_types(self):
        for port, expected in (
                ({"name": "http"}, "http"), ({"name": "http-web"}, "http"),
                ({"name": "HTTP2"}, "http"), ({"name": "https"}, "https"),
                ({"name": "https-admin"}, "https"), ({"name": "grpc"}, "tcp"),
                ({}, "tcp"), ({"name": "db", "protocol": "UDP"}, "tcp"),
                ({"name": "web", "appProtocol": "https"}, "https"),
                ({"name": "http", "appProtocol": "kubernetes.io/h2c"}, "http")):
            self.assertEqual(endpoint_type(port), expected, port)


class TokenTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.write("one", 1_000_000_000)

    def write(self, token, mtime_ns):
        with open(self.path, "w") as f:
            f.write(token + "\n")
        os.utime(self.path, ns=(mtime_ns, mtime_ns))

    def rotate(self, mtime_ns):
        """Start on token one; the server and the file move to two; the watch is dropped."""
        h = Harness(token="one", token_file=self.path)
        h.start()
        self.addCleanup(h.stop)
        h.fake.token = "two"
        self.write("two", mtime_ns)
        h.fake.drop_watches()
        h.pump()
        self.assertEqual(h.fake.watching(), 1)
        self.assertEqual(h.catalog.backoff.failures, 0)
        return len(h.watches())

    def test_rotation_by_mtime(self):
        """A token file that changes is re-read before the next request."""
        self.assertEqual(self.rotate(2_000_000_000), 2)

    def test_rotation_on_401(self):
        """A 401 re-reads the token (same mtime: not seen) and retries the request once."""
        self.assertEqual(self.rotate(1_000_000_000), 3)


class MalformedTests(SynchronousTestCase):
    """Bad payloads are logged; the mirror keeps what it had; nothing raises."""

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.h = Harness()
        self.h.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", None)]))
        self.h.start()
        self.addCleanup(self.h.stop)

    def warnings(self):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events if e.get("log_level") is not None
                and e["log_level"].name == "warn"]

    def relist_with(self, path, code, body):
        self.h.fake.overrides[path] = (code, body)
        self.h.fake.expire_watches()
        self.h.pump()

    def test_list_not_json(self):
        self.relist_with("/api/v1/namespaces/default/endpoints", 200, b"<html>")
        self.assertEqual(self.h.values(), [("reviews", "10.0.0.1:9080", "UP")])
        self.assertIn("not JSON", self.warnings()[-1])
        self.assertEqual(len(self.h.clock.getDelayedCalls()), 1)

    def test_list_without_version(self):
        self.relist_with("/api/v1/namespaces/default/endpoints", 200, b'{"items": []}')
        self.assertEqual(self.h.values(), [("reviews", "10.0.0.1:9080", "UP")])
        self.assertIn("metadata.resourceVersion", self.warnings()[-1])

    def test_server_error(self):
        self.relist_with("/api/v1/namespaces/default/endpoints", 500, b"oops")
        self.assertEqual(self.h.values(), [("reviews", "10.0.0.1:9080", "UP")])
        self.assertIn("answered 500", self.warnings()[-1])

    def test_pods_unreadable(self):
        """Pods that cannot be listed (403) cost the version tags only, logged once."""
        h = Harness()
        h.fake.overrides["/api/v1/namespaces/default/pods"] = (403, b'{"kind": "Status"}')
        h.fake.put("pods", pod("reviews-v1-1", {"version": "v1"}))
        h.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", "reviews-v1-1")]))
        h.start()
        self.addCleanup(h.stop)
        h.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", "reviews-v1-1"),
                                                      ("10.0.0.2", "reviews-v1-1")]))
        h.pump()
        self.assertEqual([i.tags for i in h.catalog.instances("tenant")],
                         [("kubernetes",), ("kubernetes",)])
        self.assertEqual(self.warnings(), ["kubernetes: no version tags: GET "
                                           "/api/v1/namespaces/default/pods answered 403"])
        self.assertNotIn(("GET", "/api/v1/namespaces/default/pods/reviews-v1-1"),
                         h.fake.requests)

    def test_malformed_object_keeps_its_instances(self):
        """An Endpoints whose shape is wrong is skipped: what was mirrored of it stays."""
        self.h.fake.put("endpoints", {"metadata": {"name": "reviews"}, "subsets": [
            {"addresses": [{"no-ip": 1}], "ports": [{"port": 1}]}]})
        self.h.fake.put("endpoints", {"metadata": {"name": "ratings"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": "x"}]}]})
        self.h.fake.put("endpoints", endpoints("x" * 70, [("10.0.0.5", None)]))
        self.h.pump()
        self.assertEqual(self.h.values(), [("reviews", "10.0.0.1:9080", "UP")])
        warnings = self.warnings()
        self.assertEqual(len(warnings), 3, warnings)
        self.assertIn("service_name is longer", warnings[2])
        self.assertEqual(self.h.fake.watching(), 1)

    def test_event_types(self):
        for line in (b'{"type": "ADDED"}', b'{"type": "WHAT", "object": {}}', b'[1]',
                     b'{"type": "ERROR", "object": {"code": 500, "message": "boom"}}'):
            self.h.fake.send_raw(line)
            self.h.pump()
            [call] = self.h.clock.getDelayedCalls()
            self.h.wait(call.getTime() - self.h.clock.seconds())
            self.assertEqual(self.h.values(), [("reviews", "10.0.0.1:9080", "UP")])
            self.assertEqual(self.h.fake.watching(), 1)
        self.assertIn("boom", self.warnings()[-1])


class RecordedPayloadTests(SynchronousTestCase):
    """The fake's output has the recorded payloads' shape; the adapter parses them."""

    def shape(self, value):
        if isinstance(value, dict):
            return {k: self.shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.shape(value[0])] if value else []
        return type(value).__name__

    def assertSubShape(self, ours, recorded, where="$"):
        """Every field of C{ours} is in C{recorded}, with the same JSON type."""
        if isinstance(ours, dict):
            self.assertIsInstance(recorded, dict, where)
            for key, value in ours.items():
                self.assertIn(key, recorded, where)
                self.assertSubShape(value, recorded[key], where + "." + key)
        elif isinstance(ours, list):
            self.assertIsInstance(recorded, list, where)
            if ours and recorded:
                self.assertSubShape(ours[0], recorded[0], where + "[0]")
        else:
            self.assertEqual(ours, recorded, where)

    def fetch(self, fake, path):
        http = StubTreq(fake.resource())
        response = self.successResultOf(http.get("http://k8s" + path))
        return response.code, json.loads(self.successResultOf(http.content(response)))

    def test_endpoints_shape(self):
        fake = FakeKubernetes()
        fake.put("endpoints", endpoints("reviews", [("10.244.1.7", "reviews-v1-5")],
                                        [("10.244.1.8", "reviews-v3-8")]))
        code, listed = self.fetch(fake, "/api/v1/namespaces/default/endpoints")
        self.assertEqual(code, 200)
        recorded = json.loads(payload("endpoints.json"))
        self.assertSubShape(self.shape(listed), self.shape(recorded))

    def test_slice_shape(self):
        fake = FakeKubernetes(slices=True)
        fake.put("endpointslices", endpoint_slice("reviews-8x", "reviews", [
            ("10.244.1.7", "p", True)]))
        code, listed = self.fetch(fake, "/apis/discovery.k8s.io/v1/namespaces/default/"
                                        "endpointslices")
        recorded = json.loads(payload("endpointslice.json"))
        ours = self.shape(listed)
        ours["items"][0]["endpoints"][0]["conditions"].pop("ready")   # bool in both
        self.assertSubShape(ours, self.shape(recorded))

    def test_pods_and_status_shape(self):
        fake = FakeKubernetes()
        fake.put("pods", pod("reviews-v1-1", {"version": "v1"}, ("ReplicaSet", "reviews-v1")))
        _, listed = self.fetch(fake, "/api/v1/namespaces/default/pods")
        self.assertSubShape(self.shape(listed), self.shape(json.loads(payload("podlist.json"))))
        fake.put("pods", pod("x"))
        fake.compact()
        fake.gone_as_http = True
        code, gone = self.fetch(fake, "/api/v1/namespaces/default/pods?watch=1"
                                      "&resourceVersion=1")
        self.assertEqual(code, 410)
        recorded = json.loads(payload("status-410.json"))
        self.assertEqual(self.shape(gone), self.shape(recorded))
        self.assertEqual((gone["code"], gone["reason"]), (410, "Expired"))

    def test_watch_shape(self):
        """The fake's watch lines have the recorded stream's shape, event by event type."""
        h = Harness()
        h.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", None)]))
        recorded = {}
        for line in payload("watch-stream.jsonl").splitlines():
            event = json.loads(line)
            recorded.setdefault(event["type"], event)
        lines = []
        http = StubTreq(h.fake.resource())
        d = http.get("http://k8s/api/v1/namespaces/default/endpoints?watch=1"
                     "&allowWatchBookmarks=true&resourceVersion=100")
        http.flush()
        response = self.successResultOf(d)
        http.collect(response, lines.append)
        h.fake.put("endpoints", endpoints("reviews", [("10.0.0.2", None)]))
        h.fake.bookmark()
        h.fake.delete("endpoints", "default", "reviews")
        h.fake.expire_watches()
        http.flush()
        events = [json.loads(line) for line in b"".join(lines).splitlines()]
        self.assertEqual([e["type"] for e in events],
                         ["ADDED", "MODIFIED", "BOOKMARK", "DELETED", "ERROR"])
        for event in events:
            ours = self.shape(event)
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                ours["object"].get("subsets", [{}])[0].pop("addresses", None) if ours[
                    "object"].get("subsets") else None
            self.assertSubShape(ours, self.shape(recorded[event["type"]]))

    def test_adapter_parses_recorded(self):
        """
        The recorded Endpoints, PodList and watch stream, served as they are (the third
        pod is not in the list, and the fake does not have it: no version tag).
        """
        h = Harness()
        h.fake.overrides.update({
            "/api/v1/namespaces/default/endpoints": (200, payload("endpoints.json")),
            "/api/v1/namespaces/default/pods": (200, payload("podlist.json"))})
        h.start()
        self.addCleanup(h.stop)
        tags = {(i.registration.endpoint_value, i.status): i.tags
                for i in h.catalog.instances("tenant")}
        self.assertEqual(tags, {("10.244.1.7:9080", "UP"): ("v1", "kubernetes"),
                                ("10.244.2.9:9080", "UP"): ("v2", "kubernetes"),
                                ("10.244.1.8:9080", "STARTING"): ("kubernetes",)})
        self.assertEqual(h.catalog.resource_version, "2378")
        for line in payload("watch-stream.jsonl").splitlines():
            h.fake.send_raw(line)
        del h.fake.overrides["/api/v1/namespaces/default/endpoints"]
        h.pump(30)
        # ratings added then modified, reviews deleted, then the 410: a relist of the fake.
        self.assertEqual(len(h.lists()), 2)
        self.assertEqual(h.values(), [])

    def test_adapter_parses_recorded_slice(self):
        h = Harness(slices=True)
        h.fake.overrides.update({
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices": (
                200, payload("endpointslice.json")),
            "/api/v1/namespaces/default/pods": (200, payload("podlist.json"))})
        h.start()
        self.addCleanup(h.stop)
        self.assertEqual(sorted((i.registration.endpoint_value, i.registration.endpoint_type,
                                 i.status, i.tags) for i in h.catalog.instances("tenant")), [
            ("10.244.1.7:9443", "https", "UP", ("v1", "kubernetes")),
            ("10.244.2.9:9443", "https", "STARTING", ("v2", "kubernetes"))])


class RegistryTests(RegistryTestCase):
    """The registry API over CatalogMerge over the adapter over the fake."""

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.fake = FakeKubernetes()
        self.k8s = StubTreq(self.fake.resource())
        self.catalog = KubernetesCatalog(URL, self.k8s, self.clock, serves="default",
                                         backoff=Backoff(random=lambda: 0.5))
        self.merge = CatalogMerge(self.store, [self.catalog])
        self.api = RegistryAPI(self.merge, self.auth, self.clock, ttl=self.ttl_policy)
        self.http.__init__(self.api.resource())
        self.merge.startService()
        self.addCleanup(self.merge.stopService)
        self.settle()

    def settle(self):
        for _ in range(8):
            self.k8s.flush()
            self.http.flush()

    def test_listed_and_woken(self):
        self.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", None)]))
        self.settle()
        answer = self.request("GET", "/api/v1/services/reviews")
        self.assertEqual(answer.code, 200)
        [instance] = answer.json()["instances"]
        self.assertEqual((instance["endpoint"], instance["tags"]), (
            {"type": "http", "value": "10.0.0.1:9080"}, ["kubernetes"]))
        index = answer.header(b"A8-Index")
        d = self.start("GET", "/api/v1/instances?wait=30s&index=" + index)
        self.http.flush()
        self.assertNoResult(d)
        self.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", None),
                                                         ("10.0.0.2", None)]))
        self.settle()
        answer = self.successResultOf(d)
        self.assertEqual(len(answer.json()["instances"]), 2)
        self.assertGreater(int(answer.header(b"A8-Index")), int(index))
        deleted = self.request("DELETE", "/api/v1/instances/" + instance["id"])
        self.assertEqual(deleted.code, 403)


def settings(**given):
    values = {s.name: None for s in ADAPTER_SETTINGS}
    values.update({"k8s-namespace": "default", "k8s-serves": "default"})
    values.update({k.replace("_", "-"): v for k, v in given.items()})
    return values


class SettingsTests(SynchronousTestCase):
    def test_plain(self):
        catalog = from_settings(settings(k8s_url="http://127.0.0.1:8001", k8s_token="t",
                                         k8s_namespace="shop", k8s_serves="tenant"), Clock())
        self.assertEqual((catalog.url, catalog.namespace, catalog.serves, catalog._token),
                         ("http://127.0.0.1:8001", "shop", "tenant", "t"))

    def service_account(self, token=True):
        directory = self.mktemp()
        os.makedirs(directory)
        if token:
            with open(os.path.join(directory, "token"), "w") as f:
                f.write("sa-token\n")
        with open(os.path.join(directory, "ca.crt"), "wb") as f:
            f.write(TestCA().ca_pem)
        return directory

    def test_in_cluster(self):
        directory = self.service_account()
        catalog = from_settings(settings(k8s_url="in-cluster"), Clock(), environ={
            "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            service_account=directory)
        self.assertEqual(catalog.url, "https://10.96.0.1:443")
        self.assertEqual(catalog._current_token(), "sa-token")

    def test_refused(self):
        with self.assertRaises(SettingError) as caught:
            from_settings(settings(k8s_url="in-cluster"), Clock(), environ={})
        self.assertIn("KUBERNETES_SERVICE_HOST", str(caught.exception))
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("not a certificate")
        with self.assertRaises(SettingError) as caught:
            from_settings(settings(k8s_url="https://k8s:6443", k8s_ca_file=bad), Clock())
        self.assertIn("k8s-ca-file", str(caught.exception))
        with self.assertRaises(SettingError):
            from_settings(settings(k8s_url="https://k8s:6443", k8s_token_file=bad + "x"),
                          Clock())
        with self.assertRaises(SettingError) as caught:
            from_settings(settings(k8s_url="https://k8s:6443", k8s_token_file=bad,
                                   k8s_token="t"), Clock())
        self.assertIn("not both", str(caught.exception))

    def test_in_cluster_token(self):
        """In-cluster with k8s-token: that token, no file."""
        catalog = from_settings(settings(k8s_url="in-cluster", k8s_token="given"), Clock(),
                                environ={"KUBERNETES_SERVICE_HOST": "fd00::1"},
                                service_account=self.service_account(token=False))
        self.assertEqual((catalog.url, catalog._current_token()),
                         ("https://[fd00::1]:443", "given"))

    def test_build_catalogs(self):
        """The registry's build_catalogs makes this catalog from k8s-url."""
        [catalog] = build_catalogs(settings(k8s_url="http://127.0.0.1:1"), Clock())
        self.assertIsInstance(catalog, KubernetesCatalog)
        self.assertTrue(verifyObject(ICatalog, catalog))


class TLSTests(TestCase):
    """The adapter over TLS to the fake on a loopback port (the real reactor)."""

    timeout = 20

    def serve(self):
        self.ca = TestCA()
        self.fake = FakeKubernetes(token="secret")
        self.fake.put("endpoints", endpoints("reviews", [("10.0.0.1", None)]))
        port = self.fake.listen_tls(reactor, self.ca)
        self.addCleanup(self.closed)
        return "https://127.0.0.1:{}".format(port.getHost().port)

    async def closed(self):
        await self.fake.close()
        await deferLater(reactor, 0.01)       # the client side sees its connection lost

    def catalog(self, url, ca_pem):
        ca_file = self.mktemp()
        with open(ca_file, "wb") as f:
            f.write(ca_pem)
        token_file = self.mktemp()
        with open(token_file, "w") as f:
            f.write("secret")
        catalog = from_settings(settings(k8s_url=url, k8s_ca_file=ca_file,
                                         k8s_token_file=token_file), reactor)
        catalog.backoff = Backoff(initial=0.05, maximum=0.1)
        return catalog

    async def test_right_ca(self):
        url = self.serve()
        catalog = self.catalog(url, self.ca.ca_pem)
        changed = Deferred()
        catalog.subscribe(lambda ns: changed.called or changed.callback(ns))
        catalog.startService()
        self.addCleanup(catalog.stopService)
        self.assertEqual(await changed, "default")
        self.assertEqual([i.registration.endpoint_value for i in catalog.instances("default")],
                         ["10.0.0.1:9080"])

    async def test_wrong_ca(self):
        url = self.serve()
        catalog = self.catalog(url, TestCA("another CA").ca_pem)
        catalog.startService()
        self.addCleanup(catalog.stopService)
        for _ in range(100):
            if catalog.backoff.failures >= 2:
                break
            await deferLater(reactor, 0.02)
        self.assertGreaterEqual(catalog.backoff.failures, 2)
        self.assertEqual(catalog.instances("default"), [])
        self.assertEqual(self.fake.requests, [])


class BenchTests(SynchronousTestCase):
    """bench/catalog_kubernetes.py runs (the fake and a real registry on loopback)."""

    def test_measure(self):
        from bench.catalog_kubernetes import HEADER, measure
        [row] = measure(changes=5, logdir=self.mktemp())
        self.assertEqual(len(row), len(HEADER))
        self.assertEqual(row[3], "5")
        self.assertTrue(row[1].endswith(" ms") and float(row[1].split()[0]) > 0, row)
