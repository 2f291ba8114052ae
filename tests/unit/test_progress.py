"""Long work's progress as a person sees it on a terminal (a bar) and as a log collector gets
it everywhere else (lines at most once a second), from the same calls."""

from __future__ import annotations

import io
import os
import pty
import select

from structlog.testing import capture_logs

from balancewatch.progress import Progress, shown


def test_off_a_terminal_the_steps_are_log_lines_at_most_once_a_second() -> None:
    now = [0.0]
    lines = Progress("watch.import_progress", clock=lambda: now[0])
    with capture_logs() as logs:
        with shown(lines, "importing", 30_000, stream=io.StringIO()) as step:
            for done in range(5_000, 30_001, 5_000):
                now[0] += 0.6
                step(done, rows=done, of=30_000)
        lines.finish("watch.import_done", rows=30_000)
    assert [(line["event"], line["rows"]) for line in logs] == [
        ("watch.import_progress", 10_000),  # 1.2 s
        ("watch.import_progress", 20_000),  # 2.4 s
        ("watch.import_progress", 30_000),  # 3.6 s
        ("watch.import_done", 30_000),
    ]


def read_all(master: int) -> bytes:
    """Everything written to the terminal: a pty hands it over in pieces."""
    written = b""
    try:
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            written += chunk
    except OSError:  # EIO: the other end is closed and everything is read
        pass
    finally:
        os.close(master)
    return written


def test_on_a_terminal_the_steps_move_a_bar_and_log_nothing() -> None:
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal, capture_logs() as logs:
        lines = Progress("watch.import_progress", clock=lambda: 100.0)
        with shown(lines, "importing big.csv", 4, stream=terminal) as step:
            for done in range(1, 5):
                step(done, rows=done, of=4)
        lines.finish("watch.import_done", rows=4)
    drawn = read_all(master).decode()
    assert "importing big.csv" in drawn
    assert "━" in drawn
    assert "100%" in drawn
    assert logs == []
