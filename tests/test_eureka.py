# -*- test-case-name: tests.test_eureka -*-
"""
Tests for L{amalgam8.registry.eureka}: the Eureka-compatible API, driven with recorded Eureka
request and answer payloads (tests/eureka_payloads/, see its README) through the registry's
API, over a L{MemoryStore} and a L{Clock}.
"""

import json
import os
from xml.etree import ElementTree

from hypothesis import HealthCheck, given, settings, strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.adapters.merge import CatalogMerge
from amalgam8.registry.api import RegistryAPI, TTLPolicy
from amalgam8.registry.eureka import (
    RETENTION,
    RecentChanges,
    hashcode,
    parse_instance,
    parse_xml,
)
from amalgam8.registry.model import Instance, parse_registration
from amalgam8.testing.catalogs import StaticCatalog
from amalgam8.web import MAX_BODY
from tests.test_registry_api import RegistryTestCase

PAYLOADS = os.path.join(os.path.dirname(__file__), "eureka_payloads")
BASE = "/api/eureka/{}/v2"
XML = b"application/xml"
JSON = b"application/json"
HOST1 = "/apps/WEB/host1:WEB:8080"
#: The elements whose values are times: they must be whole numbers, zero where the recorded
#: answer has zero, and are otherwise free.
TIMES = frozenset({"registrationTimestamp", "lastRenewalTimestamp", "evictionTimestamp",
                   "serviceUpTimestamp", "lastUpdatedTimestamp", "lastDirtyTimestamp",
                   "versions__delta"})


def payload(name):
    with open(os.path.join(PAYLOADS, name), "rb") as f:
        return f.read()


def _shape(value):
    """The keys and value types of a JSON value, recursively (every item of a list)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def outline(element):
    """
    The structure of an XML element: its name, its attributes' names and its children's
    outlines in order (a metadata map's entries sorted: a map has no order).
    """
    children = [outline(child) for child in element]
    if element.tag == "metadata":
        children.sort()
    return (element.tag, tuple(sorted(element.attrib)), tuple(children))


def leaves(element, path=""):
    """C{(path, value)} of every attribute and text leaf of an XML element."""
    path = path + "/" + element.tag
    for name, value in sorted(element.attrib.items()):
        yield path + "@" + name, value
    children = list(element)
    if not children:
        yield path, (element.text or "").strip()
    seen = {}
    for child in children:
        n = seen[child.tag] = seen.get(child.tag, -1) + 1
        yield from leaves(child, path + "[{}]".format(n) if child.tag == "instance" else path)


def json_leaves(value, path=""):
    """C{(path, value)} of every scalar of a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_leaves(item, path + "/" + key)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from json_leaves(item, path + "[{}]".format(n))
    else:
        yield path, value


class PayloadAssertions:
    """Comparisons of our answers with the recorded ones."""

    def assertSameLeaves(self, ours, recorded):
        """
        The same paths; the same values but for times, which are whole numbers (zero
        where the recorded one is).
        """
        ours, recorded = dict(ours), dict(recorded)
        self.assertEqual(sorted(ours), sorted(recorded))
        for path, value in recorded.items():
            name = path.rsplit("/", 1)[-1]
            if name in TIMES:
                self.assertRegex(str(ours[path]), r"\A[0-9]+\Z", path)
                self.assertEqual(str(ours[path]) == "0", str(value) == "0", path)
            else:
                self.assertEqual(ours[path], value, path)

    def assertLikeRecordedXML(self, body, name):
        """C{body} (our XML answer) has the structure and values of the recorded C{name}."""
        ours = ElementTree.fromstring(body)
        recorded = ElementTree.fromstring(payload(name))
        self.assertEqual(outline(ours), outline(recorded))
        self.assertSameLeaves(leaves(ours), leaves(recorded))

    def assertLikeRecordedJSON(self, value, name):
        """C{value} (our JSON answer) has the shape and values of the recorded C{name}."""
        recorded = json.loads(payload(name))
        self.assertEqual(_shape(value), _shape(recorded))
        self.assertSameLeaves(json_leaves(value), json_leaves(recorded))


class EurekaTestCase(RegistryTestCase, PayloadAssertions):
    """A registry in C{trusted} mode (token = namespace) with Eureka requests."""

    start_store = True
    modes = ("trusted",)

    def eureka(self, method, path, data=None, content_type=JSON, accept=None,
               namespace="team"):
        headers = {b"accept": accept} if accept else None
        return self.request(method, BASE.format(namespace) + path, data=data,
                            content_type=content_type if data is not None else None,
                            headers=headers)

    def register_payload(self, name, namespace="team", app="WEB"):
        content_type = XML if name.endswith(".xml") else JSON
        answer = self.eureka("POST", "/apps/" + app, payload(name), content_type,
                             namespace=namespace)
        self.assertEqual(answer.code, 204, answer.body)

    def register_body(self, body, app="WEB", namespace="team"):
        answer = self.eureka("POST", "/apps/" + app, json.dumps(body).encode(),
                             namespace=namespace)
        self.assertEqual(answer.code, 204, answer.body)

    def register_both(self, namespace="team"):
        self.register_payload("register.xml", namespace)
        self.register_payload("register.json", namespace)

    def apps(self, path="/apps", namespace="team"):
        answer = self.eureka("GET", path, namespace=namespace)
        self.assertEqual(answer.code, 200, answer.body)
        return answer.json()["applications"]

    def delta(self, namespace="team"):
        return self.apps("/apps/delta", namespace)

    def changes(self, namespace="team"):
        """The C{(actionType, instanceId, status)} of a delta, in order."""
        return [(i["actionType"], i["instanceId"], i["status"])
                for app in self.delta(namespace)["application"] for i in app["instance"]]

    def follow(self):
        """A first view of the namespace: its changes are noted from here on."""
        self.apps()
        self.assertEqual(self.changes(), [])

    def registered(self):
        """The registry instances of namespace team (every status)."""
        return self.listing("?status=ALL", token="team")

    def snapshot(self, namespaces=("team", "other")):
        return RegistryTestCase.snapshot(self, namespaces)

    def assertRefused(self, status, method, path, data=None, content_type=JSON,
                      namespace="team"):
        """C{status} with C{{"Error": …}}; the store and the delta are unchanged."""
        changes = self.changes()
        before = self.snapshot()
        answer = self.eureka(method, path, data, content_type, namespace=namespace)
        self.assertError(answer, status)
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.changes(), changes)
        return answer


class RecordedXMLTests(EurekaTestCase):
    """Registrations and answers in XML, against recorded Eureka payloads."""

    def test_register_recorded_xml(self):
        """
        The Java client's XML registration (XStream codec) becomes a registry instance: the
        endpoint from ipAddr and the enabled port, tags from amalgam8.tags, the lease as ttl.
        """
        self.register_payload("register.xml")
        [instance] = self.registered()
        self.assertEqual(
            (instance["service_name"], instance["endpoint"], instance["tags"],
             instance["ttl"], instance["status"]),
            ("web", {"type": "http", "value": "10.0.0.1:8080"}, ["v1", "blue"], 90, "UP"))
        eureka = instance["metadata"]["eureka"]
        self.assertEqual(eureka["metadata"], {"amalgam8.tags": "v1;blue",
                                              "build_id": "20180821-1"})
        self.assertEqual(eureka["healthCheckUrl"], "http://host1:8080/healthcheck")

    def test_register_recorded_secure_xml(self):
        """
        A secure-only registration with an XML declaration, empty metadata (XStream's
        EmptyMap class attribute) and MyDataCenterInfo: https endpoint, STARTING (not
        routed), its own lease.
        """
        self.register_payload("register-secure.xml")
        [instance] = self.registered()
        self.assertEqual(
            (instance["endpoint"], instance["ttl"], instance["status"], "tags" in instance),
            ({"type": "https", "value": "10.0.0.3:8443"}, 30, "STARTING", False))
        self.assertEqual(self.listing(token="team"), [])

    def test_apps_xml_like_recorded(self):
        """GET /apps in XML has the elements, nesting and values of a Eureka server's."""
        self.register_payload("register.xml")
        answer = self.eureka("GET", "/apps", accept=XML)
        self.assertEqual(answer.header(b"content-type"), "application/xml")
        self.assertLikeRecordedXML(answer.body, "apps-response.xml")

    def test_app_xml_like_recorded(self):
        """GET /apps/{app} in XML has the elements, nesting and values of a Eureka server's."""
        self.register_payload("register.xml")
        answer = self.eureka("GET", "/apps/web", accept=XML)
        self.assertLikeRecordedXML(answer.body, "app-response.xml")

    def test_instance_xml_like_recorded(self):
        """GET /apps/{app}/{id} and /instances/{id} in XML are a Eureka server's instance."""
        self.register_payload("register.xml")
        for path in (HOST1, "/instances/host1:WEB:8080"):
            answer = self.eureka("GET", path, accept=b"application/xml;q=1, */*")
            self.assertLikeRecordedXML(answer.body, "instance-response.xml")

    def test_apps_json_like_recorded(self):
        """GET /apps in JSON has the shape and values of a Eureka server's."""
        self.register_payload("register.xml")
        self.assertLikeRecordedJSON(self.eureka("GET", "/apps").json(), "apps-response.json")

    def delta_scenario(self):
        """host1 listed; then host3 registers and host1 is cancelled."""
        self.register_payload("register.xml")
        self.apps()
        self.clock.advance(7)
        self.register_payload("register-secure.xml")
        self.assertEqual(self.eureka("DELETE", HOST1).code, 200)

    def test_delta_xml_like_recorded(self):
        """GET /apps/delta in XML: host3 ADDED, host1 DELETED, the hash code of the rest."""
        self.delta_scenario()
        answer = self.eureka("GET", "/apps/delta", accept=XML)
        self.assertLikeRecordedXML(answer.body, "delta-response.xml")

    def test_delta_json_like_recorded(self):
        """GET /apps/delta in JSON has the shape and values of a Eureka server's delta."""
        self.delta_scenario()
        self.assertLikeRecordedJSON(self.eureka("GET", "/apps/delta").json(),
                                    "delta-response.json")

    def test_xml_answer_reads_back(self):
        """Our XML answer of an instance, read back, registers the same instance again."""
        self.register_payload("register-secure.xml")
        before = self.registered()
        xml = self.eureka("GET", "/apps/WEB/host3:web:8443", accept=XML).body
        body = parse_xml(xml)
        self.assertEqual(body["instance"]["metadata"],
                         {"@class": "java.util.Collections$EmptyMap"})
        self.assertEqual(self.eureka("POST", "/apps/WEB", xml, XML).code, 204)
        self.assertEqual(self.registered(), before)

    def test_metadata_names_escaped_in_xml(self):
        """
        A metadata key with C{_} is C{__} in XML (XStream's escape) both ways, and stays as it
        is in JSON.
        """
        body = json.loads(payload("register.json"))
        body["instance"]["metadata"] = {"zone_name": "eu_de"}
        self.register_body(body)
        xml = ElementTree.fromstring(self.eureka("GET", "/apps", accept=XML).body)
        self.assertEqual(xml.find("./application/instance/metadata/zone__name").text, "eu_de")
        view = self.apps()["application"][0]["instance"][0]
        self.assertEqual(view["metadata"], {"zone_name": "eu_de"})


class EurekaTests(EurekaTestCase):
    """The Eureka operations."""

    def test_register_lists_as_registry_instances(self):
        """XML and JSON registrations are registry instances with their endpoints and tags."""
        self.register_both()
        listing = self.request("GET", "/api/v1/instances", token="team").json()["instances"]
        endpoints = sorted((i["endpoint"]["type"], i["endpoint"]["value"], tuple(i["tags"]),
                            i["ttl"]) for i in listing)
        self.assertEqual(endpoints, [("http", "10.0.0.1:8080", ("v1", "blue"), 90),
                                     ("https", "10.0.0.2:8443", ("v2",), 90)])
        self.assertEqual({i["service_name"] for i in listing}, {"web"})

    def test_apps_json_and_xml(self):
        """GET /apps answers JSON by default and XML when Accept asks for it."""
        self.register_both()
        apps = self.apps()
        self.assertEqual(apps["apps__hashcode"], "UP_2_")
        [app] = apps["application"]
        self.assertEqual(app["name"], "WEB")
        first = app["instance"][0]
        self.assertEqual(first["instanceId"], "host1:WEB:8080")
        self.assertEqual(first["port"], {"$": 8080, "@enabled": "true"})
        self.assertEqual(first["metadata"], {"amalgam8.tags": "v1;blue",
                                             "build_id": "20180821-1"})
        self.assertEqual(first["leaseInfo"]["durationInSecs"], 90)
        xml = self.eureka("GET", "/apps/", accept=XML)
        self.assertEqual(xml.headers.getRawHeaders("content-type"), ["application/xml"])
        root = ElementTree.fromstring(xml.body)
        self.assertEqual(root.tag, "applications")
        ports = [(p.text, p.get("enabled")) for p in root.iter("port")]
        self.assertEqual(ports, [("8080", "true"), ("8080", "false")])
        self.assertEqual([e.text for e in root.iter("instanceId")],
                         ["host1:WEB:8080", "host2:web:8443"])

    def test_app_instance_vips(self):
        """The app, instance and VIP views; 404 for what is not there."""
        self.register_both()
        app = self.eureka("GET", "/apps/web").json()["application"]
        self.assertEqual(len(app["instance"]), 2)
        one = self.eureka("GET", "/apps/WEB/host2:web:8443").json()["instance"]
        self.assertEqual(one["securePort"], {"$": 8443, "@enabled": "true"})
        same = self.eureka("GET", "/instances/host2:web:8443", accept=XML)
        self.assertEqual(ElementTree.fromstring(same.body).findtext("hostName"), "host2")
        vips = self.eureka("GET", "/vips/web").json()["applications"]["application"]
        self.assertEqual(len(vips[0]["instance"]), 2)
        self.assertEqual(self.eureka("GET", "/vips/other").code, 404)
        self.assertEqual(self.eureka("GET", "/apps/OTHER").code, 404)
        self.assertEqual(self.eureka("GET", "/instances/nope").code, 404)

    def test_renew_status_cancel(self):
        """Renew keeps an instance, status DOWN stops its routing, cancel removes it."""
        self.register_both()
        self.clock.advance(60)
        self.assertEqual(self.eureka("PUT", HOST1 + "?status=UP&lastDirtyTimestamp=1").code,
                         200)
        self.clock.advance(60)
        listing = self.request("GET", "/api/v1/instances", token="team").json()["instances"]
        self.assertEqual([i["endpoint"]["value"] for i in listing], ["10.0.0.1:8080"])
        self.assertEqual(self.eureka("PUT", "/apps/WEB/host2:web:8443").code, 404)
        down = self.eureka("PUT", HOST1 + "/status?value=DOWN")
        self.assertEqual(down.code, 200, down.body)
        view = self.eureka("GET", HOST1).json()["instance"]
        self.assertEqual(view["status"], "DOWN")
        self.assertEqual(self.listing(token="team"), [])
        self.assertEqual(self.eureka("DELETE", HOST1).code, 200)
        self.assertEqual(self.eureka("DELETE", HOST1).code, 404)

    def test_other_origins_and_status_override(self):
        """Instances registered through /api/v1 have Eureka views and take a status."""
        self.register(token="team", body={"service_name": "reviews", "tags": ["v1"],
                                          "endpoint": {"type": "http", "value": "10.1.0.1:9080"}})
        [view] = self.eureka("GET", "/apps/REVIEWS").json()["application"]["instance"]
        self.assertEqual((view["app"], view["ipAddr"], view["port"]["$"], view["metadata"]),
                         ("REVIEWS", "10.1.0.1", 9080, {"amalgam8.tags": "v1"}))
        self.assertNotIn("homePageUrl", view)
        path = "/apps/REVIEWS/" + view["instanceId"]
        self.assertEqual(self.eureka("PUT", path + "/status?value=OUT_OF_SERVICE").code, 200)
        self.assertEqual(self.eureka("GET", path).json()["instance"]["status"],
                         "OUT_OF_SERVICE")
        self.assertEqual(self.eureka("DELETE", path + "/status").code, 200)
        self.assertEqual(self.eureka("GET", path).json()["instance"]["status"], "UP")

    def test_moved_instance_replaced(self):
        """The same Eureka instance id registered at another address replaces the old one."""
        body = json.loads(payload("register.json"))
        self.register_body(body)
        body["instance"]["ipAddr"] = "10.0.0.9"
        self.register_body(body)
        self.assertEqual([i["endpoint"]["value"] for i in self.registered()],
                         ["10.0.0.9:8443"])

    def test_renewal_interval_shown(self):
        """The registered renewal interval is shown back; the default is 30 s."""
        self.register_both()
        self.register_payload("register-secure.xml")
        intervals = {i["instanceId"]: i["leaseInfo"]["renewalIntervalInSecs"]
                     for i in self.apps()["application"][0]["instance"]}
        self.assertEqual(intervals, {"host1:WEB:8080": 30, "host2:web:8443": 30,
                                     "host3:web:8443": 10})

    def test_blocking_read_wakes(self):
        """A Eureka registration wakes a blocking read of /api/v1/instances."""
        first = self.request("GET", "/api/v1/instances", token="team")
        index = first.headers.getRawHeaders("a8-index")[0]
        d = self.start("GET", "/api/v1/instances?wait=30s&index=" + index, token="team")
        self.pump()
        self.assertNoResult(d)
        self.register_payload("register.xml")
        answer = self.finish(d)
        self.assertEqual(len(answer.json()["instances"]), 1)

    def test_tenancy(self):
        """Nothing of one namespace is seen or changed through another's base URL."""
        self.register_both("team")
        self.assertEqual(self.eureka("GET", "/apps/WEB", namespace="other").code, 404)
        self.assertEqual(self.eureka("DELETE", HOST1, namespace="other").code, 404)
        self.assertEqual(self.apps(namespace="other")["application"], [])
        self.assertEqual(len(self.eureka("GET", "/apps/WEB").json()["application"]
                             ["instance"]), 2)

    def test_lease_default(self):
        """A registration without a lease gets Eureka's 90 s (within the registry's bounds)."""
        body = json.loads(payload("register.json"))
        del body["instance"]["leaseInfo"]
        self.register_body(body)
        self.assertEqual(self.registered()[0]["ttl"], 90)
        self.clock.advance(91)
        self.assertEqual(self.registered(), [])


class EurekaLeaseBoundsTests(EurekaTestCase):
    """The lease is held within the registry's ttl bounds."""

    ttl_policy = TTLPolicy(30, 20, 60)

    def test_lease_bounds(self):
        """A lease below the minimum is raised, above the maximum (or 90 s) lowered."""
        body = json.loads(payload("register.json"))
        for asked, granted in ((5, 20), (0, 60), (1000, 60)):
            body["instance"]["leaseInfo"]["durationInSecs"] = asked
            self.register_body(body)
            [instance] = self.registered()
            self.assertEqual(instance["ttl"], granted)


class DeltaTests(EurekaTestCase):
    """GET /apps/delta: the recently-changed queue."""

    def test_changes_since_fetch(self):
        """
        After a fetch, a new instance is ADDED, a status change MODIFIED and a cancel
        DELETED; the hash code is the whole list's, the one GET /apps shows.
        """
        self.register_both()
        self.register_payload("register-secure.xml")
        self.follow()
        body = json.loads(payload("register.json"))
        body["instance"].update(instanceId="host4:web:8080", hostName="host4",
                                ipAddr="10.0.0.4")
        self.register_body(body)
        self.eureka("PUT", "/apps/WEB/host2:web:8443/status?value=OUT_OF_SERVICE")
        self.eureka("DELETE", "/apps/WEB/host3:web:8443")
        self.assertEqual(self.changes(), [
            ("MODIFIED", "host2:web:8443", "OUT_OF_SERVICE"),
            ("ADDED", "host4:web:8080", "UP"),
            ("DELETED", "host3:web:8443", "STARTING"),
        ])
        self.assertEqual(self.delta()["apps__hashcode"], "OUT_OF_SERVICE_1_UP_2_")
        self.assertEqual(self.apps()["apps__hashcode"], "OUT_OF_SERVICE_1_UP_2_")

    def test_nothing_changed(self):
        """Without a change since the first fetch the delta is empty; renewals are no change."""
        self.register_both()
        self.follow()
        self.clock.advance(30)
        self.eureka("PUT", HOST1)
        self.register_payload("register.json")
        delta = self.delta()
        self.assertEqual((delta["application"], delta["apps__hashcode"]), ([], "UP_2_"))

    def test_changes_kept_three_minutes(self):
        """A change stays in the delta for RETENTION seconds after it was seen, then goes."""
        self.register_payload("register.xml")
        self.follow()
        self.register_payload("register.json")
        self.assertEqual(len(self.changes()), 1)
        for _ in range(3):
            self.clock.advance(RETENTION / 3 - 1)
            self.eureka("PUT", HOST1)
            self.eureka("PUT", "/apps/WEB/host2:web:8443")
        self.assertEqual(self.changes(), [("ADDED", "host2:web:8443", "UP")])
        self.clock.advance(2)
        self.assertEqual(self.changes(), [("ADDED", "host2:web:8443", "UP")])
        self.clock.advance(2)
        self.assertEqual(self.changes(), [])
        self.assertEqual(self.delta()["apps__hashcode"], "UP_2_")

    def test_expiry_is_deleted(self):
        """An instance whose lease ran out is DELETED in the next delta."""
        self.register_payload("register.xml")
        self.register_payload("register-secure.xml")
        self.follow()
        self.clock.advance(31)
        self.assertEqual(self.changes(), [("DELETED", "host3:web:8443", "STARTING")])
        self.assertEqual(self.delta()["apps__hashcode"], "UP_1_")

    def test_other_origins(self):
        """Instances registered or removed through /api/v1 are in the delta too."""
        self.register_payload("register.xml")
        self.follow()
        answer = self.register(token="team", body={
            "service_name": "reviews", "endpoint": {"type": "http", "value": "10.1.0.1:9080"}})
        self.assertEqual(self.changes(), [("ADDED", answer["id"], "UP")])
        self.request("DELETE", "/api/v1/instances/" + answer["id"], token="team")
        self.assertEqual(self.changes(), [("DELETED", answer["id"], "UP")])

    def test_moved_instance_modified(self):
        """The same Eureka instance at a new address is MODIFIED, not deleted and added."""
        body = json.loads(payload("register.json"))
        self.register_body(body)
        self.follow()
        body["instance"]["ipAddr"] = "10.0.0.9"
        self.register_body(body)
        [app] = self.delta()["application"]
        [view] = app["instance"]
        self.assertEqual((view["actionType"], view["ipAddr"]), ("MODIFIED", "10.0.0.9"))

    def test_deleted_then_added_is_added(self):
        """An instance cancelled and registered again shows once, ADDED."""
        self.register_payload("register.xml")
        self.follow()
        self.eureka("DELETE", HOST1)
        self.assertEqual(self.changes(), [("DELETED", "host1:WEB:8080", "UP")])
        self.register_payload("register.xml")
        self.assertEqual(self.changes(), [("ADDED", "host1:WEB:8080", "UP")])

    def test_first_view_is_the_baseline(self):
        """
        A namespace's first view notes no change; a client that fetched it empty sees that
        the hash code is not its own (C{""}).
        """
        self.assertEqual(self.changes(), [])
        self.register_both()
        delta = self.delta()
        self.assertEqual((delta["application"], delta["apps__hashcode"]), ([], "UP_2_"))

    def test_forgotten_namespace_adds_everything(self):
        """
        A namespace no view looked at for RETENTION seconds is forgotten; its next view
        notes everything ADDED (for a client idle as long).
        """
        self.register_both()
        self.follow()
        for _ in range(4):
            self.clock.advance(RETENTION / 4 + 1)
            self.eureka("PUT", HOST1)
            self.eureka("PUT", "/apps/WEB/host2:web:8443")
        self.assertEqual(self.changes(), [("ADDED", "host1:WEB:8080", "UP"),
                                          ("ADDED", "host2:web:8443", "UP")])

    def test_delta_tenancy(self):
        """One namespace's changes are not in another's delta."""
        self.apps("/apps", "other")
        self.register_payload("register.xml")
        self.follow()
        self.register_payload("register.json")
        self.assertEqual(len(self.changes()), 1)
        delta = self.delta("other")
        self.assertEqual((delta["application"], delta["apps__hashcode"]), ([], ""))

    def test_delta_xml_actions(self):
        """The XML delta carries each instance's actionType."""
        self.register_payload("register.xml")
        self.apps()
        self.register_payload("register.json")
        self.eureka("DELETE", HOST1)
        root = ElementTree.fromstring(self.eureka("GET", "/apps/delta", accept=XML).body)
        self.assertEqual(
            [(i.findtext("instanceId"), i.findtext("actionType")) for i in root.iter("instance")],
            [("host2:web:8443", "ADDED"), ("host1:WEB:8080", "DELETED")])
        self.assertEqual(root.findtext("apps__hashcode"), "UP_1_")


class _Client:
    """What a Eureka client keeps: the full list, patched by deltas (DiscoveryClient)."""

    def __init__(self):
        self.instances = {}

    def full(self, applications):
        self.instances = {(app["name"], view["instanceId"]): view
                          for app in applications["application"]
                          for view in app["instance"]}

    def patch(self, applications):
        for app in applications["application"]:
            for view in app["instance"]:
                key = (app["name"], view["instanceId"])
                if view["actionType"] == "DELETED":
                    self.instances.pop(key, None)
                else:
                    self.instances[key] = view

    def hashcode(self):
        return hashcode(view["status"] for view in self.instances.values())

    def summary(self):
        return sorted((key, view["status"], view["ipAddr"], view["port"]["$"],
                       json.dumps(view["metadata"], sort_keys=True))
                      for key, view in self.instances.items())


_steps = st.lists(st.tuples(
    st.sampled_from(["register", "register", "cancel", "status", "renew", "v1", "wait"]),
    st.integers(0, 3),                  # which host
    st.sampled_from(["WEB", "API"]),
    st.sampled_from(["UP", "DOWN", "OUT_OF_SERVICE", "STARTING"]),
    st.integers(1, 3),                  # address variant
    st.integers(0, 70),                 # seconds before the step
    st.booleans(),                      # fetch the delta after it
), min_size=1, max_size=25)


class DeltaClientTests(EurekaTestCase):
    """A client that patches its list with deltas keeps the server's list."""

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_steps)
    def test_client_follows(self, steps):
        """
        Whatever registrations, cancels, status changes, renewals, /api/v1 registrations and
        expiries happen, a client fetching a delta at least every RETENTION seconds has the
        list GET /apps answers, and the delta's hash code is its own (but when the list was
        empty at its last fetch: then the hash code tells it to fetch the whole list).
        """
        self.setUp()
        client = _Client()
        client.full(self.apps())
        was_empty = True
        since = 0
        for action, host, app, status, address, wait, fetch in steps:
            if since + wait >= RETENTION - 1:
                fetch_now = True
                wait = max(0, RETENTION - 1 - since)
            else:
                fetch_now = False
            self.clock.advance(wait)
            since += wait
            self.step(action, host, app, status, address)
            if fetch or fetch_now:
                delta = self.delta()
                client.patch(delta)
                since = 0
                if client.hashcode() != delta["apps__hashcode"]:
                    # The client fetches the whole list, as DiscoveryClient does: allowed
                    # only when the list was empty at its last fetch (not followed then).
                    self.assertTrue(was_empty, (client.summary(), delta))
                    client.full(self.apps())
                full = _Client()
                full.full(self.apps())
                self.assertEqual(client.summary(), full.summary())
                was_empty = not full.instances

    def step(self, action, host, app, status, address):
        instance_id = "host{}:{}".format(host, app)
        path = "/apps/{}/{}".format(app, instance_id)
        if action == "register":
            body = {"instance": {
                "instanceId": instance_id, "hostName": "host{}".format(host), "app": app,
                "ipAddr": "10.0.{}.{}".format(address, host), "vipAddress": app.lower(),
                "status": status, "port": {"$": 8080, "@enabled": "true"},
                "leaseInfo": {"durationInSecs": 60},
                "metadata": {"amalgam8.tags": "v{}".format(address)}}}
            self.register_body(body, app)
        elif action == "cancel":
            self.assertIn(self.eureka("DELETE", path).code, (200, 404))
        elif action == "status":
            self.assertIn(self.eureka("PUT", path + "/status?value=" + status).code,
                          (200, 404))
        elif action == "renew":
            self.assertIn(self.eureka("PUT", path).code, (200, 404))
        elif action == "v1":
            self.register(token="team", body={
                "service_name": app.lower(), "ttl": 60,
                "endpoint": {"type": "tcp", "value": "10.9.0.{}:{}".format(host, address)}})


class RecentChangesTests(SynchronousTestCase):
    """L{RecentChanges} on its own, with a L{Clock}."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.changes = RecentChanges(self.clock)

    def instance(self, host=1, address=None, status="UP", heartbeat=None):
        body = json.loads(payload("register.json"))
        body["instance"].update(instanceId="host{}".format(host),
                                ipAddr=address or "10.0.0.{}".format(host), status=status)
        registration = parse_instance(body, "WEB", lambda ttl: ttl)
        return Instance(registration, self.clock.seconds() if heartbeat is None else heartbeat)

    def actions(self, index, instances):
        code, views = self.changes.delta("team", index, instances)
        return code, [(v["actionType"], v["instanceId"], v["ipAddr"]) for v in views]

    def test_first_view_is_the_baseline(self):
        """The first view of a namespace that lists instances notes no change."""
        self.assertEqual(self.actions(0, []), ("", []))
        self.assertEqual(self.actions(3, [self.instance(1), self.instance(2, status="DOWN")]),
                         ("DOWN_1_UP_1_", []))
        self.assertEqual(self.changes.followed(), ["team"])

    def test_stale_read_ignored(self):
        """
        A read older (lower index) than one already seen changes nothing, and is answered
        with what was seen since.
        """
        one, two = self.instance(1), self.instance(2)
        self.changes.observe("team", 5, [one])
        self.changes.observe("team", 6, [one, two])
        expected = ("UP_2_", [("ADDED", "host2", "10.0.0.2")])
        self.assertEqual(self.actions(5, [one]), expected)
        self.assertEqual(self.actions(6, [one, two]), expected)

    def test_heartbeat_is_no_change(self):
        """The same registration with a later heartbeat is no change (nor a later stamp)."""
        self.changes.observe("team", 1, [self.instance(1)])
        self.changes.observe("team", 2, [self.instance(1), self.instance(2)])
        for _ in range(3):
            self.clock.advance(RETENTION / 3)
            self.assertEqual(self.actions(2, [self.instance(1), self.instance(2)]),
                             ("UP_2_", [("ADDED", "host2", "10.0.0.2")]))
        self.clock.advance(1)
        self.assertEqual(self.actions(2, [self.instance(1), self.instance(2)]), ("UP_2_", []))

    def test_latest_change_per_instance(self):
        """
        An instance changed again is in the delta once, as it is now, and for RETENTION
        seconds after the later change.
        """
        self.changes.observe("team", 1, [self.instance(1)])
        self.changes.observe("team", 2, [self.instance(1, "10.0.0.7")])
        self.clock.advance(10)
        self.changes.observe("team", 3, [])
        self.clock.advance(10)
        moved = self.instance(1, "10.0.0.8")
        self.assertEqual(self.actions(4, [moved]), ("UP_1_", [("ADDED", "host1", "10.0.0.8")]))
        self.clock.advance(RETENTION)
        self.assertEqual(self.actions(4, [moved]), ("UP_1_", [("ADDED", "host1", "10.0.0.8")]))
        self.clock.advance(1)
        self.assertEqual(self.actions(4, [moved]), ("UP_1_", []))

    def test_empty_namespace_not_followed(self):
        """A view of an empty namespace keeps nothing (any token may name one)."""
        for n in range(100):
            self.changes.observe("ns{}".format(n), 0, [])
        self.assertEqual(self.changes.followed(), [])

    def test_idle_namespace_forgotten(self):
        """A namespace no view looked at for RETENTION seconds is forgotten."""
        self.changes.observe("team", 1, [self.instance(1)])
        self.changes.observe("busy", 1, [self.instance(1)])
        self.clock.advance(RETENTION / 2)
        self.changes.observe("busy", 1, [self.instance(1)])
        self.clock.advance(RETENTION / 2 + 1)
        self.changes.observe("busy", 1, [self.instance(1)])
        self.assertEqual(self.changes.followed(), ["busy"])
        # Viewed again, it starts afresh: its instances are ADDED (for an idle client).
        self.assertEqual(self.changes.delta("team", 1, [self.instance(1)])[1][0]["actionType"],
                         "ADDED")

    def test_deleted_view_evicted(self):
        """A deleted instance's view is DELETED, with the time it was seen gone as eviction."""
        self.changes.observe("team", 1, [self.instance(1)])
        self.clock.advance(5)
        _, [view] = self.changes.delta("team", 2, [])
        self.assertEqual((view["actionType"], view["leaseInfo"]["evictionTimestamp"]),
                         ("DELETED", 1005000))


#: Registration bodies that must be refused, with the status: (body, content type, status).
def _bad_bodies():
    good = json.loads(payload("register.json"))

    def changed(field, value):
        body = json.loads(json.dumps(good))
        if value is None:
            del body["instance"][field]
        else:
            body["instance"][field] = value
        return json.dumps(body).encode()

    xml = payload("register.xml")
    cases = [
        (b"<instance><hostName>h</hostName>", XML, 400),
        (b"", XML, 400),
        (b"\xff\xfe\x00garbage", XML, 400),
        (b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
         b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><instance>&c;</instance>', XML, 400),
        (b'<?xml version="1.0"?><!DOCTYPE instance [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
         b"<instance><hostName>&x;</hostName></instance>", XML, 400),
        (b'<!DOCTYPE instance SYSTEM "http://127.0.0.1:1/evil.dtd"><instance/>', XML, 400),
        (b'<!DOCTYPE instance [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p">%p;]><instance/>',
         XML, 400),
        (xml.replace(b"<hostName>host1</hostName>", b"<hostName>&undefined;</hostName>"),
         XML, 400),
        (b'<?xml version="1.0" encoding="no-such-encoding"?><instance/>', XML, 400),
        (b"<instance>" + b"<a>" * 20 + b"</a>" * 20 + b"</instance>", XML, 400),
        (b"<other/>", XML, 400),
        (b"<instance>text only</instance>", XML, 400),
        (b"<instance/>", XML, 400),
        (xml.replace(b"<app>WEB</app>", b"<app>OTHER</app>"), XML, 400),
        (xml.replace(b'<port enabled="true">8080</port>', b"<port>eighty</port>"), XML, 400),
        (xml.replace(b'<port enabled="true">', b'<port enabled="maybe">'), XML, 400),
        (xml.replace(b"<durationInSecs>90", b"<durationInSecs>-5"), XML, 400),
        (xml.replace(b"<status>UP", b"<status>RUNNING"), XML, 400),
        (xml.replace(b"<build__id>", b"<bad-\xc3\xa9-key>").replace(b"</build__id>",
                                                                   b"</bad-\xc3\xa9-key>"),
         XML, 400),
        (xml.replace(b"<hostName>host1", b"<hostName>host1&#1;"), XML, 400),
        (b"<instance>" + b" " * (MAX_BODY + 1) + b"</instance>", XML, 413),
        (b"{not json", JSON, 400),
        (b"[]", JSON, 400),
        (b'{"instance": []}', JSON, 400),
        (b'{"instance": {"hostName": 1e400}}', JSON, 400),
        (b'{"instance": {}}' + b" " * MAX_BODY, JSON, 413),
        (json.dumps(good).encode(), b"text/plain", 415),
        (json.dumps(good).encode(), b"application/x-www-form-urlencoded", 415),
        (json.dumps(good).encode(), None, 415),
        (xml, JSON, 400),
        (json.dumps(good).encode(), XML, 400),
        (changed("hostName", None), JSON, 400),
        (changed("vipAddress", None), JSON, 400),
        (changed("ipAddr", 5), JSON, 400),
        (changed("app", "OTHER"), JSON, 400),
        (changed("hostName", "  "), JSON, 400),
        (changed("hostName", "host\u0000"), JSON, 400),
        (changed("port", {"$": "x"}), JSON, 400),
        (changed("port", 70000), JSON, 400),
        (changed("securePort", {"$": 443, "@enabled": "false"}), JSON, 400),
        (changed("securePort", {"$": 443, "@enabled": "no"}), JSON, 400),
        (changed("metadata", {"a": {"b": 1}}), JSON, 400),
        (changed("metadata", ["a"]), JSON, 400),
        (changed("metadata", {"has space": "x"}), JSON, 400),
        (changed("metadata", {"ns:key": "x"}), JSON, 400),
        (changed("metadata", {"key": "bell\u0007"}), JSON, 400),
        (changed("metadata", {"k{}".format(n): "v" * 40 for n in range(30)}), JSON, 400),
        (changed("status", "WEIRD"), JSON, 400),
        (changed("leaseInfo", {"durationInSecs": -1}), JSON, 400),
        (changed("leaseInfo", {"durationInSecs": True}), JSON, 400),
        (changed("leaseInfo", {"renewalIntervalInSecs": "often"}), JSON, 400),
        (changed("leaseInfo", "90"), JSON, 400),
        (changed("homePageUrl", 42), JSON, 400),
        (changed("app", "W" * 65), b"application/json; charset=utf-8", 400),
    ]
    return cases


class BadInputTests(EurekaTestCase):
    """Every Eureka endpoint answers bad input with a clear 4xx and changes nothing."""

    def setUp(self):
        EurekaTestCase.setUp(self)
        self.register_payload("register.xml")
        self.follow()

    def test_bad_registrations(self):
        """Malformed, hostile, mistyped, oversized or mis-typed registration bodies."""
        for data, content_type, status in _bad_bodies():
            before = self.snapshot()
            answer = self.eureka("POST", "/apps/WEB", data, content_type)
            self.assertError(answer, status)
            self.assertEqual(self.snapshot(), before, data[:80])
        self.assertEqual(self.changes(), [])

    def test_hostile_xml_named(self):
        """A DTD is refused by name, so a client sees why."""
        answer = self.assertRefused(
            400, "POST", "/apps/WEB",
            b'<!DOCTYPE instance [<!ENTITY a "x">]><instance>&a;</instance>', XML)
        self.assertIn("DTD", answer.json()["Error"])

    def test_oversized_declared_length(self):
        """A body whose Content-Length is over the limit is refused unread (413)."""
        answer = self.request("POST", BASE.format("team") + "/apps/WEB",
                              data=b"<instance/>", content_type=XML,
                              headers={b"content-length": b"%d" % (MAX_BODY + 1)})
        self.assertIn(answer.code, (400, 413))

    def test_eureka_data_too_large(self):
        """The registry's metadata limit is named as the instance's size."""
        body = json.loads(payload("register.json"))
        body["instance"]["homePageUrl"] = "http://host2/" + "x" * 1000
        answer = self.assertRefused(400, "POST", "/apps/WEB", json.dumps(body).encode())
        self.assertIn("too large", answer.json()["Error"])

    def test_unknown_instances(self):
        """Renew, cancel, status and reads of an unknown app or instance: 404."""
        for method, path in [
            ("PUT", "/apps/WEB/nope"), ("PUT", "/apps/NOPE/host1:WEB:8080"),
            ("DELETE", "/apps/WEB/nope"), ("DELETE", "/apps/NOPE/host1:WEB:8080"),
            ("PUT", "/apps/WEB/nope/status?value=DOWN"),
            ("DELETE", "/apps/WEB/nope/status"),
            ("GET", "/apps/NOPE"), ("GET", "/apps/WEB/nope"), ("GET", "/instances/nope"),
            ("GET", "/vips/nope"),
        ]:
            self.assertRefused(404, method, path)
        for method, path in [("GET", "/apps/%FF"), ("GET", "/apps/WEB/%FF%FE"),
                             ("PUT", "/apps/WEB/%FF"), ("POST", "/apps/%C3")]:
            answer = self.assertRefused(400, method, path)
            self.assertIn("UTF-8", answer.json()["Error"])

    def test_expired_instance(self):
        """An instance whose lease ran out cannot be renewed (404: the client registers)."""
        self.clock.advance(91)
        self.assertRefused(404, "PUT", HOST1)

    def test_bad_status(self):
        """A status change without a value, or with an unknown one: 400."""
        for query in ("", "?value=", "?value=RUNNING", "?value=%FF", "?other=UP"):
            self.assertRefused(400, "PUT", HOST1 + "/status" + query)
        self.assertRefused(400, "DELETE", HOST1 + "/status?value=WEIRD")

    def test_bad_token(self):
        """A namespace segment no auth mode accepts: 401 on every route."""
        for method, path in [("GET", "/apps"), ("GET", "/apps/delta"), ("GET", "/apps/WEB"),
                             ("GET", HOST1), ("PUT", HOST1), ("DELETE", HOST1),
                             ("PUT", HOST1 + "/status?value=UP"), ("GET", "/vips/web"),
                             ("GET", "/instances/host1:WEB:8080")]:
            self.assertRefused(401, method, path, namespace="bad%20name")
        self.assertRefused(401, "POST", "/apps/WEB", payload("register.xml"), XML,
                           namespace="bad%20name")

    def test_wrong_method(self):
        """A method a route does not take: 405 with Allow."""
        for method, path in [("POST", "/apps"), ("PATCH", HOST1), ("POST", HOST1),
                             ("GET", HOST1 + "/status"), ("DELETE", "/apps/delta")]:
            answer = self.assertRefused(405, method, path)
            self.assertTrue(answer.header(b"allow"))

    def test_unknown_path(self):
        """A path the Eureka API does not serve: 404."""
        for path in ("/", "/app", "/apps/WEB/host1:WEB:8080/other", "/../v1/instances"):
            self.assertRefused(404, "GET", path)

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300) | st.sampled_from([
        b"<instance>", b"<instance><port enabled=", b"<?xml", b"<!DOCTYPE", b"]]>",
        b"<instance><metadata><a/><a/></metadata></instance>"]).flatmap(
            lambda head: st.binary(max_size=100).map(lambda tail: head + tail)))
    def test_xml_fuzz(self, data):
        """No XML body, however broken, is answered 500 or changes a stored instance."""
        before = self.snapshot()
        answer = self.eureka("POST", "/apps/WEB", data, XML)
        self.assertIn(answer.code, (204, 400), data)
        if answer.code != 204:
            self.assertEqual(self.snapshot(), before)

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(
        ["hostName", "app", "ipAddr", "vipAddress", "port", "securePort", "status",
         "leaseInfo", "metadata", "instanceId", "homePageUrl"]),
        st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8)
        | st.dictionaries(st.sampled_from(["$", "@enabled", "durationInSecs", "x y"]),
                          st.integers(-1, 99) | st.text(max_size=4), max_size=3)))
    def test_json_fuzz(self, instance):
        """No JSON instance, however mistyped, is answered 500."""
        answer = self.eureka("POST", "/apps/WEB", json.dumps({"instance": instance}).encode())
        self.assertIn(answer.code, (204, 400), instance)


class CatalogTests(EurekaTestCase):
    """Instances of a read-only catalog, seen through the Eureka API."""

    def setUp(self):
        EurekaTestCase.setUp(self)
        self.catalog = StaticCatalog()
        merged = CatalogMerge(self.store, [self.catalog])
        self.api = RegistryAPI(merged, self.auth, self.clock)
        self.http = StubTreq(self.api.resource())
        registration = parse_registration(
            {"service_name": "ratings", "endpoint": {"type": "http", "value": "10.2.0.1:80"},
             "tags": ["v2"]}, lambda ttl: 30)
        self.catalog_id = registration.id
        self.catalog.set("team", [Instance(registration, self.clock.seconds())])
        self.path = "/apps/RATINGS/" + self.catalog_id

    def test_listed(self):
        """A catalog instance is in the views, with its tags."""
        view = self.eureka("GET", self.path).json()["instance"]
        self.assertEqual((view["app"], view["metadata"]), ("RATINGS", {"amalgam8.tags": "v2"}))

    def test_read_only(self):
        """It cannot be cancelled (403), renewed (404) or given a status (403)."""
        self.apps()
        self.assertRefused(403, "DELETE", self.path)
        self.assertRefused(404, "PUT", self.path)
        self.assertRefused(403, "PUT", self.path + "/status?value=OUT_OF_SERVICE")
        self.assertEqual(self.eureka("GET", self.path).json()["instance"]["status"], "UP")

    def test_catalog_changes_in_delta(self):
        """A catalog's change is in the delta like any other."""
        self.apps()
        self.catalog.set("team", [])
        self.assertEqual(self.changes(), [("DELETED", self.catalog_id, "UP")])
