# -*- test-case-name: tests.test_sidecar_tracelog -*-
"""
Trace shipping (SPEC B5): follow the proxy's JSON access log, forward the records that carry a
trace (test traffic, marked by a fired C{trace} action) to the controller in batches, and keep
the full log on disk with size-based rotation.
"""

import json
import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["TraceShipper"]

_RUNNING = object()


class TraceShipper(Service):
    """
    @param clock: C{IReactorTime}.
    @param path: the access log nginx writes, or a callable returning it (read when it is
        needed: the proxy's runtime directory is only made when the proxy starts).
    @param send: C{records -> Deferred} (the controller client's C{post_traces}).
    @param reopen: called after a rotation so nginx writes a new file (SIGUSR1 to nginx).
    @param interval: seconds between reads of the log.
    @param batch: most records per POST.
    @param max_bytes: rotate the log beyond this size; C{keep} old files are kept.
    @param buffer_limit: most records held while the controller is unreachable (the oldest
        are dropped beyond it, and counted).
    """

    log = Logger()

    def __init__(self, clock, path, send, reopen=None, interval=0.5, batch=500,
                 max_bytes=64 * 1024 * 1024, keep=3, buffer_limit=10000):
        self._clock = clock
        self._path = path
        self._send = send
        self._reopen = reopen
        self._interval = interval
        self._batch = batch
        self._max_bytes = max_bytes
        self._keep = keep
        self._buffer_limit = buffer_limit
        self._file = None
        self._inode = None
        self._partial = b""
        self._pending = []
        self._call = None
        self._sending = None
        self.shipped = 0
        self.dropped = 0
        self.read_lines = 0
        self.rotations = 0

    @property
    def path(self):
        """The access log followed."""
        return self._path() if callable(self._path) else self._path

    def startService(self):
        Service.startService(self)
        self._call = self._clock.callLater(self._interval, self._tick)

    def stopService(self):
        Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if isinstance(self._sending, Deferred):
            self._sending.cancel()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _tick(self):
        self._call = None
        try:
            self.poll()
        except Exception:
            self.log.failure("reading the access log failed")
        if self.running:
            self._call = self._clock.callLater(self._interval, self._tick)

    # -- reading ---------------------------------------------------------------------------

    def _open(self):
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return False
        self._file = handle
        self._inode = os.fstat(handle.fileno()).st_ino
        self._partial = b""
        return True

    def poll(self):
        """Read what was appended, ship trace records, rotate when the log is too big."""
        if self._file is None and not self._open():
            return
        self._read_to_end()
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            stat = None
        if stat is None or stat.st_ino != self._inode or stat.st_size < self._file.tell():
            # Rotated or truncated behind our back: finish the old one, follow the new one.
            self._file.close()
            self._file = None
            if stat is not None and self._open():
                self._read_to_end()
                stat = os.fstat(self._file.fileno())
            else:
                stat = None
        if stat is not None and stat.st_size > self._max_bytes:
            self.rotate()
        self._flush()

    def _read_to_end(self):
        data = self._file.read()
        if not data:
            return
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.read_lines += 1
            self._consider(line)

    def _consider(self, line):
        if b"trace" not in line:
            return
        try:
            record = json.loads(line)
        except ValueError:
            return
        if isinstance(record, dict) and "trace" in str(record.get("actions", "")).split(","):
            self._pending.append(record)
            overflow = len(self._pending) - self._buffer_limit
            if overflow > 0:
                del self._pending[:overflow]
                self.dropped += overflow

    def rotate(self):
        """access.log -> access.log.1 -> ... -> access.log.KEEP, then ask nginx to reopen."""
        for n in range(self._keep - 1, 0, -1):
            older = "{}.{}".format(self.path, n)
            if os.path.exists(older):
                os.replace(older, "{}.{}".format(self.path, n + 1))
        os.replace(self.path, self.path + ".1")
        self.rotations += 1
        if self._reopen is not None:
            self._reopen()
        self.log.info("access log rotated ({rotations})", rotations=self.rotations)

    # -- shipping --------------------------------------------------------------------------

    def _flush(self):
        if self._sending is not None or not self._pending:
            return
        batch = self._pending[:self._batch]
        self._sending = _RUNNING
        sending = Deferred.fromCoroutine(self._ship(batch))
        if self._sending is _RUNNING:
            # Still going: the coroutine clears it when done.
            self._sending = sending

    async def _ship(self, batch):
        try:
            await self._send(batch)
        except Exception as e:
            self.log.warn("cannot ship {count} trace records: {error}", count=len(batch),
                          error=str(e))
            return
        finally:
            self._sending = None
        del self._pending[:len(batch)]
        self.shipped += len(batch)
        if self._pending and self.running:
            self._flush()

    def state(self):
        return {"path": self.path, "read_lines": self.read_lines, "shipped": self.shipped,
                "pending": len(self._pending), "dropped": self.dropped,
                "rotations": self.rotations}
