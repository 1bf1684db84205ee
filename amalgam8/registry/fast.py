# -*- test-case-name: tests.test_registry_api -*-
"""
The heartbeat's road. Heartbeats are most of a registry's traffic (every instance, every
ttl/3), so C{PUT /api/v1/instances/{id}/heartbeat} is answered here, without Klein's URL
routing and coroutine machinery; this is the one implementation of that URL (there is no
Klein route for it). Everything else goes on to the Klein app.
"""

from urllib.parse import unquote_to_bytes

from twisted.internet.defer import maybeDeferred

from amalgam8.errors import UnknownInstance
from amalgam8.web import Front, registry_error

__all__ = ["ROUTES", "RegistryFront"]

#: The URLs this road serves (in the OpenAPI document's spelling) and their methods.
ROUTES = (("/api/v1/instances/{instance_id}/heartbeat", ("PUT",)),)

_PREFIX = b"/api/v1/instances/"
_SUFFIX = b"/heartbeat"
_PUT = ("PUT",)


def heartbeat_id(path):
    """The instance id of a heartbeat path (text), or L{None} for any other path."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    raw = path[len(_PREFIX):-len(_SUFFIX)]
    if not raw or b"/" in raw:
        return None
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    # Bytes that are not UTF-8 spell no id: the replacement character makes it unknown.
    return raw.decode("utf-8", "replace")


class RegistryFront(Front):
    """
    The registry's root resource: L{Front}, whose short road is the heartbeat.

    @ivar store: the L{IRegistryStore}.
    @ivar authenticator: the L{Authenticator}.
    """

    def __init__(self, inner, metrics, store, authenticator, require_https=False):
        Front.__init__(self, inner, metrics, require_https, error_body=registry_error)
        self.store = store
        self.authenticator = authenticator

    def road(self, request):
        path = request.path
        if not path.endswith(_SUFFIX):
            return None
        instance_id = heartbeat_id(path)
        if instance_id is None:
            return None
        if request.method != b"PUT":
            return lambda request: self.not_allowed(request, _PUT)
        return lambda request: self.respond(
            request, "heartbeat", maybeDeferred(self.heartbeat, request, instance_id),
            _empty)

    def heartbeat(self, request, instance_id):
        """Renew the lease of C{instance_id} in the namespace the request acts in."""
        namespace = self.authenticator.namespace(request.getHeader(b"authorization"))
        if not instance_id.isascii():
            raise UnknownInstance("no such instance")
        return self.store.heartbeat(namespace, instance_id)


def _empty(request, _instance):
    return b""
