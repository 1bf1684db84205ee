"""
Tests for L{amalgam8.sidecar.tracelog}: following the access log, shipping trace records,
rotation.
"""

import json
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.sidecar.tracelog import TraceShipper


def record(n, trace=False):
    r = {"status": 200, "path": "/x/{}".format(n), "src": "a:v1", "dst": "b:v1"}
    if trace:
        r["actions"] = "delay,trace"
        r["gremlin_recipe_id"] = "recipe-1"
    return r


class TraceShipperTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "access.log")
        self.clock = Clock()
        self.sent = []
        self.reopened = []
        self.result = None

    def send(self, records):
        if self.result is not None:
            return self.result
        self.sent.extend(records)
        return succeed(None)

    def shipper(self, **kwargs):
        shipper = TraceShipper(self.clock, self.path, self.send,
                               reopen=lambda: self.reopened.append(1), **kwargs)
        shipper.startService()
        self.addCleanup(lambda: shipper.running and shipper.stopService())
        return shipper

    def write(self, *records, partial=b""):
        with open(self.path, "ab") as f:
            for r in records:
                f.write(json.dumps(r).encode() + b"\n")
            f.write(partial)

    def test_ships_trace_records_only(self):
        """Only records where a trace action fired are forwarded, each once."""
        self.write(record(1), record(2, trace=True))
        shipper = self.shipper()
        self.clock.advance(0.5)
        self.write(record(3), record(4, trace=True))
        self.clock.advance(0.5)
        self.assertEqual([r["path"] for r in self.sent], ["/x/2", "/x/4"])
        self.assertEqual(shipper.state()["read_lines"], 4)

    def test_partial_line_waits(self):
        """A line nginx is still writing is read once it is complete."""
        line = json.dumps(record(5, trace=True)).encode()
        self.write(partial=line[:10])
        self.shipper()
        self.clock.advance(0.5)
        with open(self.path, "ab") as f:
            f.write(line[10:] + b"\n")
        self.clock.advance(0.5)
        self.assertEqual([r["path"] for r in self.sent], ["/x/5"])

    def test_missing_log_waits(self):
        """Before nginx creates the log, nothing happens; then it is followed."""
        self.shipper()
        self.clock.advance(1)
        self.write(record(6, trace=True))
        self.clock.advance(0.5)
        self.assertEqual(len(self.sent), 1)

    def test_controller_down_keeps_records(self):
        """Records wait while the controller is unreachable and are sent after."""
        waiting = self.result = Deferred()
        self.write(record(7, trace=True))
        shipper = self.shipper()
        self.clock.advance(0.5)
        self.assertEqual(shipper.state()["pending"], 1)
        self.result = None
        waiting.errback(ConnectionRefusedError())
        self.clock.advance(0.5)
        self.assertEqual([r["path"] for r in self.sent], ["/x/7"])
        self.assertEqual(shipper.state()["shipped"], 1)

    def test_bounded_buffer(self):
        """Beyond the buffer limit the oldest records are dropped and counted."""
        self.result = Deferred()
        self.write(*[record(n, trace=True) for n in range(30)])
        shipper = self.shipper(buffer_limit=10, batch=5)
        self.clock.advance(0.5)
        self.assertEqual(shipper.state()["dropped"], 20)

    def test_rotation(self):
        """Past max_bytes the log is rotated (old files kept) and nginx asked to reopen."""
        shipper = self.shipper(max_bytes=200, keep=2)
        for n in range(3):
            self.write(*[record(i) for i in range(5)])
            self.clock.advance(0.5)
        self.assertEqual(shipper.state()["rotations"], 3)
        self.assertEqual(len(self.reopened), 3)
        self.assertTrue(os.path.exists(self.path + ".1"))
        self.assertTrue(os.path.exists(self.path + ".2"))
        self.assertFalse(os.path.exists(self.path + ".3"))

    def test_follows_new_file(self):
        """After a rotation the records nginx writes to the new file are shipped."""
        self.write(record(1))
        shipper = self.shipper(max_bytes=10)
        self.clock.advance(0.5)
        self.write(record(8, trace=True))
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual([r["path"] for r in self.sent], ["/x/8"])
        self.assertGreaterEqual(shipper.state()["rotations"], 1)

    def test_stop(self):
        """A stopped shipper leaves no delayed call."""
        shipper = self.shipper()
        shipper.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
