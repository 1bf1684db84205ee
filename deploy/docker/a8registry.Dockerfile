# The amalgam8 registry (docs/registry.md), with its catalog adapters (docs/adapters.md).
# Build from the repository root: docker build -f deploy/docker/a8registry.Dockerfile -t amalgam8/a8registry .
FROM python:3.11-slim
WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir . && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
USER 65534
EXPOSE 8080
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logger", "amalgam8.logs.json_observer", "a8registry"]
CMD ["--listen", "tcp:8080"]
