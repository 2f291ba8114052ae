"""Every query of the shipped Grafana dashboards runs against the real thing: the Operations
dashboard's PromQL through the real `promtool`, the Balances dashboard's SQL (Grafana's macros
expanded as Grafana does) against a migrated database holding known rows, with the answers
checked."""

from __future__ import annotations

import re
import subprocess
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from sqlalchemy.engine import URL

from balancewatch.devtools import dashboards
from balancewatch.store.db import asyncpg_dsn
from tests.data import WALLET3, insert, insert_periods, insert_watches
from tests.files import README, REPO
from tests.helpers import SOL, TOKEN, WALLET, WALLET2
from tests.tools import tool

DIRECTORY = REPO / dashboards.DASHBOARDS_DIR


def check_rules(expressions: list[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on the expressions, each as a recording rule."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": expr}
                    for n, expr in enumerate(expressions)
                ],
            }
        ]
    }
    path = directory / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return subprocess.run(
        [tool("promtool", "prometheus"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_every_promql_expression_of_the_operations_dashboard_is_valid_for_promtool(
    tmp_path: Path,
) -> None:
    queries = dashboards.queries(dashboards.load("operations.json", DIRECTORY))
    expressions = [
        dashboards.expand_promql(dashboards.promql_of(query), {"instance": ".*"})
        for query in queries.values()
    ]
    assert len(expressions) >= 12
    checked = check_rules(expressions, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in checked.stdout


def test_promtool_refuses_an_expression_that_is_not_promql(tmp_path: Path) -> None:
    """So the check above can fail: Grafana's $__rate_interval left in is not PromQL."""
    checked = check_rules(["rate(balancewatch_rows_written_total[$__rate_interval])"], tmp_path)
    assert checked.returncode != 0


# -- the Balances dashboard against known rows -------------------------------------------------

OTHER_TOKEN = WALLET3  # an address as a token: watched, never heard of


def sql(name: str) -> dict[str, str]:
    return dashboards.queries(dashboards.load(name, DIRECTORY))


async def run(db: Any, where: str, start: datetime, end: datetime, **variables: str) -> list[Any]:
    query = sql("balances.json")[where]
    return list(await db.fetch(dashboards.expand_sql(query, start, end, variables)))


async def seed(db: Any) -> tuple[datetime, datetime, datetime]:
    """Known rows and listening periods; the time range to read them over (8 h ago to 2 h ago,
    to the second as Grafana writes it), and the database's now()."""
    now: datetime = await db.fetchval("SELECT now()")
    start = (now - timedelta(hours=8)).replace(microsecond=0)
    end = (now - timedelta(hours=2)).replace(microsecond=0)
    hour = timedelta(hours=1)
    await insert_watches(
        db, [(WALLET, TOKEN, True), (WALLET, OTHER_TOKEN, True), (WALLET2, None, True)]
    )
    await insert(
        db,
        [
            (WALLET, TOKEN, "10", start - hour),  # the balance as the range starts
            (WALLET, TOKEN, "11", start + hour),
            (WALLET, TOKEN, "12.5", start + 2 * hour),
            (WALLET, TOKEN, "13", start + 3 * hour),
            (WALLET, TOKEN, "99", end + hour),  # after the range
            (WALLET, SOL, "100", start - hour),
            (WALLET, SOL, "50", start + hour),
            (WALLET2, TOKEN, "5", start - 5 * hour),  # nothing within the range
            (WALLET2, SOL, "7", start + hour),  # first heard of within the range
        ],
    )
    minutes = timedelta(minutes=1)
    await insert_periods(
        db,
        (WALLET, TOKEN),
        (now - 26 * hour, now - 23 * hour, "disconnected"),  # 1 h of it in the last 24 h
        (start - 2 * hour, start - 10 * minutes, "disconnected"),  # a gap across the start
        (start + 20 * minutes, start + hour, "left"),
    )
    await insert_periods(db, (WALLET, None), (start + 2 * hour, end + 30 * minutes, "shutdown"))
    await insert_periods(
        db,
        (WALLET, SOL),
        (start, start + 4 * hour, "disconnected"),
        (now - 45 * minutes, None, None),  # open: listening now
    )
    await insert_periods(db, (WALLET2, TOKEN), (start, start + hour, "error"))
    return now, start, end


async def test_every_sql_query_of_the_balances_dashboard_answers_what_the_rows_say(
    db: Any,
) -> None:
    _, start, end = await seed(db)
    hour, minutes = timedelta(hours=1), timedelta(minutes=1)
    assert [row[0] for row in await run(db, "variable wallet", start, end)] == [WALLET2, WALLET]
    assert [row[0] for row in await run(db, "variable token", start, end, wallet=WALLET)] == (
        sorted([TOKEN, SOL, OTHER_TOKEN])
    )

    chart = "Balance of $wallet / $token/"
    balance = await run(db, chart + "A", start, end, wallet=WALLET, token=TOKEN)
    assert [(row["time"], row["balance"]) for row in balance] == [
        (start, Decimal("10")),
        (start + hour, Decimal("11")),
        (start + 2 * hour, Decimal("12.5")),
        (start + 3 * hour, Decimal("13")),
    ]
    gaps = await run(db, chart + "B", start, end, wallet=WALLET, token=TOKEN)
    # Not listening from the start (the gap began before it) to +20 min, then from +1 h (the
    # pair's room left) to +2 h (the wallet's room joined, which covers the pair).
    assert [(row["time"], row["not_listening"]) for row in gaps] == [
        (start, 1),
        (start + 20 * minutes, 0),
        (start + hour, 1),
        (start + 2 * hour, 0),
    ]

    latest = await run(db, "Latest balances of $wallet/A", start, end, wallet=WALLET)
    assert [(row["token"], row["amount"]) for row in latest] == sorted(
        [(TOKEN, Decimal("99")), (SOL, Decimal("50"))]
    )

    movers = await run(db, "Biggest movers/A", start, end)
    assert [tuple(row) for row in movers] == [
        (WALLET, SOL, Decimal("100"), Decimal("50"), Decimal("-50")),
        (WALLET, TOKEN, Decimal("10"), Decimal("13"), Decimal("3")),
        (WALLET2, SOL, None, Decimal("7"), None),
    ]

    coverage = await run(
        db, "Listening coverage of $wallet, last 24 h/A", start, end, wallet=WALLET
    )
    # TOKEN: 1 h + 1 h 50 min + 40 min of its own, 4 h 30 min through the wallet's room: 8 h.
    # SOL: its 4 h and the wallet room's 4 h 30 min overlap into 6 h 30 min, and 45 min open.
    # OTHER_TOKEN, never heard of: the wallet room's 4 h 30 min, which covers every token.
    assert [tuple(row) for row in coverage] == [
        (OTHER_TOKEN, Decimal("18.8"), 1),
        (SOL, Decimal("30.2"), 2),
        (TOKEN, Decimal("33.3"), 4),
    ]


async def test_the_balances_queries_answer_nothing_for_an_empty_history(db: Any) -> None:
    """A new installation: every panel runs and is empty, none fails on a missing row."""
    now: datetime = await db.fetchval("SELECT now()")
    start, end = (now - timedelta(hours=24)).replace(microsecond=0), now.replace(microsecond=0)
    for where in sql("balances.json"):
        assert await run(db, where, start, end, wallet=WALLET, token=TOKEN) == [], where


# -- a read-only role for Grafana ----------------------------------------------------------------

README_ROLE = "balancewatch_grafana"
README_DATABASE = "DATABASE balancewatch "


def grafana_role_sql(role: str, database: str) -> str:
    """The README's `sql-grafana` block, for this role and database."""
    blocks: list[str] = re.findall(r"```sql-grafana\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = blocks
    for placeholder in (README_ROLE, README_DATABASE):
        assert placeholder in block, f"the README's grants no longer name {placeholder!r}"
    return block.replace(README_DATABASE, f'DATABASE "{database}" ').replace(README_ROLE, role)


async def test_a_role_with_the_readme_grants_reads_every_panel_and_writes_nothing(
    db: Any, database_url: URL
) -> None:
    _, start, end = await seed(db)
    role = f"bw_grafana_{uuid.uuid4().hex[:12]}"
    assert database_url.database is not None
    await db.execute(grafana_role_sql(role, database_url.database))
    reader = await asyncpg.connect(asyncpg_dsn(database_url.set(username=role)))
    try:
        variables = {"wallet": WALLET, "token": TOKEN}
        for where in sql("balances.json"):
            as_owner = await run(db, where, start, end, **variables)
            assert await run(reader, where, start, end, **variables) == as_owner, where
        # A SQL panel runs whatever its editor types. The role's sessions are read-only (even
        # a temporary table, which any role may make, is refused)...
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await reader.execute("CREATE TEMPORARY TABLE scratch (n integer)")
        # ...and, since a session may turn that off, the grants refuse every change anyway.
        await reader.execute("SET default_transaction_read_only = off")
        for statement in (
            "DELETE FROM watchlist",
            "INSERT INTO balance_history (wallet, token, amount) VALUES ('a', 'b', 1)",
            "UPDATE balance_rows SET amount = 0",
            "DROP VIEW latest_balance",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(statement)
    finally:
        await reader.close()
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")
