# syntax=docker/dockerfile:1
# Both stages use the same pinned base (an exact Python patch release on an exact Debian
# release), so the virtualenv built in the first runs unchanged in the second.

# Build stage: install balancewatch and its dependencies into a virtualenv (bytecode compiled
# here, because the runtime's root filesystem is read-only).
FROM python:3.12.8-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY balancewatch ./balancewatch
COPY migrations ./migrations
RUN /opt/venv/bin/pip install --no-cache-dir .

# Runtime stage: the virtualenv only, run by an unprivileged user. The root filesystem can be
# mounted read-only (compose does): the only place the daemon writes is its spool, under
# /var/lib/balancewatch, a volume owned by that user.
FROM python:3.12.8-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 balancewatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/balancewatch --shell /usr/sbin/nologin balancewatch \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/balancewatch /var/lib/balancewatch/spool
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BALANCEWATCH_SPOOL_DIR=/var/lib/balancewatch/spool \
    BALANCEWATCH_HTTP_HOST=0.0.0.0
WORKDIR /var/lib/balancewatch
# A new named volume mounted here starts as a copy of this directory, owner included.
VOLUME ["/var/lib/balancewatch"]
# Numeric, so an orchestrator can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# /healthz, /readyz and /metrics (BALANCEWATCH_HTTP_PORT). On all of the container's interfaces
# (set above), so a Prometheus on the container network can scrape it; publish it with care.
EXPOSE 8080
# Healthy while /readyz says ready: the websocket connected, every enabled pair joined, the
# database answering. The slim image has no curl: the daemon's own `healthcheck` command asks.
# The start period leaves time to join a large watchlist.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["balancewatch", "healthcheck"]
# SIGTERM makes the daemon stop reading, flush what it received and exit 0 (within
# shutdown_timeout, 8 s by default): give it a stop grace period longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["balancewatch"]
CMD ["run"]
