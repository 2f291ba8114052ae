"""The rows the daemon writes.

A balance row is kept, from the read loop to the database, as the one line Postgres `COPY ...
FROM STDIN` takes in its text format:
`wallet<TAB>token<TAB>amount<TAB>received_at<TAB>epoch<LF>`, the epoch being the shard tenure it
was received under (`\\N`, COPY's NULL, when there is none). The
same bytes wait in memory, go to the spool and are sent to COPY, so a row is formatted once and
never parsed again in Python; the amount is the frame's own digits, so no float or Decimal is
ever made of it. Nothing in a row needs COPY's escaping: the addresses are base58, the amount
is a plain decimal number and the time has no tab, newline or backslash.

In memory, until they are written or spooled, rows are kept cut in two (`Rows`): the pair's
key, `wallet<TAB>token`, one bytes object shared by every row of a room, and the line's tail,
`<TAB>amount<TAB>received_at<TAB>epoch<LF>`. The COPY row is then the pair's id and the tail,
with no line to search for its second tab, cut and hash again (a tenth of a message's CPU);
the line, for the spool, is the key and the tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import time_ns
from typing import Final

BalanceLine = bytes
PairKey = bytes  # b"wallet\ttoken": a line up to its second tab
Tail = bytes  # b"\tamount\treceived_at\tepoch\n": the rest of the line

NO_EPOCH: Final = "\\N"
NO_EPOCH_BYTES: Final = NO_EPOCH.encode()
_MICROS: Final = 1_000_000
# ".000" to ".999" and "000+00:00" to "999+00:00": a time's fraction is two look-ups.
_MILLIS_TEXT: Final = tuple(f".{n:03d}" for n in range(1000))
_MICROS_TEXT: Final = tuple(f"{n:03d}+00:00" for n in range(1000))


def balance_line(
    wallet: str, token: str, amount: str, received_at: str, epoch: int | str | None = None
) -> BalanceLine:
    """A row as a COPY text line; `amount` in plain decimal notation, `received_at` a stamp,
    `epoch` a number or its text (the ingest keeps each shard's, made once)."""
    tenure = NO_EPOCH if epoch is None else epoch
    return f"{wallet}\t{token}\t{amount}\t{received_at}\t{tenure}\n".encode()


@dataclass(slots=True)
class Rows:
    """Rows in arrival order, each as its pair's key and its tail (`pairs[i] + tails[i]` is
    the line)."""

    pairs: list[PairKey] = field(default_factory=list)
    tails: list[Tail] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tails)

    def lines(self) -> list[BalanceLine]:
        return [pair + tail for pair, tail in zip(self.pairs, self.tails, strict=True)]


def received_at(line: BalanceLine | Tail) -> datetime:
    """The time a row was received, read back from its line or its tail (counted from the
    end, which both share)."""
    return datetime.fromisoformat(line.rsplit(b"\t", 2)[1].decode())


def epoch_of(line: BalanceLine) -> int | None:
    """The shard tenure a row was received under, read back from its line."""
    tenure = line[line.rindex(b"\t") + 1 : -1]
    return None if tenure == NO_EPOCH_BYTES else int(tenure)


def stamp_from_micros(micros: int) -> str:
    """A UTC time given in microseconds since the epoch, as a timestamptz literal."""
    second, fraction = divmod(micros, _MICROS)
    return _second_text(second) + _fraction_text(fraction)


class Stamps:
    """The wall-clock time as a timestamptz literal, for every balance received.

    Formatting a datetime costs more than a microsecond, a large part of handling a frame:
    the part up to the second is formatted once per second here, and the fraction looked up.
    """

    def __init__(self) -> None:
        # The first microsecond (since the epoch) of the second `_prefix` spells out; 0 with
        # no prefix yet, so the first stamp is out of its range and formats its own.
        self._second_micros = 0
        self._prefix = ""

    def tail(self, amount: str, epoch: str | None) -> Tail:
        """The tail of `balance_line(wallet, token, amount, now, epoch)`, in one step: this
        runs for every message, and each call, look-up and concatenation saved shows in its
        CPU time (one subtraction and one comparison find that the second is the same)."""
        micros = time_ns() // 1000 - self._second_micros
        if not 0 <= micros < _MICROS:  # the next second, or the clock was set back
            micros = self._new_second(micros)
        return (
            f"\t{amount}\t{self._prefix}{_MILLIS_TEXT[micros // 1000]}"
            f"{_MICROS_TEXT[micros % 1000]}\t{NO_EPOCH if epoch is None else epoch}\n"
        ).encode()

    def _new_second(self, micros: int) -> int:
        """Format the second `micros` (counted from the old one) falls in; micros into it."""
        now = self._second_micros + micros
        second = now // _MICROS
        self._second_micros = second * _MICROS
        self._prefix = _second_text(second)
        return now - self._second_micros


def _second_text(second: int) -> str:
    return f"{datetime.fromtimestamp(second, UTC):%Y-%m-%d %H:%M:%S}"


def _fraction_text(micros: int) -> str:
    millis, rest = divmod(micros, 1000)
    return _MILLIS_TEXT[millis] + _MICROS_TEXT[rest]
