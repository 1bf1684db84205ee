#!/usr/bin/env python3
# -*- test-case-name: tests.test_kubernetes -*-
"""
The time from a change at the (fake) Kubernetes API server to a woken blocking read of the
real registry, which mirrors it through its Kubernetes catalog.

    .venv/bin/python bench/catalog_kubernetes.py [CHANGES]

Starts the fake API server of L{amalgam8.testing.kubernetes} and C{twistd a8registry
--k8s-url} on loopback; then, CHANGES times: a blocking read (C{GET /api/v1/instances?
wait=10s&index=I}, I the current A8-Index) is sent and left waiting, the Endpoints of
C{reviews} are changed at the fake (C{PUT /_fake/endpoints/default/reviews}: its address
moves), and the time from sending the change to the read's answer is taken. L{measure}
returns the p50/p99 rows (for bench/registry); run alone it prints them as a table.
"""

import concurrent.futures
import http.client
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import benchlib as bl  # noqa: E402
from bench.benchlib import HOST, BenchError  # noqa: E402

__all__ = ["HEADER", "measure", "main"]

HEADER = ("metric", "p50", "p99", "changes")
WAIT_BEFORE_CHANGE = 0.002   # seconds for the blocking read to reach the registry


def _endpoints(n):
    """The Endpoints of reviews at change C{n}: one address that moves each time."""
    return {"subsets": [{"addresses": [{"ip": "10.1.{}.{}".format(n // 250 % 250,
                                                                  n % 250 + 1)}],
                         "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]}]}


class _Connection:
    """A keep-alive HTTP connection to 127.0.0.1:port (reopened if the server closed it)."""

    def __init__(self, port, timeout=30):
        self.port, self.timeout = port, timeout
        self._connection = None

    def request(self, method, path, body=None):
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(HOST, self.port,
                                                              timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                return response.status, response.headers, response.read()
            except (http.client.HTTPException, ConnectionError):
                self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise

    def close(self):
        if self._connection is not None:
            self._connection.close()


def _index(connection):
    status, headers, _ = connection.request("GET", "/api/v1/instances")
    if status != 200:
        raise BenchError("GET /api/v1/instances answered {}".format(status))
    return int(headers["A8-Index"])


def _woken(connection, index):
    status, headers, body = connection.request(
        "GET", "/api/v1/instances?wait=10s&index={}".format(index))
    done = time.perf_counter()
    if status != 200:
        raise BenchError("the blocking read answered {}".format(status))
    return done, int(headers["A8-Index"]), json.loads(body)


def measure(changes=1000, logdir=None):
    """
    @return: rows of L{HEADER}: the change-to-woken-read latency, p50 and p99 (ms).
    @raise BenchError: a server did not start or answered wrongly.
    """
    logdir = os.path.abspath(logdir or tempfile.mkdtemp(prefix="bench-k8s-"))
    os.makedirs(logdir, exist_ok=True)
    fake_server = bl.Server("fake kubernetes", [
        sys.executable, "-m", "amalgam8.testing.kubernetes", "0"], logdir,
        r"fake kubernetes listening on [^\s:]+:(\d+)",
        "/api/v1/namespaces/default/endpoints",
        env=dict(os.environ, PYTHONPATH=ROOT))
    took = []
    with bl.Processes() as procs:
        fake = procs.start(fake_server)
        registry = procs.start(bl.twistd_server(
            "a8registry", logdir, health="/uptime", args=["--k8s-url", fake.url],
            env=dict(os.environ, PYTHONPATH=ROOT)))
        changer, reader, poller = (_Connection(fake.port), _Connection(registry.port),
                                   _Connection(registry.port))
        pool = concurrent.futures.ThreadPoolExecutor(1)
        try:
            for n in range(changes):
                index = _index(poller)
                waiting = pool.submit(_woken, reader, index)
                time.sleep(WAIT_BEFORE_CHANGE)
                started = time.perf_counter()
                status, _, _ = changer.request("PUT", "/_fake/endpoints/default/reviews",
                                               json.dumps(_endpoints(n)).encode())
                if status != 200:
                    raise BenchError("the fake answered {} to a change".format(status))
                done, woken_index, listed = waiting.result(timeout=30)
                address = _endpoints(n)["subsets"][0]["addresses"][0]["ip"] + ":9080"
                if woken_index <= index or address not in [
                        i["endpoint"]["value"] for i in listed["instances"]]:
                    raise BenchError("the blocking read woke without change {}".format(n))
                took.append(max(0.0, done - started))
        finally:
            pool.shutdown()
            for connection in (changer, reader, poller):
                connection.close()
    return [("k8s change -> woken blocking read",
             "{:.2f} ms".format(bl.percentile(took, 50) * 1000),
             "{:.2f} ms".format(bl.percentile(took, 99) * 1000),
             "{:,}".format(len(took)))]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    changes = int(argv[0]) if argv else 1000
    bl.handle_signals()
    print(bl.table(measure(changes), HEADER))


if __name__ == "__main__":
    main()
