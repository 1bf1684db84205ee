"""
Child processes of bench/propagation (not meant to be run by hand).

    python bench/propagation_managers.py managers REGISTRY_URL CONTROLLER_URL COUNT FIRST PUSH
    python bench/propagation_managers.py admin

C{managers}: runs C{COUNT} real L{amalgam8.sidecar.routes.RouteManager}s (numbered from
C{FIRST}) in one Twisted reactor, each with its own HTTP connection pool (as each sidecar has
its own), its own L{RegistryClient} and L{ControllerClient}, started in small batches so that
the servers' listen backlogs never overflow. C{PUSH} is either C{record}: the push is a
function that records C{time.time()} and the controller revision being pushed, in-process, and
succeeds at once; or C{http://127.0.0.1:PORT}: the real L{AdminClient} POSTs the state (plus
its revision, under C{"revision"}) to C{PORT/a8-admin/<manager number>}, a recording admin
server (C{admin} below).

C{admin}: a twisted.web server on a free loopback port that records, for every
C{POST /a8-admin/<n>}, the time its whole body had arrived and the revision in it, and answers
C{200 {}} like the proxy's admin endpoint.

Both talk to bench/propagation with JSON lines: they print C{{"port": P}} (admin) or
C{{"started": COUNT}} (managers) once up; on stdin they take
C{{"cmd": "wait", "revision": R, "count": N, "timeout": S}} and answer, once every one of the
C{N} managers has pushed (or the admin server has received) revision C{R} or later, or after
C{S} seconds, C{{"times": [first such time of each manager, or null], "cpu", "gc",
"collections"}} (this process's CPU seconds, CPU seconds spent in garbage collection and the number
of collections so far); C{{"cmd": "freeze"}}: C{gc.collect()} then C{gc.freeze()}, answered
C{{"frozen": COUNT}}; C{{"cmd": "stats"}}: C{{"cpu", "gc", "collections"}} now; and
C{{"cmd": "quit"}}.
"""

import gc
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import succeed  # noqa: E402
from twisted.internet.stdio import StandardIO  # noqa: E402
from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,  # noqa: E402
                            globalLogBeginner, textFileLogObserver)
from twisted.protocols.basic import LineReceiver  # noqa: E402

BATCH = 20            # managers started at a time
BATCH_PAUSE = 0.025   # seconds between batches


class GCTimer:
    """The CPU time this process spent in garbage collection (gc.callbacks)."""

    def __init__(self):
        self.total = 0.0
        self.collections = 0
        self._started = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase, info):
        if phase == "start":
            self._started = time.process_time()
        elif self._started is not None:
            self.total += time.process_time() - self._started
            self.collections += 1
            self._started = None


GC = GCTimer()


class Recorder:
    """The pushes (manager number, time, revision), and the one pending C{wait}."""

    def __init__(self):
        self.pushes = {}      # number -> [(time, revision)]
        self.pending = None

    def record(self, number, when, revision):
        self.pushes.setdefault(number, []).append((when, revision))
        pending = self.pending
        if pending is None or revision is None or revision < pending["revision"]:
            return
        index = number - pending["first"]
        if 0 <= index < pending["count"] and pending["times"][index] is None:
            pending["times"][index] = when
            pending["remaining"] -= 1
            if pending["remaining"] == 0:
                self.answer()

    def wait(self, reply, revision, first, count, timeout):
        times = [None] * count
        for index in range(count):
            for when, pushed in self.pushes.get(first + index, ()):
                if pushed is not None and pushed >= revision:
                    times[index] = when
                    break
        self.pending = {"reply": reply, "revision": revision, "first": first, "count": count,
                        "times": times, "remaining": sum(1 for t in times if t is None),
                        "timer": reactor.callLater(timeout, self.answer)}
        if self.pending["remaining"] == 0:
            self.answer()

    def answer(self):
        pending, self.pending = self.pending, None
        if pending is None:
            return
        if pending["timer"].active():
            pending["timer"].cancel()
        pending["reply"]({"times": pending["times"], "cpu": time.process_time(),
                          "gc": GC.total, "collections": GC.collections})


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, recorder, on_quit):
        self.recorder = recorder
        self.on_quit = on_quit

    def send(self, obj):
        self.transport.write(json.dumps(obj).encode("utf-8") + b"\n")

    def lineReceived(self, line):
        command = json.loads(line)
        if command["cmd"] == "wait":
            self.recorder.wait(self.send, command["revision"], command.get("first", 0),
                               command["count"], command["timeout"])
        elif command["cmd"] == "stats":
            self.send({"cpu": time.process_time(), "gc": GC.total,
                       "collections": GC.collections})
        elif command["cmd"] == "freeze":
            # Everything alive now (the managers, their pools, connections and coroutines)
            # goes out of the collector's sight: one process holds the heap of hundreds of
            # sidecars, and every full collection would scan all of it.
            gc.collect()
            gc.freeze()
            self.send({"frozen": gc.get_freeze_count()})
        elif command["cmd"] == "quit":
            self.on_quit()

    def connectionLost(self, reason):
        self.on_quit()


def stop():
    if reactor.running:
        reactor.stop()


# -- the managers ---------------------------------------------------------------------------


def run_managers(registry_url, controller_url, count, first, push_to):
    from amalgam8.client import ControllerClient, RegistryClient, http_client
    from amalgam8.sidecar.proxy import AdminClient
    from amalgam8.sidecar.routes import RouteManager

    recorder = Recorder()
    managers = []
    control = Control(recorder, stop)

    def make(number):
        http = http_client(reactor)   # one pool per manager, as one per sidecar
        registry = RegistryClient(http, registry_url, reactor=reactor)
        controller = ControllerClient(http, controller_url, reactor=reactor)
        holder = []

        def revision():
            # The controller revision this push carries (read when the push starts: the
            # manager calls push synchronously with the state of these versions).
            return holder[0].debug_state()["rules"]["version"]

        if push_to == "record":
            def push(state):
                recorder.record(number, time.time(), revision())
                return succeed({})
        else:
            admin = AdminClient(http, 0, reactor=reactor)
            admin.url = "{}/a8-admin/{}".format(push_to.rstrip("/"), number)

            def push(state):
                state["revision"] = revision()
                return admin.push(state)

        manager = RouteManager(reactor, registry, controller, push,
                               "bench-{}-{}".format(os.getpid(), number), "bench-caller",
                               ("v1",))
        holder.append(manager)
        return manager

    def start_batch(start):
        for number in range(start, min(start + BATCH, first + count)):
            manager = make(number)
            managers.append(manager)
            manager.startService()
        if start + BATCH < first + count:
            reactor.callLater(BATCH_PAUSE, start_batch, start + BATCH)
        else:
            control.send({"started": count, "pid": os.getpid()})

    def shutdown():
        for manager in managers:
            manager.stopService()

    StandardIO(control)
    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.callWhenRunning(start_batch, first)
    reactor.run()


# -- the recording admin server -------------------------------------------------------------


def run_admin():
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    recorder = Recorder()
    control = Control(recorder, stop)

    class Admin(Resource):
        isLeaf = True

        def render_POST(self, request):
            # twisted.web calls this once the whole body has arrived.
            arrived = time.time()
            try:
                number = int(request.postpath[-1])
                revision = json.loads(request.content.read()).get("revision")
            except (ValueError, IndexError):
                request.setResponseCode(400)
                return b'{"error": "bad request"}'
            recorder.record(number, arrived, revision)
            request.setHeader(b"content-type", b"application/json")
            return b"{}"

    site = Site(Admin())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
    StandardIO(control)
    reactor.callWhenRunning(control.send, {"port": port.getHost().port, "pid": os.getpid()})
    reactor.run()


def main(argv):
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    if argv[:1] == ["managers"]:
        registry_url, controller_url, count, first, push_to = argv[1:6]
        run_managers(registry_url, controller_url, int(count), int(first), push_to)
    elif argv[:1] == ["admin"]:
        run_admin()
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
