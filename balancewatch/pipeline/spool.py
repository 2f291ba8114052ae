"""The spool: an append-only local file of balance rows that could not wait in memory.

Rows are appended, as the COPY lines they already are, to numbered segment files; each append
is a write() system call, so a row in the spool survives the process being killed (fsync, in
batches, adds survival of a machine crash). Where a replay starts is not kept here but in the
database (`spool_checkpoint`), committed in the same transaction as the rows it covers: a replay
after a crash starts exactly after the last stored row, so no row is lost or stored twice.

Rows are read in segment order, and a missing segment number is skipped. `reserve` keeps a
number free in front of the rows appended after it, and `fill` writes rows there later: rows
that are older than those but were still waiting in memory when the process stopped. A
position is never renumbered, so a committed checkpoint always means the same place.

One process per directory: a lock file refuses a second daemon on the same spool.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from balancewatch.errors import StartupError
from balancewatch.pipeline.records import (
    NO_EPOCH_BYTES,
    BalanceLine,
    balance_line,
    stamp_from_micros,
)

_SUFFIX = ".spool"
_TEMPORARY = ".tmp"  # a segment being filled: not a segment (*.spool) until renamed


class SpoolError(StartupError):
    """The spool directory cannot be used (unwritable, locked by another process...)."""

    event = "daemon.spool_unusable"


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in the spool: a segment number and a byte offset in it."""

    segment: int
    offset: int


def current_line(line: bytes) -> BalanceLine:
    """A spooled line as COPY takes it now. Lines spooled by older versions are replayed all the
    same: before replicas a line had no epoch (it ended in the time, `+00:00`); before that it
    ended in microseconds since the epoch, and its amount could have an exponent (which the
    text input of Postgres 14 and older refuses past 1000)."""
    if line.endswith(b"+00:00\n"):
        return line[:-1] + b"\t" + NO_EPOCH_BYTES + b"\n"
    if line.count(b"\t") == 4:
        return line
    wallet, token, amount, micros = line.decode().rstrip("\n").split("\t")
    plain = format(Decimal(amount), "f")
    return balance_line(wallet, token, plain, stamp_from_micros(int(micros)))


class Spool:
    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._lock_fd = -1
        self._fd = -1
        # The writer fsyncs from a worker thread while the loop may close the segment under it
        # (a rotation): the descriptor is duplicated, or closed, only under this lock.
        self._fd_lock = threading.Lock()
        self._segment = 0
        self._size = 0  # bytes in the current segment
        self._dirty = False
        self._total = 0  # bytes in all segments
        self.spool_id = uuid.UUID(int=0)

    def open(self) -> None:
        """Lock the directory, find the segments, and get ready to append."""
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self._directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use the spool directory {self._directory}: {exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(
                f"the spool directory {self._directory} is in use by another balancewatch: "
                "give each daemon its own BALANCEWATCH_SPOOL_DIR"
            ) from None
        self.spool_id = self._read_or_create_id()
        for unfinished in self._directory.glob(f"*{_SUFFIX}{_TEMPORARY}"):
            unfinished.unlink()  # a fill cut short by a crash: its rows were never in the spool
        segments = self.segments()
        self._segment = segments[-1] if segments else 1
        self._open_segment(truncate_torn_tail=True)
        self._total = sum(self._path(segment).stat().st_size for segment in self.segments())

    def close(self) -> None:
        self._close_segment()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
        self._lock_fd = -1

    def segments(self) -> list[int]:
        return sorted(int(path.stem) for path in self._directory.glob(f"*{_SUFFIX}"))

    def append(self, line: BalanceLine) -> None:
        if self._size >= self._segment_bytes:
            self._rotate()
        os.write(self._fd, line)
        self._size += len(line)
        self._total += len(line)
        self._dirty = True

    def reserve(self) -> int:
        """Keep a segment number free in front of every row appended from now on, and return
        it: `fill` may write rows there later, which are then read before those."""
        self.sync()
        self._close_segment()
        # An empty current segment gives its own number (its file goes once the next exists).
        reserved = self._segment + 1 if self._size else self._segment
        self._segment = reserved + 1
        self._open_segment(truncate_torn_tail=False)
        self._path(reserved).unlink(missing_ok=True)
        return reserved

    def fill(self, segment: int, lines: list[BalanceLine]) -> None:
        """Write `lines` as the segment `reserve` kept free, whole or not at all (a temporary
        file, fsynced, then renamed): a crash leaves either every line or none."""
        path = self._path(segment)
        if segment >= self._segment or path.exists():
            raise ValueError(f"spool segment {segment} is not a free one before {self._segment}")
        if not lines:
            return
        data = b"".join(lines)
        temporary = path.with_name(path.name + _TEMPORARY)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
        directory = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a machine crash
        finally:
            os.close(directory)
        self._total += len(data)

    def end(self) -> Position:
        return Position(self._segment, self._size)

    def start(self) -> Position:
        """The first position still in the spool (older segments were released)."""
        segments = self.segments()
        return Position(segments[0] if segments else self._segment, 0)

    @property
    def total_bytes(self) -> int:
        return self._total

    def is_empty(self) -> bool:
        return self._total == 0

    def read(self, start: Position, limit: int) -> tuple[list[BalanceLine], Position]:
        """Up to `limit` rows from `start`, and the position just after them."""
        position = max(start, self.start())
        rows: list[BalanceLine] = []
        while len(rows) < limit and position < self.end():
            lines, position = self._read_segment(position, limit - len(rows))
            rows.extend(map(current_line, lines))
        return rows, position

    def release(
        self, upto: Position, *, rotate_above: int = 1024 * 1024, force_rotate: bool = False
    ) -> None:
        """Forget every row before `upto`, the position after the last stored row.

        Segments wholly before it are deleted. When it is the very end and the current segment
        has grown past `rotate_above` bytes, that one goes too (a fresh segment takes over), so
        a caught-up spool gives its disk space back without a new file per batch.
        """
        for segment in self.segments():
            if segment < upto.segment:
                self._total -= self._path(segment).stat().st_size
                self._path(segment).unlink()
        if upto == self.end() and self._size and (force_rotate or self._size > rotate_above):
            done = self._segment
            self._rotate()
            self._total -= self._path(done).stat().st_size
            self._path(done).unlink()

    def sync(self) -> None:
        """fsync the current segment if anything was appended since the last call. Safe from
        another thread: it syncs a duplicate of the descriptor, which a rotation cannot close
        (or hand to the next segment) under it."""
        with self._fd_lock:
            if not (self._dirty and self._fd >= 0):
                return
            self._dirty = False
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read_segment(self, position: Position, limit: int) -> tuple[list[bytes], Position]:
        path = self._path(position.segment)
        lines: list[bytes] = []
        offset = position.offset
        try:
            with path.open("rb") as file:
                file.seek(offset)
                for line in file:
                    if not line.endswith(b"\n"):
                        break  # a write under way, or torn by a crash: not a row yet
                    lines.append(line)
                    offset += len(line)
                    if len(lines) >= limit:
                        return lines, Position(position.segment, offset)
        except FileNotFoundError:
            pass
        if position.segment < self._segment:
            return lines, Position(position.segment + 1, 0)
        return lines, Position(position.segment, offset)

    def _rotate(self) -> None:
        self.sync()
        self._close_segment()
        self._segment += 1
        self._open_segment(truncate_torn_tail=False)

    def _close_segment(self) -> None:
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = -1

    def _open_segment(self, *, truncate_torn_tail: bool) -> None:
        path = self._path(self._segment)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        if truncate_torn_tail and self._size:
            self._size = _complete_length(path)
            os.ftruncate(self._fd, self._size)

    def _path(self, segment: int) -> Path:
        return self._directory / f"{segment:012d}{_SUFFIX}"

    def _read_or_create_id(self) -> uuid.UUID:
        path = self._directory / "spool-id"
        if path.exists():
            return uuid.UUID(path.read_text().strip())
        spool_id = uuid.uuid4()
        temporary = path.with_suffix(".tmp")
        temporary.write_text(f"{spool_id}\n")
        temporary.replace(path)
        return spool_id


def _complete_length(path: Path) -> int:
    """The length of the file up to and including its last newline (a crash can tear the
    last line; appending after it would glue two rows together)."""
    data = path.read_bytes()
    return data.rfind(b"\n") + 1
