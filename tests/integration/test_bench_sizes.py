"""The bench's size of `balance_history` follows the rows wherever they are kept: in the table
today, in the partitions of a table a view reads once issue 13 has it so."""

from __future__ import annotations

from typing import Any

from balancewatch.devtools.bench_history import relation_bytes

_SIZES = "SELECT pg_table_size($1::regclass) AS t, pg_indexes_size($1::regclass) AS i"


async def sizes(db: Any, *names: str) -> tuple[int, int]:
    rows = [await db.fetchrow(_SIZES, name) for name in names]
    return sum(row["t"] for row in rows), sum(row["i"] for row in rows)


async def test_a_table_is_its_own_size_with_its_indexes(db: Any) -> None:
    await db.execute(
        "INSERT INTO rejected_messages (received_at, reason, detail, frame, frame_size) "
        "SELECT now(), 'r', 'd', repeat('x', 100), 100 FROM generate_series(1, 2000) n"
    )
    table, indexes = await relation_bytes(db, "rejected_messages")
    assert (table, indexes) == await sizes(db, "rejected_messages")
    assert table > 0
    assert indexes > 0


async def test_the_history_is_the_size_of_its_pairs_and_of_every_partition(db: Any) -> None:
    await db.execute(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "SELECT 'w' || n, 't', n, now() FROM generate_series(1, 2000) n"
    )
    partitions = await db.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits "
        "WHERE inhparent = 'balance_rows'::regclass"
    )
    behind = await sizes(db, "pairs", *(row["name"] for row in partitions))
    assert await relation_bytes(db, "balance_history") == behind


async def test_a_view_over_a_partitioned_table_is_the_size_of_what_it_reads(db: Any) -> None:
    await db.execute(
        """
        CREATE TABLE pair_ids (id int PRIMARY KEY, wallet text, token text);
        CREATE TABLE compact_rows (pair int, day date, amount numeric) PARTITION BY RANGE (day);
        CREATE TABLE compact_rows_1 PARTITION OF compact_rows
            FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
        CREATE TABLE compact_rows_2 PARTITION OF compact_rows
            FOR VALUES FROM ('2026-02-01') TO ('2026-03-01') PARTITION BY RANGE (day);
        CREATE TABLE compact_rows_2a PARTITION OF compact_rows_2
            FOR VALUES FROM ('2026-02-01') TO ('2026-02-15');
        CREATE TABLE compact_rows_2b PARTITION OF compact_rows_2 DEFAULT;
        CREATE INDEX ON compact_rows (pair, day);
        INSERT INTO pair_ids SELECT n, 'w' || n, 't' FROM generate_series(1, 100) n;
        INSERT INTO compact_rows SELECT n % 100 + 1, date '2026-01-01' + n % 59, n
            FROM generate_series(1, 5000) n;
        CREATE VIEW history_view AS
            SELECT p.wallet, p.token, r.day, r.amount
            FROM compact_rows r JOIN pair_ids p ON p.id = r.pair;
        CREATE VIEW history_view_of_view AS SELECT * FROM history_view;
        """
    )
    behind = await sizes(db, "pair_ids", "compact_rows_1", "compact_rows_2a", "compact_rows_2b")
    assert behind[0] > 0
    assert behind[1] > 0
    assert await relation_bytes(db, "history_view") == behind
    assert await relation_bytes(db, "history_view_of_view") == behind
    assert await relation_bytes(db, "compact_rows") == await sizes(
        db, "compact_rows_1", "compact_rows_2a", "compact_rows_2b"
    )
