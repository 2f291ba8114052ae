"""In-memory stand-ins for the daemon's edges (the live connection, the status sink, a clock),
for unit tests of the subscriptions and what sits in front of them."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from balancewatch.domain import Watch


@dataclass
class FakeSender:
    """Records the frames it was asked to send, in order; once broken, every send fails."""

    frames: list[tuple[str, str]] = field(default_factory=list)
    broken: bool = False

    async def join(self, rooms: Collection[str]) -> None:
        self._send("join", rooms)

    async def leave(self, rooms: Collection[str]) -> None:
        self._send("leave", rooms)

    def _send(self, kind: str, rooms: Collection[str]) -> None:
        if self.broken:
            raise ConnectionError("connection reset by peer")
        self.frames.extend((kind, name) for name in sorted(rooms))

    def joins(self) -> list[str]:
        return [name for kind, name in self.frames if kind == "join"]

    def leaves(self) -> list[str]:
        return [name for kind, name in self.frames if kind == "leave"]

    def holding(self, *, resends: bool = False) -> set[str]:
        """The rooms this connection holds after its frames; fails on a join of a held room or
        a leave of a room not held. With `resends`, a held room may be joined again as long
        as no ack for it (an ("acked", room) entry) came since its first join."""
        held: set[str] = set()
        acked: set[str] = set()
        for kind, name in self.frames:
            if kind == "join":
                if not resends or name in acked:
                    assert name not in held, f"{name} joined twice without a leave in between"
                held.add(name)
            elif kind == "acked":
                if name in held:
                    acked.add(name)
            else:
                assert name in held, f"{name} left without being held"
                held.remove(name)
                acked.discard(name)
        return held


@dataclass
class FakeStatus:
    """Records every status change, one entry per pair."""

    changes: list[tuple[Watch, str, str | None]] = field(default_factory=list)

    def set_status(self, pairs: Collection[Watch], state: str, error: str | None = None) -> None:
        self.changes.extend((pair, state, error) for pair in pairs)

    def states(self, pair: Watch) -> list[str]:
        return [state for p, state, _ in self.changes if p == pair]

    def last(self, pair: Watch) -> tuple[str, str | None] | None:
        found = [(state, error) for p, state, error in self.changes if p == pair]
        return found[-1] if found else None


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now
