# -*- test-case-name: tests.test_kubernetes -*-
"""
A fake Kubernetes API server for tests of L{amalgam8.adapters.kubernetes} (no real API server
runs here). It speaks the wire protocol the API reference documents for the parts the adapter
reads:

- C{GET /api/v1/namespaces/NS/endpoints}, C{.../pods}, C{.../pods/NAME} and
  C{GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices}: a C{...List} object with
  C{metadata.resourceVersion}; C{GET /apis/discovery.k8s.io/v1}: the group's
  C{APIResourceList} (404 when the fake serves no EndpointSlices);
- C{?watch=1&allowWatchBookmarks=true&resourceVersion=RV}: a chunked stream of watch events,
  one JSON object a line (C{{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR",
  "object": ...}}), starting with every change after RV; an RV older than the kept history
  gets an C{ERROR} event holding a C{Status} with code 410 (or, with C{gone_as_http}, a
  C{410 Gone} response with that C{Status} body), as the API server does;
- C{401} with a C{Status} body when a token is required and the request lacks it.

Test hooks on L{FakeKubernetes}: L{FakeKubernetes.put} / L{FakeKubernetes.delete} objects
(each bumps the resourceVersion and notifies the watchers), L{FakeKubernetes.compact} (forget
the history: older resourceVersions are gone), L{FakeKubernetes.bookmark},
L{FakeKubernetes.expire_watches} (an ERROR 410 on every open watch), L{FakeKubernetes.drop_watches},
L{FakeKubernetes.token}. The resource (L{FakeKubernetes.resource}) runs over
C{treq.testing.StubTreq} in unit tests, and on a loopback port with TLS
(L{FakeKubernetes.listen_tls}, L{TestCA}) in integration tests. Helpers build the objects:
L{endpoints}, L{endpoint_slice}, L{pod}.

Run alone it serves on loopback (for bench/catalog_kubernetes.py), with a control API:
C{PUT /_fake/<kind>/<namespace>/<name>} (the object as JSON) and C{DELETE} the same path.
"""

import copy
import datetime
import json
import sys

from twisted.internet import ssl
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

__all__ = ["FakeKubernetes", "TestCA", "endpoints", "endpoint_slice", "pod", "main"]

# kind -> (API path prefix, list kind)
_KINDS = {
    "endpoints": ("/api/v1", "EndpointsList", "Endpoints", "v1"),
    "pods": ("/api/v1", "PodList", "Pod", "v1"),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "EndpointSliceList", "EndpointSlice",
                       "discovery.k8s.io/v1"),
}


def status(code, reason, message):
    """A C{meta/v1 Status} failure object."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeKubernetes:
    """
    The fake's state (objects by kind, namespace and name; a resourceVersion counter; the
    history of changes since the last compaction) and its open watches.

    @ivar token: the bearer token every request must carry, or L{None} for none.
    @ivar slices: whether it serves C{discovery.k8s.io/v1} EndpointSlices.
    @ivar gone_as_http: answer a watch from a compacted resourceVersion with an HTTP 410
        instead of an ERROR event.
    @ivar requests: the C{(method, path with query)} of every request, in order.
    @ivar overrides: path -> C{(code, body bytes)}, answered instead of a (non-watch)
        GET of that path (recorded or malformed payloads).
    """

    def __init__(self, token=None, slices=False, gone_as_http=False):
        self.token = token
        self.slices = slices
        self.gone_as_http = gone_as_http
        self.requests = []
        self.overrides = {}
        self._objects = {kind: {} for kind in _KINDS}
        self._version = 100
        self._history = []          # (version, kind, namespace, type, object)
        self._oldest = self._version
        self._watches = []          # (kind, namespace, request)

    # -- test hooks -----------------------------------------------------------------------

    @property
    def resource_version(self):
        return str(self._version)

    def put(self, kind, obj):
        """Create or replace C{obj} (its C{metadata.namespace} and C{name}); a watch event."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.setdefault("namespace", "default"), meta["name"])
        self._version += 1
        meta["resourceVersion"] = str(self._version)
        meta.setdefault("uid", "uid-{}-{}".format(kind, meta["name"]))
        prefix, _, single, api = _KINDS[kind]
        obj.setdefault("kind", single)
        obj.setdefault("apiVersion", api)
        event = "MODIFIED" if key in self._objects[kind] else "ADDED"
        self._objects[kind][key] = obj
        self._record(kind, key[0], event, obj)
        return obj

    def delete(self, kind, namespace, name):
        obj = self._objects[kind].pop((namespace, name))
        self._version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._version)
        self._record(kind, namespace, "DELETED", obj)

    def get(self, kind, namespace, name):
        return self._objects[kind].get((namespace, name))

    def compact(self):
        """Forget the history: a watch from any earlier resourceVersion is gone (410)."""
        self._history = []
        self._oldest = self._version

    def bookmark(self):
        """Send every open watch a BOOKMARK at the current resourceVersion."""
        for kind, namespace, request in list(self._watches):
            _, _, single, api = _KINDS[kind]
            self._send(request, {"type": "BOOKMARK", "object": {
                "kind": single, "apiVersion": api,
                "metadata": {"resourceVersion": self.resource_version}}})

    def expire_watches(self):
        """End every open watch with an ERROR event holding a Status 410 (as on compaction)."""
        self.compact()
        for kind, namespace, request in list(self._watches):
            self._send(request, {"type": "ERROR", "object": status(
                410, "Expired", "too old resource version")})
            self._end(request)

    def send_raw(self, line):
        """Write C{line} (bytes, a newline added) on every open watch."""
        for _, _, request in list(self._watches):
            request.write(line + b"\n")

    def drop_watches(self):
        """Close every open watch (as the server does at a watch's timeout)."""
        for _, _, request in list(self._watches):
            self._end(request)

    def watching(self, kind="endpoints"):
        """How many watches of C{kind} are open."""
        return sum(1 for k, _, _ in self._watches if k == kind)

    def resource(self):
        return _Root(self)

    def listen_tls(self, reactor, ca, port=0):
        """
        Serve on 127.0.0.1 with TLS (a certificate of C{ca}).

        @return: the listening port; L{close} stops it and its connections.
        """
        self._site = _TrackingSite(self.resource())
        self._port = reactor.listenSSL(port, self._site, ca.server_options(),
                                       interface="127.0.0.1")
        return self._port

    def close(self):
        """
        Stop listening and abort the open connections.

        @return: a Deferred that fires when they are all gone.
        """
        from twisted.internet.defer import gatherResults, maybeDeferred
        waits = [maybeDeferred(self._port.stopListening)]
        for protocol in list(self._site.open):
            waits.append(self._site.open[protocol])
            channel = getattr(protocol, "_channel", protocol)     # HTTP/1.1 or h2
            channel.transport.abortConnection()
        return gatherResults(waits)

    # -- the wire -------------------------------------------------------------------------

    def _record(self, kind, namespace, event, obj):
        self._history.append((self._version, kind, namespace, event, obj))
        for k, ns, request in list(self._watches):
            if k == kind and ns == namespace:
                self._send(request, {"type": event, "object": obj})

    def _send(self, request, event):
        request.write(json.dumps(event).encode("utf-8") + b"\n")

    def _end(self, request):
        self._forget(request)
        request.finish()

    def _forget(self, request):
        self._watches = [w for w in self._watches if w[2] is not request]

    def render(self, request):
        path = request.path.decode("utf-8")
        self.requests.append((request.method.decode("ascii"), request.uri.decode("utf-8")))
        request.setHeader(b"content-type", b"application/json")
        if self.token is not None:
            given = request.getHeader(b"authorization")
            if given != ("Bearer " + self.token).encode("utf-8"):
                return self._fail(request, status(401, "Unauthorized", "Unauthorized"))
        if path in self.overrides and _arg(request, b"watch") is None:
            code, body = self.overrides[path]
            request.setResponseCode(code)
            return body
        if path.startswith("/_fake/"):
            return self._control(request, path)
        if request.method != b"GET":
            return self._fail(request, status(405, "MethodNotAllowed", "read-only fake"))
        if path.rstrip("/") == "/apis/discovery.k8s.io/v1" and self.slices:
            return _json({"kind": "APIResourceList", "apiVersion": "v1",
                          "groupVersion": "discovery.k8s.io/v1", "resources": [{
                              "name": "endpointslices", "singularName": "endpointslice",
                              "namespaced": True, "kind": "EndpointSlice",
                              "verbs": ["get", "list", "watch"]}]})
        for kind, (prefix, list_kind, _, api) in _KINDS.items():
            if kind == "endpointslices" and not self.slices:
                continue
            head = prefix + "/namespaces/"
            if not path.startswith(head):
                continue
            parts = path[len(head):].split("/")
            if len(parts) < 2 or parts[1] != kind:
                continue
            namespace = parts[0]
            if len(parts) == 3:
                obj = self.get(kind, namespace, parts[2])
                if obj is None:
                    return self._fail(request, status(404, "NotFound", '{} "{}" not found'
                                                      .format(kind, parts[2])))
                return _json(obj)
            if len(parts) != 2:
                break
            if _arg(request, b"watch") in ("1", "true"):
                return self._watch(request, kind, namespace)
            # A list's items carry no kind and apiVersion (the list has them).
            items = [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                     for (ns, _), obj in sorted(self._objects[kind].items())
                     if ns == namespace]
            return _json({"kind": list_kind, "apiVersion": api,
                          "metadata": {"resourceVersion": self.resource_version},
                          "items": items})
        return self._fail(request, status(404, "NotFound", "the server could not find the "
                                          "requested resource"))

    def _watch(self, request, kind, namespace):
        since = _arg(request, b"resourceVersion")
        since = int(since) if since and since.isdigit() else self._version
        if since < self._oldest:
            gone = status(410, "Expired", "too old resource version: {} ({})".format(
                since, self._oldest))
            if self.gone_as_http:
                return self._fail(request, gone)
            request.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            request.finish()
            return NOT_DONE_YET
        request.setHeader(b"transfer-encoding", b"chunked")
        request.write(b"")      # the headers now, as the API server does
        self._watches.append((kind, namespace, request))
        request.notifyFinish().addBoth(lambda _: self._forget(request))
        for version, k, ns, event, obj in self._history:
            if version > since and k == kind and ns == namespace:
                self._send(request, {"type": event, "object": obj})
        return NOT_DONE_YET

    def _fail(self, request, body):
        request.setResponseCode(body["code"])
        return _json(body)

    def _control(self, request, path):
        parts = path.split("/")[2:]
        if len(parts) != 3 or parts[0] not in _KINDS:
            return self._fail(request, status(404, "NotFound", "PUT/DELETE "
                                              "/_fake/<kind>/<namespace>/<name>"))
        kind, namespace, name = parts
        if request.method == b"PUT":
            obj = json.loads(request.content.read())
            obj.setdefault("metadata", {}).update(namespace=namespace, name=name)
            return _json(self.put(kind, obj))
        if request.method == b"DELETE" and self.get(kind, namespace, name) is not None:
            self.delete(kind, namespace, name)
            return _json({})
        return self._fail(request, status(404, "NotFound", "no such object"))


class _TrackingSite(Site):
    """A Site that knows its open connections (protocol -> Deferred fired when lost)."""

    def __init__(self, resource):
        Site.__init__(self, resource)
        self.open = {}

    def buildProtocol(self, addr):
        from twisted.internet.defer import Deferred
        protocol = Site.buildProtocol(self, addr)
        lost = protocol.connectionLost
        self.open[protocol] = Deferred()

        def connectionLost(reason):
            lost(reason)
            self.open.pop(protocol).callback(None)
        protocol.connectionLost = connectionLost
        return protocol


class _Root(Resource):
    isLeaf = True

    def __init__(self, fake):
        Resource.__init__(self)
        self._fake = fake

    def render(self, request):
        return self._fake.render(request)


def _arg(request, name):
    values = request.args.get(name)
    return values[0].decode("utf-8") if values else None


def _json(obj):
    return json.dumps(obj).encode("utf-8")


# -- objects --------------------------------------------------------------------------------

def _address(ip, pod_name, namespace):
    address = {"ip": ip}
    if pod_name:
        address["targetRef"] = {"kind": "Pod", "name": pod_name, "namespace": namespace}
    return address


def endpoints(name, addresses=(), not_ready=(), ports=(("http", 9080, "TCP"),),
              namespace="default"):
    """
    An C{Endpoints} object with one subset.

    @param addresses: C{(ip, pod name or None)} pairs, ready.
    @param not_ready: the same, not ready.
    @param ports: C{(name, port, protocol)} triples.
    """
    subset = {"ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}
    if addresses:
        subset["addresses"] = [_address(ip, pn, namespace) for ip, pn in addresses]
    if not_ready:
        subset["notReadyAddresses"] = [_address(ip, pn, namespace) for ip, pn in not_ready]
    return {"kind": "Endpoints", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "subsets": [subset] if (addresses or not_ready) else []}


def endpoint_slice(name, service, addresses=(), ports=(("http", 9080, "TCP"),),
                   namespace="default"):
    """
    An C{EndpointSlice} (discovery.k8s.io/v1) of C{service}.

    @param addresses: C{(ip, pod name or None, ready)} triples.
    """
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [dict({"addresses": [ip], "conditions": {"ready": ready}},
                               **({"targetRef": {"kind": "Pod", "name": pn,
                                                 "namespace": namespace}} if pn else {}))
                          for ip, pn, ready in addresses],
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}


def pod(name, labels=None, owner=None, namespace="default"):
    """A C{Pod}; C{owner}: C{(kind, name)} of its controller."""
    meta = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0],
                                    "name": owner[1], "uid": "uid-" + owner[1],
                                    "controller": True}]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running"}}


# -- TLS ------------------------------------------------------------------------------------

class TestCA:
    """
    A throwaway certificate authority made with pyopenssl, and a server certificate it
    signed for 127.0.0.1 and localhost.

    @ivar ca_pem: the CA certificate (PEM), what the adapter is told to trust.
    """

    def __init__(self, name="amalgam8 test CA"):
        from OpenSSL import crypto
        self._key = crypto.PKey()
        self._key.generate_key(crypto.TYPE_RSA, 2048)
        ca = self._certificate(name, self._key, None, is_ca=True)
        self._ca = ca
        self.ca_pem = crypto.dump_certificate(crypto.FILETYPE_PEM, ca)
        server_key = crypto.PKey()
        server_key.generate_key(crypto.TYPE_RSA, 2048)
        server = self._certificate("127.0.0.1", server_key, ca, is_ca=False)
        self.server_pem = (crypto.dump_privatekey(crypto.FILETYPE_PEM, server_key)
                           + crypto.dump_certificate(crypto.FILETYPE_PEM, server))

    def _certificate(self, common_name, key, issuer, is_ca):
        # The certificate is built with cryptography (which pyopenssl wraps) for its
        # extensions, then handed back as a pyopenssl X509.
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID
        import ipaddress
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        signer = self._key.to_cryptography_key()
        builder = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(issuer.to_cryptography().subject if issuer else subject)
                   .public_key(key.to_cryptography_key().public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None),
                                  critical=True))
        if not is_ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        from OpenSSL import crypto
        return crypto.X509.from_cryptography(builder.sign(signer, hashes.SHA256()))

    def server_options(self):
        return ssl.PrivateCertificate.loadPEM(self.server_pem).options()


def main(argv=None):
    """C{python -m amalgam8.testing.kubernetes [PORT]}: serve the fake on 127.0.0.1."""
    from twisted.internet import reactor
    argv = sys.argv[1:] if argv is None else argv
    fake = FakeKubernetes()
    port = reactor.listenTCP(int(argv[0]) if argv else 0, Site(fake.resource()),
                             interface="127.0.0.1")
    print("fake kubernetes listening on 127.0.0.1:{}".format(port.getHost().port),
          flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
