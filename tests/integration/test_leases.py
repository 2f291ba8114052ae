"""The lease statements and the fencing check against a real Postgres: a claim draws a new epoch,
a live lease cannot be taken, an expired one can (its tenure ending at its expiry), a batch
being stored holds off a takeover until it commits, and rows received after a tenure ended are
never stored."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.pipeline.pair_ids import PairIds
from balancewatch.pipeline.records import balance_line, stamp_from_micros
from balancewatch.pipeline.replay import store_lines
from balancewatch.store import leases
from balancewatch.store.db import asyncpg_dsn
from balancewatch.store.leases import Member
from balancewatch.store.writes import BatchFenced
from tests.helpers import TOKEN, WALLET, cut
from tests.writing import make_writer

TTL = 5.0
A = Member("a/1", "a", "host-a", "/spool/a")
B = Member("b/1", "b", "host-b", "/spool/b")


@pytest.fixture
async def raw(database_url: URL) -> Any:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    yield connection
    await connection.close()


async def other(database_url: URL) -> Any:
    return await asyncpg.connect(asyncpg_dsn(database_url))


async def claim(raw: Any, member: Member, shards: list[int], ttl: float = TTL) -> dict[int, int]:
    async with raw.transaction():
        await leases.heartbeat_and_renew(raw, member, ttl, 0, 5)
        return await leases.claim(raw, member.instance, shards, ttl, 5)


def line(epoch: int, at: datetime, amount: str = "1") -> bytes:
    micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return balance_line(WALLET, TOKEN, amount, stamp_from_micros(micros), epoch)


async def known_pair(raw: Any) -> PairIds:
    """The ids of the lines' one pair, learned as the writer does before a batch."""
    pairs = PairIds()
    await pairs.learn(raw, [f"{WALLET}\t{TOKEN}".encode()], 5)
    return pairs


async def test_a_claim_draws_a_new_epoch_and_opens_a_tenure(raw: Any) -> None:
    epochs = await claim(raw, A, [0, 1])
    assert set(epochs) == {0, 1}
    assert epochs[0] != epochs[1]
    rows = await raw.fetch("SELECT shard, owner, ended_at FROM shard_tenures ORDER BY shard")
    assert [(r["shard"], r["owner"], r["ended_at"]) for r in rows] == [
        (0, "a/1", None),
        (1, "a/1", None),
    ]
    assert await raw.fetchval("SELECT count(*) FROM shard_leases WHERE owner = 'a/1'") == 2


async def test_an_expired_lease_nobody_took_is_renewed_under_the_same_epoch(raw: Any) -> None:
    first = await claim(raw, A, [0])
    await raw.execute("UPDATE shard_leases SET expires_at = now() - interval '1 second'")
    state = await leases.heartbeat_and_renew(raw, A, TTL, 0, 5)
    assert state.renewed == first
    assert await claim(raw, B, [0]) == {}


async def test_a_round_says_when_the_first_lease_of_another_process_expires(raw: Any) -> None:
    await claim(raw, A, [0], ttl=TTL)
    state = await leases.heartbeat_and_renew(raw, B, TTL, 0, 5)
    assert state.next_expiry is not None
    assert 0 < state.next_expiry <= TTL
    # Its own leases, and free ones, are not waited for.
    assert (await leases.heartbeat_and_renew(raw, A, TTL, 0, 5)).next_expiry is None


async def test_a_live_lease_cannot_be_claimed_by_another(raw: Any) -> None:
    await claim(raw, A, [0])
    assert await claim(raw, B, [0]) == {}
    state = await leases.heartbeat_and_renew(raw, A, TTL, 0, 5)
    assert state.renewed.keys() == {0}
    assert state.live == {"a", "b"}


async def test_an_expired_lease_is_taken_with_a_higher_epoch_and_the_old_tenure_ends_at_expiry(
    raw: Any,
) -> None:
    first = await claim(raw, A, [0])
    await raw.execute("UPDATE shard_leases SET expires_at = now() - interval '1 second'")
    expired_at = await raw.fetchval("SELECT expires_at FROM shard_leases WHERE shard = 0")
    second = await claim(raw, B, [0])
    assert second[0] > first[0]
    # Taken: the old owner's renewal finds nothing of its own.
    assert (await leases.heartbeat_and_renew(raw, A, TTL, 0, 5)).renewed == {}
    ended = await raw.fetchval("SELECT ended_at FROM shard_tenures WHERE epoch = $1", first[0])
    assert ended == expired_at


async def test_a_release_ends_the_tenure_and_frees_the_shard_with_a_notify(
    raw: Any, database_url: URL
) -> None:
    listener = await other(database_url)
    heard: list[str] = []
    await listener.add_listener("balancewatch_shards", lambda *args: heard.append(args[3]))
    first = await claim(raw, A, [0, 1])
    await leases.release(raw, A.instance, [0], 5)
    assert set(await claim(raw, B, [0, 1])) == {0}  # shard 1 is still A's
    ended = await raw.fetchval("SELECT ended_at FROM shard_tenures WHERE epoch = $1", first[0])
    assert ended is not None
    await asyncio.sleep(0.1)  # let the notification arrive
    assert "released" in heard
    await listener.close()


async def test_a_restarted_process_on_the_same_spool_takes_its_dead_predecessors_leases_at_once(
    raw: Any,
) -> None:
    await claim(raw, A, [0, 1])  # then SIGKILLed: its leases stay unexpired for a TTL
    # Its replica id may differ (the default has the process id in it): the spool is the proof.
    successor = Member("a2/2", "a2", "host-a", "/spool/a")
    assert set(await claim(raw, successor, [0, 1])) == {0, 1}
    assert await raw.fetchval("SELECT count(*) FROM replicas WHERE instance = 'a/1'") == 0
    # The same spool path on another host, or another spool, is never a predecessor's.
    for other_member in (
        Member("a/3", "a", "host-b", "/spool/a"),
        Member("a/4", "a", "host-a", "/s"),
    ):
        assert await claim(raw, other_member, [0, 1]) == {}


async def test_retire_releases_everything_and_leaves_the_membership(raw: Any) -> None:
    await claim(raw, A, list(range(64)))
    assert await leases.retire(raw, A.instance, 5) == 64
    assert await raw.fetchval("SELECT count(*) FROM shard_leases WHERE owner IS NOT NULL") == 0
    assert await raw.fetchval("SELECT count(*) FROM replicas") == 0
    assert set(await claim(raw, B, list(range(64)))) == set(range(64))


async def test_rows_received_after_their_tenure_ended_are_never_stored(raw: Any) -> None:
    epoch = (await claim(raw, A, [0]))[0]
    await leases.release(raw, A.instance, [0], 5)
    ended = await raw.fetchval("SELECT ended_at FROM shard_tenures WHERE epoch = $1", epoch)
    before = line(epoch, ended - timedelta(milliseconds=5), "1")
    after = line(epoch, ended + timedelta(milliseconds=5), "2")
    unknown = line(epoch + 1000, ended, "3")
    pairs = await known_pair(raw)
    # The trigger refuses the plain COPY whole...
    with pytest.raises(BatchFenced):
        await store_lines(raw, [before, after, unknown], pairs, 5)
    assert await raw.fetchval("SELECT count(*) FROM balance_history") == 0
    # ...and the split stores the row that passes.
    async with raw.transaction():
        fenced = await store_lines(raw, [before, after, unknown], pairs, 5, split=True)
    assert fenced.refused == 2
    stored = await raw.fetch("SELECT amount::text AS amount, epoch FROM balance_history")
    assert [(r["amount"], r["epoch"]) for r in stored] == [("1", epoch)]


async def test_a_batch_being_stored_holds_off_a_takeover_until_it_commits(
    raw: Any, database_url: URL
) -> None:
    epoch = (await claim(raw, A, [0], ttl=0.5))[0]
    writer = await other(database_url)
    pairs = await known_pair(writer)
    transaction = writer.transaction()
    await transaction.start()
    fenced = await store_lines(writer, [line(epoch, datetime.now(UTC))], pairs, 5)
    assert fenced.refused == 0
    await asyncio.sleep(0.6)  # the lease expires in the database's clock meanwhile
    takeover = asyncio.create_task(claim(raw, B, [0]))
    await asyncio.sleep(0.3)
    assert not takeover.done()  # waiting on the batch's FOR SHARE lock
    await transaction.commit()
    taken = await asyncio.wait_for(takeover, 5)
    assert taken[0] > epoch
    assert await raw.fetchval("SELECT count(*) FROM balance_history WHERE epoch = $1", epoch) == 1
    await writer.close()


@pytest.mark.usefixtures("writers_closed")
async def test_the_writer_stores_the_rows_that_pass_and_counts_those_fenced(
    raw: Any, engine: AsyncEngine
) -> None:
    epoch = (await claim(raw, A, [0]))[0]
    await leases.release(raw, A.instance, [0], 5)
    ended = await raw.fetchval("SELECT ended_at FROM shard_tenures WHERE epoch = $1", epoch)
    writer = make_writer(engine)
    for amount, at in (("1", ended - timedelta(seconds=1)), ("2", ended + timedelta(seconds=1))):
        writer.add(*cut(line(epoch, at, amount)))
    assert await writer.flush()
    assert (writer.rows_written, writer.rows_fenced) == (1, 1)
    assert await raw.fetchval("SELECT amount::text FROM balance_history") == "1"


@pytest.mark.parametrize(
    "insert",
    [
        "INSERT INTO balance_rows (pair_id, amount, received_at, epoch) VALUES (1, 1, $1, $2)",
        "INSERT INTO balance_history (wallet, token, amount, received_at, epoch) "
        f"VALUES ('{WALLET}', '{TOKEN}', 1, $1, $2)",
    ],
    ids=["balance_rows", "through_the_view"],
)
async def test_a_late_row_is_refused_written_directly_or_through_the_view(
    raw: Any, insert: str
) -> None:
    epoch = (await claim(raw, A, [0]))[0]
    await leases.release(raw, A.instance, [0], 5)
    ended = await raw.fetchval("SELECT ended_at FROM shard_tenures WHERE epoch = $1", epoch)
    with pytest.raises(asyncpg.PostgresError) as refused:
        await raw.execute(insert, ended + timedelta(milliseconds=5), epoch)
    assert refused.value.sqlstate == "BWF01"
    await raw.execute(insert, ended - timedelta(milliseconds=5), epoch)  # in time: stored
    assert await raw.fetchval("SELECT count(*) FROM balance_rows") == 1
