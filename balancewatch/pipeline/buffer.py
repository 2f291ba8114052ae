"""Where received rows wait for the database: in memory up to a bound, then in the spool.

Order is arrival order throughout. Once a row has gone to the spool, every later row goes
there too until the spool has been replayed, so memory always holds the oldest rows and the
spool the newer ones. In durable mode every row goes to the spool, so a killed process loses
nothing that was read.

When rows start to spill, the spool keeps a segment free in front of them: rows still in memory
when the process stops are written there (`spool_memory`), so the next start stores them
before the newer rows, in arrival order. The spool is only replayed once memory is empty, so
until then nothing at or after that segment has been stored.
"""

from __future__ import annotations

import time

from balancewatch.pipeline.records import BalanceLine, PairKey, Rows, Tail
from balancewatch.pipeline.spool import Spool


class Buffer:
    def __init__(self, spool: Spool, *, max_memory_rows: int, durable: bool) -> None:
        self._spool = spool
        self._max_memory_rows = max_memory_rows
        self._durable = durable
        # Cut in two (records.py): a memory batch goes to COPY without its lines being cut.
        self.memory = Rows()
        # True while the spool may hold rows that are not stored yet. A spool left by an
        # earlier run may: the first spool batch reads the checkpoint and finds out.
        self.spilled = not spool.is_empty()
        self.spool_pending = 0  # rows spooled by this process and not stored yet
        # monotonic time of the oldest waiting row; a left-over spool is due at once
        self.oldest: float | None = 0.0 if self.spilled else None
        # The spool segment kept free in front of the rows spilled after the ones in memory.
        self._in_front: int | None = None

    def add(self, pair: PairKey, tail: Tail) -> None:
        """A row, as its pair's key and its line's tail (records.py)."""
        if self.oldest is None:
            self.oldest = time.monotonic()
        memory = self.memory
        if self._durable or self.spilled or len(memory.tails) >= self._max_memory_rows:
            if not (self._durable or self.spilled):
                self._in_front = self._spool.reserve()
            self._spool.append(pair + tail)
            self.spilled = True
            self.spool_pending += 1
        else:
            memory.pairs.append(pair)
            memory.tails.append(tail)

    def __len__(self) -> int:
        return len(self.memory.tails) + self.spool_pending

    def has_rows(self) -> bool:
        return bool(self.memory.tails) or self.spilled

    def take_memory(self, limit: int) -> Rows:
        memory = self.memory
        if len(memory) <= limit:
            rows, self.memory = memory, Rows()
        else:
            rows = Rows(memory.pairs[:limit], memory.tails[:limit])
            del memory.pairs[:limit]
            del memory.tails[:limit]
        self._forget_age_if_empty()
        return rows

    def restore_memory(self, rows: Rows, oldest: float | None) -> None:
        """A memory batch that failed goes back in front, with its age."""
        self.memory.pairs[:0] = rows.pairs
        self.memory.tails[:0] = rows.tails
        if rows:
            self.oldest = oldest if oldest is not None else time.monotonic()

    def spool_stored(self, rows: int, caught_up: bool) -> None:
        """A spool batch was committed; `caught_up` if it reached the spool's end."""
        self.spool_pending = max(0, self.spool_pending - rows)
        if caught_up:
            self.spilled = False
            self.spool_pending = 0
            self._in_front = None
        self._forget_age_if_empty()

    def spool_memory(self) -> list[BalanceLine]:
        """At exit: put the rows still in memory in the spool, in front of the rows that
        spilled after them (at its end if none did); returns them."""
        rows, self.memory = self.memory.lines(), Rows()
        if not rows:
            return rows
        if self._in_front is not None:
            self._spool.fill(self._in_front, rows)
            self._in_front = None
        else:
            for row in rows:
                self._spool.append(row)
        self.spilled = True
        self.spool_pending += len(rows)
        return rows

    def _forget_age_if_empty(self) -> None:
        if not self.memory and not self.spilled:
            self.oldest = None
