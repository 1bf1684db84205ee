# -*- test-case-name: tests.test_registry_tap -*-
"""
The registry's catalog settings (SPEC Part C: C{A8_K8S_URL}, C{A8_K8S_TOKEN},
C{A8_FS_CATALOG}, and ours for etcd), and the catalogs they make.

Each adapter module has C{from_settings(values, reactor) -> ICatalog}, called only when its
setting is given; it raises L{amalgam8.settings.SettingError} for a value that cannot work
(an unreadable CA file, say), which stops the registry at start with one line.
"""

import importlib

from amalgam8.settings import (Setting, choice, parse_duration_setting, parse_text,
                               parse_url)

__all__ = ["ADAPTER_SETTINGS", "build_catalogs"]


def _k8s_url(text):
    value = str(text).strip()
    if value.lower() == "in-cluster":
        return "in-cluster"
    return parse_url(value)


def _directory(text):
    """A path; blank is none (L{None})."""
    return str(text).strip() or None


def _etcd_urls(text):
    """A comma-separated list of http(s) URLs (etcd's client endpoints)."""
    urls = [parse_url(part) for part in str(text).split(",") if part.strip()]
    return tuple(urls) or None


ADAPTER_SETTINGS = (
    Setting("k8s-url", "A8_K8S_URL", _k8s_url, None,
            "Mirror the Endpoints (or EndpointSlices) of a Kubernetes namespace: the API "
            "server's URL, or "
            "`in-cluster` for the one a pod's service account reaches "
            "(`KUBERNETES_SERVICE_HOST`)."),
    Setting("k8s-token", "A8_K8S_TOKEN", parse_text, None,
            "Bearer token for the Kubernetes API (or `k8s-token-file`, not both)."),
    Setting("k8s-token-file", "A8_K8S_TOKEN_FILE", parse_text, None,
            "A file holding the token, re-read when it changes (in-cluster default: the "
            "service account's token)."),
    Setting("k8s-ca-file", "A8_K8S_CA_FILE", parse_text, None,
            "The CA certificate(s) the API server's TLS certificate is checked against "
            "(in-cluster default: the service account's `ca.crt`)."),
    Setting("k8s-namespace", "A8_K8S_NAMESPACE", parse_text, "default",
            "The Kubernetes namespace whose services are mirrored."),
    Setting("k8s-serves", "A8_K8S_SERVES", parse_text, "default",
            "The registry namespace (tenant) they are listed in."),
    Setting("etcd-url", "A8_ETCD_URL", _etcd_urls, None,
            "Mirror Weave Flux's services from etcd: its client URL(s), comma-separated."),
    Setting("etcd-api", "A8_ETCD_API", choice("etcd-api", ("v2", "v3")), "v3",
            "The etcd API Flux wrote through: `v2` (keys API) or `v3` (JSON gateway)."),
    Setting("etcd-prefix", "A8_ETCD_PREFIX", parse_text, "/weave/service/",
            "Where Flux keeps its services."),
    Setting("etcd-serves", "A8_ETCD_SERVES", parse_text, "default",
            "The registry namespace (tenant) the etcd services are listed in."),
    Setting("fs-catalog", "A8_FS_CATALOG", _directory, None,
            "A directory of catalog files, one `<namespace>.json` (or `.yaml`, `.yml`) "
            "per tenant, in the registry's instance format; reloaded on change (see "
            "docs/adapters.md)."),
    Setting("fs-poll", "A8_FS_POLL", parse_duration_setting, "1s",
            "How often the catalog directory is checked where inotify is not available."),
)

#: setting that turns an adapter on -> its module.
_ADAPTERS = (
    ("k8s-url", "amalgam8.adapters.kubernetes"),
    ("etcd-url", "amalgam8.adapters.etcd"),
    ("fs-catalog", "amalgam8.adapters.files"),
)


def build_catalogs(values, reactor):
    """
    @param values: the loaded settings (a mapping by setting name).
    @return: the L{amalgam8.adapters.ICatalog}s the settings ask for (not started).
    @raise amalgam8.settings.SettingError: a value an adapter cannot work with.
    """
    catalogs = []
    for name, module in _ADAPTERS:
        if values[name] is not None:
            catalogs.append(importlib.import_module(module).from_settings(values, reactor))
    return catalogs
