# -*- test-case-name: tests.test_workers -*-
"""
C{--processes N} (issue 13): one server as N processes on the same listening sockets, so
one host uses all its cores. It only makes sense on a shared store (Redis, etcd): the
processes keep no state of their own that the others would not see.

The first process (the parent) binds every C{--listen} TCP endpoint itself, serves on it,
and starts N-1 workers with the sockets inherited: each worker is the same program
(C{twistd -n a8registry}) with the options the parent was given, C{--processes 1}, and one
C{--listen fd:fileno=K:domain=INET} per socket; of the parent's own twistd options it keeps
those that say how to log and which reactor to run (L{twistd_options}), so that its log
lines look like the parent's. The kernel hands each new connection to one of the
processes accepting on the socket.

The parent supervises its workers with a Twisted process protocol: a worker that exits is
started again (after 0.1 s, doubling up to 10 s while it keeps failing); stopping the
parent stops them (SIGTERM, then SIGKILL after a grace period). A worker watches its
standard input, a pipe from the parent: when the parent dies, even by SIGKILL, the pipe
closes and the worker stops too, so no orphan keeps serving.
"""

import os
import socket
import sys

import attrs
from twisted.application.service import Service
from twisted.internet import stdio
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import (AdoptedStreamServerEndpoint, TCP4ServerEndpoint,
                                        TCP6ServerEndpoint)
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = ["WORKER_ENV", "InheritedSocketParser", "ListenSocket", "listen_sockets", "worker_arguments", "Workers",
           "ParentWatch", "twistd_argv", "twistd_options", "KEPT_TWISTD_OPTIONS"]

log = Logger()

#: Set in a worker's environment (to the parent's pid): the worker watches its parent.
WORKER_ENV = "A8_WORKER_OF"


_DOMAINS = {"INET": socket.AF_INET, "INET6": socket.AF_INET6}


@implementer(IPlugin, IStreamServerEndpointStringParser)
class InheritedSocketParser:
    """
    The endpoint strings C{fd:fileno=K:domain=INET} (or C{INET6}): serve on the listening
    socket inherited as descriptor K (what a worker is given). Twisted finds it through
    C{twisted/plugins/amalgam8_endpoints.py}.
    """

    prefix = "fd"

    def parseStreamServer(self, reactor, *args, **kwargs):
        if args:
            raise ValueError("give fileno=K (and domain=INET or INET6), not {!r}".format(
                ":".join(args)))
        unknown = set(kwargs) - {"fileno", "domain"}
        if unknown:
            raise ValueError("unknown parameter {!r}".format(sorted(unknown)[0]))
        fileno = kwargs.get("fileno", "")
        domain = kwargs.get("domain", "INET")
        try:
            number = int(fileno)
        except ValueError:
            raise ValueError("fileno must be a descriptor number, not {!r}".format(fileno))
        if number < 0:
            raise ValueError("fileno must be a descriptor number, not {!r}".format(fileno))
        if domain.upper() not in _DOMAINS:
            raise ValueError("domain must be INET or INET6, not {!r}".format(domain))
        return AdoptedStreamServerEndpoint(reactor, number, _DOMAINS[domain.upper()])


@attrs.frozen
class ListenSocket:
    """A listening socket the parent made from a C{--listen} description."""

    description: str
    sock: object

    @property
    def family(self):
        return self.sock.family

    def fileno(self):
        return self.sock.fileno()

    def worker_description(self):
        domain = "INET6" if self.family == socket.AF_INET6 else "INET"
        return "fd:fileno={}:domain={}".format(self.fileno(), domain)


def listen_sockets(reactor, descriptions):
    """
    Bind a listening socket for each TCP endpoint description.

    @raise ValueError: a description that is not a plain TCP endpoint (C{tcp:8080},
        C{tcp6:port=8080:interface=::1}): only those can be shared with workers.
    @raise OSError: a socket that cannot be bound (the port is taken).
    """
    from twisted.internet.endpoints import serverFromString

    made = []
    try:
        for description in descriptions:
            endpoint = serverFromString(reactor, description)
            if isinstance(endpoint, TCP6ServerEndpoint):
                family = socket.AF_INET6
            elif isinstance(endpoint, TCP4ServerEndpoint):
                family = socket.AF_INET
            else:
                raise ValueError("--processes needs tcp listeners; {!r} is not one".format(
                    description))
            sock = socket.socket(family, socket.SOCK_STREAM)
            made.append(ListenSocket(description, sock))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((endpoint._interface or ("::" if family == socket.AF_INET6 else ""),
                       endpoint._port))
            sock.listen(endpoint._backlog)
            sock.setblocking(False)
            sock.set_inheritable(True)
    except BaseException:
        for listening in made:
            listening.sock.close()
        raise
    return made


def worker_arguments(flags, sockets):
    """
    The options of a worker: the options its parent was given (C{flags}, the
    C{SettingsOptions.given}: name -> value, or a list for a repeatable one, None
    when not given), except C{--processes} and C{--listen}, then C{--processes 1} and one
    C{--listen} per inherited socket. The environment (and so every C{A8_*} setting and
    the C{--config} file) is the parent's.
    """
    args = []
    for name, value in sorted(flags.items()):
        if name in ("processes", "listen") or value is None:
            continue
        for one in (value if isinstance(value, list) else [value]):
            args.append("--{}={}".format(name, one))
    args += ["--processes=1"]
    for listening in sockets:
        args.append("--listen={}".format(listening.worker_description()))
    return args


#: The twistd options of the parent that a worker is given too: how to log, where, which
#: reactor, the umask. The others are the parent's alone (its pid file, daemonizing, the
#: user to switch to: a worker starts as that user already, profiling).
KEPT_TWISTD_OPTIONS = ("logger", "logfile", "reactor", "umask", "syslog", "prefix")


def twistd_options(argv, program):
    """
    The options of L{KEPT_TWISTD_OPTIONS} on the parent's command line (C{sys.argv}): those
    before the first word that is not an option (C{program}, run as a twistd subcommand),
    as C{--name=value} (or C{--name} for a flag), in their order.

    @param argv: the parent's C{sys.argv}.
    @param program: its subcommand (C{"a8registry"}): nothing is kept unless it is the word
        that ends the twistd options (under C{twist}, or in a test, that is not so).
    """
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    valued = {name[:-1] for name in options.longOpt if name.endswith("=")}
    short = options.shortOpt
    valued_short = {short[i] for i in range(len(short) - 1) if short[i + 1] == ":"}
    found = []
    words = list(argv[1:])
    while words:
        word = words.pop(0)
        if word == program:
            return ["--{}={}".format(n, v) if v is not None else "--" + n
                    for n, v in found if n in KEPT_TWISTD_OPTIONS]
        if word.startswith("--"):
            name, equals, value = word[2:].partition("=")
            if not equals:
                value = words.pop(0) if name in valued and words else None
            found.append((options.synonyms.get(name, name), value))
        elif word.startswith("-") and len(word) > 1:
            letters = word[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                if letter in valued_short:
                    value = letters or (words.pop(0) if words else "")
                    found.append((options.synonyms.get(letter, letter), value))
                    break
                found.append((options.synonyms.get(letter, letter), None))
        else:
            break
    return []


def twistd_argv(program, args, executable=None, twistd=()):
    """
    The argv that runs C{twistd -n <twistd options> <program> args} under this interpreter.

    @param twistd: more twistd options (L{twistd_options} of the parent).
    """
    executable = executable or sys.executable
    return [executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile="] + list(twistd) + [program] + list(args)


class _Worker(ProcessProtocol):
    def __init__(self, workers, number):
        self.workers = workers
        self.number = number
        self.ended = Deferred()

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        self.workers._ended(self, code, signal, reason.check(ProcessDone) is not None)
        self.ended.callback(None)


class Workers(Service):
    """
    N-1 worker processes of a server, started with the listening sockets inherited, and
    started again when they exit while this service runs.

    @ivar started: how many times a worker was spawned (tests, metrics).
    """

    name = "workers"
    grace = 10.0

    def __init__(self, reactor, argv, sockets, count, program="a8server", environ=None,
                 first_delay=0.1, max_delay=10.0):
        self._reactor = reactor
        self._argv = list(argv)
        self._sockets = list(sockets)
        self._count = count
        self._program = program
        self._environ = dict(os.environ if environ is None else environ)
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._delays = {}
        self._running = {}      # number -> (_Worker, IProcessTransport)
        self._pending = {}      # number -> IDelayedCall of a restart
        self.started = 0

    def startService(self):
        Service.startService(self)
        for number in range(1, self._count):
            self._spawn(number)

    def _spawn(self, number):
        self._pending.pop(number, None)
        protocol = _Worker(self, number)
        fds = {0: "w", 1: 1, 2: 2}
        for listening in self._sockets:
            fds[listening.fileno()] = listening.fileno()
        environ = dict(self._environ)
        environ[WORKER_ENV] = str(os.getpid())
        transport = self._reactor.spawnProcess(protocol, self._argv[0], self._argv,
                                               env=environ, childFDs=fds)
        self._running[number] = (protocol, transport)
        self._started_at = getattr(self, "_started_at", {})
        self._started_at[number] = self._reactor.seconds()
        self.started += 1
        log.info("{program} started worker {number} (pid {pid})", program=self._program,
                 number=number, pid=getattr(transport, "pid", None))

    def _ended(self, protocol, code, signal, clean):
        self._running.pop(protocol.number, None)
        if not self.running:
            return
        up = self._reactor.seconds() - self._started_at.get(protocol.number, 0)
        delay = self._delays.get(protocol.number, self._first_delay)
        if up >= 10.0:
            delay = self._first_delay
        self._delays[protocol.number] = min(self._max_delay, delay * 2)
        log.warn("{program} worker {number} exited (code {code}, signal {signal}); "
                 "starting it again in {delay:.1f}s", program=self._program,
                 number=protocol.number, code=code, signal=signal, delay=delay)
        self._pending[protocol.number] = self._reactor.callLater(
            delay, self._spawn, protocol.number)

    def stopService(self):
        Service.stopService(self)
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        waits = []
        for protocol, transport in list(self._running.values()):
            waits.append(protocol.ended)
            _signal(transport, "TERM")
            kill = self._reactor.callLater(self.grace, _signal, transport, "KILL")
            protocol.ended.addBoth(lambda result, kill=kill: (
                kill.cancel() if kill.active() else None, result)[1])
        if not waits:
            return succeed(None)
        return DeferredList(waits)

    def pids(self):
        """The pids of the running workers."""
        return [getattr(t, "pid", None) for _, t in self._running.values()]


def _signal(transport, name):
    try:
        transport.signalProcess(name)
    except Exception:       # already gone
        pass


class _ParentGone(Protocol):
    def __init__(self, stop):
        self._stop = stop

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        self._stop()


class ParentWatch(Service):
    """
    In a worker: stop the reactor when standard input (the pipe from the parent) closes,
    which is when the parent exits for whatever reason.
    """

    def __init__(self, reactor, stdin=0):
        self._reactor = reactor
        self._stdin = stdin
        self._io = None

    def startService(self):
        Service.startService(self)
        self._null = os.open(os.devnull, os.O_WRONLY)
        self._io = stdio.StandardIO(_ParentGone(self._gone), stdin=self._stdin,
                                    stdout=self._null, reactor=self._reactor)

    def _gone(self):
        if self.running:
            log.info("the parent process is gone: stopping")
            self._reactor.stop()

    def stopService(self):
        Service.stopService(self)
        if self._io is not None:
            io, self._io = self._io, None
            io.loseConnection()
