# The amalgam8 sidecar (docs/sidecar.md) with the proxy it supervises: Debian's nginx with
# its Lua module, lua-resty-core, lua-cjson and the PCRE ngx.re runs.
# Build from the repository root: docker build -f deploy/docker/a8sidecar.Dockerfile -t amalgam8/a8sidecar .
FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        nginx-core libnginx-mod-http-lua lua-resty-core lua-cjson libpcre3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . /src
RUN python3 -m venv /opt/a8 && /opt/a8/bin/pip install --no-cache-dir . \
 && /opt/a8/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
ENV PATH=/opt/a8/bin:$PATH A8_NGINX=/usr/sbin/nginx A8_RUNTIME_DIR=/tmp/a8
EXPOSE 6379
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logger", "amalgam8.logs.json_observer", "a8sidecar"]
