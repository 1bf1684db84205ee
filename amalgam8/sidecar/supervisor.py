# -*- test-case-name: tests.test_sidecar_supervisor -*-
"""
The sidecar's children: the proxy (nginx), restarted whenever it dies (at once, with backoff
only while it keeps dying), and the apps of SPEC A5 (C{commands[]} and the trailing argv), started only once the proxy holds its
first state (SPEC B4) and never restarted.

Why not L{twisted.runner.procmon.ProcessMonitor}: it restarts every child, signals only the
child's pid, sends TERM then KILL to everyone, and its C{stopService} does not wait for the
exits. Here apps follow their C{on_exit} policy, C{kill_group} children are signalled as a
whole process group, nginx is stopped with QUIT (graceful) before TERM (fast) and KILL, and
stopping waits for every child. The shape is ProcessMonitor's otherwise: the reactor is
injected, repeated restarts back off exponentially, and a stop escalates after a grace period.

Process groups (C{kill_group: true}): Twisted's C{spawnProcess} has no C{preexec_fn}, so the
child is run through C{setsid(1)} (util-linux, which is C{Essential: yes} on Debian 12, hence
always in C{/usr/bin}). A child spawned by Twisted is never a process-group leader, so
C{setsid} calls C{setsid()} and C{exec}s the command in place without forking: the pid we
hold is the command's pid, its session id and its process-group id, and the exit status is
the command's own. Signals then go to the whole group through the injected
L{IProcessSignaller} (L{ProcessGroupSignaller}, the one place that calls C{os.killpg}), so the
command's own children get them too. Without C{setsid} on the PATH (not Debian), a C{python -c} shim doing
C{os.setsid(); os.execvp(...)} does the same. C{-w} is not used: it only matters when
C{setsid} forks, and then the pid we hold would no longer lead the new group.

Orphans: an arbitrary app cannot be made to exit when its stdin closes (Tahoe's
C{on_stdin_close} needs the child's cooperation). Children get C{childFDs={0: "w", 1: "r",
2: "r"}}: stdin is a pipe we keep open (it reaches end-of-file when the sidecar dies, which an
app may watch), and stdout/stderr are captured line by line. The sidecar itself sends TERM to
every child when it gets SIGTERM or SIGINT (L{Supervisor.forward} and L{Supervisor.stopService}),
so a sidecar that is stopped, rather than killed, leaves no orphans.

Three concerns, three owners: spawning and the children's output are the L{Supervisor}'s;
signalling a process group is the L{IProcessSignaller}'s; what happens when a child exits is
its policy's (L{RestartWithBackoff} for the proxy, L{OnExit} for an app), which answers an
L{AfterExit} the supervisor carries out.
"""

import os
import shutil
import signal
import sys

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import Interface, implementer

__all__ = ["Supervisor", "group_leader_argv", "exit_status", "IProcessSignaller",
           "ProcessGroupSignaller", "RestartWithBackoff", "OnExit", "AfterExit"]

_SETSID = shutil.which("setsid")
_SETSID_SHIM = "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"

# A line longer than this (no newline yet) is passed on in pieces.
MAX_LINE = 64 * 1024


def group_leader_argv(argv):
    """
    The argv that runs C{argv} as the leader of a new session and process group, with the
    same pid (see the module docstring).
    """
    if _SETSID:
        return [_SETSID, "--"] + list(argv)
    return [sys.executable, "-c", _SETSID_SHIM] + list(argv)


def exit_status(reason):
    """
    A process's end as a shell would report it.

    @param reason: the L{Failure} given to C{processExited}/C{processEnded}
        (L{ProcessDone} or L{ProcessTerminated}).
    @return: C{(code, signal)}: the exit code, or 128 + the signal number with C{signal} set
        when a signal killed it.
    """
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig is not None:
        return 128 + sig, sig
    code = getattr(value, "exitCode", None)
    return (1 if code is None else code), None


class IProcessSignaller(Interface):
    """Sends signals to whole process groups (the children run with C{kill_group})."""

    def signal_group(pgid, sig):
        """
        Send C{sig} to every process of the group C{pgid}.

        @param pgid: a process-group id (the pid of a child started by L{group_leader_argv}).
        @param sig: a signal number.
        @raise ProcessLookupError: no process is in that group (it has not been made yet, or
            it is empty).
        @raise OSError: any other refusal (C{PermissionError}, ...).
        """


@implementer(IProcessSignaller)
class ProcessGroupSignaller:
    """The real L{IProcessSignaller}: C{os.killpg}, and the only caller of it."""

    def signal_group(self, pgid, sig):
        os.killpg(pgid, sig)


@attrs.frozen
class AfterExit:
    """
    A policy's answer to a child's exit.

    @ivar action: C{"restart"} (after C{delay} seconds), C{"ignore"} (leave it ended) or
        C{"terminate"} (stop the sidecar with the child's exit code).
    @ivar delay: seconds before the restart, for C{"restart"}.
    """

    action: str
    delay: float = None


@attrs.define
class RestartWithBackoff:
    """
    The proxy's policy: restart it whenever it dies. A crash after a stable run (and the
    first crash) restarts it at once: traffic through a proxy that died once must come back
    within a second. Only repeated crashes back off: the next one after C{min_delay}
    seconds, doubling up to C{max_delay} while it keeps dying; a run of C{reset_after}
    seconds or more counts as stable again. One instance per child (it holds the next
    delay).
    """

    name = "restart"

    min_delay: float = 0.1
    max_delay: float = 30.0
    reset_after: float = 10.0
    _delay: float = attrs.field(init=False, default=None)

    def after_exit(self, code, uptime):
        """
        @param code: the exit code (unused: every exit is restarted).
        @param uptime: seconds the child ran.
        @return: an L{AfterExit} C{restart} with the delay.
        """
        if self._delay is None or uptime >= self.reset_after:
            delay = 0.0
            self._delay = self.min_delay
        else:
            delay = self._delay
            self._delay = min(delay * 2, self.max_delay)
        return AfterExit("restart", delay)


@attrs.frozen
class OnExit:
    """
    An app's policy (C{on_exit} of SPEC A5): C{ignore} leaves an app that ended alone,
    C{terminate} stops the sidecar with its exit code. Apps are never restarted.
    """

    name: str = attrs.field(default="ignore",
                            validator=attrs.validators.in_(("ignore", "terminate")))

    def after_exit(self, code, uptime):
        """@return: an L{AfterExit} whose action is this policy's name."""
        return AfterExit(self.name)


def _signame(sig):
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


class _Child:
    """One supervised command (across its restarts)."""

    def __init__(self, name, kind, argv, env, path, kill_group, policy, on_start=None):
        self.name = name
        self.kind = kind                # "proxy" | "app"
        self.argv = list(argv)
        self.env = env                  # dict, or None: the sidecar's environment
        self.path = path
        self.kill_group = kill_group
        self.policy = policy            # RestartWithBackoff | OnExit
        self.on_start = on_start
        self.proto = None               # the _ChildProtocol of the latest spawn
        self.wanted = True              # False once stopped: never (re)started again
        self.stopping = False           # a stop we asked for is under way
        self.spawns = 0
        self.restarts = 0
        self.restart_call = None
        self.last_exit = None
        self.last_signal = None

    @property
    def running(self):
        return self.proto is not None and not self.proto.exited

    @property
    def pid(self):
        if self.running and self.proto.transport is not None:
            return self.proto.transport.pid
        return None

    def spawn_argv(self):
        return group_leader_argv(self.argv) if self.kill_group else list(self.argv)


class _ChildProtocol(ProcessProtocol):
    """One spawn of a child: passes its output on line by line and reports its end."""

    def __init__(self, supervisor, child, started_at):
        self._supervisor = supervisor
        self.child = child
        self.started_at = started_at
        self.exited = False
        self.ended = False
        self.escalation = None          # the IDelayedCall of the next stop signal
        self.linger = None              # closes our pipe ends if a grandchild holds them
        self.pid = None                 # the pid spawned (the transport forgets it at exit)
        self.waiters = []               # Deferreds fired at processEnded
        self._buffers = {}

    def childDataReceived(self, childFD, data):
        buffered = self._buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        for line in lines:
            self._emit(line)
        while len(rest) > MAX_LINE:
            self._emit(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._buffers[childFD] = rest

    def childConnectionLost(self, childFD):
        self._flush(childFD)

    def processExited(self, reason):
        if not self.exited:
            self.exited = True
            self._supervisor._exited(self, reason)

    def processEnded(self, reason):
        self.processExited(reason)      # for transports that only call processEnded
        for fd in list(self._buffers):
            self._flush(fd)
        self.ended = True
        self._supervisor._ended(self)

    def _flush(self, childFD):
        rest = self._buffers.pop(childFD, b"")
        if rest:
            self._emit(rest)

    def _emit(self, line):
        text = line.decode("utf-8", "replace")
        if text.endswith("\r"):
            text = text[:-1]
        self._supervisor._output_line(self.child.name, text)


class Supervisor(Service):
    """
    Runs the proxy and the apps (see the module docstring).

    Stopping (L{stopService}) stops the apps, then the proxy, and fires when every child has
    exited; nothing is restarted once a stop began.

    @ivar min_restart_delay: the proxy's restart delay after a second crash in a row, in
        seconds (the default of its L{RestartWithBackoff}; the first crash restarts it at
        once).
    @ivar max_restart_delay: the restart delay doubles up to this.
    @ivar reset_after: a proxy that stayed up this long is restarted at once again.
    @ivar output_linger: after a child exited, how long to wait for the end of its output
        before closing our ends of its pipes (a grandchild may hold them open).
    """

    log = Logger()
    min_restart_delay = 0.1
    max_restart_delay = 30.0
    reset_after = 10.0
    output_linger = 1.0

    def __init__(self, reactor, signaller, on_terminate=None, output=None, kill_grace=10.0,
                 environ=None):
        """
        @param reactor: an L{IReactorProcess} and L{IReactorTime} provider.
        @param signaller: the L{IProcessSignaller} that signals C{kill_group} children's
            process groups (L{ProcessGroupSignaller}; tests give
            L{amalgam8.testing.process.FakeSignaller}).
        @param on_terminate: called with the exit code (128 + signal for a signal death) when
            an app with C{on_exit: terminate} exits on its own (also after L{forward}); the
            sidecar then stops everything and exits with that code. Called at most once, and
            not for exits caused by L{stop_apps} or L{stopService}.
        @param output: C{callable(name, line)} for every line a child writes to stdout or
            stderr; the default logs one event per line, prefixed with the child's name.
        @param kill_grace: seconds between one stop signal and the next (TERM, then KILL).
        @param environ: the sidecar's environment given to the children (default
            C{os.environ}, read at each spawn).
        """
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._signaller = signaller
        self._on_terminate = on_terminate
        self._output = output if output is not None else self._log_line
        self.kill_grace = kill_grace
        self._environ = environ
        self._children = {}             # name -> _Child, in the order added
        self._proxy = None
        self._apps_started = False
        self._apps_stopped = False
        self._terminated = False
        self._deadline = None           # the earliest deadline a stop was given

    # -- adding children ---------------------------------------------------------------

    def add_proxy(self, argv, env=None, path=None, on_start=None, name="proxy",
                  kill_group=False, policy=None):
        """
        The proxy: spawned when the service starts (at once if it runs), restarted whenever
        it dies (at once, then with exponential backoff while it keeps dying); C{on_start()} is called after each spawn.

        With C{kill_group}, it runs as the leader of its own process group, and whenever it
        exits whatever is left of that group is killed before the restart: nginx workers
        outlive a master that was killed with SIGKILL, keep its ports, and the restarted
        nginx could never bind them.

        @param argv: the command line (C{argv[0]} is looked up on the PATH).
        @param env: its environment (default: the sidecar's).
        @param path: its working directory (default: ours).
        @param policy: what to do when it exits (default: a L{RestartWithBackoff} with this
            supervisor's C{min_restart_delay}, C{max_restart_delay} and C{reset_after}).
        """
        if self._proxy is not None:
            raise ValueError("the proxy was added already")
        if name in self._children:
            raise ValueError("a child named {!r} exists already".format(name))
        if policy is None:
            policy = RestartWithBackoff(self.min_restart_delay, self.max_restart_delay,
                                        self.reset_after)
        child = _Child(name, "proxy", argv, None if env is None else dict(env), path,
                       kill_group=kill_group, policy=policy, on_start=on_start)
        self._proxy = child
        self._children[name] = child
        if self.running:
            self._spawn(child)
        return child.name

    def add_app(self, command, name=None):
        """
        An app (a L{amalgam8.sidecar.config.Command}), started by L{start_apps} (at once if
        that happened already) with the sidecar's environment plus the command's C{env}.

        @param name: the prefix of its output lines; default the basename of C{cmd[0]}, made
            unique with a C{-2}, C{-3}... suffix.
        @return: the name.
        """
        if name is None:
            base = os.path.basename(command.cmd[0]) or "app"
            name, n = base, 1
            while name in self._children:
                n += 1
                name = "{}-{}".format(base, n)
        elif name in self._children:
            raise ValueError("a child named {!r} exists already".format(name))
        env = {}
        for entry in command.env:
            key, _, value = entry.partition("=")
            env[key] = value
        child = _Child(name, "app", command.cmd, env, None, kill_group=command.kill_group,
                       policy=OnExit(command.on_exit))
        self._children[name] = child
        if self.running and self._apps_started and not self._apps_stopped:
            self._spawn(child)
        return name

    # -- running -----------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        if self._proxy is not None and self._proxy.wanted and not self._proxy.running:
            self._spawn(self._proxy)
        if self._apps_started:
            self._start_apps()

    def start_apps(self):
        """Start the apps (once the proxy holds its first state, SPEC B4). Idempotent."""
        self._apps_started = True
        if self.running:
            self._start_apps()

    def _start_apps(self):
        if self._apps_stopped:
            return
        for child in self._apps():
            if child.wanted and child.spawns == 0:
                self._spawn(child)

    def _apps(self):
        return [c for c in self._children.values() if c.kind == "app"]

    def _env(self, child):
        if child.kind == "proxy" and child.env is not None:
            return dict(child.env)
        env = dict(os.environ if self._environ is None else self._environ)
        if child.kind == "app":
            env.update(child.env)
        return env

    def _spawn(self, child):
        child.restart_call = None
        child.spawns += 1
        proto = _ChildProtocol(self, child, self._clock.seconds())
        child.proto = proto
        argv = child.spawn_argv()
        try:
            self._reactor.spawnProcess(proto, argv[0], argv, env=self._env(child),
                                       path=child.path, childFDs={0: "w", 1: "r", 2: "r"})
        except Exception as e:
            child.proto = None
            self.log.error("cannot start {name} ({argv}): {why}", name=child.name,
                           argv=" ".join(child.argv), why=str(e) or e.__class__.__name__)
            self._handle_exit(child, 127, None, uptime=0.0)
            return
        proto.pid = getattr(proto.transport, "pid", None)
        if proto.exited:            # it ended inside spawnProcess
            return
        self.log.info("started {name} (pid {pid}): {argv}", name=child.name, pid=child.pid,
                      argv=" ".join(child.argv))
        if child.on_start is not None:
            d = maybeDeferred(child.on_start)
            d.addErrback(lambda f: self.log.failure("{name}: on_start failed", f,
                                                    name=child.name))

    def _exited(self, proto, reason):
        child = proto.child
        code, sig = exit_status(reason)
        if child.kind == "proxy" and child.kill_group and proto.pid:
            self._kill_leftovers(proto)
        if proto.escalation is not None and proto.escalation.active():
            proto.escalation.cancel()
        proto.escalation = None
        if not proto.ended:
            transport = proto.transport
            if transport is not None:
                proto.linger = self._clock.callLater(self.output_linger,
                                                     self._close_pipes, proto)
        if proto is not child.proto:
            return
        self._handle_exit(child, code, sig, uptime=self._clock.seconds() - proto.started_at)

    def _kill_leftovers(self, proto):
        """The proxy's leader exited: SIGKILL what is left of its group (orphaned workers)."""
        try:
            self._signaller.signal_group(proto.pid, signal.SIGKILL)
        except ProcessLookupError:
            return                      # nothing left: the usual case
        except OSError as e:
            self.log.warn("cannot kill what is left of {name}: {why}", name=proto.child.name,
                          why=str(e))
            return
        self.log.warn("killed what was left of {name} (process group {pgid})",
                      name=proto.child.name, pgid=proto.pid)

    def _close_pipes(self, proto):
        proto.linger = None
        try:
            proto.transport.loseConnection()
        except Exception:
            self.log.failure("{name}: closing its pipes failed", name=proto.child.name)

    def _ended(self, proto):
        if proto.linger is not None and proto.linger.active():
            proto.linger.cancel()
        proto.linger = None
        waiters, proto.waiters = proto.waiters, []
        for d in waiters:
            if not d.called:            # a waiter may have been cancelled (a timeout)
                d.callback(None)

    def _handle_exit(self, child, code, sig, uptime):
        child.last_exit, child.last_signal = code, sig
        how = "was killed by {}".format(_signame(sig)) if sig is not None else \
            "exited with code {}".format(code)
        if child.stopping or not child.wanted:
            self.log.info("{name} {how}", name=child.name, how=how, code=code, signal=sig)
            return
        verdict = child.policy.after_exit(code, uptime)
        if verdict.action == "restart" and not self.running:
            self.log.info("{name} {how}", name=child.name, how=how, code=code, signal=sig)
        elif verdict.action == "restart":
            self.log.warn("{name} {how}; restarting in {delay} s", name=child.name, how=how,
                          code=code, signal=sig, delay=verdict.delay)
            child.restart_call = self._clock.callLater(verdict.delay, self._restart, child)
        elif verdict.action == "terminate":
            log = self.log.info if code == 0 else self.log.warn
            log("{name} {how}; stopping (on_exit: terminate)", name=child.name, how=how,
                code=code, signal=sig)
            if not self._terminated and self._on_terminate is not None:
                self._terminated = True
                try:
                    self._on_terminate(code)
                except Exception:
                    self.log.failure("on_terminate({code}) failed", code=code)
        else:
            log = self.log.info if code == 0 else self.log.warn
            log("{name} {how}; not restarted (on_exit: ignore)", name=child.name, how=how,
                code=code, signal=sig)

    def _restart(self, child):
        child.restart_call = None
        if not (self.running and child.wanted) or child.running:
            return
        child.restarts += 1
        self._spawn(child)

    @property
    def proxy_restarts(self):
        """How often the proxy was restarted."""
        return self._proxy.restarts if self._proxy is not None else 0

    # -- signals and stopping ----------------------------------------------------------

    def _signal(self, child, sig, group=True):
        """
        Send C{sig} to the child (its whole group with kill_group, unless C{group} is false);
        False if it is gone.
        """
        proto = child.proto
        if proto is None or proto.exited or proto.transport is None:
            return False
        pid = proto.transport.pid
        if group and child.kill_group and pid:
            try:
                self._signaller.signal_group(pid, sig)
                return True
            except ProcessLookupError:
                pass                    # setsid has not run yet: signal the pid itself
            except PermissionError as e:
                self.log.warn("cannot signal the group of {name}: {why}", name=child.name,
                              why=str(e))
        try:
            proto.transport.signalProcess(sig)
        except ProcessExitedAlready:
            return False
        except OSError as e:
            self.log.warn("cannot signal {name}: {why}", name=child.name, why=str(e))
            return False
        return True

    def signal_proxy(self, sig):
        """
        Send C{sig} to the proxy's own process, not to its group (C{SIGUSR1}: nginx's master
        reopens its log files and tells its workers).

        @return: whether it was sent (False without a running proxy).
        """
        if self._proxy is None:
            return False
        return self._signal(self._proxy, sig, group=False)

    def forward(self, sig):
        """Forward a signal (such as SIGTERM or SIGINT) to every running app."""
        for child in self._apps():
            if child.running:
                self.log.info("forwarding {signal} to {name}", signal=_signame(sig),
                              name=child.name)
                self._signal(child, sig)

    def _stop_child(self, child, signals, deadline):
        """
        Stop a child for good: send C{signals} in turn, C{kill_grace} apart, jumping to the
        last one (KILL) at C{deadline}.

        @return: a Deferred fired once it has ended.
        """
        child.wanted = False
        if child.restart_call is not None and child.restart_call.active():
            child.restart_call.cancel()
        child.restart_call = None
        proto = child.proto
        if proto is None or proto.ended:
            return succeed(None)
        d = Deferred()
        proto.waiters.append(d)
        if not proto.exited and not child.stopping:
            child.stopping = True
            self._escalate(proto, list(signals), deadline)
        return d

    def _escalate(self, proto, signals, deadline):
        proto.escalation = None
        if proto.exited:
            return
        sig, rest = signals[0], signals[1:]
        self.log.info("sending {signal} to {name}", signal=_signame(sig),
                      name=proto.child.name)
        self._signal(proto.child, sig)
        if rest:
            now = self._clock.seconds()
            at = now + self.kill_grace
            if deadline is not None and deadline < at:
                at, rest = deadline, rest[-1:]
            proto.escalation = self._clock.callLater(max(0.0, at - now), self._escalate,
                                                     proto, rest, deadline)

    async def stop_apps(self, deadline=None):
        """
        Stop every app for good: TERM (to the group with kill_group), KILL after
        C{kill_grace} or at C{deadline}, whichever comes first. Apps not started yet never
        will be. Cancelling the returned coroutine's Deferred stops the waiting, not the
        signals.

        @param deadline: an absolute time on the reactor's clock (C{reactor.seconds()}), or
            None; an earlier deadline given before still holds.
        @return: (a coroutine) done when every app has exited.
        """
        self._apps_stopped = True
        deadline = self._note_deadline(deadline)
        await gatherResults([self._stop_child(child, (signal.SIGTERM, signal.SIGKILL),
                                              deadline) for child in self._apps()],
                            consumeErrors=True)

    async def stop_proxy(self, deadline=None):
        """
        Stop the proxy for good: QUIT (nginx's graceful shutdown), TERM (fast shutdown) after
        C{kill_grace}, KILL after another C{kill_grace}; at C{deadline} straight to KILL.

        @param deadline: as for L{stop_apps}.
        """
        deadline = self._note_deadline(deadline)
        if self._proxy is not None:
            await self._stop_child(self._proxy, (signal.SIGQUIT, signal.SIGTERM,
                                                 signal.SIGKILL), deadline)

    def limit(self, deadline):
        """
        Bound every stop from now on by C{deadline}, an absolute time on the reactor's clock
        (the earliest deadline given holds: SPEC B4's one deadline for the whole stop).
        """
        self._note_deadline(deadline)

    def _note_deadline(self, deadline):
        """Remember the earliest deadline given; return it (one deadline for the stop)."""
        if deadline is not None and (self._deadline is None or deadline < self._deadline):
            self._deadline = deadline
        return self._deadline

    def stopService(self):
        """
        Stop the apps, then the proxy; restart nothing. A deadline given earlier to
        L{stop_apps} or L{stop_proxy} still holds (SPEC B4: one deadline for the whole stop).

        @return: a Deferred fired once every child has exited.
        """
        Service.stopService(self)
        for child in self._children.values():
            if child.restart_call is not None and child.restart_call.active():
                child.restart_call.cancel()
            child.restart_call = None
        return Deferred.fromCoroutine(self._stop_all())

    async def _stop_all(self):
        await self.stop_apps()
        await self.stop_proxy()

    # -- output and state --------------------------------------------------------------

    def _log_line(self, name, line):
        self.log.info("{name}: {line}", name=name, line=line)

    def _output_line(self, name, line):
        try:
            self._output(name, line)
        except Exception:
            self.log.failure("passing on a line of {name} failed", name=name)

    def state(self):
        """
        For the debug API: one dict per child, in the order added: C{name}, C{kind}
        (C{proxy} or C{app}), C{pid} (None unless running), C{running}, C{restarts},
        C{last_exit} (exit code, 128 + signal for a signal death; None before any exit),
        C{last_signal}, C{argv}, C{on_exit}, C{kill_group}.
        """
        return [{
            "name": c.name,
            "kind": c.kind,
            "pid": c.pid,
            "running": c.running,
            "restarts": c.restarts,
            "last_exit": c.last_exit,
            "last_signal": c.last_signal,
            "argv": list(c.argv),
            "on_exit": c.policy.name,
            "kill_group": c.kill_group,
        } for c in self._children.values()]
