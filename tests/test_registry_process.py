"""
Integration tests of the real registry process: C{twistd -n a8registry} started with
C{spawnProcess} and spoken to over HTTP(S) on 127.0.0.1 (SPEC A2, B1 and C).
"""

import datetime
import hashlib
import ipaddress
import json
import os
import sys

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, ProcessExitedAlready
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseNeverReceived,
)

import amalgam8
from tests.helpers import ServerProcess

LISTENING = "a8registry listening on "
LOCAL = "tcp:0:interface=127.0.0.1"
LEVELS = {"debug", "info", "warn", "error", "critical"}


def _twistd_command():
    """The argv that runs twistd under the interpreter running these tests."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(twistd, os.X_OK):
        return [twistd]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _child_environment(extra):
    """Our environment without any A8_* setting, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("A8_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(amalgam8.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _instance_id(service, kind, value):
    text = "{}/{}/{}".format(service, kind, value)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _endpoint_quote(text):
    """Escape C{text} for use as a value in a Twisted endpoint string."""
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _self_signed(directory):
    """
    Write a self-signed certificate for 127.0.0.1 and localhost (both in subjectAltName,
    which is what service_identity checks) and its key as PEM files in C{directory}.

    @return: (certificate path, key path, certificate PEM bytes)
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    with open(key_path, "wb") as f:
        f.write(key_pem)
    return cert_path, key_path, cert_pem


def RegistryProcess():
    """A L{ServerProcess} that knows the registry's listening event."""
    return ServerProcess(reactor, LISTENING)


class RegistryProcessTests(TestCase):
    """The real C{twistd -n a8registry} process over the network."""

    timeout = 30

    def spawn(self, *options, env=None):
        """
        Start C{twistd -n --pidfile= --logger amalgam8.logs.json_observer a8registry
        *options} in a fresh temporary directory; it is stopped in cleanup.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        protocol = RegistryProcess()
        argv = _twistd_command() + [
            "-n", "--pidfile=", "--logger", "amalgam8.logs.json_observer",
            "a8registry",
        ] + list(options)
        reactor.spawnProcess(protocol, argv[0], argv, env=_child_environment(env or {}),
                             path=directory)
        self.addCleanup(self._stop, protocol)
        return protocol

    async def _stop(self, protocol):
        if protocol.exit is not None:
            return
        try:
            protocol.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            pass
        try:
            await protocol.ended(timeout=5)
        except Exception:
            try:
                protocol.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            await protocol.ended(timeout=5)

    async def start(self, *options, env=None):
        """Spawn the registry listening on 127.0.0.1 (unless told otherwise) and wait."""
        if not any(o == "--listen" for o in options):
            options = ("--listen", LOCAL) + options
        protocol = self.spawn(*options, env=env)
        host, port = await protocol.listening()
        self.assertEqual(host, "127.0.0.1")
        return protocol, port

    def client(self, tls_policy=None):
        """A treq client of its own (persistent pool, emptied in cleanup)."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        if tls_policy is None:
            agent = Agent(reactor, pool=pool)
        else:
            agent = Agent(reactor, contextFactory=tls_policy, pool=pool)
        return treq.client.HTTPClient(agent)

    async def call(self, http, method, url, body=None, timeout=5):
        """One request; returns C{(response, body bytes)}."""
        kwargs = {} if body is None else {"json": body}
        d = http.request(method, url, **kwargs)
        d.addTimeout(timeout, reactor)
        response = await d
        content = await treq.content(response)
        return response, content

    async def register(self, http, base, service, value, **extra):
        body = {"service_name": service, "endpoint": {"type": "http", "value": value}}
        body.update(extra)
        response, content = await self.call(http, "POST", base + "/api/v1/instances", body)
        self.assertEqual(response.code, 201, content)
        return response, json.loads(content)

    async def listing(self, http, base, query="", timeout=5):
        response, content = await self.call(
            http, "GET", base + "/api/v1/instances" + query, timeout=timeout)
        self.assertEqual(response.code, 200, content)
        index = int(response.headers.getRawHeaders(b"a8-index")[0])
        return index, json.loads(content)["instances"]

    def assertNoTraceback(self, protocol):
        self.assertFalse([line for line in protocol.stderr + protocol.stdout
                          if "Traceback" in line],
                         "traceback in the output: {!r}".format(protocol.stderr))
        self.assertFalse([e for e in protocol.events if "traceback" in e])

    # -- 1. the API over real HTTP ----------------------------------------------------------

    async def test_register_heartbeat_deregister(self):
        """
        Registering answers 201 with the deterministic id, the granted ttl, a Location and
        links pointing at this server; a heartbeat answers 200 with an empty body; a DELETE
        answers 200, after which heartbeat and DELETE get 410.
        """
        _, port = await self.start()
        base = "http://127.0.0.1:{}".format(port)
        http = self.client()

        response, body = await self.register(http, base, "web", "10.0.0.1:80", ttl=60)
        expected_id = _instance_id("web", "http", "10.0.0.1:80")
        url = base + "/api/v1/instances/" + expected_id
        self.assertEqual(body, {"id": expected_id, "ttl": 60,
                                "links": {"self": url, "heartbeat": url + "/heartbeat"}})
        self.assertEqual(response.headers.getRawHeaders(b"location"), [url.encode()])
        self.assertTrue(response.headers.getRawHeaders(b"a8-request-id"))

        response, content = await self.call(http, "PUT", url + "/heartbeat")
        self.assertEqual((response.code, content), (200, b""))
        response, content = await self.call(http, "PUT", base + "/api/v1/instances/"
                                            + "0" * 16 + "/heartbeat")
        self.assertEqual(response.code, 410)
        self.assertIn("Error", json.loads(content))

        response, content = await self.call(http, "DELETE", url)
        self.assertEqual((response.code, content), (200, b""))
        response, _ = await self.call(http, "PUT", url + "/heartbeat")
        self.assertEqual(response.code, 410)
        response, _ = await self.call(http, "DELETE", url)
        self.assertEqual(response.code, 410)

    async def test_listing_filters_and_index(self):
        """
        Listings carry an A8-Index that grows with every change; with no filter only UP
        instances are listed; service_name, tags, status and id filter (all statuses pass
        any filter but status); fields projects (id and endpoint kept); an unknown filter
        is a 400 with an C{Error} body.
        """
        _, port = await self.start()
        base = "http://127.0.0.1:{}".format(port)
        http = self.client()

        index0, instances = await self.listing(http, base)
        self.assertEqual(instances, [])
        await self.register(http, base, "web", "10.0.0.1:80", tags=["v1", "eu"], ttl=60)
        await self.register(http, base, "web", "10.0.0.2:80", tags=["v2", "eu"],
                            status="starting", ttl=60)
        await self.register(http, base, "db", "10.0.0.3:5432", tags=["v1"], ttl=60)
        web1 = _instance_id("web", "http", "10.0.0.1:80")
        web2 = _instance_id("web", "http", "10.0.0.2:80")
        db = _instance_id("db", "http", "10.0.0.3:5432")

        index, instances = await self.listing(http, base)
        self.assertGreater(index, index0)
        self.assertEqual(sorted(i["id"] for i in instances), sorted([web1, db]))
        first = [i for i in instances if i["id"] == web1][0]
        self.assertEqual(first["service_name"], "web")
        self.assertEqual(first["endpoint"], {"type": "http", "value": "10.0.0.1:80"})
        self.assertEqual(first["status"], "UP")
        self.assertEqual(sorted(first["tags"]), ["eu", "v1"])
        self.assertTrue(first["last_heartbeat"].endswith("Z"))

        async def ids(query):
            _, found = await self.listing(http, base, query)
            return sorted(i["id"] for i in found)

        self.assertEqual(await ids("?service_name=web"), sorted([web1, web2]))
        self.assertEqual(await ids("?tags=eu"), sorted([web1, web2]))
        self.assertEqual(await ids("?tags=v1,eu"), [web1])
        self.assertEqual(await ids("?status=STARTING"), [web2])
        self.assertEqual(await ids("?status=ALL"), sorted([web1, web2, db]))
        self.assertEqual(await ids("?id=" + db), [db])
        self.assertEqual(await ids("?service_name=nope"), [])

        _, projected = await self.listing(http, base, "?service_name=db&fields=tags")
        self.assertEqual(projected, [{"id": db, "tags": ["v1"],
                                      "endpoint": {"type": "http", "value": "10.0.0.3:5432"}}])

        response, content = await self.call(http, "GET", base + "/api/v1/instances?color=red")
        self.assertEqual(response.code, 400)
        self.assertIn("Error", json.loads(content))

        later, _ = await self.listing(http, base)
        self.assertEqual(later, index, "a read does not change the index")

    async def test_blocking_read(self):
        """
        C{GET /api/v1/instances?wait=10s&index=N} with the current index stays open until
        another request registers an instance, then answers at once with a greater
        A8-Index and the new instance; with nothing changing it answers the unchanged
        state when the wait runs out.
        """
        _, port = await self.start()
        base = "http://127.0.0.1:{}".format(port)
        http = self.client()
        other = self.client()
        await self.register(http, base, "web", "10.0.0.1:80", ttl=60)
        index, _ = await self.listing(http, base)

        started = reactor.seconds()
        blocked = Deferred.fromCoroutine(self.listing(
            http, base, "?wait=10s&index={}".format(index), timeout=15))
        await deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(blocked.called, "the blocking read answered before any change")

        await self.register(other, base, "api", "10.0.0.9:8080", ttl=60)
        blocked.addTimeout(5, reactor)
        new_index, instances = await blocked
        elapsed = reactor.seconds() - started
        self.assertLess(elapsed, 5, "answered only when the wait ran out")
        self.assertGreater(new_index, index)
        self.assertIn(_instance_id("api", "http", "10.0.0.9:8080"),
                      [i["id"] for i in instances])

        started = reactor.seconds()
        same_index, instances = await self.listing(
            http, base, "?wait=500ms&index={}".format(new_index))
        elapsed = reactor.seconds() - started
        self.assertEqual(same_index, new_index)
        self.assertEqual(len(instances), 2)
        self.assertGreaterEqual(elapsed, 0.4)
        self.assertLess(elapsed, 3)

    async def test_expiry_in_real_time(self):
        """
        With C{--min-ttl 500ms --default-ttl 1s --max-ttl 2s} (server TTLs may be
        fractional; a registration asks for whole seconds) a ttl of 0 is granted the 1 s
        default and 5 s is lowered to 2 s; an instance that is not heartbeated is gone from
        listings soon after its ttl and its heartbeat and DELETE then get 410, while one
        heartbeated every 0.25 s outlives its own ttl.
        """
        _, port = await self.start("--min-ttl", "500ms", "--default-ttl", "1s",
                                   "--max-ttl", "2s")
        base = "http://127.0.0.1:{}".format(port)
        http = self.client()

        _, kept = await self.register(http, base, "kept", "10.0.0.6:80", ttl=5)
        self.assertEqual(kept["ttl"], 2)
        started = reactor.seconds()
        _, lapsing = await self.register(http, base, "lapsing", "10.0.0.7:80", ttl=0)
        self.assertEqual(lapsing["ttl"], 1)

        gone_after = None
        while reactor.seconds() - started < 2.5:
            response, _ = await self.call(http, "PUT", kept["links"]["heartbeat"])
            self.assertEqual(response.code, 200)
            _, instances = await self.listing(http, base)
            services = {i["service_name"] for i in instances}
            self.assertIn("kept", services)
            if gone_after is None and "lapsing" not in services:
                gone_after = reactor.seconds() - started
            await deferLater(reactor, 0.25, lambda: None)

        self.assertIsNotNone(gone_after, "the instance did not expire within 2.5 s")
        self.assertGreaterEqual(gone_after, 0.9)
        _, instances = await self.listing(http, base, "?status=ALL")
        self.assertEqual(sorted(i["service_name"] for i in instances), ["kept"])
        response, _ = await self.call(http, "PUT", lapsing["links"]["heartbeat"])
        self.assertEqual(response.code, 410)
        response, _ = await self.call(http, "DELETE", lapsing["links"]["self"])
        self.assertEqual(response.code, 410)

    # -- 2. TLS -----------------------------------------------------------------------------

    async def test_https_listener(self):
        """
        With an C{ssl:} listener the registry answers HTTPS with the configured
        certificate: a client trusting that certificate gets 200 and https links, a client
        with the default trust roots refuses the connection.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert_path, key_path, cert_pem = _self_signed(directory)
        listen = "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}".format(
            _endpoint_quote(key_path), _endpoint_quote(cert_path))
        _, port = await self.start("--listen", listen)
        base = "https://127.0.0.1:{}".format(port)

        trusting = self.client(
            BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert_pem)))
        response, content = await self.call(trusting, "GET", base + "/uptime")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(content)["status"], "up")
        response, body = await self.register(trusting, base, "web", "10.0.0.1:443",
                                             ttl=60)
        self.assertTrue(body["links"]["self"].startswith(base + "/api/v1/instances/"))
        self.assertTrue(response.headers.getRawHeaders(b"location")[0]
                        .startswith(b"https://"))

        untrusting = self.client(BrowserLikePolicyForHTTPS())
        with self.assertRaises(ResponseNeverReceived) as caught:
            await self.call(untrusting, "GET", base + "/uptime")
        self.assertTrue(caught.exception.reasons[0].check(SSL.Error),
                        caught.exception.reasons)

    # -- 3. logs ----------------------------------------------------------------------------

    async def test_stdout_is_json_lines(self):
        """
        Every line the registry writes to standard output, from start-up through requests
        to shut-down, is one JSON object with an RFC 3339 UTC time, a known level and a
        text message; the listening event carries host and port.
        """
        protocol, port = await self.start()
        base = "http://127.0.0.1:{}".format(port)
        http = self.client()
        await self.register(http, base, "web", "10.0.0.1:80", ttl=60)
        await self.listing(http, base)
        await self.call(http, "GET", base + "/api/v1/instances?bad=1")
        protocol.transport.signalProcess("TERM")
        await protocol.ended()

        self.assertGreater(len(protocol.stdout), 3)
        for line in protocol.stdout:
            event = json.loads(line)
            self.assertIsInstance(event, dict, line)
            self.assertIsInstance(event.get("message"), str, line)
            self.assertIn(event.get("level"), LEVELS, line)
            self.assertTrue(event["time"].endswith("Z"), line)
            datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        listening = [e for e in protocol.events if e["message"].startswith(LISTENING)]
        self.assertEqual(len(listening), 1)
        self.assertEqual((listening[0]["host"], listening[0]["port"]), ("127.0.0.1", port))
        self.assertEqual(protocol.stderr, [])

    # -- 4. bad starts ----------------------------------------------------------------------

    async def test_bad_option_exits_2(self):
        """
        A bad option value stops the registry before it listens, with exit status 2 and
        exactly one line on stderr naming the option; the same value in the environment
        names the variable.
        """
        protocol = self.spawn("--listen", LOCAL, "--min-ttl", "abc")
        self.assertEqual(await protocol.ended(), (2, None))
        self.assertEqual(len(protocol.stderr), 1, protocol.stderr)
        self.assertIn("--min-ttl", protocol.stderr[0])
        self.assertIn("abc", protocol.stderr[0])
        self.assertIsNone(protocol.address)
        self.assertNoTraceback(protocol)

        protocol = self.spawn("--listen", LOCAL, env={"A8_MIN_TTL": "abc"})
        self.assertEqual(await protocol.ended(), (2, None))
        self.assertEqual(len(protocol.stderr), 1, protocol.stderr)
        self.assertIn("A8_MIN_TTL", protocol.stderr[0])
        self.assertNoTraceback(protocol)

    async def test_port_in_use_exits_2(self):
        """
        When its port is already taken the registry exits with status 2 and one line
        saying it cannot listen on that port, and no traceback. (Once twistd has started
        logging, stderr is redirected into the log, so the line is the one error event on
        stdout, as JSON.)
        """
        held = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(held.stopListening)
        port = held.getHost().port
        protocol = self.spawn("--listen", "tcp:{}:interface=127.0.0.1".format(port))
        self.assertEqual(await protocol.ended(), (2, None))
        self.assertIsNone(protocol.address)
        self.assertNoTraceback(protocol)
        for line in protocol.stdout:
            self.assertIsInstance(json.loads(line), dict)
        complaints = protocol.stderr + [
            e["message"] for e in protocol.events if e["level"] in ("error", "critical")]
        self.assertEqual(len(complaints), 1, complaints)
        self.assertIn("cannot listen", complaints[0])
        self.assertIn(str(port), complaints[0])

    # -- 5. SIGTERM -------------------------------------------------------------------------

    async def test_sigterm_stops_cleanly(self):
        """
        SIGTERM stops the registry: it exits with status 0 or by the signal, closes its
        port, logs its shut-down and writes nothing to stderr.
        """
        protocol, port = await self.start()
        http = self.client()
        response, _ = await self.call(http, "GET", "http://127.0.0.1:{}/uptime".format(port))
        self.assertEqual(response.code, 200)

        protocol.transport.signalProcess("TERM")
        code, signal = await protocol.ended()
        self.assertIn((code, signal), [(0, None), (None, 15)])
        self.assertEqual(protocol.stderr, [])
        self.assertNoTraceback(protocol)
        messages = [e["message"] for e in protocol.events]
        self.assertIn("Server Shut Down.", messages)
        self.assertFalse([e for e in protocol.events
                          if e["level"] in ("error", "critical")])

        with self.assertRaises(ConnectionRefusedError):
            await self.call(http, "GET", "http://127.0.0.1:{}/uptime".format(port),
                            timeout=3)
