# -*- test-case-name: tests.test_registry_model -*-
"""
The registry's values: a validated registration and a live instance, their JSON encoding,
and the validation of what clients send.
"""

import functools
import hashlib
import json
import math
import sys
import time

import attrs

from amalgam8.errors import InvalidRequest

__all__ = [
    "ENDPOINT_TYPES",
    "STATUSES",
    "FIELDS",
    "Registration",
    "Instance",
    "instance_id",
    "parse_registration",
    "rfc3339",
]

ENDPOINT_TYPES = ("tcp", "udp", "http", "https", "user")
STATUSES = ("UP", "STARTING", "OUT_OF_SERVICE")
FIELDS = (
    "id",
    "service_name",
    "endpoint",
    "ttl",
    "status",
    "tags",
    "metadata",
    "last_heartbeat",
)

MAX_SERVICE_NAME = 64
MAX_ENDPOINT_VALUE = 128
MAX_METADATA = 1024
MAX_TAGS = 64
MAX_TAG = 128

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def instance_id(service_name, endpoint_type, endpoint_value):
    """
    The deterministic instance id of SPEC A2: the first 16 hex digits of the SHA-256 of
    C{service_name/type/value}.
    """
    key = "{}/{}/{}".format(service_name, endpoint_type, endpoint_value)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def rfc3339(timestamp):
    """
    Format POSIX seconds as RFC 3339 UTC with microseconds (C{2016-05-01T12:00:00.500000Z}).
    Listings format every instance's heartbeat time, so this avoids datetime and strftime.
    """
    seconds = int(timestamp)
    micro = int(round((timestamp - seconds) * 1e6))
    if micro >= 1000000:
        seconds += 1
        micro -= 1000000
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (t[0], t[1], t[2], t[3], t[4], t[5], micro)


@attrs.frozen(weakref_slot=False)
class Registration:
    """
    What an instance registered with, validated and normalised.

    @ivar ttl: the granted ttl in seconds.
    @ivar tags: a tuple of strings.
    @ivar metadata: the metadata as compact JSON text, or L{None}.
    """

    service_name: str
    endpoint_type: str
    endpoint_value: str
    ttl: int
    status: str = "UP"
    tags: tuple = ()
    metadata: str = None

    @functools.cached_property
    def id(self):
        return instance_id(self.service_name, self.endpoint_type, self.endpoint_value)

    @functools.cached_property
    def encoded_prefix(self):
        """
        The instance's JSON encoding up to the value of C{last_heartbeat}: every field but
        that one is fixed for the life of a registration, so it is encoded once.
        """
        head = _compact(self.as_dict())
        return (head[:-1] + ',"last_heartbeat":"').encode("utf-8")

    def as_dict(self):
        """The instance object without C{last_heartbeat}, empty fields omitted."""
        result = {
            "id": self.id,
            "service_name": self.service_name,
            "endpoint": {"type": self.endpoint_type, "value": self.endpoint_value},
            "ttl": self.ttl,
            "status": self.status,
        }
        if self.tags:
            result["tags"] = list(self.tags)
        if self.metadata is not None:
            result["metadata"] = json.loads(self.metadata)
        return result

    def same_as(self, other):
        """Whether C{other} registers exactly the same thing."""
        return (
            self.ttl == other.ttl
            and self.status == other.status
            and self.tags == other.tags
            and self.metadata == other.metadata
        )


@attrs.frozen(weakref_slot=False)
class Instance:
    """
    A registered instance and its last heartbeat (POSIX seconds).
    """

    registration: Registration
    last_heartbeat: float

    @property
    def id(self):
        return self.registration.id

    @property
    def service_name(self):
        return self.registration.service_name

    @property
    def status(self):
        return self.registration.status

    @property
    def tags(self):
        return self.registration.tags

    @property
    def expires_at(self):
        """When the lease runs out, or L{None} for an instance that never expires."""
        if self.registration.status == "OUT_OF_SERVICE":
            return None
        return self.last_heartbeat + self.registration.ttl

    def expired(self, now):
        expires = self.expires_at
        return expires is not None and now > expires

    def encode(self):
        """The full JSON object as UTF-8 bytes (cached prefix + the heartbeat time)."""
        return self.registration.encoded_prefix + rfc3339(self.last_heartbeat).encode() + b'"}'

    def as_dict(self):
        result = self.registration.as_dict()
        result["last_heartbeat"] = rfc3339(self.last_heartbeat)
        return result


def _text(body, name, limit, required=True):
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest("{} is required".format(name))
        return None
    if not isinstance(value, str):
        raise InvalidRequest("{} must be a string".format(name))
    if required and not value.strip():
        raise InvalidRequest("{} must not be empty".format(name))
    if len(value.encode("utf-8")) > limit:
        raise InvalidRequest("{} is longer than {} bytes".format(name, limit))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidRequest("{} contains control characters".format(name))
    return value


def parse_registration(body, grant_ttl):
    """
    Validate a registration body (SPEC A2) and normalise it.

    @param body: the decoded JSON.
    @param grant_ttl: a callable from the requested ttl (seconds, 0 when absent) to the
        granted one.
    @return: a L{Registration}.
    @raise InvalidRequest: naming the first problem found.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    service_name = _text(body, "service_name", MAX_SERVICE_NAME)
    if "/" in service_name or service_name != service_name.strip():
        raise InvalidRequest("service_name must not contain '/' or surrounding spaces")
    endpoint = body.get("endpoint")
    if endpoint is None:
        raise InvalidRequest("endpoint is required")
    if not isinstance(endpoint, dict):
        raise InvalidRequest("endpoint must be an object with type and value")
    try:
        endpoint_type = _text(endpoint, "type", 16)
    except InvalidRequest as e:
        raise InvalidRequest("endpoint." + e.message)
    endpoint_type = endpoint_type.lower() if endpoint_type.isascii() else endpoint_type
    if endpoint_type not in ENDPOINT_TYPES:
        raise InvalidRequest(
            "endpoint.type must be one of {}".format(", ".join(ENDPOINT_TYPES))
        )
    try:
        endpoint_value = _text(endpoint, "value", MAX_ENDPOINT_VALUE)
    except InvalidRequest as e:
        raise InvalidRequest("endpoint." + e.message)

    ttl = body.get("ttl", 0)
    if ttl is None:
        ttl = 0
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise InvalidRequest("ttl must be a number of seconds")
    # A JSON integer may be too large for a float (math.isfinite would overflow).
    if isinstance(ttl, float) and not math.isfinite(ttl):
        raise InvalidRequest("ttl must be a finite number of seconds")
    if ttl < 0:
        raise InvalidRequest("ttl must not be negative")
    if ttl != int(ttl):
        raise InvalidRequest("ttl must be a whole number of seconds")

    status = body.get("status", "UP")
    if status is None:
        status = "UP"
    if not isinstance(status, str) or not status.isascii():
        raise InvalidRequest("status must be one of {}".format(", ".join(STATUSES)))
    status = status.upper()
    if status not in STATUSES:
        raise InvalidRequest("status must be one of {}".format(", ".join(STATUSES)))

    tags = body.get("tags")
    if tags is None:
        tags = ()
    elif not isinstance(tags, list):
        raise InvalidRequest("tags must be a list of strings")
    else:
        if len(tags) > MAX_TAGS:
            raise InvalidRequest("at most {} tags".format(MAX_TAGS))
        for tag in tags:
            if not isinstance(tag, str):
                raise InvalidRequest("tags must be a list of strings")
            if not tag or len(tag.encode("utf-8")) > MAX_TAG:
                raise InvalidRequest("each tag must have 1 to {} bytes".format(MAX_TAG))
        tags = tuple(sys.intern(tag) for tag in tags)

    metadata = body.get("metadata")
    if metadata is not None:
        try:
            metadata = _compact(metadata)
        except (ValueError, TypeError):
            raise InvalidRequest("metadata must be JSON")
        if len(metadata.encode("utf-8")) > MAX_METADATA:
            raise InvalidRequest("metadata is longer than {} bytes".format(MAX_METADATA))

    return Registration(
        service_name=sys.intern(service_name),
        endpoint_type=sys.intern(endpoint_type),
        endpoint_value=endpoint_value,
        ttl=grant_ttl(int(ttl)),
        status=sys.intern(status),
        tags=tags,
        metadata=metadata,
    )
