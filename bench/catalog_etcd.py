#!/usr/bin/env python3
# -*- test-case-name: tests.test_etcd_catalog -*-
"""
The time from a change in etcd (Weave Flux's layout) to a woken blocking read of the real
registry, which mirrors it through its etcd catalog, with two baselines measured in the same
run.

    .venv/bin/python bench/catalog_etcd.py [CHANGES]

Starts a real etcd (Debian's C{etcd-server}, C{--enable-v2}) and two C{twistd a8registry
--etcd-url} on loopback, one reading through the v3 API (prefix C{/bench/v3/}), one through
the v2 API (C{/bench/v2/}). Then, CHANGES times for each: a blocking read
(C{GET /api/v1/instances?wait=10s&index=I}, I the current A8-Index) is sent and left
waiting, the instance C{reviews/instance/bench} is rewritten in etcd (its address moves), and
the time from sending the write to the read's answer is taken. The baselines:

- etcd alone: the time from a v3 put to its event on a v3 watch stream (what the catalog
  itself waits for);
- the registry alone: the time from a registration (C{POST /api/v1/instances}) to the
  answer of a blocking read waiting on it, on the same registry (its wake-up path, no etcd).

L{measure} returns the p50/p99 rows (for bench/registry); run alone it prints them as a
table.
"""

import base64
import concurrent.futures
import http.client
import json
import os
import queue
import socket
import sys
import tempfile
import threading
import time
from urllib.parse import urlencode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import benchlib as bl  # noqa: E402
from bench.benchlib import HOST, BenchError  # noqa: E402
from bench.catalog_kubernetes import _Connection, _index, _woken  # noqa: E402

__all__ = ["HEADER", "measure", "main"]

HEADER = ("metric", "p50", "p99", "changes")
WAIT_BEFORE_CHANGE = 0.002   # seconds for the blocking read to reach the registry
ETCD = os.environ.get("A8_TEST_ETCD") or "/usr/bin/etcd"


def _b64(text):
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _address(n):
    return "10.2.{}.{}".format(n // 250 % 250, n % 250 + 1)


def _instance(n):
    return json.dumps({"address": _address(n), "port": 9080, "containerGroup": "v1",
                       "state": "live", "labels": {}})


def start_etcd(procs, logdir):
    """A single etcd member on free loopback ports; returns its client port."""
    if not os.access(ETCD, os.X_OK):
        raise BenchError("no etcd at {} (apt-get install etcd-server)".format(ETCD))
    client, peer = bl.free_ports(2)
    url, peer_url = "http://{}:{}".format(HOST, client), "http://{}:{}".format(HOST, peer)
    process = procs.start(bl.Process("etcd", [
        ETCD, "--name", "bench", "--data-dir", os.path.join(logdir, "etcd.data"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", "bench=" + peer_url, "--enable-v2",
        "--heartbeat-interval", "10", "--election-timeout", "50"], logdir))
    process.wait_until(lambda: bl.request(client, "GET", "/health", timeout=2)[0] == 200,
                       15, "etcd did not become healthy")
    return client


class _Etcd:
    """Writes to etcd over a keep-alive connection, through either API."""

    def __init__(self, port):
        self.connection = _Connection(port)

    def put_v3(self, key, value):
        status, _, body = self.connection.request("POST", "/v3/kv/put", json.dumps(
            {"key": _b64(key), "value": _b64(value)}).encode("utf-8"))
        if status != 200:
            raise BenchError("etcd answered {} to a v3 put: {!r}".format(status, body[:200]))
        return int(json.loads(body)["header"]["revision"])

    def set_v2(self, key, value):
        # (etcd reads the value from the query as well as from a form body)
        status, _, body = self.connection.request(
            "PUT", "/v2/keys{}?{}".format(key, urlencode({"value": value})))
        if status not in (200, 201):
            raise BenchError("etcd answered {} to a v2 set: {!r}".format(status, body[:200]))

    def close(self):
        self.connection.close()


def _catalog_wakes(registry_port, write, changes, what):
    """C{changes} times: a blocking read waits, C{write(n)} changes etcd; the delays."""
    reader, poller = _Connection(registry_port), _Connection(registry_port)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    took = []
    try:
        # The catalog has listed the first instance: every change moves it.
        deadline = time.monotonic() + 15
        while True:
            status, _, body = poller.request("GET", "/api/v1/services/reviews")
            if status == 200 and _address(0) + ":9080" in body.decode("utf-8"):
                break
            if time.monotonic() > deadline:
                raise BenchError("the {} registry did not list reviews".format(what))
            time.sleep(0.02)
        for n in range(1, changes + 1):
            index = _index(poller)
            waiting = pool.submit(_woken, reader, index)
            time.sleep(WAIT_BEFORE_CHANGE)
            started = time.perf_counter()
            write(n)
            done, woken_index, listed = waiting.result(timeout=30)
            if woken_index <= index:
                raise BenchError("{}: the blocking read woke without change {}".format(
                    what, n))
            values = [i["endpoint"]["value"] for i in listed["instances"]]
            if _address(n) + ":9080" not in values:
                # The read woke for this change before the listing had it: not expected.
                raise BenchError("{}: change {} woke a read that lists {}".format(
                    what, n, values))
            took.append(max(0.0, done - started))
    finally:
        pool.shutdown()
        reader.close()
        poller.close()
    return took


def _registration_wakes(registry_port, changes):
    """
    The registry alone: a registration wakes a blocking read waiting on it. The same
    instance registers again each time with its version tag changed (v1, v2 in turn), so
    the listing stays one instance long, as in the etcd rows.
    """
    reader, poller, writer = (_Connection(registry_port), _Connection(registry_port),
                              _Connection(registry_port))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    took = []
    try:
        for n in range(changes):
            index = _index(poller)
            waiting = pool.submit(_woken, reader, index)
            time.sleep(WAIT_BEFORE_CHANGE)
            started = time.perf_counter()
            status, _, body = writer.request("POST", "/api/v1/instances", json.dumps({
                "service_name": "registered", "ttl": 600, "tags": ["v{}".format(n % 2 + 1)],
                "endpoint": {"type": "http", "value": "10.3.0.1:80"}}).encode())
            if status != 201:
                raise BenchError("a registration answered {}: {!r}".format(status, body))
            done, woken_index, _ = waiting.result(timeout=30)
            if woken_index <= index:
                raise BenchError("the blocking read woke without registration {}".format(n))
            took.append(max(0.0, done - started))
    finally:
        pool.shutdown()
        for connection in (reader, poller, writer):
            connection.close()
    return took


def _watch_wakes(etcd_port, changes):
    """etcd alone: a v3 put to its event on a watch stream (read by a thread)."""
    key = "/bench/watch/key"
    stream = http.client.HTTPConnection(HOST, etcd_port, timeout=30)
    stream.request("POST", "/v3/watch", json.dumps(
        {"create_request": {"key": _b64(key)}}).encode("utf-8"),
        {"Content-Type": "application/json"})
    response = stream.getresponse()
    if response.status != 200:
        raise BenchError("the etcd watch answered {}".format(response.status))
    lines = queue.Queue()

    def read():
        # read1: what one chunk brought (readline would wait for more than a line)
        buffered = b""
        try:
            while True:
                data = response.read1(65536)
                if not data:
                    break
                at = time.perf_counter()
                *complete, buffered = (buffered + data).split(b"\n")
                for line in complete:
                    lines.put((at, line))
        except (OSError, ValueError, http.client.HTTPException):
            pass
        lines.put((None, None))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    writer = _Etcd(etcd_port)
    took = []
    try:
        created = lines.get(timeout=10)[1]
        if not created or b'"created":true' not in created:
            raise BenchError("the etcd watch was not created: {!r}".format(created))
        for n in range(changes):
            started = time.perf_counter()
            revision = writer.put_v3(key, str(n))
            while True:
                at, line = lines.get(timeout=10)
                if line is None:
                    raise BenchError("the etcd watch stream ended")
                events = json.loads(line).get("result", {}).get("events", [])
                if any(int(e["kv"]["mod_revision"]) == revision for e in events):
                    took.append(max(0.0, at - started))
                    break
    finally:
        writer.close()
        # Shut the socket first: closing it would wait for the reader thread's read.
        try:
            stream.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        reader.join(5)
        stream.close()
    return took


def _row(label, times):
    return (label, "{:.2f} ms".format(bl.percentile(times, 50) * 1000),
            "{:.2f} ms".format(bl.percentile(times, 99) * 1000), "{:,}".format(len(times)))


def measure(changes=1000, logdir=None):
    """
    @return: rows of L{HEADER}: the change-to-woken-read latency through v3 and v2, and the
        two baselines, p50 and p99 (ms).
    @raise BenchError: etcd or a registry did not start or answered wrongly.
    """
    logdir = os.path.abspath(logdir or tempfile.mkdtemp(prefix="bench-etcd-"))
    os.makedirs(logdir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT)
    rows = []
    with bl.Processes() as procs:
        etcd_port = start_etcd(procs, logdir)
        etcd_url = "http://{}:{}".format(HOST, etcd_port)
        etcd = _Etcd(etcd_port)
        try:
            etcd.put_v3("/bench/v3/reviews/details", '{"protocol": "http"}')
            etcd.put_v3("/bench/v3/reviews/instance/bench", _instance(0))
            etcd.set_v2("/bench/v2/reviews/details", '{"protocol": "http"}')
            etcd.set_v2("/bench/v2/reviews/instance/bench", _instance(0))
            registries = {}
            for api in ("v3", "v2"):
                registries[api] = procs.start(bl.twistd_server(
                    "a8registry", logdir, name="registry, etcd " + api, health="/uptime",
                    args=["--etcd-url", etcd_url, "--etcd-api", api,
                          "--etcd-prefix", "/bench/{}/".format(api),
                          "--default-ttl", "10m", "--max-ttl", "10m"], env=env))
            bl.log("bench/catalog_etcd.py: etcd v3 put -> woken read ({:,} changes)".format(
                changes))
            rows.append(_row("etcd v3 put -> woken blocking read", _catalog_wakes(
                registries["v3"].port,
                lambda n: etcd.put_v3("/bench/v3/reviews/instance/bench", _instance(n)),
                changes, "v3")))
            bl.log("bench/catalog_etcd.py: etcd v2 set -> woken read")
            rows.append(_row("etcd v2 set -> woken blocking read", _catalog_wakes(
                registries["v2"].port,
                lambda n: etcd.set_v2("/bench/v2/reviews/instance/bench", _instance(n)),
                changes, "v2")))
            bl.log("bench/catalog_etcd.py: baselines")
            rows.append(_row("  baseline: etcd v3 put -> watch event (no registry)",
                             _watch_wakes(etcd_port, changes)))
            rows.append(_row("  baseline: registration -> woken read (no etcd)",
                             _registration_wakes(registries["v3"].port, changes)))
        finally:
            etcd.close()
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    changes = int(argv[0]) if argv else 1000
    bl.handle_signals()
    print(bl.table(measure(changes), HEADER))


if __name__ == "__main__":
    main()
