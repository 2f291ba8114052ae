"""Every statement of the write path, on the write path's own asyncpg connections.

Balance rows travel as COPY text lines (see pipeline/records.py), stored with their pair's id;
rejected frames as records;
subscription states as one upsert of arrays; the spool checkpoint is read and moved in the
transaction of the rows it covers; listening periods as arrays too, with their holder's
confirmation.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from balancewatch.domain import EndReason, PairState, Watch
from balancewatch.store.db import RawConnection

# A balance line (pipeline/records.py) is stored as these columns of balance_rows, the pair's
# id in place of its wallet and token (pipeline/pair_ids.py).
ROW_COLUMNS: Final = ("pair_id", "amount", "received_at", "epoch")

# A frame that was not stored as a balance: received_at, reason, detail, room, frame, size.
RejectedRow = tuple[datetime, str, str, str | None, str, int]
REJECTED_COLUMNS: Final = ("received_at", "reason", "detail", "room", "frame", "frame_size")

_UPSERT_STATUS: Final = """
INSERT INTO subscription_status AS s (wallet, token, state, since, last_error, updated_at)
SELECT u.wallet, u.token, u.state, u.since, u.last_error, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
    AS u(wallet, token, state, since, last_error)
ON CONFLICT (wallet, (coalesce(token, ''))) DO UPDATE SET
    state = excluded.state,
    since = CASE WHEN s.state = excluded.state THEN s.since ELSE excluded.since END,
    last_error = COALESCE(excluded.last_error, s.last_error),
    updated_at = excluded.updated_at
"""
_READ_CHECKPOINT: Final = (
    "SELECT segment, position FROM spool_checkpoint WHERE spool_id = $1 FOR UPDATE"
)
_WRITE_CHECKPOINT: Final = """
INSERT INTO spool_checkpoint (spool_id, segment, position, updated_at) VALUES ($1, $2, $3, now())
ON CONFLICT (spool_id) DO UPDATE
SET segment = excluded.segment, position = excluded.position, updated_at = now()
"""


@dataclass(frozen=True, slots=True)
class StatusChange:
    state: PairState
    since: datetime
    error: str | None


# Raised by the balance_rows_fence trigger: a row of the batch was received after its
# shard tenure ended (see the migrations' 0007).
FENCED_SQLSTATE: Final = "BWF01"


class BatchFenced(Exception):
    """The fencing trigger refused a whole batch: some of its rows were received after their
    replica lost the shard. Not a database failure to retry as it is: store the rows that pass
    (pipeline/fencing.py)."""


async def copy_balance_rows(raw: RawConnection, rows: bytes, timeout: float) -> None:
    """COPY rows given as text (ROW_COLUMNS) into balance_rows: one statement, atomic by
    itself, and checked by the fencing trigger in it (BatchFenced if it refuses them)."""

    async def chunks() -> AsyncIterator[bytes]:
        yield rows

    try:
        await raw.copy_to_table(
            "balance_rows", source=chunks(), columns=ROW_COLUMNS, timeout=timeout
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == FENCED_SQLSTATE:
            raise BatchFenced(str(exc)) from exc
        raise


async def pair_ids(
    raw: RawConnection, pairs: Sequence[Sequence[str]], timeout: float
) -> list[tuple[str, str, int]]:
    """The id of each (wallet, token), added to `pairs` if it was not there (committed with
    the statement when outside a transaction)."""
    found = await raw.fetch(
        "SELECT wallet, token, pair_id FROM pair_ids($1::text[], $2::text[])",
        [wallet for wallet, _ in pairs],
        [token for _, token in pairs],
        timeout=timeout,
    )
    return [(row["wallet"], row["token"], row["pair_id"]) for row in found]


async def tenure_ends(
    raw: RawConnection, epochs: Sequence[int], timeout: float
) -> tuple[dict[int, datetime | None], datetime]:
    """When each of these shard tenures ended (None for one still current), and the database's
    time now. Inside a transaction, the leases of their shards stay locked
    FOR SHARE until it ends: no tenure named here can end meanwhile. An epoch the database
    does not know is left out."""
    found = await raw.fetch("SELECT * FROM tenure_ends($1::bigint[])", epochs, timeout=timeout)
    if not found:
        checked_at = await raw.fetchval("SELECT clock_timestamp()", timeout=timeout)
        return {}, checked_at
    return {row["epoch"]: row["valid_until"] for row in found}, found[0]["checked_at"]


async def copy_rejected(raw: RawConnection, rows: Sequence[RejectedRow], timeout: float) -> None:
    await raw.copy_records_to_table(
        "rejected_messages", records=rows, columns=REJECTED_COLUMNS, timeout=timeout
    )


async def upsert_status(
    raw: RawConnection, changes: Mapping[Watch, StatusChange], timeout: float
) -> None:
    """Each watch's newest state; `since` moves only when the state changes."""
    pairs = list(changes)
    states = [changes[pair] for pair in pairs]
    await raw.execute(
        _UPSERT_STATUS,
        [wallet for wallet, _ in pairs],
        [token for _, token in pairs],
        [change.state for change in states],
        [change.since for change in states],
        [change.error for change in states],
        timeout=timeout,
    )


async def read_checkpoint(
    raw: RawConnection, spool_id: object, timeout: float
) -> tuple[int, int] | None:
    """(segment, offset) after the last stored row of a spool, locked for this transaction."""
    found = await raw.fetchrow(_READ_CHECKPOINT, spool_id, timeout=timeout)
    return None if found is None else (int(found["segment"]), int(found["position"]))


async def write_checkpoint(
    raw: RawConnection, spool_id: object, segment: int, offset: int, timeout: float
) -> None:
    await raw.execute(_WRITE_CHECKPOINT, spool_id, segment, offset, timeout=timeout)


# A listening period's id, the 128 bits of the UUID it is stored under: kept as a number until
# the write (a UUID object is 100 bytes more, for every period waiting to be written).
PeriodId = int


@dataclass(frozen=True, slots=True)
class PeriodStart:
    id: PeriodId
    pair: Watch  # token None: a wallet room's period, covering every token
    at: datetime


@dataclass(frozen=True, slots=True)
class PeriodEnd:
    id: PeriodId
    at: datetime
    reason: EndReason


_CONFIRM_HOLDER: Final = """
INSERT INTO coverage_holders AS k (holder, started_at, confirmed_at, snapshot_queue)
VALUES ($1, $2, $2, $3)
ON CONFLICT (holder) DO UPDATE SET
    confirmed_at = greatest(k.confirmed_at, excluded.confirmed_at),
    snapshot_queue = excluded.snapshot_queue
"""
_START_PERIODS: Final = """
INSERT INTO coverage (id, wallet, token, started_at, holder)
SELECT s.id, s.wallet, s.token, s.started_at, $5
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
    AS s(id, wallet, token, started_at)
"""
_END_PERIODS: Final = """
UPDATE coverage AS c SET ended_at = greatest(e.ended_at, c.started_at), end_reason = e.reason
FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS e(id, ended_at, reason)
WHERE c.id = e.id AND c.ended_at IS NULL
"""
# The periods of a process that stopped confirming them (killed, or cut off): closed at its
# last confirmation, the last moment it is known to have been listening.
_CLOSE_LOST_PERIODS: Final = """
UPDATE coverage AS c SET ended_at = greatest(k.confirmed_at, c.started_at), end_reason = 'lost'
FROM coverage_holders AS k
WHERE c.holder = k.holder AND c.ended_at IS NULL
  AND k.holder <> $1 AND k.confirmed_at < $2
"""


async def write_periods(
    raw: RawConnection,
    holder: tuple[str, int],
    confirmed: datetime,
    periods: tuple[Sequence[PeriodStart], Sequence[PeriodEnd]],
    timeout: float,
) -> None:
    """In one transaction: this holder (its name, and its snapshot queue now) confirmed up to
    `confirmed`, the periods that started, then those that ended (a period may start and end
    in one call: the order makes it right)."""
    starts, ends = periods
    name, snapshot_queue = holder
    async with raw.transaction():
        await raw.execute(_CONFIRM_HOLDER, name, confirmed, snapshot_queue, timeout=timeout)
        if starts:
            await raw.execute(
                _START_PERIODS,
                [uuid.UUID(int=start.id) for start in starts],
                [start.pair[0] for start in starts],
                [start.pair[1] for start in starts],
                [start.at for start in starts],
                name,
                timeout=timeout,
            )
        if ends:
            await raw.execute(
                _END_PERIODS,
                [uuid.UUID(int=end.id) for end in ends],
                [end.at for end in ends],
                [end.reason for end in ends],
                timeout=timeout,
            )


async def close_lost_periods(
    raw: RawConnection, holder: str, silent_since: datetime, timeout: float
) -> int:
    """Close the open periods of every other holder not heard from since `silent_since`."""
    status = await raw.execute(_CLOSE_LOST_PERIODS, holder, silent_since, timeout=timeout)
    return int(status.rsplit(" ", 1)[-1])
