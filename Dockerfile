# syntax=docker/dockerfile:1
# Build stage: install balancewatch and its dependencies into a virtualenv.
FROM python:3.12.8-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY balancewatch ./balancewatch
COPY migrations ./migrations
RUN /opt/venv/bin/pip install .

# Runtime stage: the virtualenv only, run by an unprivileged user.
FROM python:3.12.8-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin balancewatch
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER balancewatch
# SIGTERM makes the daemon stop reading, flush what it received and exit 0 (within
# shutdown_timeout, 8 s by default): give it a stop grace period longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["balancewatch"]
CMD ["run"]
