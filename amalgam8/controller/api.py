# -*- test-case-name: tests.test_controller_api -*-
"""
The controller's HTTP API (SPEC A3, B1, B2, B5), as an instance-bound Klein app.

Every read of rules (C{GET /v1/rules}, C{/v1/rules/routes|actions} and
C{/v1/rules/routes|actions/{destination}}, blocking or not) has one implementation,
L{ControllerAPI.read_rules}, reached by the short road of L{ControllerFront} rather than by a
Klein route: it is answered from an encoding made once per namespace, revision and query
(L{amalgam8.controller.watch.RuleWatch}), so thousands of sidecars reading the same rules
cost one encoding per change, and it waits for the store however long the store takes.
"""

import os
import re
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import DeferredLock, maybeDeferred
from twisted.logger import Logger

from amalgam8.controller.model import encode
from amalgam8.controller.proxies import ProxyReports, parse_rejected
from amalgam8.controller.traces import MAX_PAGE, TraceBuffer
from amalgam8.controller.watch import RuleWatch
from amalgam8.errors import (
    BadNamespaceHeader,
    Conflict,
    InvalidRequest,
    NotFound,
)
from amalgam8.rules import SCHEMA_BYTES, InvalidRule, kind_of, validate_rules
from amalgam8.web import (
    Front,
    Metrics,
    answer_failure,
    blocking_params,
    controller_error,
    json_answer,
    json_body,
    metrics_answer,
    query,
    route_name,
)

__all__ = ["ControllerAPI"]

_JSON = b"application/json"
_FILTERS = frozenset({"id", "tag", "destination"})
_DESTINATION_FILTERS = frozenset({"id", "tag"})
_WAIT = frozenset({"wait", "revision"})
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}")
MAX_RECORDS = 10000
_KINDS = {"routes": "route", "actions": "action"}


class ControllerAPI:
    """
    @ivar store: an L{amalgam8.interfaces.IRuleStore}.
    @ivar authenticator: an L{amalgam8.auth.Authenticator}.
    @ivar clock: the C{IReactorTime} for blocking reads and proxy reports.
    @ivar proxies: the L{amalgam8.interfaces.IProxyReports} (default: in memory, on
        C{clock}).
    @ivar traces: the L{amalgam8.interfaces.ITraceStore} (default: in memory).
    """

    app = Klein()
    log = Logger()

    def __init__(self, store, authenticator, clock, proxies=None, traces=None, metrics=None,
                 require_https=False, metrics_token=None):
        self._store = store
        self._changing = {}
        self._auth = authenticator
        self._clock = clock
        self._proxies = proxies if proxies is not None else ProxyReports(clock)
        self._traces = traces if traces is not None else TraceBuffer()
        self._metrics = metrics if metrics is not None else Metrics("a8_controller")
        self._require_https = require_https
        self._metrics_token = metrics_token
        self.watch = RuleWatch(store, clock)
        self._metrics.registry.register(_Collector(store, self.watch, self._traces))

    def resource(self):
        """The root C{IResource} of the server."""
        return ControllerFront(self, self.app.resource(), self._metrics, self._require_https)

    # -- tenancy -------------------------------------------------------------------------

    def namespace(self, request):
        """
        The namespace a request acts in; a JWT for C{admin} acts for the tenant named in
        C{A8-Namespace}.
        """
        namespace, mode = self._auth.identify(request.getHeader(b"authorization"))
        if namespace == "admin" and mode == "jwt":
            target = request.getHeader(b"a8-namespace")
            if target is None:
                raise BadNamespaceHeader("an admin request must name its tenant in the "
                                         "A8-Namespace header")
            try:
                target = target.decode("ascii").strip()
            except UnicodeDecodeError:
                target = ""
            if not _NAMESPACE.fullmatch(target):
                raise BadNamespaceHeader("A8-Namespace is not a valid namespace name")
            return target
        return namespace

    # -- errors --------------------------------------------------------------------------

    @app.handle_errors(Exception)
    def _failed(self, request, failure):
        return answer_failure(request, failure, controller_error, self.log)

    # -- health, metrics, schema ---------------------------------------------------------

    @app.route("/health", methods=["GET", "HEAD"])
    @app.route("/", methods=["GET", "HEAD"])
    @route_name("health")
    async def health(self, request):
        # The pid tells the processes of one --processes N server apart.
        return _body(request, b'{"status":"up","pid":%d}' % os.getpid())

    @app.route("/metrics", methods=["GET"])
    @route_name("metrics")
    async def metrics(self, request):
        return metrics_answer(request, self._metrics, self._metrics_token, self._auth)

    @app.route("/v1/schema", methods=["GET"])
    @route_name("schema")
    async def schema(self, request):
        return _body(request, SCHEMA_BYTES)

    # -- reading rules (served by ControllerFront's short road, not by Klein) -------------

    def read_rules(self, request, target):
        """
        The one implementation of the reads of rules, blocking (SPEC B1) or not.

        @param target: the L{_ReadTarget} the URL names.
        @return: a Deferred firing with C{(ruleset, body, cached)} (see
            L{RuleWatch.read}); it fails with an L{A8Error} for a request to refuse.
        """
        namespace = self.namespace(request)
        params = query(request, target.allowed | _WAIT)
        wait, since = blocking_params(params, "revision")
        filters = _filters(params)
        if target.destination is not None:
            filters["destinations"] = {target.destination}
        kind = target.kind
        if target.grouped:
            def build(ruleset):
                services = {}
                for rule in ruleset.select(kind=kind, **filters):
                    services.setdefault(rule["destination"], []).append(rule)
                return encode({"services": services, "revision": ruleset.revision}).encode()
        else:
            def build(ruleset):
                return _rules_body(ruleset.select(kind=kind, **filters), ruleset.revision)
        key = (target.route, target.destination,
               tuple(sorted((name, tuple(values)) for name, values in params.items()
                            if name not in _WAIT)))
        return self.watch.read(namespace, key, build, wait, since)

    # -- changing rules -------------------------------------------------------------------

    async def _change(self, namespace, compute):
        """
        Apply C{compute(ruleset) -> (new rules, answer)} as one change, retrying when the
        store's revision moved on meanwhile. The changes of one namespace made through this
        controller go one at a time: with a shared store, changes made at once through one
        replica would otherwise race each other for the same revision (only one of them
        can win each round) and could run out of retries.
        """
        lock = self._changing.get(namespace)
        if lock is None:
            lock = self._changing[namespace] = DeferredLock()
        await lock.acquire()
        try:
            return await self._change_now(namespace, compute)
        finally:
            lock.release()
            if not lock.locked and self._changing.get(namespace) is lock:
                del self._changing[namespace]

    async def _change_now(self, namespace, compute):
        for _ in range(10):
            ruleset = await self.watch.current(namespace)
            rules, answer = compute(ruleset)
            if rules is None:
                return ruleset, answer
            try:
                new = await self._store.put(namespace, ruleset.revision, rules)
            except Conflict:
                continue
            self.watch.record(new, namespace)
            self.log.info("rules of {namespace} now at revision {revision}",
                          namespace=namespace, revision=new.revision)
            return new, answer
        raise Conflict("the rules kept changing; try again")

    async def _changed(self, request, namespace, compute, code=200):
        """
        L{_change}, answered: C{code}, the new revision in C{A8-Revision} and the body
        C{{"ids": [...]}} of the rules the change touched.
        """
        ruleset, ids = await self._change(namespace, compute)
        request.setResponseCode(code)
        request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
        return _body(request, encode({"ids": ids}).encode())

    @app.route("/v1/rules", methods=["POST"])
    @route_name("rules_create")
    async def create_rules(self, request):
        namespace = self.namespace(request)
        query(request, frozenset())
        rules = validate_rules(json_body(request))

        def compute(ruleset):
            for index, rule in enumerate(rules):
                if rule["id"] in ruleset.by_id:
                    raise Conflict("rule {}: id {} exists already (use PUT to change it)"
                                   .format(index, rule["id"]))
            return list(ruleset.rules) + rules, [rule["id"] for rule in rules]

        return await self._changed(request, namespace, compute, code=201)

    @app.route("/v1/rules", methods=["PUT"])
    @route_name("rules_update")
    async def update_rules(self, request):
        namespace = self.namespace(request)
        query(request, frozenset())
        rules = validate_rules(json_body(request), require_id=True)

        def compute(ruleset):
            for index, rule in enumerate(rules):
                if rule["id"] not in ruleset.by_id:
                    raise NotFound("rule {}: no rule with id {}".format(index, rule["id"]))
            replaced = {rule["id"]: rule for rule in rules}
            return ([replaced.get(rule["id"], rule) for rule in ruleset.rules],
                    [rule["id"] for rule in rules])

        return await self._changed(request, namespace, compute)

    @app.route("/v1/rules", methods=["DELETE"])
    @route_name("rules_delete")
    async def delete_rules(self, request):
        namespace = self.namespace(request)
        filters = _filters(query(request, _FILTERS))
        return await self._delete(request, namespace, filters)

    async def _delete(self, request, namespace, filters, kind=None):
        def compute(ruleset):
            doomed = {rule["id"] for rule in ruleset.select(kind=kind, **filters)}
            if not doomed:
                return None, []
            return ([rule for rule in ruleset.rules if rule["id"] not in doomed],
                    sorted(doomed))

        return await self._changed(request, namespace, compute)

    @app.route("/v1/rules/<any(routes, actions):kinds>/<string:destination>",
               methods=["PUT"])
    @route_name("rules_replace_destination")
    async def replace_destination(self, request, kinds, destination):
        namespace = self.namespace(request)
        query(request, frozenset())
        kind = _KINDS[kinds]
        body = json_body(request)
        if isinstance(body, dict) and isinstance(body.get("rules"), list):
            filled = []
            for rule in body["rules"]:
                if isinstance(rule, dict) and "destination" not in rule:
                    rule = dict(rule, destination=destination)
                filled.append(rule)
            body = dict(body, rules=filled)
        rules = validate_rules(body)
        for index, rule in enumerate(rules):
            if rule["destination"] != destination:
                raise InvalidRule("rule {}: destination: must be {} here".format(
                    index, destination))
            if kind_of(rule) != kind:
                raise InvalidRule("rule {}: {}: only {} rules can be put here".format(
                    index, "actions" if kind == "route" else "route", kind))

        def compute(ruleset):
            replaced = {rule["id"] for rule in ruleset.select(
                destinations={destination}, kind=kind)}
            kept = [rule for rule in ruleset.rules if rule["id"] not in replaced]
            taken = {rule["id"] for rule in kept}
            for index, rule in enumerate(rules):
                if rule["id"] in taken:
                    raise Conflict("rule {}: id {} is taken by another rule".format(
                        index, rule["id"]))
            return kept + rules, [rule["id"] for rule in rules]

        return await self._changed(request, namespace, compute, code=201)

    @app.route("/v1/rules/<any(routes, actions):kinds>/<string:destination>",
               methods=["DELETE"])
    @route_name("rules_delete_destination")
    async def delete_destination(self, request, kinds, destination):
        namespace = self.namespace(request)
        query(request, frozenset())
        return await self._delete(request, namespace, {"destinations": {destination}},
                                  kind=_KINDS[kinds])

    # -- proxy status (B2) ----------------------------------------------------------------

    @app.route("/v1/proxies/<string:proxy_id>", methods=["PUT"])
    @route_name("proxy_report")
    async def report(self, request, proxy_id):
        namespace = self.namespace(request)
        query(request, frozenset())
        if len(proxy_id) > 256:
            raise InvalidRequest("proxy id is longer than 256 characters")
        body = json_body(request)
        report = _proxy_report(body)
        await self._proxies.report(namespace, proxy_id, **report)
        return _body(request, b"{}")

    @app.route("/v1/proxies", methods=["GET"])
    @route_name("proxies")
    async def proxies(self, request):
        namespace = self.namespace(request)
        query(request, frozenset())
        live = await self._proxies.live(namespace)
        return _body(request, encode({"proxies": [r.as_dict() for r in live]}).encode())

    @app.route("/v1/rules/status", methods=["GET"])
    @route_name("rules_status")
    async def status(self, request):
        namespace = self.namespace(request)
        query(request, frozenset())
        ruleset = await self._store.get(namespace)
        status = await self._proxies.status(namespace, ruleset.revision)
        request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
        return _body(request, encode(status).encode())

    # -- traces (B5) ---------------------------------------------------------------------

    @app.route("/v1/traces", methods=["POST"])
    @route_name("traces_add")
    async def add_traces(self, request):
        namespace = self.namespace(request)
        query(request, frozenset())
        body = json_body(request)
        if isinstance(body, dict):
            unknown = set(body) - {"records"}
            if unknown:
                raise InvalidRequest("unknown fields: {}".format(", ".join(sorted(unknown))))
            records = body.get("records")
        else:
            records = None
        if not isinstance(records, list):
            raise InvalidRequest('the body must be {"records": [...]}')
        if len(records) > MAX_RECORDS:
            raise InvalidRequest("at most {} records a batch".format(MAX_RECORDS))
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise InvalidRequest("record {} is not an object".format(index))
        dropped = await self._traces.add(namespace, records)
        request.setResponseCode(202)
        return _body(request, encode({"accepted": len(records), "dropped": dropped}).encode())

    @app.route("/v1/traces", methods=["GET"])
    @route_name("traces")
    async def traces(self, request):
        namespace = self.namespace(request)
        params = query(request, frozenset(
            {"log_key", "log_value", "src", "dst", "limit", "after"}))
        single = {name: values[-1] for name, values in params.items()}
        try:
            limit = int(single.pop("limit", 1000))
            after = int(single.pop("after", 0))
            if not 1 <= limit <= MAX_PAGE or after < 0:
                raise ValueError()
        except ValueError:
            raise InvalidRequest("limit must be 1-{} and after a non-negative integer"
                                 .format(MAX_PAGE))
        if "log_value" in single and "log_key" not in single:
            raise InvalidRequest("log_value needs log_key")
        records, cursor = await self._traces.query(namespace, after=after, limit=limit,
                                                   **single)
        dropped = await self._traces.dropped(namespace)
        return _body(request, encode({
            "records": records,
            "next": cursor,
            "dropped": dropped,
        }).encode())


class _ReadTarget:
    """What a rule-reading URL asks for."""

    __slots__ = ("route", "kind", "destination", "grouped", "allowed", "methods")

    def __init__(self, route, kind, destination, grouped, allowed, methods):
        self.route = route
        self.kind = kind
        self.destination = destination
        self.grouped = grouped
        self.allowed = allowed
        self.methods = methods


_ALL_RULES = _ReadTarget("rules", None, None, False, _FILTERS,
                         ("DELETE", "GET", "HEAD", "POST", "PUT"))
_GROUPED = {
    name: _ReadTarget("rules_by_destination", kind, None, True, _FILTERS, ("GET", "HEAD"))
    for name, kind in ((b"routes", "route"), (b"actions", "action"))
}
_OF_DESTINATION = ("DELETE", "GET", "HEAD", "PUT")
_READ_METHODS = (b"GET", b"HEAD")
_PREFIX = b"/v1/rules/"


def _read_target(path):
    """The L{_ReadTarget} of a request path, or L{None} for a path that reads no rules."""
    if path == b"/v1/rules":
        return _ALL_RULES
    if not path.startswith(_PREFIX):
        return None
    parts = path[len(_PREFIX):].split(b"/")
    grouped = _GROUPED.get(parts[0])
    if grouped is None:
        return None
    if len(parts) == 1:
        return grouped
    if len(parts) != 2 or not parts[1]:
        return None
    try:
        destination = unquote_to_bytes(parts[1]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _ReadTarget("rules_of_destination", grouped.kind, destination, False,
                       _DESTINATION_FILTERS, _OF_DESTINATION)


class ControllerFront(Front):
    """
    The controller's root: L{Front}, whose short road is the one implementation of every
    read of rules (L{ControllerAPI.read_rules}); the Klein app answers everything else.
    """

    def __init__(self, api, inner, metrics, require_https=False):
        Front.__init__(self, inner, metrics, require_https, error_body=controller_error)
        self.api = api

    def road(self, request):
        target = _read_target(request.path)
        if target is None:
            return None
        if request.method in _READ_METHODS:
            return lambda request: self._read(request, target)
        if request.method.decode("ascii", "replace") not in target.methods:
            return lambda request: self.not_allowed(request, target.methods)
        return None

    def _read(self, request, target):
        result = maybeDeferred(self.api.read_rules, request, target)
        return self.respond(request, target.route, result, _answer_read)


def _answer_read(request, answer):
    ruleset, body, cached = answer
    if b"wait" in request.args:
        request.route = "rules_wait"
    elif cached:
        request.route = "rules_cached"
    request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
    return body


def _filters(params):
    def split(name):
        if name not in params:
            return None
        items = []
        for value in params[name]:
            for item in value.split(","):
                item = item.strip()
                if item:
                    items.append(item)
        if not items:
            raise InvalidRequest("empty {} filter".format(name))
        return items

    ids = split("id")
    tags = split("tag")
    destinations = split("destination")
    return {
        "ids": set(ids) if ids is not None else None,
        "tags": tags or (),
        "destinations": set(destinations) if destinations is not None else None,
    }


def _rules_body(rules, revision):
    return encode({"rules": rules, "revision": revision}).encode("utf-8")


_body = json_answer


def _proxy_report(body):
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be an object")
    allowed = {"service", "tags", "revision", "index", "applied_at", "interval", "rejected"}
    unknown = set(body) - allowed
    if unknown:
        raise InvalidRequest("unknown fields: {}".format(", ".join(sorted(unknown))))
    service = body.get("service")
    if not isinstance(service, str) or not 0 < len(service) <= 64:
        raise InvalidRequest("service must be a name of 1-64 characters")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) \
            or len(tags) > 64:
        raise InvalidRequest("tags must be a list of strings")
    revision = body.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise InvalidRequest("revision must be a non-negative integer")
    index = body.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                              or index < 0):
        raise InvalidRequest("index must be a non-negative integer")
    applied_at = body.get("applied_at", "")
    if not isinstance(applied_at, str) or len(applied_at) > 64:
        raise InvalidRequest("applied_at must be an RFC 3339 time")
    interval = body.get("interval")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
                or not 0 < interval <= 3600:
            raise InvalidRequest("interval must be seconds, above 0 and at most 3600")
    return {"service": service, "tags": tags, "revision": revision, "index": index,
            "applied_at": applied_at, "interval": interval,
            "rejected": parse_rejected(body.get("rejected"))}


class _Collector:
    """
    Reads the controller's state when Prometheus scrapes: the rules of each namespace as
    the watch last saw them (a namespace not seen yet is read now, and shows as soon as
    the store has answered).
    """

    log = Logger()

    def __init__(self, store, watch, traces):
        self._store = store
        self._watch = watch
        self._traces = traces

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rules = GaugeMetricFamily("a8_controller_rules", "Rules, by namespace.",
                                  labels=["namespace"])
        revisions = GaugeMetricFamily("a8_controller_revision",
                                      "Rule revision, by namespace.", labels=["namespace"])
        for namespace in self._store.namespaces():
            ruleset = self._watch.snapshot(namespace)
            if ruleset is None:
                self._watch.current(namespace).addErrback(
                    lambda failure: self.log.failure("cannot read the rules for metrics",
                                                     failure))
                ruleset = self._watch.snapshot(namespace)
            if ruleset is not None:
                rules.add_metric([namespace], len(ruleset.rules))
                revisions.add_metric([namespace], ruleset.revision)
        yield rules
        yield revisions
        waiting = getattr(self._store, "waiting", None)
        held = self._watch.waiting - self._watch.groups
        yield GaugeMetricFamily("a8_controller_blocking_reads",
                                "Blocking reads waiting for a change.",
                                value=(waiting() if waiting else 0) + held)
        stats = self._traces.stats()
        yield CounterMetricFamily("a8_controller_trace_records_received",
                                  "Trace records received.", value=stats["received"])
        dropped = CounterMetricFamily("a8_controller_trace_records_dropped",
                                      "Trace records dropped to keep the bound.",
                                      labels=["namespace"])
        for namespace, count in sorted(stats["dropped"].items()):
            dropped.add_metric([namespace], count)
        yield dropped
