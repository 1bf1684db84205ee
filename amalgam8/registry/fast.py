# -*- test-case-name: tests.test_registry_api -*-
"""
The heartbeat's short road. Heartbeats are most of a registry's traffic (every instance,
every ttl/3), so C{PUT /api/v1/instances/{id}/heartbeat} is answered here without Klein's
URL routing and coroutine machinery. Everything else goes on to the Klein app. It answers
exactly as the Klein route would (the API tests run against both).
"""

from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from amalgam8.errors import A8Error
from amalgam8.web import Front, registry_error

__all__ = ["RegistryFront"]

_PREFIX = b"/api/v1/instances/"
_SUFFIX = b"/heartbeat"
_JSON = b"application/json"


class RegistryFront(Front):
    """
    The registry's root resource: L{Front} plus the heartbeat's short road.

    @ivar store: the L{IRegistryStore}.
    @ivar authenticator: the L{Authenticator}.
    """

    log = Logger()

    def __init__(self, inner, metrics, store, authenticator, require_https=False):
        Front.__init__(self, inner, metrics, require_https)
        self.store = store
        self.authenticator = authenticator

    def render(self, request):
        if request.method == b"PUT" and not self.require_https:
            path = request.path
            if (path.startswith(_PREFIX) and path.endswith(_SUFFIX)
                    and len(path) > len(_PREFIX) + len(_SUFFIX) and b"?" not in request.uri):
                instance_id = path[len(_PREFIX):-len(_SUFFIX)]
                if b"/" not in instance_id:
                    return self._heartbeat(request, instance_id)
        return Front.render(self, request)

    def _heartbeat(self, request, raw_id):
        started = self._now()
        request.route = "heartbeat"
        self.request_id(request)
        try:
            namespace = self.authenticator.namespace(request.getHeader(b"authorization"))
        except A8Error as error:
            return self._failed(request, started, error)
        try:
            instance_id = raw_id.decode("ascii")
        except UnicodeDecodeError:
            return self._answer(request, started, 410, b'{"Error":"no such instance"}')
        result = self.store.heartbeat(namespace, instance_id)
        result.addCallbacks(self._renewed, self._not_renewed,
                            callbackArgs=(request, started), errbackArgs=(request, started))
        return NOT_DONE_YET

    def _renewed(self, _instance, request, started):
        self._write(request, started, 200, b"")

    def _not_renewed(self, failure, request, started):
        if failure.check(A8Error):
            error = failure.value
            self._write(request, started, error.status, registry_error(error.error_id, error.message))
        else:
            self.log.failure("heartbeat failed", failure)
            self._write(request, started, 500, b'{"Error":"internal error"}')

    def _failed(self, request, started, error):
        if error.status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="amalgam8"')
        return self._answer(request, started, error.status, registry_error(error.error_id, error.message))

    def _answer(self, request, started, code, body):
        self._write(request, started, code, body)
        return NOT_DONE_YET

    def _write(self, request, started, code, body):
        if request.finished or request._disconnected:
            return
        request.setResponseCode(code)
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"content-length", b"%d" % len(body))
        if body:
            request.write(body)
        request.finish()
        self.metrics.observe("heartbeat", "PUT", code, self._now() - started)
