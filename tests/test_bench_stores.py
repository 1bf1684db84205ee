"""
Tests for the store sections of bench/registry and bench/controller (bench/stores.py, issue
13): the configurations and their server arguments, the rows and tables, without a network;
then each section run end to end at tiny sizes (real redis-server, real a8registry and
a8controller processes, wrk) so that the scripts cannot rot.
"""

import argparse
import contextlib
import importlib.machinery
import importlib.util
import io
import json
import os
import shutil

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from amalgam8.rules import validate_rules
from amalgam8.testing.redis import redis_missing
from bench import benchlib as bl
from bench import stores as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench(name):
    """bench/NAME (a script without a .py suffix) as a module."""
    loader = importlib.machinery.SourceFileLoader("bench_" + name,
                                                  os.path.join(ROOT, "bench", name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name,
                                                                             loader))
    loader.exec_module(module)
    return module


def wrk_result(rps=1000.0, requests=1000, p50_us=1500, p99_us=2500, **counters):
    data = {"requests": requests, "duration_us": 1000000, "rps": rps, "p50_us": p50_us,
            "p90_us": 2000, "p99_us": p99_us, "max_us": 3000,
            "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}
    data.update(counters)
    return bl.WrkResult.from_json(data)


def run(rps=1000.0, shares=(1.0,), a8_ns=300_000_000, store_ns=0, **counters):
    return st.Run(wrk_result(rps=rps, **counters), a8_ns, store_ns, shares)


class FakeServer:
    """What start_targets and Target need of a L{bl.Server}: no process at all."""

    def __init__(self, name, argv, port):
        self.name = name
        self.argv = argv
        self.port = port
        self.stopped = False

    def pids(self):
        return [self.port]

    def check_alive(self):
        pass

    def stop(self):
        self.stopped = True


class FakeProcs:
    """A L{bl.Processes} that starts nothing: it records what it was given."""

    def __init__(self):
        self.added = []
        self.started = []

    def add(self, thing):
        self.added.append(thing)
        return thing

    def start(self, server):
        fake = FakeServer(server.name, server.argv, 9000 + len(self.started))
        self.started.append(fake)
        return fake


class FakeBackend:
    """A backend that starts nothing and names its slot in the arguments."""

    name = "fake"
    instances = []

    def __init__(self, directory):
        self.directory = directory
        self.running = False
        FakeBackend.instances.append(self)

    def start(self):
        self.running = True
        return self

    def stop(self):
        self.running = False

    def server_args(self, program, slot):
        return ["--fake-slot", str(slot)]

    def pids(self):
        return []

    def describe(self):
        return "a fake store"


class ConfigTests(SynchronousTestCase):
    """The configurations the benchmarks run, and their backends."""

    def test_baseline_first(self):
        """Both lists start with the in-memory store, the baseline of every ratio."""
        for configs in (st.REGISTRY_STORES, st.CONTROLLER_STORES):
            self.assertEqual(configs[0].backend, "memory")
            self.assertEqual((configs[0].processes, configs[0].replicas), (1, 1))

    def test_every_backend_known(self):
        """Every configuration names a backend of BACKENDS, and every label is distinct."""
        for configs in (st.REGISTRY_STORES, st.CONTROLLER_STORES):
            for config in configs:
                self.assertIn(config.backend, st.BACKENDS)
            self.assertEqual(len({c.label for c in configs}), len(configs))

    def test_redis_shapes(self):
        """Redis runs in one process, in two on one port, and in two replicas."""
        for configs in (st.REGISTRY_STORES, st.CONTROLLER_STORES):
            shapes = {(c.processes, c.replicas) for c in configs if c.backend == "redis"}
            self.assertEqual(shapes, {(1, 1), (2, 1), (1, 2)})

    def test_shared_store_for_several(self):
        """Several processes or replicas only on a shared store (the servers refuse else)."""
        for configs in (st.REGISTRY_STORES, st.CONTROLLER_STORES):
            for config in configs:
                if config.processes > 1 or config.replicas > 1:
                    self.assertNotEqual(config.backend, "memory", config.label)

    def test_counts_validated(self):
        """Processes and replicas are at least 1."""
        self.assertRaises(ValueError, st.StoreConfig, "x", processes=0)
        self.assertRaises(ValueError, st.StoreConfig, "x", replicas=0)

    def test_redis_arguments(self):
        """
        The Redis backend points the registry at its address and database, and the
        controller at a redis:// URL with the database; slots outside 0-15 and other
        programs are refused.
        """
        if redis_missing():
            raise SkipTest(redis_missing())
        backend = st.RedisBackend(self.mktemp())
        backend.server.port = 6399
        self.assertEqual(backend.server_args("a8registry", 3),
                         ["--store", "redis", "--store-address", "127.0.0.1:6399",
                          "--store-database", "3"])
        self.assertEqual(backend.server_args("a8controller", 2),
                         ["--database-type", "redis", "--database-host",
                          "redis://127.0.0.1:6399/2"])
        self.assertRaises(bl.BenchError, backend.server_args, "a8registry", 16)
        self.assertRaises(bl.BenchError, backend.server_args, "a8sidecar", 1)

    def test_memory_backend(self):
        """The memory backend adds no argument and has no process."""
        backend = st.MemoryBackend("unused")
        self.assertIs(backend.start(), backend)
        self.assertEqual(backend.server_args("a8registry", 1), [])
        self.assertEqual(backend.pids(), [])

    def test_tree_env(self):
        """The servers import this tree's amalgam8 first."""
        env = st.tree_env("/tree", {"PYTHONPATH": "/other", "HOME": "/h"})
        self.assertEqual(env["PYTHONPATH"], "/tree" + os.pathsep + "/other")
        self.assertEqual(env["HOME"], "/h")
        self.assertEqual(st.tree_env("/tree", {})["PYTHONPATH"], "/tree")


class StartTargetsTests(SynchronousTestCase):
    """L{st.start_targets} over a fake backend and fake processes."""

    def setUp(self):
        self.patch(bl, "log", lambda message: None)
        FakeBackend.instances = []
        self.procs = FakeProcs()
        self.waited = []
        self.patch(st, "wait_for_workers", self.waited.append)

    def start(self, configs):
        return st.start_targets("a8registry", configs, "/logs", self.procs, args=["--a"],
                                env={}, backends={"fake": FakeBackend,
                                                  "memory": st.MemoryBackend})

    def test_one_backend_a_slot_each(self):
        """
        A backend is started once for all its configurations, kept by the processes (so it
        is stopped with them), and each configuration gets a slot of its own.
        """
        targets = self.start([st.StoreConfig("m"), st.StoreConfig("f1", "fake"),
                              st.StoreConfig("f2", "fake")])
        self.assertEqual(len(FakeBackend.instances), 1)
        self.assertTrue(FakeBackend.instances[0].running)
        self.assertEqual([type(b).__name__ for b in self.procs.added],
                         ["MemoryBackend", "FakeBackend"])
        argv = [s.argv for s in self.procs.started]
        self.assertEqual(argv[0][-1], "--a")
        self.assertEqual(argv[1][-3:], ["--a", "--fake-slot", "1"])
        self.assertEqual(argv[2][-3:], ["--a", "--fake-slot", "2"])
        self.assertEqual([t.label for t in targets], ["m", "f1", "f2"])

    def test_processes_and_replicas(self):
        """--processes N goes to each server; replicas are separate servers, one port each."""
        processes, replicas = self.start([st.StoreConfig("p", "fake", processes=2),
                                          st.StoreConfig("r", "fake", replicas=2)])
        self.assertEqual(processes.servers[0].argv[-2:], ["--processes", "2"])
        self.assertEqual(self.waited, [processes])
        self.assertEqual(len(replicas.servers), 2)
        self.assertEqual(replicas.spread(), [("127.0.0.1", p) for p in replicas.ports])
        self.assertEqual(processes.spread(), ())
        self.assertEqual(replicas.port, replicas.ports[0])
        self.assertNotIn("--processes", replicas.servers[1].argv)
        self.assertEqual(replicas.groups(), [[p] for p in replicas.ports])

    def test_unknown_backend(self):
        """A configuration naming no known backend is a BenchError naming it."""
        error = self.assertRaises(bl.BenchError, self.start, [st.StoreConfig("e", "etcd")])
        self.assertIn("etcd", str(error))


class RowTests(SynchronousTestCase):
    """Runs, comparisons and the tables."""

    def test_run_conflicts(self):
        """A run's rate counts only the requests that were no 409."""
        self.assertEqual(run(rps=100.0, requests=1000, conflicts=250).rps, 75.0)
        self.assertEqual(run(rps=100.0).rps, 100.0)
        self.assertEqual(run(rps=100.0, conflicts=3).problems(), [])

    def test_cpu_per_request(self):
        """CPU time per request of the servers and of the store, in microseconds."""
        self.assertEqual(run(a8_ns=2_000_000, store_ns=500_000).cpu_us(), (2.0, 0.5))

    def test_shares_note(self):
        """The average split over the runs, and the 409s where they are counted."""
        self.assertEqual(st.shares_note([run(shares=(0.6, 0.4)), run(shares=(0.4, 0.6))]),
                         "50/50")
        self.assertEqual(st.shares_note([run()]), "")
        self.assertEqual(st.shares_note([run(conflicts=2, shares=(0.5, 0.5))]),
                         "50/50; 2 x 409 of 1,000")

    def test_check_spread(self):
        """A replica that took less than a tenth of the work is an error of the run."""
        target = st.Target(st.StoreConfig("r", "redis", replicas=2), None, [1, 2])
        errors = []
        st.check_spread("heartbeats", target, [run(shares=(0.95, 0.05))], errors)
        self.assertEqual(len(errors), 1)
        self.assertIn("replica #2", errors[0])
        errors = []
        st.check_spread("heartbeats", target, [run(shares=(0.6, 0.4))], errors)
        self.assertEqual(errors, [])

    def test_throughput_rows(self):
        """
        The baseline's row, then each other target's best round, its ratio, the ratio in
        each round, latency, CPU and split.
        """
        targets = [st.Target(st.StoreConfig("memory"), None, []),
                   st.Target(st.StoreConfig("redis", "redis", replicas=2), None, [])]
        comparison = bl.Comparison([run(rps=50.0, shares=(0.5, 0.5)),
                                    run(rps=60.0, shares=(0.5, 0.5))],
                                   [run(rps=100.0), run(rps=120.0)])
        rows = st.throughput_rows("heartbeats/s", targets, [comparison])
        self.assertEqual(rows[0], ("heartbeats/s", "memory", "120", "100%", "",
                                   "1.50 / 2.50", "300 + 0", ""))
        self.assertEqual(rows[1], ("", "redis", "60", "50%", "50% 50%", "1.50 / 2.50",
                                   "300 + 0", "50/50"))
        text = bl.table(rows, st.THROUGHPUT_HEADER, right=st.THROUGHPUT_RIGHT)
        self.assertIn("redis", text)

    def test_flagged_rate(self):
        """A metric whose runs had problems is flagged with '!'."""
        targets = [st.Target(st.StoreConfig("memory"), None, []),
                   st.Target(st.StoreConfig("redis", "redis"), None, [])]
        comparison = bl.Comparison([run(rps=50.0, non2xx=3)], [run(rps=100.0)])
        rows = st.throughput_rows("x", targets, [comparison])
        self.assertEqual(rows[1][2], "50 !")

    def test_wakeup_rows(self):
        """p50, p99 and the worst round in ms, and where the readers were held."""
        targets = [st.Target(st.StoreConfig("memory"), None, []),
                   st.Target(st.StoreConfig("p", "redis", processes=2), None, []),
                   st.Target(st.StoreConfig("r", "redis", replicas=2), None, [])]
        times = [[0.001, 0.002, 0.003], [0.004], [0.005, 0.006]]
        rows = st.wakeup_rows("woken", targets, times)
        self.assertEqual(rows[0], ("woken", "memory", "the one process", "2.00", "3.00",
                                   "3.00"))
        self.assertEqual(rows[1][0], "")
        self.assertEqual(rows[1][2], "either process")
        self.assertEqual(rows[2][2:], ("the other replica", "6.00", "6.00", "6.00"))


    def test_failed_wakeups(self):
        """
        The targets take their rounds in alternating order; a target whose wake-ups fail is
        an error of the run and a 'failed' row, and the others are still measured.
        """
        targets = [st.Target(st.StoreConfig("a"), None, [FakeServer("a", [], 1)]),
                   st.Target(st.StoreConfig("b", "redis"), None, [FakeServer("b", [], 2)])]
        calls = []

        class Wake:
            def __init__(self, target, scenario, waiters, pause):
                self.target = target

            async def open(self):
                pass

            async def round(self, n):
                calls.append((self.target.label, n))
                if self.target.label == "a" and n == 2:
                    raise bl.BenchError("round 2: 3 of 20 blocking reads woken")
                return 0.001

            def close(self):
                calls.append((self.target.label, "closed"))

        self.patch(st, "_Wake", Wake)
        errors = []
        times = st.wake_all(targets, None, argparse.Namespace(wake_rounds=3, wake_waiters=20),
                            errors, warmup=1)
        self.assertEqual(calls, [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2),
                                 ("b", 3), ("a", "closed"), ("b", "closed")])
        self.assertEqual(times, [[], [0.001, 0.001, 0.001]])
        self.assertEqual(errors, ["wake-ups (a): round 2: 3 of 20 blocking reads woken"])
        rows = st.wakeup_rows("woken", targets, times)
        self.assertEqual(rows[0][3:], ("failed", "", ""))
        self.assertEqual(rows[1][3:], ("1.00", "1.00", "1.00"))
        self.assertRaises(bl.BenchError, st.wakeups, targets[0], None, 3, 20, warmup=1)


class OptionTests(SynchronousTestCase):
    """The options of the store sections."""

    def parse(self, argv, configs=st.REGISTRY_STORES):
        parser = argparse.ArgumentParser()
        st.add_options(parser)
        parser.error = lambda message: (_ for _ in ()).throw(ValueError(message))
        options = parser.parse_args(argv)
        st.check_options(parser, options, configs)
        return options

    def test_defaults(self):
        """Two rounds of 2 s, wrk -t2 -c32, 100 wake-up rounds of 20 readers."""
        options = self.parse([])
        self.assertEqual((options.store_duration, options.store_rounds,
                          options.store_threads, options.store_connections,
                          options.wake_rounds, options.wake_waiters), (2, 2, 2, 32, 100, 20))

    def test_threads_shared_by_replicas(self):
        """wrk's threads must divide evenly among the replicas of every configuration."""
        error = self.assertRaises(ValueError, self.parse, ["--store-threads", "3"])
        self.assertIn("replicas", str(error))

    def test_counts_positive(self):
        """Counts below 1, and fewer connections than threads, are refused."""
        self.assertRaises(ValueError, self.parse, ["--store-rounds", "0"])
        self.assertRaises(ValueError, self.parse, ["--wake-waiters", "0"])
        self.assertRaises(ValueError, self.parse, ["--store-connections", "1"])

    def test_bench_lists(self):
        """bench/registry's --memory-steps and bench/controller's --write-connections."""
        registry = load_bench("registry")
        self.assertEqual(registry._steps("10,100"), (10, 100))
        for bad in ("100,10", "0,10", "x", "10,10"):
            self.assertRaises(argparse.ArgumentTypeError, registry._steps, bad)
        controller = load_bench("controller")
        self.assertEqual(controller._counts("2,8"), (2, 8))
        for bad in ("0", "a", ""):
            self.assertRaises(argparse.ArgumentTypeError, controller._counts, bad)

    def test_bench_refuses_exclusive_sections(self):
        """--stores-only with --no-stores is a usage error (exit status 2) of both."""
        for name in ("registry", "controller"):
            bench = load_bench(name)
            with contextlib.redirect_stderr(io.StringIO()):
                error = self.assertRaises(SystemExit, bench.main,
                                          ["--stores-only", "--no-stores"])
            self.assertEqual(error.code, 2)


class WorkloadTests(SynchronousTestCase):
    """What the sections write: every write a valid change."""

    def test_put_bodies(self):
        """
        The rule-write bodies are valid PUT bodies of rules with ids, each rule once with
        its priority raised and once as it was.
        """
        controller = load_bench("controller")
        rules = controller.store_rules()
        path = controller.write_bodies(self.mktemp(), rules)
        with open(path) as f:
            bodies = [json.loads(line) for line in f]
        self.assertEqual(len(bodies), 2 * controller.RULES)
        for body in bodies:
            validate_rules(body, require_id=True)
        first = [b["rules"][0] for b in bodies if b["rules"][0]["id"] == rules[0]["id"]]
        self.assertEqual([r["priority"] for r in first],
                         [rules[0]["priority"] + 1, rules[0]["priority"]])

    def test_wake_writes_change(self):
        """Consecutive wake-up writes differ (each one is a change)."""
        controller = load_bench("controller")
        registry = load_bench("registry")
        for scenario in (controller.CONTROLLER_WAKE, registry.REGISTRY_WAKE):
            self.assertNotEqual(scenario.write(0), scenario.write(1))
            self.assertEqual(scenario.write(0), scenario.write(2))
            self.assertIn("wait=", scenario.read(7))
            self.assertIn("=7", scenario.read(7))


# -- the sections, end to end at tiny sizes ---------------------------------------------------

def _missing():
    if not shutil.which("wrk"):
        return "wrk is not installed (make bench-debs installs it)"
    return redis_missing()


#: The baseline and one shared shape per section (each wrk run lasts a second at least):
#: two registry replicas on Redis, a controller of two processes on Redis.
REGISTRY_TINY = (st.REGISTRY_STORES[0], st.REGISTRY_STORES[3])
CONTROLLER_TINY = (st.CONTROLLER_STORES[0], st.CONTROLLER_STORES[2])


def tiny_options(**more):
    options = argparse.Namespace(store_duration=1, store_rounds=1, store_threads=2,
                                 store_connections=4, wake_rounds=3, wake_waiters=3,
                                 loadavg=bl.loadavg())
    vars(options).update(more)
    return options


class SectionTests(SynchronousTestCase):
    """Each store section run end to end, at tiny sizes."""

    skip = _missing()

    def setUp(self):
        self.logged = []
        self.patch(bl, "log", self.logged.append)
        self.logdir = os.path.abspath(self.mktemp())
        os.makedirs(self.logdir)
        self.procs = bl.Processes()
        self.addCleanup(self.procs.stop)

    def printed(self, print_stores, options, result):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_stores(options, result)
        return out.getvalue()

    def test_registry(self):
        """
        bench/registry's store section: every row of every configuration measured without
        an error, the wake-ups, and Redis's memory per instance beside the memory store's.
        """
        bench = load_bench("registry")
        self.patch(bench, "HEARTBEAT_IDS", 40)
        self.patch(bench, "MORE", 20)
        options = tiny_options(memory_steps=(100, 200))
        errors = []
        result = bench.stores(self.logdir, self.procs, options, errors,
                              configs=REGISTRY_TINY)
        self.assertEqual(errors, [])
        self.assertEqual([label for label, _ in result["metrics"]],
                         ["heartbeats/s (40 ids)", "list 10-instance service/s",
                          "list all 71 instances/s (-c4)",
                          "registrations/s (new instance each)"])
        for _, comparisons in result["metrics"]:
            self.assertEqual(len(comparisons), len(REGISTRY_TINY) - 1)
            for comparison in comparisons:
                self.assertGreater(comparison.best.rps, 0)
                self.assertGreater(comparison.baseline.rps, 0)
        self.assertEqual([len(times) for times in result["wakes"]], [3, 3])
        self.assertTrue(all(t > 0 for times in result["wakes"] for t in times))
        self.assertEqual(sorted(result["redis_used"]), [0, 100, 200])
        self.assertGreater(result["redis_used"][200], result["redis_used"][0])
        text = self.printed(bench.print_stores, options, result)
        for config in REGISTRY_TINY:
            self.assertIn(config.label, text)
        self.assertIn("Redis used_memory growth / instance", text)
        self.assertIn("the other replica", text)

    def test_controller(self):
        """
        bench/controller's store section: GET /v1/rules and rule writes on every
        configuration without an error (409s aside), and the wake-ups.
        """
        bench = load_bench("controller")
        options = tiny_options(write_connections=(2,))
        errors = []
        result = bench.stores(self.logdir, self.procs, options, errors,
                              configs=CONTROLLER_TINY)
        self.assertEqual(errors, [])
        self.assertEqual([label for label, _ in result["metrics"]],
                         ["GET /v1/rules/s (100 rules)", "rule writes/s (PUT, -c2)"])
        for _, comparisons in result["metrics"]:
            for comparison in comparisons:
                self.assertGreater(comparison.best.requests, 0)
        self.assertEqual([len(times) for times in result["wakes"]], [3, 3])
        text = self.printed(bench.print_stores, options, result)
        self.assertIn("redis, 2 processes", text)
        self.assertIn("either process", text)
        self.assertIn("x 409 of", text)
