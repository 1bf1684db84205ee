# -*- test-case-name: tests.test_registry_api -*-
"""
The registry's HTTP API (SPEC A2 and B1), as an instance-bound Klein app; the heartbeat's
road is L{amalgam8.registry.fast}. Blocking reads wait in groups (L{amalgam8.watch}): the
readers of one query at one index share one store waiter and one encoding of the answer.
"""

import json
import os
from importlib import resources

import attrs
from klein import Klein
from twisted.logger import Logger

from amalgam8.errors import InvalidRequest, NotFound
from amalgam8.logs import debug_enabled
from amalgam8.registry.eureka import EurekaAPI
from amalgam8.registry.model import FIELDS, STATUSES, parse_registration
from amalgam8.registry.fast import RegistryFront
from amalgam8.watch import GroupedWaits
from amalgam8.web import (
    Metrics,
    answer_failure,
    blocking_params,
    json_answer,
    metrics_answer,
    json_body,
    query,
    registry_error,
    route_name,
)

__all__ = ["RegistryAPI", "TTLPolicy"]

_LIST_PARAMS = frozenset({"service_name", "tags", "status", "id", "fields", "wait", "index"})
_FILTERS = frozenset({"service_name", "tags", "status", "id"})
_WAIT = frozenset({"wait", "index"})
_JSON = b"application/json"


@attrs.frozen
class TTLPolicy:
    """The default, minimum and maximum ttl (seconds) of SPEC A2."""

    default: float = 30
    minimum: float = 10
    maximum: float = 600

    def grant(self, requested):
        ttl = requested or self.default
        ttl = min(max(ttl, self.minimum), self.maximum)
        return int(ttl) if ttl == int(ttl) else ttl


def _split(values):
    items = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                raise InvalidRequest("empty value in a filter")
            items.append(item)
    return items


class RegistryAPI:
    """
    @ivar store: an L{amalgam8.interfaces.IRegistryStore}.
    @ivar authenticator: an L{amalgam8.auth.Authenticator}.
    @ivar clock: the C{IReactorTime} that times out blocking reads.
    """

    app = Klein()
    log = Logger()

    def __init__(self, store, authenticator, clock, ttl=TTLPolicy(), metrics=None,
                 require_https=False, metrics_token=None):
        self._store = store
        self._auth = authenticator
        self._clock = clock
        self._ttl = ttl
        self._metrics = metrics if metrics is not None else Metrics("a8_registry")
        self._metrics_token = metrics_token
        self._started = clock.seconds()
        self._waits = GroupedWaits(clock, store.wait_for_change)
        self._metrics.registry.register(_StoreCollector(store, self._waits))
        self._require_https = require_https
        self._eureka = EurekaAPI(store, authenticator, clock, ttl.grant).resource()

    def resource(self):
        """The root C{IResource} of the server."""
        return RegistryFront(self.app.resource(), self._metrics, self._store, self._auth,
                             self._require_https)

    def _namespace(self, request):
        return self._auth.namespace(request.getHeader(b"authorization"))

    # -- errors -----------------------------------------------------------------------------

    @app.handle_errors(Exception)
    def _failed(self, request, failure):
        return answer_failure(request, failure, registry_error, self.log)

    # -- liveness, metrics, description ------------------------------------------------------

    @app.route("/", methods=["GET", "HEAD"])
    @app.route("/uptime", methods=["GET", "HEAD"])
    @route_name("uptime")
    async def uptime(self, request):
        # The pid tells the processes of one --processes N server apart.
        uptime = self._clock.seconds() - self._started
        return _json(request, {"status": "up", "uptime": round(uptime, 3),
                               "pid": os.getpid()})

    @app.route("/metrics", methods=["GET"])
    @route_name("metrics")
    async def metrics(self, request):
        return metrics_answer(request, self._metrics, self._metrics_token, self._auth)

    @app.route("/openapi.json", methods=["GET"])
    @route_name("openapi")
    async def openapi(self, request):
        return _body(request, _openapi())

    @app.route("/api/eureka/", branch=True)
    def eureka(self, request):
        """The Eureka-compatible API (L{amalgam8.registry.eureka})."""
        return self._eureka

    # -- instances ---------------------------------------------------------------------------

    @app.route("/api/v1/instances", methods=["POST"])
    @route_name("register")
    async def register(self, request):
        namespace = self._namespace(request)
        body = json_body(request)
        registration = parse_registration(body, self._ttl.grant)
        instance = await self._store.register(namespace, registration)
        if debug_enabled():
            self.log.debug("registered {service} {id} in {namespace}",
                           service=registration.service_name, id=instance.id,
                           namespace=namespace)
        url = _base_url(request) + "/api/v1/instances/" + instance.id
        request.setResponseCode(201)
        request.setHeader(b"location", url.encode("utf-8"))
        return _json(request, {
            "id": instance.id,
            "ttl": registration.ttl,
            "links": {"self": url, "heartbeat": url + "/heartbeat"},
        })

    @app.route("/api/v1/instances/<string:instance_id>", methods=["DELETE"])
    @route_name("deregister")
    async def deregister(self, request, instance_id):
        namespace = self._namespace(request)
        instance = await self._store.deregister(namespace, instance_id)
        if debug_enabled():
            self.log.debug("deregistered {service} {id} in {namespace}",
                           service=instance.service_name, id=instance.id,
                           namespace=namespace)
        return _body(request, b"")

    @app.route("/api/v1/instances", methods=["GET"])
    @route_name("instances")
    async def instances(self, request):
        namespace = self._namespace(request)
        params = query(request, _LIST_PARAMS)
        select = _selection(params)
        fields = _fields(params)
        service = select.service if select.service_count == 1 else None

        def build(state):
            index, instances = state
            chosen = [i for i in instances if select.matches(i)]
            return index, _instances_body(b'{"instances":[', chosen, fields)

        return _body(request, await self._read(
            request, params, namespace, lambda: self._store.instances(namespace, service),
            build))

    async def _read(self, request, params, namespace, fetch, build):
        """
        The body of C{build(fetch())} (C{(index, body)}), with the index in C{A8-Index};
        when C{wait} and C{index} ask for it,
        wait first for a newer index, grouped with the same reads at the same index.
        """
        wait, since = blocking_params(params, "index")
        key = (namespace, since, request.path,
               tuple(sorted((name, tuple(values)) for name, values in params.items()
                            if name not in _WAIT)))
        index, body = await self._waits.read(key, namespace, since, wait, fetch, _index,
                                             build)
        request.setHeader(b"a8-index", b"%d" % index)
        return body

    # -- services ----------------------------------------------------------------------------

    @app.route("/api/v1/services", methods=["GET"])
    @route_name("services")
    async def services(self, request):
        namespace = self._namespace(request)
        params = query(request, frozenset({"wait", "index"}))

        def build(state):
            index, names = state
            return index, _encode({"services": names})

        return _body(request, await self._read(
            request, params, namespace, lambda: self._store.services(namespace), build))

    @app.route("/api/v1/services/<string:name>", methods=["GET"])
    @route_name("service")
    async def service(self, request, name):
        namespace = self._namespace(request)
        params = query(request, frozenset({"wait", "index", "fields"}))
        fields = _fields(params)
        head = b'{"service_name":' + json.dumps(name).encode("utf-8") + b',"instances":['

        def build(state):
            index, instances = state
            if not instances:
                return index, None
            return index, _instances_body(head, instances, fields)

        body = await self._read(request, params, namespace,
                                lambda: self._store.instances(namespace, name), build)
        if body is None:
            raise NotFound("no instances of service {}".format(name))
        return _body(request, body)


def _index(state):
    return state[0]


@attrs.frozen
class _Selection:
    services: frozenset = None
    ids: frozenset = None
    tags: tuple = ()
    statuses: frozenset = None

    @property
    def service_count(self):
        return len(self.services) if self.services is not None else 0

    @property
    def service(self):
        return next(iter(self.services))

    def matches(self, instance):
        registration = instance.registration
        if self.statuses is not None and registration.status not in self.statuses:
            return False
        if self.services is not None and registration.service_name not in self.services:
            return False
        if self.ids is not None and registration.id not in self.ids:
            return False
        if self.tags:
            have = registration.tags
            return all(tag in have for tag in self.tags)
        return True


def _selection(params):
    filters = _FILTERS.intersection(params)
    services = frozenset(_split(params["service_name"])) if "service_name" in params else None
    ids = frozenset(_split(params["id"])) if "id" in params else None
    tags = tuple(_split(params["tags"])) if "tags" in params else ()
    statuses = None
    if "status" in params:
        wanted = {s.upper() for s in _split(params["status"])}
        unknown = wanted - set(STATUSES) - {"ALL"}
        if unknown:
            raise InvalidRequest("unknown status {} (expected {} or ALL)".format(
                ", ".join(sorted(unknown)), ", ".join(STATUSES)))
        statuses = None if "ALL" in wanted else frozenset(wanted)
    elif not filters:
        statuses = frozenset({"UP"})
    return _Selection(services, ids, tags, statuses)


def _fields(params):
    if "fields" not in params:
        return None
    fields = _split(params["fields"])
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise InvalidRequest("unknown field {}".format(", ".join(sorted(unknown))))
    return set(fields) | {"id", "endpoint"}


def _encode(value):
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _json(request, value):
    return _body(request, _encode(value))


_body = json_answer


def _instances_body(head, instances, fields):
    if fields is None:
        body = b",".join(instance.encode() for instance in instances)
    else:
        body = b",".join(
            _encode({k: v for k, v in i.as_dict().items() if k in fields})
            for i in instances
        )
    return head + body + b"]}"


def _base_url(request):
    secure = request.isSecure()
    proto = request.getHeader(b"x-forwarded-proto")
    if proto is not None and proto.strip().lower() in (b"http", b"https"):
        secure = proto.strip().lower() == b"https"
    host = request.getHeader(b"host")
    if host is None:
        address = request.getHost()
        host = "{}:{}".format(getattr(address, "host", "localhost"),
                              getattr(address, "port", 0)).encode("ascii")
    return ("https://" if secure else "http://") + host.decode("latin-1")


_OPENAPI = []


def _openapi():
    if not _OPENAPI:
        text = resources.files("amalgam8.registry").joinpath("openapi.json").read_bytes()
        _OPENAPI.append(text)
    return _OPENAPI[0]


class _StoreCollector:
    """Reads the store's counters when Prometheus scrapes."""

    def __init__(self, store, waits):
        self._store = store
        self._waits = waits

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._store.stats()
        instances = GaugeMetricFamily(
            "a8_registry_instances", "Registered instances, by namespace.",
            labels=["namespace"])
        for namespace, count in sorted(stats["instances"].items()):
            instances.add_metric([namespace], count)
        yield instances
        for name, text in (
            ("registrations", "Registrations accepted (re-registrations included)."),
            ("heartbeats", "Heartbeats accepted."),
            ("deregistrations", "Instances deregistered."),
            ("expirations", "Instances removed because their ttl ran out."),
        ):
            yield CounterMetricFamily("a8_registry_" + name, text, value=stats[name])
        held = self._waits.waiting - self._waits.groups
        yield GaugeMetricFamily("a8_registry_blocking_reads",
                                "Blocking reads waiting for a change.",
                                value=stats.get("waiters", 0) + held)
