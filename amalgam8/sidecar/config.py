# -*- test-case-name: tests.test_sidecar_config -*-
"""
The sidecar's configuration (SPEC A5, Part C): command-line flags beat C{A8_*} environment
variables, which beat the YAML file named by C{A8_CONFIG} (or C{--config}), which beats the
defaults. Every bad value stops the start with one line naming it.
"""

import ipaddress
import os
import re
import shlex
import socket

import attrs

from amalgam8 import settings
from amalgam8.registry.model import ENDPOINT_TYPES
from amalgam8.settings import (
    CONFIG,
    Setting,
    SettingError,
    choice,
    parse_bool,
    parse_duration_setting,
    parse_positive_duration,
    parse_url,
    parse_urls,
    port_parser,
)

__all__ = ["SETTINGS", "ConfigError", "SidecarConfig", "HealthCheck", "Command", "load",
           "parse_service"]

# A bad setting; the one-line message names it and where it came from.
ConfigError = SettingError


@attrs.frozen
class HealthCheck:
    type: str            # http, https, tcp, file
    value: str           # URL, host:port, or command
    interval: float = 30.0
    timeout: float = 5.0
    method: str = "GET"
    code: int = 200
    args: tuple = ()


@attrs.frozen
class Command:
    cmd: tuple
    env: tuple = ()
    on_exit: str = "ignore"     # ignore | terminate
    kill_group: bool = False


@attrs.frozen
class SidecarConfig:
    service_name: str = ""
    service_tags: tuple = ()
    endpoint_host: str = ""
    endpoint_port: int = 0
    endpoint_type: str = "http"
    register: bool = False
    proxy: bool = False
    registry_url: str = ""
    registry_token: str = ""
    registry_poll: float = 15.0
    controller_url: str = ""
    controller_token: str = ""
    controller_poll: float = 15.0
    healthchecks: tuple = ()
    commands: tuple = ()
    log_level: str = "info"
    proxy_port: int = 6379
    proxy_address: str = "0.0.0.0"
    proxy_admin_port: int = 5813
    debug_port: int = 6116
    stop_timeout: float = 30.0
    ttl: int = 60
    proxy_workers: int = 1
    runtime_dir: str = ""
    nginx: str = ""


LEVELS = ("debug", "info", "warn", "warning", "error")

_port = port_parser(1)


def parse_service(text):
    """C{name[:tag1,tag2]}, or the YAML mapping C{{name, tags}} -> C{(name, tags)}."""
    if isinstance(text, dict):
        unknown = set(text) - {"name", "tags"}
        if unknown:
            raise ValueError("unknown key service.{}".format(sorted(unknown)[0]))
        tags = text.get("tags") or []
        if not isinstance(tags, list):
            raise ValueError("service.tags must be a list")
        text = str(text.get("name", ""))
        if tags:
            text += ":" + ",".join(map(str, tags))
    name, colon, tags = str(text).strip().partition(":")
    name = name.strip()
    if not name or "/" in name or len(name.encode()) > 64 or any(c.isspace() for c in name):
        raise ValueError("{!r} is not a service name".format(text))
    if not colon:
        return name, ()
    tag_list = tuple(t.strip() for t in tags.split(","))
    if not all(tag_list):
        # 'a:' and 'a:v1,,v2' are typos, not a request for no (or fewer) tags.
        raise ValueError("{!r} has an empty tag (name[:tag1,tag2])".format(text))
    if any(c.isspace() for t in tag_list for c in t):
        raise ValueError("{!r} has a tag with a space in it".format(text))
    return name, tag_list


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def parse_host(text):
    """An IPv4 or IPv6 address or a DNS name (blank: not given)."""
    host = str(text).strip()
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError("{!r} is not an IP address or host name".format(text))
    return host


def _stripped(text):
    return str(text).strip()


def _level(text):
    level = str(text).strip().lower()
    if level not in LEVELS:
        raise ValueError("log level must be debug, info, warn or error")
    return level


def _workers(text):
    try:
        workers = int(str(text))
    except ValueError:
        workers = 0
    if not 1 <= workers <= 64:
        raise ValueError("proxy workers must be 1-64")
    return workers


def parse_healthcheck(item):
    """A health check from YAML (a dict) or from A8_HEALTHCHECKS (a URL-like string)."""
    if isinstance(item, str):
        text = item.strip()
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise ValueError("{!r} is not a health check (http://, https://, tcp:// or "
                             "file://)".format(item))
        item = {"type": scheme.lower(), "value": text if scheme in ("http", "https") else rest}
    if not isinstance(item, dict):
        raise ValueError("a health check must be a mapping")
    unknown = set(item) - {"type", "value", "interval", "timeout", "method", "code", "args"}
    if unknown:
        raise ValueError("unknown health check key {}".format(sorted(unknown)[0]))
    kind = str(item.get("type", "")).lower()
    value = item.get("value")
    if kind not in ("http", "https", "tcp", "file"):
        raise ValueError("health check type must be http, https, tcp or file, not {!r}"
                         .format(item.get("type")))
    if not isinstance(value, str) or not value.strip():
        raise ValueError("health check needs a value")
    if kind in ("http", "https"):
        parse_url(value)
    elif kind == "tcp":
        host, _, port = value.rpartition(":")
        if not host:
            raise ValueError("tcp health check needs host:port, not {!r}".format(value))
        _port(port)
    args = item.get("args", ())
    if isinstance(args, str):
        args = tuple(shlex.split(args))
    elif isinstance(args, (list, tuple)) and all(isinstance(a, str) for a in args):
        args = tuple(args)
    else:
        raise ValueError("health check args must be a list of strings")
    code = item.get("code", 200)
    if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
        raise ValueError("health check code must be an HTTP status")
    method = str(item.get("method", "GET")).upper()
    if not method.isalpha():
        raise ValueError("bad health check method {!r}".format(method))
    try:
        interval = parse_duration_setting(item.get("interval", 30))
        timeout = parse_duration_setting(item.get("timeout", 5))
    except ValueError as e:
        raise ValueError("health check interval or timeout: {}".format(e))
    if interval <= 0 or timeout <= 0:
        raise ValueError("health check interval and timeout must be above 0")
    return HealthCheck(kind, value.strip(), interval, timeout, method, code, args)


def parse_healthchecks(value):
    """A8_HEALTHCHECKS (a comma list) or the YAML list -> health checks."""
    if isinstance(value, str):
        value = [c for c in value.split(",") if c.strip()]
    if not isinstance(value, list):
        raise ValueError("must be a list of health checks")
    return tuple(parse_healthcheck(c) for c in value)


def parse_command(item):
    if not isinstance(item, dict):
        raise ValueError("a command must be a mapping with cmd")
    unknown = set(item) - {"cmd", "env", "on_exit", "kill_group"}
    if unknown:
        raise ValueError("unknown command key {}".format(sorted(unknown)[0]))
    cmd = item.get("cmd")
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
        raise ValueError("cmd must be a command line or a list of strings")
    env = item.get("env", [])
    if isinstance(env, dict):
        env = ["{}={}".format(k, v) for k, v in env.items()]
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        raise ValueError("env must be a list of NAME=value")
    on_exit = str(item.get("on_exit", "ignore")).lower()
    if on_exit not in ("ignore", "terminate"):
        raise ValueError("on_exit must be ignore or terminate, not {!r}".format(
            item.get("on_exit")))
    try:
        kill_group = parse_bool(item.get("kill_group", False))
    except ValueError as e:
        raise ValueError("kill_group: {}".format(e))
    return Command(tuple(cmd), tuple(env), on_exit, kill_group)


def parse_commands(value):
    if not isinstance(value, list):
        raise ValueError("must be a list of commands")
    return tuple(parse_command(c) for c in value)


# The sidecar's settings (SPEC A5, Part C). Each name with underscores is a SidecarConfig
# attribute, except service (service_name and service_tags) and config.
SETTINGS = (
    CONFIG,
    Setting("service", "A8_SERVICE", parse_service, None,
            "This service, `name[:tag1,tag2]` (in the file also `{name, tags}`).",
            structured=True, shown_default="none (required)"),
    Setting("endpoint-host", "A8_ENDPOINT_HOST", parse_host, None, "The address to register.",
            yaml=("endpoint.host",), shown_default="first non-loopback IPv4"),
    Setting("endpoint-port", "A8_ENDPOINT_PORT", _port, None, "The port to register, 1-65535.",
            yaml=("endpoint.port",), shown_default="none (required to register)"),
    Setting("endpoint-type", "A8_ENDPOINT_TYPE", choice("endpoint type", ENDPOINT_TYPES),
            "http", "`http`, `https`, `tcp`, `udp` or `user`.", yaml=("endpoint.type",)),
    Setting("register", "A8_REGISTER", parse_bool, "false", "Register this instance."),
    Setting("proxy", "A8_PROXY", parse_bool, "false", "Run the proxy."),
    Setting("registry-url", "A8_REGISTRY_URL", parse_urls, None,
            "The registry (several replicas: comma-separated URLs).",
            yaml=("registry.url",)),
    Setting("registry-token", "A8_REGISTRY_TOKEN", _stripped, None, "Its bearer token.",
            yaml=("registry.token",)),
    Setting("registry-poll", "A8_REGISTRY_POLL", parse_positive_duration, "15s",
            "Poll interval when the registry cannot block; also the cap of the retry "
            "backoff when it is down.", yaml=("registry.poll",)),
    Setting("controller-url", "A8_CONTROLLER_URL", parse_urls, None,
            "The controller (several replicas: comma-separated URLs).",
            yaml=("controller.url",)),
    Setting("controller-token", "A8_CONTROLLER_TOKEN", _stripped, None, "Its bearer token.",
            yaml=("controller.token",)),
    Setting("controller-poll", "A8_CONTROLLER_POLL", parse_positive_duration, "15s",
            "As `registry-poll`, for the controller.", yaml=("controller.poll",)),
    Setting("healthchecks", "A8_HEALTHCHECKS", parse_healthchecks, None,
            "A comma list of `http://…`, `https://…`, `tcp://host:port`, `file://command` "
            "(in the file, a list of checks: see below).", structured=True),
    Setting("log-level", "A8_LOG_LEVEL", _level, "info", "`debug`, `info`, `warn`, `error`."),
    Setting("proxy-port", "A8_PROXY_PORT", _port, "6379",
            "Where apps reach the proxy (all addresses)."),
    Setting("proxy-admin-port", "A8_PROXY_ADMIN_PORT", _port, "5813",
            "The proxy's admin listener, on 127.0.0.1."),
    # Only the debug API can be off (0): nginx refuses to listen on port 0.
    Setting("debug-port", "A8_DEBUG_PORT", port_parser(0), "6116",
            "The debug API on 127.0.0.1; `0` turns it off."),
    Setting("stop-timeout", "A8_STOP_TIMEOUT", parse_positive_duration, "30s",
            "The deadline of a graceful stop."),
    Setting("proxy-workers", "A8_PROXY_WORKERS", _workers, "1", "nginx worker processes, 1-64."),
    Setting("runtime-dir", "A8_RUNTIME_DIR", _stripped, None,
            "nginx.conf, pid, error.log, access.log, temp files.",
            shown_default="a new temporary directory"),
    Setting("nginx", "A8_NGINX", _stripped, None, "The nginx binary.",
            shown_default="`openresty`, `nginx` or `/usr/sbin/nginx` on the PATH"),
    Setting("commands", None, parse_commands, None,
            "What to supervise besides the app after `--` (a list: see below).",
            option=False, structured=True),
)


def default_host():
    """The first non-loopback IPv4 address of this machine, else 127.0.0.1."""
    candidates = []
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            candidates.append(s.getsockname()[0])
    except OSError:
        pass
    for address in candidates:
        if not address.startswith("127."):
            return address
    return "127.0.0.1"


def load(flags, environ=None, app=()):
    """
    Merge the sources (L{SETTINGS}) and validate.

    @param flags: a dict of settings given on the command line (keys with underscores, as
        C{endpoint_port}; None = unset).
    @param environ: the environment (default C{os.environ}).
    @param app: the trailing argv of an app to supervise (C{on_exit: terminate}).
    @raise ConfigError: naming the first bad setting.
    """
    loaded = settings.load(SETTINGS, {k.replace("_", "-"): v for k, v in flags.items()},
                           environ)
    values = {name.replace("-", "_"): value for name, value in loaded.values.items()
              if value is not None and name not in ("config", "service", "commands")}
    if loaded["service"] is not None:
        values["service_name"], values["service_tags"] = loaded["service"]
    commands = list(loaded["commands"] or ())
    if app:
        commands.append(Command(tuple(app), (), "terminate", False))
    values["commands"] = tuple(commands)

    config = SidecarConfig(**values)
    if not config.register and not config.proxy:
        raise ConfigError("A8_REGISTER/A8_PROXY: at least one of register and proxy must be "
                          "true")
    if not config.service_name and (config.register or config.proxy):
        raise ConfigError("A8_SERVICE: a service name is required")
    if config.register:
        if not config.registry_url:
            raise ConfigError("A8_REGISTRY_URL: needed to register")
        if not config.endpoint_port:
            raise ConfigError("A8_ENDPOINT_PORT: needed to register")
    if config.proxy:
        if not config.registry_url:
            raise ConfigError("A8_REGISTRY_URL: the proxy needs the registry")
        if not config.controller_url:
            raise ConfigError("A8_CONTROLLER_URL: the proxy needs the controller")
    if config.proxy:
        _check_ports(config, loaded)
        _check_runtime_dir(config.runtime_dir, loaded)
    if config.register and not config.endpoint_host:
        config = attrs.evolve(config, endpoint_host=default_host())
    return config


_PORTS = (("proxy_port", "proxy-port", "A8_PROXY_PORT"),
          ("proxy_admin_port", "proxy-admin-port", "A8_PROXY_ADMIN_PORT"),
          ("debug_port", "debug-port", "A8_DEBUG_PORT"))


def _check_ports(config, loaded):
    """The proxy's port, its admin port and the debug port (when on) must differ."""
    seen = {}
    for attribute, name, env in _PORTS:
        port = getattr(config, attribute)
        if not port:
            continue
        if port in seen:
            other_name, other_env = seen[port]
            raise ConfigError("{}: port {} is also {}{}".format(
                env, port, other_env, loaded.origins(name, other_name)))
        seen[port] = (name, env)


def _check_runtime_dir(path, loaded):
    """A8_RUNTIME_DIR must be a directory, or a path whose nearest existing part is one."""
    if not path:
        return
    where = loaded.origins("runtime-dir")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError("A8_RUNTIME_DIR: {} is not a directory{}".format(path, where))
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError("A8_RUNTIME_DIR: {} cannot be made: {} is not a directory{}"
                          .format(path, parent, where))
