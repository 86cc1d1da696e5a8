# syntax=docker/dockerfile:1
# syncd: build a wheel-installed venv, then copy it into a slim runtime as a non-root user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/syncd
COPY pyproject.toml README.md ./
COPY syncd ./syncd
COPY sql ./sql
RUN /opt/syncd/bin/pip install . \
 && /opt/syncd/bin/syncd --version

FROM python:3.11-slim AS runtime
RUN groupadd --system --gid 10001 syncd \
 && useradd --system --uid 10001 --gid syncd --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin syncd
COPY --from=build /opt/syncd /opt/syncd
ENV PATH=/opt/syncd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SYNCD_CONFIG=/etc/syncd/syncd.toml
USER 10001:10001
EXPOSE 9108
STOPSIGNAL SIGTERM
# `syncd health` asks the daemon's /healthz (health.listen), else judges from task_health:
# exit 0 ok/degraded, 1 unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["syncd", "health"]
ENTRYPOINT ["syncd"]
CMD ["run"]
