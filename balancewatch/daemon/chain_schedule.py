"""Which watches to read from the chain next: pure decisions, no I/O, timed by the caller's
clock. A watch is a pair, or a whole wallet (token None), read as one.

Snapshots come first: a watch whose listening period just started has no certain balance until
its snapshot is stored, so the queue serves them before any check, in the order their periods
started. A snapshot whose read failed waits a while and goes to the back of the queue. Checks
go round the listened-to watches, each once per interval, spread evenly over it.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Collection

from balancewatch.domain import Watch


class SnapshotQueue:
    """Watches waiting for their snapshot, each once, first come first served."""

    def __init__(self) -> None:
        # In the order they came, a watch discarded meanwhile skipped when it comes up. Not a
        # dict used as an ordered set: taking from its front walks past every entry taken
        # since it last grew, quadratic in the queue (38 s for 200,000 snapshots taken 100 at
        # a time; a round at 1,000,000 pairs is a million).
        self._order: deque[Watch] = deque()
        self._waiting: set[Watch] = set()
        self._retry_at: dict[Watch, float] = {}
        # (due, sequence, watch); a watch discarded meanwhile is skipped when it comes up.
        self._later: list[tuple[float, int, Watch]] = []
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._retry_at)

    def add(self, pair: Watch) -> None:
        """A listening period started: its watch is read as soon as the queue reaches it."""
        self._retry_at.pop(pair, None)
        self._wait(pair)

    def discard(self, pair: Watch) -> None:
        """The period ended: a snapshot now would not be of a listened-to watch."""
        self._waiting.discard(pair)
        self._retry_at.pop(pair, None)

    def retry(self, pair: Watch, at: float) -> None:
        """Its read failed: queue it again at `at`, behind the pairs waiting then."""
        self._retry_at[pair] = at
        self._sequence += 1
        heapq.heappush(self._later, (at, self._sequence, pair))

    def take(self, most: int, now: float) -> list[Watch]:
        """Up to `most` watches to read now, oldest first."""
        self._release_due(now)
        taken: list[Watch] = []
        while self._waiting and len(taken) < most:
            pair = self._order.popleft()
            if pair in self._waiting:
                self._waiting.remove(pair)
                taken.append(pair)
        return taken

    def next_retry(self) -> float | None:
        """When the earliest retry is due (None if none waits)."""
        while self._later and self._retry_at.get(self._later[0][2]) != self._later[0][0]:
            heapq.heappop(self._later)  # discarded or re-queued since
        return self._later[0][0] if self._later else None

    def _release_due(self, now: float) -> None:
        while (due := self.next_retry()) is not None and due <= now:
            _, _, pair = heapq.heappop(self._later)
            del self._retry_at[pair]
            self._wait(pair)

    def _wait(self, pair: Watch) -> None:
        if pair not in self._waiting:
            self._waiting.add(pair)
            self._order.append(pair)


class CheckRounds:
    """Each listened-to pair once per `interval`, evenly spread: in a round of N pairs started
    at t0, the k-th pair is due at t0 + k * interval / N. A round that falls behind (the RPC
    slower than the rate needs) catches up as fast as the reads allow, and the next one starts
    when it is done and its interval has passed."""

    def __init__(self, interval: float, listening: Callable[[], Collection[Watch]]) -> None:
        if interval <= 0:
            raise ValueError("a check interval must be positive (0 means no checks at all)")
        self._interval = interval
        self._listening = listening
        self._pairs: list[Watch] = []
        self._started = -math.inf
        self._next = 0

    def take(self, most: int, now: float) -> list[Watch]:
        """Up to `most` pairs whose check is due by `now`."""
        if self._next >= len(self._pairs) and now >= self._started + self._interval:
            self._pairs = list(self._listening())
            self._started = now
            self._next = 0
        due = self._due_by(now)
        taken = self._pairs[self._next : min(due, self._next + most)]
        self._next += len(taken)
        return taken

    def next_due(self) -> float:
        """When the next check is due: the next pair of this round, or the next round."""
        if self._next < len(self._pairs):
            return self._started + (self._next + 1) * self._interval / len(self._pairs)
        return self._started + self._interval

    def _due_by(self, now: float) -> int:
        if not self._pairs:
            return 0
        share = (now - self._started) / self._interval
        return min(len(self._pairs), math.floor(share * len(self._pairs) + 1e-9))
