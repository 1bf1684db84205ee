# -*- test-case-name: tests.test_sidecar_service -*-
"""
The sidecar's debug API on 127.0.0.1:6116: C{GET /state} shows the instances and rules the
proxy should hold, the versions pushed, health, registration and the children.
"""

import json

from klein import Klein

__all__ = ["DebugAPI"]


class DebugAPI:
    """
    @param sidecar: anything with a C{debug_state()} method returning a JSON-able dict.
    """

    app = Klein()

    def __init__(self, sidecar):
        self._sidecar = sidecar

    def resource(self):
        return self.app.resource()

    @app.route("/state", methods=["GET"])
    def state(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self._sidecar.debug_state(), indent=2, default=str).encode()

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        """The sidecar's own numbers in the Prometheus text format."""
        state = self._sidecar.debug_state()
        lines = []

        def add(name, kind, text, value):
            if value is None:
                return
            lines.append("# HELP a8_sidecar_{} {}".format(name, text))
            lines.append("# TYPE a8_sidecar_{} {}".format(name, kind))
            lines.append("a8_sidecar_{} {}".format(name, float(value)))

        routes = state.get("routes") or {}
        pushed = routes.get("pushed") or {}
        add("proxy_pushes_total", "counter", "States pushed to the proxy.", routes.get("pushes"))
        add("proxy_push_failures_total", "counter", "Pushes the proxy refused or missed.",
            routes.get("push_failures"))
        add("rules_revision", "gauge", "Rule revision the proxy holds.", pushed.get("revision"))
        add("instances_index", "gauge", "Registry index the proxy holds.", pushed.get("index"))
        traces = state.get("traces") or {}
        add("trace_records_shipped_total", "counter", "Trace records sent to the controller.",
            traces.get("shipped"))
        add("trace_records_dropped_total", "counter", "Trace records dropped.",
            traces.get("dropped"))
        registration = state.get("registration")
        if registration is not None:
            add("registered", "gauge", "1 while registered.",
                1 if registration.get("registered") else 0)
        for child in state.get("children", []):
            if child.get("kind") == "proxy":
                add("proxy_restarts_total", "counter", "Times nginx was restarted.",
                    child.get("restarts"))
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return ("\n".join(lines) + "\n").encode()

    @app.route("/health", methods=["GET"])
    def health(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"up"}'

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        request.setResponseCode(404 if "NotFound" in failure.type.__name__ else 500)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": failure.getErrorMessage() or failure.type.__name__}).encode()
