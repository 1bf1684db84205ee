# -*- test-case-name: tests.test_eureka -*-
"""
The registry's Eureka-compatible API (SPEC A2, last part), for Eureka 1.x clients that use no
sidecar: an instance-bound Klein app mounted under C{/api/eureka/}, whose first path segment
is the namespace (the bearer token under the registry's auth mode).

Eureka instances are ordinary registry instances: C{app} lower-cased is the service name, the
endpoint is C{ipAddr:port} (C{https} and C{securePort} when only that one is enabled), the
lease (C{leaseInfo.durationInSecs}, 90 s by default) is the ttl within the registry's bounds,
and tags come from the metadata key C{amalgam8.tags} (C{;}-separated). What only Eureka knows
(its instance id, host name, VIP addresses, its own status, its metadata) is kept in the
instance's metadata under C{eureka}. The Eureka views (apps, app, instance, vips) are built
from the store, so instances of any origin appear in them.

Bodies and answers are Eureka's JSON or XML (the Java client's default). XML is read with
expat and no DTD is accepted, so no entity can be declared (no entity bombs, no external
entities).
"""

import json
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

import attrs
from klein import Klein
from twisted.logger import Logger

from amalgam8.errors import InvalidRequest, NotFound, UnknownInstance, UnsupportedMediaType
from amalgam8.registry.model import parse_registration
from amalgam8.web import MAX_BODY, answer_failure, json_answer, json_body, registry_error
from amalgam8.web import route_name

__all__ = ["EurekaAPI", "LEASE", "parse_instance", "parse_xml", "instance_view"]

#: Eureka's default lease (seconds).
LEASE = 90
#: Eureka's default renewal interval (seconds), shown in views.
RENEWAL = 30
#: Eureka's statuses and the registry status each one maps to. DOWN and UNKNOWN must not
#: route and must still expire: STARTING is the registry status that does both.
STATUSES = {
    "UP": "UP",
    "DOWN": "STARTING",
    "STARTING": "STARTING",
    "OUT_OF_SERVICE": "OUT_OF_SERVICE",
    "UNKNOWN": "STARTING",
}
TAGS_KEY = "amalgam8.tags"
_DEFAULT_PORT = 7001
_DEFAULT_SECURE_PORT = 7002
_MAX_DEPTH = 16
_DATA_CENTER = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                "name": "MyOwn"}
_EMPTY_MAP = {"@class": "java.util.Collections$EmptyMap"}
#: JSON names that Eureka's XML spells differently.
_XML_NAMES = {"overriddenStatus": "overriddenstatus"}
_XML_TYPES = (b"application/xml", b"text/xml")
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# -- reading bodies -------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside expat's handlers to stop a parse."""


@attrs.define
class _Node:
    name: str
    attributes: dict
    children: dict = attrs.field(factory=dict)
    text: list = attrs.field(factory=list)

    def value(self):
        text = "".join(self.text).strip()
        if not self.children and not self.attributes:
            return text
        value = {"@" + key: item for key, item in self.attributes.items()}
        value.update(self.children)
        if text:
            value["$"] = text
        return value

    def add(self, name, value):
        if name not in self.children:
            self.children[name] = value
        elif isinstance(self.children[name], list):
            self.children[name].append(value)
        else:
            self.children[name] = [self.children[name], value]


def parse_xml(raw):
    """
    Read an XML document into Eureka's JSON shape: attributes as C{@name}, the text of an
    element with attributes as C{$}, repeated elements as lists.

    @return: C{{root name: value}}.
    @raise InvalidRequest: for XML that is not well-formed, has a DTD, or nests too deep.
    """
    parser = expat.ParserCreate()
    stack = [_Node("", {})]

    def refuse(*_ignored):
        raise _Refused("a DTD or entity declaration is not accepted")

    def start(name, attributes):
        if len(stack) > _MAX_DEPTH:
            raise _Refused("the XML nests deeper than {} elements".format(_MAX_DEPTH))
        stack.append(_Node(name, attributes))

    def end(name):
        node = stack.pop()
        stack[-1].add(name, node.value())

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = lambda text: stack[-1].text.append(text)
    try:
        parser.Parse(raw, True)
    except _Refused as e:
        raise InvalidRequest(str(e))
    except (expat.ExpatError, ValueError) as e:
        raise InvalidRequest("the body is not well-formed XML ({})".format(e))
    return stack[0].children


def _is_xml(content_type):
    return content_type.split(b";", 1)[0].strip().lower() in _XML_TYPES


def read_body(request):
    """The decoded Eureka body of C{request}, from JSON or XML."""
    content_type = request.getHeader(b"content-type")
    if content_type is None or not _is_xml(content_type):
        try:
            return json_body(request)
        except UnsupportedMediaType:
            raise UnsupportedMediaType("the body must be application/json or application/xml")
    request.content.seek(0)
    raw = request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidRequest("the body is larger than {} bytes".format(MAX_BODY))
    return parse_xml(raw)


# -- an instance from a body ----------------------------------------------------------------


def _string(instance, name, required=True):
    value = instance.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRequest("instance.{} is required".format(name))
        return None
    if not isinstance(value, str):
        raise InvalidRequest("instance.{} must be a string".format(name))
    if required and not value.strip():
        raise InvalidRequest("instance.{} must not be empty".format(name))
    return value.strip()


def _whole(value, what, low=0, high=None):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("{} must be a whole number".format(what))
    if value < low or (high is not None and value > high):
        raise InvalidRequest("{} must be between {} and {}".format(what, low, high))
    return value


def _flag(value, what):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidRequest("{} must be true or false".format(what))


def _port(instance, name, default_number, default_enabled):
    """C{(number, enabled)} of C{port} or C{securePort} (C{{"$":8080,"@enabled":"true"}})."""
    value = instance.get(name)
    what = "instance." + name
    if value is None or value == "":
        return default_number, default_enabled
    if isinstance(value, dict):
        number = value.get("$", default_number)
        enabled = value.get("@enabled", default_enabled)
        return _whole(number, what, 0, 65535), _flag(enabled, what + ".@enabled")
    return _whole(value, what, 0, 65535), True


def _metadata(instance):
    value = instance.get("metadata")
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("instance.metadata must be a map of strings")
    result = {}
    for key, item in value.items():
        if key.startswith("@"):
            continue
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)) or item is None:
            item = "" if item is None else str(item)
        if not isinstance(item, str):
            raise InvalidRequest("instance.metadata.{} must be a string".format(key))
        result[key] = item
    return result


def _status(value, what):
    if value is None or value == "":
        return "UP"
    if not isinstance(value, str) or value.strip().upper() not in STATUSES:
        raise InvalidRequest("{} must be one of {}".format(what, ", ".join(STATUSES)))
    return value.strip().upper()


def _endpoint(address, port):
    if ":" in address and not address.startswith("["):
        address = "[" + address + "]"
    return "{}:{}".format(address, port)


def parse_instance(body, app, grant_ttl):
    """
    Validate a Eureka registration body (C{{"instance": {...}}}) for C{app}.

    @param grant_ttl: the registry's ttl policy (requested seconds -> granted).
    @return: a L{Registration<amalgam8.registry.model.Registration>}.
    @raise InvalidRequest: naming the first problem.
    """
    if not isinstance(body, dict) or not isinstance(body.get("instance"), dict):
        raise InvalidRequest("the body must be an instance object ({\"instance\": {...}})")
    instance = body["instance"]
    host = _string(instance, "hostName")
    name = _string(instance, "app")
    vip = _string(instance, "vipAddress")
    address = _string(instance, "ipAddr")
    instance_id = _string(instance, "instanceId", required=False) or host
    secure_vip = _string(instance, "secureVipAddress", required=False)
    if name.upper() != app.upper():
        raise InvalidRequest("mismatched app: the path names {} but the instance {}".format(
            app.upper(), name.upper()))
    status = _status(instance.get("status"), "instance.status")
    port, port_on = _port(instance, "port", _DEFAULT_PORT, True)
    secure, secure_on = _port(instance, "securePort", _DEFAULT_SECURE_PORT, False)
    if port_on:
        endpoint = {"type": "http", "value": _endpoint(address, port)}
    elif secure_on:
        endpoint = {"type": "https", "value": _endpoint(address, secure)}
    else:
        raise InvalidRequest("instance.port or instance.securePort must be enabled")
    lease = instance.get("leaseInfo")
    duration = 0
    if isinstance(lease, dict):
        duration = _whole(lease.get("durationInSecs", 0), "instance.leaseInfo.durationInSecs")
    elif lease not in (None, ""):
        raise InvalidRequest("instance.leaseInfo must be an object")
    metadata = _metadata(instance)
    tags = [tag.strip() for tag in metadata.get(TAGS_KEY, "").split(";") if tag.strip()]
    eureka = {"instanceId": instance_id, "hostName": host, "vipAddress": vip,
              "status": status, "port": [port, port_on], "securePort": [secure, secure_on]}
    if secure_vip is not None:
        eureka["secureVipAddress"] = secure_vip
    if metadata:
        eureka["metadata"] = metadata
    return parse_registration({
        "service_name": name.lower(),
        "endpoint": endpoint,
        "ttl": duration,
        "status": STATUSES[status],
        "tags": tags,
        "metadata": {"eureka": eureka},
    }, lambda requested: grant_ttl(requested or LEASE))


def with_status(registration, status):
    """C{registration} with the Eureka status C{status} (and the registry status it maps to)."""
    metadata = _eureka_data(registration)
    metadata["status"] = status
    return attrs.evolve(registration, status=STATUSES[status],
                        metadata=_compact({"eureka": metadata}))


# -- views ----------------------------------------------------------------------------------


def _eureka_data(registration):
    """What a registration keeps under metadata C{eureka} (a dict, maybe empty)."""
    if registration.metadata is None or '"eureka"' not in registration.metadata:
        return {}
    metadata = json.loads(registration.metadata)
    data = metadata.get("eureka") if isinstance(metadata, dict) else None
    return dict(data) if isinstance(data, dict) else {}


def eureka_id(instance):
    """The Eureka instance id of a registry instance (its own id when it has none)."""
    return eureka_id_of(instance.registration)


def eureka_id_of(registration):
    value = _eureka_data(registration).get("instanceId")
    return value if isinstance(value, str) else registration.id


def _split_endpoint(value):
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        return value, 0
    return host.strip("[]"), int(port)


def _pick(data, name, kind, default):
    value = data.get(name)
    return value if isinstance(value, kind) else default


def _port_view(data, name, number, enabled):
    value = data.get(name)
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
            and isinstance(value[1], bool)):
        number, enabled = value
    return {"$": number, "@enabled": "true" if enabled else "false"}


def instance_view(instance):
    """The Eureka instance object (JSON shape) of a registry instance of any origin."""
    registration = instance.registration
    data = _eureka_data(registration)
    host, port = _split_endpoint(registration.endpoint_value)
    secure = registration.endpoint_type == "https"
    status = registration.status
    if status == "STARTING":
        status = _pick(data, "status", str, status)
        status = status if STATUSES.get(status) == "STARTING" else "STARTING"
    millis = int(instance.last_heartbeat * 1000)
    metadata = _pick(data, "metadata", dict, {})
    metadata = {k: v for k, v in metadata.items() if isinstance(v, str) and k != TAGS_KEY}
    if registration.tags:
        metadata[TAGS_KEY] = ";".join(registration.tags)
    vip = _pick(data, "vipAddress", str, registration.service_name)
    return {
        "instanceId": eureka_id(instance),
        "hostName": _pick(data, "hostName", str, host),
        "app": registration.service_name.upper(),
        "ipAddr": host,
        "status": status,
        "overriddenStatus": "UNKNOWN",
        "port": _port_view(data, "port", 0 if secure else port, not secure),
        "securePort": _port_view(data, "securePort", port if secure else 443, secure),
        "countryId": 1,
        "dataCenterInfo": dict(_DATA_CENTER),
        "leaseInfo": {
            "renewalIntervalInSecs": RENEWAL,
            "durationInSecs": registration.ttl,
            "registrationTimestamp": millis,
            "lastRenewalTimestamp": millis,
            "evictionTimestamp": 0,
            "serviceUpTimestamp": millis,
        },
        "metadata": metadata or dict(_EMPTY_MAP),
        "vipAddress": vip,
        "secureVipAddress": _pick(data, "secureVipAddress", str, vip),
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": str(millis),
        "lastDirtyTimestamp": str(millis),
        "actionType": "ADDED",
    }


def application_view(name, views):
    return {"name": name, "instance": views}


def applications_view(index, views):
    """C{applications} of instance views, grouped by app in first-seen order."""
    apps = {}
    counts = {}
    for view in views:
        apps.setdefault(view["app"], []).append(view)
        counts[view["status"]] = counts.get(view["status"], 0) + 1
    hashcode = "".join("{}_{}_".format(status, counts[status]) for status in sorted(counts))
    return {
        "versions__delta": str(index),
        "apps__hashcode": hashcode,
        "application": [application_view(name, items) for name, items in apps.items()],
    }


def to_xml(name, value):
    """Eureka's XML for a JSON-shaped C{value} (C{@name} attributes, C{$} text)."""
    name = _XML_NAMES.get(name, name)
    if isinstance(value, list):
        return "".join(to_xml(name, item) for item in value)
    if not isinstance(value, dict):
        return "<{0}>{1}</{0}>".format(name, escape(_scalar(value)))
    attributes = "".join(" {}={}".format(key[1:], quoteattr(_scalar(item)))
                         for key, item in value.items() if key.startswith("@"))
    inner = "".join(to_xml(key, item) for key, item in value.items()
                    if not key.startswith("@") and key != "$")
    if "$" in value:
        inner = escape(_scalar(value["$"])) + inner
    if not inner:
        return "<{}{}/>".format(name, attributes)
    return "<{0}{1}>{2}</{0}>".format(name, attributes, inner)


def _scalar(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _wants_xml(request):
    accept = request.getHeader(b"accept")
    for media in (accept or b"").split(b","):
        media = media.split(b";", 1)[0].strip().lower()
        if media in _XML_TYPES:
            return True
        if media == b"application/json":
            return False
    return False


def _answer(request, name, value):
    """C{{name: value}} in the format the request accepts."""
    if _wants_xml(request):
        body = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                + to_xml(name, value)).encode("utf-8")
        request.setHeader(b"content-type", b"application/xml")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body
    return json_answer(request, json.dumps({name: value}, separators=(",", ":"),
                                           ensure_ascii=False).encode("utf-8"))


def _empty(request, code=200):
    request.setResponseCode(code)
    request.setHeader(b"content-length", b"0")
    return b""


# -- the API --------------------------------------------------------------------------------

_BASE = "/<string:token>/v2"


class EurekaAPI:
    """
    The Eureka REST operations over a registry store.

    @ivar store: the registry's L{IRegistryStore}.
    @ivar authenticator: the registry's L{Authenticator<amalgam8.auth.Authenticator>}; the
        path's first segment is its bearer token.
    @ivar grant_ttl: the registry's ttl policy (requested seconds -> granted seconds).
    """

    app = Klein()
    log = Logger()

    def __init__(self, store, authenticator, grant_ttl):
        self._store = store
        self._auth = authenticator
        self._grant = grant_ttl

    def resource(self):
        return self.app.resource()

    def _namespace(self, token):
        return self._auth.namespace(b"Bearer " + token.encode("utf-8"))

    @app.handle_errors(Exception)
    def _failed(self, request, failure):
        return answer_failure(request, failure, registry_error, self.log)

    async def _app_instances(self, namespace, app):
        """The live instances whose service name is C{app} when upper-cased."""
        wanted = app.upper()
        _, names = await self._store.services(namespace)
        found = []
        for name in names:
            if name.upper() == wanted:
                found.extend((await self._store.instances(namespace, name))[1])
        return found

    async def _find(self, namespace, app, instance_id):
        for instance in await self._app_instances(namespace, app):
            if eureka_id(instance) == instance_id or instance.id == instance_id:
                return instance
        raise NotFound("no instance {} of app {}".format(instance_id, app.upper()))

    async def _apps(self, token, keep=lambda view: True):
        namespace = self._namespace(token)
        index, instances = await self._store.instances(namespace)
        views = [view for view in map(instance_view, instances) if keep(view)]
        return index, views

    # -- registration and leases -------------------------------------------------------------

    @app.route(_BASE + "/apps/<string:app>", methods=["POST"])
    @route_name("eureka_register")
    async def register(self, request, token, app):
        namespace = self._namespace(token)
        registration = parse_instance(read_body(request), app, self._grant)
        new_id = eureka_id_of(registration)
        older = [i for i in await self._app_instances(namespace, app)
                 if eureka_id(i) == new_id and i.id != registration.id]
        await self._store.register(namespace, registration)
        for instance in older:
            # The same Eureka instance moved to another endpoint: the old one is replaced.
            try:
                await self._store.deregister(namespace, instance.id)
            except UnknownInstance:
                pass
        self.log.debug("eureka registered {app} {id} in {namespace}", app=app.upper(),
                       id=new_id, namespace=namespace)
        return _empty(request, 204)

    @app.route(_BASE + "/apps/<string:app>/<string:instance_id>", methods=["PUT"])
    @route_name("eureka_renew")
    async def renew(self, request, token, app, instance_id):
        namespace = self._namespace(token)
        instance = await self._find(namespace, app, instance_id)
        try:
            await self._store.heartbeat(namespace, instance.id)
        except UnknownInstance:
            raise NotFound("no instance {} of app {}".format(instance_id, app.upper()))
        return _empty(request)

    @app.route(_BASE + "/apps/<string:app>/<string:instance_id>", methods=["DELETE"])
    @route_name("eureka_cancel")
    async def cancel(self, request, token, app, instance_id):
        namespace = self._namespace(token)
        instance = await self._find(namespace, app, instance_id)
        try:
            await self._store.deregister(namespace, instance.id)
        except UnknownInstance:
            raise NotFound("no instance {} of app {}".format(instance_id, app.upper()))
        return _empty(request)

    @app.route(_BASE + "/apps/<string:app>/<string:instance_id>/status",
               methods=["PUT", "DELETE"])
    @route_name("eureka_status")
    async def status(self, request, token, app, instance_id):
        namespace = self._namespace(token)
        values = request.args.get(b"value")
        if request.method == b"DELETE" and not values:
            values = [b"UP"]
        if not values:
            raise InvalidRequest("the query parameter value is required")
        status = _status(values[-1].decode("utf-8", "replace"), "value")
        instance = await self._find(namespace, app, instance_id)
        await self._store.register(namespace, with_status(instance.registration, status))
        return _empty(request)

    # -- views -------------------------------------------------------------------------------

    @app.route(_BASE + "/apps", methods=["GET"])
    @app.route(_BASE + "/apps/", methods=["GET"])
    @app.route(_BASE + "/apps/delta", methods=["GET"])
    @route_name("eureka_apps")
    async def apps(self, request, token):
        # A delta of everything is right: the client adds what it gets, and a hash code
        # that differs from its own (something went away) makes it fetch the whole list.
        index, views = await self._apps(token)
        return _answer(request, "applications", applications_view(index, views))

    @app.route(_BASE + "/apps/<string:app>", methods=["GET"])
    @route_name("eureka_app")
    async def application(self, request, token, app):
        namespace = self._namespace(token)
        views = [instance_view(i) for i in await self._app_instances(namespace, app)]
        if not views:
            raise NotFound("no app {}".format(app.upper()))
        return _answer(request, "application", application_view(app.upper(), views))

    @app.route(_BASE + "/apps/<string:app>/<string:instance_id>", methods=["GET"])
    @route_name("eureka_app_instance")
    async def app_instance(self, request, token, app, instance_id):
        instance = await self._find(self._namespace(token), app, instance_id)
        return _answer(request, "instance", instance_view(instance))

    @app.route(_BASE + "/instances/<string:instance_id>", methods=["GET"])
    @route_name("eureka_instance")
    async def instance(self, request, token, instance_id):
        _, instances = await self._store.instances(self._namespace(token))
        for instance in instances:
            if eureka_id(instance) == instance_id or instance.id == instance_id:
                return _answer(request, "instance", instance_view(instance))
        raise NotFound("no instance {}".format(instance_id))

    @app.route(_BASE + "/vips/<string:vip>", methods=["GET"])
    @route_name("eureka_vip")
    async def vips(self, request, token, vip):
        index, views = await self._apps(
            token,
            lambda view: vip in [v.strip() for v in view["vipAddress"].split(",")])
        if not views:
            raise NotFound("no instances with vipAddress {}".format(vip))
        return _answer(request, "applications", applications_view(index, views))

