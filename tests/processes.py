"""balancewatch as a user runs it: `python -m balancewatch ...` in a real subprocess.

One way to build its environment (`environment`), one way to run a command to completion
(`balancewatch`, or `python` for other arguments to the interpreter), and one way to start a
long-running command (`run`, `demo`) and stop it with a signal within a deadline (`started`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from tests.helpers import scratch_dir

DEADLINE = 15.0  # for a started process: to reach a state, or to exit once told to


def environment(url: URL | None, **settings: str) -> dict[str, str]:
    """Our environment without any setting of ours (BALANCEWATCH_*) or TLS trust (SSL_CERT_*);
    JSON logs, a fresh spool directory, a free HTTP port (never depend on 8080 being free);
    then `url` as the database, and each of `settings` as BALANCEWATCH_<NAME>."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BALANCEWATCH_", "SSL_CERT_"))
    }
    env["BALANCEWATCH_LOG_FORMAT"] = "json"
    env["BALANCEWATCH_SPOOL_DIR"] = str(scratch_dir("spool"))
    env["BALANCEWATCH_HTTP_PORT"] = "0"
    if url is not None:
        env["BALANCEWATCH_DATABASE_URL"] = url.render_as_string(hide_password=False)
    env.update({f"BALANCEWATCH_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


async def python(
    *args: str, env: dict[str, str], timeout: float = 30, cwd: Path | None = None
) -> Finished:
    """Run this interpreter with `args` to completion; killed if it outlives `timeout`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


async def balancewatch(
    *args: str, env: dict[str, str], timeout: float = 30, cwd: Path | None = None
) -> Finished:
    """`python -m balancewatch ARGS` to completion."""
    return await python("-m", "balancewatch", *args, env=env, timeout=timeout, cwd=cwd)


def json_lines(text: str) -> list[dict[str, Any]]:
    """The lines of `text` that are JSON objects (log lines), in order."""
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


@dataclass
class DaemonProcess:
    """A started `python -m balancewatch ...`; its stdout and stderr go to one file."""

    process: asyncio.subprocess.Process
    output: Path  # stdout and stderr, interleaved
    deadline: float = DEADLINE

    def text(self) -> str:
        return self.output.read_text()

    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.text())

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def peak_rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )

    async def wait_for(
        self, predicate: Callable[[], object], what: str, timeout: float | None = None
    ) -> None:
        """Until `predicate()` is true; fails, with the output so far, if the process exits
        first or `timeout` (the deadline by default) passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.deadline if timeout is None else timeout)
        while not predicate():
            assert self.process.returncode is None, f"exited before {what}:\n{self.text()}"
            assert loop.time() < deadline, f"no {what}:\n{self.text()}"
            await asyncio.sleep(0.05)

    async def exit_code(self, timeout: float | None = None) -> int:
        """Its exit code, once it exits by itself (within `timeout`, the deadline by default)."""
        return await asyncio.wait_for(
            self.process.wait(), self.deadline if timeout is None else timeout
        )

    async def stop(self, signum: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Send `signum` and return the exit code, which must come within `timeout`."""
        self.process.send_signal(signum)
        return await self.exit_code(timeout)


@contextlib.asynccontextmanager
async def started(
    env: dict[str, str], *args: str, cwd: Path | None = None, deadline: float = DEADLINE
) -> AsyncIterator[DaemonProcess]:
    """`python -m balancewatch ARGS` (`run` by default) started in the background, in a
    scratch directory of its own unless `cwd` is given; killed on the way out if it still
    runs."""
    directory = scratch_dir("daemon")
    output = directory / "output.log"
    with output.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "balancewatch", *(args or ("run",))),
            env=env,
            cwd=cwd or directory,
            stdout=sink,
            stderr=sink,
        )
    try:
        yield DaemonProcess(process, output, deadline)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# The `start_daemon` fixture (tests/system/conftest.py): started(env, *args), stopped at teardown.
StartDaemon = Callable[..., Awaitable[DaemonProcess]]
