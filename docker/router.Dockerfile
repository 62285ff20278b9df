# The in-cluster router (`modelfleet k8s router install --image ...` runs it as a Deployment of
# 2 pods): the same router as the local cluster's, discovering services and pods through the
# Kubernetes API with the kubernetes client. Build from the repository's root:
#   docker build -f docker/router.Dockerfile -t modelfleet-router:dev .
ARG PYTHON=3.11
FROM python:${PYTHON}-slim
LABEL org.opencontainers.image.source="https://github.com/modelfleet/modelfleet" \
      org.opencontainers.image.title="modelfleet router"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /build/
COPY src /build/src
RUN pip install --no-cache-dir "/build[kubernetes]" \
 && python -I -c "import modelfleet.control.k8s_router, kubernetes" \
 && rm -rf /build
USER 10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "modelfleet", "router", "--kubernetes"]
