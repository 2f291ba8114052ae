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
    BALANCEWATCH_SPOOL_DIR=/var/lib/balancewatch/spool
WORKDIR /var/lib/balancewatch
# A new named volume mounted here starts as a copy of this directory, owner included.
VOLUME ["/var/lib/balancewatch"]
# Numeric, so an orchestrator can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# SIGTERM makes the daemon stop reading, flush what it received and exit 0 (within
# shutdown_timeout, 8 s by default): give it a stop grace period longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["balancewatch"]
CMD ["run"]
