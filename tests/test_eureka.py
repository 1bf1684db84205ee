# -*- test-case-name: tests.test_eureka -*-
"""
Tests for L{amalgam8.registry.eureka}: the Eureka-compatible API, driven with recorded Eureka
request payloads (tests/eureka_payloads/) through the registry's API.
"""

import json
import os
from xml.etree import ElementTree

from amalgam8.registry.api import TTLPolicy
from tests.test_registry_api import RegistryTestCase

PAYLOADS = os.path.join(os.path.dirname(__file__), "eureka_payloads")
BASE = "/api/eureka/{}/v2"
XML = b"application/xml"


def _shape(value):
    """The keys and value types of a JSON value, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def payload(name):
    with open(os.path.join(PAYLOADS, name), "rb") as f:
        return f.read()


class EurekaTestCase(RegistryTestCase):
    """A registry in C{trusted} mode (token = namespace) with Eureka requests."""

    start_store = True
    modes = ("trusted",)

    def eureka(self, method, path, data=None, content_type=b"application/json",
               accept=None, namespace="team"):
        headers = {b"accept": accept} if accept else None
        return self.request(method, BASE.format(namespace) + path, data=data,
                            content_type=content_type if data is not None else None,
                            headers=headers)

    def register_both(self, namespace="team"):
        xml = self.eureka("POST", "/apps/WEB", payload("register.xml"), XML,
                          namespace=namespace)
        self.assertEqual(xml.code, 204, xml.body)
        js = self.eureka("POST", "/apps/web", payload("register.json"), namespace=namespace)
        self.assertEqual(js.code, 204, js.body)



class EurekaTests(EurekaTestCase):
    """The Eureka operations."""

    def test_register_lists_as_registry_instances(self):
        self.register_both()
        listing = self.request("GET", "/api/v1/instances", token="team").json()["instances"]
        endpoints = sorted((i["endpoint"]["type"], i["endpoint"]["value"], tuple(i["tags"]),
                            i["ttl"]) for i in listing)
        self.assertEqual(endpoints, [("http", "10.0.0.1:8080", ("v1", "blue"), 90),
                                     ("https", "10.0.0.2:8443", ("v2",), 90)])
        self.assertEqual({i["service_name"] for i in listing}, {"web"})

    def test_apps_json_and_xml(self):
        self.register_both()
        answer = self.eureka("GET", "/apps")
        apps = answer.json()["applications"]
        self.assertEqual(apps["apps__hashcode"], "UP_2_")
        [app] = apps["application"]
        self.assertEqual(app["name"], "WEB")
        first = app["instance"][0]
        self.assertEqual(first["instanceId"], "host1:WEB:8080")
        self.assertEqual(first["port"], {"$": 8080, "@enabled": "true"})
        self.assertEqual(first["metadata"], {"amalgam8.tags": "v1;blue"})
        self.assertEqual(first["leaseInfo"]["durationInSecs"], 90)
        xml = self.eureka("GET", "/apps/", accept=XML)
        self.assertEqual(xml.headers.getRawHeaders("content-type"), ["application/xml"])
        root = ElementTree.fromstring(xml.body)
        self.assertEqual(root.tag, "applications")
        ports = [(p.text, p.get("enabled")) for p in root.iter("port")]
        self.assertEqual(ports, [("8080", "true"), ("8080", "false")])
        self.assertEqual([e.text for e in root.iter("instanceId")],
                         ["host1:WEB:8080", "host2:web:8443"])

    def test_apps_shape_matches_recorded_answer(self):
        self.eureka("POST", "/apps/WEB", payload("register.xml"), XML)
        recorded = json.loads(payload("apps-response.json"))
        ours = self.eureka("GET", "/apps").json()
        self.assertEqual(_shape(ours), _shape(recorded))
        self.assertEqual(ours["applications"]["application"][0]["instance"][0]["port"],
                         recorded["applications"]["application"][0]["instance"][0]["port"])

    def test_app_instance_vips(self):
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
        self.register_both()
        self.clock.advance(60)
        self.assertEqual(self.eureka("PUT", "/apps/WEB/host1:WEB:8080").code, 200)
        self.clock.advance(60)
        listing = self.request("GET", "/api/v1/instances", token="team").json()["instances"]
        self.assertEqual([i["endpoint"]["value"] for i in listing], ["10.0.0.1:8080"])
        self.assertEqual(self.eureka("PUT", "/apps/WEB/host2:web:8443").code, 404)
        down = self.eureka("PUT", "/apps/WEB/host1:WEB:8080/status?value=DOWN")
        self.assertEqual(down.code, 200, down.body)
        view = self.eureka("GET", "/apps/WEB/host1:WEB:8080").json()["instance"]
        self.assertEqual(view["status"], "DOWN")
        self.assertEqual(self.listing(token="team"), [])
        self.assertEqual(
            self.eureka("PUT", "/apps/WEB/host1:WEB:8080/status?value=BAD").code, 400)
        self.assertEqual(self.eureka("DELETE", "/apps/WEB/host1:WEB:8080").code, 200)
        self.assertEqual(self.eureka("DELETE", "/apps/WEB/host1:WEB:8080").code, 404)

    def test_other_origins_and_status_override(self):
        self.register(token="team", body={"service_name": "reviews", "tags": ["v1"],
                                          "endpoint": {"type": "http", "value": "10.1.0.1:9080"}})
        [view] = self.eureka("GET", "/apps/REVIEWS").json()["application"]["instance"]
        self.assertEqual((view["app"], view["ipAddr"], view["port"]["$"], view["metadata"]),
                         ("REVIEWS", "10.1.0.1", 9080, {"amalgam8.tags": "v1"}))
        path = "/apps/REVIEWS/" + view["instanceId"]
        self.assertEqual(self.eureka("PUT", path + "/status?value=OUT_OF_SERVICE").code, 200)
        self.assertEqual(self.eureka("GET", path).json()["instance"]["status"],
                         "OUT_OF_SERVICE")
        self.assertEqual(self.eureka("DELETE", path + "/status").code, 200)
        self.assertEqual(self.eureka("GET", path).json()["instance"]["status"], "UP")

    def test_unknown_namespace_token(self):
        self.assertEqual(self.eureka("GET", "/apps", namespace="bad%20name").code, 401)

    def test_blocking_read_wakes(self):
        first = self.request("GET", "/api/v1/instances", token="team")
        index = first.headers.getRawHeaders("a8-index")[0]
        d = self.start("GET", "/api/v1/instances?wait=30s&index=" + index, token="team")
        self.pump()
        self.assertNoResult(d)
        self.eureka("POST", "/apps/WEB", payload("register.xml"), XML)
        answer = self.finish(d)
        self.assertEqual(len(answer.json()["instances"]), 1)

    def test_tenancy(self):
        self.register_both("team")
        self.assertEqual(self.eureka("GET", "/apps/WEB", namespace="other").code, 404)
        self.assertEqual(self.eureka("DELETE", "/apps/WEB/host1:WEB:8080",
                                     namespace="other").code, 404)
        self.assertEqual(len(self.eureka("GET", "/apps/WEB").json()["application"]
                             ["instance"]), 2)

    def test_bad_input(self):
        good = json.loads(payload("register.json"))
        cases = [
            (b"<instance><hostName>h</hostName>", XML),
            (b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><instance>&b;'
             b"</instance>", XML),
            (b"{not json", b"application/json"),
            (b"<other/>", XML),
            (b"plain", b"text/plain"),
        ]
        for field, value in [("hostName", None), ("app", "OTHER"), ("ipAddr", 5),
                             ("port", {"$": "x"}), ("metadata", {"a": {"b": 1}}),
                             ("status", "WEIRD"), ("leaseInfo", {"durationInSecs": -1})]:
            body = json.loads(json.dumps(good))
            if value is None:
                del body["instance"][field]
            else:
                body["instance"][field] = value
            cases.append((json.dumps(body).encode(), b"application/json"))
        for data, content_type in cases:
            answer = self.eureka("POST", "/apps/WEB", data, content_type)
            self.assertIn(answer.code, (400, 415), data)
            self.assertIn("Error", answer.json())
        self.assertEqual(self.eureka("GET", "/apps").json()["applications"]["application"],
                         [])

    def test_lease_bounds(self):
        body = json.loads(payload("register.json"))
        body["instance"]["leaseInfo"]["durationInSecs"] = 5
        self.assertEqual(self.eureka("POST", "/apps/WEB", json.dumps(body).encode()).code,
                         204)
        listing = self.request("GET", "/api/v1/instances", token="team").json()["instances"]
        self.assertEqual(listing[0]["ttl"], 10)


class EurekaLeaseBoundsTests(EurekaTestCase):
    """The lease is held within the registry's ttl bounds."""

    ttl_policy = TTLPolicy(30, 20, 60)

    def test_lease_bounds(self):
        body = json.loads(payload("register.json"))
        for asked, granted in ((5, 20), (0, 60), (1000, 60)):
            body["instance"]["leaseInfo"]["durationInSecs"] = asked
            self.assertEqual(
                self.eureka("POST", "/apps/WEB", json.dumps(body).encode()).code, 204)
            [instance] = self.request("GET", "/api/v1/instances", token="team").json()[
                "instances"]
            self.assertEqual(instance["ttl"], granted)
