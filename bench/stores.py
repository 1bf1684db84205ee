# -*- test-case-name: tests.test_bench_stores -*-
"""
The store sections of bench/registry and bench/controller (issue 13): the same server on
each of its stores, one process, several processes on one port (C{--processes N}) and
several replicas on one store, measured in the same run beside the in-memory store.

    targets = start_targets("a8registry", REGISTRY_STORES, logdir, procs, args=[...])
    comparisons = bl.compare_all(targets[0], targets[1:], rounds,
                                 lambda target, n: measure(target, "registry_get.lua",
                                                           ["/api/v1/instances"], options))
    print(bl.table(throughput_rows("list all/s", targets, comparisons), THROUGHPUT_HEADER))

It holds:

 - L{StoreConfig}, and the configurations each benchmark runs, L{REGISTRY_STORES} and
   L{CONTROLLER_STORES}: the in-memory store first (the baseline of every ratio), then each
   shared store in one process, in two processes on one port and in two replicas. A new
   store is one more entry there, and its backend one more class in L{BACKENDS};
 - the backends (L{MemoryBackend}, L{RedisBackend}): a store server started once for all the
   configurations that use it, each configuration in a database of its own (C{slot}), and
   the server arguments that point a8registry or a8controller at it;
 - L{Target} (the servers of one configuration, started by L{start_targets}) and
   L{measure}: one wrk run over a target, every replica taking its share (wrk's threads are
   spread over their ports), with the CPU time of the servers and of the store;
 - L{wakeups}: the time from a change written through one replica to the answer of every
   blocking read held on another (or on the one process, or on either of the processes),
   over HTTP, p50/p99 over rounds;
 - L{redis_memory}: Redis's C{used_memory} with 10,000 and 100,000 registry instances;
 - the tables (L{throughput_rows}, L{wakeup_rows}) and the options both benchmarks take
   (L{add_options}).

A new store (the controller's etcd rule store, say) is a backend class and one more entry
in a list; the benchmark of that list then prints its rows beside the others', measured in
the same rounds:

    class EtcdBackend:
        name = "etcd"
        def __init__(self, directory): ...    # where its data and log go
        def start(self): ...                  # start etcd (as bench/catalog_etcd.py's
                                              # start_etcd does); return self
        def stop(self): ...
        def server_args(self, program, slot): # e.g. --database-type etcd --database-host URL,
            ...                               # the slot keeping each configuration's keys apart
        def pids(self): ...                   # its processes, for the CPU column
        def describe(self): ...               # "etcd 3.4.23 on 127.0.0.1:PORT"

    BACKENDS["etcd"] = EtcdBackend
    CONTROLLER_STORES += (StoreConfig("etcd, 1 process", "etcd"),
                          StoreConfig("etcd, 2 replicas", "etcd", replicas=2))

Everything here blocks, like the rest of bench/ (L{redis_memory} spins the reactor itself).
"""

import argparse
import asyncio
import itertools
import os
import time

import attrs

from bench import benchlib as bl
from bench.benchlib import HOST, BenchError

__all__ = [
    "StoreConfig", "REGISTRY_STORES", "CONTROLLER_STORES", "MemoryBackend", "RedisBackend",
    "BACKENDS", "Target", "start_targets", "tree_env", "Run", "measure", "run_rows",
    "shares_note", "check_spread", "WakeScenario", "wakeups", "wake_all", "WAKE_TIMEOUT",
    "redis_memory", "throughput_rows", "THROUGHPUT_HEADER", "THROUGHPUT_RIGHT",
    "wakeup_rows", "WAKEUP_HEADER", "add_options", "check_options", "section_title",
    "describe_backends",
]


# -- the configurations -------------------------------------------------------------------


@attrs.frozen
class StoreConfig:
    """
    One way to run a server on a store.

    @ivar label: how the tables name it (C{"redis, 2 replicas"}).
    @ivar backend: the key of its backend in L{BACKENDS}.
    @ivar processes: C{--processes} of each server (one port, several processes).
    @ivar replicas: how many servers share the store, each on a port of its own.
    """

    label: str
    backend: str = "memory"
    processes: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    replicas: int = attrs.field(default=1, validator=attrs.validators.ge(1))


#: The registry's configurations: the first is the baseline of every ratio.
REGISTRY_STORES = (
    StoreConfig("memory, 1 process"),
    StoreConfig("redis, 1 process", "redis"),
    StoreConfig("redis, 2 processes", "redis", processes=2),
    StoreConfig("redis, 2 replicas", "redis", replicas=2),
)

#: The controller's configurations (an etcd rule store is one more line, and its backend
#: one more entry of L{BACKENDS}).
CONTROLLER_STORES = (
    StoreConfig("memory, 1 process"),
    StoreConfig("redis, 1 process", "redis"),
    StoreConfig("redis, 2 processes", "redis", processes=2),
    StoreConfig("redis, 2 replicas", "redis", replicas=2),
)


class MemoryBackend:
    """The in-memory store: nothing to start; the server keeps its state itself."""

    name = "memory"

    def __init__(self, directory):
        self.directory = directory

    def start(self):
        return self

    def stop(self):
        pass

    def server_args(self, program, slot):
        """The arguments of C{program} (a8registry, a8controller) for this store: none."""
        return []

    def pids(self):
        """The store's processes (for its CPU time): none."""
        return []

    def describe(self):
        return "in the server's process"


class RedisBackend:
    """
    One C{redis-server} (L{amalgam8.testing.redis.RedisServer}: a free loopback port, no
    persistence) for every configuration on Redis, each in a database of its own (its
    C{slot}, 1 to 15), so that their data never meet.
    """

    name = "redis"

    def __init__(self, directory):
        from amalgam8.testing.redis import RedisServer, redis_missing

        missing = redis_missing()
        if missing:
            raise bl.Missing(missing)
        self.server = RedisServer(directory)

    def start(self):
        try:
            self.server.start()
        except RuntimeError as e:
            raise BenchError(str(e))
        return self

    def stop(self):
        self.server.stop()

    def server_args(self, program, slot):
        if not 0 <= slot <= 15:
            raise BenchError("Redis has databases 0 to 15, not {}".format(slot))
        if program == "a8registry":
            return ["--store", "redis", "--store-address", self.server.address,
                    "--store-database", str(slot)]
        if program == "a8controller":
            return ["--database-type", "redis", "--database-host",
                    "redis://{}/{}".format(self.server.address, slot)]
        raise BenchError("no Redis settings for {}".format(program))

    def pids(self):
        process = self.server.process
        return [process.pid] if process is not None else []

    def info(self, section):
        """C{INFO section} as a dict of texts."""
        reply = self.server.command("INFO", section)
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def used_memory(self):
        """Redis's C{used_memory}, in bytes."""
        return int(self.info("memory")["used_memory"])

    def describe(self):
        return "redis-server {} on {}".format(self.info("server").get("redis_version", "?"),
                                              self.server.address)


#: Backends by the name a L{StoreConfig} gives: C{class(directory)} with C{start()},
#: C{stop()}, C{server_args(program, slot)}, C{pids()} and C{describe()}.
BACKENDS = {"memory": MemoryBackend, "redis": RedisBackend}


def tree_env(root=bl.ROOT, environ=None):
    """
    The environment of the servers: this tree's amalgam8 first on the path (the venv may
    hold another checkout's, installed editable).
    """
    environ = dict(os.environ if environ is None else environ)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environ.get("PYTHONPATH")]))
    return environ


@attrs.define
class Target:
    """
    The servers of one L{StoreConfig}: one L{bl.Server} per replica (each with its
    C{--processes}), on C{backend}.
    """

    config: StoreConfig
    backend: object
    servers: list

    @property
    def label(self):
        return self.config.label

    @property
    def ports(self):
        return [server.port for server in self.servers]

    @property
    def port(self):
        """The port writes and fills go to: the first replica's."""
        return self.servers[0].port

    def spread(self):
        """The addresses wrk's threads share out (none: the one port of the URL)."""
        if len(self.servers) < 2:
            return ()
        return [(HOST, port) for port in self.ports]

    def groups(self):
        """
        The pids whose CPU shares L{measure} reports: one group per replica, or per
        process of the one server.
        """
        if len(self.servers) > 1:
            return [server.pids() for server in self.servers]
        return [[pid] for pid in self.servers[0].pids()]

    def pids(self):
        return [pid for server in self.servers for pid in server.pids()]

    def check_alive(self):
        for server in self.servers:
            server.check_alive()

    def stop(self):
        for server in self.servers:
            server.stop()


def start_targets(program, configs, logdir, procs, args=(), health="/health", env=None,
                  backends=None):
    """
    Start the servers of every configuration of C{configs} (each backend once, kept by
    C{procs} so that it is stopped with everything else); returns the L{Target}s, in order.

    @param args: the arguments of C{program} every server gets (before its store's).
    @param backends: the backend classes by name (default L{BACKENDS}).
    """
    backends = BACKENDS if backends is None else backends
    env = tree_env() if env is None else env
    started = {}
    slots = {}
    targets = []
    for config in configs:
        if config.backend not in backends:
            raise BenchError("{}: no backend {!r} (known: {})".format(
                config.label, config.backend, ", ".join(sorted(backends))))
        backend = started.get(config.backend)
        if backend is None:
            bl.log("  starting the {} store".format(config.backend))
            backend = backends[config.backend](os.path.join(logdir, "store-" + config.backend))
            procs.add(backend)
            backend.start()
            started[config.backend] = backend
        slots[config.backend] = slot = slots.get(config.backend, 0) + 1
        extra = list(args) + backend.server_args(program, slot)
        if config.processes > 1:
            extra += ["--processes", str(config.processes)]
        servers = []
        for replica in range(config.replicas):
            name = "{} {}{}".format(program, config.label,
                                    " #{}".format(replica + 1) if config.replicas > 1 else "")
            bl.log("  starting {}".format(name))
            servers.append(procs.start(bl.twistd_server(program, logdir, name=name,
                                                        health=health, args=extra, env=env)))
        target = Target(config, backend, servers)
        if config.processes > 1:
            wait_for_workers(target)
        targets.append(target)
    return targets


def wait_for_workers(target, timeout=30.0, sleep=time.sleep):
    """Wait until each server of C{target} has its C{--processes} (itself and workers)."""
    for server in target.servers:
        server.wait_until(lambda: len(server.pids()) >= target.config.processes, timeout,
                          "{} did not start {} processes".format(server.name,
                                                                 target.config.processes),
                          sleep=sleep)


# -- throughput -----------------------------------------------------------------------------


@attrs.frozen
class Run:
    """
    One wrk run over a L{Target}: its L{bl.WrkResult}, the CPU time the servers (C{a8_ns})
    and the store (C{store_ns}) used meanwhile, and the share of the servers' CPU time each
    group of L{Target.groups} took (C{shares}).
    """

    result: object
    a8_ns: int
    store_ns: int
    shares: tuple

    @property
    def rps(self):
        """Requests per second; of those that were no conflict (409) where they are counted."""
        conflicts = self.conflicts
        if not conflicts:
            return self.result.rps
        return self.result.rps * (self.requests - conflicts) / self.requests

    @property
    def conflicts(self):
        return self.result.counters.get("conflicts", 0)

    @property
    def p50(self):
        return self.result.p50

    @property
    def p99(self):
        return self.result.p99

    @property
    def requests(self):
        return self.result.requests

    @property
    def counters(self):
        return self.result.counters

    def problems(self):
        return self.result.problems()

    def cpu_us(self):
        """(servers, store) CPU time per request, in microseconds."""
        if not self.requests:
            return float("nan"), float("nan")
        return (self.a8_ns / 1000.0 / self.requests, self.store_ns / 1000.0 / self.requests)


def measure(target, script, args, options, connections=None, threads=None):
    """
    One wrk run of C{script} (C{args} after C{--}) over C{target}, with C{options}'s
    C{store_duration}, C{store_threads} and C{store_connections} (or C{connections},
    C{threads}): a L{Run}.
    """
    threads = options.store_threads if threads is None else threads
    groups = target.groups()
    before = [bl.cpu_ns(group) for group in groups]
    store_before = bl.cpu_ns(target.backend.pids())
    result = bl.wrk("http://{}:{}".format(HOST, target.port), script, threads=threads,
                    connections=options.store_connections if connections is None
                    else connections, duration=options.store_duration, args=args,
                    spread=target.spread())
    used = [bl.cpu_ns(group) - b for group, b in zip(groups, before)]
    store = bl.cpu_ns(target.backend.pids()) - store_before
    target.check_alive()
    total = sum(used)
    shares = tuple(u / total if total else 0.0 for u in used)
    return Run(result, total, store, shares)


def shares_note(runs):
    """
    How the CPU time of the servers was shared (C{"51/49"}), over C{runs} ("" for one
    server), and the conflicts (409s) of the runs that count them.
    """
    notes = []
    if runs and len(runs[0].shares) > 1:
        columns = list(zip(*(r.shares for r in runs)))
        notes.append("/".join("{:.0f}".format(100.0 * sum(c) / len(c)) for c in columns))
    conflicts = sum(r.conflicts for r in runs)
    if any("conflicts" in r.counters for r in runs):
        notes.append("{:,} x 409 of {:,}".format(conflicts, sum(r.requests for r in runs)))
    return "; ".join(notes)


def check_spread(label, target, runs, errors, least=0.1):
    """An error for every replica of C{target} that took less than C{least} of the work."""
    if len(target.servers) < 2:
        return
    for index, _ in enumerate(target.servers):
        share = sum(r.shares[index] for r in runs) / len(runs)
        if share < least:
            errors.append("{} ({}): replica #{} did only {:.0%} of the work: the load was "
                          "not spread".format(label, target.label, index + 1, share))


def run_rows(label, targets, script, args_for, options, errors, connections=None,
             threads=None):
    """
    C{script} over every target in C{options.store_rounds} alternating rounds
    (L{bl.compare_all}); the problems of each run go to C{errors}. Returns the
    L{bl.Comparison} of every target but the first (the baseline), with the baseline's.
    """

    def run(target, round_number):
        done = measure(target, script, args_for(target, round_number), options,
                       connections=connections, threads=threads)
        for problem in done.problems():
            errors.append("{} ({}): {}".format(label, target.label, problem))
        a8, store = done.cpu_us()
        bl.log("  {:<30} {:<20} {:>8,.0f} req/s  p50 {:6.2f} ms  p99 {:6.2f} ms  "
               "CPU {:.0f}+{:.0f} us/req{}".format(
                   label, target.label, done.rps, done.p50, done.p99, a8, store,
                   "  ERRORS" if done.problems() else ""))
        return done

    comparisons = bl.compare_all(targets[0], targets[1:], options.store_rounds, run)
    for target, comparison in zip(targets[1:], comparisons):
        check_spread(label, target, comparison.runs, errors)
    return comparisons


THROUGHPUT_HEADER = ("metric", "store", "req/s", "vs memory", "per round", "p50 / p99 ms",
                     "CPU us/req a8 + store", "CPU split, note")
THROUGHPUT_RIGHT = (2, 3, 4, 5, 6)


def _rate(run, runs):
    return "{:,.0f}{}".format(run.rps, " !" if any(r.problems() for r in runs) else "")


def _cpu(run):
    a8, store = run.cpu_us()
    return "{:,.0f} + {:,.0f}".format(a8, store)


def throughput_rows(label, targets, comparisons):
    """
    The rows of one metric: the baseline's (the first target), then each other target's
    best round, its ratio to the baseline's best, the ratio in each round, latency, CPU per
    request and how the CPU time was shared between its replicas or processes.
    """
    baseline = comparisons[0].baseline
    baseline_runs = comparisons[0].baseline_runs
    rows = [(label, targets[0].label, _rate(baseline, baseline_runs), "100%", "",
             "{:.2f} / {:.2f}".format(baseline.p50, baseline.p99), _cpu(baseline),
             shares_note(baseline_runs))]
    for target, comparison in zip(targets[1:], comparisons):
        best = comparison.best
        rows.append(("", target.label, _rate(best, comparison.runs),
                     "{:.0%}".format(comparison.ratio),
                     " ".join("{:.0%}".format(r) for r in comparison.round_ratios()),
                     "{:.2f} / {:.2f}".format(best.p50, best.p99), _cpu(best),
                     shares_note(comparison.runs)))
    return rows


# -- wake-ups over HTTP -----------------------------------------------------------------------


@attrs.frozen
class WakeScenario:
    """
    What L{wakeups} reads and writes.

    @ivar current: the path of a plain read whose C{version} header is the current version.
    @ivar read: C{version -> path} of a blocking read waiting for a version above it.
    @ivar version: the header that carries the version (C{A8-Index}, C{A8-Revision}).
    @ivar write: C{n -> request bytes} of the write numbered C{n}: the writes of consecutive
        numbers must differ, so that each one is a change.
    @ivar write_status: the status the write answers.
    @ivar gauge: the metric that counts the blocking reads a process holds.
    """

    current: str
    read: object
    version: str
    write: object
    write_status: int
    gauge: str


async def _response(reader):
    """One HTTP/1.1 response (with a Content-Length): (status, {name: value}, body)."""
    line = await reader.readline()
    if not line:
        raise BenchError("the server closed the connection")
    status = int(line.split(b" ", 2)[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if "content-length" not in headers:
        raise BenchError("an answer without Content-Length")
    length = int(headers["content-length"])
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


async def _connect(port):
    return await asyncio.open_connection(HOST, port, limit=1 << 22)


async def _exchange(connection, request):
    reader, writer = connection
    writer.write(request)
    await writer.drain()
    return await _response(reader)


async def _parked(target, scenario, ports, expected, pause, deadline=5.0):
    """
    Wait until the blocking reads are held: where each reading port is one process, until
    the servers' C{scenario.gauge} adds up to C{expected}; else (C{--processes}: a
    scrape is answered by any one of them) C{pause} seconds.
    """
    if target.config.processes > 1:
        await asyncio.sleep(pause)
        return
    give_up = time.monotonic() + deadline
    while True:
        held = 0
        for port in ports:
            # A plain blocking scrape (its answer is chunked): the readers' answers, if any
            # came early, wait in their sockets, and the write is not sent yet.
            status, _, body = bl.request(port, "GET", "/metrics", timeout=10)
            value = bl.metric(body, scenario.gauge) if status == 200 else None
            held += int(value or 0)
        if held == expected:
            return
        if held > expected or time.monotonic() > give_up:
            raise BenchError("{}: {} blocking reads held, not {}".format(
                target.label, held, expected))
        await asyncio.sleep(0.002)


#: A round whose readers are not all woken within this many seconds fails (a wake-up takes
#: milliseconds; a reader left to its wait timer would take the whole wait).
WAKE_TIMEOUT = 10

#: The number of each wake-up write of this process: a scenario alternates its writes by it,
#: so that every write is a change, in a second call of L{wakeups} on a target too.
_WRITES = itertools.count()


class _Wake:
    """
    The wake-up rounds of one target: C{waiters} keep-alive connections to the replicas
    that do not write (or to the one port), one to the first replica, which writes.
    """

    def __init__(self, target, scenario, waiters, pause):
        self.target = target
        self.scenario = scenario
        self.waiters = waiters
        self.pause = pause
        self.ports = target.ports[1:] or target.ports
        self.readers = []
        self.writer = None
        self.version = None

    async def open(self):
        scenario = self.scenario
        for i in range(self.waiters):
            self.readers.append(await _connect(self.ports[i % len(self.ports)]))
        self.writer = await _connect(self.target.port)
        status, headers, _ = await _exchange(self.writer,
                                             bl.request_bytes("GET", scenario.current))
        if status != 200:
            raise BenchError("GET {} answered {}".format(scenario.current, status))
        self.version = int(headers[scenario.version.lower()])

    async def round(self, n):
        """One round: the time from the write sent to the last reader's whole answer."""
        scenario, version = self.scenario, self.version
        request = bl.request_bytes("GET", scenario.read(version))
        for _, stream in self.readers:
            stream.write(request)
        for _, stream in self.readers:
            await stream.drain()
        await _parked(self.target, scenario, self.ports, self.waiters, self.pause)

        async def answer(reader):
            found = await _response(reader)
            return time.perf_counter(), found

        pending = [asyncio.ensure_future(answer(r)) for r, _ in self.readers]
        change = scenario.write(next(_WRITES))
        started = time.perf_counter()
        self.writer[1].write(change)
        await self.writer[1].drain()
        try:
            answers = await asyncio.wait_for(asyncio.gather(*pending), WAKE_TIMEOUT)
            status, _, body = await asyncio.wait_for(_response(self.writer[0]),
                                                     WAKE_TIMEOUT)
        except asyncio.TimeoutError:
            raise BenchError("round {}: {} of {} blocking reads woken within {} s of the "
                             "write".format(n, sum(1 for p in pending if p.done()),
                                            self.waiters, WAKE_TIMEOUT))
        if status != scenario.write_status:
            raise BenchError("the write answered {}: {!r}".format(status, body[:200]))
        versions = []
        for _, (status, headers, _) in answers:
            new = int(headers.get(scenario.version.lower(), -1))
            if status != 200 or new <= version:
                raise BenchError("a blocking read answered {} at version {} (was {})"
                                 .format(status, new, version))
            versions.append(new)
        self.version = max(versions)
        return max(at for at, _ in answers) - started

    def close(self):
        for _, stream in self.readers + ([self.writer] if self.writer else []):
            stream.close()


#: What a failing wake-up run may raise, besides L{BenchError}.
_WAKE_ERRORS = (BenchError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                ValueError, IndexError, KeyError)


async def _wake_rounds(runs, rounds, warmup):
    times = [[] for _ in runs]
    failures = [None] * len(runs)
    try:
        for index, run in enumerate(runs):
            try:
                await run.open()
            except _WAKE_ERRORS as e:
                failures[index] = e
        for n in range(warmup + rounds):
            for index in bl.alternating(range(len(runs)), n):
                if failures[index] is not None:
                    continue
                try:
                    taken = await runs[index].round(n)
                except _WAKE_ERRORS as e:
                    failures[index] = e
                    continue
                if n >= warmup:
                    times[index].append(taken)
    finally:
        for run in runs:
            run.close()
    return times, failures


def wake_all(targets, scenario, options, errors, warmup=5, pause=0.05):
    """
    C{options.wake_rounds} rounds (after C{warmup} not counted) on every target, the
    targets in alternating order in each round, of: C{options.wake_waiters} blocking reads
    held on the target's replicas but the first (or on its one port; with C{--processes},
    C{pause} seconds after they were sent, else once its gauge counts them all), then one
    change written through the first replica. Returns, per target, the time from the write
    sent to the last reader's whole answer of each round, in seconds; a target whose reads
    are not held, not woken or answered wrong has none, and its error goes to C{errors}.
    """
    runs = [_Wake(target, scenario, options.wake_waiters, pause) for target in targets]
    times, failures = asyncio.run(_wake_rounds(runs, options.wake_rounds, warmup))
    for index, (target, failure) in enumerate(zip(targets, failures)):
        if failure is None:
            continue
        try:
            target.check_alive()
            why = str(failure) if isinstance(failure, BenchError) else repr(failure)
        except BenchError as e:
            why = str(e)
        errors.append("wake-ups ({}): {}".format(target.label, why))
        times[index] = []
    return times


def wakeups(target, scenario, rounds, waiters, warmup=5, pause=0.05):
    """L{wake_all} of one target: its times; L{BenchError} when it fails."""
    errors = []
    options = argparse.Namespace(wake_rounds=rounds, wake_waiters=waiters)
    [times] = wake_all([target], scenario, options, errors, warmup, pause)
    if errors:
        raise BenchError(errors[0])
    return times


WAKEUP_HEADER = ("blocking reads woken", "store", "readers on", "p50 ms", "p99 ms", "max ms")


def readers_on(target):
    if target.config.replicas > 1:
        return "the other replica"
    if target.config.processes > 1:
        return "either process"
    return "the one process"


def wakeup_rows(label, targets, times):
    """A row per target: p50, p99 and the worst of its rounds, in ms."""
    rows = []
    for index, (target, found) in enumerate(zip(targets, times)):
        ms = sorted(t * 1000.0 for t in found)
        figures = (("{:.2f}".format(bl.percentile(ms, 50)), "{:.2f}".format(
            bl.percentile(ms, 99)), "{:.2f}".format(ms[-1])) if ms
            else ("failed", "", ""))
        rows.append((label if index == 0 else "", target.label, readers_on(target))
                    + figures)
    return rows


# -- Redis memory per instance -------------------------------------------------------------


def redis_memory(directory, steps, services=1000, batch=500, timeout=600):
    """
    Redis's C{used_memory} on a fresh C{redis-server} before and after C{steps} (e.g.
    C{(10_000, 100_000)}) registry instances, registered through the registry's Redis store
    (L{amalgam8.registry.store.redis.RedisStore}, in this process, C{batch} at a time: HTTP
    changes nothing of what Redis holds, and is four times slower). The instances are shaped
    like bench/registry's memory ones: C{services} services, two tags, a 10-minute ttl.
    Returns C{{0: bytes, step: bytes, ...}}; L{BenchError} when the store's count of the
    namespace is not the step.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, gatherResults

    from amalgam8.redislink import RedisAddress
    from amalgam8.registry.store.redis import RedisStore
    from amalgam8.testing.redis import spin
    from amalgam8.testing.registry import registration

    backend = RedisBackend(directory).start()
    store = RedisStore(reactor, reactor, RedisAddress(HOST, backend.server.port))
    used = {}

    async def load():
        await store.settled()
        used[0] = backend.used_memory()
        done = 0
        for step in steps:
            started = time.monotonic()
            while done < step:
                chunk = range(done, min(step, done + batch))
                await gatherResults([store.register("default", registration(
                    service="mem-svc-{:04d}".format(i % services),
                    value="10.{}.{}.{}:8080".format(i >> 16, (i >> 8) & 255, i & 255),
                    ttl=600, tags=("bench", "v1"))) for i in chunk])
                done = chunk[-1] + 1
            count = store.stats()["instances"].get("default")
            if count != step:
                raise BenchError("the Redis store counts {} instances after {:,} "
                                 "registrations".format(count, step))
            used[step] = backend.used_memory()
            bl.log("  {:,} instances in Redis: used_memory {:,.1f} MiB ({:.1f} s)".format(
                step, used[step] / 1048576.0, time.monotonic() - started))

    try:
        store.startService()
        spin(Deferred.fromCoroutine(load()), reactor, timeout)
    except AssertionError as e:   # spin's time ran out
        raise BenchError("loading Redis: {}".format(e))
    finally:
        stopping = store.stopService()
        if stopping is not None:
            spin(stopping, reactor, 30)
        backend.stop()
    return used


# -- options --------------------------------------------------------------------------------


def add_options(parser, wake=True):
    """The options of a store section (an argparse group of C{parser})."""
    group = parser.add_argument_group("store section (issue 13)")
    group.add_argument("--store-duration", type=int, default=2,
                       help="seconds per wrk run of the store rows [2]")
    group.add_argument("--store-rounds", type=int, default=2,
                       help="rounds per store row, in alternating order [2]")
    group.add_argument("--store-connections", type=int, default=32,
                       help="wrk -c of the store rows [32]")
    group.add_argument("--store-threads", type=int, default=2,
                       help="wrk -t of the store rows; the replicas share them out [2]")
    if wake:
        group.add_argument("--wake-rounds", type=int, default=100,
                           help="wake-up rounds per store [100]")
        group.add_argument("--wake-waiters", type=int, default=20,
                           help="blocking reads held per wake-up round [20]")
    return group


def check_options(parser, options, configs):
    """C{parser.error} for store options that cannot work with C{configs}."""
    if min(options.store_duration, options.store_rounds, options.store_threads,
           getattr(options, "wake_rounds", 1), getattr(options, "wake_waiters", 1)) < 1:
        parser.error("the store section's counts must be at least 1")
    if options.store_connections < options.store_threads:
        parser.error("--store-connections must be at least --store-threads")
    for config in configs:
        if options.store_threads % config.replicas:
            parser.error("--store-threads {} cannot be shared by the {} replicas of '{}'"
                         .format(options.store_threads, config.replicas, config.label))


def section_title(program, configs, options, described, seconds=None):
    """
    The lines above a store table: the configurations, wrk's settings, the stores
    (C{described}: L{describe_backends}) and how long the section took.
    """
    described = "; ".join("{}: {}".format(name, text) for name, text in described.items())
    if seconds is not None:
        described += " (this section: {:.0f} s)".format(seconds)
    return ["{} on each store: {} (same machine, same run)".format(
                program, ", ".join(c.label for c in configs)),
            "wrk -t{} -c{} -d{}s, {} round(s) per row in alternating order; {} cores; "
            "load average at start {}".format(
                options.store_threads, options.store_connections, options.store_duration,
                options.store_rounds, os.cpu_count(), options.loadavg),
            "stores: " + described]


def describe_backends(targets):
    """What the backends of C{targets} are, by name (ask while they run)."""
    found = {}
    for target in targets:
        if target.backend.name not in found:
            found[target.backend.name] = target.backend.describe()
    return found
