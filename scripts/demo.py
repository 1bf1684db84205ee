#!/usr/bin/env python3
"""
The registry demo (`make demo`): starts a8registry on a free loopback port with the
embedded defaults, registers the bookinfo services, and shows listing, filters, a blocking
read woken by a registration, heartbeats and expiry. `make demo ARGS=--keep` leaves the
registry running and prints how to reach it.

The controller, the sidecar and the bookinfo walk-through join this demo as they land.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            return response.status, dict(response.headers), text
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def step(title):
    print("\n== " + title)


def show(method, url, body=None):
    print("$ curl -X {} {}{}".format(method, url, "" if body is None else " -d '{}'".format(
        json.dumps(body))))
    status, headers, text = call(method, url, body)
    print("  {} {}".format(status, text if len(text) < 400 else text[:400] + "..."))
    return status, headers, text


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the registry running")
    args = parser.parse_args()

    port = free_port()
    base = "http://127.0.0.1:{}".format(port)
    workdir = tempfile.mkdtemp(prefix="a8demo-")
    command = [TWISTD, "-n", "--pidfile=", "--logger", "amalgam8.logs.json_observer",
               "a8registry", "--listen", "tcp:{}:interface=127.0.0.1".format(port),
               "--min-ttl", "2s"]
    log = open(os.path.join(workdir, "registry.log"), "w")
    registry = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                if call("GET", base + "/uptime")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("the registry did not start; see " + log.name)
        print("a8registry is running at {} (log: {})".format(base, log.name))

        step("register the bookinfo services")
        services = [("productpage", "v1", 9080), ("details", "v1", 9081),
                    ("reviews", "v1", 9082), ("reviews", "v2", 9083),
                    ("reviews", "v3", 9084), ("ratings", "v1", 9085)]
        ids = {}
        for name, tag, p in services:
            body = {"service_name": name, "endpoint": {"type": "http",
                    "value": "127.0.0.1:{}".format(p)}, "tags": [tag], "ttl": 60}
            status, _, text = show("POST", base + "/api/v1/instances", body)
            ids[(name, tag)] = json.loads(text)["id"]

        step("list services, then the instances of reviews tagged v2")
        show("GET", base + "/api/v1/services")
        show("GET", base + "/api/v1/instances?service_name=reviews&tags=v2&fields=tags")

        step("a blocking read: wait for the next change after the current index")
        _, headers, _ = call("GET", base + "/api/v1/instances")
        index = headers.get("A8-Index")
        started = time.monotonic()

        def register_later():
            time.sleep(1.0)
            call("POST", base + "/api/v1/instances", {
                "service_name": "ratings", "endpoint": {"type": "http",
                "value": "127.0.0.1:9086"}, "tags": ["v2"], "ttl": 2})

        threading.Thread(target=register_later, daemon=True).start()
        show("GET", base + "/api/v1/instances?service_name=ratings&wait=30s&index=" + index)
        print("  answered after {:.2f} s, when ratings v2 registered".format(
            time.monotonic() - started))

        step("heartbeat, then let ratings v2 (ttl 2 s) expire")
        show("PUT", base + "/api/v1/instances/{}/heartbeat".format(ids[("ratings", "v1")]))
        time.sleep(3.2)
        show("GET", base + "/api/v1/instances?service_name=ratings&fields=tags")

        step("metrics")
        _, _, text = call("GET", base + "/metrics")
        for line in text.splitlines():
            if line.startswith(("a8_registry_instances", "a8_registry_registrations_total",
                                "a8_registry_expirations_total")):
                print("  " + line)

        if args.keep:
            print("\nThe registry keeps running at {} (pid {}).".format(base, registry.pid))
            print("  export A8_REGISTRY_URL={}".format(base))
            print("  stop it with: kill {}".format(registry.pid))
            registry = None
        else:
            print("\nDone; stopping the registry.")
    finally:
        if registry is not None:
            registry.send_signal(signal.SIGTERM)
            try:
                registry.wait(10)
            except subprocess.TimeoutExpired:
                registry.kill()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
