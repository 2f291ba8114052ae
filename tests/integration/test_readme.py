"""The README's SQL runs as written, against the real schema."""

from __future__ import annotations

from typing import Any

from tests.files import sql_blocks
from tests.helpers import TOKEN, WALLET


def _without_comments(block: str) -> str:
    return "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))


async def test_every_sql_example_in_the_readme_runs(db: Any) -> None:
    await db.execute(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "SELECT $1, $2, i * 1.5, now() - i * interval '1 minute' FROM generate_series(1, 90) i",
        WALLET,
        TOKEN,
    )
    blocks = sql_blocks()
    assert len(blocks) >= 6
    results = {}
    for block in blocks:
        query = _without_comments(block).lstrip().startswith("SELECT")
        results[block] = await (db.fetch(block) if query else db.execute(block))

    def result_of(marker: str) -> Any:
        return next(result for block, result in results.items() if marker in block)

    latest = result_of("-- 1. ")
    assert [(row["wallet"], row["amount"]) for row in latest] == [(WALLET, 1.5)]
    assert len(result_of("-- 2. ")) == 50
    last_hour = result_of("-- 3. ")
    assert len(last_hour) == 59
    assert last_hour[-1]["delta"] == -1.5
