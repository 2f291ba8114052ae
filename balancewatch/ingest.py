"""What happens to each frame read from the websocket: store it, ack it, or reject it."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from balancewatch.logs import get_logger
from balancewatch.protocol import BalanceUpdate, Joined, Ping, Rejected, parse_frame
from balancewatch.subscriptions import Subscriptions

log = get_logger(__name__)

_SAMPLE_CHARS = 200


class RowSink(Protocol):
    def add(self, wallet: str, token: str, amount: Decimal, received_at: datetime) -> None: ...


class Ingest:
    def __init__(self, subscriptions: Subscriptions, rows: RowSink, max_frame_bytes: int) -> None:
        self._subscriptions = subscriptions
        self._rows = rows
        self._max_frame_bytes = max_frame_bytes
        self.messages = 0
        self.rejected: Counter[str] = Counter()

    def text(self, data: str) -> bool:
        """Handle one text frame; True when it was a ping that needs a pong."""
        received_at = datetime.now(UTC)
        if len(data) > self._max_frame_bytes:
            self._reject(Rejected("too_large", f"{len(data)} characters"), data)
            return False
        frame = parse_frame(data)
        if isinstance(frame, BalanceUpdate):
            self._balance(frame, received_at, data)
        elif isinstance(frame, Joined):
            self._subscriptions.joined(frame.room)
        elif isinstance(frame, Ping):
            return True
        else:
            self._reject(frame, data)
        return False

    def binary(self, data: bytes) -> None:
        self._reject(Rejected("binary_frame", f"{len(data)} bytes"), data.hex())

    def _balance(self, update: BalanceUpdate, received_at: datetime, data: str) -> None:
        if not self._subscriptions.is_held(update.room):
            self._reject(
                Rejected("room_not_joined", "no join was sent for this room", update.room), data
            )
            return
        self.messages += 1
        self._rows.add(update.wallet, update.token, update.amount, received_at)

    def _reject(self, rejected: Rejected, data: str) -> None:
        self.rejected[rejected.reason] += 1
        log.warning(
            "ingest.frame_rejected",
            reason=rejected.reason,
            detail=rejected.detail,
            room=rejected.room,
            frame=data[:_SAMPLE_CHARS],
        )
        if rejected.reason == "unknown_type" and rejected.room:
            self._subscriptions.room_error(rejected.room, f"server said: {data[:_SAMPLE_CHARS]}")
