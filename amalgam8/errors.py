# -*- test-case-name: tests.test_registry_api -*-
"""
Domain exceptions. Each API maps them to HTTP answers in one place.
"""

__all__ = [
    "A8Error",
    "InvalidRequest",
    "InvalidJSON",
    "Unauthorized",
    "BadNamespaceHeader",
    "Forbidden",
    "QuotaExceeded",
    "NotFound",
    "UnknownInstance",
    "ReadOnlyInstance",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "NotAcceptableHere",
    "Conflict",
    "StoreCorrupt",
    "StoreUnavailable",
    "StoreUnconfirmed",
]


class A8Error(Exception):
    """
    Base of the errors an API turns into a clear answer.

    @cvar status: the HTTP status code for this error.
    @cvar error_id: a stable machine-readable id (the controller's C{error} field).
    """

    status = 400
    error_id = "error_bad_request"

    @property
    def message(self):
        return self.args[0] if self.args else self.error_id


class InvalidRequest(A8Error):
    """The request is malformed: bad JSON, bad field, bad filter."""

    status = 400
    error_id = "error_bad_request"


class InvalidJSON(InvalidRequest):
    """The body is not JSON."""

    error_id = "error_invalid_json"


class Unauthorized(A8Error):
    """No acceptable credentials."""

    status = 401
    error_id = "error_unauthorized"


class BadNamespaceHeader(A8Error):
    """An admin request without the A8-Namespace header it needs."""

    status = 400
    error_id = "error_missing_namespace"


class Forbidden(A8Error):
    """The caller may not do this."""

    status = 403
    error_id = "error_forbidden"


class QuotaExceeded(Forbidden):
    """The namespace is at its capacity."""

    error_id = "error_quota_exceeded"


class ReadOnlyInstance(Forbidden):
    """The instance comes from a read-only catalog."""

    error_id = "error_read_only"


class NotFound(A8Error):
    """Nothing by that name."""

    status = 404
    error_id = "error_not_found"


class UnknownInstance(A8Error):
    """The instance id is unknown or has expired (clients re-register on this)."""

    status = 410
    error_id = "error_gone"


class PayloadTooLarge(A8Error):
    """The request body is over the limit."""

    status = 413
    error_id = "error_payload_too_large"


class UnsupportedMediaType(A8Error):
    """The request body is not JSON."""

    status = 415
    error_id = "error_unsupported_media_type"


class NotAcceptableHere(A8Error):
    """A method the route does not take."""

    status = 405
    error_id = "error_method_not_allowed"


class Conflict(A8Error):
    """The state changed under the request (a stale revision, an id that exists)."""

    status = 409
    error_id = "error_conflict"


class StoreCorrupt(Exception):
    """A store's data cannot be read; the server must not start on it."""


class StoreUnavailable(A8Error):
    """The store could not make a change durable; nothing changed."""

    status = 503
    error_id = "error_store_unavailable"


class StoreUnconfirmed(StoreUnavailable):
    """
    A change was made on the store's master but none of its replicas confirmed it in
    time: it may be lost if the master fails (the message says so, and names the revision).
    """

    error_id = "error_store_unconfirmed"
