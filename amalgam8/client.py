# -*- test-case-name: tests.test_client -*-
"""
One treq-based client for the registry and controller APIs (blocking reads included), used
by the sidecar, a8ctl and Gremlin. The HTTP client is injected: production passes an
C{HTTPClient} over a pooled C{Agent}, tests a C{StubTreq}.

A client's C{url} may name several replicas of one server, comma-separated
(C{"http://r1:8080,http://r2:8080"}, issue 13): a call goes to the replica that answered
last and fails over to the next one when a replica cannot be reached or answers 503 (its
store is down: nothing was changed). A request that may have reached the server is sent
again only where that is safe: a read, a C{PUT} or C{DELETE}, a registration (which
replaces an instance with the same id). A connection that was refused never reached it.
"""

import ipaddress
import json
from urllib.parse import quote

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError
from twisted.internet.endpoints import (HostnameEndpoint, TCP4ClientEndpoint,
                                        TCP6ClientEndpoint, wrapClientTLS)
from twisted.logger import Logger
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

__all__ = ["APIError", "Unreachable", "RegistryClient", "ControllerClient", "http_client",
           "DirectEndpoints", "split_urls"]

#: Methods that may be sent again to another replica after the first may have received them.
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class APIError(Exception):
    """
    The server answered with an error.

    @ivar status: the HTTP status.
    @ivar body: the decoded JSON body (or the raw text).
    """

    def __init__(self, status, body, url):
        Exception.__init__(self, status, body, url)
        self.status = status
        self.body = body
        self.url = url

    @property
    def message(self):
        if isinstance(self.body, dict):
            for key in ("description", "Error", "error"):
                if key in self.body:
                    return str(self.body[key])
        return str(self.body)[:200]

    def __str__(self):
        return "{} from {}: {}".format(self.status, self.url, self.message)


class Unreachable(Exception):
    """The server could not be reached (refused, timed out, reset)."""


class _NotSent(Exception):
    """The connection was refused: the request never reached the server."""


def split_urls(url):
    """
    @param url: one base URL, or several comma-separated (the replicas of one server).
    @return: the list of base URLs, without trailing slashes.
    """
    return [part.strip().rstrip("/") for part in (url or "").split(",") if part.strip()]


@implementer(IAgentEndpointFactory)
class DirectEndpoints:
    """
    The endpoints of L{http_client}'s Agent: Agent's own (a C{HostnameEndpoint}, TLS for
    C{https}), except that an IP address is connected to directly. A C{HostnameEndpoint}
    reports a refused connection only at its next attempt tick, 0.3 s later, so each retry
    against a server that is not listening yet (the admin port of a restarting nginx) waited
    that long.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii").strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port)
        else:
            kind = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
            endpoint = kind(self._reactor, host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


def http_client(reactor, persistent=True):
    """The production HTTP client: treq over a pooled Agent (see L{DirectEndpoints})."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from twisted.web.client import _HTTP11ClientFactory

    class QuietFactory(_HTTP11ClientFactory):
        # One "Starting factory" log line per connection is noise.
        noisy = False

    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = 16
    pool._factory = QuietFactory
    return HTTPClient(Agent.usingEndpointFactory(reactor, DirectEndpoints(reactor), pool=pool))


def _headers(token, json_body=False, extra=None):
    headers = {}
    if token:
        headers[b"Authorization"] = [b"Bearer " + token.encode("utf-8")]
    if json_body:
        headers[b"Content-Type"] = [b"application/json"]
    if extra:
        headers.update(extra)
    return headers


@attrs.define
class _Base:
    http: object
    url: str
    token: str = None
    timeout: float = 30.0
    reactor: object = None   # the IReactorTime that times requests out (tests: a Clock)
    _current: int = attrs.field(default=0, init=False, repr=False)

    log = Logger()

    @property
    def urls(self):
        """The base URLs of the server's replicas (one, unless C{url} names several)."""
        return split_urls(self.url) or [self.url]

    def _url(self, path, base=None):
        return (base if base is not None else self.urls[self._current % len(self.urls)]
                ).rstrip("/") + path

    async def _call(self, method, path, body=None, params=None, timeout=None, ok=(200,),
                    extra_headers=None, idempotent=None):
        """
        Send a request to the current replica, failing over to the others in turn.

        @param idempotent: whether the request may be sent again to another replica after
            the first may have received it (default: by method, L{_IDEMPOTENT}).
        """
        urls = self.urls
        if idempotent is None:
            idempotent = method in _IDEMPOTENT
        first = self._current % len(urls)
        for attempt in range(len(urls)):
            which = (first + attempt) % len(urls)
            last = attempt == len(urls) - 1
            try:
                result = await self._send(method, self._url(path, urls[which]), body,
                                          params, timeout, ok, extra_headers)
            except _NotSent as e:
                error = e.__cause__
                if last:
                    raise error
            except Unreachable:
                if last or not idempotent:
                    raise
            except APIError as e:
                if last or e.status != 503:
                    raise
            else:
                self._current = which
                return result
            self.log.info("{method} {path}: replica {url} failed, trying the next",
                          method=method, path=path, url=urls[which])
            self._current = (which + 1) % len(urls)

    async def _send(self, method, url, body, params, timeout, ok, extra_headers):
        data = None if body is None else json.dumps(body).encode("utf-8")
        try:
            response = await self.http.request(
                method, url, data=data, params=params,
                headers=_headers(self.token, body is not None, extra_headers),
                timeout=timeout if timeout is not None else self.timeout,
                reactor=self.reactor,
                # The APIs never redirect but to demand HTTPS; following that would turn a
                # POST into a GET. It is reported instead (and skips a wrapper per call).
                allow_redirects=False,
            )
            content = await response.content()
        except (APIError, CancelledError):
            raise
        except Exception as e:
            if _cancelled(e):
                raise CancelledError() from e
            error = Unreachable("{} {}: {}".format(method, url, e))
            error.__cause__ = e
            if isinstance(e, ConnectError):
                raise _NotSent() from error
            raise error
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = content.decode("utf-8", "replace")
        if response.code not in ok:
            raise APIError(response.code, decoded, url)
        return response, decoded


def _cancelled(error):
    """Whether a request failed because it was cancelled (treq wraps the cancellation)."""
    reasons = getattr(error, "reasons", None) or []
    return any(getattr(r, "check", lambda *a: False)(CancelledError) for r in reasons)


def _header(response, name):
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


def _revision(response, body=None):
    """The revision a controller answer carries: its header, else its body's."""
    revision = _header(response, b"A8-Revision")
    if revision is None and isinstance(body, dict) and isinstance(body.get("revision"), int):
        revision = body["revision"]
    return revision


def _change(response, body):
    return _revision(response), (body or {}).get("ids", [])


def _destination_path(kind, destination):
    return "/v1/rules/{}/{}".format(kind, quote(destination, safe=""))


@attrs.define
class RegistryClient(_Base):
    """The registry API (SPEC A2, B1)."""

    async def register(self, registration):
        # A registration replaces the instance with the same id: safe to send again.
        _, body = await self._call("POST", "/api/v1/instances", registration, ok=(200, 201),
                                   idempotent=True)
        return body

    async def heartbeat(self, instance_id):
        await self._call("PUT", "/api/v1/instances/{}/heartbeat".format(instance_id))

    async def deregister(self, instance_id):
        await self._call("DELETE", "/api/v1/instances/{}".format(instance_id))

    async def instances(self, wait=None, index=None, **filters):
        """
        List instances; with C{wait} and C{index}, a blocking read.

        @return: C{(index or None, [instance dicts])}; the index is L{None} when the server
            does not send C{A8-Index} (an Amalgam8 0.4 registry, which cannot block).
        """
        params = {k: v for k, v in filters.items() if v is not None}
        timeout = self.timeout
        if wait is not None and index is not None:
            params["wait"] = "{}s".format(int(wait))
            params["index"] = str(index)
            timeout = wait + self.timeout
        response, body = await self._call("GET", "/api/v1/instances", params=params or None,
                                          timeout=timeout)
        return _header(response, b"A8-Index"), (body or {}).get("instances", [])

    async def services(self):
        _, body = await self._call("GET", "/api/v1/services")
        return body.get("services", [])

    async def service(self, name):
        _, body = await self._call("GET", "/api/v1/services/{}".format(name))
        return body.get("instances", [])


@attrs.define
class ControllerClient(_Base):
    """The controller API (SPEC A3, B1, B2, B5)."""

    async def rules(self, wait=None, revision=None, **filters):
        """
        Read rules; with C{wait} and C{revision}, a blocking read.

        @return: C{(revision or None, [rules])}.
        """
        params = {k: v for k, v in filters.items() if v is not None}
        timeout = self.timeout
        if wait is not None and revision is not None:
            params["wait"] = "{}s".format(int(wait))
            params["revision"] = str(revision)
            timeout = wait + self.timeout
        response, body = await self._call("GET", "/v1/rules", params=params or None,
                                          timeout=timeout)
        return _revision(response, body), (body or {}).get("rules", [])

    async def rules_by_destination(self, kind):
        """@return: C{{destination: [rules]}} of C{GET /v1/rules/routes} (or actions)."""
        _, body = await self._call("GET", "/v1/rules/{}".format(kind))
        return (body or {}).get("services", {})

    async def rules_of_destination(self, kind, destination):
        """@return: the route (action) rules of one destination."""
        _, body = await self._call("GET", _destination_path(kind, destination))
        return (body or {}).get("rules", [])

    # Every change answers C{(revision it made, ids)}.

    async def create_rules(self, rules):
        return _change(*await self._call("POST", "/v1/rules", {"rules": rules},
                                         ok=(200, 201)))

    async def update_rules(self, rules):
        return _change(*await self._call("PUT", "/v1/rules", {"rules": rules}))

    async def delete_rules(self, **filters):
        params = {k: v for k, v in filters.items() if v is not None}
        return _change(*await self._call("DELETE", "/v1/rules", params=params or None))

    async def replace_rules(self, kind, destination, rules):
        """Replace every route (action) rule of C{destination}."""
        return _change(*await self._call("PUT", _destination_path(kind, destination),
                                         {"rules": rules}, ok=(200, 201)))

    async def clear_rules(self, kind, destination):
        """Delete every route (action) rule of C{destination}."""
        return _change(*await self._call("DELETE", _destination_path(kind, destination)))

    async def status(self):
        _, body = await self._call("GET", "/v1/rules/status")
        return body

    async def report(self, proxy_id, report):
        await self._call("PUT", "/v1/proxies/{}".format(proxy_id), report)

    async def post_traces(self, records):
        _, body = await self._call("POST", "/v1/traces", {"records": records},
                                   ok=(200, 201, 202))
        return body

    async def traces_page(self, after=0, limit=None, **filters):
        """
        One page of the matching trace records: those after the sequence number C{after}.

        @param limit: the most records on the page (the controller's default when L{None}).
        @return: C{(records, next)}; C{next} is the C{after} of the following page, L{None}
            on the last page.
        """
        params = {k: v for k, v in filters.items() if v is not None}
        params["after"] = str(after)
        if limit is not None:
            params["limit"] = str(limit)
        _, body = await self._call("GET", "/v1/traces", params=params)
        body = body or {}
        return body.get("records", []), body.get("next")

    async def traces(self, **filters):
        """Every matching trace record, following the pages."""
        records = []
        after = 0
        while after is not None:
            page, after = await self.traces_page(after, **filters)
            records.extend(page)
        return records
