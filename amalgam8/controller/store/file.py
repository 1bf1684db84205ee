# -*- test-case-name: tests.test_controller_store -*-
"""
The file store: every namespace's rules in one JSON file, the embedded default that
survives restarts.

A write goes to a temporary file beside the real one, is flushed and fsynced, then renamed
over it (and the directory fsynced), so the file is always either the old rules or the new
ones. A temporary file left by a crash in the middle of a write (C{.rules-*}) is removed at
the next start (one controller per directory owns its C{.rules-*} files). A file that cannot
be read or parsed stops the start with a clear message: rules are
never dropped silently.

The writes are synchronous: they are rare (operators change rules, sidecars read them) and
small, and doing them in the reactor thread keeps every change ordered with no extra
machinery.
"""

import json
import os
import tempfile

from twisted.logger import Logger

from amalgam8.controller.model import RuleSet, encode
from amalgam8.controller.store.memory import MemoryStore
from amalgam8.errors import StoreCorrupt
from amalgam8.rules import InvalidRule, validate_rule

__all__ = ["FileStore"]

FORMAT = "amalgam8-rules/1"
# The prefix of the temporary files of a write.
TEMPORARY = ".rules-"


class FileStore(MemoryStore):
    """
    @ivar path: the file (created at the first change when missing).
    """

    log = Logger()

    def __init__(self, path):
        MemoryStore.__init__(self)
        self.path = os.path.abspath(path)
        self._sets = self._load()

    def _load(self):
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StoreCorrupt("rule file directory {} does not exist".format(directory))
        self._remove_leftovers(directory)
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise StoreCorrupt("cannot read rule file {}: {}".format(self.path, e.strerror))
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise StoreCorrupt("rule file {} is not valid JSON ({}); fix or move it, the "
                               "controller will not start on it".format(self.path, e))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StoreCorrupt("rule file {} is not an amalgam8 rule file (format {!r})"
                               .format(self.path, FORMAT))
        namespaces = data.get("namespaces")
        if not isinstance(namespaces, dict):
            raise StoreCorrupt("rule file {} has no namespaces object".format(self.path))
        sets = {}
        for name, entry in namespaces.items():
            try:
                revision = entry["revision"]
                rules = entry["rules"]
                if not isinstance(revision, int) or not isinstance(rules, list):
                    raise TypeError()
                ids = set()
                for index, rule in enumerate(rules):
                    validate_rule(rule, index)
                    if "id" not in rule or rule["id"] in ids:
                        raise InvalidRule("rule {}: id missing or repeated".format(index))
                    ids.add(rule["id"])
            except (KeyError, TypeError):
                raise StoreCorrupt("rule file {}: namespace {!r} is malformed"
                                   .format(self.path, name))
            except InvalidRule as e:
                raise StoreCorrupt("rule file {}: namespace {!r}: {}"
                                   .format(self.path, name, e.message))
            sets[name] = RuleSet(revision, rules)
        return sets

    def _remove_leftovers(self, directory):
        """Remove the temporary files of writes that a crash cut short."""
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not name.startswith(TEMPORARY) or not os.path.isfile(path):
                continue
            try:
                os.unlink(path)
            except OSError as e:
                self.log.warn("cannot remove the leftover {path}: {why}", path=path,
                              why=e.strerror)
            else:
                self.log.info("removed {path}, left by a write cut short", path=path)

    def _persist(self, namespace, ruleset):
        sets = dict(self._sets)
        sets[namespace] = ruleset
        document = {
            "format": FORMAT,
            "namespaces": {
                name: {"revision": s.revision, "rules": list(s.rules)}
                for name, s in sorted(sets.items())
            },
        }
        data = encode(document).encode("utf-8")
        directory = os.path.dirname(self.path)
        handle, temporary = tempfile.mkstemp(prefix=TEMPORARY, dir=directory)
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
