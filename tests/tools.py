"""External tools the tests run (promtool, prometheus): found on PATH, or the test skips
with one line saying how to install it; under CI=true it fails instead, so that CI can never
pass without running it."""

from __future__ import annotations

import os
import shutil

import pytest


def tool(name: str, package: str) -> str:
    """The path of `name`, or skip (fail under CI=true) saying how to install it."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} not found: install it with `apt-get install -y {package}` (Debian)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
