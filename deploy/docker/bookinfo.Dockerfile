# The bookinfo sample (examples/bookinfo): one image, the service picked with --service.
# Build from the repository root: docker build -f deploy/docker/bookinfo.Dockerfile -t amalgam8/bookinfo .
FROM python:3.11-slim
RUN pip install --no-cache-dir twisted klein treq
COPY examples/bookinfo/bookinfo.py /app/bookinfo.py
USER 65534
EXPOSE 9080
ENTRYPOINT ["python", "/app/bookinfo.py", "--host", "0.0.0.0", "--port", "9080"]
