# -*- test-case-name: tests.test_etcd_catalog -*-
"""
The Weave Flux catalog (issue 12): the services Weave Flux (the 2015-2016 "classic" Flux,
github.com/weaveworks/flux before it became a Kubernetes tool) keeps in etcd, mirrored as
read-only instances of one registry namespace.

Flux's layout, under a prefix (C{/weave/service/} by default), one JSON value a key:

    <prefix><service>/details          {"address": "10.128.0.1", "port": 80,
                                        "protocol": "http"}
    <prefix><service>/instance/<name>  {"address": "10.0.0.7", "port": 9080,
                                        "containerGroup": "v2", "labels": {...},
                                        "state": "live", "ownerID": "..."}

(C{<service>/groupspec/<group>} and any other key are Flux's own business and ignored.) The
instance group field was C{instanceGroup}, then C{containerGroup}, then C{containerRule} as
Flux went along; all three are read. A later Flux wrote the address as one C{"ip:port"}
string; that is read too. See L{parse_instance}, L{parse_details}, L{catalog_entry}.

Flux wrote it through etcd's v2 keys API; the catalog reads it through either API
(L{amalgam8.etcd}): v2 lists the prefix recursively and waits
(C{?wait=true&recursive=true&waitIndex=}) from the listing's C{X-Etcd-Index} + 1, one
change at a time; v3 ranges over the prefix and watches it from the range's revision + 1
(with progress notifications). Every change updates the mirror of its service and tells the
listeners. A failure (etcd stopped, refused, a broken stream) is retried after the Kubernetes
catalog's L{Backoff}, resuming from the last revision (index) seen + 1: nothing is lost and
nothing is applied twice. A compacted revision (v3) or an "event index cleared" (v2) relists,
and a relist replaces the mirror in one step, so instances that are still there never leave
it. A value that cannot be read is logged once and skipped; what its key gave before stays.
"""

import ipaddress
import json

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from amalgam8.adapters import ICatalog, add_listener, catalog_instance
from amalgam8.adapters.kubernetes import Backoff
from amalgam8.etcd import KEY_NOT_FOUND, Compacted, EtcdError, IndexCleared

__all__ = ["EtcdCatalog", "FluxService", "FluxInstance", "parse_details", "parse_instance",
           "parse_key", "catalog_entry", "from_settings", "TAG", "GROUP_FIELDS"]

log = Logger()

#: The tag every instance of this catalog carries (beside its version).
TAG = "flux"
#: Where Flux put an instance's group, in the order its versions named it.
GROUP_FIELDS = ("instanceGroup", "containerGroup", "containerRule")
_DELETES = ("delete", "expire", "compareAndDelete")


@attrs.frozen
class FluxService:
    """A service's C{details}: its virtual address and the protocol of its connections."""

    protocol: str = None
    address: str = None
    port: int = None

    @property
    def endpoint_type(self):
        """C{http} for Flux's C{"http"} (C{https} for C{"https"}), else C{tcp}."""
        protocol = (self.protocol or "").lower()
        return protocol if protocol in ("http", "https") else "tcp"


@attrs.frozen
class FluxInstance:
    """
    An instance as Flux wrote it.

    @ivar group: its instance group (container group, container rule), or L{None}.
    @ivar labels: its labels as sorted C{(name, value)} pairs.
    @ivar state: C{"live"}, C{"no address"}, or L{None} (older Flux wrote none).
    """

    address: str = None
    port: int = None
    group: str = None
    labels: tuple = ()
    state: str = None

    @property
    def version(self):
        """The version tag: the instance group, else the label C{version}, else L{None}."""
        return self.group or dict(self.labels).get("version") or None

    @property
    def endpoint_value(self):
        """C{ip:port} (C{[ip]:port} for IPv6), or L{None} without an address or port."""
        if not self.address or not self.port:
            return None
        if ":" in self.address:
            return "[{}]:{}".format(self.address, self.port)
        return "{}:{}".format(self.address, self.port)


def _object(data):
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the value is not UTF-8")
    try:
        value = json.loads(data)
    except ValueError:
        raise ValueError("the value is not JSON: {!r}".format(data[:80]))
    if not isinstance(value, dict):
        raise ValueError("the value is not a JSON object: {!r}".format(data[:80]))
    return value


def _port(value, what="port"):
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError("{} must be a number from 1 to 65535, not {!r}".format(what, value))
    return value


def _text(value, what):
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("{} must be a string, not {!r}".format(what, value))
    return value or None


def _address(value, port):
    """An address (and port): C{"10.0.0.7"} beside a port, or one C{"10.0.0.7:80"} string."""
    address = _text(value, "address")
    if address is None:
        return None, port
    if port is None and (address.count(":") == 1 or address.startswith("[")):
        host, _, number = address.rpartition(":")
        if host and number.isdigit():
            address, port = host.strip("[]"), _port(int(number), "the address's port")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not address.replace("-", "").replace(".", "").isalnum():
            raise ValueError("address must be an IP address or a host name, not {!r}".format(
                value))
    return address, port


def parse_details(data):
    """
    A service's C{details} value.

    @param data: the value (bytes or str).
    @return: a L{FluxService}.
    @raise ValueError: it is not a JSON object of Flux's fields (the message says which).
    """
    value = _object(data)
    address, port = _address(value.get("address"), _port(value.get("port")))
    return FluxService(protocol=_text(value.get("protocol"), "protocol"), address=address,
                       port=port)


def parse_instance(data):
    """
    An instance value.

    @param data: the value (bytes or str).
    @return: a L{FluxInstance}.
    @raise ValueError: it is not a JSON object of Flux's fields (the message says which).
    """
    value = _object(data)
    address, port = _address(value.get("address"), _port(value.get("port")))
    labels = value.get("labels")
    labels = {} if labels is None else labels
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("labels must be an object of strings, not {!r}".format(labels)[:120])
    group = None
    for field in GROUP_FIELDS:
        group = group or _text(value.get(field), field)
    return FluxInstance(address=address, port=port, group=group,
                        labels=tuple(sorted(labels.items())),
                        state=_text(value.get("state"), "state"))


def parse_key(prefix, key):
    """
    What a key is in Flux's layout under C{prefix} (which ends with C{/}).

    @return: C{("details", service)}, C{("instance", service, name)}, the directories
        C{("service", service)}, C{("instances", service)} and C{("all",)} (the prefix
        itself: v2 deletes them recursively), or L{None} for any other key.
    """
    if key in (prefix, prefix.rstrip("/")):
        return ("all",)
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split("/")
    if not parts[0]:
        return None
    if len(parts) == 1:
        return ("service", parts[0])
    if parts[1] == "details" and len(parts) == 2:
        return ("details", parts[0])
    if parts[1] == "instance":
        if len(parts) == 2:
            return ("instances", parts[0])
        if len(parts) == 3 and parts[2]:
            return ("instance", parts[0], parts[2])
    return None


def catalog_entry(service, name, instance, details=None, seen_at=0.0):
    """
    The registry instance of a Flux instance.

    - endpoint: C{address:port}, type from the service's details (L{FluxService.endpoint_type};
      C{tcp} while the service has no details);
    - status: C{UP} for the state C{live} (or none), else C{STARTING} (listed, not routed);
    - tags: the version (L{FluxInstance.version}), then L{TAG};
    - metadata: C{{"flux": {"instance": name, "group": group}}}.

    @return: an C{Instance}, or L{None} for an instance without an address (Flux's state
        C{"no address"}: nothing to route to).
    @raise ValueError: it cannot be a registry instance (the message says why).
    """
    value = instance.endpoint_value
    if value is None:
        return None
    tags = [TAG]
    if instance.version and instance.version != TAG:
        tags.insert(0, instance.version)
    flux = {"instance": name}
    if instance.group:
        flux["group"] = instance.group
    status = "UP" if instance.state in (None, "live") else "STARTING"
    return catalog_instance(service, value, details.endpoint_type if details else "tcp",
                            tags, status, metadata={"flux": flux}, seen_at=seen_at)


@implementer(ICatalog)
class EtcdCatalog(Service):
    """
    The mirror of Weave Flux's services under one etcd prefix.

    @param client: an L{amalgam8.etcd.EtcdV3} or L{amalgam8.etcd.EtcdV2}.
    @param clock: an C{IReactorTime} for backoff delays and the instances' C{last_heartbeat}.
    @param prefix: where Flux keeps its services (a C{/} is added when missing).
    @param serves: the registry namespace its instances are listed in.
    @param backoff: a L{Backoff} (default: 0.5 s doubling to 30 s, with jitter).
    @param pool: an C{HTTPConnectionPool} closed when the service stops, or L{None}.

    @ivar position: the v3 revision (v2 index) the mirror is at; L{None}: it lists next.
    @ivar relists: how many times it has listed the prefix.
    """

    kind = "etcd"

    def __init__(self, client, clock, prefix="/weave/service/", serves="default",
                 backoff=None, pool=None):
        self.client = client
        self.api = client.api
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.serves = serves
        self._clock = clock
        self.backoff = backoff or Backoff()
        self._pool = pool
        self._listeners = []
        self._generation = 0
        self._details = {}      # service -> FluxService
        self._instances = {}    # service -> {instance name: FluxInstance}
        self._built = {}        # service -> [Instance]
        self._flat = []
        self._logged = set()
        self._running = None
        self._watch = None
        self.position = None
        self.relists = 0

    # -- ICatalog -------------------------------------------------------------------------

    def namespaces(self):
        return [self.serves] if self._flat else []

    def instances(self, namespace):
        return list(self._flat) if namespace == self.serves else []

    def generation(self, namespace):
        return self._generation if namespace == self.serves else 0

    def subscribe(self, listener):
        return add_listener(self._listeners, listener)

    def startService(self):
        Service.startService(self)
        self._running = ensureDeferred(self._run())
        self._running.addErrback(self._crashed)

    def _crashed(self, failure):
        if not failure.check(CancelledError):
            log.failure("etcd: the catalog of {prefix} stopped", failure, prefix=self.prefix)

    def stopService(self):
        Service.stopService(self)
        running, self._running = self._running, None
        if running is not None:
            running.cancel()
        if self._watch is not None:
            self._watch.cancel()
        if self._pool is not None:
            return self._pool.closeCachedConnections()

    # -- the loop -------------------------------------------------------------------------

    async def _run(self):
        while self.running:
            try:
                if self.position is None:
                    await self._relist()
                if self.api == "v3":
                    await self._follow_v3()
                else:
                    await self._follow_v2()
            except (Compacted, IndexCleared) as e:
                log.info("etcd: {problem}; relisting {prefix}", problem=str(e),
                         prefix=self.prefix)
                self.position = None
            except CancelledError:
                raise
            except Exception as e:
                if not self.running:
                    return
                delay = self.backoff.next()
                log.warn("etcd: {problem}; retrying in {delay:.2f}s", problem=_describe(e),
                         delay=delay)
                await deferLater(self._clock, delay)

    async def _listing(self):
        """@return: C{(position, [(key, value)])}: every key under the prefix."""
        if self.api == "v3":
            result = await self.client.range_all(self.prefix, prefix=True)
            entries = []
            for kv in result.kvs:
                key = self._key(kv.key)
                if key is not None:
                    entries.append((key, kv.value))
            return result.revision, entries
        try:
            result = await self.client.get(self.prefix, recursive=True)
        except EtcdError as e:
            if e.code != KEY_NOT_FOUND or e.index is None:
                raise
            return e.index, []       # nothing there yet
        return result.index, [(node.key, node.value or "") for node in result.node.leaves()]

    async def _relist(self):
        position, entries = await self._listing()
        details, instances = {}, {}
        for key, value in entries:
            self._store(details, instances, key, value, previous=True)
        # One step: what is still there never leaves the mirror.
        self._details, self._instances = details, instances
        self._built = {}
        for service in set(details) | set(instances):
            built = self._build(service)
            if built:
                self._built[service] = built
        self.position = position
        self.relists += 1
        self.backoff.reset()
        log.info("etcd: listed {count} instances of {services} services under {prefix} "
                 "({api} {what} {position})", count=sum(map(len, instances.values())),
                 services=len(set(details) | set(instances)), prefix=self.prefix,
                 api=self.api, what="revision" if self.api == "v3" else "index",
                 position=position)
        self._changed()

    async def _follow_v3(self):
        watch = await self.client.watch(self.prefix, prefix=True,
                                        start_revision=self.position + 1,
                                        progress_notify=True)
        self._resumed()
        self._watch = watch
        try:
            while True:
                result = await watch.next()
                touched = set()
                for event in result.events:
                    key = self._key(event.kv.key)
                    if key is not None:
                        touched |= self._apply(
                            key, event.kv.value if event.type == "PUT" else None)
                    self.position = max(self.position, event.kv.mod_revision)
                if result.progress:
                    self.position = max(self.position, result.revision)
                self._rebuild(touched)
        finally:
            self._watch = None
            watch.cancel()

    async def _follow_v2(self):
        while True:
            result = await self.client.wait(self.prefix, self.position + 1, recursive=True)
            self._resumed()
            node = result.node
            if result.action in _DELETES:
                touched = self._apply(node.key, None, subtree=node.dir)
            elif node.dir:
                touched = set()       # a directory made: nothing to mirror yet
            else:
                touched = self._apply(node.key, node.value or "")
            self.position = max(self.position, node.modified_index)
            self._rebuild(touched)

    def _resumed(self):
        if self.backoff.failures:
            log.info("etcd: watching {prefix} again from {api} {what} {position}",
                     prefix=self.prefix, api=self.api, position=self.position + 1,
                     what="revision" if self.api == "v3" else "index")
        self.backoff.reset()

    # -- the mirror -----------------------------------------------------------------------

    def _key(self, raw):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._log_once("etcd: skipping a key that is not UTF-8: {key!r}", key=raw[:200])
            return None

    def _store(self, details, instances, key, value, previous=False):
        """
        Parse one value into C{details}/C{instances}; a malformed one is logged once and
        keeps what its key held in the mirror (C{previous}: from the current mirror, for a
        relist building a new one).

        @return: the service it belongs to, or L{None} for a key not of Flux's layout.
        """
        parsed = parse_key(self.prefix, key)
        if parsed is None or parsed[0] not in ("details", "instance"):
            return None
        service = parsed[1]
        try:
            if parsed[0] == "details":
                details[service] = parse_details(value)
            else:
                instances.setdefault(service, {})[parsed[2]] = parse_instance(value)
        except ValueError as e:
            self._log_once("etcd: skipping {key}: {problem}; what it held before is kept",
                           key=key, problem=str(e))
            if previous and parsed[0] == "details" and service in self._details:
                details[service] = self._details[service]
            elif previous and parsed[0] == "instance":
                kept = self._instances.get(service, {}).get(parsed[2])
                if kept is not None:
                    instances.setdefault(service, {})[parsed[2]] = kept
        return service

    def _apply(self, key, value, subtree=False):
        """
        One change: C{value} the new value, or L{None} for a deleted key (C{subtree}: a v2
        directory deleted with everything under it).

        @return: the services it touched.
        """
        if value is not None:
            service = self._store(self._details, self._instances, key, value)
            return {service} if service is not None else set()
        parsed = parse_key(self.prefix, key)
        if parsed is None:
            return set()
        kind = parsed[0]
        if kind == "details":
            return {parsed[1]} if self._details.pop(parsed[1], None) is not None else set()
        if kind == "instance":
            named = self._instances.get(parsed[1], {})
            if named.pop(parsed[2], None) is None:
                return set()
            if not named:
                del self._instances[parsed[1]]
            return {parsed[1]}
        if not subtree:
            return set()
        if kind == "all":
            touched = set(self._details) | set(self._instances)
            self._details, self._instances = {}, {}
            return touched
        touched = {parsed[1]}
        self._instances.pop(parsed[1], None)
        if kind == "service":
            self._details.pop(parsed[1], None)
        return touched

    def _build(self, service):
        """The registry instances of one service, sorted; the unusable ones logged once."""
        details = self._details.get(service)
        seen_at = self._clock.seconds()
        built = {}
        for name, flux in sorted(self._instances.get(service, {}).items()):
            try:
                instance = catalog_entry(service, name, flux, details, seen_at)
            except ValueError as e:
                self._log_once("etcd: skipping {key}: {problem}",
                               key="{}{}/instance/{}".format(self.prefix, service, name),
                               problem=str(e))
                continue
            if instance is not None:
                built.setdefault(instance.id, instance)
        return sorted(built.values(), key=_order)

    def _rebuild(self, services):
        """Build the touched services again; a service that builds as it was is kept."""
        changed = False
        for service in services:
            built = self._build(service)
            before = self._built.get(service, [])
            if list(map(_signature, built)) == list(map(_signature, before)):
                continue          # (its instances keep their last_heartbeat)
            changed = True
            if built:
                self._built[service] = built
            else:
                del self._built[service]
        if changed:
            self._changed(known=True)

    def _changed(self, known=False):
        """
        Rebuild the whole mirror and tell the listeners, if it differs (C{known}: it does).
        """
        # Each service's instances are sorted and their ids differ (the id hashes the
        # service name), so the services in order give the whole sorted mirror.
        flat = [instance for service in sorted(self._built)
                for instance in self._built[service]]
        if not known and list(map(_signature, flat)) == list(map(_signature, self._flat)):
            return
        self._flat = flat
        self._generation += 1
        for listener in list(self._listeners):
            listener(self.serves)

    def _log_once(self, format, **fields):
        key = (format, tuple(sorted(fields.items())))
        if key not in self._logged:
            self._logged.add(key)
            log.warn(format, **fields)


def _signature(instance):
    registration = instance.registration
    return (instance.id, instance.tags, instance.status, registration.metadata)


def _order(instance):
    return (instance.service_name, instance.registration.endpoint_value, instance.id)


def _describe(e):
    return str(e) or type(e).__name__


def from_settings(values, reactor):
    """
    The catalog the settings ask for (C{etcd-url} given): C{etcd-api} picks the client,
    C{etcd-prefix} the prefix, C{etcd-serves} the namespace.

    @raise amalgam8.settings.SettingError: a prefix that is not a key path.
    """
    from amalgam8.etcd import EtcdV2, EtcdV3, etcd_http_client
    from amalgam8.settings import SettingError

    prefix = str(values["etcd-prefix"] or "").strip()
    if not prefix.startswith("/") or "//" in prefix:
        raise SettingError("etcd-prefix: {!r} is not a key path such as /weave/service/"
                           .format(values["etcd-prefix"]))
    http, pool = etcd_http_client(reactor)
    kind = EtcdV3 if values["etcd-api"] == "v3" else EtcdV2
    client = kind(http, values["etcd-url"], reactor)
    return EtcdCatalog(client, reactor, prefix=prefix, serves=values["etcd-serves"],
                       pool=pool)
