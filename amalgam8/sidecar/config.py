# -*- test-case-name: tests.test_sidecar_config -*-
"""
The sidecar's configuration (SPEC A5, Part C): command-line flags beat C{A8_*} environment
variables, which beat the YAML file named by C{A8_CONFIG} (or C{--config}), which beats the
defaults. Every bad value stops the start with one line naming it.
"""

import os
import shlex
import socket
from urllib.parse import urlsplit

import attrs
import yaml

from amalgam8.durations import parse_duration

__all__ = ["ConfigError", "SidecarConfig", "HealthCheck", "Command", "load", "parse_service"]


class ConfigError(ValueError):
    """A bad setting; the message names it."""


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


_KEYS = {
    # name: (environment variable, parser)
    "service": "A8_SERVICE",
    "endpoint_host": "A8_ENDPOINT_HOST",
    "endpoint_port": "A8_ENDPOINT_PORT",
    "endpoint_type": "A8_ENDPOINT_TYPE",
    "register": "A8_REGISTER",
    "proxy": "A8_PROXY",
    "registry_url": "A8_REGISTRY_URL",
    "registry_token": "A8_REGISTRY_TOKEN",
    "registry_poll": "A8_REGISTRY_POLL",
    "controller_url": "A8_CONTROLLER_URL",
    "controller_token": "A8_CONTROLLER_TOKEN",
    "controller_poll": "A8_CONTROLLER_POLL",
    "healthchecks": "A8_HEALTHCHECKS",
    "log_level": "A8_LOG_LEVEL",
    "proxy_port": "A8_PROXY_PORT",
    "proxy_admin_port": "A8_PROXY_ADMIN_PORT",
    "debug_port": "A8_DEBUG_PORT",
    "stop_timeout": "A8_STOP_TIMEOUT",
    "proxy_workers": "A8_PROXY_WORKERS",
    "runtime_dir": "A8_RUNTIME_DIR",
    "nginx": "A8_NGINX",
}
ENDPOINT_TYPES = ("tcp", "udp", "http", "https", "user")
LEVELS = ("debug", "info", "warn", "warning", "error")


def parse_service(text, where="A8_SERVICE"):
    """C{name[:tag1,tag2]} -> C{(name, tags)}."""
    name, _, tags = text.strip().partition(":")
    name = name.strip()
    if not name or "/" in name or len(name.encode()) > 64 or any(c.isspace() for c in name):
        raise ConfigError("{}: {!r} is not a service name".format(where, text))
    tag_list = tuple(t.strip() for t in tags.split(",") if t.strip()) if tags else ()
    return name, tag_list


def _bool(value, where):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError("{}: expected true or false, not {!r}".format(where, value))


def _port(value, where, allow_zero=False):
    try:
        port = int(str(value).strip())
    except ValueError:
        raise ConfigError("{}: expected a port number, not {!r}".format(where, value))
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError("{}: port {} is out of range 1-65535".format(where, port))
    return port


def _duration(value, where):
    try:
        seconds = parse_duration(value if not isinstance(value, str) else value.strip())
    except ValueError:
        raise ConfigError("{}: expected a duration such as 15s, not {!r}".format(where, value))
    return seconds


def _url(value, where):
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("{}: {!r} is not an http(s) URL".format(where, value))
    try:
        parts.port
    except ValueError:
        raise ConfigError("{}: {!r} has a bad port".format(where, value))
    return text.rstrip("/")


def parse_healthcheck(item, where):
    """A health check from YAML (a dict) or from A8_HEALTHCHECKS (a URL-like string)."""
    if isinstance(item, str):
        text = item.strip()
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise ConfigError("{}: {!r} is not a health check (http://, https://, tcp:// or "
                              "file://)".format(where, item))
        item = {"type": scheme.lower(), "value": text if scheme in ("http", "https") else rest}
    if not isinstance(item, dict):
        raise ConfigError("{}: a health check must be a mapping".format(where))
    unknown = set(item) - {"type", "value", "interval", "timeout", "method", "code", "args"}
    if unknown:
        raise ConfigError("{}: unknown health check key {}".format(where, sorted(unknown)[0]))
    kind = str(item.get("type", "")).lower()
    value = item.get("value")
    if kind not in ("http", "https", "tcp", "file"):
        raise ConfigError("{}: health check type must be http, https, tcp or file, not {!r}"
                          .format(where, item.get("type")))
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("{}: health check needs a value".format(where))
    if kind in ("http", "https"):
        _url(value, where)
    elif kind == "tcp":
        host, _, port = value.rpartition(":")
        if not host:
            raise ConfigError("{}: tcp health check needs host:port, not {!r}".format(
                where, value))
        _port(port, where)
    args = item.get("args", ())
    if isinstance(args, str):
        args = tuple(shlex.split(args))
    elif isinstance(args, (list, tuple)) and all(isinstance(a, str) for a in args):
        args = tuple(args)
    else:
        raise ConfigError("{}: health check args must be a list of strings".format(where))
    code = item.get("code", 200)
    if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
        raise ConfigError("{}: health check code must be an HTTP status".format(where))
    method = str(item.get("method", "GET")).upper()
    if not method.isalpha():
        raise ConfigError("{}: bad health check method {!r}".format(where, method))
    interval = _duration(item.get("interval", 30), where + " interval")
    timeout = _duration(item.get("timeout", 5), where + " timeout")
    if interval <= 0 or timeout <= 0:
        raise ConfigError("{}: health check interval and timeout must be above 0".format(where))
    return HealthCheck(kind, value.strip(), interval, timeout, method, code, args)


def parse_command(item, where):
    if not isinstance(item, dict):
        raise ConfigError("{}: a command must be a mapping with cmd".format(where))
    unknown = set(item) - {"cmd", "env", "on_exit", "kill_group"}
    if unknown:
        raise ConfigError("{}: unknown command key {}".format(where, sorted(unknown)[0]))
    cmd = item.get("cmd")
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
        raise ConfigError("{}: cmd must be a command line or a list of strings".format(where))
    env = item.get("env", [])
    if isinstance(env, dict):
        env = ["{}={}".format(k, v) for k, v in env.items()]
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        raise ConfigError("{}: env must be a list of NAME=value".format(where))
    on_exit = str(item.get("on_exit", "ignore")).lower()
    if on_exit not in ("ignore", "terminate"):
        raise ConfigError("{}: on_exit must be ignore or terminate, not {!r}".format(
            where, item.get("on_exit")))
    return Command(tuple(cmd), tuple(env), on_exit, _bool(item.get("kill_group", False),
                                                          where + " kill_group"))


def _flatten_yaml(data, path):
    """The YAML file's shape (0.4's) -> flat keys."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("{}: the configuration must be a mapping".format(path))
    flat = {}
    nested = {"service": ("name", "tags"), "endpoint": ("host", "port", "type"),
              "registry": ("url", "token", "poll"), "controller": ("url", "token", "poll"),
              "proxy_config": ("port", "admin_port", "workers")}
    for key, value in data.items():
        if key == "service" and isinstance(value, dict):
            unknown = set(value) - {"name", "tags"}
            if unknown:
                raise ConfigError("{}: unknown key service.{}".format(path, sorted(unknown)[0]))
            tags = value.get("tags") or []
            if not isinstance(tags, list):
                raise ConfigError("{}: service.tags must be a list".format(path))
            flat["service"] = "{}:{}".format(value.get("name", ""), ",".join(map(str, tags)))
        elif key in ("endpoint", "registry", "controller") and isinstance(value, dict):
            allowed = nested[key]
            for sub, subvalue in value.items():
                if sub not in allowed:
                    raise ConfigError("{}: unknown key {}.{}".format(path, key, sub))
                flat["{}_{}".format(key, sub)] = subvalue
        elif key in ("healthchecks", "commands", "register", "proxy", "log_level", "service",
                     "proxy_port", "proxy_admin_port", "debug_port", "stop_timeout",
                     "proxy_workers", "runtime_dir", "nginx", "endpoint_host",
                     "endpoint_port", "endpoint_type"):
            flat[key] = value
        else:
            raise ConfigError("{}: unknown key {}".format(path, key))
    return flat


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
    Merge the sources and validate.

    @param flags: a dict of settings given on the command line (flat keys; None = unset).
    @param environ: the environment (default C{os.environ}).
    @param app: the trailing argv of an app to supervise (C{on_exit: terminate}).
    @raise ConfigError: naming the first bad setting.
    """
    environ = os.environ if environ is None else environ
    merged = {}
    sources = {}
    path = flags.get("config") or environ.get("A8_CONFIG")
    if path:
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError("A8_CONFIG: cannot read {}: {}".format(path, e.strerror))
        except yaml.YAMLError as e:
            raise ConfigError("A8_CONFIG: {} is not valid YAML ({})".format(
                path, str(e).splitlines()[0]))
        for key, value in _flatten_yaml(data, path).items():
            merged[key] = value
            sources[key] = "{} {}".format(path, key)
    for key, env in _KEYS.items():
        if env in environ:
            merged[key] = environ[env]
            sources[key] = env
    for key, value in flags.items():
        if key != "config" and value is not None:
            merged[key] = value
            sources[key] = "--" + key.replace("_", "-")

    def where(key):
        return sources.get(key, key)

    values = {}
    if "service" in merged:
        values["service_name"], values["service_tags"] = parse_service(
            str(merged["service"]), where("service"))
    for key in ("register", "proxy"):
        if key in merged:
            values[key] = _bool(merged[key], where(key))
    for key in ("endpoint_port",):
        if key in merged:
            values[key] = _port(merged[key], where(key))
    for key in ("proxy_port", "proxy_admin_port", "debug_port"):
        if key in merged:
            # Only the debug API can be off (0): nginx refuses to listen on port 0.
            values[key] = _port(merged[key], where(key), allow_zero=key == "debug_port")
    for key in ("registry_poll", "controller_poll", "stop_timeout"):
        if key in merged:
            values[key] = _duration(merged[key], where(key))
            if values[key] <= 0:
                raise ConfigError("{}: must be above 0".format(where(key)))
    for key in ("registry_url", "controller_url"):
        if key in merged and str(merged[key]).strip():
            values[key] = _url(merged[key], where(key))
    for key in ("registry_token", "controller_token", "endpoint_host", "runtime_dir", "nginx"):
        if key in merged and merged[key] is not None:
            values[key] = str(merged[key]).strip()
    if "endpoint_type" in merged:
        kind = str(merged["endpoint_type"]).strip().lower()
        if kind not in ENDPOINT_TYPES:
            raise ConfigError("{}: endpoint type must be one of {}".format(
                where("endpoint_type"), ", ".join(ENDPOINT_TYPES)))
        values["endpoint_type"] = kind
    if "log_level" in merged:
        level = str(merged["log_level"]).strip().lower()
        if level not in LEVELS:
            raise ConfigError("{}: log level must be debug, info, warn or error".format(
                where("log_level")))
        values["log_level"] = level
    if "proxy_workers" in merged:
        try:
            workers = int(str(merged["proxy_workers"]))
        except ValueError:
            workers = 0
        if not 1 <= workers <= 64:
            raise ConfigError("{}: proxy workers must be 1-64".format(where("proxy_workers")))
        values["proxy_workers"] = workers
    if "healthchecks" in merged:
        checks = merged["healthchecks"]
        if isinstance(checks, str):
            checks = [c for c in checks.split(",") if c.strip()]
        if not isinstance(checks, list):
            raise ConfigError("{}: must be a list of health checks".format(where("healthchecks")))
        values["healthchecks"] = tuple(parse_healthcheck(c, where("healthchecks"))
                                       for c in checks)
    commands = []
    if "commands" in merged:
        items = merged["commands"]
        if not isinstance(items, list):
            raise ConfigError("{}: must be a list of commands".format(where("commands")))
        commands = [parse_command(c, where("commands")) for c in items]
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
    if config.register and not config.endpoint_host:
        config = attrs.evolve(config, endpoint_host=default_host())
    return config
