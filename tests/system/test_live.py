"""What a person at a terminal sees: `status --watch` redrawn in place until Ctrl-C, and a bar
for a long `watch import`; and what a file or a pipe gets instead: screens one after another,
log lines. Each command runs for real, on a pseudo-terminal when a terminal is the point."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from balancewatch.devtools.localpg import LocalPostgres
from tests.data import seed
from tests.helpers import SOL
from tests.processes import DEADLINE, environment, started

_SCREEN_TIME = re.compile(r"balancewatch status at (\S+ \S+) UTC")
_CURSOR_UP = "\x1b[1A"
_CURSOR_SHOWN = "\x1b[?25h"


@dataclass
class OnTerminal:
    """`python -m balancewatch ARGS` with a pseudo-terminal of 160x50 as its stdin, stdout
    and stderr, as from a person's shell; `screen` is all it wrote there so far."""

    process: asyncio.subprocess.Process
    master: int
    written: bytearray = field(default_factory=bytearray)

    @property
    def screen(self) -> str:
        return self.written.decode(errors="replace")

    def _read(self, until: Callable[[str], bool], deadline: float) -> None:
        while not until(self.screen) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every end of the terminal is closed, the process is gone
                return
            if not chunk:
                return
            self.written += chunk

    async def read_until(self, until: Callable[[str], bool], what: str) -> None:
        await asyncio.to_thread(self._read, until, time.monotonic() + DEADLINE)
        assert until(self.screen), f"no {what} on the terminal:\n{self.screen}"

    async def exit_code(self) -> int:
        code = await asyncio.wait_for(self.process.wait(), DEADLINE)
        await asyncio.to_thread(self._read, lambda _: False, time.monotonic() + 1.0)
        return code


@contextlib.asynccontextmanager
async def on_a_terminal(env: dict[str, str], *args: str) -> AsyncIterator[OnTerminal]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {name: value for name, value in env.items() if name not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    try:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "balancewatch", *args),
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
    finally:
        os.close(slave)  # the child's copy stays; ours would keep EIO from ever coming
    try:
        yield OnTerminal(process, master)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(master)


def screen_times(text: str) -> list[str]:
    return _SCREEN_TIME.findall(text)


async def test_status_watch_redraws_the_screen_in_place_until_ctrl_c(
    database_url: URL, db: Any
) -> None:
    await seed(db)
    env = environment(database_url)
    async with on_a_terminal(env, "status", "--watch", "--http", "none") as terminal:
        # Two screens a second apart: the clock on the first line has moved on.
        await terminal.read_until(
            lambda text: len(set(screen_times(text))) >= 2, "second screen, a second later"
        )
        # Drawn over the one before (rich's Live moves the cursor up), not scrolled on.
        assert _CURSOR_UP in terminal.screen
        assert terminal.screen.count("pairs    4 enabled") >= 2
        terminal.process.send_signal(signal.SIGINT)
        assert await terminal.exit_code() == 0
    assert "Traceback" not in terminal.screen
    # The cursor, hidden while the screen was live, is given back after the last screen.
    assert terminal.screen.rfind(_CURSOR_SHOWN) > terminal.screen.rfind("pairs    4 enabled")


async def test_status_watch_into_a_file_prints_screens_on_through_a_database_outage(
    cluster: LocalPostgres, stoppable_url: URL
) -> None:
    env = environment(stoppable_url)
    async with started(env, "status", "--watch", "--http", "none") as watching:

        def screens() -> list[str]:
            return watching.text().split("balancewatch status at ")[1:]

        await watching.wait_for(lambda: len(screens()) >= 1, "first screen")
        assert "pairs    0 enabled" in screens()[0]
        await asyncio.to_thread(cluster.stop, "fast")
        seen = len(screens())
        await watching.wait_for(
            lambda: any("database NOT reachable" in text for text in screens()[seen:]),
            "screen saying the database is not reachable",
        )
        await asyncio.to_thread(cluster.start)
        down = len(screens())
        await watching.wait_for(
            lambda: any("pairs    0 enabled" in text for text in screens()[down:]),
            "screen from the database again",
        )
        assert await watching.stop(signal.SIGINT) == 0
    assert "\x1b[" not in watching.text()  # no terminal, so no cursor moves
    assert "Traceback" not in watching.text()


_BASE58_DIGITS = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def wallet_number(n: int) -> str:
    """A distinct address-shaped wallet (base58, 44 characters) for each `n`."""
    digits = ""
    while True:
        n, digit = divmod(n, 58)
        digits = _BASE58_DIGITS[digit] + digits
        if n == 0:
            return digits.rjust(44, "1")  # "1" is the digit 0: one spelling per number


def watchlist_file(path: Path, rows: int) -> Path:
    lines = ["wallet,token,enabled,label"]
    lines += [f"{wallet_number(n)},{SOL},true,w{n}" for n in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_watch_import_draws_a_bar_on_a_terminal(
    database_url: URL, db: Any, tmp_path: Path
) -> None:
    source = watchlist_file(tmp_path / "big.csv", 600)
    async with on_a_terminal(environment(database_url), "watch", "import", str(source)) as term:
        assert await term.exit_code() == 0, term.screen
    assert "imported" in term.screen
    assert "600 added" in term.screen
    assert "━" in term.screen  # rich's bar
    assert "100%" in term.screen
    assert await db.fetchval("SELECT count(*) FROM watchlist") == 600


async def test_watch_import_into_a_pipe_draws_no_bar(
    database_url: URL, db: Any, tmp_path: Path
) -> None:
    source = watchlist_file(tmp_path / "big.csv", 300)
    env = environment(database_url)
    async with started(env, "watch", "import", str(source)) as importing:
        assert await importing.exit_code() == 0, importing.text()
    assert "300 added" in importing.text()
    assert "━" not in importing.text()
    assert "\x1b[" not in importing.text()
    assert await db.fetchval("SELECT count(*) FROM watchlist") == 300
