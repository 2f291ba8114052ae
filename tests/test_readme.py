"""The README's SQL runs as written, against the real schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.helpers import TOKEN, WALLET

README = Path(__file__).parent.parent / "README.md"


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.DOTALL)


async def test_every_sql_example_in_the_readme_runs(db: Any) -> None:
    await db.execute(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "SELECT $1, $2, i * 1.5, now() - i * interval '1 minute' FROM generate_series(1, 90) i",
        WALLET,
        TOKEN,
    )
    blocks = sql_blocks()
    assert len(blocks) >= 5
    results = []
    for block in blocks:
        results.append(
            await db.fetch(block)
            if block.lstrip().startswith("SELECT")
            else await db.execute(block)
        )
    latest, one_pair, last_hour = results[-3:]
    assert [(row["wallet"], row["amount"]) for row in latest] == [(WALLET, 1.5)]
    assert len(one_pair) == 50
    assert len(last_hour) == 59
    assert last_hour[-1]["delta"] == -1.5
