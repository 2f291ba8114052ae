"""Each pair's id in `pairs`, so that a row is stored as a small number, not two addresses.

A row travels as its line, `wallet<TAB>token<TAB>amount<TAB>received_at<TAB>epoch<LF>` (see
records.py; in memory, cut in two after `wallet<TAB>token`), in the spool (which may outlive a
database, so it keeps the addresses) and up to the COPY. There, the line's `wallet<TAB>token`
is replaced with the pair's id, looked up in a dict of this process: one dict look-up and one
concatenation a row (and, for a line read back from the spool, finding where its key ends).
A pair the dict does not know (a new watch, a wallet room's new token, any pair after a
restart) costs one round trip for the whole batch, outside the batch's transaction: an id is
only remembered once it is committed, so a batch rolled back cannot leave one behind that the
database does not have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

from balancewatch.pipeline.records import BalanceLine, Rows
from balancewatch.store import writes
from balancewatch.store.db import RawConnection

_TAB = 9
Result = TypeVar("Result")


class UnknownPairs(Exception):
    """Lines of pairs whose id this process does not know yet."""

    def __init__(self, keys: set[bytes]) -> None:
        super().__init__(f"{len(keys)} pairs without a known id")
        self.keys = keys


class PairIds:
    def __init__(self) -> None:
        self._ids: dict[bytes, bytes] = {}  # b"wallet\ttoken" -> b"42"

    def __len__(self) -> int:
        return len(self._ids)

    def rows(self, lines: Sequence[BalanceLine]) -> bytes:
        """The lines as COPY text rows of balance_rows (pair_id, amount, received_at, epoch);
        UnknownPairs if the id of some pair is not known yet."""
        ids = self._ids
        try:
            return b"".join(
                [
                    ids[line[: (cut := line.index(_TAB, line.index(_TAB) + 1))]] + line[cut:]
                    for line in lines
                ]
            )
        except KeyError:
            raise UnknownPairs({key for key in map(_pair_of, lines) if key not in ids}) from None

    def copy_rows(self, rows: Rows) -> bytes:
        """`rows(rows.lines())`, from rows kept cut in two: a key shared by a room's rows has
        its hash computed once, and no line is searched or cut."""
        ids = self._ids
        try:
            return b"".join(
                [ids[pair] + tail for pair, tail in zip(rows.pairs, rows.tails, strict=True)]
            )
        except KeyError:
            raise UnknownPairs({pair for pair in set(rows.pairs) if pair not in ids}) from None

    async def learn(self, raw: RawConnection, keys: Collection[bytes], timeout: float) -> None:
        """Add these pairs to `pairs` if they are new, and remember their ids. Outside any
        transaction: the ids are committed before they are remembered."""
        assert not raw.is_in_transaction(), "an id must not outlive a rolled-back transaction"
        pairs = [key.decode().split("\t") for key in keys]
        found = await writes.pair_ids(raw, pairs, timeout)
        for wallet, token, pair_id in found:
            self._ids[f"{wallet}\t{token}".encode()] = str(pair_id).encode()

    async def known_for(
        self, raw: RawConnection, write: Callable[[], Awaitable[Result]], timeout: float
    ) -> Result:
        """`write`, done again after learning the pairs it found unknown (once its own
        transaction, if it had one, is rolled back)."""
        try:
            return await write()
        except UnknownPairs as unknown:
            await self.learn(raw, unknown.keys, timeout)
            return await write()


def _pair_of(line: BalanceLine) -> bytes:
    return line[: line.index(_TAB, line.index(_TAB) + 1)]
