# -*- test-case-name: tests.test_registry_redis,tests.test_controller_redis -*-
"""
A real C{redis-server} for tests: started on a free loopback port with its own temporary
directory, stopped (or killed) and started again on the same port, as a master, a replica
(C{--replicaof}) or a Sentinel.

    server = RedisServer(directory=case.mktemp(), password="s3cret")
    server.start()
    case.addCleanup(server.stop)
    server.command("PING")          # a blocking one-shot client, for fixtures only

The server persists nothing (C{--save ''}, C{--appendonly no}) unless told to. Starting and
stopping block for at most a few seconds: they are for the set-up and clean-up of
integration tests, never for code that runs in the reactor.

L{Settle} is the piece that lets a synchronous contract suite (the ones in
L{amalgam8.testing.registry} and L{amalgam8.testing.controller}) run against a store that
talks to this server: it spins the real reactor until the stores have nothing in flight.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

from twisted.internet.defer import gatherResults

__all__ = ["REDIS_SERVER", "RedisServer", "Settle", "free_port", "redis_missing",
           "shared_server", "spin", "turn", "RedisStoreCase"]

#: The server binary (Debian's redis-server package).
REDIS_SERVER = os.environ.get("A8_TEST_REDIS_SERVER") or shutil.which("redis-server") \
    or "/usr/bin/redis-server"


def redis_missing():
    """The reason tests that need C{redis-server} cannot run, or L{None}."""
    if not os.access(REDIS_SERVER, os.X_OK):
        return "redis-server is not installed ({}; make setup installs it)".format(
            REDIS_SERVER)
    return None


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """In the child: be sent SIGTERM when the test process dies (Linux), so no server
    outlives an interrupted test run."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_SHARED = {}


def shared_server(key, **kwargs):
    """
    The server of C{key} for this test process: started at the first call (in a fresh
    temporary directory), stopped and its directory removed when the process exits. A test
    class shares one server this way and empties it between tests (C{FLUSHALL}), which
    keeps it fast.
    """
    server = _SHARED.get(key)
    if server is None or not server.running:
        import atexit
        import tempfile

        server = RedisServer(tempfile.mkdtemp(prefix="a8-redis-"), **kwargs)
        server.start()

        def remove(server=server):
            server.stop()
            shutil.rmtree(server.directory, ignore_errors=True)

        atexit.register(remove)
        _SHARED[key] = server
    return server


class RedisServer:
    """
    One C{redis-server} process on 127.0.0.1.

    @ivar port: its port, chosen at the first L{start} and kept across restarts.
    @ivar password: the C{requirepass} (and C{masterauth}) password, or L{None}.
    @ivar directory: its working directory (log, config, any data).
    """

    def __init__(self, directory, password=None, port=None, replica_of=None,
                 sentinel_of=None, master_name="a8master", persist=False, extra=(),
                 down_after=1000, failover_timeout=2000):
        """
        @param replica_of: a L{RedisServer} to replicate (C{--replicaof}).
        @param sentinel_of: a L{RedisServer} master to watch: this one is a Sentinel.
        @param down_after: for a Sentinel, the milliseconds without an answer after which
            it takes the master for down (C{down-after-milliseconds}).
        @param failover_timeout: for a Sentinel, C{failover-timeout} (milliseconds).
        @param persist: keep an append-only file, so that a restart keeps the data.
        @param extra: more C{redis-server} arguments (C{("--maxclients", "100")}).
        """
        self.directory = os.path.abspath(directory)
        self.password = password
        self.port = port
        self.replica_of = replica_of
        self.sentinel_of = sentinel_of
        self.master_name = master_name
        self.persist = persist
        self.extra = tuple(extra)
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.process = None

    @property
    def address(self):
        """C{host:port}."""
        return "127.0.0.1:{}".format(self.port)

    @property
    def log_path(self):
        return os.path.join(self.directory, "redis.log")

    def _argv(self):
        if self.sentinel_of is not None:
            master = self.sentinel_of
            config = os.path.join(self.directory, "sentinel.conf")
            lines = [
                "port {}".format(self.port),
                "bind 127.0.0.1",
                "dir {}".format(self.directory),
                "logfile {}".format(self.log_path),
                "sentinel monitor {} 127.0.0.1 {} 1".format(self.master_name, master.port),
                "sentinel down-after-milliseconds {} {}".format(self.master_name,
                                                               self.down_after),
                "sentinel failover-timeout {} {}".format(self.master_name,
                                                        self.failover_timeout),
            ]
            if master.password:
                lines.append("sentinel auth-pass {} {}".format(self.master_name,
                                                             master.password))
            with open(config, "w") as f:
                f.write("\n".join(lines) + "\n")
            return [REDIS_SERVER, config, "--sentinel"]
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory,
            "--logfile", self.log_path,
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        return argv + list(self.extra)

    def start(self, timeout=10):
        """
        Start the server (on its port, or on a free one the first time) and wait until it
        answers C{PING}.

        @raise RuntimeError: when it does not start in C{timeout} seconds (its log said).
        """
        if self.process is not None:
            raise RuntimeError("redis-server is running already")
        os.makedirs(self.directory, exist_ok=True)
        attempts = 1 if self.port is not None else 3
        for attempt in range(attempts):
            if self.port is None or attempt:
                self.port = free_port()
            self.process = subprocess.Popen(
                self._argv(), cwd=self.directory, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent)
            if self._wait_ready(timeout):
                return self
            self._reap()
        raise RuntimeError("redis-server did not start on 127.0.0.1:{}: {}".format(
            self.port, self._log_tail()))

    def wait_in_sync(self, timeout=10):
        """For a replica: wait until its link to the master is up (so that C{WAIT}
        counts it)."""
        deadline = time.monotonic() + timeout
        while b"master_link_status:up" not in self.command("INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica on {} is not in sync".format(self.port))
            time.sleep(0.01)
        return self

    def wait_watching(self, replicas=1, sentinels=0, timeout=10):
        """For a Sentinel: wait until it knows C{replicas} replicas of its master and
        C{sentinels} other Sentinels (they find each other within about 2 s), so that a
        failover can be voted and has a replica to promote."""
        deadline = time.monotonic() + timeout
        while True:
            known = self.command("SENTINEL", "replicas", self.master_name)
            others = self.command("SENTINEL", "sentinels", self.master_name)
            if len(known) >= replicas and len(others) >= sentinels:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel on {} knows {} replicas and {} Sentinels"
                                   .format(self.port, len(known), len(others)))
            time.sleep(0.02)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self.command("PING", timeout=1) in (b"PONG", "PONG"):
                    return True
            except (OSError, RedisReplyError):
                pass
            time.sleep(0.01)
        return False

    def _log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        stderr = b""
        if self.process is not None and self.process.stderr is not None:
            try:
                stderr = self.process.stderr.read() or b""
            except (OSError, ValueError):
                pass
        return " | ".join(lines[-5:] + stderr.decode("utf-8", "replace").splitlines()[-3:])

    def _reap(self, kill=False, timeout=10):
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()

    def stop(self):
        """Stop the server (TERM, then KILL); its port is kept for L{start}."""
        self._reap()

    def kill(self):
        """Kill the server at once (SIGKILL), as a crash would."""
        self._reap(kill=True)

    def restart(self, timeout=10):
        """Stop the server and start it again on the same port."""
        self.stop()
        return self.start(timeout)

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def command(self, *args, timeout=5):
        """
        Send one command on a fresh connection and return its reply, blocking: for
        fixtures only (flushing a database, asking a replica its role).

        @return: the decoded reply: bytes, an int, L{None} or a list of them.
        @raise RedisReplyError: for an error reply.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            reader = s.makefile("rb")
            if self.password and self.sentinel_of is None:
                s.sendall(_encode(("AUTH", self.password)))
                _read_reply(reader)
            s.sendall(_encode(args))
            return _read_reply(reader)


class RedisReplyError(Exception):
    """An error reply of the fixture's one-shot client."""


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if not isinstance(arg, bytes):
            arg = str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _read_reply(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisReplyError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = reader.read(length + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [_read_reply(reader) for _ in range(count)]
    raise OSError("unexpected reply {!r}".format(line))


def spin(deferred, reactor=None, timeout=10):
    """
    Run the real reactor until C{deferred} has a result (for a synchronous test of a
    networked store; the reactor must not be running).

    @return: C{deferred}, which has its result now.
    @raise AssertionError: when it has none after C{timeout} seconds.
    """
    if reactor is None:
        from twisted.internet import reactor
    done = []
    deferred.addBoth(lambda result: (done.append(True), result)[1])
    deadline = time.monotonic() + timeout
    while not done:
        if time.monotonic() > deadline:
            raise AssertionError("no result after {} s of the real reactor".format(timeout))
        turn(reactor)
    return deferred


def turn(reactor):
    """One turn of the reactor, waiting at most 5 ms (not at all when a call is due)."""
    due = reactor.timeout()
    reactor.iterate(0.005 if due is None else min(0.005, due))


class Settle:
    """
    The C{later} of L{amalgam8.testing.late.FlushingResults} for stores on a real Redis:
    L{flush} runs the real reactor until every store in L{stores} has nothing in flight and
    has received the change messages published so far (each store's C{settled()}).
    """

    def __init__(self, reactor=None, timeout=10):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.timeout = timeout
        self.stores = []

    def track(self, store):
        """Settle C{store} too at every flush; returns it."""
        self.stores.append(store)
        return store

    @property
    def pending(self):
        return sum(1 for store in self.stores if not store.idle)

    def flush(self):
        """Settle every store, until none has anything more in flight; returns 0."""
        for _ in range(100):
            spin(gatherResults([store.settled() for store in self.stores]),
                 self.reactor, self.timeout)
            if all(store.idle for store in self.stores):
                return 0
        raise AssertionError("the stores kept working through 100 settles")

    def wait(self, deferred):
        """Run the reactor until C{deferred} has a result; returns it."""
        return spin(deferred, self.reactor, self.timeout)



class RedisStoreCase:
    """
    A mixin for synchronous tests of Redis stores (a contract suite's case, for one) on
    this process's shared server C{server_key}: the server is emptied before each test,
    C{self.later} is a L{Settle} of every store passed to L{track}, and each tracked store
    is stopped and its connections closed in clean-up. It is the C{setUpLater} the
    contract suites call.
    """

    server_key = "stores"

    def setUpLater(self):
        from twisted.internet import reactor
        from twisted.trial.unittest import SkipTest

        missing = redis_missing()
        if missing:
            raise SkipTest(missing)
        self.redis = shared_server(self.server_key)
        self.redis.command("FLUSHALL")
        self.reactor = reactor
        self.later = Settle(reactor)

    def track(self, store):
        """Settle C{store} at every flush and close it in clean-up; returns it."""
        self.later.track(store)
        self.addCleanup(self._closed, store)
        return store

    def address(self):
        """The L{RedisAddress} of the shared server."""
        from amalgam8.redislink import RedisAddress

        return RedisAddress("127.0.0.1", self.redis.port)

    def _closed(self, store):
        if store.running:
            store.stopService()
        if store.stopping is not None:
            spin(store.stopping, self.reactor)
