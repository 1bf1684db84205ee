"""
Tests for L{amalgam8.workers}: C{--processes N} (issue 13). The supervision runs on a fake
process reactor; binding the sockets is real (loopback, port 0).
"""

import socket

from twisted.trial.unittest import SynchronousTestCase

from amalgam8.testing.process import FakeProcessReactor
from amalgam8.workers import (WORKER_ENV, ListenSocket, Workers, listen_sockets,
                              twistd_argv, twistd_options, worker_arguments)


class ListenSocketsTests(SynchronousTestCase):

    def test_tcp(self):
        """tcp and tcp6 descriptions get listening, inheritable, non-blocking sockets."""
        made = listen_sockets(None, ["tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1"])
        self.addCleanup(lambda: [m.sock.close() for m in made])
        v4, v6 = made
        self.assertEqual(v4.sock.getsockname()[0], "127.0.0.1")
        self.assertNotEqual(v4.sock.getsockname()[1], 0)
        self.assertEqual(v6.family, socket.AF_INET6)
        self.assertTrue(v4.sock.get_inheritable())
        self.assertFalse(v4.sock.getblocking())
        self.assertEqual(v4.worker_description(), "fd:fileno={}:domain=INET".format(
            v4.fileno()))
        self.assertEqual(v6.worker_description(), "fd:fileno={}:domain=INET6".format(
            v6.fileno()))
        # It listens: a client connects.
        client = socket.create_connection(v4.sock.getsockname()[:2], timeout=1)
        client.close()

    def test_not_tcp(self):
        """Only tcp endpoints can be shared; the first socket is closed again."""
        error = self.assertRaises(ValueError, listen_sockets, None,
                                  ["tcp:0:interface=127.0.0.1", "unix:/tmp/x.sock"])
        self.assertEqual(str(error), "--processes needs tcp listeners; 'unix:/tmp/x.sock' "
                                     "is not one")

    def test_taken(self):
        """A port that is taken is an OSError, and nothing stays bound."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        self.assertRaises(OSError, listen_sockets, None,
                          ["tcp:0:interface=127.0.0.1",
                           "tcp:{}:interface=127.0.0.1".format(port)])


class FakeSocket:
    family = socket.AF_INET

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


class WorkerArgumentsTests(SynchronousTestCase):

    def test_arguments(self):
        """
        The worker gets the options the parent was given but --processes and --listen,
        then --processes 1 and a --listen per inherited socket.
        """
        sockets = [ListenSocket("tcp:8080", FakeSocket(7)), ListenSocket("tcp:9", FakeSocket(9))]
        args = worker_arguments({"processes": "4", "listen": ["tcp:8080", "tcp:9"],
                                 "store": "redis", "auth-mode": None,
                                 "config": "/etc/a8.yaml"}, sockets)
        self.assertEqual(args, ["--config=/etc/a8.yaml", "--store=redis", "--processes=1",
                                "--listen=fd:fileno=7:domain=INET",
                                "--listen=fd:fileno=9:domain=INET"])

    def test_argv(self):
        """A worker runs twistd in the foreground without a pid file, with the parent's
        kept twistd options before the program."""
        argv = twistd_argv("a8registry", ["--x=1"], executable="/py")
        self.assertEqual(argv, ["/py", "-c", "from twisted.scripts.twistd import run; run()",
                                "-n", "--pidfile=", "a8registry", "--x=1"])
        argv = twistd_argv("a8registry", ["--x=1"], executable="/py",
                           twistd=["--logger=amalgam8.logs.json_observer"])
        self.assertEqual(argv[3:], ["-n", "--pidfile=", "--logger=amalgam8.logs.json_observer",
                                    "a8registry", "--x=1"])


class TwistdOptionsTests(SynchronousTestCase):
    """
    A worker keeps the parent's twistd options that say how to log and which reactor to run
    (so that its log lines go where the parent's go, in the same format), and no other.
    """

    def test_deploy_command(self):
        """The command of the Docker images: JSON logs on standard output."""
        argv = ["/usr/local/bin/twistd", "--nodaemon", "--pidfile=", "--logger",
                "amalgam8.logs.json_observer", "a8registry", "--processes", "4",
                "--logger", "not-a-twistd-option-here"]
        self.assertEqual(twistd_options(argv, "a8registry"),
                         ["--logger=amalgam8.logs.json_observer"])

    def test_kept_and_dropped(self):
        """Long and short forms, with the value attached or apart; the pid file, the user,
        daemonizing and profiling stay the parent's."""
        argv = ["twistd", "-no", "-l", "/var/log/a8.log", "--reactor=epoll", "--umask",
                "022", "--syslog", "--prefix", "a8", "--uid", "1000", "--gid=1000",
                "--pidfile", "/run/a8.pid", "--profile=/tmp/p", "--chroot", "/srv",
                "a8controller", "--processes=2"]
        self.assertEqual(twistd_options(argv, "a8controller"),
                         ["--logfile=/var/log/a8.log", "--reactor=epoll", "--umask=022",
                          "--syslog", "--prefix=a8"])
        self.assertEqual(twistd_options(["twistd", "-nl/tmp/x", "-repoll", "a8registry"],
                                        "a8registry"),
                         ["--logfile=/tmp/x", "--reactor=epoll"])

    def test_not_under_twistd(self):
        """Under C{twist}, trial or anything whose options do not end at the program:
        nothing is kept (the worker logs as twistd does by default)."""
        self.assertEqual(twistd_options(["twist", "--log-format", "json", "a8registry"],
                                        "a8registry"), [])
        self.assertEqual(twistd_options(["trial", "tests"], "a8registry"), [])
        self.assertEqual(twistd_options(["twistd", "--logger"], "a8registry"), [])
        self.assertEqual(twistd_options(["twistd", "-l"], "a8registry"), [])

    def test_options_reach_a_worker(self):
        """The arguments parse back to the same settings in the worker."""
        from amalgam8.registry.tap import Options
        parent = Options(environ={})
        parent.parseOptions(["--default-ttl", "40s", "--listen", "tcp:0", "--processes", "1"])
        args = worker_arguments(parent.given,
                                [ListenSocket("tcp:0", FakeSocket(5))])
        worker = Options(environ={})
        worker.parseOptions(args)
        self.assertEqual(worker["default-ttl"], 40)
        self.assertEqual(worker["listen"], ["fd:fileno=5:domain=INET"])
        self.assertEqual(worker["processes"], 1)


class WorkersTests(SynchronousTestCase):
    """The parent starts N-1 workers, restarts those that exit, and stops them."""

    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.sockets = [ListenSocket("tcp:8080", FakeSocket(7))]
        self.workers = Workers(self.reactor, ["/py", "-c", "run"], self.sockets, 3,
                               program="a8registry", environ={"A8_STORE": "redis"})

    def test_start(self):
        """Two workers for three processes, each with the socket at its own number, a
        stdin pipe, the parent's environment and the parent's pid."""
        self.workers.startService()
        self.assertEqual(len(self.reactor.processes), 2)
        for process in self.reactor.processes:
            self.assertEqual(process.args, ["/py", "-c", "run"])
            self.assertEqual(process.childFDs, {0: "w", 1: 1, 2: 2, 7: 7})
            self.assertEqual(process.env["A8_STORE"], "redis")
            self.assertIn(WORKER_ENV, process.env)
        self.assertEqual(self.workers.started, 2)

    def test_restart_with_backoff(self):
        """A worker that exits is started again after 0.1 s, then 0.2 s if it exits at
        once again; the delay resets after 10 s up."""
        self.workers.startService()
        first = self.reactor.processes[0]
        first.end(exitCode=1)
        self.reactor.advance(0.09)
        self.assertEqual(len(self.reactor.processes), 2)
        self.reactor.advance(0.02)
        self.assertEqual(len(self.reactor.processes), 3)
        self.reactor.processes[2].end(exitCode=1)
        self.reactor.advance(0.15)
        self.assertEqual(len(self.reactor.processes), 3)
        self.reactor.advance(0.06)
        self.assertEqual(len(self.reactor.processes), 4)
        self.reactor.advance(11)
        self.reactor.processes[3].end(signal="KILL")
        self.reactor.advance(0.11)
        self.assertEqual(len(self.reactor.processes), 5)

    def test_stop(self):
        """Stopping sends TERM to each worker, waits for them, and restarts none."""
        self.workers.startService()
        d = self.workers.stopService()
        self.assertNoResult(d)
        for process in self.reactor.processes:
            self.assertEqual(process.signals, ["TERM"])
        self.reactor.advance(0)
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_stop_kills_stubborn(self):
        """A worker that ignores TERM gets KILL after the grace period."""
        self.workers.startService()
        for process in self.reactor.processes:
            process.signal_exit_delays["TERM"] = None
        d = self.workers.stopService()
        self.reactor.advance(Workers.grace - 0.1)
        self.assertNoResult(d)
        self.reactor.advance(0.2)
        self.reactor.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.reactor.processes[0].signals, ["TERM", "KILL"])

    def test_stop_cancels_pending_restart(self):
        self.workers.startService()
        self.reactor.processes[0].end(exitCode=1)
        self.successResultOf(self.workers.stopService() if False else _stopped(self))
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


def _stopped(case):
    d = case.workers.stopService()
    case.reactor.advance(0)
    return d


class InheritedSocketParserTests(SynchronousTestCase):
    """fd:fileno=K:domain=INET names an inherited listening socket (a worker's --listen)."""

    def test_endpoint(self):
        from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
        from twisted.internet.interfaces import IStreamServerEndpointStringParser
        from zope.interface.verify import verifyObject

        from amalgam8.workers import InheritedSocketParser
        self.assertTrue(verifyObject(IStreamServerEndpointStringParser,
                                     InheritedSocketParser()))
        endpoint = serverFromString(object(), "fd:fileno=5:domain=INET6")
        self.assertIsInstance(endpoint, AdoptedStreamServerEndpoint)
        self.assertEqual((endpoint.fileno, endpoint.addressFamily), (5, socket.AF_INET6))

    def test_bad(self):
        """A bad descriptor or domain is refused like any bad --listen."""
        from amalgam8.settings import check_endpoint
        for text, words in (("fd:fileno=x", "fileno must be a descriptor number"),
                            ("fd:fileno=-1", "fileno must be a descriptor number"),
                            ("fd:fileno=3:domain=UNIX", "domain must be INET or INET6")):
            error = self.assertRaises(ValueError, check_endpoint, text)
            self.assertIn(words, str(error))
