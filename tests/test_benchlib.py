"""
Tests for L{bench.benchlib}, what the benchmarks share: the wrk and h2load parsers,
percentiles, tables, ports, CPU and RSS from /proc (a fake /proc tree, and this process), and
starting and stopping processes (one small server on loopback).
"""

import os
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import benchlib as bl

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:37965
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.89ms    1.29ms  15.24ms   82.25%
    Req/Sec     4.03k   287.08     4.48k    60.00%
  Latency Distribution
     50%    7.65ms
     75%    8.47ms
     90%    9.29ms
     99%   12.86ms
  4011 requests in 1.00s, 591.47KB read
Requests/sec:   3997.55
Transfer/sec:    589.48KB
WRK_JSON {"requests":4011,"duration_us":1003364,"rps":3997.552,"p50_us":7651,"p90_us":9291,\
"p99_us":12858,"max_us":15243,"non2xx":0,"first_bad_status":0,"socket_errors":{"connect":0,\
"read":0,"write":0,"timeout":0}}
"""

H2LOAD_OUTPUT = """\
starting benchmark...
spawning thread #0: 5 total client(s). 200 total requests
Application protocol: http/1.1
progress: 10% done
progress: 100% done

finished in 394.88ms, 506.49 req/s, 74.69KB/s
requests: 200 total, 200 started, 199 done, 198 succeeded, 1 failed, 0 errored, 1 timeout
status codes: 198 2xx, 0 3xx, 1 4xx, 0 5xx
traffic: 29.49KB (30200) total, 19.73KB (20200) headers (space savings 0.00%), 2.93KB (3000) data
                     min         max         mean         sd        +/- sd
time for request:      839us      7.02ms      2.62ms      1.13ms    79.50%
time for connect:      105us       533us       287us       160us    60.00%
time to 1st byte:     2.11ms      2.38ms      2.23ms       105us    60.00%
req/s           :     101.52      101.85      101.68        0.15    60.00%
"""


def wrk_data(**counters):
    data = {"requests": 1000, "duration_us": 1000000, "rps": 1000.0, "p50_us": 1500,
            "p90_us": 2000, "p99_us": 2500, "max_us": 3000,
            "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}
    data.update(counters)
    return data


class WrkTests(SynchronousTestCase):
    """L{bl.parse_wrk}, L{bl.WrkResult} and L{bl.wrk_argv}."""

    def test_parse(self):
        """The WRK_JSON line of wrk's output becomes a result in req/s and milliseconds."""
        result = bl.WrkResult.from_json(bl.parse_wrk(WRK_OUTPUT), cpu_ns=4011 * 50000)
        self.assertEqual(result.requests, 4011)
        self.assertEqual(result.rps, 3997.552)
        self.assertEqual(result.p50, 7.651)
        self.assertEqual(result.p99, 12.858)
        self.assertEqual(result.counters, {"non2xx": 0, "first_bad_status": 0})
        self.assertEqual(result.socket_errors, 0)
        self.assertEqual(result.cpu_us, 50.0)
        self.assertEqual(result.problems(), [])

    def test_no_line(self):
        """Output without a WRK_JSON line is a BenchError that shows the output."""
        error = self.assertRaises(bl.BenchError, bl.parse_wrk, "unable to connect\n")
        self.assertIn("unable to connect", str(error))

    def test_problems(self):
        """Each script's counters and the socket errors are named, in order."""
        result = bl.WrkResult.from_json(wrk_data(
            non2xx=3, first_bad_status=503,
            socket_errors={"connect": 0, "read": 2, "write": 0, "timeout": 1}))
        self.assertEqual(result.problems(), [
            "3 non-2xx answers (first: 503)",
            "socket errors {'read': 2, 'timeout': 1}"])
        controller = bl.WrkResult.from_json(wrk_data(bad_status=2, first_bad_status=500,
                                                     bad_length=4))
        self.assertEqual(controller.problems(), ["2 answers not 200 (first: 500)",
                                                 "4 bodies of the wrong length"])
        proxy = bl.WrkResult.from_json(wrk_data(bad_status=7))
        self.assertEqual(proxy.problems(), ["7 answers with a status >= 400"])
        empty = bl.WrkResult.from_json(wrk_data(requests=0, rps=0.0))
        self.assertEqual(empty.problems(), ["no request completed"])
        self.assertNotEqual(empty.cpu_us, empty.cpu_us)  # NaN

    def test_conflicts_counted(self):
        """controller_update.lua's 409s are kept among the counters, and are no problem."""
        result = bl.WrkResult.from_json(wrk_data(conflicts=4, bad_status=0,
                                                 first_bad_status=409))
        self.assertEqual(result.counters["conflicts"], 4)
        self.assertEqual(result.problems(), [])

    def test_spread_env(self):
        """
        wrk_env names the addresses the threads share out (wrk_json.lua reads them), drops
        one left in the environment when there is none, and refuses an uneven split.
        """
        env = bl.wrk_env([("127.0.0.1", 1), ("127.0.0.1", 2)], 4, environ={"HOME": "/h"})
        self.assertEqual(env, {"HOME": "/h", bl.SPREAD_VARIABLE: "127.0.0.1:1 127.0.0.1:2"})
        self.assertEqual(bl.wrk_env((), 1, environ={bl.SPREAD_VARIABLE: "x:1"}), {})
        self.assertRaises(bl.BenchError, bl.wrk_env, [("h", 1), ("h", 2)], 3, environ={})
        with open(os.path.join(bl.HERE, "wrk_json.lua")) as f:
            self.assertIn(bl.SPREAD_VARIABLE, f.read())

    def test_argv(self):
        """The command line names the script in bench/, headers, the URL, then -- and args."""
        argv = bl.wrk_argv("http://127.0.0.1:1/x", "proxy_wrk.lua", threads=2, connections=50,
                           duration=4, timeout="5s", headers=["Cookie: a=b"], args=["p", 3])
        self.assertEqual(argv, [
            "wrk", "-t2", "-c50", "-d4s", "--latency", "--timeout", "5s", "-H", "Cookie: a=b",
            "-s", os.path.join(bl.HERE, "proxy_wrk.lua"), "http://127.0.0.1:1/x", "--", "p",
            "3"])
        self.assertNotIn("--", bl.wrk_argv("http://h/", "proxy_wrk.lua"))

    def test_scripts_exist(self):
        """Every wrk script the benchmarks name is in bench/, beside wrk_json.lua."""
        for script in ("wrk_json.lua", "proxy_wrk.lua", "controller_get.lua",
                       "registry_stats.lua", "registry_get.lua", "registry_heartbeat.lua",
                       "registry_register.lua", "controller_update.lua"):
            self.assertTrue(os.path.exists(os.path.join(bl.HERE, script)), script)


class H2loadTests(SynchronousTestCase):
    """L{bl.parse_h2load}, L{bl.parse_h2load_log} and L{bl.h2load_argv}."""

    def test_parse(self):
        """The requests line, status codes, rate and request times are read."""
        summary = bl.parse_h2load(H2LOAD_OUTPUT)
        self.assertEqual((summary.total, summary.started, summary.done, summary.succeeded,
                          summary.failed, summary.errored, summary.timeout),
                         (200, 200, 199, 198, 1, 0, 1))
        self.assertEqual(summary.codes, (198, 0, 1, 0))
        self.assertEqual(summary.rps, 506.49)
        self.assertEqual(summary.request_time, ("839us", "7.02ms", "2.62ms", "1.13ms"))
        self.assertFalse(summary.complete)
        self.assertEqual(summary.describe(), "199 of 200 done, 1 failed, 0 errored, 1 timed out")

    def test_complete(self):
        """A run with every request done and none failed is complete; absent lines are None."""
        summary = bl.parse_h2load(
            "requests: 5 total, 5 started, 5 done, 5 succeeded, 0 failed, 0 errored, "
            "0 timeout\n")
        self.assertTrue(summary.complete)
        self.assertIsNone(summary.codes)
        self.assertIsNone(summary.request_time)
        self.assertNotEqual(summary.rps, summary.rps)  # NaN

    def test_unreadable(self):
        """Output without a requests line is a BenchError."""
        self.assertRaises(bl.BenchError, bl.parse_h2load, "connect failed\n")

    def test_log(self):
        """The --log-file lines give the durations and the count of answers not 2xx."""
        samples, not_2xx = bl.parse_h2load_log([
            "1796230878029278\t200\t1850\n", "1796230878029247\t503\t1945\n", "\n",
            "1796230878039473\t204\t1118\n"])
        self.assertEqual(samples, [1850, 1945, 1118])
        self.assertEqual(not_2xx, 1)

    def test_argv(self):
        """h2load in HTTP/1.1 mode, paced per connection, headers and log file before the URL."""
        self.assertEqual(
            bl.h2load_argv("http://h/x", 10, 1000, 100, headers=["cookie: a"], log_file="l"),
            ["h2load", "--h1", "-t1", "-c10", "-n1000", "--rps=100", "-H", "cookie: a",
             "--log-file", "l", "http://h/x"])


class FiguresTests(SynchronousTestCase):
    """L{bl.percentile}, L{bl.best}, L{bl.alternating}."""

    def test_percentile(self):
        """
        Rank round(q/100 n + 0.5), half to even: p50 of 1..10 is 6, p90 and p99 are 10, p0
        the smallest; none is NaN.
        """
        values = [7, 3, 10, 1, 9, 2, 8, 4, 6, 5]
        self.assertEqual(bl.percentile(values, 50), 6)
        self.assertEqual(bl.percentile(values, 90), 10)
        self.assertEqual(bl.percentile(values, 99), 10)
        self.assertEqual(bl.percentile(values, 0), 1)
        self.assertEqual(bl.percentile([4.5], 99), 4.5)
        nan = bl.percentile([], 50)
        self.assertNotEqual(nan, nan)

    def test_percentile_large(self):
        """p99 of 1..1000 is 990, p50 is 500."""
        values = list(range(1000, 0, -1))
        self.assertEqual(bl.percentile(values, 99), 990)
        self.assertEqual(bl.percentile(values, 50), 500)

    def test_best(self):
        """The run with the highest rate; None for no runs."""
        runs = [bl.WrkResult.from_json(wrk_data(rps=r)) for r in (5.0, 9.0, 7.0)]
        self.assertIs(bl.best(runs), runs[1])
        self.assertIsNone(bl.best([]))

    def test_alternating(self):
        """Even rounds keep the order, odd ones reverse it."""
        self.assertEqual(bl.alternating("abc", 0), ["a", "b", "c"])
        self.assertEqual(bl.alternating("abc", 1), ["c", "b", "a"])
        self.assertEqual(bl.alternating(("a", "b"), 4), ["a", "b"])


class CompareTests(SynchronousTestCase):
    """L{bl.compare} and L{bl.Comparison}."""

    def test_alternating_rounds(self):
        """Baseline first in even rounds, subject first in odd ones; bests and ratios."""
        calls = []
        rates = {("base", 0): 100.0, ("subj", 0): 50.0, ("subj", 1): 90.0, ("base", 1): 80.0}

        def run(server, round_number):
            calls.append((server, round_number))
            return bl.WrkResult.from_json(wrk_data(rps=rates[server, round_number]))

        result = bl.compare("base", "subj", 2, run)
        self.assertEqual(calls, [("base", 0), ("subj", 0), ("subj", 1), ("base", 1)])
        self.assertEqual(result.best.rps, 90.0)
        self.assertEqual(result.baseline.rps, 100.0)
        self.assertEqual(result.ratio, 0.9)
        self.assertEqual(result.round_ratios(), [0.5, 90.0 / 80.0])
        self.assertEqual([r.rps for r in result.runs], [50.0, 90.0])

    def test_compare_all(self):
        """
        compare_all: the baseline and every subject in each round, the order reversed in odd
        rounds; one Comparison per subject, beside the baseline's runs of the same rounds.
        """
        calls = []

        def run(item, round_number):
            calls.append((item, round_number))
            rates = {"base": 100.0, "a": 50.0, "b": 80.0}
            return bl.WrkResult.from_json(wrk_data(rps=rates[item] + round_number))

        a, b = bl.compare_all("base", ["a", "b"], 2, run)
        self.assertEqual(calls, [("base", 0), ("a", 0), ("b", 0),
                                 ("b", 1), ("a", 1), ("base", 1)])
        self.assertEqual([r.rps for r in a.runs], [50.0, 51.0])
        self.assertEqual([r.rps for r in b.baseline_runs], [100.0, 101.0])
        self.assertEqual(b.ratio, 81.0 / 101.0)
        self.assertEqual(a.round_ratios(), [0.5, 51.0 / 101.0])

    def test_zero_baseline(self):
        """A baseline that completed nothing gives ratios of 0, not a ZeroDivisionError."""
        zero = bl.WrkResult.from_json(wrk_data(rps=0.0))
        some = bl.WrkResult.from_json(wrk_data(rps=10.0))
        result = bl.Comparison([some], [zero])
        self.assertEqual((result.ratio, result.round_ratios()), (0.0, [0.0]))


class TableTests(SynchronousTestCase):
    """L{bl.table} and L{bl.wrap}."""

    def test_table(self):
        """Columns as wide as their widest cell; inner columns right-aligned; None: a rule."""
        text = bl.table([("a", 1, "x"), None, ("longer", "1,000", "")],
                        ("metric", "n", "note"))
        self.assertEqual(text.splitlines(), [
            "metric | n     | note",
            "-------+-------+-----",
            "a      |     1 | x   ",
            "-------+-------+-----",
            "longer | 1,000 |     ",
        ])

    def test_right(self):
        """C{right} names the right-aligned columns (here the last too, not the middle)."""
        text = bl.table([("a", "b", "1")], ("h1", "h2", "h3"), right=(2,))
        self.assertEqual(text.splitlines()[2], "a  | b  |  1")

    def test_wrap(self):
        """Long text is filled at spaces only; an indented line's continuations keep it."""
        self.assertEqual(bl.wrap("aa bb-cc dd", 6), "aa\nbb-cc\ndd")
        self.assertEqual(bl.wrap("  aa bb cc", 7), "  aa bb\n  cc")
        self.assertEqual(bl.wrap("short", 100), "short")


class SmallThingsTests(SynchronousTestCase):
    """Ports, tools, raw requests, Prometheus samples, the load average."""

    def test_free_ports(self):
        """Distinct loopback ports that can be bound."""
        ports = bl.free_ports(5)
        self.assertEqual(len(set(ports)), 5)
        for port in ports:
            self.assertTrue(0 < port < 65536)
        import socket
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind((bl.HOST, ports[0]))

    def test_need(self):
        """A tool on PATH is its path; a missing one is Missing, naming its package."""
        self.assertEqual(bl.need("sh"), subprocess.run(
            ["sh", "-c", "command -v sh"], capture_output=True, text=True).stdout.strip())
        error = self.assertRaises(bl.Missing, bl.need, "h2load-no-such-tool", "nghttp2-client")
        self.assertIn("apt-get install -y nghttp2-client", str(error))
        self.assertIsInstance(error, bl.BenchError)

    def test_request_bytes(self):
        """A raw HTTP/1.1 request with Host: bench and always a Content-Length."""
        self.assertEqual(bl.request_bytes("PUT", "/a/b"),
                         b"PUT /a/b HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(bl.request_bytes("POST", "/x", b'{"a":1}'),
                         b"POST /x HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 7\r\n\r\n{\"a\":1}")

    def test_metric(self):
        """A sample's value by name and labels; None when absent."""
        text = (b"# TYPE a8_registry_instances gauge\n"
                b'a8_registry_instances{namespace="default"} 1234.0\n'
                b"a8_controller_blocking_reads 7\n")
        self.assertEqual(bl.metric(text, "a8_registry_instances", 'namespace="default"'),
                         1234.0)
        self.assertEqual(bl.metric(text.decode(), "a8_controller_blocking_reads"), 7.0)
        self.assertIsNone(bl.metric(text, "a8_registry_instances", 'namespace="other"'))
        self.assertIsNone(bl.metric(text, "a8_controller"))

    def test_loadavg(self):
        """The first three fields of /proc/loadavg."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("0.52 0.61 0.70 2/345 6789\n")
        self.assertEqual(bl.loadavg(path), "0.52 0.61 0.70")
        self.assertEqual(len(bl.loadavg().split()), 3)


class FakeProc:
    """A fake /proc tree in a temporary directory."""

    def __init__(self, root):
        self.root = root

    def write(self, pid, name, text, task=None):
        folder = os.path.join(self.root, str(pid))
        if task is not None:
            folder = os.path.join(folder, "task", str(task))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)

    def process(self, pid, utime=0, stime=0, rss_kb=0, threads=None, children=(),
                name="nginx"):
        """C{threads}: {tid: schedstat run time in ns} (default: one thread, the pid)."""
        self.write(pid, "stat", "{} ({}) S 1 {} {} 0 -1 4194560 10 0 0 0 {} {} 0 0 20 0 1 0\n"
                   .format(pid, name, pid, pid, utime, stime))
        self.write(pid, "status", "Name:\t{}\nVmPeak:\t  9000 kB\nVmRSS:\t  {} kB\n".format(
            name, rss_kb))
        self.write(pid, "comm", name + "\n")
        threads = threads or {pid: 0}
        for tid, ns in threads.items():
            self.write(pid, "schedstat", "{} 100 3\n".format(ns), task=tid)
            self.write(pid, "children", " ".join(map(str, children if tid == pid else ())),
                       task=tid)


class ProcTests(SynchronousTestCase):
    """CPU, RSS and children from /proc: a fake tree, and this very process."""

    def setUp(self):
        self.fake = FakeProc(self.mktemp())
        self.proc = self.fake.root

    def test_children(self):
        """Children of every thread; descendants down the tree; comm."""
        self.fake.process(10, children=(11, 12), name="nginx")
        self.fake.process(11, children=(13,))
        self.fake.process(12)
        self.fake.process(13)
        self.assertEqual(bl.children(10, self.proc), [11, 12])
        self.assertEqual(sorted(bl.descendants(10, self.proc)), [10, 11, 12, 13])
        self.assertEqual(bl.comm(10, self.proc), "nginx")
        self.assertEqual(bl.children(99, self.proc), [])
        self.assertEqual(bl.comm(99, self.proc), "")

    def test_cpu(self):
        """stat: utime + stime in seconds; schedstat: the sum over threads, in ns."""
        self.fake.process(20, utime=3 * bl.CLK_TCK, stime=bl.CLK_TCK,
                          threads={20: 1500, 21: 2500})
        self.assertEqual(bl.stat_cpu_s(20, self.proc), 4.0)
        self.assertEqual(bl.sched_cpu_ns(20, self.proc), 4000)
        self.fake.process(30, threads={30: 1000})
        self.assertEqual(bl.cpu_ns([20, 30, 99], self.proc), 5000)
        self.assertEqual(bl.stat_cpu_s(99, self.proc), 0.0)
        self.assertEqual(bl.sched_cpu_ns(99, self.proc), 0)

    def test_process_name_with_parenthesis(self):
        """A command name with ") " in it does not shift the stat fields."""
        self.fake.process(40, utime=bl.CLK_TCK, stime=0, name="a) b")
        self.assertEqual(bl.stat_cpu_s(40, self.proc), 1.0)

    def test_rss(self):
        """VmRSS in bytes; NaN for a process that is gone."""
        self.fake.process(50, rss_kb=2048)
        self.assertEqual(bl.rss_bytes(50, self.proc), 2048 * 1024)
        gone = bl.rss_bytes(99, self.proc)
        self.assertNotEqual(gone, gone)

    def test_own_process(self):
        """This process has CPU time (after some work) and an RSS, in the real /proc."""
        deadline = time.process_time() + 0.02
        while time.process_time() < deadline:
            pass
        self.assertGreater(bl.sched_cpu_ns(os.getpid()), 0)
        self.assertGreater(bl.stat_cpu_s(os.getpid()), 0.0)
        self.assertGreater(bl.rss_bytes(os.getpid()), 1 << 20)

    def test_sample_window(self):
        """CPU % over the window of each group (100 = one core), RSS MiB at its end."""
        tick = bl.CLK_TCK
        self.fake.process(60, utime=tick, rss_kb=1024)
        self.fake.process(61, utime=0, rss_kb=3072)
        now = [100.0]

        def sleep(seconds):
            now[0] += seconds
            self.fake.process(60, utime=tick + tick // 2, stime=tick // 2, rss_kb=1024)
            self.fake.process(61, utime=tick // 4, rss_kb=4096)

        result = bl.sample_window({"master": [60], "workers": [61]}, 2.0, sleep=sleep,
                                  clock=lambda: now[0], proc=self.proc)
        self.assertAlmostEqual(result["master"]["cpu"], 50.0, places=6)
        self.assertAlmostEqual(result["workers"]["cpu"], 12.5, places=6)
        self.assertEqual(result["master"]["rss"], 1.0)
        self.assertEqual(result["workers"]["rss"], 4.0)

    def test_wait_quiet(self):
        """Quiet once a step uses under the threshold; False when the time runs out."""
        now = [0.0]
        used = iter([50_000_000, 100_000_000, 100_100_000])

        def sleep(seconds):
            now[0] += seconds
            self.fake.process(70, threads={70: next(used)})

        self.fake.process(70, threads={70: 0})
        self.assertTrue(bl.wait_quiet([70], timeout=1.0, step=0.1, threshold=0.05,
                                      sleep=sleep, clock=lambda: now[0], proc=self.proc))
        self.assertAlmostEqual(now[0], 0.3)

        def busy(seconds):
            now[0] += seconds
            self.fake.process(70, threads={70: int(now[0] * 1e9)})

        now[0] = 0.0
        self.fake.process(70, threads={70: 0})
        self.assertFalse(bl.wait_quiet([70], timeout=0.5, step=0.1, sleep=busy,
                                       clock=lambda: now[0], proc=self.proc))


def gone(pid, timeout=10.0):
    """True once C{pid} has exited (gone, or a zombie nobody has reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/{}/stat".format(pid)) as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.01)
    return False


SCRIPT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ready", child.pid, flush=True)
time.sleep(60)
"""


class ProcessTests(SynchronousTestCase):
    """Starting and stopping processes: a small script, and one server on loopback."""

    def setUp(self):
        self.logdir = tempfile.mkdtemp(prefix="a8-benchlib-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", self.logdir]))

    def test_start_stop(self):
        """The log is read while it runs; stop() ends it and its whole session."""
        with bl.Processes() as procs:
            proc = procs.start(bl.Process("a script", [sys.executable, "-c", SCRIPT],
                                          self.logdir))
            match = proc.wait_for_log(r"ready (\d+)", timeout=30)
            grandchild = int(match.group(1))
            self.assertEqual(proc.log_path, os.path.join(self.logdir, "a_script.log"))
            self.assertIn(grandchild, proc.pids())
            self.assertGreaterEqual(proc.rss(), 1 << 20)
            proc.check_alive()
        self.assertIsNotNone(proc.process.returncode)
        self.assertNotIn(proc, bl._RUNNING)
        self.assertTrue(gone(grandchild), "the grandchild outlived stop()")
        error = self.assertRaises(bl.BenchError, proc.check_alive)
        self.assertIn("ready", str(error))

    def test_exits_early(self):
        """A process that exits while awaited is a BenchError with its output's tail."""
        proc = bl.Process("quitter", [sys.executable, "-c", "print('bad flag'); exit(3)"],
                          self.logdir).start()
        self.addCleanup(proc.stop)
        error = self.assertRaises(bl.BenchError, proc.wait_for_log, "never", 30)
        self.assertIn("exited with status 3", str(error))
        self.assertIn("bad flag", str(error))

    def test_processes_stop_on_error(self):
        """Leaving the with block by an exception stops every process, last started first."""
        stopped = []

        class Fake:
            def __init__(self, name):
                self.name = name

            def start(self):
                return self

            def stop(self):
                stopped.append(self.name)

        def run():
            with bl.Processes() as procs:
                procs.start(Fake("first"))
                procs.start(Fake("second"))
                raise bl.BenchError("boom")

        self.assertRaises(bl.BenchError, run)
        self.assertEqual(stopped, ["second", "first"])

    def test_server(self):
        """bench/plain_twisted_web.py starts on a free loopback port, answers, and stops."""
        body_file = os.path.join(self.logdir, "body.json")
        with open(body_file, "wb") as f:
            f.write(b'{"rules":[]}')
        server = bl.plain_twisted_web(self.logdir, body_file).start()
        self.addCleanup(server.stop)
        status, headers, body = bl.request(server.port, "GET", "/v1/rules")
        self.assertEqual((status, body), (200, b'{"rules":[]}'))
        self.assertEqual(bl.get_many(server.port, "/", count=3), [(200, b'{"rules":[]}')] * 3)
        self.assertEqual(server.url, "http://127.0.0.1:{}".format(server.port))
        bl.push_state(server.port, {"instances": [], "rules": []})  # answered 200: no error
        server.stop()
        self.assertIsNotNone(server.process.returncode)
        self.assertRaises(OSError, bl.request, server.port, "GET", "/", timeout=5)

    def test_upstream_nginx(self):
        """start_upstream: a plain nginx answering each port's text; stopped with its worker."""
        try:
            binary = bl.nginx_binary()
        except bl.Missing as e:
            # make test installs nginx (TEST_DEBS) and sets A8_REQUIRE_PROXY: fail there.
            if os.environ.get("A8_REQUIRE_PROXY"):
                self.fail("nginx is required: {}".format(e))
            raise SkipTest("needs nginx: {}".format(e))
        one, two = bl.free_ports(2)
        nginx = bl.start_upstream(binary, self.logdir, [(one, "v1\n"), (two, "v2\n")])
        self.addCleanup(nginx.stop)
        self.assertEqual(bl.get_many(one, "/any", count=2), [(200, b"v1\n")] * 2)
        self.assertEqual(bl.get_many(two, "/"), [(200, b"v2\n")])
        workers = nginx.pids()
        self.assertGreaterEqual(len(workers), 2)  # the master and its worker
        nginx.stop()
        for pid in workers:
            self.assertTrue(gone(pid), "nginx process {} outlived stop()".format(pid))
