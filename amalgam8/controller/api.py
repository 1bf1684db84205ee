# -*- test-case-name: tests.test_controller_api -*-
"""
The controller's HTTP API (SPEC A3, B1, B2, B5), as an instance-bound Klein app.

Every read of rules is answered from an encoding made once per namespace, revision and
query: thousands of sidecars reading the same rules cost one encoding per change.
"""

import re

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from amalgam8.controller.model import encode
from amalgam8.controller.proxies import ProxyReports, parse_rejected
from amalgam8.controller.traces import MAX_PAGE, TraceBuffer
from amalgam8.errors import (
    A8Error,
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
    wait_for_newer,
)

__all__ = ["ControllerAPI"]

_JSON = b"application/json"
_FILTERS = frozenset({"id", "tag", "destination"})
_WAIT = frozenset({"wait", "revision"})
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}")
MAX_RECORDS = 10000
_KINDS = {"routes": "route", "actions": "action"}


class ControllerAPI:
    """
    @ivar store: an L{amalgam8.interfaces.IRuleStore}.
    @ivar authenticator: an L{amalgam8.auth.Authenticator}.
    @ivar clock: the C{IReactorTime} for blocking reads and proxy reports.
    """

    app = Klein()
    log = Logger()

    def __init__(self, store, authenticator, clock, proxies=None, traces=None, metrics=None,
                 require_https=False, metrics_token=None):
        self._store = store
        self._auth = authenticator
        self._clock = clock
        self._proxies = proxies if proxies is not None else ProxyReports(clock)
        self._traces = traces if traces is not None else TraceBuffer()
        self._metrics = metrics if metrics is not None else Metrics("a8_controller")
        self._metrics.registry.register(_Collector(self))
        self._require_https = require_https
        self._metrics_token = metrics_token
        self._responses = {}
        self.blocking = BlockingReads(self)

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

    # -- cached encodings ---------------------------------------------------------------

    def cached(self, namespace, revision, key):
        """The encoded answer to C{key} at C{revision}, if made already."""
        entry = self._responses.get(namespace)
        if entry is not None and entry[0] == revision:
            return entry[1].get(key)
        return None

    def _remember(self, namespace, revision, key, body):
        entry = self._responses.get(namespace)
        if entry is None or entry[0] != revision:
            entry = self._responses[namespace] = (revision, {})
        if len(entry[1]) < 1024:
            entry[1][key] = body
        return body

    # -- errors --------------------------------------------------------------------------

    @app.handle_errors(Exception)
    def _failed(self, request, failure):
        return answer_failure(request, failure, controller_error, self.log)

    # -- health, metrics, schema ---------------------------------------------------------

    @app.route("/health", methods=["GET", "HEAD"])
    @app.route("/", methods=["GET", "HEAD"])
    @route_name("health")
    async def health(self, request):
        return _body(request, b'{"status":"up"}')

    @app.route("/metrics", methods=["GET"])
    @route_name("metrics")
    async def metrics(self, request):
        return metrics_answer(request, self._metrics, self._metrics_token)

    @app.route("/v1/schema", methods=["GET"])
    @route_name("schema")
    async def schema(self, request):
        return _body(request, SCHEMA_BYTES)

    # -- reading rules -------------------------------------------------------------------

    async def _read(self, request, params, namespace):
        """The namespace's rules, after waiting for a newer revision when asked to."""
        wait, since = blocking_params(params, "revision")
        ruleset = await self._store.get(namespace)
        if wait and since is not None and ruleset.revision <= since:
            await wait_for_newer(self._store, self._clock, namespace, since, wait)
            ruleset = await self._store.get(namespace)
        request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
        return ruleset

    async def _answer(self, request, allowed, build, kind=None, destination=None):
        namespace = self.namespace(request)
        params = query(request, allowed | _WAIT)
        ruleset = await self._read(request, params, namespace)
        key = _cache_key(request, kind, destination)
        body = self.cached(namespace, ruleset.revision, key)
        if body is None:
            body = self._remember(namespace, ruleset.revision, key,
                                  build(ruleset, _filters(params)))
        return _body(request, body)

    @app.route("/v1/rules", methods=["GET"])
    @route_name("rules")
    async def get_rules(self, request):
        def build(ruleset, filters):
            return _rules_body(ruleset.select(**filters), ruleset.revision)

        return await self._answer(request, _FILTERS, build)

    @app.route("/v1/rules/<any(routes, actions):kinds>", methods=["GET"])
    @route_name("rules_by_destination")
    async def get_by_kind(self, request, kinds):
        kind = _KINDS[kinds]

        def build(ruleset, filters):
            services = {}
            for rule in ruleset.select(kind=kind, **filters):
                services.setdefault(rule["destination"], []).append(rule)
            return encode({"services": services, "revision": ruleset.revision}).encode()

        return await self._answer(request, _FILTERS, build, kind=kind)

    @app.route("/v1/rules/<any(routes, actions):kinds>/<string:destination>",
               methods=["GET"])
    @route_name("rules_of_destination")
    async def get_destination(self, request, kinds, destination):
        kind = _KINDS[kinds]

        def build(ruleset, filters):
            filters["destinations"] = {destination}
            return _rules_body(ruleset.select(kind=kind, **filters), ruleset.revision)

        return await self._answer(request, frozenset({"id", "tag"}), build, kind=kind,
                                  destination=destination)

    # -- changing rules -------------------------------------------------------------------

    async def _change(self, namespace, compute):
        """
        Apply C{compute(ruleset) -> (new rules, answer)} as one change, retrying when the
        store's revision moved on meanwhile.
        """
        for _ in range(10):
            ruleset = await self._store.get(namespace)
            rules, answer = compute(ruleset)
            if rules is None:
                return ruleset, answer
            try:
                new = await self._store.put(namespace, ruleset.revision, rules)
            except Conflict:
                continue
            self.log.info("rules of {namespace} now at revision {revision}",
                          namespace=namespace, revision=new.revision)
            return new, answer
        raise Conflict("the rules kept changing; try again")

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

        ruleset, ids = await self._change(namespace, compute)
        request.setResponseCode(201)
        request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
        return _body(request, encode({"ids": ids}).encode())

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

        ruleset, ids = await self._change(namespace, compute)
        request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
        return _body(request, encode({"ids": ids}).encode())

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

        ruleset, ids = await self._change(namespace, compute)
        request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
        return _body(request, encode({"ids": ids}).encode())

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

        ruleset, ids = await self._change(namespace, compute)
        request.setResponseCode(201)
        request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
        return _body(request, encode({"ids": ids}).encode())

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
        self._proxies.report(namespace, proxy_id, **report)
        return _body(request, b"{}")

    @app.route("/v1/proxies", methods=["GET"])
    @route_name("proxies")
    async def proxies(self, request):
        namespace = self.namespace(request)
        query(request, frozenset())
        return _body(request, encode({"proxies": [
            r.as_dict() for r in self._proxies.live(namespace)]}).encode())

    @app.route("/v1/rules/status", methods=["GET"])
    @route_name("rules_status")
    async def status(self, request):
        namespace = self.namespace(request)
        query(request, frozenset())
        ruleset = await self._store.get(namespace)
        request.setHeader(b"a8-revision", b"%d" % ruleset.revision)
        return _body(request, encode(
            self._proxies.status(namespace, ruleset.revision)).encode())

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
        dropped = self._traces.add(namespace, records)
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
        records, cursor = self._traces.query(namespace, after=after, limit=limit, **single)
        return _body(request, encode({
            "records": records,
            "next": cursor,
            "dropped": self._traces.dropped(namespace),
        }).encode())


class ControllerFront(Front):
    """
    The controller's root: L{Front}, plus reads of rules answered straight from the cached
    encoding when one exists for the namespace's current revision (no Klein routing, no
    coroutine). Everything else, and every cache miss, goes on to the Klein app.
    """

    def __init__(self, api, inner, metrics, require_https=False):
        Front.__init__(self, inner, metrics, require_https, error_body=controller_error)
        self.api = api

    def render(self, request):
        if request.method == b"GET" and not self.require_https and \
                request.path == b"/v1/rules" and b"wait" in request.args:
            if self.api.blocking.wait(request, self):
                return NOT_DONE_YET
        if request.method == b"GET" and not self.require_https and \
                request.path.startswith(b"/v1/rules") and b"wait" not in request.args:
            started = self._now()
            try:
                namespace = self.api.namespace(request)
            except A8Error:
                return Front.render(self, request)
            result = self.api._store.get(namespace)
            answer = []
            result.addCallback(answer.append)
            if answer:
                revision = answer[0].revision
                body = self.api.cached(namespace, revision, _cache_key(request))
                if body is not None:
                    request.route = "rules_cached"
                    self.request_id(request)
                    request.setHeader(b"a8-revision", b"%d" % revision)
                    request.setHeader(b"content-type", _JSON)
                    request.setHeader(b"content-length", b"%d" % len(body))
                    self.metrics.observe("rules_cached", "GET", 200, self._now() - started)
                    return body
        return Front.render(self, request)


class _Waiting:
    __slots__ = ("request", "timer", "started")

    def __init__(self, request, started):
        self.request = request
        self.started = started
        self.timer = None


class BlockingReads:
    """
    Blocking reads of C{GET /v1/rules} held without Klein or a coroutine per reader.

    Readers of the same namespace, revision and query form one group with one store waiter;
    a change answers the whole group from one cached encoding, writing each response as
    soon as it is ready. Each reader has its own C{wait} timer; a reader that goes away
    leaves its group at once. Anything unusual (a bad parameter, a revision already passed)
    is left to the Klein route, which answers it the same way.
    """

    def __init__(self, api):
        self._api = api
        self._groups = {}
        self.waiting = 0

    def wait(self, request, front):
        api = self._api
        started = front._now()
        try:
            namespace = api.namespace(request)
            params = query(request, _FILTERS | _WAIT)
            wait, since = blocking_params(params, "revision")
            filters = _filters(params)
        except (A8Error, ValueError, KeyError):
            return False
        if since is None or not wait:
            return False
        current = []
        api._store.get(namespace).addCallback(current.append)
        if not current or current[0].revision > since:
            return False
        key = (namespace, since, request.uri)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = {}
            change = api._store.wait_for_change(namespace, since)
            change.addCallback(self._wake, front, key, filters)
            change.addErrback(self._lost, key)
            group[None] = change
        request.route = "rules_wait"
        front.request_id(request)
        entry = _Waiting(request, started)
        entry.timer = api._clock.callLater(wait, self._expire, front, key, entry, filters)
        group[id(request)] = entry
        self.waiting += 1

        def gone(_):
            if group.pop(id(request), None) is not None:
                self.waiting -= 1
                entry.timer.cancel()
                self._drop_if_empty(key, group)

        request.notifyFinish().addErrback(gone)
        return True

    def _drop_if_empty(self, key, group):
        if len(group) == 1 and self._groups.get(key) is group:
            del self._groups[key]
            group[None].cancel()

    def _lost(self, failure, key):
        failure.trap(CancelledError)
        return None

    def _wake(self, _revision, front, key, filters):
        group = self._groups.pop(key, None)
        if not group:
            return None
        group.pop(None, None)
        entries = list(group.values())
        for entry in entries:
            entry.timer.cancel()
        self.waiting -= len(entries)
        self._answer(front, key, filters, entries)
        return None

    def _expire(self, front, key, entry, filters):
        group = self._groups.get(key)
        if group is not None and group.pop(id(entry.request), None) is not None:
            self.waiting -= 1
            self._drop_if_empty(key, group)
        self._answer(front, key, filters, [entry])

    def _answer(self, front, key, filters, entries):
        api = self._api
        namespace, _, uri = key
        current = []
        api._store.get(namespace).addCallback(current.append)
        ruleset = current[0]
        body = api.cached(namespace, ruleset.revision, uri)
        if body is None:
            body = api._remember(namespace, ruleset.revision, uri,
                                 _rules_body(ruleset.select(**filters), ruleset.revision))
        revision = b"%d" % ruleset.revision
        length = b"%d" % len(body)
        for entry in entries:
            request = entry.request
            if request.finished or request._disconnected:
                continue
            request.setHeader(b"a8-revision", revision)
            request.setHeader(b"content-type", _JSON)
            request.setHeader(b"content-length", length)
            request.write(body)
            request.finish()
            front.metrics.observe("rules_wait", "GET", 200, front._now() - entry.started)


def _cache_key(request, kind=None, destination=None):
    return request.uri


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
    """Reads the controller's state when Prometheus scrapes."""

    def __init__(self, api):
        self._api = api

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        api = self._api
        rules = GaugeMetricFamily("a8_controller_rules", "Rules, by namespace.",
                                  labels=["namespace"])
        revisions = GaugeMetricFamily("a8_controller_revision",
                                      "Rule revision, by namespace.", labels=["namespace"])
        for namespace in api._store.namespaces():
            result = []
            api._store.get(namespace).addCallback(result.append)
            if result:
                rules.add_metric([namespace], len(result[0].rules))
                revisions.add_metric([namespace], result[0].revision)
        yield rules
        yield revisions
        waiting = getattr(api._store, "waiting", None)
        held = api.blocking.waiting - len(api.blocking._groups)
        yield GaugeMetricFamily("a8_controller_blocking_reads",
                                "Blocking reads waiting for a change.",
                                value=(waiting() if waiting else 0) + held)
        stats = api._traces.stats()
        yield CounterMetricFamily("a8_controller_trace_records_received",
                                  "Trace records received.", value=stats["received"])
        dropped = CounterMetricFamily("a8_controller_trace_records_dropped",
                                      "Trace records dropped to keep the bound.",
                                      labels=["namespace"])
        for namespace, count in sorted(stats["dropped"].items()):
            dropped.add_metric([namespace], count)
        yield dropped
