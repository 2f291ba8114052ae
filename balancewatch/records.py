"""The rows the daemon writes, as plain tuples (the shape COPY takes)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

BalanceRow = tuple[str, str, Decimal, datetime]  # wallet, token, amount, received_at
BALANCE_COLUMNS = ("wallet", "token", "amount", "received_at")

RejectedRow = tuple[datetime, str, str, str | None, str, int]
REJECTED_COLUMNS = ("received_at", "reason", "detail", "room", "frame", "frame_size")
