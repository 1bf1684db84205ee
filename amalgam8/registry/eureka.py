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

Bodies and answers are Eureka's JSON or XML (the Java client's default). XML answers have the
shape of the Eureka server's XStream codec (element order, C{overriddenstatus}, C{enabled}
and C{class} attributes, metadata keys with C{_} written C{__}). XML is read with
defusedxml and no DTD is accepted, so no entity can be declared (no entity bombs, no external
entities); it may nest at most 16 elements deep.

C{GET /apps/delta} answers what changed in the last three minutes (Eureka's recently-changed
queue, L{RecentChanges}), each instance with its C{actionType}, and the C{apps__hashcode} of
the whole list, which the client checks its merged copy against.
"""

import json
import re
from xml.sax.saxutils import escape, quoteattr

import attrs
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError
from klein import Klein
from twisted.logger import Logger

from amalgam8.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ReadOnlyInstance,
    UnknownInstance,
    UnsupportedMediaType,
)
from amalgam8.registry.model import MAX_METADATA, parse_registration
from amalgam8.web import MAX_BODY, answer_failure, json_answer, json_body, registry_error
from amalgam8.web import route_name

__all__ = [
    "EurekaAPI",
    "LEASE",
    "RETENTION",
    "RecentChanges",
    "parse_instance",
    "parse_xml",
    "instance_view",
]

#: Eureka's default lease (seconds).
LEASE = 90
#: Eureka's default renewal interval (seconds), shown in views.
RENEWAL = 30
#: How long a change stays in C{/apps/delta} (seconds): Eureka's
#: C{retentionTimeInMSInDeltaQueue}, 3 minutes.
RETENTION = 180
#: Eureka's statuses and the registry status each one maps to. DOWN and UNKNOWN must not
#: route and must still expire: STARTING is the registry status that does both.
STATUSES = {
    "UP": "UP",
    "DOWN": "STARTING",
    "STARTING": "STARTING",
    "OUT_OF_SERVICE": "OUT_OF_SERVICE",
    "UNKNOWN": "STARTING",
}
ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
TAGS_KEY = "amalgam8.tags"
#: The page URLs a registration may carry, shown back in views (XStream's order).
URLS = ("homePageUrl", "statusPageUrl", "healthCheckUrl", "secureHealthCheckUrl")
_DEFAULT_PORT = 7001
_DEFAULT_SECURE_PORT = 7002
_MAX_DEPTH = 16
_DATA_CENTER = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                "name": "MyOwn"}
_EMPTY_MAP = {"@class": "java.util.Collections$EmptyMap"}
#: JSON names that Eureka's XML spells differently.
_XML_NAMES = {"overriddenStatus": "overriddenstatus"}
_XML_TYPES = (b"application/xml", b"text/xml")
#: A metadata key: it is an XML element name in XML bodies and answers (no ':', which would
#: need a namespace).
_METADATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,127}\Z")
#: What XML 1.0 cannot carry (and what no name or value here may hold): C0 controls but tab,
#: newline and carriage return, DEL, lone surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
#: XStream's escapes in element names: C{_} is written C{__}, C{$} is written C{_-}.
_XSTREAM_ESCAPE = re.compile(r"_([_-])")
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# -- reading bodies -------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside the XML parser's target to stop a parse."""


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


def _xstream_unescape(name):
    return _XSTREAM_ESCAPE.sub(lambda m: "_" if m.group(1) == "_" else "$", name)


def _xstream_escape(name):
    return name.replace("_", "__").replace("$", "_-")


class _ShapeBuilder:
    """
    The target of the XML parser: builds Eureka's JSON shape as the elements come (so a
    document nested too deep is refused before it is held whole).
    """

    def __init__(self):
        self._stack = [_Node("", {})]

    def start(self, tag, attributes):
        if len(self._stack) > _MAX_DEPTH:
            raise _Refused("the XML nests deeper than {} elements".format(_MAX_DEPTH))
        self._stack.append(_Node(_xstream_unescape(tag), dict(attributes)))

    def end(self, tag):
        node = self._stack.pop()
        self._stack[-1].add(node.name, node.value())

    def data(self, text):
        self._stack[-1].text.append(text)

    def close(self):
        return self._stack[0].children


def parse_xml(raw):
    """
    Read an XML document into Eureka's JSON shape: attributes as C{@name}, the text of an
    element with attributes as C{$}, repeated elements as lists, XStream's C{__} in element
    names as C{_}.

    @param raw: the document (bytes).
    @return: C{{root name: value}}.
    @raise InvalidRequest: for XML that is not well-formed, has a DTD (so no entity can be
        declared), or nests too deep.
    """
    parser = DefusedXMLParser(target=_ShapeBuilder(), forbid_dtd=True)
    try:
        parser.feed(raw)
        return parser.close()
    except _Refused as e:
        raise InvalidRequest(str(e))
    except DefusedXmlException:
        raise InvalidRequest("a DTD or entity declaration is not accepted")
    except (ParseError, ValueError, LookupError) as e:
        raise InvalidRequest("the body is not well-formed XML ({})".format(e))


def _is_xml(content_type):
    return content_type.split(b";", 1)[0].strip().lower() in _XML_TYPES


def read_body(request):
    """
    The decoded Eureka body of C{request}, from JSON or XML (by its content type).

    @raise UnsupportedMediaType: for a body that is neither.
    @raise PayloadTooLarge: for a body over L{MAX_BODY<amalgam8.web.MAX_BODY>} bytes.
    @raise InvalidRequest: for a body that does not parse.
    """
    content_type = request.getHeader(b"content-type")
    if content_type is None or not _is_xml(content_type):
        try:
            return json_body(request)
        except UnsupportedMediaType:
            raise UnsupportedMediaType("the body must be application/json or application/xml")
    length = request.getHeader(b"content-length")
    too_large = PayloadTooLarge("the body is larger than {} bytes".format(MAX_BODY))
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise too_large
    request.content.seek(0)
    raw = request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise too_large
    return parse_xml(raw)


# -- an instance from a body ----------------------------------------------------------------


def _check_text(value, what):
    if _CONTROL.search(value) or _NOT_XML.search(value):
        raise InvalidRequest("{} contains control or non-XML characters".format(what))
    return value


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
    return _check_text(value.strip(), "instance." + name)


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
            continue    # Eureka's {"@class": "java.util.Collections$EmptyMap"}
        if not _METADATA_KEY.match(key):
            raise InvalidRequest(
                "instance.metadata key {!r} is not a name Eureka's XML can carry (a letter "
                "or _, then letters, digits, . _ -; at most 128)".format(key))
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)) or item is None:
            item = "" if item is None else str(item)
        if not isinstance(item, str):
            raise InvalidRequest("instance.metadata.{} must be a string".format(key))
        result[key] = _check_text(item, "instance.metadata." + key)
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
    renewal = RENEWAL
    if isinstance(lease, dict):
        duration = _whole(lease.get("durationInSecs", 0), "instance.leaseInfo.durationInSecs")
        renewal = _whole(lease.get("renewalIntervalInSecs", RENEWAL),
                         "instance.leaseInfo.renewalIntervalInSecs", 0, 86400) or RENEWAL
    elif lease not in (None, ""):
        raise InvalidRequest("instance.leaseInfo must be an object")
    metadata = _metadata(instance)
    tags = [tag.strip() for tag in metadata.get(TAGS_KEY, "").split(";") if tag.strip()]
    eureka = {"instanceId": instance_id, "hostName": host, "vipAddress": vip,
              "status": status, "port": [port, port_on], "securePort": [secure, secure_on]}
    if secure_vip is not None:
        eureka["secureVipAddress"] = secure_vip
    if renewal != RENEWAL:
        eureka["renewal"] = renewal
    for url in URLS:
        value = _string(instance, url, required=False)
        if value is not None:
            eureka[url] = value
    if metadata:
        eureka["metadata"] = metadata
    kept = _compact({"eureka": eureka})
    if len(kept.encode("utf-8")) > MAX_METADATA:
        raise InvalidRequest(
            "the instance is too large: its instanceId, hostName, VIP addresses, page URLs "
            "and metadata take more than {} bytes".format(MAX_METADATA))
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


def _eureka_status(registration, data):
    """The Eureka status shown for C{registration} (C{data}: its L{_eureka_data})."""
    status = registration.status
    if status == "STARTING":
        own = data.get("status")
        return own if isinstance(own, str) and STATUSES.get(own) == "STARTING" else status
    return status


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


def instance_view(instance, action=ADDED):
    """
    The Eureka instance object (JSON shape, in the XStream codec's order of elements) of a
    registry instance of any origin.

    @param action: its C{actionType}.
    """
    registration = instance.registration
    data = _eureka_data(registration)
    host, port = _split_endpoint(registration.endpoint_value)
    secure = registration.endpoint_type == "https"
    millis = int(instance.last_heartbeat * 1000)
    metadata = _pick(data, "metadata", dict, {})
    metadata = {k: v for k, v in metadata.items()
                if isinstance(v, str) and k != TAGS_KEY and _METADATA_KEY.match(k)}
    if registration.tags:
        metadata[TAGS_KEY] = ";".join(registration.tags)
    vip = _pick(data, "vipAddress", str, registration.service_name)
    status = _eureka_status(registration, data)
    view = {
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
            "renewalIntervalInSecs": _pick(data, "renewal", int, RENEWAL),
            "durationInSecs": registration.ttl,
            "registrationTimestamp": millis,
            "lastRenewalTimestamp": millis,
            "evictionTimestamp": 0,
            "serviceUpTimestamp": millis if status == "UP" else 0,
        },
        "metadata": metadata or dict(_EMPTY_MAP),
    }
    for url in URLS:
        value = data.get(url)
        if isinstance(value, str):
            view[url] = value
    view.update({
        "vipAddress": vip,
        "secureVipAddress": _pick(data, "secureVipAddress", str, vip),
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": str(millis),
        "lastDirtyTimestamp": str(millis),
        "actionType": action,
    })
    return view


def _deleted_view(instance, now):
    """The view of an instance seen gone at C{now}: C{DELETED}, evicted then."""
    view = instance_view(instance, DELETED)
    view["leaseInfo"]["evictionTimestamp"] = int(now * 1000)
    return view


def application_view(name, views):
    return {"name": name, "instance": views}


def hashcode(statuses):
    """
    Eureka's reconcile hash code of a list of statuses: C{STATUS_count_} for each status,
    sorted by status (C{"DOWN_1_UP_3_"}).
    """
    counts = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return "".join("{}_{}_".format(status, counts[status]) for status in sorted(counts))


def applications_view(index, views, apps_hashcode=None):
    """
    C{applications} of instance views, grouped by app in first-seen order.

    @param apps_hashcode: the hash code to show (a delta's is of the whole list); by default
        the hash code of C{views}.
    """
    apps = {}
    for view in views:
        apps.setdefault(view["app"], []).append(view)
    if apps_hashcode is None:
        apps_hashcode = hashcode(view["status"] for view in views)
    return {
        "versions__delta": str(index),
        "apps__hashcode": apps_hashcode,
        "application": [application_view(name, items) for name, items in apps.items()],
    }


def to_xml(name, value, names=_XML_NAMES.get):
    """
    Eureka's XML for a JSON-shaped C{value} (C{@name} attributes, C{$} text): metadata keys
    are written with XStream's escapes (C{_} as C{__}), and characters XML cannot carry are
    replaced (U+FFFD).
    """
    if isinstance(value, list):
        return "".join(to_xml(name, item, names) for item in value)
    name = names(name, name)
    if not isinstance(value, dict):
        return "<{0}>{1}</{0}>".format(name, _text(value))
    attributes = "".join(" {}={}".format(key[1:], quoteattr(_NOT_XML.sub("\ufffd",
                                                                         _scalar(item))))
                         for key, item in value.items() if key.startswith("@"))
    inner_names = _metadata_name if name == "metadata" else _XML_NAMES.get
    inner = "".join(to_xml(key, item, inner_names) for key, item in value.items()
                    if not key.startswith("@") and key != "$")
    if "$" in value:
        inner = _text(value["$"]) + inner
    if not inner:
        return "<{}{}/>".format(name, attributes)
    return "<{0}{1}>{2}</{0}>".format(name, attributes, inner)


def _metadata_name(key, _default):
    """The XML name of a metadata key (XStream's escapes)."""
    return _xstream_escape(key)


def _text(value):
    return escape(_NOT_XML.sub("\ufffd", _scalar(value)))


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


# -- the recently-changed queue -------------------------------------------------------------


@attrs.define
class _Seen:
    """
    What the Eureka views last showed of one namespace.

    @ivar at: when (seconds).
    @ivar index: the store's index then.
    @ivar ids: registry id -> C{(registration, key, Eureka status)}, kept so that an
        unchanged registration is not read again.
    @ivar keys: C{(APP, instanceId)} -> the instances listed under it.
    @ivar changes: key -> C{(when, action, views of a deleted key or None)}, oldest first.
    """

    at: float
    index: int
    ids: dict
    keys: dict
    changes: dict = attrs.field(factory=dict)


@attrs.define
class RecentChanges:
    """
    Eureka's recently-changed queue, for C{GET /apps/delta}: the Eureka instances (by app and
    instance id) added, modified or deleted in the last L{RETENTION} seconds.

    The registry's instances change through any API, a catalog or expiry, so the queue is not
    fed by the Eureka operations: each view of the whole list (C{/apps} and C{/apps/delta})
    compares what the store lists with what the last view saw and notes the difference,
    stamped with the time it was seen. A client that fetched the list (whole or delta) less
    than L{RETENTION} seconds ago therefore finds in the delta everything that changed since,
    each key with its latest state (C{ADDED} and C{MODIFIED} carry the instance as it is,
    C{DELETED} as it was last seen). A heartbeat is no change.

    A namespace is followed from its first view that lists an instance, which notes no
    change: a client that fetched it empty has the hash code C{""}, which no other list has,
    and fetches the whole list. A view of an empty namespace that is not followed keeps
    nothing, so unused namespaces (any token names one) cost nothing. A namespace no view
    looked at for L{RETENTION} seconds is forgotten; when it is viewed again everything it
    lists is C{ADDED}, so that a client idle as long gets each instance again (and, by the
    hash code, fetches the whole list if something went away).

    @ivar clock: the C{IReactorTime} that stamps the changes.
    @ivar retention: how long a change is kept (seconds).
    """

    clock: object
    retention: float = RETENTION
    _seen: dict = attrs.field(factory=dict, init=False)
    _forgotten: set = attrs.field(factory=set, init=False)
    _next_sweep: float = attrs.field(default=0, init=False)

    def observe(self, namespace, index, instances):
        """
        Note what a view of the whole list of C{namespace} shows.

        @param index: the store's index of C{instances}.
        @param instances: every live instance of the namespace.
        @return: the Eureka hash code of C{instances}.
        """
        now = self.clock.seconds()
        self._sweep(now)
        seen = self._seen.get(namespace)
        known = seen.ids if seen is not None else {}
        ids = {}
        keys = {}
        for instance in instances:
            registration = instance.registration
            entry = known.get(instance.id)
            if entry is None or (entry[0] is not registration and entry[0] != registration):
                data = _eureka_data(registration)
                instance_id = data.get("instanceId")
                if not isinstance(instance_id, str):
                    instance_id = registration.id
                entry = (registration, (registration.service_name.upper(), instance_id),
                         _eureka_status(registration, data))
            ids[instance.id] = entry
            keys.setdefault(entry[1], []).append(instance)
        code = hashcode(entry[2] for entry in ids.values())
        if seen is None:
            if not instances:
                return code
            if namespace not in self._forgotten:
                # The first view: what it finds is where the queue starts. (A client that
                # fetched the namespace empty before has the hash code "", which differs.)
                self._seen[namespace] = _Seen(now, index, ids, keys)
                return code
            # Followed again after it was forgotten: what it lists is ADDED, for a client
            # that was idle as long.
            self._forgotten.discard(namespace)
            seen = self._seen[namespace] = _Seen(now, -1, {}, {})
        if index < seen.index:
            # An older read answered late: what it shows was seen already, and the answer
            # is of what was seen since.
            return hashcode(entry[2] for entry in seen.ids.values())
        changes = seen.changes
        for key, listed in keys.items():
            before = seen.keys.get(key)
            if before is None:
                action = ADDED
            elif [i.registration for i in before] != [i.registration for i in listed]:
                action = MODIFIED
            else:
                continue
            changes.pop(key, None)
            changes[key] = (now, action, None)
        for key, before in seen.keys.items():
            if key not in keys:
                changes.pop(key, None)
                changes[key] = (now, DELETED, [_deleted_view(i, now) for i in before])
        oldest = now - self.retention
        for key in [key for key, change in changes.items() if change[0] < oldest]:
            del changes[key]
        seen.at, seen.index, seen.ids, seen.keys = now, index, ids, keys
        return code

    def delta(self, namespace, index, instances):
        """
        Note what the store lists (as L{observe}) and answer the recent changes.

        @return: C{(hash code of the whole list, instance views with their actionType)}.
        """
        code = self.observe(namespace, index, instances)
        seen = self._seen.get(namespace)
        views = []
        for key, (_, action, gone) in (seen.changes.items() if seen is not None else ()):
            if gone is not None:
                views.extend(gone)
            else:
                views.extend(instance_view(i, action) for i in seen.keys.get(key, ()))
        return code, views

    def _sweep(self, now):
        """Forget the namespaces no view has looked at for L{retention} seconds."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.retention
        oldest = now - self.retention
        for name in [name for name, seen in self._seen.items() if seen.at < oldest]:
            del self._seen[name]
            self._forgotten.add(name)

    def followed(self):
        """The namespaces followed now (for tests and metrics)."""
        return sorted(self._seen)


# -- the API --------------------------------------------------------------------------------

_BASE = "/<string:token>/v2"


class EurekaAPI:
    """
    The Eureka REST operations over a registry store.

    @ivar store: the registry's L{IRegistryStore}.
    @ivar authenticator: the registry's L{Authenticator<amalgam8.auth.Authenticator>}; the
        path's first segment is its bearer token.
    @ivar clock: the C{IReactorTime} of the delta's queue (L{RecentChanges}).
    @ivar grant_ttl: the registry's ttl policy (requested seconds -> granted seconds).
    """

    app = Klein()
    log = Logger()

    def __init__(self, store, authenticator, clock, grant_ttl):
        self._store = store
        self._auth = authenticator
        self._grant = grant_ttl
        self._changes = RecentChanges(clock)

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
        if not values or not values[-1].strip():
            raise InvalidRequest("the query parameter value is required")
        status = _status(values[-1].decode("utf-8", "replace"), "value")
        instance = await self._find(namespace, app, instance_id)
        try:
            # Only a registered instance has a lease to carry the status: one the store does
            # not know comes from a read-only catalog.
            await self._store.heartbeat(namespace, instance.id)
        except UnknownInstance:
            raise ReadOnlyInstance(
                "instance {} of app {} comes from a read-only catalog".format(
                    instance_id, app.upper()))
        await self._store.register(namespace, with_status(instance.registration, status))
        return _empty(request)

    # -- views -------------------------------------------------------------------------------

    @app.route(_BASE + "/apps", methods=["GET"])
    @app.route(_BASE + "/apps/", methods=["GET"])
    @route_name("eureka_apps")
    async def apps(self, request, token):
        namespace = self._namespace(token)
        index, instances = await self._store.instances(namespace)
        self._changes.observe(namespace, index, instances)
        views = [instance_view(i) for i in instances]
        return _answer(request, "applications", applications_view(index, views))

    @app.route(_BASE + "/apps/delta", methods=["GET"])
    @route_name("eureka_delta")
    async def delta(self, request, token):
        namespace = self._namespace(token)
        index, instances = await self._store.instances(namespace)
        code, views = self._changes.delta(namespace, index, instances)
        return _answer(request, "applications", applications_view(index, views, code))

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
        namespace = self._namespace(token)
        index, instances = await self._store.instances(namespace)
        views = [view for view in map(instance_view, instances)
                 if vip in [v.strip() for v in view["vipAddress"].split(",")]]
        if not views:
            raise NotFound("no instances with vipAddress {}".format(vip))
        return _answer(request, "applications", applications_view(index, views))
