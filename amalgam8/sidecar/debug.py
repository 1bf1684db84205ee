# -*- test-case-name: tests.test_sidecar_tap -*-
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

    @app.route("/health", methods=["GET"])
    def health(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"up"}'

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        request.setResponseCode(404 if "NotFound" in failure.type.__name__ else 500)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": failure.getErrorMessage() or failure.type.__name__}).encode()
