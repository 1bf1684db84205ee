# -*- test-case-name: tests.test_kubernetes -*-
"""
The Kubernetes catalog (issue 12): the Endpoints (or, where the API server has
C{discovery.k8s.io/v1}, the EndpointSlices) of the services in one Kubernetes namespace,
mirrored as read-only instances of one registry namespace.

It lists, then watches from the list's C{metadata.resourceVersion}
(C{?watch=1&allowWatchBookmarks=true&resourceVersion=}); BOOKMARK events move the
resourceVersion; a C{410 Gone} (an HTTP 410 or an ERROR event holding a Status with code
410) relists; any other failure reconnects after an exponential backoff with jitter. A relist
replaces the mirror in one step, so instances that are still there never leave it.

Each address and port is an instance: service name the Endpoints' name (for a slice its
C{kubernetes.io/service-name} label), value C{ip:port}, endpoint type from the port's
C{appProtocol} or name (L{endpoint_type}), status C{UP} (C{STARTING} when not ready), tags
C{kubernetes} and the version of its pod (L{version_tag}), read from the pods (listed on
each relist, then fetched by name when a new one shows up).

Requests go through an injected treq C{HTTPClient} (streamed bodies with C{treq.collect});
the bearer token is re-read from its file when the file changes, and on a 401 once.
L{from_settings} builds it from the registry's settings (L{amalgam8.adapters.config}).
"""

import json
import os
import random as _random
import re

import attrs
import treq
import treq.client
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, DeferredQueue, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from amalgam8.adapters import ICatalog, catalog_instance, add_listener

__all__ = ["KubernetesCatalog", "Backoff", "endpoint_type", "version_tag", "from_settings",
           "SERVICE_ACCOUNT"]

log = Logger()

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_SLICES = "/apis/discovery.k8s.io/v1"


class _Gone(Exception):
    """The resourceVersion is too old: relist."""


class _Failed(Exception):
    """A request or a payload the catalog cannot use (the message says what)."""


@attrs.define
class Backoff:
    """
    Reconnect delays: C{initial * 2**n} capped at C{maximum}, with "equal jitter" (the
    delay's first half fixed, the second half times C{random()}), n counting the failures
    since the last success.
    """

    random: object = _random.random
    initial: float = 0.5
    maximum: float = 30.0
    failures: int = 0

    def next(self):
        delay = min(self.maximum, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return delay / 2 + delay / 2 * self.random()

    def reset(self):
        self.failures = 0


def endpoint_type(port):
    """
    The endpoint type of a port: its C{appProtocol}, else its C{name}, is C{https} or starts
    with C{https-} -> C{https}; C{http}, C{http2}, C{http-*} -> C{http}; anything else
    (unnamed, C{grpc}, C{tcp-*}, UDP...) -> C{tcp}.
    """
    for label in (port.get("appProtocol"), port.get("name")):
        label = str(label or "").lower()
        if label == "https" or label.startswith("https-"):
            return "https"
        if label in ("http", "http2") or label.startswith("http-"):
            return "http"
    return "tcp"


_HASH = re.compile(r"^[0-9a-z]{5,10}$")
_VERSION = re.compile(r"^v[0-9][0-9a-z.]*$")


def version_tag(pod, service):
    """
    The version of a pod: its C{version} label; else from the name of its controller (the
    C{ownerReference} with C{controller: true}). A ReplicaSet's name loses its last
    C{-<suffix>} when that is the pod's C{pod-template-hash} label (or, without the label,
    looks like one: 5 to 10 lowercase letters and digits), giving the Deployment's name;
    other controllers' names are used as they are. The version is what follows
    C{<service>-} in that name (C{reviews-v2} of service C{reviews} -> C{v2}), else its last
    C{-}-separated part if that looks like a version (C{v} and a digit: C{v1}, C{v2.1});
    else there is none (L{None}).
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get("version"):
        return str(labels["version"])
    owners = [o for o in meta.get("ownerReferences") or () if o.get("controller")]
    if not owners:
        return None
    name = str(owners[0].get("name") or "")
    if owners[0].get("kind") == "ReplicaSet" and "-" in name:
        head, suffix = name.rsplit("-", 1)
        hashed = labels.get("pod-template-hash")
        if suffix == hashed or (hashed is None and _HASH.match(suffix)):
            name = head
    if name.startswith(service + "-") and len(name) > len(service) + 1:
        return name[len(service) + 1:]
    last = name.rsplit("-", 1)[-1]
    return last if "-" in name and _VERSION.match(last) else None


@implementer(ICatalog)
class KubernetesCatalog(Service):
    """
    The mirror of one Kubernetes namespace's endpoints.

    @param url: the API server's base URL (C{https://10.0.0.1:443}).
    @param http: a treq C{HTTPClient} (or C{StubTreq}).
    @param clock: an C{IReactorTime} for backoff delays.
    @param token: a fixed bearer token, or L{None}.
    @param token_file: a file holding the token, re-read when its mtime changes.
    @param pool: an C{HTTPConnectionPool} closed when the service stops, or L{None}.
    @param stat, read: for tests (C{os.stat}, reading a file's text).
    """

    kind = "kubernetes"

    def __init__(self, url, http, clock, namespace="default", serves="default", token=None,
                 token_file=None, backoff=None, pool=None, stat=os.stat, read=None):
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.serves = serves
        self._http = http
        self._clock = clock
        self._token = token
        self._token_file = token_file
        self._token_mtime = None
        self._stat = stat
        self._read = read or _read_text
        self.backoff = backoff or Backoff()
        self._pool = pool
        self._listeners = []
        self._generation = 0
        self._sources = {}          # Endpoints/EndpointSlice name -> [Instance]
        self._flat = []
        self._pods = {}             # pod name -> pod object, or None: not found
        self._pods_readable = True  # False while listing the pods fails (RBAC, say)
        self._logged = set()
        self._running = None
        self._response = None
        self.slices = None          # discovered at the first list
        self.resource_version = None

    # -- ICatalog -------------------------------------------------------------------------

    def namespaces(self):
        return [self.serves] if self._flat else []

    def instances(self, namespace):
        return list(self._flat) if namespace == self.serves else []

    def generation(self, namespace):
        return self._generation if namespace == self.serves else 0

    def subscribe(self, listener):
        return add_listener(self._listeners, listener)

    def startService(self):
        Service.startService(self)
        self._running = ensureDeferred(self._run())
        self._running.addErrback(lambda f: f.trap(CancelledError))

    def stopService(self):
        Service.stopService(self)
        running, self._running = self._running, None
        if running is not None:
            running.cancel()
        self._abort()
        if self._pool is not None:
            return self._pool.closeCachedConnections()

    # -- the loop -------------------------------------------------------------------------

    async def _run(self):
        while self.running:
            try:
                if self.resource_version is None:
                    await self._relist()
                await self._watch()
            except _Gone:
                log.info("kubernetes: resourceVersion {version} is gone, relisting",
                         version=self.resource_version)
                self.resource_version = None
            except CancelledError:
                raise
            except Exception as e:
                if not self.running:
                    return
                delay = self.backoff.next()
                log.warn("kubernetes: {problem}; retrying in {delay:.2f}s",
                         problem=_describe(e), delay=delay)
                await deferLater(self._clock, delay)

    async def _relist(self):
        if self.slices is None:
            response = await self._get(_SLICES)
            body = await self._body(response)
            if response.code not in (200, 404):
                raise _Failed("discovery of {} answered {}".format(_SLICES, response.code))
            self.slices = response.code == 200 and any(
                r.get("name") == "endpointslices" for r in _object(body).get("resources", ()))
            log.info("kubernetes: mirroring {what} of namespace {namespace}",
                     what="EndpointSlices" if self.slices else "Endpoints",
                     namespace=self.namespace)
        listed = await self._list(self._path())
        try:
            pods = await self._list("/api/v1/namespaces/{}/pods".format(self.namespace))
            self._pods_readable = True
        except _Failed as e:
            # Without the pods there are no version tags, but the endpoints still list.
            self._log_once("kubernetes: no version tags: {problem}", problem=_describe(e))
            pods, self._pods_readable = {"items": []}, False
        self._pods = {}
        for item in pods["items"]:
            name = (item.get("metadata") or {}).get("name") if isinstance(item, dict) else None
            if name:
                self._pods[name] = item
        sources = {}
        for item in listed["items"]:
            parsed = await self._parse(item)
            if parsed is not None:
                sources[parsed[0]] = parsed[1]
        # One step: what is still there never leaves the mirror.
        self._sources = sources
        self.resource_version = listed["metadata"]["resourceVersion"]
        self.backoff.reset()
        self._changed()

    async def _list(self, path):
        response = await self._get(path)
        body = await self._body(response)
        if response.code != 200:
            raise _Failed("GET {} answered {}".format(path, response.code))
        listed = _object(body)
        version = (listed.get("metadata") or {}).get("resourceVersion")
        if not isinstance(listed.get("items"), list) or not isinstance(version, str):
            raise _Failed("GET {} is not a list with metadata.resourceVersion".format(path))
        return listed

    async def _watch(self):
        path = "{}?watch=1&allowWatchBookmarks=true&resourceVersion={}".format(
            self._path(), self.resource_version)
        response = await self._get(path, unbuffered=True)
        if response.code != 200:
            await self._body(response)
        if response.code == 410:
            raise _Gone()
        if response.code != 200:
            raise _Failed("the watch answered {}".format(response.code))
        lines = DeferredQueue()
        buffered = [b""]

        def received(data):
            parts = (buffered[0] + data).split(b"\n")
            buffered[0] = parts.pop()
            for line in parts:
                if line.strip():
                    lines.put(line)

        def ended(result):
            if buffered[0].strip():
                lines.put(buffered[0])
            lines.put(result)
        self._response = response
        treq.collect(response, received).addBoth(ended)
        try:
            while True:
                line = await lines.get()
                if not isinstance(line, bytes):
                    if line is not None:            # the connection was lost
                        raise _Failed("the watch broke: {}".format(
                            line.getErrorMessage()))
                    return                          # the server ended the watch
                await self._event(line)
        finally:
            self._abort()

    def _abort(self):
        response, self._response = self._response, None
        while response is not None and not hasattr(response, "_transport"):
            response = getattr(response, "original", None)    # treq's wrappers
        if response is not None and response._transport is not None:
            response._transport.stopProducing()

    async def _event(self, line):
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
            if not isinstance(obj, dict):
                raise TypeError("object is not a JSON object")
        except (ValueError, KeyError, TypeError) as e:
            raise _Failed("a malformed watch event ({}): {!r}".format(e, line[:200]))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise _Failed("the watch sent an error: {}".format(obj.get("message")))
        if kind == "BOOKMARK":
            if isinstance(version, str):
                self.resource_version = version
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise _Failed("a watch event of unknown type {!r}".format(kind))
        self.backoff.reset()
        name = (obj.get("metadata") or {}).get("name")
        if kind == "DELETED":
            if self._sources.pop(name, None) is not None:
                self._changed()
        else:
            parsed = await self._parse(obj)
            if parsed is not None and self._sources.get(parsed[0]) != parsed[1]:
                self._sources[parsed[0]] = parsed[1]
                self._changed()
        if isinstance(version, str):
            self.resource_version = version

    # -- objects --------------------------------------------------------------------------

    async def _parse(self, obj):
        """
        @return: C{(name, [Instance])} of an Endpoints or EndpointSlice, or L{None} for a
            malformed one (logged once; what was mirrored of it stays).
        """
        try:
            meta = obj["metadata"]
            name = meta["name"]
            if self.slices:
                service = (meta.get("labels") or {})["kubernetes.io/service-name"]
                entries = self._slice_entries(obj)
            else:
                service = name
                entries = self._endpoints_entries(obj)
            entries = list(entries)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            self._log_once("kubernetes: skipping malformed object {name!r}: {problem}",
                           name=str((obj.get("metadata") or {}).get("name")
                                    if isinstance(obj, dict) else obj)[:100],
                           problem=_describe(e))
            return None
        instances = {}
        for ip, port, ready, target in entries:
            tags = ["kubernetes"]
            version = await self._version(target, service)
            if version:
                tags.insert(0, version)
            value = "[{}]:{}".format(ip, port["port"]) if ":" in ip else "{}:{}".format(
                ip, port["port"])
            try:
                instance = catalog_instance(service, value, endpoint_type(port), tags,
                                            "UP" if ready else "STARTING",
                                            seen_at=self._clock.seconds())
            except ValueError as e:
                self._log_once("kubernetes: skipping {service} {value}: {problem}",
                               service=service, value=value, problem=str(e))
                continue
            instances.setdefault(instance.id, instance)
        return name, sorted(instances.values(), key=_order)

    def _endpoints_entries(self, obj):
        for subset in obj.get("subsets") or ():
            ports = _ports(subset.get("ports"))
            for key, ready in (("addresses", True), ("notReadyAddresses", False)):
                for address in subset.get(key) or ():
                    for port in ports:
                        yield str(address["ip"]), port, ready, address.get("targetRef")

    def _slice_entries(self, obj):
        if obj.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            return
        ports = _ports(obj.get("ports"))
        for endpoint in obj.get("endpoints") or ():
            ready = (endpoint.get("conditions") or {}).get("ready") is not False
            for ip in endpoint["addresses"]:
                for port in ports:
                    yield str(ip), port, ready, endpoint.get("targetRef")

    async def _version(self, target, service):
        if not isinstance(target, dict) or target.get("kind") != "Pod" or not target.get(
                "name"):
            return None
        name = str(target["name"])
        if name not in self._pods and self._pods_readable:
            path = "/api/v1/namespaces/{}/pods/{}".format(self.namespace, name)
            try:
                response = await self._get(path)
                body = await self._body(response)
                if response.code == 200:
                    self._pods[name] = _object(body)
                elif response.code == 404:
                    self._pods[name] = None
                else:
                    raise _Failed("GET {} answered {}".format(path, response.code))
            except (CancelledError, _Gone):
                raise
            except Exception as e:
                self._log_once("kubernetes: no version for pod {name}: {problem}",
                               name=name, problem=_describe(e))
                return None
        pod = self._pods.get(name)
        try:
            return version_tag(pod, service) if pod else None
        except (AttributeError, TypeError):
            return None

    def _changed(self):
        flat = {}
        for source in self._sources.values():
            for instance in source:
                flat.setdefault(instance.id, instance)
        flat = sorted(flat.values(), key=_order)
        if [(i.id, i.tags, i.status) for i in flat] == [
                (i.id, i.tags, i.status) for i in self._flat]:
            return
        self._flat = flat
        self._generation += 1
        for listener in list(self._listeners):
            listener(self.serves)

    def _log_once(self, format, **fields):
        key = (format, tuple(sorted(fields.items())))
        if key not in self._logged:
            self._logged.add(key)
            log.warn(format, **fields)

    # -- HTTP -----------------------------------------------------------------------------

    def _path(self):
        if self.slices:
            return "{}/namespaces/{}/endpointslices".format(_SLICES, self.namespace)
        return "/api/v1/namespaces/{}/endpoints".format(self.namespace)

    def _current_token(self, reread=False):
        if self._token_file:
            try:
                mtime = self._stat(self._token_file).st_mtime_ns
                if reread or mtime != self._token_mtime:
                    self._token = self._read(self._token_file).strip()
                    self._token_mtime = mtime
            except OSError as e:
                self._log_once("kubernetes: cannot read the token file {path}: {problem}",
                               path=self._token_file, problem=str(e))
        return self._token

    async def _get(self, path, unbuffered=False):
        response = await self._request(path, self._current_token(), unbuffered)
        if response.code == 401 and self._token_file:
            await self._body(response)
            response = await self._request(path, self._current_token(reread=True),
                                           unbuffered)
        return response

    def _request(self, path, token, unbuffered):
        headers = {b"Accept": [b"application/json"]}
        if token:
            headers[b"Authorization"] = [b"Bearer " + token.encode("utf-8")]
        return self._http.get(self.url + path, headers=headers, unbuffered=unbuffered)

    async def _body(self, response):
        return await treq.content(response)


def _ports(ports):
    ports = list(ports or ())
    for port in ports:
        if not isinstance(port.get("port"), int):
            raise ValueError("a port without a number")
    return ports


def _object(body):
    try:
        value = json.loads(body)
    except ValueError:
        raise _Failed("a body that is not JSON: {!r}".format(body[:200]))
    if not isinstance(value, dict):
        raise _Failed("a body that is not a JSON object: {!r}".format(body[:200]))
    return value


def _order(instance):
    return (instance.service_name, instance.registration.endpoint_value, instance.id)


def _describe(e):
    return str(e) or type(e).__name__


def _read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def from_settings(values, reactor, environ=None, service_account=SERVICE_ACCOUNT):
    """
    The catalog the settings ask for (C{k8s-url} given): C{in-cluster} takes the URL from
    C{KUBERNETES_SERVICE_HOST}/C{_PORT} and the token and CA from the service account's
    directory, unless C{k8s-token-file}/C{k8s-ca-file} say otherwise.

    @raise amalgam8.settings.SettingError: no in-cluster environment, an unreadable CA.
    """
    from twisted.internet import ssl
    from twisted.web.client import Agent, HTTPConnectionPool

    from amalgam8.client import DirectEndpoints
    from amalgam8.settings import SettingError

    environ = os.environ if environ is None else environ
    url, token_file, ca_file = values["k8s-url"], values["k8s-token-file"], values[
        "k8s-ca-file"]
    if url == "in-cluster":
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get(
            "KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise SettingError("k8s-url: in-cluster, but KUBERNETES_SERVICE_HOST is not set "
                               "(not in a pod?)")
        url = "https://{}:{}".format("[{}]".format(host) if ":" in host else host, port)
        if not values["k8s-token"]:
            token_file = token_file or os.path.join(service_account, "token")
        ca_file = ca_file or os.path.join(service_account, "ca.crt")
    if values["k8s-token"] and token_file:
        raise SettingError("k8s-token and k8s-token-file: give one, not both")
    if token_file and not os.access(token_file, os.R_OK):
        raise SettingError("k8s-token-file: cannot read {}".format(token_file))
    policy = None
    if ca_file:
        try:
            with open(ca_file, "rb") as f:
                pem = f.read()
            certificates = [ssl.Certificate.loadPEM(block) for block in _pem_blocks(pem)]
            if not certificates:
                raise ValueError("no certificate in it")
        except Exception as e:
            raise SettingError("k8s-ca-file: cannot use {}: {}".format(ca_file, e))
        policy = trust_policy(ssl.trustRootFromCertificates(certificates))
    pool = HTTPConnectionPool(reactor, persistent=True)
    # DirectEndpoints: an IP address is connected to directly, without a HostnameEndpoint
    # (whose 0.3 s attempt timer outlived a cancelled connection attempt).
    agent = Agent.usingEndpointFactory(reactor, DirectEndpoints(reactor, tls=policy),
                                       pool=pool)
    return KubernetesCatalog(url, treq.client.HTTPClient(agent), reactor,
                             namespace=values["k8s-namespace"], serves=values["k8s-serves"],
                             token=values["k8s-token"],
                             token_file=token_file, pool=pool)


def _pem_blocks(pem):
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


def trust_policy(trust_root):
    """An C{IPolicyForHTTPS} checking every server against C{trust_root} only."""
    from twisted.internet.ssl import optionsForClientTLS
    from twisted.web.iweb import IPolicyForHTTPS

    @implementer(IPolicyForHTTPS)
    class _Policy:
        def creatorForNetloc(self, hostname, port):
            return optionsForClientTLS(hostname.decode("ascii"), trustRoot=trust_root)

    return _Policy()
