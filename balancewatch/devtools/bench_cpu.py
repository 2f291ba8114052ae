"""The daemon's CPU per message, and where it goes: what `balancewatch bench` measures on a
daemon that runs as its own process (`python -m balancewatch run`), so that its CPU time is
its own and not the simulator's or the bench's.

- CPU: user + system time of the daemon's process (every thread), read from `/proc/PID/stat`
  just before the first frame is written and as soon as the last row is seen committed,
  divided by the messages.
- Where it goes: `py-spy record` attached to the same process over one more ingest run, its
  samples (idle ones left out) summed per function, its own time and with what it calls.
  py-spy is a development tool (`pip install py-spy`, in the `dev` extra); without it the
  bench says so and goes on.

`bench` imports it; it imports nothing of `bench`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# py-spy's sampling rate: about a thousand samples over a one-second run, and py-spy reads the
# daemon's memory from its own process, without pausing it (--nonblocking).
PROFILE_RATE = 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


@dataclass(frozen=True, slots=True)
class Hotspot:
    function: str  # name (file)
    own: float  # share of the samples with it on top of the stack
    total: float  # share of the samples with it anywhere on the stack


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on the PATH; None without one."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def profiled(pid: int, executable: str) -> AsyncIterator[list[Hotspot]]:
    """py-spy sampling process `pid` for the duration of the block; the list is filled with
    the hot spots once the block has ended and py-spy has written its samples."""
    spots: list[Hotspot] = []
    with tempfile.TemporaryDirectory(prefix="balancewatch-profile-") as scratch:
        output = Path(scratch) / "samples.txt"
        spy = await asyncio.create_subprocess_exec(
            executable,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(PROFILE_RATE),
            "--format",
            "raw",  # collapsed stacks: "frame;frame;frame count" a line
            "--output",
            str(output),
            "--nonblocking",  # the daemon is never paused to be sampled
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            await asyncio.sleep(0.5)  # attached before the first frame
            if spy.returncode is not None:
                raise RuntimeError(f"py-spy exited at once: {await _stderr(spy)}")
            yield spots
        finally:
            if spy.returncode is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
            await asyncio.wait_for(spy.wait(), timeout=30)
        if not output.exists():
            raise RuntimeError(f"py-spy wrote no samples: {await _stderr(spy)}")
        spots.extend(hotspots(output.read_text()))


async def _stderr(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    return (await process.stderr.read()).decode(errors="replace").strip()[-500:]


def hotspots(collapsed: str) -> list[Hotspot]:
    """Collapsed stacks (`outer;...;inner count` a line, a frame `function (file:line)`) summed
    per function: its own share and its share with what it calls, most of the latter first."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        functions = [_function(frame) for frame in stack.split(";")]
        own[functions[-1]] += count
        for function in set(functions):
            total[function] += count
    if samples == 0:
        return []
    return [
        Hotspot(function, own[function] / samples, count / samples)
        for function, count in total.most_common()
    ]


def _function(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`: every line of a function as one."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{name} ({Path(path).name})" if path else name


def top_own(spots: list[Hotspot], count: int) -> list[Hotspot]:
    """The `count` functions that spend the most samples themselves."""
    return sorted(spots, key=lambda spot: spot.own, reverse=True)[:count]
