"""The COPY rows of balance_rows, made from whole lines (the spool's) and from rows kept cut in
two (memory's): the same bytes either way, and the pairs without a known id named."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest

from balancewatch.pipeline.pair_ids import PairIds, UnknownPairs
from balancewatch.pipeline.records import Rows, balance_line
from balancewatch.store import writes
from balancewatch.store.db import RawConnection
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, cut

STAMP = "2026-11-30 19:00:00.123456+00:00"
LINES = [
    balance_line(WALLET, TOKEN, "1.5", STAMP, 7),
    balance_line(WALLET2, SOL, "2", STAMP),
    balance_line(WALLET, TOKEN, "3", STAMP, 7),
]


class OutsideATransaction:
    def is_in_transaction(self) -> bool:
        return False


async def known(monkeypatch: pytest.MonkeyPatch, ids: dict[tuple[str, str], int]) -> PairIds:
    async def found(
        _raw: RawConnection, pairs: Sequence[Sequence[str]], _timeout: float
    ) -> list[tuple[str, str, int]]:
        return [(wallet, token, ids[wallet, token]) for wallet, token in pairs]

    monkeypatch.setattr(writes, "pair_ids", found)
    pairs = PairIds()
    keys = {f"{wallet}\t{token}".encode() for wallet, token in ids}
    await pairs.learn(cast(RawConnection, OutsideATransaction()), keys, 1.0)
    return pairs


def cut_rows() -> Rows:
    rows = Rows()
    for pair, tail in map(cut, LINES):
        rows.pairs.append(pair)
        rows.tails.append(tail)
    return rows


async def test_rows_cut_in_two_copy_as_the_same_bytes_as_their_whole_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pairs = await known(monkeypatch, {(WALLET, TOKEN): 41, (WALLET2, SOL): 42})
    expected = f"41\t1.5\t{STAMP}\t7\n42\t2\t{STAMP}\t\\N\n41\t3\t{STAMP}\t7\n".encode()
    assert pairs.rows(LINES) == expected
    assert pairs.copy_rows(cut_rows()) == expected


async def test_rows_of_a_pair_without_a_known_id_name_that_pair_whole_lines_or_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pairs = await known(monkeypatch, {(WALLET, TOKEN): 41})
    unknown = {f"{WALLET2}\t{SOL}".encode()}
    with pytest.raises(UnknownPairs) as from_lines:
        pairs.rows(LINES)
    with pytest.raises(UnknownPairs) as from_rows:
        pairs.copy_rows(cut_rows())
    assert from_lines.value.keys == from_rows.value.keys == unknown
