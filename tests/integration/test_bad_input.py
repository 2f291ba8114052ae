"""Bad input, end to end: every malformed frame the real websocket can carry is refused, kept in
rejected_messages and counted, and the stream goes on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import logs
from balancewatch.devtools.simulator import Simulator
from tests.helpers import (
    API_KEY,
    SOL,
    TOKEN,
    WALLET,
    WALLET2,
    make_settings,
    room,
    running_daemon,
    wait_until,
)

MAX_FRAME_BYTES = 1024
FRAME_CHARS = 256  # rejected_frame_chars: how much of a rejected frame is kept


def message(
    amount: str = "1",
    *,
    wallet: str = WALLET,
    token: str = TOKEN,
    room_name: str | None = None,
    extra: str = "",
    data_extra: str = "",
) -> str:
    room_name = room(wallet, token) if room_name is None else room_name
    return (
        f'{{"type":"message","room":"{room_name}"{extra},'
        f'"data":{{"wallet":"{wallet}","token":"{token}","amount":{amount}{data_extra}}}}}'
    )


@dataclass(frozen=True)
class Case:
    frame: str | bytes
    reason: str
    room: str | None = None
    stored: str | None = None  # the frame as kept; by default its first FRAME_CHARS characters


CASES = {
    "not JSON": Case("not json", "not_json"),
    "JSON that is not an object": Case("[1, 2]", "not_object"),
    "an unknown type": Case(f'{{"type":"surprise","room":"{room()}"}}', "unknown_type", room()),
    "no type": Case(f'{{"room":"{room()}"}}', "unknown_type", room()),
    "no data": Case(f'{{"type":"message","room":"{room()}"}}', "invalid_fields", room()),
    "null data": Case(
        f'{{"type":"message","room":"{room()}","data":null}}', "invalid_fields", room()
    ),
    "a missing field": Case(
        f'{{"type":"message","room":"{room()}","data":{{"wallet":"{WALLET}","token":"{TOKEN}"}}}}',
        "invalid_fields",
        room(),
    ),
    "an extra field": Case(message(data_extra=',"x":2'), "invalid_fields", room()),
    "an extra top-level field": Case(message(extra=',"slot":5'), "invalid_fields", room()),
    "a mistyped field": Case(
        message().replace(f'"wallet":"{WALLET}"', '"wallet":12'), "invalid_fields", room()
    ),
    "an invalid address": Case(
        message(wallet="not-an-address-0OIl"),
        "invalid_fields",
        room("not-an-address-0OIl", TOKEN),
    ),
    "the amount as a string": Case(message('"5"'), "amount_not_number", room()),
    "NaN": Case(message("NaN"), "not_json"),
    "Infinity": Case(message("Infinity"), "not_json"),
    "1e400": Case(message("1e400"), "amount_out_of_range", room()),
    "more decimals than numeric holds": Case(message("1e-16384"), "amount_out_of_range", room()),
    "a negative amount": Case(message("-3"), "negative_amount", room()),
    "a room that does not match its data": Case(
        message(room_name=room(WALLET, SOL)), "room_mismatch", room(WALLET, SOL)
    ),
    "a room never joined": Case(
        message(wallet=WALLET2, token=SOL), "room_not_joined", room(WALLET2, SOL)
    ),
    "a NUL character": Case(
        '{"type":"surprise\x00"}', "not_json", stored='{"type":"surprise\\x00"}'
    ),
    "a binary frame": Case(
        b'{"type":"ping"}\x00', "binary_frame", stored='b\'{"type":"ping"}\\x00\''
    ),
    "a frame over max_frame_bytes": Case(
        # Valid but for its size (trailing whitespace is still JSON): the size check comes first.
        message() + " " * 5000,
        "too_large",
    ),
    "a frame holding the API key": Case(
        f'{{"type":"error","message":"bad key {API_KEY}"}}',
        "unknown_type",
        stored='{"type":"error","message":"bad key ***"}',
    ),
}


async def rows(db: Any, table: str) -> int:
    count: int = await db.fetchval(f"SELECT count(*) FROM {table}")
    return count


@pytest.fixture
def scrubbed_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API key registered as a secret, as `balancewatch run` does at start-up."""
    scrubber = logs.SecretScrubber()
    scrubber.register([API_KEY])
    monkeypatch.setattr(logs, "scrubber", scrubber)


@pytest.mark.usefixtures("scrubbed_key")
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_malformed_frame_is_kept_in_rejected_messages_never_stored_and_the_stream_goes_on(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator, case: Case
) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    settings = make_settings(
        database_url,
        simulator.url,
        max_frame_bytes=MAX_FRAME_BYTES,
        rejected_frame_chars=FRAME_CHARS,
    )
    async with running_daemon(settings) as running:
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await simulator.send_raw(case.frame)
        await simulator.send_balance(WALLET, TOKEN, "42")
        await wait_until(
            lambda: rows(db, "balance_history"), what="the valid row after the bad frame"
        )
        await wait_until(lambda: rows(db, "rejected_messages"), what="the rejected row")
        assert running.daemon.ingest.rejected == Counter({case.reason: 1})

    history = await db.fetch("SELECT wallet, token, amount FROM balance_history")
    assert [tuple(row) for row in history] == [(WALLET, TOKEN, Decimal(42))]
    rejected = await db.fetch("SELECT reason, room, frame, frame_size FROM rejected_messages")
    raw = case.frame.encode() if isinstance(case.frame, str) else case.frame
    default = case.frame[:FRAME_CHARS] if isinstance(case.frame, str) else None
    assert [tuple(row) for row in rejected] == [
        (case.reason, case.room, case.stored or default, len(raw))
    ]


async def test_the_detail_and_arrival_time_of_a_rejected_frame_are_kept(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        before = await db.fetchval("SELECT now()")
        await simulator.send_raw(message("-3"))
        await wait_until(lambda: rows(db, "rejected_messages"), what="the rejected row")
        after = await db.fetchval("SELECT clock_timestamp()")
    row = await db.fetchrow("SELECT detail, received_at FROM rejected_messages")
    assert row["detail"] == "data.amount is negative"
    assert before <= row["received_at"] <= after
