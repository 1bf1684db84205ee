# -*- test-case-name: tests.test_gremlin_traces -*-
"""
Where a recipe's trace records come from: the controller (SPEC B5, C{GET /v1/traces}) or the
proxies' JSON access-log files in a directory (C{--logs DIR}), both behind L{ITraceSource}.

A record belongs to a recipe when its L{LOG_KEY} field (C{gremlin_recipe_id}) is the recipe
id, which the trace action of every rule of the recipe writes. A source hands them out
incrementally: each L{ITraceSource.fetch} returns the records newer than the cursor it is
given and the cursor for the next call, so a poller waiting for the records of its test
requests reads each record once, however often it asks.
"""

import fnmatch
import json
import os
import re

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from zope.interface import Interface, implementer

from amalgam8.client import APIError, Unreachable
from amalgam8.gremlin.model import LOG_KEY

__all__ = ["ITraceSource", "TraceSourceError", "ControllerTraces", "LogDirTraces",
           "ControllerCursor", "LogCursor", "PAGE", "LOG_PATTERNS"]

#: Records per page asked of the controller.
PAGE = 1000

#: The names of the files L{LogDirTraces} reads (the sidecar writes C{access.log} and
#: rotates it to C{access.log.1}, C{access.log.2}, ...).
LOG_PATTERNS = ("*.log", "*.jsonl")
_ROTATED = re.compile(r".+\.log\.[0-9]+\Z")


class TraceSourceError(Exception):
    """The records could not be read; the text names the source and why."""


class ITraceSource(Interface):
    """The trace records of recipes."""

    def fetch(recipe_id, cursor=None):
        """
        The records of a recipe newer than C{cursor}.

        @param recipe_id: L{str}; a record belongs to it when C{str(record[LOG_KEY]) ==
            recipe_id}.
        @param cursor: L{None} (from the first record kept) or the cursor a previous
            C{fetch} of the same recipe on the same source returned. Cursors are immutable
            values: one may be passed again, and the answer is the same or longer.
        @return: a Deferred firing with C{(records, cursor)}: a list of record dicts in the
            order each proxy wrote them, and the cursor that makes the next call return only
            records added since; or failing with L{TraceSourceError}.
        """

    def describe():
        """@return: a short text naming the source for messages, e.g. C{"the logs in /x"}."""


@attrs.frozen
class ControllerCursor:
    """
    Where a L{ControllerTraces} reader stands: the controller's sequence number C{after}
    (the last C{next} it answered) and the C{seen} records of the recipe after it that were
    already returned, the last of which is C{last}. The controller gives no sequence
    number on the last page, so the records of that page are counted instead; C{last} tells,
    on the next read, whether the controller dropped some of them for room meanwhile.
    """

    after: int = 0
    seen: int = 0
    last: object = attrs.field(default=None, eq=False)


@implementer(ITraceSource)
@attrs.frozen
class ControllerTraces:
    """
    The records the sidecars forwarded to the controller, every page of them.

    @ivar controller: an L{amalgam8.client.ControllerClient}.
    """

    controller: object

    def describe(self):
        return "the controller at {}".format(self.controller.url)

    def fetch(self, recipe_id, cursor=None):
        return Deferred.fromCoroutine(self._fetch(recipe_id, cursor or ControllerCursor()))

    async def _fetch(self, recipe_id, cursor):
        records = []
        after, seen, last = cursor.after, cursor.seen, cursor.last
        while True:
            try:
                page, following = await self.controller.traces_page(
                    after, limit=PAGE, log_key=LOG_KEY, log_value=recipe_id)
            except (APIError, Unreachable) as e:
                raise TraceSourceError("{}: {}".format(self.describe(), e)) from e
            records.extend(page[_unseen(page, seen, last):])
            if following is None:
                if page:
                    return records, ControllerCursor(after, len(page), page[-1])
                return records, ControllerCursor(after)
            after, seen, last = following, 0, None


def _unseen(page, seen, last):
    """
    Where the new records of C{page} start when the first C{seen} of the records after its
    C{after} were returned before, the last of them C{last}. The controller drops its oldest
    records for room, so some of them may be gone: then the new ones start after the last
    copy of C{last}, or at the start when it is gone too.
    """
    if not seen:
        return 0
    if len(page) >= seen and page[seen - 1] == last:
        return seen
    for index in range(min(seen, len(page)) - 1, -1, -1):
        if page[index] == last:
            return index + 1
    return 0


@attrs.frozen
class LogCursor:
    """
    Where a L{LogDirTraces} reader stands: C{offsets} maps each file read, by its
    C{(device, inode)} (a file keeps it when it is rotated to a new name), to the offset of
    the first byte not read (a half-written last line is left for the next read).
    """

    offsets: tuple = ()

    def offset(self, key):
        return dict(self.offsets).get(key, 0)


def _now(f, *args):
    return maybeDeferred(f, *args)


@implementer(ITraceSource)
@attrs.define
class LogDirTraces:
    """
    The proxies' JSON access logs under C{directory}, one JSON object a line: files named
    C{*.log}, C{*.log.N} (rotated) or C{*.jsonl}, in every subdirectory.

    Lines that are not JSON objects are skipped and counted in C{skipped}; the last line of
    a file without its newline is still being written and is read once it is whole. A line
    is parsed only when it holds the recipe id; any other line counts as skipped when it is
    not a C{{...}} text at all.

    @ivar run: C{run(f, *args) -> Deferred} runs the blocking reading. The default runs it
        at once; L{from_reactor} runs it in the reactor's thread pool, so a big log does not
        stall the reactor.
    """

    directory: str
    run: object = _now
    skipped: int = 0

    @classmethod
    def from_reactor(cls, reactor, directory):
        """The production source: the files are read in C{reactor}'s thread pool."""
        def run(f, *args):
            return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
        return cls(directory, run)

    def describe(self):
        return "the logs in {}".format(self.directory)

    def fetch(self, recipe_id, cursor=None):
        d = self.run(_read_logs, self.directory, str(recipe_id), cursor or LogCursor())
        return d.addCallback(self._counted)

    def _counted(self, answer):
        records, cursor, skipped = answer
        self.skipped += skipped
        return records, cursor


def _log_files(directory):
    """The log files under C{directory}, oldest first (so rotated ones first)."""
    found = []
    for parent, _, names in os.walk(directory, onerror=_raise):
        for name in names:
            if _ROTATED.match(name) or any(fnmatch.fnmatch(name, p) for p in LOG_PATTERNS):
                path = os.path.join(parent, name)
                try:
                    found.append((os.stat(path).st_mtime, path))
                except OSError:
                    continue   # gone since it was listed (rotated away): read next time
    return [path for _, path in sorted(found)]


def _raise(error):
    raise error


def _read_logs(directory, recipe_id, cursor):
    """
    Read what is new in every log file (runs in a thread: it touches no shared state).

    @return: C{(records, LogCursor, lines skipped)}.
    """
    if not os.path.isdir(directory):
        raise TraceSourceError("the logs in {}: no such directory".format(directory))
    try:
        paths = _log_files(directory)
    except OSError as e:
        raise TraceSourceError("the logs in {}: {}".format(directory, e.strerror or e))
    reader = _Reader(recipe_id)
    offsets = dict(cursor.offsets)
    done = set()
    for path in paths:
        try:
            with open(path, "rb") as f:
                status = os.fstat(f.fileno())
                key = (status.st_dev, status.st_ino)
                if key in done:
                    continue   # another name of a file read already
                done.add(key)
                start = offsets.get(key, 0)
                if start > status.st_size:
                    start = 0   # truncated in place (copytruncate): it starts over
                offsets[key] = reader.read(f, start)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise TraceSourceError("the logs in {}: {}: {}".format(
                directory, path, e.strerror or e))
    return reader.records, LogCursor(tuple(sorted(offsets.items()))), reader.skipped


class _Reader:
    """Picks the records of one recipe out of log lines."""

    CHUNK = 1 << 20

    def __init__(self, recipe_id):
        self.recipe_id = recipe_id
        self._needle = recipe_id.encode("utf-8")
        self._key = LOG_KEY.encode("ascii")
        self.records = []
        self.skipped = 0

    def read(self, f, offset):
        """Read C{f} from C{offset}; return the offset after its last whole line."""
        f.seek(offset)
        rest = b""
        while True:
            chunk = f.read(self.CHUNK)
            if not chunk:
                return offset
            data = rest + chunk
            lines = data.split(b"\n")
            rest = lines.pop()
            offset += len(data) - len(rest)
            self.lines(lines)

    def lines(self, lines):
        # In bulk (list comprehensions): most lines of a full access log are other traffic.
        lines = [line.strip() for line in lines]
        needle, key = self._needle, self._key
        self.skipped += len([line for line in lines if line and not (
            line.startswith(b"{") and line.endswith(b"}"))])
        for line in [line for line in lines if needle in line and key in line]:
            try:
                record = json.loads(line)
            except ValueError:
                if line.startswith(b"{") and line.endswith(b"}"):
                    self.skipped += 1   # it looked like one: not counted above
                continue
            # (A line that is valid JSON but no object was counted above.)
            if isinstance(record, dict) and str(record.get(LOG_KEY)) == self.recipe_id \
                    and LOG_KEY in record:
                self.records.append(record)
