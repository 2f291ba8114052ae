"""Exponential backoff with full jitter, as a pure object the reconnect loops consult."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    initial: float
    maximum: float
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def ceiling(self) -> float:
        # Capping the exponent keeps 2**attempt from overflowing after days of failures.
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 32))

    def next_delay(self) -> float:
        """Full jitter: uniform in [0, ceiling], so many clients never retry in lockstep."""
        delay = self.rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
