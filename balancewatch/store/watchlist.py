"""Queries over the watchlist table: what the daemon reads, and what the CLI edits."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from sys import intern
from typing import Any

from sqlalchemy import ColumnElement, delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from balancewatch.domain import PairState, Watch
from balancewatch.store.models import subscription_status, watchlist

_ENABLED = "SELECT wallet, token FROM watchlist WHERE enabled"
_ENABLED_OF_WALLETS = "SELECT wallet, token FROM watchlist WHERE enabled AND wallet = ANY($1)"
_PREFETCH = 5_000


async def enabled_watches(engine: AsyncEngine) -> list[Watch]:
    """Every enabled (wallet, token|None): the input of `rooms.wanted_rooms`.

    Read by the driver itself: at 100,000 rows, SQLAlchemy's row objects took 0.3 s of the
    event loop (the read loop's time), asyncpg's records 0.04-0.1 s.
    """
    return await _fetch_watches(engine, _ENABLED)


async def enabled_of_wallets(engine: AsyncEngine, wallets: Collection[str]) -> list[Watch]:
    """Every enabled row of these wallets: which rooms one wallet needs depends on all of its
    rows (an all-tokens row covers the others)."""
    return await _fetch_watches(engine, _ENABLED_OF_WALLETS, list(wallets))


async def _fetch_watches(engine: AsyncEngine, query: str, *args: object) -> list[Watch]:
    """The rows, read through a cursor a few thousand at a time: the driver's records of the
    whole table are never alive at once (at 1,000,000 rows they were 250 MB). Each address
    is interned: a token is shared by many rows, and a row read again at every reconcile is
    the same string as the one the daemon already keeps for it, not a second copy."""
    watches: list[Watch] = []
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None  # a connection checked out of the pool is open
        try:
            async with driver.transaction(readonly=True):
                async for wallet, token in driver.cursor(query, *args, prefetch=_PREFETCH):
                    watches.append((intern(wallet), None if token is None else intern(token)))
        except Exception:
            # SQLAlchemy never saw this error: keep the pool from handing the connection out
            # again, whatever state the failure left it in.
            await connection.invalidate()
            raise
    return watches


async def add(engine: AsyncEngine, wallet: str, token: str | None, label: str | None) -> bool:
    """Add or re-enable a pair, or a whole wallet (token None); True if it was new."""
    insert_row = insert(watchlist).values(wallet=wallet, token=token, label=label)
    statement = _on_conflict(
        insert_row,
        whole_wallet=token is None,
        set_={"enabled": True, "label": insert_row.excluded.label if label else watchlist.c.label},
    ).returning(watchlist.c.created_at == watchlist.c.updated_at)
    async with engine.begin() as connection:
        created = (await connection.execute(statement)).scalar_one()
    return bool(created)


def _on_conflict(statement: Insert, *, whole_wallet: bool, set_: dict[str, Any]) -> Insert:
    """The upsert of a row, on the unique rule it falls under: one row per (wallet, token), or
    one all-tokens row per wallet. That one is a partial index, which UNIQUE (wallet, token)
    does not replace: it lets any number of NULL tokens in."""
    if whole_wallet:
        return statement.on_conflict_do_update(
            index_elements=[watchlist.c.wallet], index_where=watchlist.c.token.is_(None), set_=set_
        )
    return statement.on_conflict_do_update(constraint="watchlist_wallet_token_key", set_=set_)


async def remove(engine: AsyncEngine, wallet: str, token: str | None) -> bool:
    """Delete a pair, or a wallet's all-tokens row (token None: its pair rows stay); its balance
    history stays. False if it was not there."""
    token_is = watchlist.c.token.is_(None) if token is None else watchlist.c.token == token
    statement = delete(watchlist).where(watchlist.c.wallet == wallet, token_is)
    async with engine.begin() as connection:
        result = await connection.execute(statement)
    return bool(result.rowcount)


def _status_key(token: ColumnElement[str | None]) -> ColumnElement[str]:
    """A token as subscription_status is keyed (its unique index): a NULL token, the wallet's
    own room, as ''. Joining on this rather than on IS NOT DISTINCT FROM lets Postgres hash
    the join: IS NOT DISTINCT FROM compared every row of a wallet with every other (35 s at
    100,000 rows of 10 wallets, against 0.1 s)."""
    return func.coalesce(token, "")


@dataclass(frozen=True, slots=True)
class WatchEntry:
    wallet: str
    token: str | None  # None: every token of the wallet
    enabled: bool
    label: str | None
    state: PairState | None
    since: datetime | None
    last_error: str | None


async def entries(engine: AsyncEngine) -> list[WatchEntry]:
    """Every row of the watchlist with what the daemon last said of it."""
    status = subscription_status
    query = (
        select(
            watchlist.c.wallet,
            watchlist.c.token,
            watchlist.c.enabled,
            watchlist.c.label,
            status.c.state,
            status.c.since,
            status.c.last_error,
        )
        .select_from(
            watchlist.outerjoin(
                status,
                (status.c.wallet == watchlist.c.wallet)
                & (_status_key(status.c.token) == _status_key(watchlist.c.token)),
            )
        )
        .order_by(watchlist.c.id)
    )
    async with engine.connect() as connection:
        result = await connection.execute(query)
        return [WatchEntry(*row) for row in result]


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One row of an imported file: a pair, or a whole wallet (token None). For `enabled` and
    `label`, None means "the file has no such column": an existing row keeps its value, a new
    one gets the column's default (enabled, no label)."""

    wallet: str
    token: str | None
    enabled: bool | None
    label: str | None
    has_label: bool


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: int
    updated: int


# asyncpg takes at most 32767 parameters per statement: 4 per row.
_IMPORT_CHUNK = 5000


async def import_rows(
    engine: AsyncEngine, rows: list[ImportRow], done: Callable[[int], None] | None = None
) -> ImportResult:
    """Upsert every row in one transaction: all of them or, on any error, none. `done` is told
    how many rows are upserted after each chunk (a large file's progress)."""
    added = updated = 0
    async with engine.begin() as connection:
        for start in range(0, len(rows), _IMPORT_CHUNK):
            chunk = rows[start : start + _IMPORT_CHUNK]
            for statement in _upserts(chunk):
                result = await connection.execute(statement)
                for inserted in result.scalars():
                    added, updated = (added + 1, updated) if inserted else (added, updated + 1)
            if done is not None:
                done(start + len(chunk))
    return ImportResult(added, updated)


def _upserts(rows: list[ImportRow]) -> list[Executable]:
    """One INSERT .. ON CONFLICT per shape of row: which columns the file gave, and whether the
    row is a whole wallet (its conflict is on another index)."""
    shapes: dict[tuple[bool, bool, bool], list[dict[str, Any]]] = {}
    for row in rows:
        values: dict[str, Any] = {"wallet": row.wallet, "token": row.token}
        if row.enabled is not None:
            values["enabled"] = row.enabled
        if row.has_label:
            values["label"] = row.label
        shape = (row.token is None, row.enabled is not None, row.has_label)
        shapes.setdefault(shape, []).append(values)
    statements: list[Executable] = []
    for (whole_wallet, has_enabled, has_label), values_list in shapes.items():
        insert_rows = insert(watchlist).values(values_list)
        update: dict[str, Any] = {}
        if has_enabled:
            update["enabled"] = insert_rows.excluded.enabled
        if has_label:
            update["label"] = insert_rows.excluded.label
        if not update:  # nothing to change on a known row, but say it was there
            update["enabled"] = watchlist.c.enabled
        # xmax is 0 on a row this statement inserted, not on one it updated: added vs updated.
        statements.append(
            _on_conflict(insert_rows, whole_wallet=whole_wallet, set_=update).returning(
                literal_column("xmax = 0")
            )
        )
    return statements
