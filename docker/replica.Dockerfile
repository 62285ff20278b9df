# The replica runtime on its own: what a pod of a service whose environment asks for nothing
# (Environment("env")) runs, and the init container that fetches its models. An environment
# with packages gets its own image from `modelfleet env build-image NAME --registry R` (or
# `env image-context`), tagged with its hash; this one is for trying a cluster out by hand.
# Build from the repository's root:
#   docker build -f docker/replica.Dockerfile -t modelfleet-replica:dev .
ARG PYTHON=3.11
FROM python:${PYTHON}-slim
LABEL org.opencontainers.image.source="https://github.com/modelfleet/modelfleet" \
      org.opencontainers.image.title="modelfleet replica runtime"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /build/
COPY src /build/src
# The whole package: the replica imports only its runtime part, and the rest costs disk, not
# start-up time; one install keeps the package and the image from drifting apart.
RUN pip install --no-cache-dir /build \
 && python -I -c "import modelfleet.replica.server, modelfleet.targets.kubernetes.fetch" \
 && rm -rf /build
WORKDIR /var/azureml-app
USER 10001
EXPOSE 5001
ENTRYPOINT ["python", "-m", "modelfleet.replica", "--host", "0.0.0.0", "--port", "5001"]
