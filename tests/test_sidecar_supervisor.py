"""
The sidecar's supervisor of the proxy and the apps (SPEC A5 supervision, B4 start order),
driven by a fake process reactor and its clock; one test runs a real child process.
"""

import signal
import sys

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from amalgam8.sidecar import supervisor as supervisor_module
from amalgam8.sidecar.config import Command
from amalgam8.sidecar.supervisor import (
    AfterExit,
    IProcessSignaller,
    OnExit,
    ProcessGroupSignaller,
    RestartWithBackoff,
    Supervisor,
    exit_status,
    group_leader_argv,
)
from amalgam8.testing.process import FIRST_PID, PID_MAX_LIMIT, FakeProcessReactor, FakeSignaller

NGINX = ["nginx", "-p", "/run/a8", "-c", "nginx.conf"]
ENVIRON = {"PATH": "/usr/bin:/bin", "HOME": "/home/app"}


class SupervisorTestsMixin:

    def setUp(self):
        # Signals end nothing by themselves: each test decides when a child exits.
        self.reactor = FakeProcessReactor(signal_exit_delays={})
        self.lines = []
        self.terminated = []
        # Group signals are recorded, not delivered: self.killpg lists them.
        self.signaller = FakeSignaller()
        self.killpg = self.signaller.sent
        self.supervisor = Supervisor(self.reactor, self.signaller,
                                     on_terminate=self.terminated.append,
                                     output=lambda name, line: self.lines.append((name, line)),
                                     kill_grace=10, environ=ENVIRON)

    def spawned(self, name):
        """The processes spawned so far for the child named C{name}."""
        return [p for p in self.reactor.processes if p.protocol.child.name == name]

    def last(self, name):
        return self.spawned(name)[-1]

    def stop(self):
        """stopService with every child exiting as soon as it is signalled."""
        d = self.supervisor.stopService()
        for _ in range(3):
            for process in [p for p in self.reactor.processes if p.running]:
                signals = process.signals + [s for pid, s in self.killpg if pid == process.pid]
                if signals:
                    process.end(signal=signals[0])
        return d


class ProxyTests(SupervisorTestsMixin, SynchronousTestCase):
    """The proxy child: spawned on start, restarted with backoff, on_start after each spawn."""

    def test_is_a_service(self):
        """The supervisor provides IService."""
        self.assertTrue(verifyObject(IService, self.supervisor))

    def test_spawned_when_the_service_starts(self):
        """The proxy is spawned by startService with its argv, env, path and piped stdio."""
        self.supervisor.add_proxy(NGINX, env={"A": "1"}, path="/run/a8")
        self.assertEqual(self.reactor.processes, [])
        self.supervisor.startService()
        [process] = self.reactor.processes
        self.assertEqual((process.executable, process.args), ("nginx", NGINX))
        self.assertEqual(process.env, {"A": "1"})
        self.assertEqual(process.path, "/run/a8")
        self.assertEqual(process.childFDs, {0: "w", 1: "r", 2: "r"})

    def test_default_environment_is_the_sidecars(self):
        """Without env the proxy gets the sidecar's environment."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.startService()
        self.assertEqual(self.reactor.processes[0].env, ENVIRON)

    def test_added_while_running_spawns_at_once(self):
        """add_proxy on a running supervisor spawns the proxy at once."""
        self.supervisor.startService()
        self.supervisor.add_proxy(NGINX)
        self.assertEqual(len(self.spawned("proxy")), 1)

    def test_only_one_proxy(self):
        """A second add_proxy is refused."""
        self.supervisor.add_proxy(NGINX)
        self.assertRaises(ValueError, self.supervisor.add_proxy, NGINX)

    def test_restart_backoff(self):
        """
        A proxy that keeps dying is restarted at once, then after 0.1, 0.2, 0.4... seconds up
        to 30, and each restart is counted.
        """
        self.supervisor.add_proxy(NGINX)
        self.supervisor.startService()
        delays = [0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]
        for n, delay in enumerate(delays, start=1):
            self.last("proxy").end(1)
            if delay:
                self.reactor.advance(delay - 0.001)
                self.assertEqual(len(self.spawned("proxy")), n,
                                 "restarted before {}s".format(delay))
                self.reactor.advance(0.002)     # the clock's sums are not exact
            else:
                self.assertEqual(len(self.spawned("proxy")), n, "restarted inside the exit")
                self.reactor.advance(0)
            self.assertEqual(len(self.spawned("proxy")), n + 1, "not restarted after {}s"
                             .format(delay))
            self.assertEqual(self.supervisor.proxy_restarts, n)

    def test_backoff_resets_after_staying_up(self):
        """A proxy that stayed up 10 seconds is restarted at once again."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.startService()
        for delay in (0, 0.1, 0.2):
            self.last("proxy").end(signal=signal.SIGKILL)
            self.reactor.advance(delay)
        self.assertEqual(len(self.spawned("proxy")), 4)
        self.reactor.advance(10)
        self.last("proxy").end(1)
        self.reactor.advance(0)
        self.assertEqual(len(self.spawned("proxy")), 5)
        self.last("proxy").end(1)
        self.reactor.advance(0.099)
        self.assertEqual(len(self.spawned("proxy")), 5, "a second crash in a row backs off")
        self.reactor.advance(0.001)
        self.assertEqual(len(self.spawned("proxy")), 6)

    def test_a_short_run_keeps_the_backoff(self):
        """A proxy that lived less than 10 seconds does not reset the backoff."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.startService()
        self.last("proxy").end(1)
        self.reactor.advance(0)
        self.reactor.advance(9.5)
        self.last("proxy").end(1)
        self.reactor.advance(0.099)
        self.assertEqual(len(self.spawned("proxy")), 2)
        self.reactor.advance(0.001)
        self.assertEqual(len(self.spawned("proxy")), 3)

    def test_on_start_after_each_spawn(self):
        """on_start is called after the first spawn and after every restart."""
        calls = []
        self.supervisor.add_proxy(NGINX, on_start=lambda: calls.append(
            len(self.reactor.processes)))
        self.supervisor.startService()
        self.assertEqual(calls, [1])
        self.last("proxy").end(1)
        self.assertEqual(calls, [1])
        self.reactor.advance(0)
        self.assertEqual(calls, [1, 2])

    def test_on_start_failure_is_logged(self):
        """An on_start that fails (also asynchronously) is logged; the proxy keeps running."""
        self.supervisor.add_proxy(NGINX, on_start=lambda: 1 / 0)
        self.supervisor.startService()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(self.supervisor.state()[0]["running"])

    def test_spawn_failure_is_retried_with_backoff(self):
        """A proxy that cannot be spawned at all is retried with the same backoff."""
        self.supervisor.add_proxy(NGINX)
        self.reactor.spawn_error = FileNotFoundError(2, "No such file or directory")
        self.supervisor.startService()
        self.reactor.advance(0)
        self.assertEqual(self.supervisor.proxy_restarts, 1)
        self.reactor.advance(0.1)
        self.assertEqual(self.supervisor.proxy_restarts, 2)
        self.assertEqual(self.supervisor.state()[0]["last_exit"], 127)
        self.reactor.advance(0.199)
        self.assertEqual(self.supervisor.proxy_restarts, 2)
        self.reactor.spawn_error = None
        self.reactor.advance(0.001)
        self.assertEqual(len(self.spawned("proxy")), 1)
        self.assertTrue(self.supervisor.state()[0]["running"])

    def test_stop_proxy_quit_term_kill(self):
        """stop_proxy sends QUIT, TERM after the grace period, KILL after another one."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.startService()
        d = Deferred.fromCoroutine(self.supervisor.stop_proxy())
        process = self.last("proxy")
        self.assertEqual(process.signals, [signal.SIGQUIT])
        self.reactor.advance(10)
        self.assertEqual(process.signals, [signal.SIGQUIT, signal.SIGTERM])
        self.reactor.advance(10)
        self.assertEqual(process.signals, [signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(d)
        process.end(signal=signal.SIGKILL)
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.spawned("proxy")), 1)

    def test_stop_proxy_graceful(self):
        """A proxy that exits after QUIT gets no further signal and is not restarted."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.startService()
        d = Deferred.fromCoroutine(self.supervisor.stop_proxy())
        self.reactor.advance(3)
        self.last("proxy").end(0)
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertEqual(self.last("proxy").signals, [signal.SIGQUIT])
        self.assertEqual(len(self.spawned("proxy")), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_proxy_deadline(self):
        """At the deadline the proxy gets KILL, whatever is left of the grace periods."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.startService()
        self.reactor.advance(100)
        Deferred.fromCoroutine(self.supervisor.stop_proxy(deadline=104))
        self.reactor.advance(3.999)
        self.assertEqual(self.last("proxy").signals, [signal.SIGQUIT])
        self.reactor.advance(0.001)
        self.assertEqual(self.last("proxy").signals, [signal.SIGQUIT, signal.SIGKILL])
        self.last("proxy").end(signal=signal.SIGKILL)

    def test_kill_group_proxy_leftovers_are_killed(self):
        """
        A kill_group proxy runs as a group leader; when it dies, what is left of its group
        (nginx workers orphaned by a killed master, which keep its ports) gets SIGKILL before
        the restart. Stop signals go to the group.
        """
        self.supervisor.add_proxy(NGINX, kill_group=True)
        self.supervisor.startService()
        first = self.last("proxy")
        self.assertEqual(first.args, group_leader_argv(NGINX))
        pid = first.pid
        first.end(signal=signal.SIGKILL)
        self.assertEqual(self.killpg, [(pid, signal.SIGKILL)])
        self.reactor.advance(1)
        second = self.last("proxy")
        self.assertIsNot(second, first)
        Deferred.fromCoroutine(self.supervisor.stop_proxy())
        self.assertEqual(self.killpg[1:], [(second.pid, signal.SIGQUIT)])

    def test_proxy_without_kill_group_leaves_groups_alone(self):
        """A proxy added without kill_group is never signalled as a group."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.startService()
        self.last("proxy").end(1)
        self.reactor.advance(1)
        Deferred.fromCoroutine(self.supervisor.stop_proxy())
        self.assertEqual(self.killpg, [])


class AppTests(SupervisorTestsMixin, SynchronousTestCase):
    """App children: started by start_apps, output passed on, on_exit policies, signals."""

    def test_not_started_before_start_apps(self):
        """Apps wait for start_apps (SPEC B4); the proxy does not."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.add_app(Command(("app", "--serve")))
        self.supervisor.startService()
        self.assertEqual([p.protocol.child.name for p in self.reactor.processes], ["proxy"])
        self.supervisor.start_apps()
        [app] = self.spawned("app")
        self.assertEqual((app.executable, app.args), ("app", ["app", "--serve"]))
        self.assertEqual(app.childFDs, {0: "w", 1: "r", 2: "r"})
        self.supervisor.start_apps()
        self.assertEqual(len(self.spawned("app")), 1)

    def test_start_apps_before_the_service_starts(self):
        """start_apps on a stopped supervisor starts the apps with the service."""
        self.supervisor.add_app(Command(("app",)))
        self.supervisor.start_apps()
        self.assertEqual(self.reactor.processes, [])
        self.supervisor.startService()
        self.assertEqual(len(self.spawned("app")), 1)

    def test_added_after_start_apps_starts_at_once(self):
        """An app added after start_apps starts at once."""
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.supervisor.add_app(Command(("worker",)))
        self.assertEqual(len(self.spawned("worker")), 1)

    def test_environment(self):
        """An app runs with the sidecar's environment plus its NAME=value entries."""
        self.supervisor.add_app(Command(("app",), env=("MODE=a=b", "HOME=/srv")))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.assertEqual(self.last("app").env,
                         {"PATH": "/usr/bin:/bin", "HOME": "/srv", "MODE": "a=b"})

    def test_names(self):
        """Default names are the command's basename, made unique; given names must be."""
        sup = self.supervisor
        self.assertEqual(sup.add_app(Command(("/usr/bin/python3", "a.py"))), "python3")
        self.assertEqual(sup.add_app(Command(("python3", "b.py"))), "python3-2")
        self.assertEqual(sup.add_app(Command(("x",)), name="web"), "web")
        self.assertRaises(ValueError, sup.add_app, Command(("y",)), name="web")

    def test_output_lines_with_prefix(self):
        """Output is passed on whole line by line, across chunks, from stdout and stderr."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.add_app(Command(("app",)), name="web")
        self.supervisor.startService()
        self.supervisor.start_apps()
        web, proxy = self.last("web"), self.last("proxy")
        web.output(b"hel")
        web.output(b"lo\r\nwor")
        proxy.output(b"[error] nope\n", fd=2)
        web.output(b"ld\n\n\xff!\npart")
        self.assertEqual(self.lines, [("web", "hello"), ("proxy", "[error] nope"),
                                      ("web", "world"), ("web", ""), ("web", "\ufffd!")])
        web.end(0)
        self.assertEqual(self.lines[-1], ("web", "part"))

    def test_overlong_line_is_split(self):
        """A line with no end in sight is passed on in 64 KiB pieces."""
        self.supervisor.add_app(Command(("app",)))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.last("app").output(b"x" * (supervisor_module.MAX_LINE + 5))
        self.assertEqual(self.lines, [("app", "x" * supervisor_module.MAX_LINE)])

    def test_default_output_is_a_log_event_per_line(self):
        """Without an output callable, each line is a log event prefixed with the name."""
        supervisor = Supervisor(self.reactor, self.signaller, environ=ENVIRON)
        supervisor.add_app(Command(("app",)), name="web")
        supervisor.startService()
        supervisor.start_apps()
        with capturedLogs() as events:
            self.last("web").output(b"a {b}\nc\n")
        lines = [e for e in events if e.get("line") is not None]
        self.assertEqual([formatEvent(e) for e in lines], ["web: a {b}", "web: c"])
        self.assertEqual([(e["name"], e["log_level"]) for e in lines],
                         [("web", LogLevel.info)] * 2)

    def test_on_exit_ignore(self):
        """An on_exit: ignore app that exits is logged, not restarted, and stops nothing."""
        self.supervisor.add_app(Command(("app",), on_exit="ignore"))
        self.supervisor.startService()
        self.supervisor.start_apps()
        with capturedLogs() as events:
            self.last("app").end(2)
        self.reactor.advance(100)
        self.assertEqual(len(self.spawned("app")), 1)
        self.assertEqual(self.terminated, [])
        self.assertIn("app exited with code 2; not restarted (on_exit: ignore)",
                      [formatEvent(e) for e in events])
        state = self.supervisor.state()[0]
        self.assertEqual((state["running"], state["pid"], state["last_exit"]), (False, None, 2))

    def test_on_exit_terminate(self):
        """An on_exit: terminate app's exit calls on_terminate with its exit code."""
        self.supervisor.add_app(Command(("app",), on_exit="terminate"))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.last("app").end(3)
        self.assertEqual(self.terminated, [3])
        self.assertEqual(len(self.spawned("app")), 1)

    def test_on_exit_terminate_success(self):
        """A clean exit of an on_exit: terminate app calls on_terminate(0)."""
        self.supervisor.add_app(Command(("app",), on_exit="terminate"))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.last("app").end(0)
        self.assertEqual(self.terminated, [0])

    def test_on_exit_terminate_signal(self):
        """An app killed by a signal maps to 128 + the signal number."""
        self.supervisor.add_app(Command(("app",), on_exit="terminate"))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.last("app").end(signal=signal.SIGKILL)
        self.assertEqual(self.terminated, [128 + 9])
        self.assertEqual(self.supervisor.state()[0]["last_signal"], signal.SIGKILL)

    def test_on_terminate_once(self):
        """on_terminate is called once, for the first terminate app that exits."""
        self.supervisor.add_app(Command(("a",), on_exit="terminate"))
        self.supervisor.add_app(Command(("b",), on_exit="terminate"))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.last("b").end(4)
        self.last("a").end(5)
        self.assertEqual(self.terminated, [4])

    def test_spawn_failure_of_a_terminate_app(self):
        """An app that cannot be spawned counts as exit code 127."""
        self.supervisor.add_app(Command(("missing",), on_exit="terminate"))
        self.supervisor.startService()
        self.reactor.spawn_error = FileNotFoundError(2, "No such file or directory")
        self.supervisor.start_apps()
        self.assertEqual(self.terminated, [127])
        self.reactor.spawn_error = None
        self.supervisor.start_apps()
        self.assertEqual(self.reactor.processes, [])

    def test_kill_group_spawns_a_group_leader(self):
        """A kill_group app runs through setsid (or its shim), as a group leader."""
        self.supervisor.add_app(Command(("app", "-x"), kill_group=True))
        self.supervisor.startService()
        self.supervisor.start_apps()
        process = self.last("app")
        self.assertEqual(process.args, group_leader_argv(["app", "-x"]))
        self.assertEqual(process.executable, process.args[0])
        self.assertEqual(self.supervisor.state()[0]["argv"], ["app", "-x"])

    def test_group_leader_argv(self):
        """setsid when it is installed, else a python shim that calls os.setsid."""
        self.patch(supervisor_module, "_SETSID", "/usr/bin/setsid")
        self.assertEqual(group_leader_argv(("-app", "x")),
                         ["/usr/bin/setsid", "--", "-app", "x"])
        self.patch(supervisor_module, "_SETSID", None)
        argv = group_leader_argv(("app", "x"))
        self.assertEqual(argv[0], sys.executable)
        self.assertEqual(argv[-2:], ["app", "x"])
        self.assertIn("os.setsid()", argv[2])

    def test_kill_group_signals_go_to_the_group(self):
        """Signals to a kill_group app go to its process group, not to the pid."""
        self.supervisor.add_app(Command(("app",), kill_group=True))
        self.supervisor.startService()
        self.supervisor.start_apps()
        process = self.last("app")
        pid = process.pid
        self.supervisor.forward(signal.SIGINT)
        d = Deferred.fromCoroutine(self.supervisor.stop_apps())
        self.reactor.advance(10)
        self.assertEqual(self.killpg, [(pid, signal.SIGINT), (pid, signal.SIGTERM),
                                       (pid, signal.SIGKILL)])
        self.assertEqual(process.signals, [])
        process.end(signal=signal.SIGKILL)
        self.successResultOf(d)

    def test_kill_group_before_setsid_ran(self):
        """If the group does not exist yet, the signal goes to the pid."""
        self.signaller.missing = True
        self.supervisor.add_app(Command(("app",), kill_group=True))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.supervisor.forward(signal.SIGTERM)
        self.assertEqual(self.last("app").signals, [signal.SIGTERM])

    def test_forward(self):
        """forward sends the signal to every running app, but not to the proxy."""
        self.supervisor.add_proxy(NGINX)
        self.supervisor.add_app(Command(("a",)))
        self.supervisor.add_app(Command(("b",)))
        self.supervisor.add_app(Command(("gone",)))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.last("gone").end(0)
        self.supervisor.forward(signal.SIGTERM)
        self.assertEqual(self.last("a").signals, [signal.SIGTERM])
        self.assertEqual(self.last("b").signals, [signal.SIGTERM])
        self.assertEqual(self.last("gone").signals, [])
        self.assertEqual(self.last("proxy").signals, [])
        self.assertEqual(self.killpg, [])

    def test_forwarded_exit_terminates(self):
        """A terminate app that exits after a forwarded SIGTERM calls on_terminate."""
        self.supervisor.add_app(Command(("app",), on_exit="terminate"))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.supervisor.forward(signal.SIGTERM)
        self.last("app").end(signal=signal.SIGTERM)
        self.assertEqual(self.terminated, [128 + 15])

    def test_stop_apps_term_then_kill(self):
        """stop_apps sends TERM, then KILL after the grace period, and waits for the exit."""
        self.supervisor.add_app(Command(("app",)))
        self.supervisor.startService()
        self.supervisor.start_apps()
        process = self.last("app")
        d = Deferred.fromCoroutine(self.supervisor.stop_apps())
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.reactor.advance(9.999)
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.reactor.advance(0.001)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(d)
        process.end(signal=signal.SIGKILL)
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_apps_exit_after_term(self):
        """An app that exits after TERM gets no KILL."""
        self.supervisor.add_app(Command(("app",), on_exit="terminate"))
        self.supervisor.startService()
        self.supervisor.start_apps()
        d = Deferred.fromCoroutine(self.supervisor.stop_apps())
        self.last("app").end(0)
        self.successResultOf(d)
        self.reactor.advance(100)
        self.assertEqual(self.last("app").signals, [signal.SIGTERM])
        self.assertEqual(self.terminated, [], "a stop we asked for is not an app's exit")

    def test_stop_apps_kill_at_the_deadline(self):
        """With a deadline before the grace period ends, KILL comes at the deadline."""
        self.supervisor = Supervisor(self.reactor, self.signaller, kill_grace=10, environ=ENVIRON,
                                     output=lambda *a: None)
        self.supervisor.add_app(Command(("app",)))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.reactor.advance(50)
        Deferred.fromCoroutine(self.supervisor.stop_apps(deadline=52))
        self.reactor.advance(1.999)
        self.assertEqual(self.last("app").signals, [signal.SIGTERM])
        self.reactor.advance(0.001)
        self.assertEqual(self.last("app").signals, [signal.SIGTERM, signal.SIGKILL])
        self.last("app").end(signal=signal.SIGKILL)

    def test_stop_apps_waits_for_every_app(self):
        """stop_apps stops the apps together and fires when the last has exited."""
        for name in ("a", "b"):
            self.supervisor.add_app(Command((name,)))
        self.supervisor.startService()
        self.supervisor.start_apps()
        d = Deferred.fromCoroutine(self.supervisor.stop_apps())
        self.assertEqual([self.last(n).signals for n in "ab"], [[signal.SIGTERM]] * 2)
        self.last("b").end(0)
        self.assertNoResult(d)
        self.last("a").end(0)
        self.successResultOf(d)

    def test_stop_apps_before_start_apps(self):
        """Apps stopped before they started never start."""
        self.supervisor.add_app(Command(("app",)))
        self.supervisor.startService()
        self.successResultOf(Deferred.fromCoroutine(self.supervisor.stop_apps()))
        self.supervisor.start_apps()
        self.assertEqual(self.reactor.processes, [])

    def test_output_linger(self):
        """
        If the app's pipes stay open after it exited (a grandchild holds them), they are
        closed after a second and the stop completes.
        """
        self.supervisor.add_app(Command(("app",)))
        self.supervisor.startService()
        self.supervisor.start_apps()
        d = Deferred.fromCoroutine(self.supervisor.stop_apps())
        process = self.last("app")
        reason = Failure(ProcessTerminated(signal=signal.SIGTERM))
        process.protocol.processExited(reason)
        self.assertNoResult(d)
        self.reactor.advance(0.999)
        self.assertFalse(process.lost_connection)
        self.reactor.advance(0.001)
        self.assertTrue(process.lost_connection)
        process.protocol.processEnded(reason)   # the real transport does this once closed
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class StopServiceTests(SupervisorTestsMixin, SynchronousTestCase):
    """stopService: apps, then the proxy; waits for the exits; restarts nothing."""

    def setUp(self):
        super().setUp()
        self.supervisor.add_proxy(NGINX)
        self.supervisor.add_app(Command(("app",), on_exit="terminate"))
        self.supervisor.add_app(Command(("worker",), kill_group=True))
        self.supervisor.startService()
        self.supervisor.start_apps()

    def test_stops_apps_then_proxy(self):
        """The proxy gets QUIT only once every app has exited."""
        d = self.supervisor.stopService()
        app, worker, proxy = self.last("app"), self.last("worker"), self.last("proxy")
        self.assertEqual(app.signals, [signal.SIGTERM])
        self.assertEqual(self.killpg, [(worker.pid, signal.SIGTERM)])
        self.assertEqual(proxy.signals, [])
        app.end(0)
        worker.end(signal=signal.SIGTERM)
        self.assertEqual(proxy.signals, [signal.SIGQUIT])
        self.assertNoResult(d)
        proxy.end(0)
        self.successResultOf(d)
        self.assertEqual(self.terminated, [])

    def test_restarts_nothing(self):
        """A proxy that dies while the apps are stopping is not restarted."""
        d = self.supervisor.stopService()
        self.last("proxy").end(1)
        self.reactor.advance(60)
        self.assertEqual(len(self.spawned("proxy")), 1)
        self.last("app").end(0)
        self.last("worker").end(0)
        self.successResultOf(d)
        self.assertEqual(len(self.reactor.processes), 3)

    def test_cancels_a_pending_restart(self):
        """A restart scheduled before the stop is cancelled."""
        self.last("proxy").end(1)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        d = self.stop()
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertEqual(len(self.spawned("proxy")), 1)

    def test_no_delayed_calls_left(self):
        """After the stop no timer is left behind."""
        self.successResultOf(self.stop())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(self.supervisor.running)

    def test_with_children_that_obey_term(self):
        """
        With children that end on TERM (and a proxy that traps QUIT): the stop takes one
        grace period (the proxy's QUIT, then TERM) and leaves no timer behind.
        """
        reactor = FakeProcessReactor()
        supervisor = Supervisor(reactor, FakeSignaller(reactor), output=lambda *a: None,
                                environ=ENVIRON)
        supervisor.add_proxy(NGINX)
        supervisor.add_app(Command(("app",)))
        supervisor.startService()
        supervisor.start_apps()
        d = supervisor.stopService()
        reactor.advance(0)
        self.assertEqual([p.signals for p in reactor.processes],
                         [[signal.SIGQUIT], [signal.SIGTERM]])
        reactor.advance(9.999)
        self.assertNoResult(d)
        reactor.advance(0.001)
        reactor.advance(0)
        self.successResultOf(d)
        self.assertEqual(reactor.processes[0].signals, [signal.SIGQUIT, signal.SIGTERM])
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(len(reactor.processes), 2)

    def test_an_earlier_deadline_holds(self):
        """A deadline given to stop_apps also bounds stopService's stop of the proxy."""
        self.reactor.advance(50)
        d = Deferred.fromCoroutine(self.supervisor.stop_apps(deadline=55))
        self.last("app").end(0)
        self.last("worker").end(0)
        self.successResultOf(d)
        d = self.supervisor.stopService()
        self.assertEqual(self.last("proxy").signals, [signal.SIGQUIT])
        self.reactor.advance(5)
        self.assertEqual(self.last("proxy").signals, [signal.SIGQUIT, signal.SIGKILL])
        self.last("proxy").end(signal=signal.SIGKILL)
        self.successResultOf(d)

    def test_cancelled_wait(self):
        """
        A stop whose waiting is cancelled (a timeout) still escalates, and the exits that
        follow are handled without error.
        """
        d = Deferred.fromCoroutine(self.supervisor.stop_apps())
        d.cancel()
        self.failureResultOf(d)
        self.reactor.advance(10)
        self.assertEqual(self.last("app").signals, [signal.SIGTERM, signal.SIGKILL])
        self.last("app").end(signal=signal.SIGKILL)
        self.last("worker").end(signal=signal.SIGKILL)
        self.successResultOf(self.stop())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_kill_after_grace(self):
        """Children that ignore TERM are killed after the grace period."""
        d = self.supervisor.stopService()
        self.reactor.advance(10)
        self.assertEqual(self.last("app").signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertEqual(self.killpg[-1], (self.last("worker").pid, signal.SIGKILL))
        self.last("app").end(signal=signal.SIGKILL)
        self.last("worker").end(signal=signal.SIGKILL)
        self.last("proxy").end(0)
        self.successResultOf(d)

    def test_state(self):
        """state() describes every child for the debug API."""
        self.last("proxy").end(signal=signal.SIGSEGV)
        self.reactor.advance(1)
        proxy, app, worker = self.supervisor.state()
        self.assertEqual(proxy, {
            "name": "proxy", "kind": "proxy", "pid": self.last("proxy").pid, "running": True,
            "restarts": 1, "last_exit": 128 + 11, "last_signal": 11, "argv": NGINX,
            "on_exit": "restart", "kill_group": False})
        self.assertEqual((app["name"], app["running"], app["restarts"], app["last_exit"],
                          app["on_exit"], app["argv"]), ("app", True, 0, None, "terminate",
                                                          ["app"]))
        self.assertTrue(worker["kill_group"])
        self.successResultOf(self.stop())
        self.assertEqual([s["running"] for s in self.supervisor.state()], [False] * 3)


class ExitStatusTests(SynchronousTestCase):
    """exit_status maps a process end to a shell's exit code."""

    def test_codes(self):
        """0 for ProcessDone, the code for an exit, 128 + signal for a signal death."""
        self.assertEqual(exit_status(Failure(ProcessDone(0))), (0, None))
        self.assertEqual(exit_status(Failure(ProcessTerminated(3))), (3, None))
        self.assertEqual(exit_status(Failure(ProcessTerminated(None, 15))), (143, 15))


class RealProcessTests(TestCase):
    """One real, short-lived child on the real reactor."""

    timeout = 30

    async def test_real_child(self):
        """
        A real kill_group terminate app: its line arrives prefixed with its name, its exit
        code 3 reaches on_terminate, and setsid made the very pid we hold a group leader.
        """
        from twisted.internet import reactor

        terminated = Deferred()
        supervisor = Supervisor(reactor, ProcessGroupSignaller(),
                                on_terminate=terminated.callback, kill_grace=5)
        supervisor.add_app(Command((sys.executable, "-c",
                                    "import os\n"
                                    "print('hello', os.environ['A8_X'], os.getpid(),\n"
                                    "      os.getpgid(0) == os.getsid(0) == os.getpid())\n"
                                    "raise SystemExit(3)"),
                                   env=("A8_X=there",), on_exit="terminate", kill_group=True),
                           name="child")
        with capturedLogs() as events:
            supervisor.startService()
            supervisor.start_apps()
            code = await terminated
            await supervisor.stopService()
        self.assertEqual(code, 3)
        [pid] = [e["pid"] for e in events if e.get("log_format", "").startswith("started")]
        self.assertIn("child: hello there {} True".format(pid),
                      [formatEvent(e) for e in events])


class PolicyTests(SynchronousTestCase):
    """The per-kind exit policies, apart from spawning and signalling."""

    def test_restart_with_backoff(self):
        """
        The first exit restarts at once; each further exit in a row after twice the previous
        delay (from min_delay), up to the cap.
        """
        policy = RestartWithBackoff(min_delay=1, max_delay=5, reset_after=10)
        self.assertEqual([policy.after_exit(1, 0.5) for _ in range(6)],
                         [AfterExit("restart", d) for d in (0, 1, 2, 4, 5, 5)])
        self.assertEqual(policy.name, "restart")

    def test_restart_backoff_defaults(self):
        """By default repeated crashes back off from 0.1 s to 30 s; 10 s up is stable."""
        policy = RestartWithBackoff()
        self.assertEqual((policy.min_delay, policy.max_delay, policy.reset_after),
                         (0.1, 30.0, 10.0))

    def test_restart_backoff_resets(self):
        """A run of reset_after seconds is stable: the next exit restarts at once again."""
        policy = RestartWithBackoff(min_delay=1, max_delay=30, reset_after=10)
        policy.after_exit(1, 0)
        policy.after_exit(1, 0)
        self.assertEqual(policy.after_exit(0, 10), AfterExit("restart", 0))
        self.assertEqual(policy.after_exit(0, 9.9), AfterExit("restart", 1))
        self.assertEqual(policy.after_exit(0, 9.9), AfterExit("restart", 2))

    def test_on_exit(self):
        """An app's policy answers its on_exit, whatever the exit code; others are refused."""
        self.assertEqual(OnExit("ignore").after_exit(3, 1), AfterExit("ignore"))
        self.assertEqual(OnExit("terminate").after_exit(0, 1), AfterExit("terminate"))
        self.assertRaises(ValueError, OnExit, "restart")

    def test_given_proxy_policy(self):
        """add_proxy takes a policy; the supervisor carries out what it answers."""
        reactor = FakeProcessReactor()
        supervisor = Supervisor(reactor, FakeSignaller(), output=lambda *a: None,
                                environ=ENVIRON)
        supervisor.add_proxy(NGINX, policy=RestartWithBackoff(min_delay=0.25))
        supervisor.startService()
        reactor.processes[-1].end(1)
        reactor.advance(0.25)
        self.assertEqual(len(reactor.processes), 2)


class SignallerTests(SupervisorTestsMixin, SynchronousTestCase):
    """The injected process-group signaller and the fake pids."""

    def test_interfaces(self):
        """The real and the fake signaller provide IProcessSignaller."""
        self.assertTrue(verifyObject(IProcessSignaller, ProcessGroupSignaller()))
        self.assertTrue(verifyObject(IProcessSignaller, FakeSignaller()))

    def test_fake_pids_are_never_real(self):
        """Fake pids lie above PID_MAX_LIMIT (2**22) and are positive pid_t values."""
        for _ in range(3):
            self.reactor.spawnProcess(_Null(), "x", ["x"])
        pids = [p.pid for p in self.reactor.processes]
        self.assertEqual(pids, [FIRST_PID, FIRST_PID + 1, FIRST_PID + 2])
        self.assertTrue(all(PID_MAX_LIMIT < pid < 2 ** 31 for pid in pids))

    def test_fake_signaller_refuses_real_pids(self):
        """A pgid that could name a real process is refused and not recorded."""
        self.assertRaises(ValueError, self.signaller.signal_group, 1234, signal.SIGTERM)
        self.assertRaises(ValueError, self.signaller.signal_group, -FIRST_PID, signal.SIGTERM)
        self.assertEqual(self.signaller.sent, [])

    def test_fake_signaller_delivers_to_the_leader(self):
        """Given the reactor, a group signal reaches the live process leading the group."""
        signaller = FakeSignaller(self.reactor)
        supervisor = Supervisor(self.reactor, signaller, output=lambda *a: None,
                                environ=ENVIRON)
        supervisor.add_app(Command(("app",), kill_group=True))
        supervisor.startService()
        supervisor.start_apps()
        process = self.reactor.processes[-1]
        supervisor.forward(signal.SIGHUP)
        self.assertEqual(process.signals, [signal.SIGHUP])
        self.assertEqual(signaller.sent, [(process.pid, signal.SIGHUP)])
        pid = process.pid
        process.end(0)
        self.assertRaises(ProcessLookupError, signaller.signal_group, pid, signal.SIGKILL)

    def test_signal_proxy_goes_to_the_pid(self):
        """signal_proxy signals nginx's master itself, never its group."""
        self.assertFalse(self.supervisor.signal_proxy(signal.SIGUSR1))
        self.supervisor.add_proxy(NGINX, kill_group=True)
        self.supervisor.startService()
        self.assertTrue(self.supervisor.signal_proxy(signal.SIGUSR1))
        self.assertEqual(self.last("proxy").signals, [signal.SIGUSR1])
        self.assertEqual(self.killpg, [])

    def test_limit(self):
        """limit() bounds a later stop: KILL comes at that deadline."""
        self.supervisor.add_app(Command(("app",)))
        self.supervisor.startService()
        self.supervisor.start_apps()
        self.supervisor.limit(self.reactor.seconds() + 2)
        Deferred.fromCoroutine(self.supervisor.stop_apps())
        self.reactor.advance(2)
        self.assertEqual(self.last("app").signals, [signal.SIGTERM, signal.SIGKILL])
        self.last("app").end(signal=signal.SIGKILL)


class _Null:
    """A protocol that ignores everything (for spawning bare fake processes)."""

    def makeConnection(self, transport):
        pass
