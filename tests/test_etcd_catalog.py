"""
Tests for L{amalgam8.adapters.etcd}, the Weave Flux catalog: the ICatalog contract over a
real etcd through the v3 and the v2 API (Debian's C{etcd-server}, one member per test on free
loopback ports, L{amalgam8.testing.etcd}); the registry's listings and blocking reads
following Flux's changes (in process, and the real C{twistd a8registry --etcd-url}); etcd
restarted under the catalog; a compacted revision and a cleared v2 index (relists that never
drop an instance still there); malformed values; and, with no network, the parsing of Flux's
values and the catalog's revision bookkeeping over a scripted client on a L{Clock}.
"""

import json
import os
import time

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from amalgam8.adapters import ICatalog
from amalgam8.adapters.config import ADAPTER_SETTINGS, build_catalogs
from amalgam8.adapters.etcd import (EtcdCatalog, FluxInstance, FluxService, catalog_entry,
                                    from_settings, parse_details, parse_instance, parse_key)
from amalgam8.adapters.kubernetes import Backoff
from amalgam8.adapters.merge import CatalogMerge
from amalgam8.auth import Authenticator
from amalgam8.etcd import (Compacted, EtcdUnavailable, EtcdV2, EtcdV3, Event, KeyValue,
                           RangeResult, WatchResult, etcd_http_client)
from amalgam8.registry.api import RegistryAPI
from amalgam8.registry.store import MemoryStore
from amalgam8.settings import SettingError
from amalgam8.testing.catalogs import catalog_tests
from amalgam8.testing.etcd import EtcdCluster, etcd_missing, start_etcd
from tests import test_registry_process as process

SKIP = etcd_missing()
PREFIX = "/weave/service/"


async def eventually(condition, what="the etcd catalog did not follow etcd", timeout=5.0):
    """Wait on the real reactor until C{condition()} holds; fail after C{timeout} s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("{} within {}s".format(what, timeout))
        await deferLater(reactor, 0.005, lambda: None)


def details(protocol="http", address="10.128.0.1", port=80):
    return json.dumps({"address": address, "port": port, "protocol": protocol})


def flux(address, port, group=None, field="containerGroup", **extra):
    """An instance value as Flux wrote it."""
    value = {"ownerID": "host-1", "address": address, "port": port,
             "labels": {"image": "reviews", "tag": "latest"}, "state": "live"}
    if group is not None:
        value[field] = group
    value.update(extra)
    return json.dumps(value)


class Writer:
    """Writes Flux's keys through one API, as Flux (v2) or a v3 writer would."""

    def __init__(self, client, prefix=PREFIX):
        self.client = client
        self.prefix = prefix

    async def put(self, key, value):
        key = self.prefix + key
        if isinstance(self.client, EtcdV3):
            return (await self.client.put(key, value)).revision
        return (await self.client.set(key, value)).node.modified_index

    async def delete(self, key):
        if isinstance(self.client, EtcdV3):
            await self.client.delete_range(self.prefix + key)
        else:
            await self.client.delete(self.prefix + key)

    async def delete_service(self, service):
        """Every key of a service: v3 deletes the range, v2 the directory (Flux's way)."""
        if isinstance(self.client, EtcdV3):
            await self.client.delete_range(self.prefix + service + "/", prefix=True)
        else:
            await self.client.delete(self.prefix + service, recursive=True)


def make_catalog(cluster, api, http, prefix=PREFIX, serves="default", backoff=None,
                 clock=reactor):
    """
    A catalog of C{cluster} through C{api}; its HTTP runs on the real reactor, its backoff
    delays on C{clock}.
    """
    kind = EtcdV3 if api == "v3" else EtcdV2
    return EtcdCatalog(kind(http, cluster.urls, reactor), clock, prefix=prefix,
                       serves=serves, backoff=backoff or Backoff(initial=0.05, maximum=0.2))


def listed(catalog, namespace="default"):
    return sorted((i.service_name, i.registration.endpoint_value, i.tags)
                  for i in catalog.instances(namespace))


# -- the ICatalog contract, both APIs -------------------------------------------------------


class _Fixture:
    """The contract's fixture: a fresh etcd member, the catalog started after it."""

    namespace = "default"
    added_tags = ("flux",)

    def __init__(self, case):
        self.cluster = EtcdCluster(reactor, case.mktemp())
        self.http, self.pool = etcd_http_client(reactor)
        self.catalog = make_catalog(self.cluster, self.api, self.http)

    async def start(self):
        await self.cluster.start()
        if tuple(self.cluster.urls) != self.catalog.client.urls:
            # (its first ports were taken meanwhile: it runs on others)
            self.catalog.client = type(self.catalog.client)(self.http, self.cluster.urls,
                                                            reactor)
        self.writer = Writer(type(self.catalog.client)(self.http, self.cluster.urls, reactor))
        self.catalog.startService()

    async def stop(self):
        self.catalog.stopService()
        await self.pool.closeCachedConnections()
        await self.cluster.stop()
        await deferLater(reactor, 0.01, lambda: None)

    async def add(self, service, host, port, tags=()):
        await self.writer.put(service + "/details", details())
        await self.writer.put("{}/instance/{}-{}".format(service, host, port),
                              flux(host, port, tags[0] if tags else None))

    async def remove(self, service, host, port):
        await self.writer.delete("{}/instance/{}-{}".format(service, host, port))

    async def eventually(self, condition):
        await eventually(condition)


class V3Fixture(_Fixture):
    api = "v3"


class V2Fixture(_Fixture):
    api = "v2"


class V3ContractTests(catalog_tests(V3Fixture)):
    """The contract through the v3 API (range, then a watch stream)."""

    timeout = 20
    if SKIP:
        skip = SKIP


class V2ContractTests(catalog_tests(V2Fixture)):
    """The contract through the v2 keys API (a recursive get, then waits)."""

    timeout = 20
    if SKIP:
        skip = SKIP


# -- a real etcd ----------------------------------------------------------------------------


class RealEtcdCase(TestCase):
    """A real etcd member of the test's own, a writer for each API, catalogs to start."""

    timeout = 30
    if SKIP:
        skip = SKIP

    async def setUp(self):
        self.etcd = await start_etcd(self, reactor)
        self.http, pool = etcd_http_client(reactor)
        self.addCleanup(deferLater, reactor, 0.01, lambda: None)
        self.addCleanup(pool.closeCachedConnections)
        self.writers = {"v3": Writer(EtcdV3(self.http, self.etcd.urls, reactor)),
                        "v2": Writer(EtcdV2(self.http, self.etcd.urls, reactor))}

    def start(self, api, **kwargs):
        catalog = make_catalog(self.etcd, api, self.http, **kwargs)
        catalog.startService()
        self.addCleanup(catalog.stopService)
        return catalog


class LayoutTests(RealEtcdCase):
    """Flux's layout through each API: details, instances, service removal, other keys."""

    async def check_layout(self, api):
        write = self.writers[api]
        await write.put("reviews/details", details(protocol="tcp"))
        await write.put("reviews/instance/c1", flux("10.0.0.1", 9080, "v1"))
        await write.put("reviews/groupspec/v1", json.dumps({"selector": {"tag": "v1"}}))
        await write.put("ratings/instance/c2", flux("10.0.0.2", 9080, "v2",
                                                    field="instanceGroup"))
        await write.put("ratings/instance/c3", flux("10.0.0.3:9080", None,
                                                    field="containerRule", group="v3"))
        await write.put("ratings/instance/c4", json.dumps({"state": "no address"}))
        await write.put("-not-a-service", "{}")
        catalog = self.start(api)
        await eventually(lambda: len(listed(catalog)) == 3)
        types = {i.registration.endpoint_value: i.registration.endpoint_type
                 for i in catalog.instances("default")}
        self.assertEqual(types, {"10.0.0.1:9080": "tcp", "10.0.0.2:9080": "tcp",
                                 "10.0.0.3:9080": "tcp"})
        self.assertEqual(listed(catalog), [
            ("ratings", "10.0.0.2:9080", ("v2", "flux")),
            ("ratings", "10.0.0.3:9080", ("v3", "flux")),
            ("reviews", "10.0.0.1:9080", ("v1", "flux"))])

        # The service's protocol changes every instance's endpoint type.
        await write.put("reviews/details", details(protocol="http"))
        await eventually(lambda: {i.registration.endpoint_type for i in catalog.instances(
            "default") if i.service_name == "reviews"} == {"http"})
        # A change of version moves the tag; the service's removal takes its instances.
        await write.put("ratings/instance/c2", flux("10.0.0.2", 9080, "v4"))
        await eventually(lambda: ("ratings", "10.0.0.2:9080", ("v4", "flux")) in listed(
            catalog))
        await write.delete_service("ratings")
        await eventually(lambda: listed(catalog) == [
            ("reviews", "10.0.0.1:9080", ("v1", "flux"))])
        self.assertEqual(catalog.relists, 1)

    async def test_v3(self):
        """Flux's layout through v3."""
        await self.check_layout("v3")

    async def test_v2(self):
        """Flux's layout through v2."""
        await self.check_layout("v2")

    async def test_v2_all_removed(self):
        """v2: the prefix itself removed (Flux's RemoveAllServices) empties the catalog."""
        write = self.writers["v2"]
        await write.put("a/instance/x", flux("10.0.0.1", 1))
        await write.put("b/instance/y", flux("10.0.0.2", 2))
        catalog = self.start("v2")
        await eventually(lambda: len(listed(catalog)) == 2)
        await write.client.delete(PREFIX, recursive=True)
        await eventually(lambda: listed(catalog) == [])

    async def test_prefix_and_namespace(self):
        """Only the configured prefix is read, and listed in the namespace served."""
        await self.writers["v3"].put("a/instance/x", flux("10.0.0.1", 1))
        other = Writer(self.writers["v3"].client, prefix="/flux/tenant-b/")
        await other.put("b/instance/y", flux("10.0.0.2", 2))
        catalog = self.start("v3", prefix="/flux/tenant-b", serves="tenant-b")
        await eventually(lambda: len(listed(catalog, "tenant-b")) == 1)
        self.assertEqual(listed(catalog, "tenant-b"), [("b", "10.0.0.2:2", ("flux",))])
        self.assertEqual(catalog.instances("default"), [])
        self.assertEqual(catalog.namespaces(), ["tenant-b"])


class RestartTests(RealEtcdCase):
    """etcd restarted under the catalog: it resumes where it was, nothing lost or doubled."""

    timeout = 40

    async def check_restart(self, api):
        write = self.writers[api]
        await write.put("reviews/details", details())
        await write.put("reviews/instance/a", flux("10.0.0.1", 9080, "v1"))
        await write.put("reviews/instance/b", flux("10.0.0.2", 9080, "v1"))
        # The retry's delay runs on a Clock: the catalog stays away until the test says.
        clock = Clock()
        catalog = self.start(api, backoff=Backoff(initial=1.0, random=lambda: 1.0),
                             clock=clock)
        seen = []
        catalog.subscribe(lambda namespace: seen.append(listed(catalog)))
        await eventually(lambda: len(listed(catalog)) == 2)
        before = catalog.position

        await self.etcd.stop_member(0)
        await eventually(lambda: clock.getDelayedCalls(),
                         "the catalog did not notice etcd stopping")
        self.assertEqual(catalog.backoff.failures, 1)
        await self.etcd.start_member(0)
        await write.put("reviews/instance/c", flux("10.0.0.3", 9080, "v2"))
        await write.delete("reviews/instance/a")
        clock.advance(1.0)                                   # back
        await eventually(lambda: [i[1] for i in listed(catalog)] == [
            "10.0.0.2:9080", "10.0.0.3:9080"])
        self.assertEqual(catalog.relists, 1)                 # resumed: no relist
        self.assertGreater(catalog.position, before)
        ids = [i.id for i in catalog.instances("default")]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertTrue(all(("reviews", "10.0.0.2:9080", ("v1", "flux")) in listing
                            for listing in seen), seen)
        # And it follows on.
        await write.put("reviews/instance/d", flux("10.0.0.4", 9080))
        await eventually(lambda: len(listed(catalog)) == 3)

    async def test_v3(self):
        """etcd restarted under a v3 catalog."""
        await self.check_restart("v3")

    async def test_v2(self):
        """etcd restarted under a v2 catalog."""
        await self.check_restart("v2")


class RelistTests(RealEtcdCase):
    """
    A catalog away while etcd compacted (v3) or moved past its 1,000 events of history
    (v2) relists when it is back, replacing its mirror in one step.
    """

    timeout = 40

    async def away_and_back(self, api, meanwhile):
        write = self.writers[api]
        await write.put("reviews/instance/a", flux("10.0.0.1", 9080, "v1"))
        await write.put("reviews/instance/b", flux("10.0.0.2", 9080, "v1"))
        catalog = self.start(api)
        await eventually(lambda: len(listed(catalog)) == 2)
        seen = []
        catalog.subscribe(lambda namespace: seen.append(listed(catalog)))
        catalog.stopService()                 # away (it keeps its mirror and position)
        await write.put("reviews/instance/c", flux("10.0.0.3", 9080, "v2"))
        await write.delete("reviews/instance/a")
        await meanwhile()
        with capturedLogs() as events:
            catalog.startService()
            await eventually(lambda: catalog.relists == 2)
        self.assertEqual([i[1] for i in listed(catalog)], ["10.0.0.2:9080", "10.0.0.3:9080"])
        self.assertEqual(seen, [listed(catalog)])         # one step, "b" never left
        self.assertTrue([e for e in events if "relisting" in e.get("log_format", "")])
        await write.put("reviews/instance/d", flux("10.0.0.4", 9080))
        await eventually(lambda: len(listed(catalog)) == 3)

    async def test_v3_compacted(self):
        """v3: the revision compacted while away relists."""
        await self.away_and_back("v3", self.etcd.compact)

    async def test_v2_index_cleared(self):
        """v2: more than 1,000 changes while away (event index cleared) relist."""
        client = self.writers["v2"].client

        async def history_moves_on():
            for batch in range(11):
                await gatherResults([ensureDeferred(client.set("/other/{}".format(n), "x"))
                                     for n in range(batch * 100, batch * 100 + 100)])
        await self.away_and_back("v2", history_moves_on)


class MalformedTests(RealEtcdCase):
    """Values that cannot be read are logged once and skipped; the rest is listed."""

    BAD = [
        ("a", b"not json", "not JSON"),
        ("b", b"[1, 2]", "not a JSON object"),
        ("c", b'{"address": 5, "port": 80}', "address must be a string"),
        ("d", b'{"address": "10.0.0.9", "port": "80"}', "port must be a number"),
        ("e", b'{"address": "10.0.0.9", "port": 70000}', "port must be a number"),
        ("f", b'{"address": "10.0.0.9", "port": 80, "labels": {"n": 1}}', "labels"),
        ("g", b'{"address": "10.0.0.9", "port": 80, "containerGroup": "' + b"v" * 300 + b'"}',
         "each tag"),
        ("h", b'\xff\xfe{}', "not UTF-8"),
        ("i", b'{"address": "not an address!", "port": 80}', "IP address or a host name"),
    ]

    async def check_malformed(self, api):
        write = self.writers[api]
        await write.put("reviews/instance/good", flux("10.0.0.1", 9080, "v1"))
        for name, value, _ in self.BAD:
            if api == "v2" and b"\xff" in value:
                continue                          # (v2 values are text)
            await write.put("reviews/instance/" + name, value)
        await write.put("reviews/details", b"{")
        with capturedLogs() as events:
            catalog = self.start(api)
            await eventually(lambda: len(listed(catalog)) == 1)
            await write.put("reviews/instance/good", b"{broken")     # keeps the old one
            await write.put("reviews/instance/a", b"not json")       # the same mistake again
            await write.put("reviews/instance/later", flux("10.0.0.2", 9080))
            await eventually(lambda: len(listed(catalog)) == 2)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        problems = {e["key"].rsplit("/", 1)[-1]: e["problem"] for e in warnings}
        for name, value, message in self.BAD:
            if api == "v2" and b"\xff" in value:
                continue
            self.assertIn(message, problems.pop(name))
        self.assertIn("not JSON", problems.pop("good"))
        self.assertIn("not JSON", problems.pop("details"))
        self.assertEqual(problems, {})
        self.assertEqual(len(warnings), len([e for e in warnings if e.get("key")]))
        keys = [e["key"] for e in warnings]
        self.assertEqual(len(keys), len(set(keys)))             # each once
        self.assertEqual(listed(catalog), [("reviews", "10.0.0.1:9080", ("v1", "flux")),
                                           ("reviews", "10.0.0.2:9080", ("flux",))])

    async def test_v3(self):
        """Malformed values through v3."""
        await self.check_malformed("v3")

    async def test_v2(self):
        """Malformed values through v2."""
        await self.check_malformed("v2")

    async def test_key_not_utf8(self):
        """v3 keys are bytes: one that is not UTF-8 is logged once and skipped."""
        await self.writers["v3"].client.put(PREFIX.encode() + b"\xff/instance/x",
                                            flux("10.0.0.1", 1))
        await self.writers["v3"].put("ok/instance/x", flux("10.0.0.2", 2))
        with capturedLogs() as events:
            catalog = self.start("v3")
            await eventually(lambda: len(listed(catalog)) == 1)
        self.assertEqual(len([e for e in events if "not UTF-8" in e.get("log_format", "")]),
                         1)


class NoEtcdTests(TestCase):
    """etcd not there at all: the catalog retries with backoff and lists nothing."""

    timeout = 10

    async def test_refused(self):
        """Refused: logged with the URL, retried with backoff, nothing listed."""
        http, pool = etcd_http_client(reactor)
        self.addCleanup(pool.closeCachedConnections)
        from amalgam8.testing.etcd import free_ports
        url = "http://127.0.0.1:{}".format(free_ports(1)[0])
        catalog = EtcdCatalog(EtcdV3(http, [url], reactor), reactor,
                              backoff=Backoff(initial=0.02, maximum=0.04))
        with capturedLogs() as events:
            catalog.startService()
            self.addCleanup(catalog.stopService)
            await eventually(lambda: catalog.backoff.failures >= 3)
        self.assertEqual(catalog.instances("default"), [])
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn(url, warnings[0]["problem"])


# -- through the registry -------------------------------------------------------------------


class RegistryTests(RealEtcdCase):
    """
    The registry API (in process, on a loopback port) over CatalogMerge over the catalog:
    every kind of Flux change wakes a blocking read with the new listing.
    """

    async def serve(self, api):
        self.catalog = make_catalog(self.etcd, api, self.http)
        merge = CatalogMerge(MemoryStore(clock=reactor), [self.catalog])
        merge.startService()
        self.addCleanup(merge.stopService)
        site = Site(RegistryAPI(merge, Authenticator(("default",), reactor),
                                reactor).resource())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = "http://127.0.0.1:{}".format(port.getHost().port)
        client_pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(client_pool.closeCachedConnections)
        self.client = HTTPClient(Agent(reactor, pool=client_pool))

    async def read(self, query=""):
        response = await self.client.get(self.base + "/api/v1/instances" + query,
                                         timeout=15)
        body = json.loads(await treq.content(response))
        return int(response.headers.getRawHeaders(b"a8-index")[0]), sorted(
            (i["service_name"], i["endpoint"]["type"], i["endpoint"]["value"],
             tuple(i.get("tags", ()))) for i in body["instances"])

    async def check_follow(self, api):
        await self.serve(api)
        write = self.writers[api]
        await eventually(lambda: self.catalog.relists == 1)
        steps = [
            ("a service and an instance",
             [("reviews/details", details()), ("reviews/instance/a", flux("10.0.0.1", 80,
                                                                          "v1"))],
             [("reviews", "http", "10.0.0.1:80", ("v1", "flux"))]),
            ("a second instance", [("reviews/instance/b", flux("10.0.0.2", 80, "v2"))],
             [("reviews", "http", "10.0.0.1:80", ("v1", "flux")),
              ("reviews", "http", "10.0.0.2:80", ("v2", "flux"))]),
            ("a new version", [("reviews/instance/a", flux("10.0.0.1", 80, "v3"))],
             [("reviews", "http", "10.0.0.1:80", ("v3", "flux")),
              ("reviews", "http", "10.0.0.2:80", ("v2", "flux"))]),
            ("an instance removed", [("reviews/instance/b", None)],
             [("reviews", "http", "10.0.0.1:80", ("v3", "flux"))]),
            ("the protocol changed", [("reviews/details", details(protocol="tcp"))],
             [("reviews", "tcp", "10.0.0.1:80", ("v3", "flux"))]),
            ("the service removed", "reviews", []),
        ]
        for what, changes, expected in steps:
            index, _ = await self.read()
            waiting = ensureDeferred(self.read("?wait=10s&index={}".format(index)))
            await deferLater(reactor, 0.01, lambda: None)
            self.assertNoResult(waiting)
            if isinstance(changes, str):
                await write.delete_service(changes)
            else:
                for key, value in changes:
                    if value is None:
                        await write.delete(key)
                    else:
                        await write.put(key, value)
            woken, instances = await waiting
            # The last write of a step may wake the read before the earlier ones are in.
            while instances != expected:
                woken, instances = await self.read("?wait=10s&index={}".format(woken))
            self.assertGreater(woken, index, what)

    async def test_v3(self):
        """The registry follows Flux's changes through v3."""
        await self.check_follow("v3")

    async def test_v2(self):
        """The registry follows Flux's changes through v2."""
        await self.check_follow("v2")


class RegistryProcessTests(TestCase):
    """The real C{twistd -n a8registry --etcd-url ...} over HTTP on 127.0.0.1."""

    timeout = 30
    spawn = process.RegistryProcessTests.spawn
    _stop = process.RegistryProcessTests._stop
    start = process.RegistryProcessTests.start
    client = process.RegistryProcessTests.client
    call = process.RegistryProcessTests.call
    listing = process.RegistryProcessTests.listing
    assertNoTraceback = process.RegistryProcessTests.assertNoTraceback
    if SKIP:
        skip = SKIP

    async def test_listing_follows_etcd(self):
        """Flux's instances list; a blocking read wakes when Flux adds one."""
        etcd = await start_etcd(self, reactor)
        writer = Writer(etcd.client_v2(), prefix="/flux/")
        await writer.put("reviews/details", details())
        await writer.put("reviews/instance/a", flux("127.0.0.1", 9080, "v1"))
        protocol, port = await self.start(
            "--etcd-url", ",".join(["http://127.0.0.1:1", etcd.url]), "--etcd-api", "v2",
            "--etcd-prefix", "/flux")
        http = self.client()
        base = "http://127.0.0.1:{}".format(port)
        for _ in range(200):
            index, instances = await self.listing(http, base)
            if instances:
                break
            await deferLater(reactor, 0.02, lambda: None)
        [instance] = instances
        self.assertEqual((instance["endpoint"], instance["tags"]),
                         ({"type": "http", "value": "127.0.0.1:9080"}, ["v1", "flux"]))
        waiting = ensureDeferred(self.listing(http, base, "?wait=10s&index={}".format(index),
                                              timeout=15))
        await deferLater(reactor, 0.05, lambda: None)
        await writer.put("reviews/instance/b", flux("127.0.0.1", 9081, "v2"))
        woken, instances = await waiting
        self.assertGreater(woken, index)
        self.assertEqual(len(instances), 2)
        response, _ = await self.call(http, "DELETE", base + "/api/v1/instances/" +
                                      instance["id"])
        self.assertEqual(response.code, 403)
        self.assertNoTraceback(protocol)

    async def test_bad_prefix_exits_2(self):
        """A prefix that is not a key path stops the registry at start with one line."""
        protocol = self.spawn("--listen", process.LOCAL, "--etcd-url", "http://127.0.0.1:1",
                              "--etcd-prefix", "weave")
        self.assertEqual(await protocol.ended(), (2, None))
        self.assertEqual(protocol.stderr, [
            "a8registry: etcd-prefix: 'weave' is not a key path such as /weave/service/"],
            protocol.stderr)


# -- no network -----------------------------------------------------------------------------


class ParseTests(SynchronousTestCase):
    """Flux's values and keys, as each version of Flux wrote them."""

    def test_instance_fields(self):
        """address, port, labels, state; the group from any of its three names."""
        for field in ("instanceGroup", "containerGroup", "containerRule"):
            parsed = parse_instance(flux("10.0.0.1", 80, "v2", field=field))
            self.assertEqual(parsed, FluxInstance(
                "10.0.0.1", 80, "v2", (("image", "reviews"), ("tag", "latest")), "live"))
            self.assertEqual((parsed.version, parsed.endpoint_value), ("v2", "10.0.0.1:80"))

    def test_address_forms(self):
        """One "ip:port" string (later Flux), IPv6, host names; no address: no endpoint."""
        self.assertEqual(parse_instance('{"address": "10.0.0.1:8080"}').endpoint_value,
                         "10.0.0.1:8080")
        self.assertEqual(parse_instance('{"address": "[fd00::1]:80"}').endpoint_value,
                         "[fd00::1]:80")
        self.assertEqual(parse_instance('{"address": "fd00::1", "port": 80}').endpoint_value,
                         "[fd00::1]:80")
        self.assertEqual(parse_instance('{"address": "db-1.local", "port": 5432}')
                         .endpoint_value, "db-1.local:5432")
        for value in ('{"state": "no address"}', '{"address": "10.0.0.1"}',
                      '{"address": "", "port": 0}', "{}"):
            self.assertIsNone(parse_instance(value).endpoint_value, value)

    def test_version(self):
        """The group, else the label version, else none."""
        self.assertEqual(parse_instance('{"labels": {"version": "v7"}}').version, "v7")
        self.assertEqual(parse_instance(
            '{"containerGroup": "canary", "labels": {"version": "v7"}}').version, "canary")
        self.assertIsNone(parse_instance('{"containerRule": ""}').version)

    def test_instance_bad(self):
        """Each malformed instance value is a ValueError naming the problem."""
        for value, message in ((b"\xff", "UTF-8"), ("", "not JSON"), ("null", "JSON object"),
                               ('{"port": true}', "port"), ('{"port": 1.5}', "port"),
                               ('{"port": -1}', "port"), ('{"address": []}', "address"),
                               ('{"address": "10.0.0.1:99999"}', "port"),
                               ('{"labels": []}', "labels"), ('{"state": 1}', "state"),
                               ('{"containerGroup": 2}', "containerGroup")):
            with self.assertRaises(ValueError) as caught:
                parse_instance(value)
            self.assertIn(message, str(caught.exception), value)

    def test_details(self):
        """A service's details: its protocol gives the endpoint type."""
        self.assertEqual(parse_details(details()),
                         FluxService(protocol="http", address="10.128.0.1", port=80))
        self.assertEqual(parse_details("{}").endpoint_type, "tcp")
        self.assertEqual(parse_details('{"protocol": "HTTP"}').endpoint_type, "http")
        self.assertEqual(parse_details('{"protocol": "https"}').endpoint_type, "https")
        self.assertEqual(parse_details('{"protocol": "udp"}').endpoint_type, "tcp")
        self.assertEqual(parse_details('{"address": "10.128.0.1:80"}').port, 80)
        for value in ("[]", '{"protocol": 7}', '{"port": "x"}'):
            with self.assertRaises(ValueError):
                parse_details(value)

    def test_keys(self):
        """Keys of Flux's layout, its directories, and the keys ignored."""
        p = "/weave/service/"
        self.assertEqual(parse_key(p, p + "a/details"), ("details", "a"))
        self.assertEqual(parse_key(p, p + "a/instance/x"), ("instance", "a", "x"))
        self.assertEqual(parse_key(p, p + "a/instance"), ("instances", "a"))
        self.assertEqual(parse_key(p, p + "a"), ("service", "a"))
        self.assertEqual(parse_key(p, p), ("all",))
        self.assertEqual(parse_key(p, "/weave/service"), ("all",))
        for other in (p + "a/groupspec/v1", p + "a/instance/x/y", p + "a/instance/",
                      p + "a/details/x", p + "/x", "/weave/other/a/details", "/weave"):
            self.assertIsNone(parse_key(p, other), other)

    def test_catalog_entry(self):
        """A Flux instance as a registry instance: endpoint, tags, status, metadata, ttl."""
        entry = catalog_entry("reviews", "c1", parse_instance(flux("10.0.0.1", 80, "v1")),
                              FluxService(protocol="http"), seen_at=5)
        self.assertEqual(entry.as_dict()["endpoint"], {"type": "http", "value": "10.0.0.1:80"})
        self.assertEqual((entry.tags, entry.status, entry.last_heartbeat,
                          entry.registration.ttl),
                         (("v1", "flux"), "UP", 5.0, 0))
        self.assertEqual(entry.as_dict()["metadata"],
                         {"flux": {"instance": "c1", "group": "v1"}})
        no_details = catalog_entry("reviews", "c1", parse_instance(flux("10.0.0.1", 80)))
        self.assertEqual((no_details.registration.endpoint_type, no_details.tags),
                         ("tcp", ("flux",)))
        starting = catalog_entry("r", "c", FluxInstance("10.0.0.1", 80, state="starting"))
        self.assertEqual(starting.status, "STARTING")
        self.assertIsNone(catalog_entry("r", "c", FluxInstance(state="no address")))
        with self.assertRaises(ValueError):
            catalog_entry("r" * 65, "c", FluxInstance("10.0.0.1", 80))


class FakeWatch:
    """A watch whose answers the test gives (L{give}), or ends (L{fail})."""

    def __init__(self):
        self.pending = []
        self.answers = []
        self.canceled = False

    def give(self, answer):
        if self.pending:
            self.pending.pop(0).callback(answer)
        else:
            self.answers.append(answer)

    def fail(self, error):
        self.pending.pop(0).errback(error)

    def next(self):
        if self.answers:
            return self._settle(self.answers.pop(0))
        d = Deferred()
        self.pending.append(d)
        return d

    @staticmethod
    def _settle(answer):
        d = Deferred()
        d.callback(answer)
        return d

    def cancel(self):
        self.canceled = True


class FakeV3:
    """The calls of EtcdV3 the catalog makes, answered by the test."""

    api = "v3"
    urls = ("http://etcd.test:2379",)

    def __init__(self):
        self.listings = []      # RangeResults to answer, in order
        self.watches = []       # (start_revision, FakeWatch)

    def range_all(self, key, prefix=False):
        d = Deferred()
        d.callback(self.listings.pop(0))
        return d

    def watch(self, key, prefix=False, start_revision=None, progress_notify=False):
        watch = FakeWatch()
        self.watches.append((start_revision, watch))
        d = Deferred()
        d.callback(watch)
        return d


def kv(name, value, revision):
    return KeyValue((PREFIX + name).encode(), value.encode(), mod_revision=revision)


def put(name, value, revision):
    return Event("PUT", kv(name, value, revision))


class BookkeepingTests(SynchronousTestCase):
    """The catalog's revisions, relists and stop, over a scripted v3 client on a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.client = FakeV3()
        self.client.listings.append(RangeResult(10, (kv("a/instance/x",
                                                        flux("10.0.0.1", 1), 4),)))
        self.catalog = EtcdCatalog(self.client, self.clock,
                                   backoff=Backoff(random=lambda: 0.5))
        self.seen = []
        self.catalog.subscribe(lambda ns: self.seen.append(listed(self.catalog)))
        self.catalog.startService()
        self.addCleanup(self.catalog.stopService)

    def watch(self):
        return self.client.watches[-1]

    def test_lists_then_watches(self):
        """It lists, then watches from the listing's revision + 1."""
        self.assertEqual(self.watch()[0], 11)
        self.assertEqual(self.seen, [[("a", "10.0.0.1:1", ("flux",))]])
        self.assertTrue(verifyObject(ICatalog, self.catalog))

    def test_resumes_after_last_event(self):
        """
        After events, it resumes from the last event's revision + 1 (the header may be
        ahead of them); after a progress notification, from its revision + 1.
        """
        start, watch = self.watch()
        watch.give(WatchResult(30, (put("a/instance/y", flux("10.0.0.2", 2), 12),)))
        self.assertEqual(self.catalog.position, 12)
        watch.fail(EtcdUnavailable("etcd went away"))
        self.clock.advance(0.375)            # 0.5 s * (1/2 + 1/2 * 0.5)
        start, watch = self.watch()
        self.assertEqual(start, 13)
        watch.give(WatchResult(40, progress=True))
        self.assertEqual(self.catalog.position, 40)
        watch.fail(EtcdUnavailable("etcd went away"))
        self.clock.advance(0.375)
        self.assertEqual(self.watch()[0], 41)
        self.assertEqual(self.catalog.relists, 1)

    def test_compacted_relists_in_one_step(self):
        """A compaction relists: the new mirror replaces the old in one change."""
        start, watch = self.watch()
        self.client.listings.append(RangeResult(50, (
            kv("a/instance/x", flux("10.0.0.1", 1), 4),
            kv("a/instance/z", flux("10.0.0.3", 3), 45))))
        watch.fail(Compacted("compacted", compact_revision=44))
        self.assertEqual(self.catalog.relists, 2)
        self.assertEqual(self.watch()[0], 51)
        self.assertEqual(self.seen[1:], [[("a", "10.0.0.1:1", ("flux",)),
                                          ("a", "10.0.0.3:3", ("flux",))]])
        self.assertEqual(self.clock.getDelayedCalls(), [])   # at once, no backoff

    def test_same_relist_is_quiet(self):
        """A relist that finds what the mirror holds changes nothing."""
        generation = self.catalog.generation("default")
        self.client.listings.append(RangeResult(50, (kv("a/instance/x",
                                                        flux("10.0.0.1", 1), 4),)))
        self.watch()[1].fail(Compacted("compacted"))
        self.assertEqual(self.catalog.generation("default"), generation)
        self.assertEqual(len(self.seen), 1)

    def test_unchanged_is_quiet(self):
        """
        A value written again as it was, or a key Flux's layout does not have, changes
        nothing: no new generation, the same instance (its last_heartbeat kept).
        """
        [before] = self.catalog.instances("default")
        generation = self.catalog.generation("default")
        self.clock.advance(60)
        self.watch()[1].give(WatchResult(20, (
            put("a/instance/x", flux("10.0.0.1", 1), 14),
            put("a/groupspec/v1", "{}", 15), put("a/other", "{}", 16))))
        self.assertEqual(self.catalog.generation("default"), generation)
        self.assertIs(self.catalog.instances("default")[0], before)
        self.assertEqual(self.catalog.position, 16)

    def test_backoff_grows_and_stop_cancels(self):
        """Failures back off 0.375 s, 0.75 s, ...; stopping cancels every timer."""
        self.catalog.backoff.random = lambda: 0.5
        self.watch()[1].fail(EtcdUnavailable("down"))
        self.assertEqual([round(c.getTime() - self.clock.seconds(), 3)
                          for c in self.clock.getDelayedCalls()], [0.375])
        self.catalog.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_the_watch(self):
        """Stopping cancels the watch and leaves no timer."""
        watch = self.watch()[1]
        self.catalog.stopService()
        self.assertTrue(watch.canceled)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SettingsTests(SynchronousTestCase):
    def values(self, **given):
        values = {s.name: s.default for s in ADAPTER_SETTINGS}
        values["fs-poll"] = 1.0
        values["etcd-url"] = ("http://127.0.0.1:2379", "http://127.0.0.2:2379")
        values.update({k.replace("_", "-"): v for k, v in given.items()})
        return values

    def test_v3_default(self):
        """The defaults: the v3 client of every URL, Flux's prefix, the default tenant."""
        catalog = from_settings(self.values(), Clock())
        self.assertIsInstance(catalog.client, EtcdV3)
        self.assertEqual((catalog.api, catalog.prefix, catalog.serves, catalog.client.urls),
                         ("v3", "/weave/service/", "default",
                          ("http://127.0.0.1:2379", "http://127.0.0.2:2379")))
        self.assertEqual(catalog.kind, "etcd")
        self.assertTrue(verifyObject(ICatalog, catalog))

    def test_v2(self):
        """etcd-api v2, a prefix without its /, another tenant."""
        catalog = from_settings(self.values(etcd_api="v2", etcd_prefix=" /flux ",
                                            etcd_serves="shop"), Clock())
        self.assertIsInstance(catalog.client, EtcdV2)
        self.assertEqual((catalog.prefix, catalog.serves), ("/flux/", "shop"))

    def test_bad_prefix(self):
        """A prefix that is not a key path is a SettingError naming the setting."""
        for prefix in ("weave/service/", "", "/a//b"):
            with self.assertRaises(SettingError) as caught:
                from_settings(self.values(etcd_prefix=prefix), Clock())
            self.assertIn("etcd-prefix", str(caught.exception))

    def test_build_catalogs(self):
        """The registry's build_catalogs makes this catalog from etcd-url."""
        [catalog] = build_catalogs(self.values(), Clock())
        self.assertIsInstance(catalog, EtcdCatalog)


class BenchTests(SynchronousTestCase):
    """bench/catalog_etcd.py runs (a real etcd and a real registry on loopback)."""

    if SKIP:
        skip = SKIP

    def test_measure(self):
        """measure() gives a row per metric, each with positive times."""
        from bench.catalog_etcd import HEADER, measure
        rows = measure(changes=5, logdir=os.path.abspath(self.mktemp()))
        self.assertEqual([len(row) for row in rows], [len(HEADER)] * len(rows))
        for row in rows:
            self.assertTrue(row[1].endswith(" ms") and float(row[1].split()[0]) > 0, row)
