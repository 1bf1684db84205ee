# -*- test-case-name: tests.test_sidecar_supervisor,tests.test_sidecar_health -*-
"""
A fake C{IReactorProcess} for tests of code that runs child processes (health checks, the
sidecar's supervisor), after L{twisted.runner.test.test_procmon}'s C{DummyProcessReactor}.

    reactor = FakeProcessReactor()
    thing = ThingUnderTest(reactor=reactor)
    process = reactor.processes[-1]          # what spawnProcess was given, and the protocol
    process.output(b"hello\\n")               # the child writes to its stdout
    process.end(exitCode=3)                  # the child exits (or end(signal="KILL"))

A signal sent to a fake process ends it after a per-signal delay on the reactor's clock
(C{signal_exit_delays}, default: TERM, INT and KILL end it at once, at the next
C{advance(0)}); a signal mapped to L{None} is recorded and otherwise ignored, like a child that
traps it.

Fake pids can never name a real process: they start at L{FIRST_PID} (2**30), far above
C{PID_MAX_LIMIT} (2**22, the most C{/proc/sys/kernel/pid_max} may be set to) and still a
positive C{pid_t}, so even a stray C{kill(pid)}, C{kill(-pid)} or C{killpg(pid)} could only
fail with ESRCH. Group signals go through L{FakeSignaller}, the fake
L{amalgam8.sidecar.supervisor.IProcessSignaller}: tests never patch C{os}.
"""

import signal as _signal

from zope.interface import implementer
from twisted.internet.address import _ProcessAddress
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from amalgam8.sidecar.supervisor import IProcessSignaller

__all__ = ["FakeProcessReactor", "FakeProcessTransport", "FakeSignaller", "signal_number",
           "FIRST_PID", "PID_MAX_LIMIT"]

# The kernel's ceiling of pid_max (include/linux/threads.h, 64-bit): no pid reaches it.
PID_MAX_LIMIT = 2 ** 22
# The first fake pid: above any real pid, and a positive pid_t (below 2**31).
FIRST_PID = 2 ** 30

_DEFAULT_FDS = {0: "w", 1: "r", 2: "r"}


def signal_number(signal_id):
    """C{"TERM"}, C{"SIGTERM"} or 15 -> 15."""
    if isinstance(signal_id, int):
        return signal_id
    name = str(signal_id).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    return int(getattr(_signal, name))


@implementer(IProcessTransport)
class FakeProcessTransport:
    """
    One fake child process: what C{spawnProcess} was given, what was written to it, which of
    its descriptors were closed, the signals it got, and how it ended.

    @ivar protocol: the C{IProcessProtocol} it was spawned with.
    @ivar executable, args, env, path, uid, gid, usePTY, childFDs: as given to C{spawnProcess}
        (C{childFDs} L{None} means the default C{{0: "w", 1: "r", 2: "r"}}).
    @ivar pid: the fake pid, L{None} once the process has ended.
    @ivar written: C{{fd: bytes}} written to the child.
    @ivar closed: the child descriptors closed by the parent.
    @ivar signals: the signals received, as given (names or numbers).
    @ivar reason: the L{Failure} (L{ProcessDone} or L{ProcessTerminated}) it ended with, or
        L{None} while it runs.
    @ivar signal_exit_delays: C{{signal name: seconds or None}} (see the module docstring).
    """

    def __init__(self, reactor, protocol, executable, args, env, path, uid, gid, usePTY,
                 childFDs, pid, signal_exit_delays):
        self.reactor = reactor
        self.protocol = protocol
        self.executable = executable
        self.args = list(args)
        self.env = env
        self.path = path
        self.uid = uid
        self.gid = gid
        self.usePTY = usePTY
        self.childFDs = childFDs
        self.pid = pid
        self.written = {}
        self.closed = set()
        self.signals = []
        self.reason = None
        self.signal_exit_delays = dict(signal_exit_delays)
        self.lost_connection = False
        self._pending_exit = None

    # -- helpers for tests --------------------------------------------------------------------

    @property
    def running(self):
        """Whether the process has not ended yet."""
        return self.reason is None

    @property
    def fds(self):
        """The child's descriptor map (the default when spawnProcess got none)."""
        return dict(_DEFAULT_FDS if self.childFDs is None else self.childFDs)

    def output(self, data, fd=1):
        """The child writes C{data} to its descriptor C{fd} (1: stdout, 2: stderr)."""
        self.protocol.childDataReceived(fd, data)

    def end(self, exitCode=0, signal=None):
        """
        The child exits with C{exitCode}, or is killed by C{signal} (a name or a number):
        the protocol gets C{childConnectionLost} for each of the child's descriptors, then
        C{processExited} and C{processEnded}.
        """
        if self.reason is not None:
            raise ProcessExitedAlready()
        if self._pending_exit is not None and self._pending_exit.active():
            self._pending_exit.cancel()
        self._pending_exit = None
        if signal is None and exitCode == 0:
            reason = Failure(ProcessDone(0))
        elif signal is None:
            reason = Failure(ProcessTerminated(exitCode=exitCode))
        else:
            number = signal_number(signal)
            reason = Failure(ProcessTerminated(signal=number, status=number))
        self.pid = None
        self.reason = reason
        for fd in sorted(self.fds):
            self.protocol.childConnectionLost(fd)
        self.protocol.processExited(reason)
        self.protocol.processEnded(reason)

    # -- IProcessTransport --------------------------------------------------------------------

    def signalProcess(self, signalID):
        if self.reason is not None:
            raise ProcessExitedAlready()
        self.signals.append(signalID)
        self.reactor.signals.append((self, signalID))
        name = signalID if isinstance(signalID, str) else _signal.Signals(signalID).name
        name = name.upper()
        name = name[3:] if name.startswith("SIG") else name
        delay = self.signal_exit_delays.get(name)
        if delay is not None and self._pending_exit is None:
            self._pending_exit = self.reactor.callLater(delay, self._killed, name)

    def _killed(self, name):
        self._pending_exit = None
        if self.reason is None:
            self.end(signal=name)

    def writeToChild(self, childFD, data):
        if childFD in self.closed:
            raise ValueError("descriptor {} of the child is closed".format(childFD))
        self.written[childFD] = self.written.get(childFD, b"") + data

    def write(self, data):
        self.writeToChild(0, data)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def closeChildFD(self, descriptor):
        self.closed.add(descriptor)

    def closeStdin(self):
        self.closeChildFD(0)

    def closeStdout(self):
        self.closeChildFD(1)

    def closeStderr(self):
        self.closeChildFD(2)

    def loseConnection(self):
        self.lost_connection = True
        for fd in (0, 1, 2):
            self.closeChildFD(fd)

    def getPeer(self):
        return _ProcessAddress()

    def getHost(self):
        return _ProcessAddress()


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} (C{IReactorTime}, C{IReactorTCP}, ...) that also provides
    C{IReactorProcess}: C{spawnProcess} records a L{FakeProcessTransport} in C{processes} and
    connects the protocol to it at once, as the real reactor does.

    @ivar processes: every L{FakeProcessTransport} spawned, in order.
    @ivar signals: C{(process, signal)} for every signal sent to any of them.
    @ivar spawn_error: an exception C{spawnProcess} raises instead (until reset to L{None}).
    @ivar signal_exit_delays: the default of each new process's C{signal_exit_delays}.
    """

    def __init__(self, signal_exit_delays=None):
        MemoryReactorClock.__init__(self)
        self.processes = []
        self.signals = []
        self.spawn_error = None
        self.signal_exit_delays = (
            {"TERM": 0.0, "INT": 0.0, "KILL": 0.0}
            if signal_exit_delays is None else dict(signal_exit_delays))
        self._next_pid = FIRST_PID

    @property
    def live_processes(self):
        """The processes that have not ended."""
        return [p for p in self.processes if p.running]

    def spawnProcess(self, processProtocol, executable, args, env=None, path=None,
                     uid=None, gid=None, usePTY=False, childFDs=None):
        if self.spawn_error is not None:
            raise self.spawn_error
        pid, self._next_pid = self._next_pid, self._next_pid + 1
        transport = FakeProcessTransport(
            self, processProtocol, executable, args, env, path, uid, gid, usePTY, childFDs,
            pid, self.signal_exit_delays)
        self.processes.append(transport)
        processProtocol.makeConnection(transport)
        return transport


@implementer(IProcessSignaller)
class FakeSignaller:
    """
    The fake L{IProcessSignaller}: records every group signal in C{sent} as C{(pgid, sig)}.

    Without a reactor it does nothing more (a test then reads C{sent}). Given a
    L{FakeProcessReactor}, a signal to the group of one of its live processes is delivered to
    that process (the group's leader, as C{setsid} makes it) through its C{signalProcess};
    a group with no live leader raises L{ProcessLookupError}, as C{os.killpg} does. With
    C{missing}, every group is missing (the moment before C{setsid} ran).

    A pgid that could name a real process (not a fake pid) is refused with L{ValueError}:
    a test that gets there has a real pid in its hands.
    """

    def __init__(self, reactor=None, missing=False):
        self._reactor = reactor
        self.missing = missing
        self.sent = []

    def signal_group(self, pgid, sig):
        if not isinstance(pgid, int) or pgid <= PID_MAX_LIMIT:
            raise ValueError("{!r} is not a fake pid: refusing to signal it".format(pgid))
        self.sent.append((pgid, sig))
        if self.missing:
            raise ProcessLookupError(3, "No such process")
        if self._reactor is None:
            return
        for process in self._reactor.live_processes:
            if process.pid == pgid:
                process.signalProcess(sig)
                return
        raise ProcessLookupError(3, "No such process")
