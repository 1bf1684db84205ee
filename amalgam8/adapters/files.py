# -*- test-case-name: tests.test_file_catalog -*-
"""
The file catalog (C{A8_FS_CATALOG}, issue 12): a directory with one C{<namespace>.json} (or
C{.yaml}, C{.yml}) per tenant, in the registry's instance format::

    {"instances": [{"service_name": "reviews",
                    "endpoint": {"type": "http", "value": "10.0.0.1:9080"},
                    "tags": ["v1"], "status": "UP", "metadata": {...}}]}

(a bare list of instances is accepted too; C{id}, C{ttl} and C{last_heartbeat}, which a
listing carries, are ignored, so a saved listing is a valid file).

The directory is scanned on every change: inotify where the platform has it, else a poll
every C{fs-poll} (also while the watched directory is gone, until it can be watched again).
A scan stats every file (mtime, size, inode) and reads only those whose stat changed, so
both atomic replacement (write a temporary file, rename it over) and in-place writes are
seen. A file that cannot be used (unreadable, not UTF-8, bad JSON or
YAML, an entry a registration could not have) is reported once, naming its path, line and
(for an entry) its index and field, and is ignored as a whole: the namespace keeps what the
file held before. A removed file empties its namespace; a file made valid again is loaded.
Hidden files (C{.name}) and other suffixes are not catalog files (editors' and atomic
writers' temporary files are not read).
"""

import hashlib
import json
import os
from stat import S_ISREG
from json import decoder as json_decoder, scanner as json_scanner

import yaml
from twisted.application.service import Service
from twisted.internet import inotify
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python._inotify import INotifyError   # what INotify raises (not re-exported)
from twisted.python.filepath import FilePath
from twisted.python.runtime import platform
from zope.interface import implementer

from amalgam8.adapters import ICatalog, catalog_instance, add_listener
from amalgam8.settings import SettingError

__all__ = ["FileCatalog", "CatalogFileError", "parse_catalog", "from_settings"]

#: a larger catalog file is refused (about 500,000 instances of JSON).
MAX_FILE_BYTES = 64 << 20
#: file suffix -> its format.
SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
_IGNORED_KEYS = {"id", "ttl", "last_heartbeat"}
_ENTRY_KEYS = {"service_name", "endpoint", "tags", "status", "metadata"} | _IGNORED_KEYS
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# inotify events that end the directory's watch, and all those that call for a scan.
_GONE = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF
_MASK = (inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM
         | inotify.IN_DELETE | inotify.IN_ATTRIB | _GONE)


class CatalogFileError(ValueError):
    """
    A catalog file that cannot be used.

    @ivar line: the 1-based line of the problem, or L{None} (the whole file).
    @ivar problem: what is wrong, one line.
    """

    def __init__(self, problem, line=None):
        ValueError.__init__(self, problem)
        self.problem = problem
        self.line = line


def _line_of(text, offset):
    return text.count("\n", 0, offset) + 1


class _Offsets(json.JSONDecoder):
    """A (slow, pure Python) JSON decoder that records where each list item starts."""

    def __init__(self):
        json.JSONDecoder.__init__(self)
        self.starts = {}
        self.parse_array = self._array
        self.scan_once = json_scanner.py_make_scanner(self)

    def _array(self, s_and_end, scan_once, _w=json_decoder.WHITESPACE.match):
        text, end = s_and_end
        value, after = json_decoder.JSONArray(s_and_end, scan_once)
        # Find the items' starts again: skip whitespace, scan one value, skip ",".
        starts = []
        position = _w(text, end).end()
        while len(starts) < len(value):
            starts.append(position)
            _, position = scan_once(text, position)
            position = _w(text, position).end() + 1
            position = _w(text, position).end()
        self.starts[id(value)] = (value, starts)
        return value, after


def _entry_lines(text, kind):
    """The 1-based line of each entry of the instance list of a (valid) catalog file."""
    if kind == "json":
        offsets = _Offsets()
        top = offsets.decode(text)
        entries = top.get("instances") if isinstance(top, dict) else top
        _, starts = offsets.starts.get(id(entries), (None, []))
        return [_line_of(text, start) for start in starts]
    node = yaml.compose(text, Loader=_Loader)
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if k.value == "instances"), None)
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def _decode(data, kind):
    """The bytes of a catalog file -> its text and its top-level value."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CatalogFileError("not UTF-8 text", data.count(b"\n", 0, e.start) + 1)
    if not text.strip():
        raise CatalogFileError('empty (expected {"instances": [...]} or a list)')
    if kind == "json":
        try:
            return text, json.loads(text)
        except json.JSONDecodeError as e:
            raise CatalogFileError("not valid JSON: {} (column {})".format(e.msg, e.colno),
                                   e.lineno)
        except RecursionError:
            raise CatalogFileError("nested too deeply")
    try:
        return text, yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise CatalogFileError("not valid YAML: {}".format(e.problem or e.context),
                               mark.line + 1 if mark else None)
    except (yaml.YAMLError, RecursionError) as e:
        raise CatalogFileError("not valid YAML: {}".format(e))


def _instance(entry, seen_at):
    """One entry -> an C{Instance}; L{ValueError} naming the field."""
    if not isinstance(entry, dict):
        raise ValueError("must be an object with service_name and endpoint")
    unknown = sorted(str(key) for key in entry if key not in _ENTRY_KEYS)
    if unknown:
        raise ValueError("unknown field {}".format(unknown[0]))
    endpoint = entry.get("endpoint")
    if not isinstance(endpoint, dict) or "value" not in endpoint:
        raise ValueError("endpoint must be an object with type and value")
    tags = entry.get("tags", [])
    if not isinstance(tags, list):
        raise ValueError("tags must be a list of strings")
    return catalog_instance(
        entry.get("service_name"), endpoint.get("value"),
        endpoint_type=endpoint.get("type", "http"), tags=tags,
        status=entry.get("status", "UP"), metadata=entry.get("metadata"), seen_at=seen_at)


def _entry_key(entry):
    """An entry's service name and endpoint (hashable), or L{None}."""
    try:
        endpoint = entry["endpoint"]
        key = (entry["service_name"], endpoint.get("type"), endpoint["value"])
        hash(key)
    except (TypeError, KeyError, AttributeError):
        return None
    return key


def parse_catalog(data, kind, seen_at=0.0, known=None):
    """
    The bytes of a catalog file -> its instances.

    @param kind: C{"json"} or C{"yaml"}.
    @param seen_at: the C{last_heartbeat} of instances new in this file (its mtime).
    @param known: a dict that this call fills with the file's entries and their instances
        (by service name and endpoint); given the dict of the file's previous version, an
        entry equal to its previous version keeps its instance (and its C{last_heartbeat}),
        which spares its validation: a change of one entry in a large file costs little.
    @return: a list of L{amalgam8.registry.model.Instance}, in the file's order, without
        repeats (the first of two entries with the same id is kept).
    @raise CatalogFileError: the file cannot be used (nothing of it is; C{known} is left
        as it was).
    """
    text, top = _decode(data, kind)
    entries = top.get("instances") if isinstance(top, dict) else top
    if isinstance(top, dict) and set(top) - {"instances"}:
        raise CatalogFileError("unknown top-level key {}".format(
            sorted(str(k) for k in top if k != "instances")[0]), 1)
    if not isinstance(entries, list):
        raise CatalogFileError('expected {"instances": [...]} or a list of instances', 1)
    previous = {} if known is None else known
    seen = {}
    instances = {}
    for index, entry in enumerate(entries):
        key = _entry_key(entry)
        kept = previous.get(key) if key is not None else None
        instance = kept[1] if kept is not None and kept[0] == entry else None
        if instance is None:
            try:
                instance = _instance(entry, seen_at)
            except ValueError as e:
                lines = _entry_lines(text, kind)
                raise CatalogFileError("instance {}: {}".format(index, e),
                                       lines[index] if index < len(lines) else None)
        if key is not None:
            seen[key] = (entry, instance)
        instances.setdefault(instance.id, instance)
    if known is not None:
        known.clear()
        known.update(seen)
    return list(instances.values())


class _File:
    """What a scan knows of one catalog file."""

    def __init__(self, namespace):
        self.namespace = namespace
        self.signature = None
        self.digest = None
        self.instances = []
        self.known = {}
        self.reported = None


def _read_regular(path, stat):
    """The bytes of a regular file of at most L{MAX_FILE_BYTES}; else L{OSError}."""
    if not S_ISREG(stat.st_mode):
        # (opening a FIFO would block the registry)
        raise OSError(0, "not a regular file")
    too_large = OSError(0, "larger than {:,} bytes".format(MAX_FILE_BYTES))
    if stat.st_size > MAX_FILE_BYTES:
        raise too_large
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise too_large
    return data


def _signature(stat):
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@implementer(ICatalog)
class FileCatalog(Service):
    """
    @param directory: the catalog directory.
    @param reactor: for the poll's timer and inotify (an C{IReactorTime}; with
        C{use_inotify}, a real reactor).
    @param poll_interval: seconds between scans without inotify.
    @param use_inotify: watch with inotify (default: where the platform has it).
    """

    kind = "file"
    log = Logger()

    def __init__(self, directory, reactor, poll_interval=1.0, use_inotify=None):
        self.directory = directory
        self._reactor = reactor
        self.poll_interval = poll_interval
        self.use_inotify = (platform.supportsINotify() if use_inotify is None
                            else use_inotify)
        self._files = {}          # name -> _File
        self._mirror = {}         # namespace -> [Instance]
        self._generations = {}
        self._listeners = []
        self._poll = None
        self._notifier = None
        self._pending = None
        self._directory_problem = None

    # -- ICatalog ---------------------------------------------------------------------------

    def namespaces(self):
        return sorted(n for n, instances in self._mirror.items() if instances)

    def instances(self, namespace):
        return list(self._mirror.get(namespace, ()))

    def generation(self, namespace):
        return self._generations.get(namespace, 0)

    def subscribe(self, listener):
        return add_listener(self._listeners, listener)

    # -- the service ------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        if not self.use_inotify:
            self._start_polling(self.scan)
        elif not self._watch():
            self._start_polling(self._recover)
        self.scan()

    def stopService(self):
        Service.stopService(self)
        self._stop_polling()
        self._unwatch()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _start_polling(self, scan):
        self._poll = LoopingCall(scan)
        self._poll.clock = self._reactor
        self._poll.start(self.poll_interval, now=False)

    def _stop_polling(self):
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None

    def _watch(self):
        """Watch the directory with inotify; @return: whether it is watched."""
        try:
            notifier = inotify.INotify(reactor=self._reactor)
        except INotifyError:
            return False
        notifier.startReading()
        try:
            notifier.watch(FilePath(self.directory), _MASK, callbacks=[self._changed])
        except INotifyError:
            notifier.loseConnection()
            return False
        self._notifier = notifier
        return True

    def _unwatch(self):
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None

    def _changed(self, ignored, path, mask):
        """An inotify event: scan soon (one scan for a burst of events)."""
        if not self.running:
            return
        if mask & _GONE:
            # The directory itself was removed or moved away: its watch is over. Poll
            # until it can be watched again.
            self._unwatch()
            if self._poll is None:
                self._start_polling(self._recover)
        if self._pending is None or not self._pending.active():
            self._pending = self._reactor.callLater(0, self.scan)

    def _recover(self):
        """Polling while the directory cannot be watched: watch it again once it can be."""
        if os.path.isdir(self.directory) and self._watch():
            self._stop_polling()
        self.scan()

    # -- scanning ---------------------------------------------------------------------------

    def _names(self):
        try:
            names = os.listdir(self.directory)
        except OSError as e:
            problem = e.strerror or str(e)
            if problem != self._directory_problem:
                self._directory_problem = problem
                self.log.warn("file catalog {directory}: cannot list it ({problem}); the "
                              "catalog keeps what it had", directory=self.directory,
                              problem=problem)
            return None
        self._directory_problem = None
        return {name for name in names
                if not name.startswith(".") and os.path.splitext(name)[1] in SUFFIXES}

    def scan(self):
        """Stat the directory's catalog files; read those that changed."""
        names = self._names()
        if names is None:
            return
        touched = set()
        for name in sorted(set(self._files) - names):
            touched.add(self._files.pop(name).namespace)
        for name in sorted(names):
            stem, suffix = os.path.splitext(name)
            entry = self._files.setdefault(name, _File(stem))
            if self._refresh(name, entry, SUFFIXES[suffix]):
                touched.add(entry.namespace)
        for namespace in sorted(touched):
            self._rebuild(namespace)

    def _refresh(self, name, entry, kind):
        """@return: whether the file's instances changed."""
        path = os.path.join(self.directory, name)
        try:
            stat = os.stat(path)
            if _signature(stat) == entry.signature:
                return False
            data = _read_regular(path, stat)
        except FileNotFoundError:
            # Gone between the listing and the read: the next scan drops it.
            return False
        except OSError as e:
            self._report(path, entry, CatalogFileError(
                "cannot read it ({})".format(e.strerror or e)))
            return False
        entry.signature = _signature(stat)
        digest = hashlib.sha256(data).digest()
        changed = digest != entry.digest
        if changed:
            try:
                instances = parse_catalog(data, kind, seen_at=stat.st_mtime,
                                          known=entry.known)
            except CatalogFileError as e:
                self._report(path, entry, e)
                return False
            entry.digest = digest
            entry.instances = instances
        if entry.reported is not None:
            self.log.info("file catalog {path}: valid again, {count} instance(s) loaded",
                          path=path, count=len(entry.instances))
            entry.reported = None
        return changed

    def _report(self, path, entry, error):
        """Log a file's problem once (again only when it changes)."""
        # The signature stays unset for an unreadable file, so it is tried on every scan.
        message = (error.line, error.problem)
        if message == entry.reported:
            return
        entry.reported = message
        where = "" if error.line is None else " line {}".format(error.line)
        self.log.warn("file catalog {path}{where}: {problem}; the file is ignored and "
                      "{namespace} keeps its previous instances", path=path, where=where,
                      problem=error.problem, line=error.line, namespace=entry.namespace)

    def _rebuild(self, namespace):
        merged = {}
        for name in sorted(self._files):
            entry = self._files[name]
            if entry.namespace == namespace:
                for instance in entry.instances:
                    merged.setdefault(instance.id, instance)
        instances = list(merged.values())
        if instances == self._mirror.get(namespace, []):
            return
        if instances:
            self._mirror[namespace] = instances
        else:
            self._mirror.pop(namespace, None)
        self._generations[namespace] = self._generations.get(namespace, 0) + 1
        self.log.info("file catalog {directory}: {namespace} has {count} instance(s)",
                      directory=self.directory, namespace=namespace, count=len(instances))
        for listener in list(self._listeners):
            listener(namespace)


def from_settings(values, reactor):
    """
    The file catalog the settings ask for (C{fs-catalog}, C{fs-poll}).

    @raise SettingError: the directory is missing or unreadable, or C{fs-poll} is not above 0.
    """
    directory = values["fs-catalog"]
    if not os.path.isdir(directory):
        raise SettingError("fs-catalog: {} is not a directory".format(directory),
                           "fs-catalog")
    try:
        os.listdir(directory)
    except OSError as e:
        raise SettingError("fs-catalog: cannot read {}: {}".format(
            directory, e.strerror or e), "fs-catalog")
    interval = values["fs-poll"]
    if not interval or interval <= 0:
        raise SettingError("fs-poll: must be above 0, not {}".format(interval), "fs-poll")
    return FileCatalog(directory, reactor, poll_interval=interval)
