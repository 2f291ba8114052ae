"""structlog set-up: JSON lines when stdout is not a terminal, a console renderer when it is.

The standard library's logging (aiohttp, asyncpg, alembic) goes through the same processors, so
every line has the same shape. A last processor scrubs every known secret from every value:
the Datastream key is the URL path, so it could otherwise reach a log through any error text.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "***"


class SecretScrubber:
    """Replaces each registered secret with *** in every string of the event dict."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def register(self, secrets: Iterable[str]) -> None:
        merged = set(self._secrets) | {secret for secret in secrets if secret}
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        if self._secrets:
            for key, value in event_dict.items():
                event_dict[key] = self._scrub_value(value)
        return event_dict

    def rendered(self, _: WrappedLogger, __: str, line: str | bytes) -> str | bytes:
        # A last pass over the rendered line catches what the renderer added itself, such as
        # a console traceback.
        return self.scrub(line) if isinstance(line, str) else line

    def _scrub_value(self, value: object) -> object:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, MutableMapping):
            return {key: self._scrub_value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub_value(item) for item in value]
        return value


scrubber = SecretScrubber()


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog and the stdlib root logger. Safe to call again (tests, the CLI)."""
    out = stream or sys.stdout
    scrubber.register(secrets)
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(),
            # Not rich's traceback, even where rich is installed: it wraps long lines, and a
            # secret cut in two by a line break would slip past the scrub of the rendered line.
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exceptions: list[Processor] = [structlog.processors.format_exc_info] if use_json else []
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                scrubber,
                renderer,
                scrubber.rendered,  # type: ignore[list-item]
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log and asyncpg's notices are noise at info level for a daemon.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def describe_error(exc: BaseException) -> str:
    """`Type: message` for a log line, with the driver's own error under SQLAlchemy's wrapper
    and every secret scrubbed (some libraries put the URL, and so the key, in the message)."""
    inner = getattr(exc, "orig", None)
    if isinstance(inner, BaseException):
        exc = inner
    return scrubber.scrub(f"{type(exc).__name__}: {exc}")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
