"""
The registry's OpenAPI description (amalgam8/registry/openapi.json): a valid OpenAPI 3.0
document, served as it is at C{GET /openapi.json}, and true to the code: the same routes and
methods as the Klein app, a Registration schema that accepts what the validator accepts, and
response schemas that the server's real answers satisfy.
"""

import json
import re

from hypothesis import HealthCheck, given, settings, strategies as st
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq

import amalgam8
import amalgam8.registry
from amalgam8.auth import Authenticator
from amalgam8.errors import InvalidRequest
from amalgam8.registry.api import RegistryAPI
from amalgam8.registry.fast import ROUTES
from amalgam8.registry.model import parse_registration
from amalgam8.registry.store import MemoryStore

DOCUMENT = FilePath(amalgam8.registry.__file__).sibling("openapi.json")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
IGNORED_METHODS = {"head", "options"}
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def load():
    return json.loads(DOCUMENT.getContent())


def schema_validator(document, name):
    """A validator for C{#/components/schemas/<name>} of C{document}."""
    return OAS30Validator(
        {"$ref": "#/components/schemas/" + name, "components": document["components"]})


def openapi_path(rule):
    """C{/api/v1/instances/<string:instance_id>} -> C{/api/v1/instances/{instance_id}}."""
    return _CONVERTER.sub(r"{\1}", rule)


class DocumentTests(SynchronousTestCase):
    """The document on its own."""

    def test_valid_openapi_3_0(self):
        """
        The document is valid OpenAPI 3.0.3 (openapi-spec-validator finds nothing wrong).
        """
        document = load()
        self.assertEqual(document["openapi"], "3.0.3")
        validate(document)

    def test_version(self):
        """
        The described version is the package's.
        """
        self.assertEqual(load()["info"]["version"], amalgam8.__version__)

    def test_every_operation_documents_redirect_and_request_id(self):
        """
        Every operation documents the 301 of A8_REQUIRE_HTTPS, and every response of every
        operation documents the A8-Request-Id header (directly or through a shared response).
        """
        document = load()
        shared = document["components"]["responses"]
        for path, item in document["paths"].items():
            for method in HTTP_METHODS.intersection(item):
                responses = item[method]["responses"]
                self.assertIn("301", responses, (path, method))
                for code, response in responses.items():
                    if "$ref" in response:
                        response = shared[response["$ref"].rsplit("/", 1)[1]]
                    self.assertIn("A8-Request-Id", response.get("headers", {}),
                                  (path, method, code))

    def test_api_operations_document_401(self):
        """
        Every operation under /api/v1 needs a namespace, so each documents 401.
        """
        document = load()
        for path, item in document["paths"].items():
            if not path.startswith("/api/v1/"):
                continue
            for method in HTTP_METHODS.intersection(item):
                self.assertIn("401", item[method]["responses"], (path, method))


class RoutesTests(SynchronousTestCase):
    """The document and the Klein app describe the same routes."""

    def test_routes_described(self):
        """
        Every route of RegistryAPI.app and of the heartbeat's road, with each of its methods
        (HEAD and OPTIONS aside), is a path and operation of the document, and the document
        has no other.
        """
        served = {(path, method.lower()) for path, methods in ROUTES for method in methods}
        for rule in RegistryAPI.app.url_map.iter_rules():
            path = openapi_path(rule.rule)
            for method in rule.methods or ():
                if method.lower() not in IGNORED_METHODS:
                    served.add((path, method.lower()))
        described = set()
        for path, item in load()["paths"].items():
            for method in HTTP_METHODS.intersection(item) - IGNORED_METHODS:
                described.add((path, method))
        self.assertEqual(sorted(served - described), [], "served but not described")
        self.assertEqual(sorted(described - served), [], "described but not served")
        self.assertIn(("/api/v1/instances/{instance_id}/heartbeat", "put"), served)

    def test_path_parameters_declared(self):
        """
        Every {name} in a documented path is declared as a path parameter of that path.
        """
        document = load()
        shared = document["components"]["parameters"]
        for path, item in document["paths"].items():
            declared = set()
            for parameter in item.get("parameters", []):
                if "$ref" in parameter:
                    parameter = shared[parameter["$ref"].rsplit("/", 1)[1]]
                if parameter["in"] == "path":
                    declared.add(parameter["name"])
            self.assertEqual(declared, set(re.findall(r"{([^}]+)}", path)), path)


class ServedTests(SynchronousTestCase):
    """What the running API answers, checked against the document."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        store = MemoryStore(clock=self.clock)
        api = RegistryAPI(store, Authenticator(modes=("default",), clock=self.clock),
                          self.clock)
        self.client = StubTreq(api.resource())
        self.document = load()

    def request(self, method, path, **kwargs):
        """One request through the stub; returns C{(response, body bytes)}."""
        requested = self.client.request(method, "http://registry.example" + path, **kwargs)
        self.client.flush()
        response = self.successResultOf(requested)
        content = self.client.content(response)
        self.client.flush()
        return response, self.successResultOf(content)

    def assertMatches(self, name, body):
        """The JSON C{body} satisfies the document's schema C{name}."""
        value = json.loads(body)
        errors = [e.message for e in schema_validator(self.document, name).iter_errors(value)]
        self.assertEqual(errors, [], (name, value))

    def test_serves_the_file(self):
        """
        GET /openapi.json answers 200 with exactly the bytes of the file, as JSON.
        """
        response, body = self.request("GET", "/openapi.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, DOCUMENT.getContent())
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])

    def test_answers_match_schemas(self):
        """
        Real answers (registration, listings with and without fields, a service, the
        services, liveness, an error) satisfy the schemas the document gives them.
        """
        registration = {
            "service_name": "reviews",
            "endpoint": {"type": "HTTP", "value": "10.0.0.7:9080"},
            "ttl": 45, "status": "up", "tags": ["v1"], "metadata": {"zone": "a"},
        }
        self.assertEqual(schema_validator(self.document, "Registration")
                         .is_valid(registration), True)
        response, body = self.request("POST", "/api/v1/instances", json=registration)
        self.assertEqual(response.code, 201)
        self.assertMatches("RegistrationResult", body)
        self.request("POST", "/api/v1/instances", json={
            "service_name": "ratings", "endpoint": {"type": "tcp", "value": "10.0.0.8:9080"}})

        for path in ("/api/v1/instances", "/api/v1/instances?status=ALL&fields=tags",
                     "/api/v1/instances?service_name=reviews&tags=v1"):
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 200, path)
            self.assertMatches("InstanceList", body)
            self.assertTrue(json.loads(body)["instances"], path)
        response, body = self.request("GET", "/api/v1/services/reviews")
        self.assertEqual(response.code, 200)
        self.assertMatches("ServiceInstances", body)
        response, body = self.request("GET", "/api/v1/services")
        self.assertMatches("ServiceList", body)
        response, body = self.request("GET", "/uptime")
        self.assertMatches("Uptime", body)
        response, body = self.request("GET", "/api/v1/services/nothing")
        self.assertEqual(response.code, 404)
        self.assertMatches("Error", body)

    def test_documented_examples_register(self):
        """
        Every example registration body in the document is accepted with 201.
        """
        operation = self.document["paths"]["/api/v1/instances"]["post"]
        examples = operation["requestBody"]["content"]["application/json"]["examples"]
        self.assertTrue(examples)
        for name, example in examples.items():
            response, body = self.request("POST", "/api/v1/instances", json=example["value"])
            self.assertEqual(response.code, 201, (name, body))


# Registration bodies for the schema-agreement test: a valid body with a few members
# replaced. Strings stay clear of the rare Unicode letters whose case mapping gives ASCII
# (such as U+017F, which str.upper() turns into "S"): the schema describes ASCII case.
_chars = st.sampled_from(list("aZ09 /\t\n\x00\x1f\x7f-_.:\u00e9\u20ac\u00a0\u2003\x1c"))
_text = st.text(alphabet=_chars, max_size=140)
_keyword = st.sampled_from([
    "tcp", "TCP", "udp", "http", "HTTP", "Https", "user", "x", "", "UP", "up", "starting",
    "Out_Of_Service", "down", " UP", "UP\n",
])
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6),
    st.floats(allow_nan=False, allow_infinity=False), _text, _keyword)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=70),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=200)


def _around(limit):
    """Plain or two-byte text just under, at and over C{limit} bytes."""
    return st.integers(limit - 3, limit + 2).flatmap(
        lambda n: st.sampled_from(["a" * n, "\u00e9" * (n // 2), "a" + "\u00e9" * (n // 2)]))


_changes = st.lists(st.one_of(
    st.tuples(st.just("service_name"), st.one_of(_text, _scalar, _around(64))),
    st.tuples(st.just("endpoint"), st.one_of(_scalar, st.fixed_dictionaries({}, optional={
        "type": st.one_of(_keyword, _scalar),
        "value": st.one_of(_text, _scalar, _around(128))}))),
    st.tuples(st.just("ttl"), _scalar),
    st.tuples(st.just("status"), st.one_of(_keyword, _scalar)),
    st.tuples(st.just("tags"), st.one_of(
        _scalar,
        st.lists(st.one_of(_text, _scalar), max_size=66),
        st.lists(st.one_of(st.sampled_from(["v1", "v2", "canary"]), _around(128)),
                 min_size=62, max_size=66))),
    st.tuples(st.just("metadata"), st.one_of(_json, _around(1022))),
    st.tuples(st.just("-"), st.sampled_from(["service_name", "endpoint"])),
), min_size=1, max_size=3)


def _within_byte_limits(document, body):
    """
    Whether C{body} keeps the byte limits that the document gives as C{x-maxBytes} (JSON
    Schema's C{maxLength} counts characters, the registry counts bytes of UTF-8).
    """
    members = document["components"]["schemas"]["Registration"]["properties"]

    def fits(value, schema):
        limit = schema["x-maxBytes"]
        if isinstance(value, str):
            return len(value.encode("utf-8")) <= limit
        return True

    if not fits(body.get("service_name"), members["service_name"]):
        return False
    endpoint = body.get("endpoint")
    if isinstance(endpoint, dict):
        if not fits(endpoint.get("value"), members["endpoint"]["properties"]["value"]):
            return False
    tags = body.get("tags")
    if isinstance(tags, list):
        if not all(fits(tag, members["tags"]["items"]) for tag in tags):
            return False
    metadata = body.get("metadata")
    if metadata is not None:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
        if not fits(text, members["metadata"]):
            return False
    return True


def _edge_cases():
    """
    Registration bodies at the edges of every rule, each as C{(name, body)}: a valid body
    with one member replaced (or removed, for C{None}).
    """
    two = "\u00e9"
    cases = {
        "service_name": ["a" * 64, "a" * 65, two * 32, "a" + two * 32, "", " ", "a b",
                         " a", "a ", "a/b", "a\x00", "a\x7f", "a\n", "\u00a0a", 7, None],
        "endpoint": [{"type": "http"}, {"value": "h:1"}, [], "h:1", None,
                     {"type": "http", "value": "a" * 128},
                     {"type": "http", "value": "a" * 129},
                     {"type": "http", "value": two * 64},
                     {"type": "http", "value": "a" + two * 64},
                     {"type": "http", "value": " "}, {"type": "http", "value": " h:1 "},
                     {"type": "http", "value": "h\t1"}, {"type": "http", "value": 1}]
        + [{"type": t, "value": "h:1"}
           for t in ["tcp", "UDP", "Http", "HTTPS", "user", "grpc", "", "http ", "http\n", 1]],
        "ttl": [0, 1, 30, 30.0, 30.5, -1, 10**30, "30", True, None],
        "status": ["UP", "up", "Starting", "out_of_service", "DOWN", "", "UP\n", 1, None],
        "tags": [["v1"] * 64, ["v1"] * 65, ["a" * 128], ["a" * 129], [two * 64],
                 ["a" + two * 64], [""], [1], "v1", [], None, [" "], ["a\n"]],
        "metadata": ["a" * 1022, "a" * 1023, two * 511, "a" + two * 511, {"k": [1, 2]},
                     False, 0, "", None, {"k": "a" * 1016}, {"k": "a" * 1017}],
    }
    for member, values in cases.items():
        for value in values:
            body = {"service_name": "reviews",
                    "endpoint": {"type": "http", "value": "10.0.0.7:9080"}}
            if value is None and member in ("service_name", "endpoint"):
                del body[member]
            else:
                body[member] = value
            yield "{}={!r}".format(member, value)[:80], body


def _accepted(body):
    try:
        parse_registration(body, lambda ttl: ttl or 30)
    except InvalidRequest:
        return False
    return True


class RegistrationSchemaTests(SynchronousTestCase):
    """The Registration schema says what parse_registration accepts."""

    def test_edges_agree(self):
        """
        At the edge of every rule (byte limits in ASCII and in two-byte UTF-8, counts,
        blank and padded text, control characters, case, types, null), a body is valid by
        the schema and its byte limits exactly when the registry's validation accepts it.
        """
        document = load()
        validator = schema_validator(document, "Registration")
        disagree = []
        for name, body in _edge_cases():
            documented = validator.is_valid(body) and _within_byte_limits(document, body)
            if documented != _accepted(body):
                disagree.append((name, "documented" if documented else "accepted"))
        self.assertEqual(disagree, [])

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_changes)
    def test_schema_agrees_with_validation(self, changes):
        """
        A registration body is valid by the schema (and its byte limits) exactly when the
        registry's validation accepts it.
        """
        body = {"service_name": "reviews",
                "endpoint": {"type": "http", "value": "10.0.0.7:9080"}}
        for key, value in changes:
            if key == "-":
                body.pop(value, None)
            else:
                body[key] = value
        accepted = _accepted(body)
        document = load()
        validator = schema_validator(document, "Registration")
        documented = validator.is_valid(body) and _within_byte_limits(document, body)
        self.assertEqual(accepted, documented,
                         (body, [e.message for e in validator.iter_errors(body)]))
