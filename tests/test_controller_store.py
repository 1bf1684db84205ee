"""
Tests for the controller's rule stores: the IRuleStore contract on both, and the file
store's durability and refusal to start on a bad file.
"""

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from amalgam8.controller.store import FileStore, MemoryStore
from amalgam8.errors import StoreCorrupt, StoreUnavailable
from amalgam8.testing.controller import route_rule, rule_store_tests
from amalgam8.testing.late import LateStore


class MemoryStoreTests(rule_store_tests(lambda case: MemoryStore(),
                                        lambda case, store: store)):
    """The memory store keeps the IRuleStore contract."""


class LateMemoryStoreTests(rule_store_tests(lambda case: LateStore(MemoryStore(), case.later),
                                            lambda case, store: store)):
    """The contract holds when every answer of the store comes later."""

    def test_answers_later(self):
        """The wrapped store's answers are held until the flush."""
        d = self.store.get("default")
        self.assertFalse(d.called)
        self.assertEqual(self.successResultOf(d).revision, 0)


class LateFileStoreTests(rule_store_tests(
        lambda case: LateStore(_file_store(case), case.later),
        lambda case, store: LateStore(FileStore(case.path), case.later))):
    """The file store keeps the contract when its answers come later."""


def _file_store(case):
    case.path = os.path.join(case.mktemp(), "rules.json")
    os.makedirs(os.path.dirname(case.path))
    return FileStore(case.path)


class FileStoreTests(rule_store_tests(_file_store, lambda case, store: FileStore(case.path))):
    """The file store keeps the IRuleStore contract, restarts included."""

    def test_atomic_write(self):
        """After a put the file holds the new rules and no temporary file is left."""
        self.put([route_rule("a")])
        directory = os.path.dirname(self.path)
        self.assertEqual(os.listdir(directory), ["rules.json"])
        with open(self.path) as f:
            data = json.load(f)
        self.assertEqual(data["namespaces"]["default"]["revision"], 1)

    def test_write_failure_changes_nothing(self):
        """A put that cannot be written fails with StoreUnavailable and changes nothing."""
        self.put([route_rule("a")])
        os.chmod(os.path.dirname(self.path), 0o500)
        self.addCleanup(os.chmod, os.path.dirname(self.path), 0o700)
        if os.access(os.path.dirname(self.path), os.W_OK):
            # root ignores directory modes: take the directory away instead.
            os.rename(os.path.dirname(self.path), os.path.dirname(self.path) + ".gone")
            self.addCleanup(os.rename, os.path.dirname(self.path) + ".gone",
                            os.path.dirname(self.path))
        self.failureResultOf(self.store.put("default", 1, [route_rule("b")]),
                             StoreUnavailable)
        self.assertEqual([r["id"] for r in self.get().rules], ["a"])


class FileStoreStartTests(SynchronousTestCase):
    """A rule file that cannot be used stops the start with a clear message."""

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "rules.json")

    def write(self, data):
        with open(self.path, "wb") as f:
            f.write(data)

    def refuses(self, data, words):
        self.write(data)
        error = self.assertRaises(StoreCorrupt, FileStore, self.path)
        self.assertIn(words, str(error))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), data, "the bad file was changed")

    def test_missing_file_is_empty(self):
        """A missing file is an empty store, created at the first change."""
        store = FileStore(self.path)
        self.assertEqual(store.namespaces(), [])
        self.assertFalse(os.path.exists(self.path))

    def test_leftover_temporary_files_removed(self):
        """The temporary files of writes cut short by a crash are removed at the start;
        the rule file and other files stay."""
        self.write(json.dumps({"format": "amalgam8-rules/1", "namespaces": {}}).encode())
        for name in (".rules-abc123", ".rules-x"):
            with open(os.path.join(self.directory, name), "w") as f:
                f.write("{half a wri")
        os.makedirs(os.path.join(self.directory, ".rules-dir"))
        with open(os.path.join(self.directory, "notes.txt"), "w") as f:
            f.write("mine")
        store = FileStore(self.path)
        self.assertEqual(store.namespaces(), [])
        self.assertEqual(sorted(os.listdir(self.directory)),
                         [".rules-dir", "notes.txt", "rules.json"])

    def test_missing_directory(self):
        """A path in a directory that does not exist is refused."""
        self.assertRaises(StoreCorrupt, FileStore, os.path.join(self.directory, "no", "r"))

    def test_not_json(self):
        """A file that is not JSON is refused."""
        self.refuses(b'{"format": "amalgam8-rules/1", "namesp', "not valid JSON")

    def test_not_utf8(self):
        """A file that is not UTF-8 is refused."""
        self.refuses(b"\xff\xfe\x00", "not valid JSON")

    def test_wrong_format(self):
        """A JSON file of another kind is refused."""
        self.refuses(b'{"hello": 1}', "not an amalgam8 rule file")

    def test_bad_namespace(self):
        """A namespace without revision or rules is refused."""
        self.refuses(b'{"format": "amalgam8-rules/1", "namespaces": {"a": {}}}',
                     "malformed")

    def test_invalid_rule(self):
        """A stored rule that fails validation is refused, naming it."""
        bad = {"format": "amalgam8-rules/1", "namespaces": {"a": {"revision": 1, "rules": [
            {"id": "x", "destination": "d", "route": {"backends": [{"tags": ["v1"],
                                                                    "weight": 2}]}}]}}}
        self.refuses(json.dumps(bad).encode(), "rule 0")

    def test_unreadable(self):
        """A path that cannot be read (a directory) is refused."""
        os.makedirs(self.path)
        self.assertRaises(StoreCorrupt, FileStore, self.path)
