# -*- test-case-name: tests.test_benchlib -*-
"""
What the benchmarks in bench/ share, so that each script is its scenario and its table.

    sys.path.insert(0, ROOT)         # the scripts are run by path: bench/registry, ...
    from bench import benchlib as bl

    with bl.Processes() as procs:    # every process started is stopped on any exit
        registry = procs.start(bl.twistd_server("a8registry", logdir))
        result = bl.wrk(registry.url, "registry_get.lua", threads=1, connections=32,
                        duration=3)
        print(bl.table([("GET", "{:,.0f}".format(result.rps))], ("metric", "req/s")))

It holds:

 - processes: L{Process} (a child in its own session, its output in a log file, stopped with
   SIGTERM and then the whole session with SIGKILL), L{Server} (one whose port is read from its
   log), L{Processes} (stops what it started, in reverse order, on leaving the C{with} block;
   an C{atexit} hook stops anything still running), and the servers the benchmarks start:
   L{twistd_server}, L{plain_twisted_web}, L{start_nginx}, L{start_upstream},
   L{start_nginx_proxy}, L{start_haproxy}, L{start_amalgam8_proxy};
 - L{free_ports}, L{need} (a tool on PATH or L{Missing}), L{raise_nofile},
   L{handle_signals} (SIGTERM ends a benchmark like Ctrl-C);
 - L{wrk} and L{parse_wrk} (the C{WRK_JSON} line that bench/wrk_json.lua prints; C{spread}
   sends each wrk thread to one of several servers), L{wrk_env},
   L{H2load}, L{parse_h2load} and L{parse_h2load_log};
 - CPU and RSS from /proc: L{sched_cpu_ns}, L{stat_cpu_s}, L{rss_bytes}, L{descendants},
   L{sample_window}, L{wait_quiet} (each takes C{proc=} for a fake /proc in tests);
 - L{percentile}, L{alternating}, L{compare} (a baseline and a subject in alternating
   rounds: L{Comparison}), L{compare_all} (a baseline and several subjects), L{table},
   L{wrap};
 - plain HTTP: L{request}, L{get_many}, L{request_bytes}, L{metric}, L{push_state}.

Everything here blocks (these are scripts, not reactor code); the tests (tests/test_benchlib.py)
inject the clock, C{sleep} and the /proc root where a function waits or samples.
"""

import atexit
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import attrs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
PROC = "/proc"
CLK_TCK = os.sysconf("SC_CLK_TCK")

__all__ = [
    "HERE", "ROOT", "HOST", "BenchError", "Missing", "log", "loadavg", "raise_nofile",
    "free_ports", "need", "twistd", "handle_signals", "children", "descendants", "comm",
    "stat_cpu_s", "sched_cpu_ns", "rss_bytes", "cpu_ns", "sample_window", "wait_quiet",
    "percentile", "best", "alternating", "Comparison", "compare", "compare_all", "table",
    "wrap", "request", "get_many", "request_bytes", "metric", "push_state", "Process",
    "Server", "Processes", "twistd_server", "plain_twisted_web", "nginx_binary",
    "start_nginx", "start_upstream", "start_nginx_proxy", "start_haproxy",
    "start_amalgam8_proxy", "versions", "WrkResult", "parse_wrk", "wrk_argv", "wrk_env",
    "SPREAD_VARIABLE", "wrk", "H2loadSummary", "parse_h2load", "parse_h2load_log",
    "h2load_argv", "H2load",
]


class BenchError(Exception):
    """The benchmark cannot go on (a server, a tool or a load failed)."""


class Missing(BenchError):
    """A tool is not installed."""


# -- small things ---------------------------------------------------------------------------


def log(message):
    """One progress line on stderr (stdout is the table)."""
    print(message, file=sys.stderr, flush=True)


def loadavg(path=PROC + "/loadavg"):
    """The 1, 5 and 15 minute load averages, as the text C{"0.52 0.61 0.70"}."""
    with open(path) as f:
        return " ".join(f.read().split()[:3])


def raise_nofile(wanted):
    """Raise the soft open-file limit to C{wanted} (or the hard limit); return the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def free_ports(count, host=HOST):
    """C{count} distinct free ports on C{host} (all held open while choosing)."""
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


PACKAGES = {"h2load": "nghttp2-client", "nginx": "nginx-core"}


def need(tool, package=None):
    """The path of C{tool} on PATH; L{Missing} (naming the Debian package) if it is not."""
    path = shutil.which(tool)
    if not path:
        raise Missing("{} is not installed (apt-get install -y {})".format(
            tool, package or PACKAGES.get(tool, tool)))
    return path


def twistd():
    """The twistd beside the running interpreter (the venv's), else the one on PATH."""
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    return path if os.path.exists(path) else (shutil.which("twistd") or path)


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def handle_signals():
    """SIGTERM and SIGINT raise L{KeyboardInterrupt} (even if started ignoring SIGINT)."""
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)


# -- /proc ----------------------------------------------------------------------------------


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _tasks(pid, proc):
    try:
        return os.listdir("{}/{}/task".format(proc, pid))
    except OSError:
        return []


def children(pid, proc=PROC):
    """The direct children of C{pid} (of every thread of it)."""
    found = []
    for task in _tasks(pid, proc):
        text = _read("{}/{}/task/{}/children".format(proc, pid, task)) or ""
        found += [int(p) for p in text.split()]
    return found


def descendants(pid, proc=PROC):
    """C{pid} and all its descendants (nginx: the master and its workers)."""
    result, todo = [], [pid]
    while todo:
        current = todo.pop()
        result.append(current)
        todo += children(current, proc)
    return result


def comm(pid, proc=PROC):
    """The command name of C{pid} (C{""} when it is gone)."""
    return (_read("{}/{}/comm".format(proc, pid)) or "").strip()


def stat_cpu_s(pid, proc=PROC):
    """utime + stime of the whole process (all threads), in seconds (0.0 when it is gone)."""
    text = _read("{}/{}/stat".format(proc, pid))
    try:
        fields = text.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (AttributeError, ValueError, IndexError):
        return 0.0


def sched_cpu_ns(pid, proc=PROC):
    """
    CPU time of all the process's threads in ns, from /proc/PID/task/*/schedstat (finer than
    /proc/PID/stat); 0 when it is gone.
    """
    total = 0
    for task in _tasks(pid, proc):
        text = _read("{}/{}/task/{}/schedstat".format(proc, pid, task))
        try:
            total += int(text.split()[0])
        except (AttributeError, ValueError, IndexError):
            pass
    return total


def rss_bytes(pid, proc=PROC):
    """VmRSS of C{pid} in bytes (NaN when it is gone)."""
    for line in (_read("{}/{}/status".format(proc, pid)) or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return float("nan")


def cpu_ns(pids, proc=PROC):
    """The CPU time of all of C{pids}, in ns."""
    return sum(sched_cpu_ns(pid, proc) for pid in pids)


def sample_window(groups, seconds, sleep=time.sleep, clock=time.monotonic, proc=PROC):
    """
    CPU % (utime+stime over the window / wall time; 100 = one core) of each group of pids in
    C{groups} (C{{name: [pid]}}) over C{seconds}, and their RSS in MiB at its end:
    C{{name: {"cpu": %, "rss": MiB}}}.
    """
    groups = {name: list(group) for name, group in groups.items()}
    before = {name: sum(stat_cpu_s(p, proc) for p in group) for name, group in groups.items()}
    started = clock()
    sleep(seconds)
    wall = clock() - started
    result = {}
    for name, group in groups.items():
        cpu = sum(stat_cpu_s(p, proc) for p in group) - before[name]
        result[name] = {"cpu": 100.0 * cpu / wall,
                        "rss": sum(rss_bytes(p, proc) for p in group) / 1048576.0}
    return result


def wait_quiet(pids, timeout=3.0, step=0.1, threshold=0.05, sleep=time.sleep,
               clock=time.monotonic, proc=PROC):
    """
    Wait (at most C{timeout} s) until C{pids} together use less than C{threshold} of a core
    over C{step} s; True if they did, False if the time ran out.
    """
    deadline = clock() + timeout
    before = cpu_ns(pids, proc)
    while clock() < deadline:
        sleep(step)
        now = cpu_ns(pids, proc)
        if now - before < threshold * step * 1e9:
            return True
        before = now
    return False


# -- figures and tables ---------------------------------------------------------------------


def percentile(values, q):
    """
    The C{q}th percentile of C{values}: the value of rank round(q/100 n + 0.5) (rounding half
    to even), so p50 of 1..10 is 6 and p99 of 1..1000 is 990; NaN for no values.
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def best(runs):
    """The run with the most requests per second (noise only ever slows a run down)."""
    return max(runs, key=lambda r: r.rps) if runs else None


def alternating(items, round_number):
    """C{items} in order for even rounds, reversed for odd ones."""
    items = list(items)
    return items[::-1] if round_number % 2 else items


class Comparison:
    """
    The rounds of one thing measured (C{runs}) beside its baseline (C{baseline_runs}), round
    by round: each side's best round, the ratio of the bests and the ratio in each round.
    """

    def __init__(self, runs, baseline_runs):
        self.runs = runs
        self.baseline_runs = baseline_runs
        self.best = best(runs)
        self.baseline = best(baseline_runs)

    @property
    def ratio(self):
        return self.best.rps / self.baseline.rps if self.baseline.rps else 0.0

    def round_ratios(self):
        return [r.rps / b.rps if b.rps else 0.0 for r, b in zip(self.runs, self.baseline_runs)]


def compare(baseline, subject, rounds, run):
    """
    C{run(server, round_number)} for C{baseline} and C{subject} in each of C{rounds} rounds,
    adjacent in time and in alternating order (baseline first, then subject first, ...); a
    L{Comparison} of the results.
    """
    runs = {id(baseline): [], id(subject): []}
    for round_number in range(rounds):
        for server in alternating((baseline, subject), round_number):
            runs[id(server)].append(run(server, round_number))
    return Comparison(runs[id(subject)], runs[id(baseline)])


def compare_all(baseline, subjects, rounds, run):
    """
    C{run(item, round_number)} for C{baseline} and every one of C{subjects} in each of
    C{rounds} rounds, adjacent in time and in alternating order (baseline first, then the
    last subject first, ...); a list of one L{Comparison} per subject, each beside the
    baseline's runs of the same rounds.
    """
    items = [baseline] + list(subjects)
    runs = {id(item): [] for item in items}
    for round_number in range(rounds):
        for item in alternating(items, round_number):
            runs[id(item)].append(run(item, round_number))
    return [Comparison(runs[id(item)], runs[id(baseline)]) for item in items[1:]]


def table(rows, header, right=None):
    """
    A text table: C{header} and C{rows} (tuples of cells; L{None} for a separator line), each
    column as wide as its widest cell, cells joined by C{" | "}. Columns in C{right} are
    right-aligned; by default all but the first and the last.
    """
    if right is None:
        right = range(1, len(header) - 1)
    right = set(right)
    filled = [r for r in rows if r is not None] + [header]
    widths = [max(len(str(r[i])) for r in filled) for i in range(len(header))]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(str(h).ljust(w) for h, w in zip(header, widths)), line]
    for r in rows:
        if r is None:
            out.append(line)
            continue
        out.append(" | ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                              for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def wrap(text, width=100):
    """C{text} filled to C{width}; the continuation lines keep the first one's indentation."""
    indent = text[:len(text) - len(text.lstrip(" "))]
    return textwrap.fill(text, width=width, subsequent_indent=indent, break_on_hyphens=False,
                         break_long_words=False)


# -- plain HTTP -----------------------------------------------------------------------------


def request(port, method, path, body=None, headers=None, timeout=30, host=HOST):
    """
    One request on a new connection; C{body}: bytes, or any other value sent as JSON.
    Returns (status, headers, body) for any status.
    """
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def get_many(port, path, headers=None, count=1, host=HOST):
    """C{count} GETs on one keep-alive connection; returns [(status, body)]."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        answers = []
        for _ in range(count):
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            answers.append((response.status, response.read()))
        return answers
    finally:
        connection.close()


def request_bytes(method, path, body=None, content_type="application/json"):
    """A raw HTTP/1.1 request (C{Host: bench}, always a Content-Length); C{body}: bytes."""
    head = "{} {} HTTP/1.1\r\nHost: bench\r\n".format(method, path)
    if body is not None and content_type:
        head += "Content-Type: {}\r\n".format(content_type)
    body = body or b""
    return head.encode("ascii") + b"Content-Length: %d\r\n\r\n" % len(body) + body


def metric(text, name, labels=""):
    """
    The value of the Prometheus sample C{name{labels}} (C{labels}: the text between the
    braces, or C{""} for none) in the exposition C{text} (bytes or str); L{None} if absent.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    sample = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    match = re.search(r"^" + sample + r" (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def push_state(admin_port, state, what="the"):
    """POST C{state} to a proxy's C{/a8-admin}; L{BenchError} unless it answers 200."""
    status, _, answer = request(admin_port, "POST", "/a8-admin", state, timeout=10)
    if status != 200:
        raise BenchError("the proxy refused {} state: {} {}".format(what, status, answer[:300]))


# -- processes ------------------------------------------------------------------------------

_RUNNING = set()


@atexit.register
def _stop_leftovers():
    for process in list(_RUNNING):
        process.stop()


class Process:
    """
    A process we start, in its own session (so that its children can be swept up too), its
    stdout and stderr in C{logdir/NAME.log} (or stdout a pipe: C{stdout=subprocess.PIPE}).
    """

    def __init__(self, name, argv, logdir, env=None, cwd=ROOT, stdin=subprocess.DEVNULL,
                 stdout=None, extra_logs=()):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.log_path = os.path.join(logdir, re.sub(r"\W+", "_", name) + ".log")
        self.extra_logs = list(extra_logs)
        self._stdin = stdin
        self._stdout = stdout
        self.process = None

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=self._stdin,
                stdout=self._stdout if self._stdout is not None else out, stderr=out,
                start_new_session=True)
        _RUNNING.add(self)
        return self

    def check_alive(self):
        if self.process.poll() is not None:
            raise BenchError("{} exited with status {}:\n{}".format(
                self.name, self.process.returncode, self.tail()))

    def pids(self):
        """The process and its descendants."""
        return descendants(self.process.pid)

    def cpu_ns(self):
        """The CPU time of the process and its descendants so far, in ns."""
        return cpu_ns(self.pids())

    def rss(self):
        """VmRSS of the process itself, in bytes."""
        found = rss_bytes(self.pid)
        if math.isnan(found):
            raise BenchError("no VmRSS for {}".format(self.name))
        return found

    def wait_until(self, check, timeout, message, sleep=time.sleep):
        """Call C{check} until it is true (an L{OSError} counts as false); else L{BenchError}."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                found = check()
                if found:
                    return found
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("{}:\n{}".format(message, self.tail()))
            sleep(0.05)

    def wait_for_ports(self, ports, timeout=15.0, host=HOST):
        """Wait until every one of C{ports} accepts a connection."""
        for port in ports:
            self.wait_until(lambda: socket.create_connection((host, port), timeout=1).close()
                            or True, timeout, "{} does not listen on {}".format(self.name, port))
        return self

    def wait_for_log(self, pattern, timeout=30.0):
        """Wait until the log matches C{pattern} (a regex); return the match."""
        compiled = re.compile(pattern)

        def search():
            with open(self.log_path, "rb") as f:
                return compiled.search(f.read().decode("utf-8", "replace"))

        return self.wait_until(search, timeout, "{} did not log {!r} in time".format(
            self.name, pattern))

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL to whatever is left of its session; close its pipes."""
        _RUNNING.discard(self)
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:   # whatever is left of the session we started (a worker whose master died)
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def tail(self, lines=20):
        """The last C{lines} of its log (and of each of C{extra_logs})."""
        texts = []
        for path in [self.log_path] + self.extra_logs:
            text = _read(path) if os.path.exists(path) else None
            if text:
                texts += text.splitlines()[-lines:]
        return "\n".join(texts)


class Server(Process):
    """
    A server that logs the port it listens on: C{ready} is a regex whose first group is the
    port; once it is logged, the server must answer C{GET health} (with any status).
    """

    def __init__(self, name, argv, logdir, ready, health="/", env=None):
        Process.__init__(self, name, argv, logdir, env=env)
        self.ready = ready
        self.health = health
        self.port = None

    def start(self, timeout=30.0):
        Process.start(self)
        try:
            self.port = int(self.wait_for_log(self.ready, timeout).group(1))
            self.wait_until(lambda: request(self.port, "GET", self.health, timeout=10), timeout,
                            "{} does not answer on port {}".format(self.name, self.port))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self):
        return "http://{}:{}".format(HOST, self.port)


class Processes:
    """
    The processes a benchmark started: C{start(process)} starts and keeps one, C{add(process)}
    keeps one already started; leaving the
    C{with} block (however it is left) stops them all, the last started first.
    """

    def __init__(self):
        self.started = []

    def start(self, process, *args, **kwargs):
        self.started.append(process)
        return process.start(*args, **kwargs)

    def add(self, process):
        """Keep a process that is already started (by one of the C{start_*} functions)."""
        self.started.append(process)
        return process

    def stop(self):
        while self.started:
            self.started.pop().stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()
        return False


# -- the servers ----------------------------------------------------------------------------


def twistd_server(program, logdir, args=(), name=None, health="/health", env=None,
                  twistd_options=()):
    """
    C{twistd -n --pidfile= TWISTD_OPTIONS PROGRAM --listen tcp:0:interface=127.0.0.1 ARGS}
    (not started), its port read from its C{PROGRAM listening on HOST:PORT} log line (in the
    text or the JSON log).
    """
    return Server(name or program,
                  [twistd(), "-n", "--pidfile="] + list(twistd_options)
                  + [program, "--listen", "tcp:0:interface=" + HOST] + list(args),
                  logdir, r"{} listening on [^\s:]+:(\d+)".format(re.escape(program)),
                  health, env=env)


def plain_twisted_web(logdir, body_file=None):
    """bench/plain_twisted_web.py (not started): the ceiling of a Python HTTP server."""
    argv = [sys.executable, os.path.join(HERE, "plain_twisted_web.py"), "0"]
    if body_file:
        argv += ["--body-file", body_file]
    return Server("plain twisted.web", argv, logdir, r"listening on (\d+)", "/")


def nginx_binary():
    """The nginx on PATH (or /usr/sbin/nginx); L{Missing} if there is none."""
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(path):
        raise Missing("nginx is not installed (apt-get install -y nginx-core)")
    return path


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    server_tokens off;
{temp_paths}
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{body}
}}
"""

# Where nginx keeps the bodies it buffers, one folder each under PREFIX/tmp.
TEMP_PATHS = (("client_body", "body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"),
              ("uwsgi", "uwsgi"), ("scgi", "scgi"))


def start_nginx(binary, base, name, body, ports):
    """
    A plain nginx (worker_processes 1, no access log) in its own prefix under C{base}, with
    C{body} inside its C{http} block; started, listening on every one of C{ports}.
    """
    prefix = os.path.join(base, re.sub(r"\W+", "_", name))
    for sub in ("", "logs", "tmp"):
        os.makedirs(os.path.join(prefix, sub), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    temp_paths = "\n".join("    {}_temp_path {}/tmp/{};".format(kind, prefix, folder)
                           for kind, folder in TEMP_PATHS)
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(p=prefix, temp_paths=temp_paths, body=body))
    error_log = os.path.join(prefix, "logs", "error.log")
    proc = Process(name, [binary, "-p", prefix, "-e", error_log, "-c", conf], base,
                   extra_logs=[error_log])
    return _started(proc, ports)


def _started(proc, ports, timeout=15.0):
    proc.start()
    try:
        return proc.wait_for_ports(ports, timeout)
    except BaseException:
        proc.stop()
        raise


def start_upstream(binary, base, answers, name="upstream nginx"):
    """An nginx whose every port in C{answers} (C{[(port, text)]}) answers C{200 text}."""
    servers = "".join("""
    server {{
        listen {h}:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{text}"; }}
    }}""".format(h=HOST, port=port, text=text.replace("\n", "\\n")) for port, text in answers)
    return start_nginx(binary, base, name, servers, [port for port, _ in answers])


def start_nginx_proxy(binary, base, port, backends, name="nginx proxy"):
    """
    Plain nginx C{proxy_pass} on C{port} to an upstream block of C{backends} (ports) with
    keepalive (C{proxy_http_version 1.1}, C{Connection ""}), C{/svc/} stripped.
    """
    servers = "".join("\n        server {}:{};".format(HOST, p) for p in backends)
    body = """
    upstream instances {{{servers}
        keepalive 256;
        keepalive_requests 100000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {h}:{port} backlog=4096;
        location /svc/ {{
            proxy_pass http://instances/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""".format(h=HOST, port=port, servers=servers)
    return start_nginx(binary, base, name, body, [port])


HAPROXY_CONF = """global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend proxy
    bind {h}:{port}
    http-request set-path %[path,regsub(^/svc/,/)]
    default_backend instances

backend instances
    balance roundrobin
    http-reuse always
{servers}
"""


def start_haproxy(base, port, backends):
    """
    haproxy (http mode, one thread) on C{port}: roundrobin over C{backends}
    (C{[(name, port)]}), C{http-reuse always}, C{/svc/} stripped.
    """
    binary = need("haproxy")
    conf = os.path.join(base, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(HAPROXY_CONF.format(h=HOST, port=port, servers="\n".join(
            "    server {} {}:{}".format(name, HOST, p) for name, p in backends)))
    return _started(Process("haproxy", [binary, "-db", "-f", conf], base), [port])


def start_amalgam8_proxy(binary, modules, base, port, admin_port, name="amalgam8 proxy",
                         edit=None):
    """
    The amalgam8 proxy as the sidecar runs it (amalgam8.sidecar.proxy: C{write()} then
    C{command()}; workers=1, service C{bench:v1}) in C{base/NAME}, its rendered nginx.conf
    passed through C{edit} (text to text) if given; started, listening on both ports. The
    process has the L{ProxyConfig} as C{config}.
    """
    from amalgam8.sidecar import proxy as a8proxy

    config = a8proxy.ProxyConfig(os.path.join(base, re.sub(r"\W+", "_", name)), port=port,
                                 address=HOST, admin_port=admin_port, workers=1,
                                 service_name="bench", service_tags=("v1",))
    a8proxy.write(config, modules)
    if edit is not None:
        with open(config.conf_path) as f:
            text = edit(f.read())
        with open(config.conf_path, "w") as f:
            f.write(text)
    proc = Process(name, a8proxy.command(config, binary), base,
                   extra_logs=[config.error_log_path])
    proc.config = config
    return _started(proc, [port, admin_port])


def versions(nginx):
    """(nginx version, haproxy version) as short texts for a table's notes."""
    text = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    return (text.replace("nginx version: ", ""),
            " ".join(haproxy.split()[:3]).replace(" version", ""))


# -- wrk ------------------------------------------------------------------------------------


@attrs.frozen
class WrkResult:
    """
    One wrk run, from its C{WRK_JSON} line: req/s, requests, p50/p99 in ms, socket errors,
    the counters the script keeps (C{counters}: non2xx, bad_status, first_bad_status,
    bad_length, conflicts, where it prints them; conflicts, the 409s of
    bench/controller_update.lua, are counted but are no problem of the run), the CPU time the
    processes watched during the run used (C{cpu_ns}), and wrk's whole output.
    """

    rps: float
    requests: int
    p50: float
    p99: float
    socket_detail: dict
    counters: dict
    cpu_ns: int = 0
    output: str = ""

    @classmethod
    def from_json(cls, data, cpu_ns=0, output=""):
        counters = {k: data[k] for k in ("non2xx", "bad_status", "first_bad_status",
                                         "bad_length", "conflicts") if k in data}
        return cls(rps=data["rps"], requests=data["requests"], p50=data["p50_us"] / 1000.0,
                   p99=data["p99_us"] / 1000.0, socket_detail=dict(data["socket_errors"]),
                   counters=counters, cpu_ns=cpu_ns, output=output)

    @property
    def socket_errors(self):
        return sum(self.socket_detail.values())

    @property
    def cpu_us(self):
        """CPU time of the watched processes per request, in microseconds."""
        return self.cpu_ns / 1000.0 / self.requests if self.requests else float("nan")

    def problems(self):
        """What was wrong with the run, as texts (none: a clean run)."""
        c = self.counters
        found = []
        if self.requests == 0:
            found.append("no request completed")
        if c.get("non2xx"):
            found.append("{} non-2xx answers (first: {})".format(
                c["non2xx"], c.get("first_bad_status")))
        if c.get("bad_status"):
            if "first_bad_status" in c:
                found.append("{} answers not 200 (first: {})".format(
                    c["bad_status"], c["first_bad_status"]))
            else:
                found.append("{} answers with a status >= 400".format(c["bad_status"]))
        if c.get("bad_length"):
            found.append("{} bodies of the wrong length".format(c["bad_length"]))
        if self.socket_errors:
            found.append("socket errors {}".format(
                {k: v for k, v in self.socket_detail.items() if v}))
        return found


def parse_wrk(output):
    """The C{WRK_JSON {...}} line of wrk's output, as a dict; L{BenchError} if it has none."""
    match = re.search(r"^WRK_JSON (\{.*\})$", output, re.M)
    if not match:
        raise BenchError("no WRK_JSON line in wrk's output:\n{}".format(output))
    return json.loads(match.group(1))


def wrk_argv(url, script, threads=1, connections=32, duration=3, timeout="10s", headers=(),
             args=()):
    """The wrk command line: C{script} is a file name in bench/, C{args} go after C{--}."""
    argv = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % duration, "--latency",
            "--timeout", timeout]
    for header in headers:
        argv += ["-H", header]
    argv += ["-s", os.path.join(HERE, script), url]
    if args:
        argv += ["--"] + [str(a) for a in args]
    return argv


#: The variable bench/wrk_json.lua reads: the addresses its threads connect to, in turn.
SPREAD_VARIABLE = "A8_WRK_SPREAD"


def wrk_env(spread, threads, environ=None):
    """
    The environment of a wrk run whose C{threads} connect in turn to the C{(host, port)}
    addresses of C{spread} (thread i to address i modulo their number: bench/wrk_json.lua)
    instead of the URL's; C{environ} (default C{os.environ}) unchanged when C{spread} is
    empty. L{BenchError} when the threads cannot be shared out evenly.
    """
    environ = dict(os.environ if environ is None else environ)
    environ.pop(SPREAD_VARIABLE, None)
    if spread:
        if threads % len(spread):
            raise BenchError("{} wrk threads cannot be spread evenly over {} servers".format(
                threads, len(spread)))
        environ[SPREAD_VARIABLE] = " ".join("{}:{}".format(h, p) for h, p in spread)
    return environ


def wrk(url, script, threads=1, connections=32, duration=3, timeout="10s", headers=(),
        args=(), watch=(), grace=60, spread=()):
    """
    Run wrk (see L{wrk_argv}) and return its L{WrkResult}; C{watch}: L{Process}es whose CPU
    time (with their descendants') during the run is its C{cpu_ns}; C{spread}: the
    C{(host, port)} addresses the threads connect to in turn (L{wrk_env}), when the load is
    to be shared by several servers. L{BenchError} when wrk fails or does not finish within
    C{duration + grace} s.
    """
    argv = wrk_argv(url, script, threads, connections, duration, timeout, headers, args)
    env = wrk_env(spread, threads)
    before = sum(p.cpu_ns() for p in watch)
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=duration + grace, env=env)
    except FileNotFoundError:
        raise Missing("wrk is not installed (apt-get install -y wrk)")
    except subprocess.TimeoutExpired:
        raise BenchError("wrk did not finish: {}".format(" ".join(argv)))
    cpu = sum(p.cpu_ns() for p in watch) - before
    output = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    if done.returncode != 0 or not re.search(r"^WRK_JSON ", output, re.M):
        raise BenchError("wrk failed (status {}):\n{}".format(done.returncode, output))
    return WrkResult.from_json(parse_wrk(output), cpu, output)


# -- h2load ---------------------------------------------------------------------------------


@attrs.frozen
class H2loadSummary:
    """What h2load's summary says: its C{requests:} counts, status codes, rate, request times."""

    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    codes: tuple = None          # (2xx, 3xx, 4xx, 5xx), if printed
    rps: float = float("nan")    # from "finished in ..., R req/s"
    request_time: tuple = None   # (min, max, mean, sd) as printed, e.g. "194us"
    output: str = ""

    @property
    def complete(self):
        """Every request done, none failed, errored or timed out."""
        return (self.done == self.total and not self.failed and not self.errored
                and not self.timeout)

    def describe(self):
        return "{} of {} done, {} failed, {} errored, {} timed out".format(
            self.done, self.total, self.failed, self.errored, self.timeout)


def parse_h2load(output):
    """h2load's summary (L{H2loadSummary}); L{BenchError} if it has no C{requests:} line."""
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", output)
    if not m:
        raise BenchError("cannot read h2load's output:\n{}".format(output))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    times = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    return H2loadSummary(*map(int, m.groups()),
                         codes=tuple(map(int, codes.groups())) if codes else None,
                         rps=float(rate.group(1)) if rate else float("nan"),
                         request_time=times.groups() if times else None, output=output)


def parse_h2load_log(lines):
    """
    h2load's C{--log-file} lines (start time, status, duration in us; tab-separated):
    (the durations in us, how many answers were not 2xx).
    """
    samples, not_2xx = [], 0
    for line in lines:
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        if not fields[1].startswith("2"):
            not_2xx += 1
        samples.append(int(fields[2]))
    return samples, not_2xx


def h2load_argv(url, clients, requests, rps, headers=(), log_file=None):
    """C{h2load --h1}: C{clients} keep-alive connections, each sending C{rps} req/s."""
    argv = ["h2load", "--h1", "-t1", "-c%d" % clients, "-n%d" % requests, "--rps=%d" % rps]
    for header in headers:
        argv += ["-H", header]
    if log_file:
        argv += ["--log-file", log_file]
    return argv + [url]


class H2load:
    """One h2load run in the background: C{start()}, then C{wait()} for its summary."""

    def __init__(self, argv):
        self.argv = argv
        self.process = None

    def start(self):
        try:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise Missing("h2load is not installed (apt-get install -y nghttp2-client)")
        return self

    def wait(self, timeout):
        """The L{H2loadSummary}; L{BenchError} if h2load fails or outlasts C{timeout} s."""
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError("h2load did not finish in time")
        finally:
            self.kill()
        output = out.decode("utf-8", "replace")
        if self.process.returncode != 0:
            raise BenchError("h2load failed (status {}):\n{}".format(
                self.process.returncode, output))
        return parse_h2load(output)

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def run(self, timeout):
        return self.start().wait(timeout)
