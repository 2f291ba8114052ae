"""The failures a command expects and reports as one line, without a traceback.

Kept apart from the modules that raise them so that the CLI can name them without importing
the daemon, the database layer or pydantic.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it and hides its value."""


class StartupError(RuntimeError):
    """The daemon cannot start for a reason the operator must fix (a schema not migrated, a
    spool directory in use, a port taken): logged under `event`, exit code 1."""

    event: ClassVar[str] = "daemon.cannot_start"
