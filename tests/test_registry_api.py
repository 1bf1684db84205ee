"""
Tests for L{amalgam8.registry.api}: the registry's HTTP API (SPEC A1, A2 and B1), driven
through L{treq.testing.StubTreq} against an in-memory store and a L{Clock}.
"""

import hashlib
import json
import os
import uuid

import jwt
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived

from amalgam8.auth import Authenticator
from amalgam8.registry.api import RegistryAPI, TTLPolicy
from amalgam8.registry.store import MemoryStore
from amalgam8.testing.late import Later, LateStore, settling
from amalgam8.web import MAX_BODY
from tests.helpers import Answer, make_jwt as shared_make_jwt

NOW = 1_800_000_000.0
BASE = "http://registry.test"
INSTANCES = "/api/v1/instances"
SECRET = "a-test-secret-that-is-long-enough-for-hs256"
_NOTHING = object()


def reg(service="web", value="10.0.0.1:80", endpoint_type="http", **extra):
    """A registration body."""
    body = {"service_name": service, "endpoint": {"type": endpoint_type, "value": value}}
    body.update(extra)
    return body


def expected_id(service, endpoint_type, value):
    """The instance id SPEC A2 prescribes."""
    key = "{}/{}/{}".format(service, endpoint_type, value).encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:16]


def make_jwt(claims, secret=SECRET, algorithm="HS256"):
    return shared_make_jwt(claims, secret, algorithm)


class RegistryTestCase(SynchronousTestCase):
    """
    A registry API over a fresh L{MemoryStore}, L{Clock} and L{StubTreq}.

    Subclasses change the class attributes to configure it.
    """

    modes = ("default",)
    capacity = None
    ttl_policy = TTLPolicy()
    require_https = False
    metrics_token = None
    start_store = False
    late = False

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore(clock=self.clock, capacity=self.capacity)
        if self.start_store:
            self.store.startService()
            self.addCleanup(self.store.stopService)
        self.auth = Authenticator(
            self.modes, self.clock, jwt_secret=SECRET if "jwt" in self.modes else None)
        # With late = True the API gets the store through a LateStore (every answer comes
        # later, as a networked store's would) and each flush delivers them; self.store stays
        # the wrapped store, read around the API.
        self.later = Later()
        store = LateStore(self.store, self.later) if self.late else self.store
        self.api = RegistryAPI(store, self.auth, self.clock, ttl=self.ttl_policy,
                               require_https=self.require_https,
                               metrics_token=self.metrics_token)
        self.http = StubTreq(self.api.resource())
        self.pump = self.http.flush
        if self.late:
            self.http.flush = settling(self.pump, self.later)

    # -- requests ----------------------------------------------------------------------------

    def start(self, method, path, json_body=_NOTHING, data=None, token=None, headers=None,
              content_type=b"application/json", base=BASE):
        """Send a request; the Deferred fires with an L{Answer} once flushed."""
        all_headers = {}
        if json_body is not _NOTHING:
            data = json.dumps(json_body).encode("utf-8")
        if data is not None and content_type is not None:
            all_headers[b"content-type"] = [content_type]
        if token is not None:
            all_headers[b"authorization"] = [b"Bearer " + token.encode("ascii")]
        for name, value in (headers or {}).items():
            all_headers[name] = [value]
        if isinstance(method, bytes):
            method = method.decode("ascii")
        d = self.http.request(method, base + path, data=data, headers=all_headers,
                              allow_redirects=False)

        def read(response):
            return response.content().addCallback(
                lambda body: Answer(response.code, response.headers, body))

        return d.addCallback(read)

    def request(self, method, path, **kwargs):
        """Send a request and return its L{Answer}."""
        d = self.start(method, path, **kwargs)
        self.http.flush()
        return self.successResultOf(d)

    def finish(self, d):
        """The L{Answer} of a started request, after a flush."""
        self.http.flush()
        return self.successResultOf(d)

    def register(self, body=None, token=None, **kwargs):
        """Register C{body} (default L{reg}) and return the 201 answer's JSON."""
        answer = self.request(b"POST", INSTANCES, json_body=body or reg(**kwargs),
                              token=token)
        self.assertEqual(answer.code, 201, answer.body)
        return answer.json()

    def listing(self, query="", token=None, path=INSTANCES):
        """The instances of a 200 listing."""
        answer = self.request(b"GET", path + query, token=token)
        self.assertEqual(answer.code, 200, answer.body)
        return answer.json()["instances"]

    def listed_ids(self, query="", token=None):
        return [i["id"] for i in self.listing(query, token)]

    def snapshot(self, namespaces=("default", "a", "b")):
        """Everything the store holds, read around the API."""
        stats = self.store.stats()
        names = set(namespaces) | set(stats["instances"])
        return stats, {
            name: (self.successResultOf(self.store.instances(name)),
                   self.successResultOf(self.store.services(name)))
            for name in sorted(names)
        }

    def assertError(self, answer, status):
        """C{answer} has C{status} and a JSON body C{{"Error": "<message>"}}."""
        self.assertEqual(answer.code, status, answer.body)
        self.assertEqual(answer.header(b"content-type"), "application/json")
        body = answer.json()
        self.assertEqual(list(body), ["Error"])
        self.assertIsInstance(body["Error"], str)
        self.assertTrue(body["Error"])

    def assertRejected(self, status, method, path, **kwargs):
        """The request gets C{status} with an error body and changes nothing stored."""
        before = self.snapshot()
        answer = self.request(method, path, **kwargs)
        self.assertError(answer, status)
        self.assertEqual(self.snapshot(), before)
        return answer


class RegisterTests(RegistryTestCase):
    """POST /api/v1/instances."""

    def test_created(self):
        """A registration gets 201, a Location and a body with id, ttl and links."""
        answer = self.request(b"POST", INSTANCES, json_body=reg())
        self.assertEqual(answer.code, 201)
        instance_id = expected_id("web", "http", "10.0.0.1:80")
        url = BASE + INSTANCES + "/" + instance_id
        self.assertEqual(answer.header(b"location"), url)
        self.assertEqual(answer.header(b"content-type"), "application/json")
        self.assertEqual(answer.json(), {
            "id": instance_id,
            "ttl": 30,
            "links": {"self": url, "heartbeat": url + "/heartbeat"},
        })

    def test_links_follow_forwarded_proto(self):
        """Behind a TLS-terminating proxy (X-Forwarded-Proto: https) the links are https."""
        answer = self.request(b"POST", INSTANCES, json_body=reg(),
                              headers={b"x-forwarded-proto": b"https"})
        self.assertEqual(answer.code, 201)
        self.assertTrue(answer.header(b"location").startswith("https://registry.test/"))
        self.assertTrue(answer.json()["links"]["heartbeat"].startswith("https://"))

    def test_deterministic_id(self):
        """The id is the first 16 hex digits of SHA-256 of service/type/value."""
        body = self.register(reg("reviews", "172.17.0.5:9080", "tcp"))
        self.assertEqual(body["id"], expected_id("reviews", "tcp", "172.17.0.5:9080"))
        self.assertRegex(body["id"], r"\A[0-9a-f]{16}\Z")

    def test_listed_with_all_fields(self):
        """A registered instance is listed with every field it was given."""
        self.register(reg(tags=["v1", "canary"], metadata={"weight": 3, "zone": "eu"},
                          status="UP", ttl=45))
        [instance] = self.listing()
        self.assertEqual(instance, {
            "id": expected_id("web", "http", "10.0.0.1:80"),
            "service_name": "web",
            "endpoint": {"type": "http", "value": "10.0.0.1:80"},
            "ttl": 45,
            "status": "UP",
            "tags": ["v1", "canary"],
            "metadata": {"weight": 3, "zone": "eu"},
            "last_heartbeat": "2027-01-15T08:00:00.000000Z",
        })

    def test_empty_fields_omitted(self):
        """An instance without tags or metadata has no such keys in its object."""
        self.register()
        [instance] = self.listing()
        self.assertNotIn("tags", instance)
        self.assertNotIn("metadata", instance)

    def test_reregister_replaces(self):
        """Registering the same triple again replaces the instance under the same id."""
        first = self.register(reg(tags=["v1"]))
        second = self.register(reg(tags=["v2"], status="STARTING"))
        self.assertEqual(first["id"], second["id"])
        [instance] = self.listing("?status=ALL")
        self.assertEqual((instance["id"], instance["tags"], instance["status"]),
                         (first["id"], ["v2"], "STARTING"))
        self.assertEqual(self.store.stats()["instances"], {"default": 1})

    def test_distinct_endpoints_distinct_ids(self):
        """Two endpoints of one service are two instances."""
        a = self.register(reg(value="10.0.0.1:80"))
        b = self.register(reg(value="10.0.0.2:80"))
        self.assertNotEqual(a["id"], b["id"])
        self.assertEqual(sorted(self.listed_ids()), sorted([a["id"], b["id"]]))

    def test_status_case_insensitive(self):
        """The status is case-insensitive on input and listed in capitals."""
        self.register(reg(status="out_of_service"))
        [instance] = self.listing("?status=ALL")
        self.assertEqual(instance["status"], "OUT_OF_SERVICE")

    def test_ttl_default(self):
        """Without a ttl, the default of 30 s is granted."""
        self.assertEqual(self.register()["ttl"], 30)

    def test_ttl_zero_means_default(self):
        """A ttl of 0 (or null) means the default."""
        self.assertEqual(self.register(reg(ttl=0))["ttl"], 30)
        self.assertEqual(self.register(reg(value="b", ttl=None))["ttl"], 30)

    def test_ttl_in_range_granted(self):
        """A ttl between the minimum and the maximum is granted as asked."""
        self.assertEqual(self.register(reg(ttl=45))["ttl"], 45)
        self.assertEqual(self.register(reg(value="b", ttl=60.0))["ttl"], 60)

    def test_ttl_raised_to_minimum(self):
        """A ttl below 10 s is raised to 10 s."""
        self.assertEqual(self.register(reg(ttl=1))["ttl"], 10)
        [instance] = self.listing()
        self.assertEqual(instance["ttl"], 10)

    def test_ttl_lowered_to_maximum(self):
        """A ttl above 10 min is lowered to 10 min."""
        self.assertEqual(self.register(reg(ttl=3600))["ttl"], 600)

    def test_huge_ttl_lowered_to_maximum(self):
        """A ttl too large for a float is still just lowered to the maximum."""
        self.assertEqual(self.register(reg(ttl=10 ** 400))["ttl"], 600)

    def test_metadata_at_limit(self):
        """Metadata of exactly 1024 bytes serialized is accepted."""
        metadata = {"k": "x" * 1016}
        self.assertEqual(len(json.dumps(metadata, separators=(",", ":"))), 1024)
        self.register(reg(metadata=metadata))
        self.assertEqual(self.listing()[0]["metadata"], metadata)

    def test_names_at_limits(self):
        """A 64-byte service name and a 128-byte endpoint value are accepted."""
        self.register(reg("s" * 64, "v" * 128))
        [instance] = self.listing()
        self.assertEqual(instance["service_name"], "s" * 64)

    def test_charset_parameter(self):
        """C{application/json; charset=utf-8} is JSON too."""
        answer = self.request(b"POST", INSTANCES, json_body=reg(),
                              content_type=b"application/json; charset=utf-8")
        self.assertEqual(answer.code, 201)


class CustomTTLTests(RegistryTestCase):
    """The default, minimum and maximum ttl are server options."""

    ttl_policy = TTLPolicy(default=20, minimum=5, maximum=60)

    def test_policy(self):
        """The configured default, minimum and maximum are applied."""
        self.assertEqual(self.register(reg(value="a"))["ttl"], 20)
        self.assertEqual(self.register(reg(value="b", ttl=1))["ttl"], 5)
        self.assertEqual(self.register(reg(value="c", ttl=7))["ttl"], 7)
        self.assertEqual(self.register(reg(value="d", ttl=61))["ttl"], 60)


class HeartbeatTests(RegistryTestCase):
    """PUT /api/v1/instances/{id}/heartbeat, on the short road."""

    suffix = ""

    def heartbeat(self, instance_id, token=None):
        return self.request(
            b"PUT", INSTANCES + "/" + instance_id + "/heartbeat" + self.suffix, token=token)

    def test_ok_empty(self):
        """A heartbeat of a live instance gets 200 and an empty body."""
        instance_id = self.register()["id"]
        answer = self.heartbeat(instance_id)
        self.assertEqual((answer.code, answer.body), (200, b""))

    def test_renews(self):
        """A heartbeat renews the lease and updates last_heartbeat."""
        instance_id = self.register()["id"]
        self.clock.advance(25)
        self.assertEqual(self.heartbeat(instance_id).code, 200)
        self.clock.advance(25)
        [instance] = self.listing()
        self.assertEqual(instance["last_heartbeat"], "2027-01-15T08:00:25.000000Z")
        self.assertEqual(self.store.stats()["heartbeats"], 1)

    def test_unknown(self):
        """A heartbeat of an id never registered gets 410."""
        self.assertRejected(410, b"PUT", INSTANCES + "/0123456789abcdef/heartbeat"
                            + self.suffix)

    def test_expired(self):
        """A heartbeat of an expired instance gets 410 (the client re-registers)."""
        instance_id = self.register(reg(ttl=10))["id"]
        self.clock.advance(10.5)
        self.assertError(self.heartbeat(instance_id), 410)
        self.assertEqual(self.listing("?status=ALL"), [])

    def test_deleted(self):
        """A heartbeat of a deleted instance gets 410."""
        instance_id = self.register()["id"]
        self.assertEqual(self.request(b"DELETE", INSTANCES + "/" + instance_id).code, 200)
        self.assertError(self.heartbeat(instance_id), 410)

    def test_other_token(self):
        """In the default mode, a token other than C{default} gets 401."""
        instance_id = self.register()["id"]
        answer = self.heartbeat(instance_id, token="intruder")
        self.assertError(answer, 401)
        self.assertIsNotNone(answer.header(b"www-authenticate"))
        self.assertEqual(self.store.stats()["heartbeats"], 0)

    def test_basic_scheme(self):
        """A heartbeat with Basic credentials gets 401."""
        instance_id = self.register()["id"]
        self.assertRejected(401, b"PUT", INSTANCES + "/" + instance_id + "/heartbeat"
                            + self.suffix, headers={b"authorization": b"Basic ZGVmYXVsdDo="})

    def test_request_id(self):
        """A heartbeat echoes A8-Request-Id too."""
        instance_id = self.register()["id"]
        answer = self.request(
            b"PUT", INSTANCES + "/" + instance_id + "/heartbeat" + self.suffix,
            headers={b"a8-request-id": b"hb-1"})
        self.assertEqual(answer.header(b"a8-request-id"), "hb-1")

    def test_counted(self):
        """Heartbeats are counted in the request metrics under the route heartbeat."""
        instance_id = self.register()["id"]
        self.heartbeat(instance_id)
        self.heartbeat("0123456789abcdef")
        metrics = self.request(b"GET", "/metrics").body.decode("utf-8")
        self.assertEqual(request_count(metrics, "heartbeat", "PUT", "200"), 1)
        self.assertEqual(request_count(metrics, "heartbeat", "PUT", "410"), 1)


class HeartbeatQueryTests(HeartbeatTests):
    """The same heartbeat behaviour with a query string, which a heartbeat ignores (the
    heartbeat has one road: there is no Klein route for it)."""

    suffix = "?road=klein"


class LateHeartbeatTests(HeartbeatTests):
    """The same heartbeat behaviour on a store whose answers come later."""

    late = True

    def test_answered_later(self):
        """The heartbeat is answered once the store answers, not before."""
        instance_id = self.register()["id"]
        d = self.start(b"PUT", INSTANCES + "/" + instance_id + "/heartbeat")
        self.pump()
        self.assertNoResult(d)
        self.assertEqual(self.later.pending, 1)
        self.assertEqual(self.finish(d).code, 200)
        self.assertEqual(self.later.pending, 0)


class HeartbeatMethodTests(RegistryTestCase):
    """The heartbeat URL takes PUT only."""

    def test_other_method(self):
        """Another method gets 405 with Allow: PUT and changes nothing."""
        instance_id = self.register()["id"]
        for method in (b"GET", b"POST", b"DELETE", b"PATCH"):
            answer = self.assertRejected(405, method, INSTANCES + "/" + instance_id
                                         + "/heartbeat")
            self.assertEqual(answer.header(b"allow"), "PUT")
        self.assertEqual(self.store.stats()["heartbeats"], 0)

    def test_escaped_id(self):
        """A percent-escaped id is the id it spells."""
        instance_id = self.register()["id"]
        escaped = "".join("%{:02x}".format(ord(c)) for c in instance_id)
        answer = self.request(b"PUT", INSTANCES + "/" + escaped + "/heartbeat")
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.store.stats()["heartbeats"], 1)

    def test_not_an_id(self):
        """An id that is not ASCII, or not UTF-8, gets 410."""
        for raw in ("%C3%A9t%C3%A9", "%ff"):
            self.assertRejected(410, b"PUT", INSTANCES + "/" + raw + "/heartbeat")


class DeregisterTests(RegistryTestCase):
    """DELETE /api/v1/instances/{id}."""

    def test_ok_empty(self):
        """Deleting a live instance gets 200 and an empty body, and it is gone."""
        instance_id = self.register()["id"]
        answer = self.request(b"DELETE", INSTANCES + "/" + instance_id)
        self.assertEqual((answer.code, answer.body), (200, b""))
        self.assertEqual(self.listing("?status=ALL"), [])
        self.assertEqual(self.store.stats()["deregistrations"], 1)

    def test_twice(self):
        """Deleting an instance twice gets 410 the second time."""
        instance_id = self.register()["id"]
        self.request(b"DELETE", INSTANCES + "/" + instance_id)
        self.assertRejected(410, b"DELETE", INSTANCES + "/" + instance_id)

    def test_unknown(self):
        """Deleting an unknown id gets 410."""
        self.register()
        self.assertRejected(410, b"DELETE", INSTANCES + "/0123456789abcdef")

    def test_expired(self):
        """Deleting an expired instance gets 410."""
        instance_id = self.register()["id"]
        self.clock.advance(31)
        self.assertError(self.request(b"DELETE", INSTANCES + "/" + instance_id), 410)

    def test_only_that_one(self):
        """Deleting one instance leaves the others."""
        a = self.register(reg(value="a"))["id"]
        b = self.register(reg(value="b"))["id"]
        self.request(b"DELETE", INSTANCES + "/" + a)
        self.assertEqual(self.listed_ids(), [b])


class ListingTests(RegistryTestCase):
    """GET /api/v1/instances: filters, the default UP-only rule and fields."""

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.up_v1 = self.register(reg("web", "a", tags=["v1"]))["id"]
        self.up_v2 = self.register(reg("web", "b", tags=["v2", "canary"]))["id"]
        self.starting = self.register(reg("web", "c", status="STARTING", tags=["v1"]))["id"]
        self.oos = self.register(reg("db", "d", status="OUT_OF_SERVICE"))["id"]
        self.db_up = self.register(reg("db", "e", tags=["v1", "canary"],
                                       metadata={"m": 1}))["id"]

    def test_no_filter_up_only(self):
        """With no filter at all, only UP instances are listed."""
        self.assertEqual(sorted(self.listed_ids()),
                         sorted([self.up_v1, self.up_v2, self.db_up]))

    def test_fields_alone_up_only(self):
        """fields is not a filter: with only fields, still only UP instances."""
        self.assertEqual(sorted(i["id"] for i in self.listing("?fields=status")),
                         sorted([self.up_v1, self.up_v2, self.db_up]))

    def test_service_name(self):
        """service_name lists that service's instances, of every status."""
        self.assertEqual(sorted(self.listed_ids("?service_name=web")),
                         sorted([self.up_v1, self.up_v2, self.starting]))

    def test_service_name_list(self):
        """service_name takes a comma-separated list."""
        self.assertEqual(len(self.listed_ids("?service_name=web,db")), 5)

    def test_unknown_service(self):
        """A service_name nothing registered lists nothing."""
        self.assertEqual(self.listing("?service_name=nope"), [])

    def test_tags_all_required(self):
        """tags lists the instances carrying all the given tags, of every status."""
        self.assertEqual(sorted(self.listed_ids("?tags=v1")),
                         sorted([self.up_v1, self.starting, self.db_up]))
        self.assertEqual(sorted(self.listed_ids("?tags=v1,canary")), [self.db_up])
        self.assertEqual(self.listed_ids("?tags=v3"), [])

    def test_tags_exact(self):
        """A tag matches exactly, not as a substring (v1 does not match v10)."""
        self.register(reg("web", "f", tags=["v10"]))
        self.assertNotIn(expected_id("web", "http", "f"), self.listed_ids("?tags=v1"))

    def test_status(self):
        """status lists the instances with that status (case-insensitive)."""
        self.assertEqual(self.listed_ids("?status=STARTING"), [self.starting])
        self.assertEqual(self.listed_ids("?status=out_of_service"), [self.oos])

    def test_status_all(self):
        """status=ALL lists every instance."""
        self.assertEqual(len(self.listed_ids("?status=ALL")), 5)

    def test_id(self):
        """id lists exactly that instance, whatever its status."""
        self.assertEqual(self.listed_ids("?id=" + self.oos), [self.oos])
        self.assertEqual(sorted(self.listed_ids("?id={},{}".format(self.oos, self.up_v1))),
                         sorted([self.oos, self.up_v1]))

    def test_combined(self):
        """Filters combine with AND."""
        self.assertEqual(self.listed_ids("?service_name=web&tags=v1&status=UP"),
                         [self.up_v1])

    def test_fields(self):
        """fields projects the objects, always keeping id and endpoint."""
        instances = self.listing("?status=ALL&fields=service_name,tags")
        self.assertEqual(len(instances), 5)
        for instance in instances:
            self.assertLessEqual(set(instance), {"id", "endpoint", "service_name", "tags"})
            self.assertLessEqual({"id", "endpoint", "service_name"}, set(instance))
        [db] = [i for i in instances if i["id"] == self.db_up]
        self.assertEqual(db, {"id": self.db_up, "endpoint": {"type": "http", "value": "e"},
                              "service_name": "db", "tags": ["v1", "canary"]})

    def test_fields_id_only(self):
        """fields=id still gives the endpoint."""
        [instance] = self.listing("?id={}&fields=id".format(self.db_up))
        self.assertEqual(instance, {"id": self.db_up,
                                    "endpoint": {"type": "http", "value": "e"}})

    def test_fields_every_name(self):
        """Every field of the instance object may be named in fields."""
        [instance] = self.listing(
            "?id={}&fields=id,service_name,endpoint,ttl,status,tags,metadata,last_heartbeat"
            .format(self.db_up))
        [full] = self.listing("?id=" + self.db_up)
        self.assertEqual(instance, full)

    def test_index_header(self):
        """A listing carries the namespace's index in A8-Index."""
        answer = self.request(b"GET", INSTANCES)
        self.assertEqual(answer.header(b"a8-index"), "5")
        self.register(reg("web", "z"))
        self.assertEqual(self.request(b"GET", INSTANCES).header(b"a8-index"), "6")


class ServicesTests(RegistryTestCase):
    """GET /api/v1/services and /api/v1/services/{name}."""

    def test_empty(self):
        """With nothing registered, the service list is empty."""
        answer = self.request(b"GET", "/api/v1/services")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json(), {"services": []})

    def test_names(self):
        """The services with at least one instance, of any status, are listed once each."""
        self.register(reg("web", "a"))
        self.register(reg("web", "b"))
        self.register(reg("db", "c", status="STARTING"))
        answer = self.request(b"GET", "/api/v1/services")
        self.assertEqual(sorted(answer.json()["services"]), ["db", "web"])
        self.assertEqual(answer.header(b"a8-index"), "3")

    def test_gone_when_last_instance_goes(self):
        """A service whose last instance is deleted or expires is no longer listed."""
        web = self.register(reg("web", "a"))["id"]
        self.register(reg("db", "c", ttl=10))
        self.request(b"DELETE", INSTANCES + "/" + web)
        self.clock.advance(11)
        self.assertEqual(self.request(b"GET", "/api/v1/services").json(), {"services": []})

    def test_one_service(self):
        """/services/{name} lists that service's instances of every status."""
        a = self.register(reg("web", "a"))["id"]
        b = self.register(reg("web", "b", status="OUT_OF_SERVICE"))["id"]
        self.register(reg("db", "c"))
        answer = self.request(b"GET", "/api/v1/services/web")
        self.assertEqual(answer.code, 200)
        body = answer.json()
        self.assertEqual(body["service_name"], "web")
        self.assertEqual(sorted(i["id"] for i in body["instances"]), sorted([a, b]))
        self.assertEqual(answer.header(b"a8-index"), "3")

    def test_one_service_fields(self):
        """/services/{name} takes fields too."""
        self.register(reg("web", "a", tags=["v1"]))
        body = self.request(b"GET", "/api/v1/services/web?fields=tags").json()
        self.assertEqual(set(body["instances"][0]), {"id", "endpoint", "tags"})

    def test_unknown_service(self):
        """/services/{name} of a service with no instances gets 404."""
        self.register(reg("web", "a"))
        self.assertRejected(404, b"GET", "/api/v1/services/nope")

    def test_expired_service(self):
        """/services/{name} gets 404 once every instance has expired."""
        self.register(reg("web", "a"))
        self.clock.advance(31)
        self.assertError(self.request(b"GET", "/api/v1/services/web"), 404)


class ExpiryTests(RegistryTestCase):
    """Instances go when their ttl runs out (SPEC A2), with the store's sweep running."""

    start_store = True

    def test_listed_until_ttl(self):
        """An instance is listed until its ttl has passed, and not after."""
        instance_id = self.register()["id"]
        self.clock.advance(30)
        self.assertEqual(self.listed_ids(), [instance_id])
        self.clock.advance(0.5)
        self.assertEqual(self.listed_ids("?status=ALL"), [])

    def test_swept(self):
        """The sweep removes expired instances and counts them."""
        self.register(reg(value="a", ttl=10))
        self.register(reg(value="b", ttl=20))
        for _ in range(12):
            self.clock.advance(1)
        stats = self.store.stats()
        self.assertEqual((stats["instances"], stats["expirations"]), ({"default": 1}, 1))

    def test_heartbeat_keeps_alive(self):
        """An instance that heartbeats within its ttl stays listed."""
        instance_id = self.register(reg(ttl=10))["id"]
        for _ in range(5):
            self.clock.advance(8)
            self.assertEqual(
                self.request(b"PUT", INSTANCES + "/" + instance_id + "/heartbeat").code, 200)
        self.assertEqual(self.listed_ids(), [instance_id])

    def test_expired_gone_everywhere(self):
        """After its ttl, heartbeat and DELETE get 410 and the service is not listed."""
        instance_id = self.register(reg(ttl=10))["id"]
        self.clock.advance(11)
        self.assertError(
            self.request(b"PUT", INSTANCES + "/" + instance_id + "/heartbeat"), 410)
        self.assertError(self.request(b"DELETE", INSTANCES + "/" + instance_id), 410)
        self.assertEqual(self.request(b"GET", "/api/v1/services").json(), {"services": []})

    def test_reregister_after_expiry(self):
        """Registering again after expiry brings the instance back under the same id."""
        first = self.register(reg(ttl=10))["id"]
        self.clock.advance(15)
        second = self.register(reg(ttl=10))["id"]
        self.assertEqual(first, second)
        self.assertEqual(self.listed_ids(), [first])

    def test_out_of_service_never_expires(self):
        """An OUT_OF_SERVICE instance never expires and can still be heartbeated."""
        instance_id = self.register(reg(status="OUT_OF_SERVICE", ttl=10))["id"]
        for _ in range(100):
            self.clock.advance(100)
        self.assertEqual(self.listed_ids("?status=OUT_OF_SERVICE"), [instance_id])
        self.assertEqual(
            self.request(b"PUT", INSTANCES + "/" + instance_id + "/heartbeat").code, 200)

    def test_back_in_service_expires(self):
        """Re-registering an OUT_OF_SERVICE instance as UP makes its lease count again."""
        self.register(reg(status="OUT_OF_SERVICE", ttl=10))
        self.clock.advance(100)
        instance_id = self.register(reg(status="UP", ttl=10))["id"]
        self.assertEqual(self.listed_ids(), [instance_id])
        for _ in range(11):
            self.clock.advance(1)
        self.assertEqual(self.listed_ids("?status=ALL"), [])
        self.assertEqual(self.store.stats()["instances"], {"default": 0})


class BlockingReadTests(RegistryTestCase):
    """Blocking reads with wait and index (SPEC B1)."""

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.first = self.register(reg("web", "a"))["id"]

    def test_newer_index_answers_at_once(self):
        """When the index is already greater than N, the read answers at once."""
        d = self.start(b"GET", INSTANCES + "?wait=30s&index=0")
        answer = self.finish(d)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"a8-index"), "1")
        self.assertEqual([i["id"] for i in answer.json()["instances"]], [self.first])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waits_for_change(self):
        """At index N, the read waits and answers as soon as a registration changes it."""
        d = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        self.http.flush()
        self.assertNoResult(d)
        self.assertEqual(self.store.stats()["waiters"], 1)
        second = self.register(reg("web", "b"))["id"]
        answer = self.finish(d)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"a8-index"), "2")
        self.assertEqual(sorted(i["id"] for i in answer.json()["instances"]),
                         sorted([self.first, second]))
        self.assertEqual(self.store.stats()["waiters"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deregistration_wakes(self):
        """A deregistration wakes a blocking read."""
        d = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        self.http.flush()
        self.assertNoResult(d)
        self.request(b"DELETE", INSTANCES + "/" + self.first)
        answer = self.finish(d)
        self.assertEqual((answer.header(b"a8-index"), answer.json()), ("2", {"instances": []}))

    def test_times_out_unchanged(self):
        """When wait runs out with no change, the read answers with the unchanged state."""
        d = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        self.http.flush()
        self.clock.advance(29.9)
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        answer = self.finish(d)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"a8-index"), "1")
        self.assertEqual([i["id"] for i in answer.json()["instances"]], [self.first])
        self.assertEqual(self.store.stats()["waiters"], 0)

    def test_heartbeat_does_not_wake(self):
        """A heartbeat changes nothing a reader sees, so it does not wake a blocking read."""
        d = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        self.http.flush()
        self.request(b"PUT", INSTANCES + "/" + self.first + "/heartbeat")
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.assertEqual(self.finish(d).code, 200)

    def test_other_namespace_does_not_wake(self):
        """A change in another namespace does not wake a blocking read."""
        self.auth = Authenticator(("default", "trusted"), self.clock)
        self.api = RegistryAPI(self.store, self.auth, self.clock)
        self.http = StubTreq(self.api.resource())
        d = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        self.http.flush()
        self.register(reg("web", "x"), token="other")
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.assertEqual(self.finish(d).header(b"a8-index"), "1")

    def test_filtered_read_woken_by_namespace_change(self):
        """The index is per namespace: a change of another service wakes a filtered read,
        which still lists only what its filter selects."""
        d = self.start(b"GET", INSTANCES + "?service_name=web&wait=30s&index=1")
        self.http.flush()
        self.register(reg("db", "z"))
        answer = self.finish(d)
        self.assertEqual(answer.header(b"a8-index"), "2")
        self.assertEqual([i["id"] for i in answer.json()["instances"]], [self.first])

    def test_wait_is_capped(self):
        """A wait longer than ten minutes is cut to ten minutes."""
        d = self.start(b"GET", INSTANCES + "?wait=1h&index=1")
        self.http.flush()
        self.clock.advance(599)
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.finish(d).code, 200)

    def test_without_wait(self):
        """Without wait, index alone does not block."""
        answer = self.finish(self.start(b"GET", INSTANCES + "?index=1"))
        self.assertEqual((answer.code, answer.header(b"a8-index")), (200, "1"))

    def test_without_index(self):
        """Without index, wait alone does not block."""
        answer = self.finish(self.start(b"GET", INSTANCES + "?wait=30s"))
        self.assertEqual((answer.code, answer.header(b"a8-index")), (200, "1"))

    def test_services_blocking(self):
        """GET /api/v1/services is a blocking read too."""
        d = self.start(b"GET", "/api/v1/services?wait=10s&index=1")
        self.http.flush()
        self.assertNoResult(d)
        self.register(reg("db", "z"))
        answer = self.finish(d)
        self.assertEqual(answer.json(), {"services": ["db", "web"]})
        self.assertEqual(answer.header(b"a8-index"), "2")

    def test_service_blocking(self):
        """GET /api/v1/services/{name} is a blocking read too."""
        d = self.start(b"GET", "/api/v1/services/web?wait=10s&index=1")
        self.http.flush()
        self.assertNoResult(d)
        self.register(reg("web", "b"))
        answer = self.finish(d)
        self.assertEqual(len(answer.json()["instances"]), 2)

    def test_client_gone(self):
        """When the client goes away, the blocking read leaves no waiter and no timer."""
        d = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        self.http.flush()
        self.assertEqual(self.store.stats()["waiters"], 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.http.flush()
        failure = self.failureResultOf(d)
        self.assertTrue(failure.check(CancelledError, ResponseNeverReceived))
        self.assertEqual(self.store.stats()["waiters"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The server still answers later requests.
        self.register(reg("web", "b"))
        self.assertEqual(len(self.listing()), 2)


class GroupedBlockingReadTests(RegistryTestCase):
    """Identical blocking reads wait as one group: one store waiter, one encoding."""

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.first = self.register(reg("web", "a"))["id"]

    def test_hundred_readers_one_waiter(self):
        """A hundred identical reads hold one store waiter, are counted as a hundred, and
        all get the same answer; another query is another group."""
        same = [self.start(b"GET", INSTANCES + "?service_name=web&wait=30s&index=1")
                for _ in range(100)]
        other = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        self.http.flush()
        self.assertEqual(self.store.stats()["waiters"], 2)
        text = self.request(b"GET", "/metrics").body.decode("utf-8")
        self.assertEqual(sample_value(text, "a8_registry_blocking_reads"), 101)
        self.register(reg("web", "b"))
        answers = [self.finish(d) for d in same]
        self.assertEqual({(a.code, a.header(b"a8-index")) for a in answers}, {(200, "2")})
        self.assertEqual(len({a.body for a in answers}), 1)
        self.assertEqual(len(answers[0].json()["instances"]), 2)
        self.assertEqual(self.finish(other).header(b"a8-index"), "2")
        self.assertEqual(self.store.stats()["waiters"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_encoding(self):
        """The group's answer is encoded once, however many readers it has."""
        import amalgam8.registry.api as api_module

        encodings = []
        original = api_module._instances_body

        def counting(*args):
            encodings.append(args)
            return original(*args)

        self.patch(api_module, "_instances_body", counting)
        waiting = [self.start(b"GET", INSTANCES + "?wait=30s&index=1") for _ in range(10)]
        self.http.flush()
        self.register(reg("web", "b"))
        for d in waiting:
            self.assertEqual(self.finish(d).code, 200)
        self.assertEqual(len(encodings), 1)

    def test_reader_leaves_group(self):
        """A reader that goes away leaves its group; the others still wait and are
        answered; the last one out cancels the store waiter."""
        first = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        second = self.start(b"GET", INSTANCES + "?wait=30s&index=1")
        self.http.flush()
        first.cancel()
        self.http.flush()
        self.failureResultOf(first)
        self.assertEqual(self.store.stats()["waiters"], 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(30)
        self.assertEqual(self.finish(second).header(b"a8-index"), "1")
        self.assertEqual(self.store.stats()["waiters"], 0)

    def test_own_timers(self):
        """Each reader of a group has its own wait: the shorter one is answered first."""
        short = self.start(b"GET", INSTANCES + "?wait=10s&index=1")
        long = self.start(b"GET", INSTANCES + "?wait=20s&index=1")
        self.http.flush()
        self.clock.advance(10)
        self.assertEqual(self.finish(short).header(b"a8-index"), "1")
        self.assertNoResult(long)
        self.register(reg("web", "b"))
        self.assertEqual(self.finish(long).header(b"a8-index"), "2")


class LateBlockingReadTests(BlockingReadTests):
    """The same blocking reads on a store whose answers come later."""

    late = True


class LateGroupedBlockingReadTests(GroupedBlockingReadTests):
    """The same grouped blocking reads on a store whose answers come later."""

    late = True


class ExpiryWakesTests(RegistryTestCase):
    """An expiry is a change: it wakes blocking reads."""

    start_store = True

    def test_expiry_wakes(self):
        """When an instance expires, a blocking read answers without it."""
        self.register(reg(ttl=10))
        d = self.start(b"GET", INSTANCES + "?wait=60s&index=1")
        self.http.flush()
        for _ in range(11):
            self.clock.advance(1)
        answer = self.finish(d)
        self.assertEqual(answer.json(), {"instances": []})
        self.assertEqual(answer.header(b"a8-index"), "2")


class RequestIdTests(RegistryTestCase):
    """Every response carries A8-Request-Id."""

    def test_echoed(self):
        """A request's A8-Request-Id is echoed."""
        answer = self.request(b"GET", INSTANCES, headers={b"a8-request-id": b"abc-123"})
        self.assertEqual(answer.header(b"a8-request-id"), "abc-123")

    def test_echoed_on_error(self):
        """An error answer echoes A8-Request-Id too."""
        answer = self.request(b"POST", INSTANCES, data=b"{", headers={b"a8-request-id": b"e1"})
        self.assertEqual((answer.code, answer.header(b"a8-request-id")), (400, "e1"))

    def test_generated(self):
        """Without one, each response gets a fresh UUID."""
        first = self.request(b"GET", "/uptime").header(b"a8-request-id")
        second = self.request(b"GET", "/uptime").header(b"a8-request-id")
        self.assertEqual(str(uuid.UUID(first)), first)
        self.assertNotEqual(first, second)

    def test_unknown_route(self):
        """An unknown path gets 404 with an error body and a request id."""
        answer = self.request(b"GET", "/nope")
        self.assertError(answer, 404)
        self.assertIsNotNone(answer.header(b"a8-request-id"))


class LivenessTests(RegistryTestCase):
    """GET /uptime and GET /."""

    def test_uptime(self):
        """/uptime answers 200 with the seconds since the server started and the id of the
        process that answered (the processes of C{--processes N} share one port)."""
        self.clock.advance(12.5)
        answer = self.request(b"GET", "/uptime")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json(), {"status": "up", "uptime": 12.5, "pid": os.getpid()})

    def test_root(self):
        """/ answers 200."""
        self.assertEqual(self.request(b"GET", "/").code, 200)

    def test_no_token_needed(self):
        """Liveness needs no token even in trusted mode."""
        self.api = RegistryAPI(self.store, Authenticator(("trusted",), self.clock), self.clock)
        self.http = StubTreq(self.api.resource())
        self.assertEqual(self.request(b"GET", "/uptime").code, 200)

    def test_wrong_method(self):
        """A method a route does not take gets 405 with Allow and an error body."""
        answer = self.request(b"PATCH", INSTANCES, json_body={})
        self.assertError(answer, 405)
        self.assertIn("POST", answer.header(b"allow"))


def metric_samples(text):
    """All samples of a Prometheus text exposition, as (name, labels, value)."""
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def sample_value(text, name, **labels):
    values = [value for sample_name, sample_labels, value in metric_samples(text)
              if sample_name == name and sample_labels == labels]
    return values[0] if values else None


def request_count(text, route, method, status):
    return sample_value(text, "a8_registry_http_requests_total",
                        route=route, method=method, status=status)


class LateListingTests(ListingTests):
    """The same listings on a store whose answers come later."""

    late = True


class LateServicesTests(ServicesTests):
    """The same service reads on a store whose answers come later."""

    late = True


class LateExpiryWakesTests(ExpiryWakesTests):
    """An expiry wakes blocking reads on a store whose answers come later too."""

    late = True


class MetricsTests(RegistryTestCase):
    """GET /metrics in the Prometheus text format (with the metrics token: every series)."""

    modes = ("trusted",)
    start_store = True
    metrics_token = "scrape-me"

    def scrape(self):
        answer = self.request(b"GET", "/metrics", token=self.metrics_token)
        self.assertEqual(answer.code, 200)
        self.assertTrue(answer.header(b"content-type").startswith("text/plain"))
        return answer.body.decode("utf-8")

    def test_instances_by_namespace(self):
        """a8_registry_instances counts the instances of each namespace."""
        self.register(reg(value="1"), token="a")
        self.register(reg(value="2"), token="a")
        self.register(reg(value="1"), token="b")
        text = self.scrape()
        self.assertEqual(sample_value(text, "a8_registry_instances", namespace="a"), 2)
        self.assertEqual(sample_value(text, "a8_registry_instances", namespace="b"), 1)
        self.assertIn('a8_registry_instances{namespace="a"} 2.0', text)

    def test_counters(self):
        """Registrations, heartbeats, deregistrations and expirations are counted."""
        a = self.register(reg(value="1"), token="a")["id"]
        self.register(reg(value="1"), token="a")
        self.register(reg(value="2", ttl=10), token="a")
        self.request(b"PUT", INSTANCES + "/" + a + "/heartbeat", token="a")
        self.request(b"DELETE", INSTANCES + "/" + a, token="a")
        for _ in range(12):
            self.clock.advance(1)
        text = self.scrape()
        self.assertEqual(sample_value(text, "a8_registry_registrations_total"), 3)
        self.assertEqual(sample_value(text, "a8_registry_heartbeats_total"), 1)
        self.assertEqual(sample_value(text, "a8_registry_deregistrations_total"), 1)
        self.assertEqual(sample_value(text, "a8_registry_expirations_total"), 1)

    def test_requests_by_route_and_status(self):
        """Requests are counted by route, method and status."""
        self.register(token="a")
        self.register(token="a")
        self.request(b"POST", INSTANCES, data=b"{", token="a")
        self.request(b"GET", INSTANCES, token="a")
        self.request(b"GET", INSTANCES)
        self.request(b"GET", "/nowhere")
        text = self.scrape()
        self.assertEqual(request_count(text, "register", "POST", "201"), 2)
        self.assertEqual(request_count(text, "register", "POST", "400"), 1)
        self.assertEqual(request_count(text, "instances", "GET", "200"), 1)
        self.assertEqual(request_count(text, "instances", "GET", "401"), 1)
        self.assertEqual(request_count(text, "unmatched", "GET", "404"), 1)

    def test_blocking_reads_gauge(self):
        """a8_registry_blocking_reads counts the reads waiting for a change."""
        d = self.start(b"GET", INSTANCES + "?wait=30s&index=0", token="a")
        self.http.flush()
        self.assertEqual(sample_value(self.scrape(), "a8_registry_blocking_reads"), 1)
        self.register(token="a")
        self.finish(d)
        self.assertEqual(sample_value(self.scrape(), "a8_registry_blocking_reads"), 0)


class MetricsTokenTests(RegistryTestCase):
    """With a metrics token, GET /metrics needs it."""

    metrics_token = "scrape-me"

    def test_without_token(self):
        """Without the token, /metrics gets 401."""
        self.assertError(self.request(b"GET", "/metrics"), 401)
        self.assertError(self.request(b"GET", "/metrics", token="wrong"), 401)

    def test_with_token(self):
        """With the token, /metrics answers."""
        answer = self.request(b"GET", "/metrics", token="scrape-me")
        self.assertEqual(answer.code, 200)
        self.assertIn("a8_registry_http_requests_total", answer.body.decode("utf-8"))


class RequireHTTPSTests(RegistryTestCase):
    """A8_REQUIRE_HTTPS: plain HTTP is redirected (301) to https."""

    require_https = True

    def test_redirect(self):
        """A plain-HTTP request is redirected to the same URL over https."""
        answer = self.request(b"GET", INSTANCES + "?service_name=web")
        self.assertEqual(answer.code, 301)
        self.assertEqual(answer.header(b"location"),
                         "https://registry.test/api/v1/instances?service_name=web")

    def test_register_redirected_changes_nothing(self):
        """A plain-HTTP registration is redirected and stores nothing."""
        self.assertRejected(301, b"POST", INSTANCES, json_body=reg())

    def test_heartbeat_redirected(self):
        """A plain-HTTP heartbeat is redirected too (it takes no short road)."""
        answer = self.request(b"PUT", INSTANCES + "/0123456789abcdef/heartbeat")
        self.assertEqual(answer.code, 301)

    def test_forwarded_proto_https(self):
        """X-Forwarded-Proto: https counts as HTTPS."""
        answer = self.request(b"POST", INSTANCES, json_body=reg(),
                              headers={b"x-forwarded-proto": b"https"})
        self.assertEqual(answer.code, 201)
        self.assertTrue(answer.header(b"location").startswith("https://"))

    def test_forwarded_proto_http(self):
        """X-Forwarded-Proto: http is still redirected."""
        answer = self.request(b"GET", "/uptime", headers={b"x-forwarded-proto": b"http"})
        self.assertEqual(answer.code, 301)

    def test_https(self):
        """A request over TLS is answered."""
        answer = self.request(b"GET", "/uptime", base="https://registry.test")
        self.assertEqual(answer.code, 200)


class NamespaceIsolationTests(RegistryTestCase):
    """In trusted mode, the token is the namespace; namespaces never see each other."""

    modes = ("trusted",)

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.a = self.register(reg("web", "10.0.0.1:80"), token="a")["id"]

    def test_invisible(self):
        """b lists nothing of a, neither instances nor services."""
        self.assertEqual(self.listing("?status=ALL", token="b"), [])
        self.assertEqual(self.request(b"GET", "/api/v1/services", token="b").json(),
                         {"services": []})
        self.assertError(self.request(b"GET", "/api/v1/services/web", token="b"), 404)
        self.assertEqual(self.listed_ids(token="a"), [self.a])

    def test_no_heartbeat(self):
        """b cannot heartbeat a's instance (410)."""
        self.assertRejected(410, b"PUT", INSTANCES + "/" + self.a + "/heartbeat", token="b")

    def test_no_delete(self):
        """b cannot delete a's instance (410)."""
        self.assertRejected(410, b"DELETE", INSTANCES + "/" + self.a, token="b")
        self.assertEqual(self.listed_ids(token="a"), [self.a])

    def test_same_triple_apart(self):
        """The same triple registered in b is b's own instance; a's is untouched."""
        before = self.listing(token="a")
        self.clock.advance(5)
        b = self.register(reg("web", "10.0.0.1:80", tags=["b"]), token="b")["id"]
        self.assertEqual(b, self.a)
        self.assertEqual(self.listing(token="a"), before)
        self.assertEqual(self.listing(token="b")[0]["tags"], ["b"])
        self.request(b"DELETE", INSTANCES + "/" + b, token="b")
        self.assertEqual(self.listing(token="a"), before)

    def test_missing_token(self):
        """Without a token, trusted mode answers 401 with WWW-Authenticate."""
        answer = self.assertRejected(401, b"POST", INSTANCES, json_body=reg())
        self.assertTrue(answer.header(b"www-authenticate").lower().startswith("bearer"))
        self.assertError(self.request(b"GET", INSTANCES), 401)


class QuotaTests(RegistryTestCase):
    """A namespace holds at most C{capacity} instances."""

    modes = ("trusted",)
    capacity = 2

    def test_full(self):
        """A new instance beyond the capacity gets 403 and changes nothing."""
        self.register(reg(value="1"), token="a")
        self.register(reg(value="2"), token="a")
        self.assertRejected(403, b"POST", INSTANCES, json_body=reg(value="3"), token="a")

    def test_reregister_at_capacity(self):
        """Re-registering an existing instance of a full namespace is allowed."""
        self.register(reg(value="1"), token="a")
        self.register(reg(value="2"), token="a")
        self.register(reg(value="2", tags=["new"]), token="a")
        self.assertEqual(len(self.listing(token="a")), 2)

    def test_per_namespace(self):
        """The capacity counts per namespace."""
        self.register(reg(value="1"), token="a")
        self.register(reg(value="2"), token="a")
        self.register(reg(value="1"), token="b")
        self.register(reg(value="2"), token="b")
        self.assertEqual(self.store.stats()["instances"], {"a": 2, "b": 2})

    def test_room_after_delete(self):
        """Deleting an instance makes room again."""
        first = self.register(reg(value="1"), token="a")["id"]
        self.register(reg(value="2"), token="a")
        self.request(b"DELETE", INSTANCES + "/" + first, token="a")
        self.register(reg(value="3"), token="a")

    def test_room_after_expiry(self):
        """An expired instance does not count against the capacity."""
        self.register(reg(value="1", ttl=10), token="a")
        self.register(reg(value="2", status="OUT_OF_SERVICE"), token="a")
        self.clock.advance(11)
        self.register(reg(value="3"), token="a")
        self.assertEqual(len(self.listing("?status=ALL", token="a")), 2)


class BadRegistrationTests(RegistryTestCase):
    """Every malformed registration is refused with a clear error and stores nothing."""

    def setUp(self):
        RegistryTestCase.setUp(self)
        # Something already stored, so that "unchanged" means something.
        self.register(reg("existing", "10.9.9.9:80", tags=["v1"]))

    def reject(self, body, status=400, **kwargs):
        return self.assertRejected(status, b"POST", INSTANCES, json_body=body, **kwargs)

    def test_not_json(self):
        """A body that is not JSON gets 400."""
        self.assertRejected(400, b"POST", INSTANCES, data=b"{service_name: web")

    def test_not_utf8(self):
        """A body that is not UTF-8 gets 400."""
        self.assertRejected(400, b"POST", INSTANCES, data=b'{"service_name": "\xff\xfe"}')

    def test_nan(self):
        """NaN is not JSON: 400."""
        self.assertRejected(400, b"POST", INSTANCES,
                            data=b'{"service_name":"web","endpoint":{"type":"http",'
                                 b'"value":"a"},"ttl":NaN}')

    def test_empty_body(self):
        """An empty body gets 400."""
        self.assertRejected(400, b"POST", INSTANCES, data=b"")

    def test_wrong_content_type(self):
        """A JSON body sent as text/plain gets 415."""
        self.assertRejected(415, b"POST", INSTANCES, json_body=reg(),
                            content_type=b"text/plain")

    def test_form_content_type(self):
        """A form content type gets 415."""
        self.assertRejected(415, b"POST", INSTANCES, json_body=reg(),
                            content_type=b"application/x-www-form-urlencoded")

    def test_no_content_type(self):
        """A body without a content type gets 415."""
        self.assertRejected(415, b"POST", INSTANCES, json_body=reg(), content_type=None)

    def test_too_large(self):
        """A body over 1 MiB gets 413."""
        data = json.dumps(reg(metadata="x" * MAX_BODY)).encode("utf-8")
        self.assertGreater(len(data), MAX_BODY)
        self.assertRejected(413, b"POST", INSTANCES, data=data)

    def test_not_an_object(self):
        """A JSON body that is not an object gets 400."""
        for body in ([reg()], "web", 42, None, True):
            self.reject(body)

    def test_missing_service_name(self):
        """A body without service_name gets 400."""
        body = reg()
        del body["service_name"]
        self.reject(body)

    def test_empty_service_name(self):
        """An empty or blank service_name gets 400."""
        self.reject(reg(""))
        self.reject(reg("   "))

    def test_null_service_name(self):
        """A null service_name gets 400."""
        self.reject(reg(None))

    def test_service_name_number(self):
        """A numeric service_name gets 400."""
        self.reject(reg(42))

    def test_service_name_too_long(self):
        """A service_name over 64 bytes gets 400 (bytes, not characters)."""
        self.reject(reg("s" * 65))
        self.reject(reg("\u00e9" * 33))

    def test_service_name_slash(self):
        """A service_name with '/' gets 400 (it would make ids ambiguous)."""
        self.reject(reg("a/http/b", "c"))

    def test_service_name_control(self):
        """A service_name with control characters gets 400."""
        self.reject(reg("web\n"))

    def test_missing_endpoint(self):
        """A body without endpoint gets 400."""
        self.reject({"service_name": "web"})

    def test_endpoint_list(self):
        """An endpoint that is a list gets 400."""
        self.reject({"service_name": "web", "endpoint": ["http", "10.0.0.1:80"]})

    def test_endpoint_string(self):
        """An endpoint that is a string gets 400."""
        self.reject({"service_name": "web", "endpoint": "http://10.0.0.1:80"})

    def test_endpoint_empty(self):
        """An empty endpoint object gets 400."""
        self.reject({"service_name": "web", "endpoint": {}})

    def test_endpoint_type_missing(self):
        """An endpoint without type gets 400."""
        self.reject({"service_name": "web", "endpoint": {"value": "a"}})

    def test_endpoint_type_number(self):
        """A numeric endpoint.type gets 400."""
        self.reject(reg(endpoint_type=1))

    def test_endpoint_type_unknown(self):
        """An endpoint.type outside tcp udp http https user gets 400."""
        self.reject(reg(endpoint_type="ftp"))
        self.reject(reg(endpoint_type=""))

    def test_endpoint_value_missing(self):
        """An endpoint without value gets 400."""
        self.reject({"service_name": "web", "endpoint": {"type": "http"}})

    def test_endpoint_value_empty(self):
        """An empty endpoint.value gets 400."""
        self.reject(reg(value=""))

    def test_endpoint_value_number(self):
        """A numeric endpoint.value gets 400."""
        self.reject(reg(value=8080))

    def test_endpoint_value_too_long(self):
        """An endpoint.value over 128 bytes gets 400."""
        self.reject(reg(value="v" * 129))

    def test_tags_not_list(self):
        """tags that are not a list get 400."""
        self.reject(reg(tags="v1"))
        self.reject(reg(tags={"v1": True}))

    def test_tags_not_strings(self):
        """tags with a non-string member get 400."""
        self.reject(reg(tags=["v1", 2]))
        self.reject(reg(tags=[None]))
        self.reject(reg(tags=[["v1"]]))

    def test_tags_empty_string(self):
        """An empty tag gets 400."""
        self.reject(reg(tags=[""]))

    def test_tags_too_many(self):
        """More than 64 tags get 400."""
        self.reject(reg(tags=["t{}".format(n) for n in range(65)]))

    def test_tag_too_long(self):
        """A tag over 128 bytes gets 400."""
        self.reject(reg(tags=["t" * 129]))

    def test_ttl_string(self):
        """A ttl given as a string gets 400."""
        self.reject(reg(ttl="30"))
        self.reject(reg(ttl="30s"))

    def test_ttl_bool(self):
        """A boolean ttl gets 400."""
        self.reject(reg(ttl=True))

    def test_ttl_negative(self):
        """A negative ttl gets 400."""
        self.reject(reg(ttl=-1))

    def test_ttl_fraction(self):
        """A ttl that is not a whole number of seconds gets 400."""
        self.reject(reg(ttl=12.5))

    def test_ttl_infinite(self):
        """A ttl too large for a float (1e400, infinite once decoded) gets 400."""
        self.assertRejected(400, b"POST", INSTANCES,
                            data=json.dumps(reg()).encode()[:-1] + b', "ttl": 1e400}')

    def test_ttl_list(self):
        """A ttl that is a list gets 400."""
        self.reject(reg(ttl=[30]))

    def test_status_number(self):
        """A numeric status gets 400."""
        self.reject(reg(status=1))

    def test_status_unknown(self):
        """A status other than UP, STARTING, OUT_OF_SERVICE gets 400."""
        self.reject(reg(status="DOWN"))
        self.reject(reg(status=""))

    def test_metadata_too_large(self):
        """Metadata over 1024 bytes serialized gets 400."""
        self.reject(reg(metadata={"k": "x" * 1017}))

    def test_metadata_deep(self):
        """Deeply nested metadata over the limit gets 400."""
        metadata = []
        for _ in range(600):
            metadata = [metadata]
        self.reject(reg(metadata=metadata))

    def test_bad_token(self):
        """A registration with a token other than C{default} gets 401 in default mode."""
        self.reject(reg(), status=401, token="someone")

    def test_basic_scheme(self):
        """A registration with Basic credentials gets 401."""
        self.reject(reg(), status=401, headers={b"authorization": b"Basic ZGVmYXVsdDo="})

    def test_empty_bearer(self):
        """A registration with an empty bearer token gets 401."""
        self.reject(reg(), status=401, headers={b"authorization": b"Bearer "})

    def test_default_token(self):
        """The token C{default} is accepted in default mode (for contrast)."""
        self.register(token="default")


class BadQueryTests(RegistryTestCase):
    """Malformed listings are refused with 400 and change nothing."""

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.register(reg("web", "a", tags=["v1"]))

    def test_unknown_filter(self):
        """An unknown filter name gets 400."""
        self.assertRejected(400, b"GET", INSTANCES + "?colour=red")
        self.assertRejected(400, b"GET", INSTANCES + "?service=web")

    def test_unknown_filter_services(self):
        """GET /api/v1/services takes only wait and index."""
        self.assertRejected(400, b"GET", "/api/v1/services?service_name=web")

    def test_unknown_field(self):
        """An unknown fields name gets 400."""
        self.assertRejected(400, b"GET", INSTANCES + "?fields=id,colour")
        self.assertRejected(400, b"GET", "/api/v1/services/web?fields=colour")

    def test_empty_field(self):
        """An empty fields value gets 400."""
        self.assertRejected(400, b"GET", INSTANCES + "?fields=")

    def test_unknown_status(self):
        """An unknown status filter gets 400."""
        self.assertRejected(400, b"GET", INSTANCES + "?status=DOWN")

    def test_bad_wait(self):
        """A wait that is not a duration gets 400."""
        for wait in ("soon", "-1s", "30x", "1e3", "inf", ""):
            self.assertRejected(400, b"GET", INSTANCES + "?index=1&wait=" + wait)
        self.assertRejected(400, b"GET", "/api/v1/services?index=1&wait=soon")

    def test_bad_index(self):
        """An index that is not a non-negative integer gets 400."""
        for index in ("abc", "-1", "1.5", ""):
            self.assertRejected(400, b"GET", INSTANCES + "?wait=1s&index=" + index)
        self.assertRejected(400, b"GET", "/api/v1/services/web?wait=1s&index=x")

    def test_bad_query_no_waiter(self):
        """A refused blocking read leaves no waiter and no timer behind."""
        self.assertRejected(400, b"GET", INSTANCES + "?wait=30s&index=1&colour=red")
        self.assertEqual(self.store.stats()["waiters"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_not_utf8(self):
        """A query that is not UTF-8 gets 400."""
        self.assertRejected(400, b"GET", INSTANCES + "?service_name=%ff")


class JWTTests(RegistryTestCase):
    """A8_AUTH_MODE=jwt through the API."""

    modes = ("jwt",)

    def token(self, **claims):
        claims.setdefault("namespace", "a")
        claims.setdefault("exp", NOW + 60)
        return make_jwt(claims)

    def test_valid(self):
        """A valid JWT registers in its namespace."""
        self.register(token=self.token())
        self.assertEqual(self.store.stats()["instances"], {"a": 1})
        self.assertEqual(len(self.listing(token=self.token())), 1)
        self.assertEqual(self.listing(token=self.token(namespace="b")), [])

    def test_missing(self):
        """No token gets 401."""
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg())

    def test_garbled(self):
        """A token that is not a JWT gets 401."""
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(), token="not-a-jwt")
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(), token="a.b.c")
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(),
                            token=self.token()[:-4])

    def test_expired(self):
        """An expired JWT gets 401."""
        token = self.token(exp=NOW + 10)
        self.register(token=token)
        self.clock.advance(10)
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg("other"), token=token)
        self.assertRejected(401, b"GET", INSTANCES, token=token)

    def test_alg_none(self):
        """A JWT with alg none gets 401."""
        token = jwt.encode({"namespace": "a"}, None, algorithm="none")
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(), token=token)

    def test_wrong_key(self):
        """A JWT signed with another key gets 401."""
        token = make_jwt({"namespace": "a", "exp": NOW + 60},
                         secret="another-secret-that-is-long-enough-too")
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(), token=token)

    def test_no_namespace(self):
        """A JWT without a namespace claim, or with an empty one, gets 401."""
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(),
                            token=make_jwt({"exp": NOW + 60}))
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(),
                            token=self.token(namespace=""))

    def test_basic(self):
        """Basic credentials get 401."""
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(),
                            headers={b"authorization": b"Basic YTpi"})

    def test_heartbeat_rejected(self):
        """An expired JWT cannot heartbeat or delete."""
        token = self.token(exp=NOW + 10)
        instance_id = self.register(token=token)["id"]
        self.clock.advance(10)
        self.assertRejected(401, b"PUT", INSTANCES + "/" + instance_id + "/heartbeat",
                            token=token)
        self.assertRejected(401, b"DELETE", INSTANCES + "/" + instance_id, token=token)


class JWTTrustedChainTests(RegistryTestCase):
    """A8_AUTH_MODE=jwt,trusted through the API."""

    modes = ("jwt", "trusted")

    def test_jwt_namespace(self):
        """A valid JWT gives its namespace claim."""
        self.register(token=make_jwt({"namespace": "team", "exp": NOW + 60}))
        self.assertEqual(self.store.stats()["instances"], {"team": 1})
        self.assertEqual(len(self.listing(token="team")), 1)

    def test_plain_token_trusted(self):
        """A token that is not a JWT falls through to trusted."""
        self.register(token="plain")
        self.assertEqual(self.store.stats()["instances"], {"plain": 1})

    def test_expired_not_passed_on(self):
        """An expired JWT is rejected, not taken as a trusted namespace."""
        token = make_jwt({"namespace": "team", "exp": NOW - 1})
        self.assertRejected(401, b"POST", INSTANCES, json_body=reg(), token=token)


_json_leaves = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=20))
json_values = st.recursive(
    _json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
_endpoints = json_values | st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["tcp", "udp", "http", "https", "user", "HTTP", "ftp"])
    | json_values,
    "value": st.text(max_size=140) | json_values,
})
registration_like = st.fixed_dictionaries({}, optional={
    "service_name": st.text(max_size=70) | json_values,
    "endpoint": _endpoints,
    "ttl": st.integers() | st.integers(min_value=2 ** 1000, max_value=10 ** 500)
    | st.floats() | json_values,
    "status": st.sampled_from(["UP", "starting", "OUT_OF_SERVICE", "DOWN"]) | json_values,
    "tags": st.lists(st.text(max_size=6), max_size=4) | json_values,
    "metadata": json_values,
})


class PropertyTests(SynchronousTestCase):
    """Properties over arbitrary input."""

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(body=json_values | registration_like)
    def test_no_5xx(self, body):
        """Any JSON body posted to /api/v1/instances gets a 201 or a 4xx with an Error
        body, never a 5xx; and a refused body changes nothing."""
        case = RegistryTestCase("snapshot")
        case.setUp()
        before = case.snapshot()
        data = json.dumps(body).encode("utf-8")
        answer = case.request(b"POST", INSTANCES, data=data)
        self.assertLess(answer.code, 500, answer.body)
        if answer.code == 201:
            self.assertEqual(len(case.listing("?status=ALL")), 1)
        else:
            self.assertIn(answer.code, (400, 413))
            self.assertEqual(list(json.loads(answer.body)), ["Error"])
            self.assertEqual(case.snapshot(), before)


class MetricsTenantTests(RegistryTestCase):
    """
    GET /metrics names tenants only to the metrics token or an admin JWT; anyone else sees
    the totals (issue 10, item 4).
    """

    modes = ("jwt", "trusted")
    start_store = True

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.register(reg(value="1"), token="tenant-a")
        self.register(reg(value="2"), token="tenant-a")
        self.register(reg(value="1"), token="tenant-b")

    def scrape(self, token=None):
        answer = self.request(b"GET", "/metrics", token=token)
        self.assertEqual(answer.code, 200)
        return answer.body.decode("utf-8")

    def assertTotals(self, text):
        """No sample has a namespace label, and the instances are summed."""
        self.assertEqual([s for s in metric_samples(text) if "namespace" in s[1]], [])
        self.assertNotIn("tenant-", text)
        self.assertEqual(sample_value(text, "a8_registry_instances"), 3)

    def test_anonymous(self):
        """Without credentials /metrics shows a8_registry_instances summed, no tenant."""
        self.assertTotals(self.scrape())

    def test_tenant_tokens(self):
        """A tenant's JWT, a bare trusted token and even a bare "admin" get the totals."""
        for token in (make_jwt({"namespace": "tenant-a"}), "tenant-a", "admin",
                      make_jwt({"namespace": "admin"},
                               secret="not-the-secret-at-all-0123456789")):
            self.assertTotals(self.scrape(token))

    def test_admin_jwt(self):
        """An admin JWT sees the series per namespace."""
        text = self.scrape(make_jwt({"namespace": "admin"}))
        self.assertEqual(sample_value(text, "a8_registry_instances", namespace="tenant-a"), 2)
        self.assertEqual(sample_value(text, "a8_registry_instances", namespace="tenant-b"), 1)
        self.assertIsNone(sample_value(text, "a8_registry_instances"))

    def test_other_series_unchanged(self):
        """The totals keep the series without a namespace label as they are."""
        text = self.scrape()
        self.assertEqual(sample_value(text, "a8_registry_registrations_total"), 3)
        self.assertEqual(sample_value(text, "a8_registry_http_requests_total",
                                      route="register", method="POST", status="201"), 3)


class MetricsTenantTokenTests(RegistryTestCase):
    """With a metrics token, its holder sees the series per namespace."""

    modes = ("jwt", "trusted")
    start_store = True
    metrics_token = "scrape-me"
    setUp = MetricsTenantTests.setUp

    def test_token(self):
        """The metrics token sees the series per namespace."""
        text = self.request(b"GET", "/metrics", token="scrape-me").body.decode("utf-8")
        self.assertEqual(sample_value(text, "a8_registry_instances", namespace="tenant-a"), 2)
        self.assertEqual(sample_value(text, "a8_registry_instances", namespace="tenant-b"), 1)

    def test_without_token(self):
        """Without the token (or with an admin JWT instead) /metrics is still 401."""
        self.assertEqual(self.request(b"GET", "/metrics").code, 401)
        self.assertEqual(self.request(b"GET", "/metrics",
                                      token=make_jwt({"namespace": "admin"})).code, 401)


class NotUTF8PathTests(RegistryTestCase):
    """
    A path whose percent-escapes are not UTF-8 gets the registry's JSON 400 with a request
    id on the Klein routes (Klein answered a text/html 400 and logged a traceback); the
    heartbeat's short road keeps its JSON 410 (such bytes spell no instance).
    """

    def assertNotUTF8(self, method, path):
        before = self.snapshot()
        answer = self.request(method, path, headers={b"a8-request-id": b"probe-ff"})
        self.assertEqual(answer.code, 400, answer.body)
        self.assertEqual(answer.header(b"content-type"), "application/json")
        self.assertEqual(answer.header(b"a8-request-id"), "probe-ff")
        self.assertEqual(answer.json(), {"Error": "the path is not UTF-8"})
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_services(self):
        self.assertNotUTF8(b"GET", "/api/v1/services/%ff")

    def test_instance(self):
        self.assertNotUTF8(b"DELETE", "/api/v1/instances/%ff")

    def test_heartbeat(self):
        self.register()
        before = self.snapshot()
        for path in ("/api/v1/instances/%ff/heartbeat", "/api/v1/instances/%C3%28/heartbeat"):
            answer = self.request(b"PUT", path, headers={b"a8-request-id": b"probe-ff"})
            self.assertEqual(answer.code, 410, answer.body)
            self.assertEqual(answer.header(b"content-type"), "application/json")
            self.assertEqual(answer.header(b"a8-request-id"), "probe-ff")
            self.assertEqual(list(answer.json()), ["Error"])
        answer = self.request(b"GET", "/api/v1/instances/%ff/heartbeat")
        self.assertEqual((answer.code, answer.header(b"allow")), (405, "PUT"))
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_utf8_escape_still_read(self):
        """A path escaped in good UTF-8 is still routed (410: no such instance)."""
        answer = self.request(b"PUT", "/api/v1/instances/%C3%A9/heartbeat")
        self.assertEqual(answer.code, 410, answer.body)
        self.assertEqual(list(answer.json()), ["Error"])


class NotFiniteNumberTests(RegistryTestCase):
    """A JSON number out of range (C{1e400}) is refused with 400 and stores nothing."""

    def test_registration(self):
        before = self.snapshot()
        body = json.dumps(reg()).encode("utf-8")[:-1] + b', "metadata": {"x": 1e400}}'
        answer = self.request(b"POST", INSTANCES, data=body)
        self.assertEqual(answer.code, 400, answer.body)
        self.assertEqual(list(answer.json()), ["Error"])
        self.assertEqual(self.snapshot(), before)
