# -*- test-case-name: tests.test_proxy -*-
"""
The proxy's configuration: a complete nginx.conf for the nginx + Lua data plane in
C{lua/amalgam8}, written into a runtime directory, and where to find nginx, its Lua module
and the Lua code on this machine.

Start it with C{nginx -p RUNTIME -c nginx.conf}. Every path nginx writes (pid, logs, temp
files) is inside the runtime directory, so several proxies run side by side.
"""

import json
import os
import shutil
import subprocess

import attrs

from amalgam8.schemas import DATAPLANE_DEFAULTS

__all__ = ["ProxyConfig", "dataplane_defaults", "find_nginx", "lua_root", "render", "write"]

_MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules",
                "/usr/local/lib/nginx/modules")
_MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
_LUA_PATHS = ("/usr/share/lua/5.1/?.lua", "/usr/local/share/lua/5.1/?.lua")
_LUA_CPATHS = ("/usr/lib/x86_64-linux-gnu/lua/5.1/?.so", "/usr/lib/aarch64-linux-gnu/lua/5.1/?.so",
               "/usr/local/lib/lua/5.1/?.so")


class ProxyUnavailable(Exception):
    """nginx or its Lua module is not installed."""


def find_nginx(binary=None):
    """
    Find the nginx binary and the modules it must load.

    @return: C{(path, [absolute module paths])}; no modules for OpenResty, whose nginx has
        Lua built in.
    @raise ProxyUnavailable: naming what is missing.
    """
    candidates = [binary] if binary else ["openresty", "nginx", "/usr/sbin/nginx"]
    path = None
    for candidate in candidates:
        path = shutil.which(candidate) or (candidate if os.path.isfile(candidate) else None)
        if path:
            break
    if not path:
        raise ProxyUnavailable("nginx is not installed (Debian: apt-get install nginx-core "
                               "libnginx-mod-http-lua lua-resty-core lua-cjson)")
    if "openresty" in os.path.basename(path):
        return path, []
    try:
        version = subprocess.run([path, "-V"], capture_output=True, text=True,
                                 timeout=10).stderr
    except (OSError, subprocess.SubprocessError) as e:
        raise ProxyUnavailable("cannot run {}: {}".format(path, e))
    if "openresty" in version.lower() or "--add-module=../ngx_lua" in version:
        return path, []
    directories = list(_MODULE_DIRS)
    for part in version.split():
        if part.startswith("--modules-path="):
            directories.insert(0, part.split("=", 1)[1])
    for directory in directories:
        modules = [os.path.join(directory, name) for name in _MODULES]
        if all(os.path.exists(m) for m in modules):
            return path, modules
    raise ProxyUnavailable("nginx's Lua module is not installed (Debian: apt-get install "
                           "libnginx-mod-http-lua)")


def lua_root():
    """The directory holding C{amalgam8/*.lua}: C{A8_LUA_PATH}, else the source tree's."""
    given = os.environ.get("A8_LUA_PATH")
    if given:
        return os.path.abspath(given)
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "lua"))


def dataplane_defaults():
    """
    The data plane's defaults (C{lb}, C{retries_max}, C{connect_timeout}, ...): their one
    home is C{amalgam8/schemas/dataplane.json}, which the renderer writes into the proxy's
    configuration.
    """
    return dict(DATAPLANE_DEFAULTS)


def _lua_value(value):
    """A Lua literal for a JSON scalar (a string, a number or a boolean)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _lua_string(str(value))


def _lua_table(mapping):
    """A Lua table constructor for a flat mapping of names to JSON scalars."""
    return "{" + ", ".join("{} = {}".format(key, _lua_value(value))
                           for key, value in sorted(mapping.items())) + "}"


def _nginx_time(seconds):
    """An nginx time for a number of seconds (C{5s}, C{250ms})."""
    if float(seconds).is_integer():
        return "{}s".format(int(seconds))
    return "{}ms".format(int(round(seconds * 1000)))


def _lua_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _nginx_string(text):
    """A double-quoted nginx string holding C{text} (nginx cannot escape C{$} in a string
    that takes variables, so a C{$} is written as C{%24})."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "%24")
    return '"' + escaped + '"'


def _listen(address, port):
    if ":" in address and not address.startswith("["):
        address = "[{}]".format(address)
    return "{}:{}".format(address, port)


@attrs.frozen
class ProxyConfig:
    """
    @ivar runtime_dir: where nginx.conf, the pid, logs and temp files go.
    @ivar service_name: this sidecar's service (the source of its requests), or "".
    @ivar service_tags: and its tags.
    @ivar log_buffer: the access log's write buffer (nginx size, e.g. C{"64k"}), flushed at
        least every C{log_flush} seconds; L{None} writes every record at once (tests).
    @ivar consecutive_errors: outlier ejection's default: how many 5xx answers or
        connection failures in a row take an instance out; L{None}: dataplane.json's.
    @ivar ejection_time: for how many seconds (default); L{None}: dataplane.json's.
    """

    runtime_dir: str
    port: int = 6379
    address: str = "0.0.0.0"
    admin_port: int = 5813
    workers: int = 1
    service_name: str = ""
    service_tags: tuple = ()
    access_log: str = None
    log_buffer: str = "64k"
    log_flush: float = 1.0
    error_level: str = "warn"
    keepalive: int = 256
    state_memory: str = "64m"
    consecutive_errors: int = None
    ejection_time: float = None

    @property
    def access_log_path(self):
        return self.access_log or os.path.join(self.runtime_dir, "access.log")

    @property
    def conf_path(self):
        return os.path.join(self.runtime_dir, "nginx.conf")

    @property
    def pid_path(self):
        return os.path.join(self.runtime_dir, "nginx.pid")

    @property
    def error_log_path(self):
        return os.path.join(self.runtime_dir, "error.log")


def render(config, modules, lua_dir=None):
    """
    The text of nginx.conf for C{config}.

    @param modules: absolute paths of the dynamic modules to load (none for OpenResty).
    """
    lua_dir = lua_dir or lua_root()
    rt = config.runtime_dir
    defaults = dataplane_defaults()
    # The sidecar's own settings override these two.
    if config.consecutive_errors is not None:
        defaults["consecutive_errors"] = int(config.consecutive_errors)
    if config.ejection_time is not None:
        defaults["ejection_time"] = float(config.ejection_time)
    tags = ", ".join(_lua_string(t) for t in config.service_tags)
    package_path = ";".join([os.path.join(lua_dir, "?.lua")] + list(_LUA_PATHS)) + ";;"
    package_cpath = ";".join(_LUA_CPATHS) + ";;"
    lines = ["load_module {};".format(m) for m in modules]
    lines.append("""
daemon off;
master_process on;
worker_processes {workers};
pid {pid};
error_log {error_log} {error_level};

events {{
    worker_connections 16384;
}}

http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {rt}/tmp/body;
    proxy_temp_path {rt}/tmp/proxy;
    fastcgi_temp_path {rt}/tmp/fastcgi;
    uwsgi_temp_path {rt}/tmp/uwsgi;
    scgi_temp_path {rt}/tmp/scgi;

    lua_package_path {package_path};
    lua_package_cpath {package_cpath};
    lua_shared_dict a8_state {state_memory};
    lua_shared_dict a8_health 16m;
    # Header conditions are matched with compiled regexes cached per worker: room for many.
    lua_regex_cache_max_entries 8192;
    log_format a8 escape=none '$a8_log';
    # The common record (no actions, retries or trace) is written by nginx itself.
    log_format a8_plain escape=json '{{"status":$status,"timestamp_in_ms":$a8_msec,'
        '"request_time":$request_time,"upstream_response_time":"$upstream_response_time",'
        '"src":"$a8_src","dst":"$a8_dst","upstream_addr":"$upstream_addr",'
        '"upstream_status":"$upstream_status","method":"$request_method","path":"$uri",'
        '"request_id":"$a8_request_id","actions":"","retries":0}}';
    map $msec $a8_msec {{
        "~^(?<a8_s>[0-9]+)[.](?<a8_ms>[0-9]+)$" "$a8_s$a8_ms";
        default 0;
    }}
    map "" $a8_src {{
        default {src_label};
    }}

    init_by_lua_block {{
        require "resty.core"
        require("amalgam8.config").set({{
            source_name = {name},
            source_tags = {{{tags}}},
            defaults = {defaults},
        }})
        require "amalgam8.compile"
        require "amalgam8.state"
        require "amalgam8.router"
        require "amalgam8.balancer"
        require "amalgam8.log"
        require "amalgam8.admin"
    }}
    init_worker_by_lua_block {{
        math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
        require("amalgam8.state").init_worker()
    }}

    upstream a8_upstream {{
        server 0.0.0.1;
        balancer_by_lua_block {{
            require("amalgam8.balancer").balance()
        }}
        keepalive {keepalive};
        keepalive_requests 100000;
        keepalive_timeout 60s;
    }}

    server {{
        listen {proxy_listen} backlog=4096;
        # Every request header goes upstream, those with underscores too.
        underscores_in_headers on;
        # An abort with a negative code closes with 444: send a reset, not a FIN.
        reset_timedout_connection on;
        set $a8_log "";
        set $a8_dst "";
        set $a8_dst_name "";
        set $a8_path "/";
        set $a8_request_id "";
        set $a8_plain "";
        set $a8_cookie "";
        access_log {access_log} a8{log_buffer} if=$a8_log;
        access_log {access_log} a8_plain{log_buffer} if=$a8_plain;
        # At server level, so that requests nginx rejects before any location (a malformed
        # request line, say) are logged too.
        log_by_lua_block {{
            require("amalgam8.log").log()
        }}

        location / {{
            rewrite_by_lua_block {{
                require("amalgam8.router").route()
            }}
            # The sticky version cookie the router chose (an empty value adds nothing).
            add_header Set-Cookie $a8_cookie always;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Request-ID $a8_request_id;
            proxy_next_upstream error timeout;
            # The first attempt and at most retries_max retries.
            proxy_next_upstream_tries {next_upstream_tries};
            proxy_connect_timeout {connect_timeout};
            proxy_pass http://a8_upstream$a8_path$is_args$args;
        }}
    }}

    server {{
        listen {admin_listen};
        client_max_body_size 64m;
        client_body_buffer_size 16m;
        location = /a8-admin {{
            content_by_lua_block {{
                require("amalgam8.admin").handle()
            }}
        }}
        location / {{
            return 404;
        }}
    }}
}}
""".format(
        workers=config.workers,
        pid=config.pid_path,
        error_log=config.error_log_path,
        error_level=config.error_level,
        rt=rt,
        package_path=_lua_string(package_path),
        package_cpath=_lua_string(package_cpath),
        state_memory=config.state_memory,
        name=_lua_string(config.service_name),
        tags=tags,
        defaults=_lua_table(defaults),
        next_upstream_tries=int(defaults["retries_max"]) + 1,
        connect_timeout=_nginx_time(defaults["connect_timeout"]),
        keepalive=config.keepalive,
        proxy_listen=_listen(config.address, config.port),
        access_log=config.access_log_path,
        src_label=_nginx_string(
            "{}:{}".format(config.service_name, ",".join(config.service_tags))
            if config.service_name else ""),
        log_buffer=(" buffer={} flush={}ms".format(config.log_buffer,
                                                    int(config.log_flush * 1000))
                    if config.log_buffer else ""),
        admin_listen=_listen("127.0.0.1", config.admin_port),
    ))
    return "\n".join(lines)


def write(config, modules, lua_dir=None):
    """Create the runtime directory and write nginx.conf; return its path."""
    for sub in ("", "tmp", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        os.makedirs(os.path.join(config.runtime_dir, sub), exist_ok=True)
    text = render(config, modules, lua_dir)
    temporary = config.conf_path + ".new"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, config.conf_path)
    return config.conf_path


def command(config, binary):
    """
    The argv that starts this proxy in the foreground. C{-e} keeps even the messages nginx
    writes before it has read nginx.conf in the runtime directory.
    """
    return [binary, "-p", config.runtime_dir, "-e", config.error_log_path,
            "-c", config.conf_path]


class AdminClient:
    """
    Pushes the state to the proxy's admin endpoint.

    @param http: a treq-like client.
    @param port: the admin port on 127.0.0.1.
    """

    def __init__(self, http, port, reactor=None, timeout=10.0):
        self._http = http
        self.url = "http://127.0.0.1:{}/a8-admin".format(port)
        self._reactor = reactor
        self._timeout = timeout

    async def push(self, state):
        """
        POST the state; fails with L{AdminRefused} unless the proxy took it.

        @return: the proxy's answer C{{"version": N, "rejected": [{"id", "error"}]}}: the
            rules (and instances) it skipped because it could not use them.
        """
        response = await self._http.post(
            self.url, data=json.dumps(state).encode("utf-8"),
            headers={b"Content-Type": [b"application/json"]},
            timeout=self._timeout, reactor=self._reactor)
        body = await response.content()
        if response.code != 200:
            raise AdminRefused("proxy refused the state ({}): {}".format(
                response.code, body[:300].decode("utf-8", "replace")))
        return json.loads(body)

    async def loaded(self):
        """What the proxy holds (GET)."""
        response = await self._http.get(self.url, timeout=self._timeout,
                                        reactor=self._reactor)
        return json.loads(await response.content())


class AdminRefused(Exception):
    """The proxy did not take the state."""
