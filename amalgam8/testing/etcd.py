# -*- test-case-name: tests.test_etcd_client -*-
"""
Real etcd servers for tests: Debian's C{etcd} (C{etcd-server}) started with
C{spawnProcess} on free loopback ports, in a temporary data directory, with the v2 API on
(C{--enable-v2}) and fast raft timings (C{--heartbeat-interval 10 --election-timeout 50}:
a member leads within about 50 ms of starting).

    async def setUp(self):
        self.etcd = await start_etcd(self)           # stopped in cleanup
        client = EtcdV3(http, self.etcd.urls, reactor)

    await self.etcd.restart()                        # same data directory and ports
    await self.etcd.compact()                        # compact at the current revision

A cluster is a list of L{EtcdMember}s started with one C{--initial-cluster}:
C{start_etcd(case, size=3)} starts three members (a quorum of two), and
L{EtcdCluster.stop_member}/L{EtcdCluster.start_member}/L{EtcdCluster.kill_member} act on one.
Each member's output goes to C{etcd-<name>.log} in the cluster's directory (its last lines
are in the message when a member does not start).

L{etcd_missing} gives the reason to skip a test where there is no etcd binary.

L{shared_etcd} is one member for the whole test process, started and stopped without the
reactor (as L{amalgam8.testing.redis.shared_server} is), for synchronous suites that share
it between tests, each under a key prefix of its own.
"""

import os
import shutil
import socket

import attrs
import treq
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

__all__ = ["EtcdCluster", "EtcdMember", "start_etcd", "etcd_missing", "ETCD", "free_ports",
           "shared_etcd", "SharedEtcd"]

#: The etcd binary: C{A8_TEST_ETCD}, else the one on PATH, else Debian's.
ETCD = os.environ.get("A8_TEST_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"
HOST = "127.0.0.1"


def etcd_missing(executable=ETCD):
    """@return: why etcd cannot run here (a skip reason), or L{None}."""
    if not os.access(executable, os.X_OK):
        return "no etcd at {} (Debian: apt-get install etcd-server)".format(executable)
    return None


def free_ports(count, host=HOST):
    """C{count} distinct ports free on C{host} now (held together while chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


async def _all(coroutines):
    """Run C{coroutines} together; raise the first one's exception (unwrapped)."""
    try:
        return await gatherResults([ensureDeferred(c) for c in coroutines],
                                   consumeErrors=True)
    except Exception as e:
        failure = getattr(e, "subFailure", None)
        if failure is None:
            raise
        failure.raiseException()


class _MemberProcess(ProcessProtocol):
    """Writes the member's output to its log file; tells waiters when it exits."""

    def __init__(self, log_path):
        self.log_path = log_path
        self.exit = None
        self._waiters = []

    def childDataReceived(self, fd, data):
        with open(self.log_path, "ab") as f:
            f.write(data)

    def processEnded(self, reason):
        self.exit = (getattr(reason.value, "exitCode", None),
                     getattr(reason.value, "signal", None))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.exit)

    def ended(self):
        if self.exit is not None:
            return succeed(self.exit)
        d = Deferred()
        self._waiters.append(d)
        return d


@attrs.define
class EtcdMember:
    """
    One member: its name, ports and data directory stay across restarts.

    @ivar process: the running L{_MemberProcess}, or L{None} while stopped.
    """

    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    process: object = None
    scheme: str = "http"

    @property
    def client_url(self):
        return "{}://{}:{}".format(self.scheme, HOST, self.client_port)

    @property
    def peer_url(self):
        return "http://{}:{}".format(HOST, self.peer_port)

    @property
    def running(self):
        return self.process is not None and self.process.exit is None

    def argv(self, executable, initial_cluster, state, extra_args=()):
        return [executable, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster,
                "--initial-cluster-state", state,
                "--initial-cluster-token", "a8-test-" + os.path.basename(
                    os.path.dirname(self.data_dir)),
                "--enable-v2",
                "--heartbeat-interval", "10", "--election-timeout", "50",
                "--snapshot-count", "100000"] + list(extra_args)

    def tail(self, lines=15):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


class EtcdCluster:
    """
    C{size} etcd members on loopback, in C{directory} (created).

    @param reactor: an C{IReactorProcess} and C{IReactorTime} (the real reactor).
    @param extra_args: more options for every member
        (C{["--experimental-watch-progress-notify-interval", "100ms"]}).
    """

    def __init__(self, reactor, directory, size=1, executable=ETCD, extra_args=()):
        self._reactor = reactor
        self.extra_args = list(extra_args)
        self.directory = os.path.abspath(directory)
        self.executable = executable
        self.size = size
        self.members = []
        self._started = False
        self._http = None
        self._pool = None
        os.makedirs(self.directory, exist_ok=True)
        self._choose_ports()

    def _choose_ports(self):
        ports = free_ports(2 * self.size)
        self.members = [
            EtcdMember("etcd{}".format(i), ports[2 * i], ports[2 * i + 1],
                       os.path.join(self.directory, "etcd{}.data".format(i)),
                       os.path.join(self.directory, "etcd-etcd{}.log".format(i)))
            for i in range(self.size)]

    @property
    def urls(self):
        """The client URLs of every member."""
        return [m.client_url for m in self.members]

    @property
    def url(self):
        return self.members[0].client_url

    @property
    def initial_cluster(self):
        return ",".join("{}={}".format(m.name, m.peer_url) for m in self.members)

    def http(self):
        """A treq client of the cluster's own (its pool closed by L{stop})."""
        if self._http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            from amalgam8.client import DirectEndpoints

            # (DirectEndpoints: a refused connection is reported at once, not 0.3 s later.)
            self._pool = HTTPConnectionPool(self._reactor, persistent=False)
            self._http = HTTPClient(Agent.usingEndpointFactory(
                self._reactor, DirectEndpoints(self._reactor), pool=self._pool))
        return self._http

    def _spawn(self, member, state):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        member.process = _MemberProcess(member.log_path)
        self._reactor.spawnProcess(
            member.process, self.executable,
            member.argv(self.executable, self.initial_cluster, state, self.extra_args),
            env=env,
            path=self.directory, childFDs={0: "w", 1: "r", 2: "r"})

    async def start(self, timeout=10.0):
        """
        Start every member and wait until each one answers C{/health} (has a leader).
        A new cluster whose ports were taken meanwhile is tried again on other ports.

        @raise RuntimeError: a member exited or did not become healthy in C{timeout}.
        """
        for attempt in range(3):
            state = "existing" if self._started else "new"
            for member in self.members:
                self._spawn(member, state)
            try:
                await _all([self._healthy(m, timeout) for m in self.members])
            except Exception as e:
                await self.stop()
                reason = e
                in_use = any("address already in use" in m.tail(50) for m in self.members)
                if self._started or not in_use or attempt == 2:
                    raise reason
                shutil.rmtree(self.directory, ignore_errors=True)
                os.makedirs(self.directory, exist_ok=True)
                self._choose_ports()
                continue
            self._started = True
            return self

    async def _healthy(self, member, timeout):
        http = self.http()
        deadline = self._reactor.seconds() + timeout
        while True:
            if not member.running:
                raise RuntimeError("etcd {} exited {} before answering:\n{}".format(
                    member.name, member.process.exit, member.tail()))
            try:
                response = await http.get(member.client_url + "/health", timeout=1,
                                          reactor=self._reactor)
                body = await treq.content(response)
                if response.code == 200 and b'"true"' in body:
                    return
            except Exception:
                pass
            if self._reactor.seconds() > deadline:
                raise RuntimeError("etcd {} did not become healthy within {}s:\n{}".format(
                    member.name, timeout, member.tail()))
            await deferLater(self._reactor, 0.01, lambda: None)

    async def _stop(self, member, signal="TERM", timeout=5.0):
        process = member.process
        if process is None or process.exit is not None:
            return
        try:
            process.transport.signalProcess(signal)
        except ProcessExitedAlready:
            return
        ended = process.ended()
        ended.addTimeout(timeout, self._reactor)
        try:
            await ended
        except Exception:
            try:
                process.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            await process.ended()

    def _stop_all(self):
        # A member that has lost its quorum may take seconds to obey TERM (the last ones of a
        # cluster stopping together), so a cluster's members are killed; their data
        # survives a kill (etcd syncs its log), and a lone member stops at once on TERM.
        signal = "TERM" if len(self.members) == 1 else "KILL"
        return _all([self._stop(m, signal) for m in self.members])

    async def stop(self):
        """
        Stop every member (one: TERM, then KILL after 5 s; a cluster: KILL) and close the
        HTTP pool.
        """
        await self._stop_all()
        if self._pool is not None:
            pool, self._pool, self._http = self._pool, None, None
            await pool.closeCachedConnections()

    async def stop_member(self, index):
        """Stop one member (TERM): it keeps its data directory and ports."""
        await self._stop(self.members[index])

    async def kill_member(self, index):
        """Kill one member (KILL: no clean shutdown)."""
        await self._stop(self.members[index], signal="KILL")

    async def start_member(self, index, timeout=10.0):
        """Start a stopped member again and wait until it is healthy."""
        member = self.members[index]
        self._spawn(member, "existing")
        await self._healthy(member, timeout)

    async def restart(self, timeout=10.0):
        """
        Stop every member (as L{stop} does), start them again on the same ports and data
        directories, and wait until they are healthy.
        """
        await self._stop_all()
        for member in self.members:
            self._spawn(member, "existing")
        await _all([self._healthy(m, timeout) for m in self.members])

    def client(self):
        """An L{amalgam8.etcd.EtcdV3} client of every member, on L{http}."""
        from amalgam8.etcd import EtcdV3
        return EtcdV3(self.http(), self.urls, self._reactor)

    def client_v2(self):
        """An L{amalgam8.etcd.EtcdV2} client of every member, on L{http}."""
        from amalgam8.etcd import EtcdV2
        return EtcdV2(self.http(), self.urls, self._reactor)

    async def compact(self, revision=None):
        """
        Compact the v3 history at C{revision} (default: the current revision).

        @return: the revision compacted at.
        """
        client = self.client()
        if revision is None:
            revision = (await client.range(b"\0", count_only=True)).revision
        await client.compact(revision, physical=True)
        return revision


async def start_etcd(case, reactor=None, size=1, timeout=10.0, extra_args=()):
    """
    Start an L{EtcdCluster} of C{size} members in a fresh C{case.mktemp()} directory,
    stopped in C{case}'s cleanup.
    """
    if reactor is None:
        from twisted.internet import reactor
    cluster = EtcdCluster(reactor, case.mktemp(), size=size, extra_args=extra_args)
    case.addCleanup(cluster.stop)
    await cluster.start(timeout=timeout)
    return cluster


class SharedEtcd:
    """
    One etcd member run with C{subprocess} (blocking, for fixtures only: the reactor need
    not run, nor reap it), in C{directory}; it is sent SIGTERM if the test process dies.

    @ivar member: its L{EtcdMember}.
    @ivar tls: L{None}, or C{(certificate file, key file, CA file)}: the client URL is then
        C{https} with that certificate (checked against that CA when waiting for it).
    """

    def __init__(self, directory, executable=ETCD, tls=None):
        self.directory = os.path.abspath(directory)
        self.executable = executable
        self.tls = tls
        self.member = None
        self.process = None

    @property
    def urls(self):
        return [self.member.client_url]

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def start(self, timeout=10.0):
        """Start the member and wait until it answers C{/health}."""
        import subprocess
        import time
        import urllib.request

        from amalgam8.testing.redis import _die_with_parent

        for attempt in range(3):
            shutil.rmtree(self.directory, ignore_errors=True)
            os.makedirs(self.directory)
            client, peer = free_ports(2)
            self.member = EtcdMember(
                "shared", client, peer, os.path.join(self.directory, "shared.data"),
                os.path.join(self.directory, "etcd-shared.log"),
                scheme="https" if self.tls else "http")
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
            extra = []
            context = None
            if self.tls:
                import ssl

                extra = ["--cert-file", self.tls[0], "--key-file", self.tls[1]]
                context = ssl.create_default_context(cafile=self.tls[2])
            argv = self.member.argv(self.executable,
                                    "shared={}".format(self.member.peer_url), "new", extra)
            with open(self.member.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    argv, cwd=self.directory, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log, preexec_fn=_die_with_parent)
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(self.member.client_url + "/health",
                                                timeout=1, context=context) as answer:
                        if b'"true"' in answer.read():
                            return self
                except OSError:
                    pass
                time.sleep(0.01)
            self.stop()
            if "address already in use" not in self.member.tail(50):
                break
        raise RuntimeError("the shared etcd did not start:\n{}".format(self.member.tail()))

    def stop(self):
        """Stop the member (TERM, then KILL after 5 s)."""
        import subprocess

        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


_SHARED = {}


def shared_etcd(key="stores"):
    """
    The L{SharedEtcd} of C{key} for this test process: started at the first call in a fresh
    temporary directory, stopped and its directory removed when the process exits.
    """
    etcd = _SHARED.get(key)
    if etcd is None or not etcd.running:
        import atexit
        import tempfile

        etcd = SharedEtcd(tempfile.mkdtemp(prefix="a8-etcd-"))
        etcd.start()

        def remove(etcd=etcd):
            etcd.stop()
            shutil.rmtree(etcd.directory, ignore_errors=True)

        atexit.register(remove)
        _SHARED[key] = etcd
    return etcd
