# -*- test-case-name: tests.test_etcd_client -*-
"""
A small non-blocking etcd client on an injected treq C{HTTPClient}, for the Weave Flux
catalog (L{amalgam8.adapters.etcd}) and the controller's rule store (issue 13).

Two APIs, one class each, both over several endpoint URLs with failover:

- L{EtcdV3}: etcd's v3 API through its JSON gateway (etcd 3.4 serves it under C{/v3/}):
  every call is a C{POST} of a JSON body; keys and values are base64 in JSON and 64-bit
  integers are strings. L{EtcdV3.range} (and L{EtcdV3.range_all}, every page at one
  revision), L{EtcdV3.put}, L{EtcdV3.delete_range}, L{EtcdV3.txn} (with L{compare} and the
  C{op_*} requests: an atomic compare-and-swap; a C{readonly} one fails over like a read),
  leases (L{EtcdV3.lease_grant}, L{EtcdV3.lease_keepalive}, L{EtcdV3.lease_revoke}),
  L{EtcdV3.compact}, and
  L{EtcdV3.watch}: a stream of C{{"result": ...}} JSON objects, one a line, read as
  L{WatchResult}s.
- L{EtcdV2}: the v2 keys API (C{/v2/keys/...}; etcd 3.4 serves it with C{--enable-v2}):
  L{EtcdV2.get}, L{EtcdV2.set}, L{EtcdV2.delete} and L{EtcdV2.wait}
  (C{?wait=true&recursive=true&waitIndex=N}); every answer carries the C{X-Etcd-Index}.

Errors are exceptions a caller can act on: L{EtcdError} (what etcd answered: the HTTP
status, etcd's error code and message), L{EtcdUnavailable} (no endpoint could be reached, or
the connection broke), L{Compacted} (a v3 revision etcd no longer has: list again) and
L{IndexCleared} (the v2 "event index cleared": list again), L{WatchCanceled}.

Failover: a request goes to the endpoint that answered last; if it cannot be reached it goes
to the next, in order, until one answers. A request that changes something (put, delete,
txn, lease grant and revoke, compaction, v2 set and delete) moves on only when the request
was certainly not sent (the connection was refused or could not be made): otherwise it
might have been applied, and L{EtcdUnavailable} says so (C{maybe_applied}) rather than apply
it twice. An HTTP 503 from an endpoint (no leader, say) counts as unreachable for reads.
"""

import base64
import json
from urllib.parse import quote, urlencode

import attrs
import treq
from twisted.internet.defer import CancelledError, DeferredQueue
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web._newclient import RequestNotSent
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

__all__ = [
    "EtcdError", "EtcdUnavailable", "Compacted", "IndexCleared", "WatchCanceled",
    "KEY_NOT_FOUND", "EVENT_INDEX_CLEARED",
    "EtcdV3", "EtcdV2", "Watch",
    "KeyValue", "Event", "RangeResult", "PutResult", "DeleteResult", "TxnResult", "Lease",
    "WatchResult", "Node", "V2Result",
    "compare", "op_range", "op_put", "op_delete", "prefix_end", "etcd_http_client",
]

log = Logger()

#: v2 error codes (etcd's C{error/error.go}).
KEY_NOT_FOUND = 100
EVENT_INDEX_CLEARED = 401

_COMPACTED = "required revision has been compacted"
_MAX_ERROR_TEXT = 300
_DEFAULT = object()   # the client's own timeout


# -- errors ---------------------------------------------------------------------------------


class EtcdError(Exception):
    """
    etcd answered with an error.

    @ivar message: etcd's message (or ours, for an answer that is not etcd's JSON).
    @ivar status: the HTTP status, or L{None}.
    @ivar code: etcd's code: the gRPC code of a v3 error, the C{errorCode} of a v2 one.
    @ivar cause: the v2 C{cause}, or L{None}.
    @ivar index: the v2 C{index} (the etcd index when it answered), or L{None}.
    @ivar url: the endpoint that answered, or L{None}.
    """

    def __init__(self, message, status=None, code=None, cause=None, index=None, url=None):
        Exception.__init__(self, message)
        self.message = str(message)
        self.status = status
        self.code = code
        self.cause = cause
        self.index = index
        self.url = url

    def __str__(self):
        parts = []
        if self.url:
            parts.append("etcd at {}".format(self.url))
        if self.status is not None:
            parts.append("HTTP {}".format(self.status))
        if self.code is not None:
            parts.append("code {}".format(self.code))
        text = ": ".join([", ".join(parts), self.message]) if parts else self.message
        if self.cause:
            text += " ({})".format(self.cause)
        return text


class EtcdUnavailable(EtcdError):
    """
    No endpoint answered (refused, unreachable, timed out, 503), or the connection broke.

    @ivar attempts: C{[(url, reason text)]}, one per endpoint tried.
    @ivar maybe_applied: C{True} when a request that changes something may have reached etcd
        before the connection broke (so it was not sent to another endpoint).
    """

    def __init__(self, message, attempts=(), maybe_applied=False, **kwargs):
        EtcdError.__init__(self, message, **kwargs)
        self.attempts = list(attempts)
        self.maybe_applied = maybe_applied


class Compacted(EtcdError):
    """
    A v3 read or watch asked for a revision etcd has compacted away: list again.

    @ivar compact_revision: the oldest revision a watch may start from now (from a watch's
        cancellation), or L{None} when etcd did not say (a range).
    """

    def __init__(self, message, compact_revision=None, **kwargs):
        EtcdError.__init__(self, message, **kwargs)
        self.compact_revision = compact_revision


class IndexCleared(EtcdError):
    """
    The v2 "event index cleared" (errorCode 401): the C{waitIndex} is older than the 1,000
    events etcd keeps; list again. C{index} is etcd's index when it answered.
    """


class WatchCanceled(EtcdError):
    """etcd canceled a v3 watch for another reason than compaction (C{cancel_reason})."""


# -- values ---------------------------------------------------------------------------------


def _b64(data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(bytes(data)).decode("ascii")


def _unb64(text):
    try:
        return base64.b64decode(text or "", validate=True)
    except (ValueError, TypeError):
        raise EtcdError("a key or value that is not base64: {!r}".format(
            text)[:_MAX_ERROR_TEXT])


def _bytes(data):
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _int(value):
    """A 64-bit integer of the gateway's JSON (a string, a number, or absent: 0)."""
    if value in (None, ""):
        return 0
    if isinstance(value, bool):
        raise EtcdError("a number that is a boolean: {!r}".format(value))
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EtcdError("a number that is not one: {!r}".format(value)[:_MAX_ERROR_TEXT])


def prefix_end(prefix):
    """
    The C{range_end} of every key starting with C{prefix}: its last byte below 0xff plus one,
    the bytes after it dropped (C{b"/a/"} -> C{b"/a0"}); C{b"\\0"} (every key) for a prefix of
    0xff bytes or none.
    """
    end = bytearray(_bytes(prefix))
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@attrs.frozen
class KeyValue:
    """One key of a v3 answer (C{mvccpb.KeyValue})."""

    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def from_json(cls, obj):
        if not isinstance(obj, dict):
            raise EtcdError("a key-value that is not an object: {!r}".format(obj)[:200])
        return cls(key=_unb64(obj.get("key")), value=_unb64(obj.get("value")),
                   create_revision=_int(obj.get("create_revision")),
                   mod_revision=_int(obj.get("mod_revision")),
                   version=_int(obj.get("version")), lease=_int(obj.get("lease")))


@attrs.frozen
class Event:
    """One change of a watch: C{type} C{"PUT"} or C{"DELETE"} (then C{kv.value} is empty)."""

    type: str
    kv: KeyValue
    prev_kv: KeyValue = None

    @classmethod
    def from_json(cls, obj):
        if not isinstance(obj, dict):
            raise EtcdError("a watch event that is not an object: {!r}".format(obj)[:200])
        kind = obj.get("type") or "PUT"   # the gateway leaves out the default, PUT
        if kind not in ("PUT", "DELETE"):
            raise EtcdError("a watch event of unknown type {!r}".format(kind))
        prev = obj.get("prev_kv")
        return cls(kind, KeyValue.from_json(obj.get("kv")),
                   KeyValue.from_json(prev) if prev else None)


@attrs.frozen
class RangeResult:
    """C{revision}: the store's revision of the answer; C{more}: the limit cut it short."""

    revision: int
    kvs: tuple = ()
    more: bool = False
    count: int = 0

    @classmethod
    def from_json(cls, obj):
        return cls(_revision(obj), tuple(KeyValue.from_json(kv) for kv in _list(obj, "kvs")),
                   bool(obj.get("more")), _int(obj.get("count")))


@attrs.frozen
class PutResult:
    revision: int
    prev_kv: KeyValue = None

    @classmethod
    def from_json(cls, obj):
        prev = obj.get("prev_kv")
        return cls(_revision(obj), KeyValue.from_json(prev) if prev else None)


@attrs.frozen
class DeleteResult:
    revision: int
    deleted: int = 0
    prev_kvs: tuple = ()

    @classmethod
    def from_json(cls, obj):
        return cls(_revision(obj), _int(obj.get("deleted")),
                   tuple(KeyValue.from_json(kv) for kv in _list(obj, "prev_kvs")))


@attrs.frozen
class TxnResult:
    """
    C{succeeded}: whether every comparison held (then C{success} ran, else C{failure});
    C{responses}: one L{RangeResult}, L{PutResult}, L{DeleteResult} or L{TxnResult} per
    request that ran.
    """

    succeeded: bool
    revision: int
    responses: tuple = ()

    @classmethod
    def from_json(cls, obj):
        responses = []
        for response in _list(obj, "responses"):
            if not isinstance(response, dict) or len(response) != 1:
                raise EtcdError("a txn response of unknown shape: {!r}".format(response)[:200])
            [(kind, body)] = response.items()
            parser = _TXN_RESPONSES.get(kind)
            if parser is None or not isinstance(body, dict):
                raise EtcdError("a txn response of unknown kind {!r}".format(kind))
            responses.append(parser(body))
        return cls(bool(obj.get("succeeded")), _revision(obj), tuple(responses))


_TXN_RESPONSES = {"response_range": RangeResult.from_json,
                  "response_put": PutResult.from_json,
                  "response_delete_range": DeleteResult.from_json,
                  "response_txn": TxnResult.from_json}


@attrs.frozen
class Lease:
    """A lease: C{ttl} is what is left of it (0 from a keep-alive: the lease is gone)."""

    id: int
    ttl: int
    revision: int = 0


@attrs.frozen
class WatchResult:
    """
    One answer of a watch.

    @ivar revision: the header's revision. After a progress notification (C{progress}: no
        events) every change up to it has been delivered; after events it may be ahead of
        them (etcd sends its current revision), so resume from the last event's
        C{mod_revision} + 1 instead.
    @ivar events: L{Event}s, oldest first.
    """

    revision: int
    events: tuple = ()
    progress: bool = False


def _revision(obj):
    header = obj.get("header")
    header = {} if header is None else header
    if not isinstance(header, dict):
        raise EtcdError("a header that is not an object: {!r}".format(header)[:200])
    return _int(header.get("revision"))


def _list(obj, name):
    value = obj.get(name)
    value = [] if value is None else value
    if not isinstance(value, list):
        raise EtcdError("{} is not a list: {!r}".format(name, value)[:200])
    return value


_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}
_TARGETS = {"version": ("VERSION", "version"), "create": ("CREATE", "create_revision"),
            "mod": ("MOD", "mod_revision"), "value": ("VALUE", "value"),
            "lease": ("LEASE", "lease")}


def compare(key, target, result, value, range_end=None):
    """
    A comparison of a L{EtcdV3.txn}.

        compare("/rules/default", "mod", "==", 42)       # unchanged since revision 42
        compare("/rules/default", "version", "==", 0)    # the key does not exist

    @param target: C{"version"}, C{"create"} (revision), C{"mod"} (revision), C{"value"} or
        C{"lease"}.
    @param result: C{"=="}, C{"!="}, C{"<"} or C{">"}.
    @param value: an int (bytes or str for C{"value"}).
    """
    try:
        name, field = _TARGETS[target]
        op = _RESULTS[result]
    except KeyError:
        raise ValueError("compare: target one of {}, result one of {}".format(
            ", ".join(_TARGETS), ", ".join(_RESULTS)))
    body = {"key": _b64(key), "target": name, "result": op,
            field: _b64(value) if target == "value" else str(int(value))}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return body


def _range_body(key, range_end=None, prefix=False, revision=None, limit=None,
                keys_only=False, serializable=False, count_only=False):
    body = {"key": _b64(key)}
    if prefix:
        range_end = prefix_end(_bytes(key))
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    if revision:
        body["revision"] = str(int(revision))
    if limit:
        body["limit"] = str(int(limit))
    if keys_only:
        body["keys_only"] = True
    if count_only:
        body["count_only"] = True
    if serializable:
        body["serializable"] = True
    return body


def _put_body(key, value, lease=None, prev_kv=False):
    body = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(int(lease))
    if prev_kv:
        body["prev_kv"] = True
    return body


def _delete_body(key, range_end=None, prefix=False, prev_kv=False):
    body = {"key": _b64(key)}
    if prefix:
        range_end = prefix_end(_bytes(key))
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    if prev_kv:
        body["prev_kv"] = True
    return body


def op_range(key, range_end=None, prefix=False, revision=None, limit=None, keys_only=False):
    """A range request inside a L{EtcdV3.txn} (answered by a L{RangeResult})."""
    return {"request_range": _range_body(key, range_end, prefix, revision, limit, keys_only)}


def op_put(key, value, lease=None, prev_kv=False):
    """A put inside a L{EtcdV3.txn} (answered by a L{PutResult})."""
    return {"request_put": _put_body(key, value, lease, prev_kv)}


def op_delete(key, range_end=None, prefix=False, prev_kv=False):
    """A delete inside a L{EtcdV3.txn} (answered by a L{DeleteResult})."""
    return {"request_delete_range": _delete_body(key, range_end, prefix, prev_kv)}


# -- HTTP: endpoints with failover ---------------------------------------------------------


def _cancelled(error):
    """Whether a request failed because it was cancelled (the Agent wraps the cancellation)."""
    if isinstance(error, (CancelledError, ConnectingCancelledError)):
        return True
    reasons = getattr(error, "reasons", None) or []
    return any(getattr(r, "check", lambda *a: False)(CancelledError) for r in reasons)


def _not_sent(error):
    """Whether a failed request certainly never reached the server."""
    if isinstance(error, (ConnectError, DNSLookupError, RequestNotSent)):
        return True
    reasons = getattr(error, "reasons", None) or []
    return bool(reasons) and all(
        getattr(r, "check", lambda *a: False)(ConnectError, DNSLookupError, RequestNotSent)
        for r in reasons)


def _describe(error):
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() or r.type.__name__ for r in reasons)
    return str(error) or type(error).__name__


@attrs.define
class _Endpoints:
    """
    The endpoint URLs of one client, the one that answered last first.

    @ivar current: the index in C{urls} of the endpoint requests go to first.
    """

    http: object
    urls: tuple
    clock: object
    timeout: float = 5.0
    current: int = 0

    def __attrs_post_init__(self):
        self.urls = tuple(str(url).rstrip("/") for url in self.urls)
        if not self.urls:
            raise ValueError("an etcd client needs at least one endpoint URL")

    async def request(self, method, path, data=None, headers=None, params=None,
                      idempotent=True, unbuffered=False, timeout=_DEFAULT):
        """
        Send a request to the first endpoint that answers.

        @param timeout: seconds until the answer's headers (L{None}: no limit); default the
            client's.
        @return: C{(url, response)} (the response's body not read yet).
        @raise EtcdUnavailable: none answered (with each one's reason).
        """
        if timeout is _DEFAULT:
            timeout = self.timeout
        attempts = []
        # From the endpoint that answered last, each once (another request may move
        # self.current meanwhile).
        first = self.current
        for step in range(len(self.urls)):
            index = (first + step) % len(self.urls)
            url = self.urls[index]
            timed_out = []
            d = self.http.request(method, url + path, data=data, headers=headers,
                                  params=params, unbuffered=unbuffered, allow_redirects=False,
                                  reactor=self.clock)
            expiry = None
            if timeout is not None:
                def expire(d=d, timed_out=timed_out):
                    timed_out.append(True)
                    d.cancel()
                expiry = self.clock.callLater(timeout, expire)
            try:
                response = await d
            except Exception as e:
                if timed_out:
                    attempts.append((url, "no answer within {}s".format(timeout)))
                    if not idempotent:
                        raise self._unavailable(attempts, maybe_applied=True)
                    continue
                if _cancelled(e):
                    raise CancelledError() from e
                attempts.append((url, _describe(e)))
                if not idempotent and not _not_sent(e):
                    raise self._unavailable(attempts, maybe_applied=True)
                continue
            finally:
                if expiry is not None and expiry.active():
                    expiry.cancel()
            if response.code == 503:
                body = await _content(response, url)
                message = _error_text(body)
                if not idempotent:
                    raise EtcdUnavailable(message, status=503, url=url,
                                          attempts=attempts + [(url, message)],
                                          maybe_applied=True)
                attempts.append((url, "HTTP 503: " + message))
                continue
            if index != self.current:
                log.info("etcd: now using {url}", url=url)
                self.current = index
            return url, response
        raise self._unavailable(attempts)

    def _unavailable(self, attempts, maybe_applied=False):
        message = "no etcd endpoint answered: " + "; ".join(
            "{}: {}".format(url, why) for url, why in attempts)
        if maybe_applied:
            message += " (the request may have been applied)"
        return EtcdUnavailable(message, attempts=attempts, maybe_applied=maybe_applied)


async def _content(response, url):
    """The whole body; a connection broken on the way is L{EtcdUnavailable}."""
    try:
        return await treq.content(response)
    except CancelledError:
        raise
    except Exception as e:
        raise EtcdUnavailable("the answer broke off: {}".format(_describe(e)), url=url,
                              attempts=[(url, _describe(e))])


def _error_text(body):
    try:
        decoded = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT] or "(no body)"
    if isinstance(decoded, dict):
        for name in ("message", "error"):
            if isinstance(decoded.get(name), str):
                return decoded[name]
    return str(decoded)[:_MAX_ERROR_TEXT]


def _json_object(body, status, url, hint=""):
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise EtcdError("an answer that is not a JSON object{}: {!r}".format(
            hint, body[:200]), status=status, url=url)
    return decoded


@attrs.frozen
class _End:
    """The end of a stream (C{reason}: the L{Failure} its connection was lost with)."""

    reason: object


class _Lines(Protocol):
    """A streamed body, each line put in C{queue}; then an L{_End}."""

    def __init__(self, queue):
        self.queue = queue
        self.buffered = b""
        self.ended = False

    def dataReceived(self, data):
        parts = (self.buffered + data).split(b"\n")
        self.buffered = parts.pop()
        for line in parts:
            if line.strip():
                self.queue.put(line)

    def connectionLost(self, reason):
        self.ended = True
        if self.buffered.strip():
            self.queue.put(self.buffered)
        self.buffered = b""
        self.queue.put(_End(reason))

    def stop(self):
        """Close the stream (and its connection)."""
        if not self.ended and self.transport is not None:
            self.transport.stopProducing()


# -- v3 -------------------------------------------------------------------------------------


class EtcdV3:
    """
    etcd's v3 API through its JSON gateway.

    @param http: a treq C{HTTPClient} (or C{StubTreq}).
    @param urls: the endpoint URLs (C{http://127.0.0.1:2379}), tried in order.
    @param clock: the C{IReactorTime} that times requests out.
    @param timeout: seconds until an answer's headers (a watch's too).
    """

    api = "v3"

    def __init__(self, http, urls, clock, timeout=5.0):
        self.endpoints = _Endpoints(http, tuple(urls), clock, timeout)

    @property
    def urls(self):
        return self.endpoints.urls

    async def _call(self, path, body, idempotent, timeout=_DEFAULT):
        data = json.dumps(body).encode("utf-8")
        url, response = await self.endpoints.request(
            "POST", "/v3/" + path, data=data,
            headers={b"Content-Type": [b"application/json"]}, idempotent=idempotent,
            timeout=timeout)
        content = await _content(response, url)
        if response.code != 200:
            raise _v3_error(content, response.code, url)
        return _json_object(content, response.code, url)

    async def range(self, key, range_end=None, prefix=False, revision=None, limit=None,
                    keys_only=False, serializable=False, count_only=False,
                    timeout=_DEFAULT):
        """
        The keys from C{key} to C{range_end} (exclusive), or every key under C{key} with
        C{prefix}, or C{key} alone.

        @param revision: read at that revision (L{None}: the latest).
        @param timeout: seconds each endpoint has to answer (default: the client's).
        @return: a L{RangeResult}.
        @raise Compacted: C{revision} is compacted.
        """
        body = _range_body(key, range_end, prefix, revision, limit, keys_only, serializable,
                           count_only)
        return RangeResult.from_json(await self._call("kv/range", body, True, timeout))

    async def range_all(self, key, range_end=None, prefix=False, page=1000):
        """
        Like L{range}, every key in pages of C{page}, all read at the revision of the first.

        @return: a L{RangeResult} with every key (C{more} false).
        @raise Compacted: that revision was compacted between two pages (list again).
        """
        if prefix:
            range_end = prefix_end(_bytes(key))
        start, kvs, revision = _bytes(key), [], None
        while True:
            result = await self.range(start, range_end, revision=revision, limit=page)
            revision = revision or result.revision
            kvs.extend(result.kvs)
            if not result.more or not result.kvs:
                return RangeResult(revision, tuple(kvs), False, len(kvs))
            start = result.kvs[-1].key + b"\0"

    async def put(self, key, value, lease=None, prev_kv=False):
        """@return: a L{PutResult}."""
        return PutResult.from_json(await self._call(
            "kv/put", _put_body(key, value, lease, prev_kv), False))

    async def delete_range(self, key, range_end=None, prefix=False, prev_kv=False):
        """@return: a L{DeleteResult} (C{deleted}: how many keys went)."""
        return DeleteResult.from_json(await self._call(
            "kv/deleterange", _delete_body(key, range_end, prefix, prev_kv), False))

    async def txn(self, compare=(), success=(), failure=(), readonly=False,
                  timeout=_DEFAULT):
        """
        If every comparison (L{compare}) holds, run C{success}, else C{failure} (lists of
        L{op_range}, L{op_put}, L{op_delete}), atomically.

        @param readonly: the requests only read (L{op_range}): the txn may then be sent to
            the next endpoint when one fails, as a range is, since sending it twice changes
            nothing.
        @param timeout: seconds each endpoint has to answer (default: the client's).
        @return: a L{TxnResult}.
        """
        body = {"compare": list(compare), "success": list(success),
                "failure": list(failure)}
        if readonly and any("request_range" not in op for op in body["success"]
                            + body["failure"]):
            raise ValueError("a readonly txn may hold only range requests")
        return TxnResult.from_json(await self._call("kv/txn", body, readonly, timeout))

    async def compact(self, revision, physical=False):
        """
        Drop the history before C{revision}.

        @return: the store's revision.
        @raise Compacted: C{revision} is compacted already.
        """
        body = {"revision": str(int(revision))}
        if physical:
            body["physical"] = True
        return _revision(await self._call("kv/compaction", body, False))

    async def lease_grant(self, ttl, id=0):
        """@return: the L{Lease} (C{id} chosen by etcd unless given)."""
        body = {"TTL": str(int(ttl))}
        if id:
            body["ID"] = str(int(id))
        answer = await self._call("lease/grant", body, False)
        if answer.get("error"):
            raise EtcdError(str(answer["error"]))
        return Lease(_int(answer.get("ID")), _int(answer.get("TTL")), _revision(answer))

    async def lease_keepalive(self, id):
        """
        Renew a lease once.

        @return: the L{Lease} with its renewed ttl; ttl 0 when etcd no longer has it.
        """
        answer = await self._call("lease/keepalive", {"ID": str(int(id))}, True)
        result = answer.get("result", answer)
        if not isinstance(result, dict):
            raise EtcdError("a keep-alive answer of unknown shape: {!r}".format(answer)[:200])
        return Lease(_int(id), _int(result.get("TTL")), _revision(result))

    async def lease_revoke(self, id):
        """
        Revoke a lease (its keys are deleted).

        @raise EtcdError: etcd has no such lease (code 5, NotFound).
        """
        return _revision(await self._call("lease/revoke", {"ID": str(int(id))}, False))

    async def watch(self, key, range_end=None, prefix=False, start_revision=None,
                    progress_notify=False, prev_kv=False):
        """
        Watch C{key} (a range, or every key under it with C{prefix}) from
        C{start_revision} (L{None}: from now).

        @return: a L{Watch}, once etcd has created it.
        @raise Compacted: C{start_revision} is compacted.
        @raise EtcdUnavailable, EtcdError: it could not be created.
        """
        create = _range_body(key, range_end, prefix)
        if start_revision:
            create["start_revision"] = str(int(start_revision))
        if progress_notify:
            create["progress_notify"] = True
        if prev_kv:
            create["prev_kv"] = True
        data = json.dumps({"create_request": create}).encode("utf-8")
        url, response = await self.endpoints.request(
            "POST", "/v3/watch", data=data,
            headers={b"Content-Type": [b"application/json"]}, unbuffered=True)
        if response.code != 200:
            raise _v3_error(await _content(response, url), response.code, url)
        watch = Watch(response, url)
        try:
            await watch._created()
        except BaseException:
            watch.cancel()
            raise
        return watch


def _v3_error(body, status, url):
    """The exception of a gateway's error answer."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        return EtcdError("an error answer that is not etcd's JSON: {!r}".format(
            body[:200]), status=status, url=url)
    return _v3_error_from(decoded, status, url)


def _v3_error_from(decoded, status, url):
    message = decoded.get("message") or decoded.get("error") or "(no message)"
    code = decoded.get("code", decoded.get("grpc_code"))
    message = str(message)
    if _COMPACTED in message:
        return Compacted(message, status=status, code=code, url=url)
    if status == 503 or code == 14:
        return EtcdUnavailable(message, status=status, code=code, url=url,
                               attempts=[(url, message)])
    return EtcdError(message, status=status, code=code, url=url)


class Watch:
    """
    A v3 watch stream: call L{next} for each answer, L{cancel} when done.

    @ivar watch_id: etcd's id of the watch.
    @ivar revision: the store's revision when the watch was created.
    @ivar url: the endpoint it streams from.
    """

    def __init__(self, response, url):
        self.url = url
        self.watch_id = None
        self.revision = None
        self._queue = DeferredQueue()
        self._lines = _Lines(self._queue)
        self._closed = False
        response.deliverBody(self._lines)

    async def _created(self):
        while self.watch_id is None:
            result = await self._result()
            if result.get("created"):
                self.watch_id = _int(result.get("watch_id"))
                self.revision = _revision(result)
                self._check_canceled(result)

    async def _result(self):
        if self._closed:
            raise EtcdUnavailable("the watch is canceled", url=self.url)
        line = await self._queue.get()
        if isinstance(line, _End):
            self._closed = True
            reason = line.reason
            if reason.check(ResponseDone, PotentialDataLoss):
                raise EtcdUnavailable("etcd ended the watch stream", url=self.url)
            raise EtcdUnavailable("the watch stream broke: {}".format(
                _describe(reason.value)), url=self.url,
                attempts=[(self.url, _describe(reason.value))])
        try:
            decoded = json.loads(line)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            raise EtcdError("a watch answer that is not a JSON object: {!r}".format(
                line[:200]), url=self.url)
        if decoded.get("error"):
            error = decoded["error"]
            if isinstance(error, dict):
                raise _v3_error_from(error, error.get("http_code"), self.url)
            raise _v3_error_from(decoded, None, self.url)
        result = decoded.get("result")
        if not isinstance(result, dict):
            raise EtcdError("a watch answer without a result: {!r}".format(line[:200]),
                            url=self.url)
        return result

    def _check_canceled(self, result):
        if not result.get("canceled"):
            return
        self.cancel()
        compacted = _int(result.get("compact_revision"))
        if compacted:
            raise Compacted("revision {} is compacted: the watch may start at {} or later"
                            .format(self.revision or "asked", compacted),
                            compact_revision=compacted, url=self.url)
        raise WatchCanceled("etcd canceled the watch: {}".format(
            result.get("cancel_reason") or "(no reason given)"), url=self.url)

    async def next(self):
        """
        The next answer with events, or a progress notification.

        @return: a L{WatchResult}.
        @raise Compacted: the watch's start revision is compacted (etcd canceled it).
        @raise WatchCanceled: etcd canceled it for another reason.
        @raise EtcdUnavailable: the stream ended or broke (etcd stopped, say).
        @raise EtcdError: an answer that is not what the gateway sends.
        """
        while True:
            result = await self._result()
            self._check_canceled(result)
            if result.get("created"):
                continue
            events = tuple(Event.from_json(e) for e in _list(result, "events"))
            return WatchResult(_revision(result), events, not events)

    def cancel(self):
        """Close the stream; L{next} then raises L{EtcdUnavailable}."""
        self._closed = True
        self._lines.stop()


# -- v2 -------------------------------------------------------------------------------------


@attrs.frozen
class Node:
    """
    A v2 node: a key with a C{value}, or a directory (C{dir}) with its C{nodes} when read
    recursively.
    """

    key: str
    value: str = None
    dir: bool = False
    created_index: int = 0
    modified_index: int = 0
    ttl: int = None
    expiration: str = None
    nodes: tuple = ()

    @classmethod
    def from_json(cls, obj):
        if not isinstance(obj, dict) or not isinstance(obj.get("key", "/"), str):
            raise EtcdError("a v2 node of unknown shape: {!r}".format(obj)[:200])
        value = obj.get("value")
        if value is not None and not isinstance(value, str):
            raise EtcdError("a v2 value that is not a string: {!r}".format(value)[:200])
        nodes = obj.get("nodes")
        nodes = [] if nodes is None else nodes
        if not isinstance(nodes, list):
            raise EtcdError("v2 nodes that are not a list: {!r}".format(nodes)[:200])
        return cls(key=obj.get("key", "/"), value=value, dir=bool(obj.get("dir")),
                   created_index=_int(obj.get("createdIndex")),
                   modified_index=_int(obj.get("modifiedIndex")),
                   ttl=obj.get("ttl"), expiration=obj.get("expiration"),
                   nodes=tuple(cls.from_json(n) for n in nodes))

    def leaves(self):
        """Every node under this one (itself included) that is not a directory."""
        if not self.dir:
            yield self
        for node in self.nodes:
            yield from node.leaves()


@attrs.frozen
class V2Result:
    """
    A v2 answer: C{action} (C{get}, C{set}, C{create}, C{update}, C{delete}, C{expire},
    C{compareAndSwap}, C{compareAndDelete}), the C{node}, the C{prev_node}, and C{index}:
    the C{X-Etcd-Index} header (etcd's index when it answered; for a wait, when the wait
    began).
    """

    action: str
    node: Node
    prev_node: Node = None
    index: int = 0


class EtcdV2:
    """
    etcd's v2 keys API (etcd 3.4 needs C{--enable-v2}).

    @param http: a treq C{HTTPClient} (or C{StubTreq}).
    @param urls: the endpoint URLs, tried in order.
    @param clock: the C{IReactorTime} that times requests out (not waits).
    @param timeout: seconds until an answer's headers.
    """

    api = "v2"

    def __init__(self, http, urls, clock, timeout=5.0):
        self.endpoints = _Endpoints(http, tuple(urls), clock, timeout)

    @property
    def urls(self):
        return self.endpoints.urls

    @staticmethod
    def _path(key):
        key = key if key.startswith("/") else "/" + key
        return "/v2/keys" + quote(key, safe="/")

    async def _call(self, method, key, params=None, form=None, idempotent=True,
                    timeout=_DEFAULT):
        headers = {b"Accept": [b"application/json"]}
        data = None
        if form is not None:
            data = urlencode(form).encode("ascii")
            headers[b"Content-Type"] = [b"application/x-www-form-urlencoded"]
        url, response = await self.endpoints.request(
            method, self._path(key), data=data, headers=headers, params=params,
            idempotent=idempotent, timeout=timeout)
        content = await _content(response, url)
        index = _int((response.headers.getRawHeaders(b"x-etcd-index") or [b""])[0].decode(
            "ascii", "replace") or None)
        hint = " (is the v2 API enabled: etcd --enable-v2?)" if response.code == 404 else ""
        decoded = _json_object(content, response.code, url, hint)
        if "errorCode" in decoded:
            raise _v2_error(decoded, response.code, url)
        if response.code not in (200, 201) or not isinstance(decoded.get("action"), str):
            raise EtcdError("HTTP {} and not a v2 answer: {!r}".format(
                response.code, content[:200]), status=response.code, url=url)
        prev = decoded.get("prevNode")
        return V2Result(str(decoded.get("action")), Node.from_json(decoded.get("node") or {}),
                        Node.from_json(prev) if prev else None, index)

    async def get(self, key, recursive=False, sorted=False, quorum=False):
        """
        @return: a L{V2Result} of action C{get}.
        @raise EtcdError: code L{KEY_NOT_FOUND} when there is no such key.
        """
        params = {}
        if recursive:
            params["recursive"] = "true"
        if sorted:
            params["sorted"] = "true"
        if quorum:
            params["quorum"] = "true"
        return await self._call("GET", key, params=params)

    async def set(self, key, value, ttl=None, prev_exist=None, prev_index=None,
                  prev_value=None):
        """
        Set a key (C{prev_*}: only if it exists / has that index / that value).

        @return: a L{V2Result} (C{set}, C{create}, C{update} or C{compareAndSwap}).
        @raise EtcdError: a condition did not hold (code 101, 102, 105).
        """
        form = {"value": value}
        if ttl is not None:
            form["ttl"] = str(int(ttl))
        if prev_exist is not None:
            form["prevExist"] = "true" if prev_exist else "false"
        if prev_index is not None:
            form["prevIndex"] = str(int(prev_index))
        if prev_value is not None:
            form["prevValue"] = prev_value
        return await self._call("PUT", key, form=form, idempotent=False)

    async def delete(self, key, recursive=False, dir=False, prev_index=None, prev_value=None):
        """@return: a L{V2Result} of action C{delete} (or C{compareAndDelete})."""
        params = {}
        if recursive:
            params["recursive"] = "true"
        if dir:
            params["dir"] = "true"
        if prev_index is not None:
            params["prevIndex"] = str(int(prev_index))
        if prev_value is not None:
            params["prevValue"] = prev_value
        return await self._call("DELETE", key, params=params, idempotent=False)

    async def wait(self, key, wait_index, recursive=False):
        """
        The first change of C{key} (or of a key under it, C{recursive}) at index
        C{wait_index} or later: at once if etcd's history has one, else when it happens.
        No timeout: etcd sends nothing until then.

        @return: a L{V2Result} of the change.
        @raise IndexCleared: C{wait_index} is older than etcd's history (list again).
        """
        params = {"wait": "true", "waitIndex": str(int(wait_index))}
        if recursive:
            params["recursive"] = "true"
        return await self._call("GET", key, params=params, timeout=None)


def _v2_error(decoded, status, url):
    code = decoded.get("errorCode")
    index = decoded.get("index")
    kind = IndexCleared if code == EVENT_INDEX_CLEARED else EtcdError
    return kind(str(decoded.get("message") or "(no message)"), status=status, code=code,
                cause=decoded.get("cause"), index=index if isinstance(index, int) else None,
                url=url)


def etcd_http_client(reactor, ca=None, connections_per_endpoint=None):
    """
    The production HTTP client of an etcd client: treq over a pooled C{Agent} that
    connects to IP addresses directly (L{amalgam8.client.DirectEndpoints}: a refused
    endpoint fails over at once).

    @param ca: the path of a PEM file of the authorities that signed the certificates of
        C{https} endpoints (L{None}: the system's).
    @param connections_per_endpoint: the idle connections kept open to each endpoint
        (L{None}: the pool's default, 2); a store that sends many requests at once keeps
        more.
    @return: C{(HTTPClient, HTTPConnectionPool)}; close the pool's connections
        (C{closeCachedConnections}) when done.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

    from amalgam8.client import DirectEndpoints

    class QuietFactory(_HTTP11ClientFactory):
        # One "Starting factory" log line per connection is noise (as in client.py).
        noisy = False

    tls = None
    if ca is not None:
        from twisted.internet import ssl

        from amalgam8.adapters.kubernetes import trust_policy

        with open(ca, "rb") as f:
            tls = trust_policy(ssl.Certificate.loadPEM(f.read()))
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = QuietFactory
    if connections_per_endpoint is not None:
        pool.maxPersistentPerHost = connections_per_endpoint
    agent = Agent.usingEndpointFactory(reactor, DirectEndpoints(reactor, tls=tls), pool=pool)
    return HTTPClient(agent), pool
