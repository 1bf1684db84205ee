"""
Tests for L{amalgam8.adapters.files}: the ICatalog contract over real files (polled on a
L{Clock}, and watched with inotify on the real reactor), malformed files (each reported once
with its path and line, the previous content kept), removed and restored files, YAML,
C{from_settings}, and the registry API over L{CatalogMerge} over a file catalog.
"""

import argparse
import builtins
import importlib.machinery
import importlib.util
import json
import os
import sys
import types

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.python.runtime import platform
from twisted.trial.unittest import SynchronousTestCase, TestCase

from amalgam8.adapters.config import ADAPTER_SETTINGS
from amalgam8.adapters import files
from amalgam8.adapters.files import CatalogFileError, FileCatalog, from_settings, parse_catalog
from amalgam8.adapters.merge import CatalogMerge
from amalgam8.registry.api import RegistryAPI
from amalgam8.settings import SettingError
from amalgam8.testing.catalogs import catalog_tests
from tests.test_registry_api import RegistryTestCase
from tests import test_registry_process as process

POLL = 1.0


def entry(service, value, tags=(), **extra):
    body = {"service_name": service, "endpoint": {"type": "http", "value": value},
            "tags": list(tags)}
    body.update(extra)
    return body


def write(path, content, atomic=True):
    """Write a catalog file by rename (atomic) or in place; C{content}: str or a value."""
    if not isinstance(content, (str, bytes)):
        content = json.dumps({"instances": content}, indent=1)
    data = content.encode("utf-8") if isinstance(content, str) else content
    if atomic:
        temporary = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        with open(temporary, "wb") as f:
            f.write(data)
        os.rename(temporary, path)
    else:
        with open(path, "r+b" if os.path.exists(path) else "wb") as f:
            f.truncate(0)
            f.write(data)


async def eventually(condition):
    """Wait on the real reactor until C{condition()} holds; fail after 5 s."""
    for _ in range(500):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the file catalog did not follow its file within 5 s")


class _FileFixture:
    """The ICatalog contract's fixture: C{add}/C{remove} rewrite C{default.json}."""

    namespace = "default"
    added_tags = ()
    atomic = True

    def __init__(self, case):
        self.directory = case.mktemp()
        os.mkdir(self.directory)
        self.path = os.path.join(self.directory, "default.json")
        self.entries = {}
        self.catalog = self.make_catalog()

    async def start(self):
        self.catalog.startService()

    async def stop(self):
        self.catalog.stopService()

    def _write(self):
        write(self.path, list(self.entries.values()), atomic=self.atomic)

    async def add(self, service, host, port, tags=()):
        value = "{}:{}".format(host, port)
        self.entries[(service, value)] = entry(service, value, tags)
        self._write()

    async def remove(self, service, host, port):
        del self.entries[(service, "{}:{}".format(host, port))]
        self._write()


class PollFixture(_FileFixture):
    def make_catalog(self):
        self.clock = Clock()
        return FileCatalog(self.directory, self.clock, poll_interval=POLL, use_inotify=False)

    async def eventually(self, condition):
        for _ in range(3):
            if condition():
                return
            self.clock.advance(POLL)
        raise AssertionError("the file catalog did not follow its file within 3 polls")


class InPlacePollFixture(PollFixture):
    atomic = False


class INotifyFixture(_FileFixture):
    def make_catalog(self):
        return FileCatalog(self.directory, reactor, use_inotify=True)

    async def eventually(self, condition):
        await eventually(condition)


class InPlaceINotifyFixture(INotifyFixture):
    atomic = False


class PollContractTests(catalog_tests(PollFixture)):
    """The contract, polled on a Clock, files replaced by rename."""


class InPlacePollContractTests(catalog_tests(InPlacePollFixture)):
    """The contract, polled on a Clock, files rewritten in place."""


class INotifyContractTests(catalog_tests(INotifyFixture)):
    """The contract with inotify on the real reactor, files replaced by rename."""

    if not platform.supportsINotify():
        skip = "inotify is not available on this platform"


class InPlaceINotifyContractTests(catalog_tests(InPlaceINotifyFixture)):
    """The contract with inotify on the real reactor, files rewritten in place."""

    if not platform.supportsINotify():
        skip = "inotify is not available on this platform"


class ParseTests(SynchronousTestCase):
    """L{parse_catalog}: the formats, and each malformed case with its line and message."""

    def assertProblem(self, data, kind, line, message):
        with self.assertRaises(CatalogFileError) as caught:
            parse_catalog(data.encode("utf-8") if isinstance(data, str) else data, kind)
        self.assertEqual(caught.exception.line, line)
        self.assertIn(message, caught.exception.problem)

    def test_formats(self):
        """The wrapped and the bare list, in JSON and YAML, give the same instances."""
        wrapped = json.dumps({"instances": [entry("reviews", "10.0.0.1:80", ["v1"])]})
        bare = json.dumps([entry("reviews", "10.0.0.1:80", ["v1"])])
        yaml_text = ("instances:\n- service_name: reviews\n  endpoint: {type: http, "
                     "value: '10.0.0.1:80'}\n  tags: [v1]\n")
        results = [parse_catalog(wrapped.encode(), "json"), parse_catalog(bare.encode(), "json"),
                   parse_catalog(yaml_text.encode(), "yaml")]
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], results[2])
        [instance] = results[0]
        self.assertEqual((instance.service_name, instance.tags, instance.status),
                         ("reviews", ("v1",), "UP"))

    def test_defaults_and_listing_fields(self):
        """The endpoint type defaults to http; a listing's id, ttl, last_heartbeat are ignored."""
        [instance] = parse_catalog(json.dumps([{
            "service_name": "a", "endpoint": {"value": "h:1"}, "id": "x", "ttl": 30,
            "last_heartbeat": "2020-01-01T00:00:00Z", "status": "STARTING",
            "metadata": {"k": "v"}}]).encode(), "json", seen_at=7)
        self.assertEqual(instance.as_dict()["endpoint"], {"type": "http", "value": "h:1"})
        self.assertEqual((instance.status, instance.last_heartbeat), ("STARTING", 7.0))
        self.assertEqual(instance.as_dict()["metadata"], {"k": "v"})

    def test_known_entries_kept(self):
        """With the previous version's entries, an unchanged entry keeps its instance."""
        known = {}
        first = parse_catalog(json.dumps([entry("a", "h:1"), entry("a", "h:2")]).encode(),
                              "json", seen_at=1, known=known)
        second = parse_catalog(json.dumps([entry("a", "h:1"), entry("a", "h:3")]).encode(),
                               "json", seen_at=2, known=known)
        self.assertIs(second[0], first[0])
        self.assertEqual([i.last_heartbeat for i in second], [1.0, 2.0])
        self.assertEqual(len(known), 2)
        with self.assertRaises(CatalogFileError):
            parse_catalog(b"[1]", "json", known=known)
        self.assertEqual(len(known), 2)

    def test_yaml_odd_keys(self):
        """YAML keys that are not strings are refused as unknown fields, not a crash."""
        self.assertProblem("- {1: x, service_name: a, endpoint: {value: 'h:1'}}\n", "yaml", 1,
                           "instance 0: unknown field 1")

    def test_repeats(self):
        """Two entries with the same id: the first is kept."""
        instances = parse_catalog(json.dumps([
            entry("a", "h:1", ["v1"]), entry("a", "h:1", ["v2"])]).encode(), "json")
        self.assertEqual([i.tags for i in instances], [("v1",)])

    def test_bad_json(self):
        self.assertProblem('{"instances": [\n  {"service_name": "a",,}\n]}', "json", 2,
                           "not valid JSON")

    def test_bad_yaml(self):
        self.assertProblem("instances:\n- service_name: a\n  endpoint: [\n", "yaml", 4,
                           "not valid YAML")

    def test_not_utf8(self):
        self.assertProblem(b'[\n"\xff"]', "json", 2, "not UTF-8")

    def test_empty(self):
        self.assertProblem("  \n", "json", None, "empty")
        self.assertProblem("", "yaml", None, "empty")

    def test_wrong_shape(self):
        self.assertProblem('{"instance": []}', "json", 1, "unknown top-level key instance")
        self.assertProblem('"text"', "json", 1, "expected")
        self.assertProblem('{"instances": {}}', "json", 1, "expected")

    def test_bad_entries_json(self):
        """A bad entry names its index, its line and its field."""
        good = entry("a", "h:1")
        for bad, message in (
                (entry("a/b", "h:1"), "instance 2: service_name must not contain"),
                (entry("a", "h:1", endpoint={"type": "ftp", "value": "h:1"}),
                 "instance 2: endpoint.type must be one of"),
                (dict(good, endpoint="h:1"), "instance 2: endpoint must be an object"),
                (dict(good, tags="v1"), "instance 2: tags must be a list"),
                (dict(good, colour="red"), "instance 2: unknown field colour"),
                ("reviews", "instance 2: must be an object"),
                (entry("a", "h:1", status="DOWN"), "instance 2: status")):
            text = '{"instances": [\n' + ",\n".join(
                json.dumps(e) for e in (good, entry("b", "h:2"), bad)) + "\n]}"
            self.assertProblem(text, "json", 4, message)

    def test_bad_entry_pretty_json(self):
        """The line is the entry's first line, in an indented file too."""
        text = json.dumps({"instances": [entry("a", "h:1"), entry("a", "h:2", ["", "x"])]},
                          indent=2)
        self.assertProblem(text, "json", text.splitlines().index("    {", 3) + 1,
                           "instance 1: each tag")

    def test_bad_entry_yaml(self):
        text = ("instances:\n- service_name: a\n  endpoint: {value: 'h:1'}\n"
                "- service_name: b\n  endpoint: {value: 'h:2', type: smtp}\n")
        self.assertProblem(text, "yaml", 4, "instance 1: endpoint.type")


class CatalogTests(SynchronousTestCase):
    """A polled file catalog on a Clock: reloads, malformed files, removal, namespaces."""

    def setUp(self):
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.clock = Clock()
        self.catalog = FileCatalog(self.directory, self.clock, poll_interval=POLL,
                                   use_inotify=False)
        self.changes = []
        self.catalog.subscribe(self.changes.append)

    def path(self, name="default.json"):
        return os.path.join(self.directory, name)

    def start(self):
        self.catalog.startService()
        self.addCleanup(self.catalog.stopService)

    def listed(self, namespace="default"):
        return [i.registration.endpoint_value for i in self.catalog.instances(namespace)]

    def poll(self):
        """One poll, returning the warnings logged."""
        with capturedLogs() as events:
            self.clock.advance(POLL)
        return [e for e in events if e["log_level"] == LogLevel.warn]

    def test_loaded_at_start(self):
        write(self.path("default.json"), [entry("a", "h:1")])
        write(self.path("tenant-b.yaml"), "- service_name: b\n  endpoint: {value: 'h:2'}\n")
        write(self.path("tenant-c.yml"), "[]\n")
        self.start()
        self.assertEqual(self.listed(), ["h:1"])
        self.assertEqual(self.listed("tenant-b"), ["h:2"])
        self.assertEqual(self.catalog.namespaces(), ["default", "tenant-b"])
        self.assertEqual(self.catalog.generation("tenant-c"), 0)

    def test_other_files_ignored(self):
        """Hidden files, other suffixes and subdirectories are not catalog files."""
        for name in (".default.json", "default.json~", "notes.txt", "default.json.tmp"):
            write(self.path(name), [entry("a", "h:9")])
        os.mkdir(self.path("sub"))
        self.start()
        self.assertEqual(self.catalog.namespaces(), [])

    def test_unchanged_not_reread(self):
        """A scan reads only files whose stat changed; a touch without change moves nothing."""
        write(self.path(), [entry("a", "h:1")])
        self.start()
        generation = self.catalog.generation("default")
        reads = []
        real_open = open

        def counting_open(path, *args, **kwargs):
            reads.append(path)
            return real_open(path, *args, **kwargs)
        self.patch(builtins, "open", counting_open)
        self.poll()
        self.assertEqual(reads, [])
        os.utime(self.path(), (1, 1))
        self.poll()
        self.assertEqual(reads, [self.path()])
        self.assertEqual(self.catalog.generation("default"), generation)

    def test_malformed_reported_once_previous_kept(self):
        """
        A malformed file is reported once (path, line, problem), the namespace keeps its
        instances, and the file made valid again is loaded.
        """
        write(self.path(), [entry("a", "h:1")])
        self.start()
        generation = self.catalog.generation("default")
        write(self.path(), '{"instances": [\n  {"service_name": "a",\n')
        [warning] = self.poll()
        self.assertIn(self.path(), warning["log_format"].format(**warning))
        self.assertEqual(warning["path"], self.path())
        self.assertEqual(warning["line"], 3)
        self.assertIn("not valid JSON", warning["problem"])
        self.assertEqual(self.listed(), ["h:1"])
        self.assertEqual(self.catalog.generation("default"), generation)
        self.assertEqual(self.poll(), [])
        # Rewritten with the same mistake: still reported once.
        write(self.path(), '{"instances": [\n  {"service_name": "a",\n')
        self.assertEqual(self.poll(), [])
        # Another mistake is reported.
        write(self.path(), json.dumps([entry("a", "h:1"), entry("a", "h:2", [""])]))
        [warning] = self.poll()
        self.assertIn("instance 1: each tag", warning["problem"])
        self.assertEqual(self.listed(), ["h:1"])
        write(self.path(), [entry("a", "h:2")])
        self.assertEqual(self.poll(), [])
        self.assertEqual(self.listed(), ["h:2"])
        self.assertGreater(self.catalog.generation("default"), generation)

    def test_back_to_previous_content(self):
        """A malformed file put back as it was: nothing moves, and a new mistake is told."""
        write(self.path(), [entry("a", "h:1")])
        self.start()
        generation = self.catalog.generation("default")
        write(self.path(), "[")
        self.assertEqual(len(self.poll()), 1)
        write(self.path(), [entry("a", "h:1")])
        self.assertEqual(self.poll(), [])
        self.assertEqual(self.catalog.generation("default"), generation)
        write(self.path(), "[")
        self.assertEqual(len(self.poll()), 1)

    def test_malformed_at_start(self):
        write(self.path(), "instances: [")
        os.rename(self.path(), self.path("default.yaml"))
        with capturedLogs() as events:
            self.start()
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(warning["path"], self.path("default.yaml"))
        self.assertEqual(self.catalog.namespaces(), [])

    def test_removed_and_restored(self):
        write(self.path(), [entry("a", "h:1")])
        self.start()
        os.remove(self.path())
        self.poll()
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.catalog.namespaces(), [])
        self.assertEqual(self.changes, ["default", "default"])
        write(self.path(), [entry("a", "h:3")])
        self.poll()
        self.assertEqual(self.listed(), ["h:3"])

    def test_removed_while_malformed(self):
        """A malformed file removed empties its namespace too."""
        write(self.path(), [entry("a", "h:1")])
        self.start()
        write(self.path(), "[")
        self.poll()
        os.remove(self.path())
        self.poll()
        self.assertEqual(self.listed(), [])

    def test_two_files_one_namespace(self):
        """default.json and default.yaml both list into default (the first file wins a tie)."""
        write(self.path(), [entry("a", "h:1", ["json"])])
        write(self.path("default.yaml"),
              "- {service_name: a, endpoint: {value: 'h:1'}, tags: [yaml]}\n"
              "- {service_name: a, endpoint: {value: 'h:2'}}\n")
        self.start()
        self.assertEqual([(i.registration.endpoint_value, i.tags)
                          for i in self.catalog.instances("default")],
                         [("h:1", ("json",)), ("h:2", ())])

    def test_unreadable(self):
        write(self.path(), [entry("a", "h:1")])
        self.start()
        if os.getuid() == 0:
            # root reads any file: make it a directory-like failure instead.
            os.remove(self.path())
            os.mkdir(self.path())
            self.addCleanup(os.rmdir, self.path())
        else:
            os.chmod(self.path(), 0)
            self.addCleanup(os.chmod, self.path(), 0o644)
            os.utime(self.path(), (2, 2))
        warnings = self.poll()
        self.assertEqual(len(warnings), 1)
        self.assertIn("cannot read it", warnings[0]["problem"])
        self.assertEqual(self.listed(), ["h:1"])
        self.assertEqual(self.poll(), [])

    def test_not_regular_or_too_large(self):
        """A FIFO is not opened (it would block); a file beyond the size limit is refused."""
        os.mkfifo(self.path("fifo.json"))
        write(self.path(), [entry("a", "h:1")])
        self.patch(files, "MAX_FILE_BYTES", 200)
        with capturedLogs() as events:
            self.start()
        self.assertEqual(sorted(e["problem"] for e in events if e.get("problem")), [
            "cannot read it (not a regular file)"])
        write(self.path(), [entry("a", "h:{}".format(i)) for i in range(10)])
        [warning] = self.poll()
        self.assertEqual(warning["problem"], "cannot read it (larger than 200 bytes)")
        self.assertEqual(self.listed(), ["h:1"])

    def test_directory_gone(self):
        """The directory gone: reported once, the catalog keeps its instances."""
        write(self.path(), [entry("a", "h:1")])
        self.start()
        moved = self.directory + ".moved"
        os.rename(self.directory, moved)
        self.addCleanup(os.rename, moved, self.directory)
        self.assertEqual(len(self.poll()), 1)
        self.assertEqual(self.poll(), [])
        self.assertEqual(self.listed(), ["h:1"])

    def test_stop(self):
        self.start()
        self.catalog.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FromSettingsTests(SynchronousTestCase):
    def values(self, **changes):
        values = {s.name: s.default for s in ADAPTER_SETTINGS}
        values["fs-poll"] = 1.0
        values.update(changes)
        return values

    def test_catalog(self):
        directory = self.mktemp()
        os.mkdir(directory)
        catalog = from_settings(self.values(**{"fs-catalog": directory, "fs-poll": 2.5}),
                                Clock())
        self.assertEqual((catalog.directory, catalog.poll_interval), (directory, 2.5))
        self.assertEqual(catalog.kind, "file")

    def test_missing(self):
        with self.assertRaises(SettingError) as caught:
            from_settings(self.values(**{"fs-catalog": "/nonexistent/catalog"}), Clock())
        self.assertEqual(str(caught.exception),
                         "fs-catalog: /nonexistent/catalog is not a directory")

    def test_a_file(self):
        path = self.mktemp()
        write(path, "[]")
        with self.assertRaises(SettingError) as caught:
            from_settings(self.values(**{"fs-catalog": path}), Clock())
        self.assertIn("is not a directory", str(caught.exception))

    def test_unreadable(self):
        directory = self.mktemp()
        os.mkdir(directory)
        self.patch(os, "listdir", lambda path: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied")))
        with self.assertRaises(SettingError) as caught:
            from_settings(self.values(**{"fs-catalog": directory}), Clock())
        self.assertEqual(str(caught.exception),
                         "fs-catalog: cannot read {}: Permission denied".format(directory))

    def test_poll_zero(self):
        directory = self.mktemp()
        os.mkdir(directory)
        with self.assertRaises(SettingError) as caught:
            from_settings(self.values(**{"fs-catalog": directory, "fs-poll": 0}), Clock())
        self.assertIn("fs-poll: must be above 0", str(caught.exception))


class RegistryOverFileCatalogTests(RegistryTestCase):
    """The registry API over CatalogMerge over a polled file catalog."""

    def setUp(self):
        RegistryTestCase.setUp(self)
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.path = os.path.join(self.directory, "default.json")
        write(self.path, [entry("reviews", "10.1.0.1:9080", ["v1"])])
        self.catalog = FileCatalog(self.directory, self.clock, poll_interval=POLL,
                                   use_inotify=False)
        self.merge = CatalogMerge(self.store, [self.catalog])
        self.merge.startService()
        self.addCleanup(self.merge.stopService)
        self.api = RegistryAPI(self.merge, self.auth, self.clock, ttl=self.ttl_policy)
        self.http.__init__(self.api.resource())

    def test_listed(self):
        answer = self.request("GET", "/api/v1/instances")
        self.assertEqual(answer.code, 200)
        [listed] = answer.json()["instances"]
        self.assertEqual((listed["service_name"], listed["endpoint"]["value"], listed["tags"]),
                         ("reviews", "10.1.0.1:9080", ["v1"]))
        answer = self.request("GET", "/api/v1/services/reviews")
        self.assertEqual(len(answer.json()["instances"]), 1)
        answer = self.request("DELETE", "/api/v1/instances/" + listed["id"])
        self.assertEqual(answer.code, 403)

    def test_blocking_read_wakes(self):
        """A blocking read wakes when the file changes, with the new listing and index."""
        index = int(self.request("GET", "/api/v1/instances").header(b"A8-Index"))
        d = self.start("GET", "/api/v1/instances?wait=30s&index={}".format(index))
        self.http.flush()
        self.assertNoResult(d)
        write(self.path, [entry("reviews", "10.1.0.1:9080", ["v1"]),
                          entry("reviews", "10.1.0.2:9080", ["v2"])])
        self.clock.advance(POLL)
        self.http.flush()
        answer = self.successResultOf(d)
        self.assertEqual(len(answer.json()["instances"]), 2)
        self.assertGreater(int(answer.header(b"A8-Index")), index)

    def test_service_listings_follow(self):
        """Listings of one service and the service names follow the file's changes."""
        def listed(service):
            answer = self.request("GET", "/api/v1/services/" + service)
            return sorted(i["endpoint"]["value"] for i in answer.json()["instances"])

        self.assertEqual(listed("reviews"), ["10.1.0.1:9080"])
        write(self.path, [entry("reviews", "10.1.0.2:9080"), entry("ratings", "10.1.0.3:80")])
        self.clock.advance(POLL)
        self.assertEqual(listed("reviews"), ["10.1.0.2:9080"])
        self.assertEqual(listed("ratings"), ["10.1.0.3:80"])
        self.assertEqual(self.request("GET", "/api/v1/services").json()["services"],
                         ["ratings", "reviews"])
        os.remove(self.path)
        self.clock.advance(POLL)
        self.assertEqual(self.request("GET", "/api/v1/services/reviews").code, 404)
        self.assertEqual(self.request("GET", "/api/v1/services").json()["services"], [])

    def test_malformed_changes_nothing(self):
        index = self.request("GET", "/api/v1/instances").header(b"A8-Index")
        write(self.path, "{")
        self.clock.advance(POLL)
        answer = self.request("GET", "/api/v1/instances")
        self.assertEqual(answer.header(b"A8-Index"), index)
        self.assertEqual(len(answer.json()["instances"]), 1)


class FileCatalogProcessTests(TestCase):
    """The real C{twistd -n a8registry --fs-catalog DIR} over HTTP on 127.0.0.1 (inotify)."""

    timeout = 30
    spawn = process.RegistryProcessTests.spawn
    _stop = process.RegistryProcessTests._stop
    start = process.RegistryProcessTests.start
    client = process.RegistryProcessTests.client
    call = process.RegistryProcessTests.call
    listing = process.RegistryProcessTests.listing
    assertNoTraceback = process.RegistryProcessTests.assertNoTraceback

    async def test_listing_follows_the_file(self):
        """
        The file's instances list; a blocking read wakes when the file is replaced; a
        malformed file is logged once with its path and line and changes nothing.
        """
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "default.json")
        write(path, [entry("reviews", "127.0.0.1:9080", ["v1"])])
        protocol, port = await self.start("--fs-catalog", directory)
        http = self.client()
        base = "http://127.0.0.1:{}".format(port)
        index, instances = await self.listing(http, base)
        self.assertEqual([i["endpoint"]["value"] for i in instances], ["127.0.0.1:9080"])
        waiting = self.listing(http, base, "?wait=10s&index={}".format(index), timeout=15)
        waiting = ensureDeferred(waiting)
        await deferLater(reactor, 0.05, lambda: None)
        write(path, [entry("reviews", "127.0.0.1:9080", ["v1"]),
                     entry("reviews", "127.0.0.1:9081", ["v2"])])
        woken, instances = await waiting
        self.assertGreater(woken, index)
        self.assertEqual(len(instances), 2)

        write(path, '{"instances": [\n  {"service_name": "reviews",,\n')
        for _ in range(300):
            warnings = [e for e in protocol.events if e.get("path") == path]
            if warnings:
                break
            await deferLater(reactor, 0.01, lambda: None)
        [warning] = warnings
        self.assertEqual(warning["line"], 2)
        self.assertEqual(warning["level"], "warn")
        self.assertIn(path + " line 2: not valid JSON", warning["message"])
        self.assertEqual((await self.listing(http, base))[0], woken)
        self.assertNoTraceback(protocol)

    async def test_missing_directory_exits_2(self):
        """A missing catalog directory stops the registry at start with one line."""
        missing = os.path.abspath(self.mktemp())
        protocol = self.spawn("--listen", process.LOCAL, "--fs-catalog", missing)
        self.assertEqual(await protocol.ended(), (2, None))
        self.assertEqual(protocol.stderr, [
            "a8registry: fs-catalog: {} is not a directory".format(missing)],
            protocol.stderr)
        self.assertNoTraceback(protocol)


class INotifyTests(TestCase):
    """The inotify path on the real reactor: bursts, and the directory moved away and back."""

    if not platform.supportsINotify():
        skip = "inotify is not available on this platform"

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        self.path = os.path.join(self.directory, "default.json")
        self.catalog = FileCatalog(self.directory, reactor, poll_interval=0.02,
                                   use_inotify=True)
        self.catalog.startService()
        self.addCleanup(self.catalog.stopService)

    def listed(self):
        return [i.registration.endpoint_value for i in self.catalog.instances("default")]

    async def test_burst_one_scan(self):
        """Many events at once cost one scan."""
        scans = []
        real_scan = self.catalog.scan
        self.patch(self.catalog, "scan", lambda: (scans.append(1), real_scan()))
        for port in range(5):
            write(os.path.join(self.directory, "t{}.json".format(port)),
                  [entry("a", "h:{}".format(port))])
        await eventually(lambda: len(self.catalog.namespaces()) == 5)
        self.assertEqual(len(scans), 1)

    async def test_directory_moved_away_and_back(self):
        """
        The directory moved away: the catalog keeps its instances and polls; moved back,
        it is watched again and follows its files.
        """
        write(self.path, [entry("a", "h:1")])
        await eventually(lambda: self.listed() == ["h:1"])
        moved = self.directory + ".moved"
        with capturedLogs() as events:
            os.rename(self.directory, moved)
            await eventually(lambda: self.catalog._poll is not None)
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.warn]), 1)
        self.assertEqual(self.listed(), ["h:1"])
        os.rename(moved, self.directory)
        await eventually(lambda: self.catalog._poll is None)
        write(self.path, [entry("a", "h:2")])
        await eventually(lambda: self.listed() == ["h:2"])

    async def test_directory_removed_and_recreated(self):
        """
        Removed with its files, the directory cannot be listed: the instances stay; created
        again (empty), it is watched again and lists what it holds.
        """
        write(self.path, [entry("a", "h:1")])
        await eventually(lambda: self.listed() == ["h:1"])
        os.remove(self.path)
        os.rmdir(self.directory)
        await eventually(lambda: self.catalog._poll is not None)
        os.mkdir(self.directory)
        await eventually(lambda: self.catalog._poll is None)
        await eventually(lambda: self.listed() == [])
        write(self.path, [entry("a", "h:3")])
        await eventually(lambda: self.listed() == ["h:3"])


def load_bench_registry():
    """bench/registry (a script without a .py suffix) as a module."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "bench", "registry")
    loader = importlib.machinery.SourceFileLoader("bench_registry", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name,
                                                                             loader))
    loader.exec_module(module)
    return module


class BenchCatalogRowsTests(SynchronousTestCase):
    """bench/registry's catalog table: the other adapters' rows, when their modules exist."""

    def setUp(self):
        self.bench = load_bench_registry()
        self.options = argparse.Namespace(changes=7)
        self.patch(self.bench.bl, "log", lambda message: None)

    def fake_module(self, measure):
        """bench/fake_catalog.py with this C{measure}, the only catalog module."""
        fake = types.ModuleType("bench.fake_catalog")
        fake.measure = measure
        sys.modules["bench.fake_catalog"] = fake
        self.addCleanup(sys.modules.pop, "bench.fake_catalog")
        self.patch(self.bench, "CATALOG_MODULES", ("fake_catalog",))

    def test_modules_absent(self):
        self.patch(self.bench, "CATALOG_MODULES", ("no_such_catalog_bench",))
        self.assertEqual(self.bench.other_catalogs(self.options, []), [])

    def test_module_rows(self):
        """
        A module's measure(changes=N) rows, (metric, "p50 ms", "p99 ms", changes) as
        bench/catalog_kubernetes.py and bench/catalog_etcd.py return them, join the table
        in the file rows' shape: p50 / p99 in the first column, the count in the note.
        """
        calls = []

        def measure(changes=1000):
            calls.append(changes)
            return [("k8s change -> woken blocking read", "1.00 ms", "2.00 ms", "7")]
        self.fake_module(measure)
        rows = self.bench.other_catalogs(self.options, [])
        self.assertEqual(calls, [7])
        table = self.bench.catalog_rows(([], [(1, [0.001, 0.002])], rows))
        self.assertEqual(table[-1], ("k8s change -> woken blocking read, ms", "1.00 / 2.00",
                                     "", "", "", "p50 / p99 over 7 changes"))
        self.assertEqual(table[1][0], "file change -> woken read, 1-instance file, ms")

    def test_real_modules_shape(self):
        """The real catalog benches declare the row shape catalog_rows reads."""
        from bench import catalog_etcd, catalog_kubernetes
        self.assertEqual(catalog_kubernetes.HEADER, ("metric", "p50", "p99", "changes"))
        self.assertEqual(catalog_etcd.HEADER, ("metric", "p50", "p99", "changes"))

    def test_module_fails(self):
        """A module's BenchError is an error of the run, not the end of it."""
        def measure(changes=1000):
            raise self.bench.BenchError("etcd did not start")
        self.fake_module(measure)
        errors = []
        self.assertEqual(self.bench.other_catalogs(self.options, errors), [])
        self.assertEqual(errors, ["bench/fake_catalog.py: etcd did not start"])
