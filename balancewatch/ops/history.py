"""`balancewatch history`: one pair's balances as a table (with a terminal chart), CSV or JSON,
and optionally the same chart as a PNG; or every token's of a wallet, with a token column and
no chart (a chart is of one token).

Amounts are read as Postgres' own text of the `numeric` (`amount::text`) and printed as that:
no float touches a printed amount. Only the chart's geometry uses floats.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.domain import address_problems
from balancewatch.errors import EXIT_OK, EXIT_USAGE
from balancewatch.ops.commands import with_engine
from balancewatch.store.history import Gap, Row, fetch, fetch_gaps

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class UsageError(ValueError):
    """A bad argument: printed as one line, exit code 2."""


# --- arguments ------------------------------------------------------------------------------


def parse_time(value: str, now: datetime) -> datetime:
    """An ISO 8601 timestamp (naive means UTC) or a span back from `now`: 90s, 15m, 1h, 2d, 1w."""
    relative = _RELATIVE.fullmatch(value.strip())
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UsageError(
            f"{value!r} is neither an ISO 8601 time (2026-11-23T12:00:00Z) "
            "nor a span back from now (30m, 1h, 2d, 1w)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a Z: fixed width, sorts as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_pair(wallet: str, token: str | None) -> None:
    problems = address_problems(WALLET=wallet, TOKEN=token)
    if problems:
        raise UsageError("; ".join(problems))


# --- output ---------------------------------------------------------------------------------


def merged(rows: Sequence[Row], gaps: Sequence[Gap]) -> list[Row | Gap]:
    """Newest first, each gap where it began: after the rows received since it ended."""

    def moment(entry: Row | Gap) -> datetime:
        return entry.received_at if isinstance(entry, Row) else entry.start

    return sorted([*rows, *gaps], key=moment, reverse=True)


def _until(gap: Gap) -> str:
    return "now" if gap.end is None else iso_utc(gap.end)


def render_table(rows: Sequence[Row], gaps: Sequence[Gap] = (), *, tokens: bool = False) -> str:
    """With `tokens`, a TOKEN column (the rows of a whole wallet)."""
    width = max([len("AMOUNT"), *(len(row.amount) for row in rows)])
    token_width = max([len("TOKEN"), *(len(row.token) for row in rows)])

    def token(text: str) -> str:
        return f"{text:{token_width}}  " if tokens else ""

    lines = [f"{'RECEIVED_AT (UTC)':27}  {token('TOKEN')}{'AMOUNT':>{width}}  SOURCE"]
    for entry in merged(rows, gaps):
        if isinstance(entry, Row):
            lines.append(
                f"{iso_utc(entry.received_at):27}  {token(entry.token)}"
                f"{entry.amount:>{width}}  {entry.source}"
            )
        else:
            lines.append(
                f"-- not listening from {iso_utc(entry.start)} to {_until(entry)} "
                f"({entry.reason}) --"
            )
    return "\n".join(lines) + "\n"


CSV_COLUMNS: Final = ("kind", "received_at", "amount", "source", "slot", "until", "end_reason")


def render_csv(rows: Sequence[Row], gaps: Sequence[Gap] = (), *, tokens: bool = False) -> str:
    """One line per row (kind `balance`) and per gap (kind `gap`: from received_at to until);
    with `tokens`, a `token` column after `received_at` (empty on a gap: the wallet's)."""
    columns = list(CSV_COLUMNS)
    if tokens:
        columns.insert(2, "token")
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for entry in merged(rows, gaps):
        if isinstance(entry, Row):
            writer.writerow(
                {
                    "kind": "balance",
                    "received_at": iso_utc(entry.received_at),
                    "token": entry.token,
                    "amount": entry.amount,
                    "source": entry.source,
                    "slot": "" if entry.slot is None else entry.slot,
                }
            )
        else:
            until = "" if entry.end is None else iso_utc(entry.end)
            writer.writerow(
                {
                    "kind": "gap",
                    "received_at": iso_utc(entry.start),
                    "until": until,
                    "end_reason": entry.reason,
                }
            )
    return out.getvalue()


def render_json(rows: Sequence[Row], gaps: Sequence[Gap] = (), *, tokens: bool = False) -> str:
    """A JSON array of balances and gaps, newest first; amounts are strings so that no reader
    turns them into floats. With `tokens`, each balance names its token."""
    items: list[dict[str, object]] = []
    for entry in merged(rows, gaps):
        if isinstance(entry, Row):
            token = {"token": entry.token} if tokens else {}
            items.append(
                {
                    "kind": "balance",
                    **token,
                    "received_at": iso_utc(entry.received_at),
                    "amount": entry.amount,
                    "source": entry.source,
                    "slot": entry.slot,
                }
            )
        else:
            until = None if entry.end is None else iso_utc(entry.end)
            items.append(
                {
                    "kind": "gap",
                    "from": iso_utc(entry.start),
                    "until": until,
                    "end_reason": entry.reason,
                }
            )
    return json.dumps(items, indent=2) + "\n"


# Braille: each character is a 2x4 grid of dots; bit of the dot at (column, row).
_BRAILLE_BASE: Final = 0x2800
_DOT_BITS: Final = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


def render_chart(
    rows: Sequence[Row], gaps: Sequence[Gap] = (), *, width: int = 60, height: int = 8
) -> str:
    """The balance over time as a braille step chart (a balance holds until the next message).

    Time runs left to right, linearly; the y axis spans the lowest to the highest amount shown,
    both labelled exactly as stored; under the time axis, `░` marks the gaps in listening.
    Empty for fewer than two rows.
    """
    if len(rows) < 2:
        return ""
    ordered = sorted(rows, key=lambda row: row.received_at)
    times = [row.received_at.timestamp() for row in ordered]
    values = [float(Decimal(row.amount)) for row in ordered]
    low_row = min(ordered, key=lambda row: Decimal(row.amount))
    high_row = max(ordered, key=lambda row: Decimal(row.amount))
    low, high = float(Decimal(low_row.amount)), float(Decimal(high_row.amount))
    dots_x, dots_y = width * 2, height * 4
    span_t = (times[-1] - times[0]) or 1.0

    def y_of(value: float) -> int:
        if high == low:
            return dots_y // 2
        return round((value - low) / (high - low) * (dots_y - 1))

    cells = [[0] * width for _ in range(height)]

    def dot(x: int, y: int) -> None:
        row = dots_y - 1 - y
        cells[row // 4][x // 2] |= _DOT_BITS[x % 2][row % 4]

    index, previous = 0, None
    for x in range(dots_x):
        moment = times[0] + span_t * x / (dots_x - 1)
        while index + 1 < len(times) and times[index + 1] <= moment:
            index += 1
        y = y_of(values[index])
        before = y if previous is None else previous
        for step in range(min(y, before), max(y, before) + 1):
            dot(x, step)
        previous = y

    labels = [high_row.amount, low_row.amount]
    margin = max(len(label) for label in labels)
    lines = []
    for number, cell_row in enumerate(cells):
        label = labels[0] if number == 0 else labels[1] if number == height - 1 else ""
        tick = "┤" if label else "│"
        lines.append(
            f"{label:>{margin}} {tick}" + "".join(chr(_BRAILLE_BASE + c) for c in cell_row)
        )
    lines.append(" " * margin + " └" + "─" * width)
    start, end = iso_utc(ordered[0].received_at), iso_utc(ordered[-1].received_at)
    gap = max(1, width - len(start) - len(end))
    lines.append(" " * (margin + 2) + start + " " * gap + end)
    moments = [times[0] + span_t * x / (dots_x - 1) for x in range(0, dots_x, 2)]
    marks = "".join("░" if _in_a_gap(moment, gaps) else " " for moment in moments)
    if marks.strip():
        lines.append(" " * (margin + 2) + marks + "  ░ not listening")
    return "\n".join(lines) + "\n"


def _in_a_gap(moment: float, gaps: Sequence[Gap]) -> bool:
    return any(
        gap.start.timestamp() <= moment and (gap.end is None or moment < gap.end.timestamp())
        for gap in gaps
    )


def write_png(rows: Sequence[Row], missed: Sequence[Gap], path: Path, title: str) -> None:
    """The same step chart as an image, with matplotlib's Agg backend (extra `plot`), the
    gaps in listening shaded."""
    import numpy  # noqa: PLC0415  (comes with matplotlib)
    from matplotlib.figure import Figure  # noqa: PLC0415  (optional, heavy)

    ordered = sorted(rows, key=lambda row: row.received_at)
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.add_subplot()
    # datetime64 is naive and read as UTC by matplotlib.
    times = [row.received_at.astimezone(UTC).replace(tzinfo=None) for row in ordered]
    axes.step(
        numpy.array(times, dtype="datetime64[us]"),
        [float(Decimal(row.amount)) for row in ordered],
        where="post",
        marker=".",
    )
    for number, gap in enumerate(missed):
        start = gap.start.astimezone(UTC).replace(tzinfo=None)
        end = times[-1] if gap.end is None else gap.end.astimezone(UTC).replace(tzinfo=None)
        label = "not listening" if number == 0 else None
        # Datetimes, converted by matplotlib's date units like the x data (its stubs say float).
        axes.axvspan(start, end, color="grey", alpha=0.25, label=label)  # type: ignore[arg-type]
    if missed:
        axes.legend(loc="best", fontsize=8)
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("received_at (UTC)")
    axes.set_ylabel("amount")
    axes.grid(visible=True, alpha=0.3)
    figure.savefig(path, format="png")


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


# --- the command ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Window:
    since: datetime | None
    until: datetime | None
    limit: int | None


def _window(args: argparse.Namespace) -> _Window:
    """Check every argument before touching the database; UsageError names the bad one."""
    check_pair(args.wallet, args.token)
    if args.plot and args.token is None:
        raise UsageError("--plot draws one token's chart: give the TOKEN after the WALLET")
    now = datetime.now(UTC)
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    if since and until and since > until:
        raise UsageError("--since is after --until")
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    if args.plot and not plotting_available():
        raise UsageError("--plot needs matplotlib: pip install 'balancewatch[plot]'")
    return _Window(since, until, args.limit or None)


def command(args: argparse.Namespace) -> int:
    try:
        window = _window(args)
    except UsageError as exc:
        print(f"balancewatch: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def show(engine: AsyncEngine) -> int:
        rows = await fetch(
            engine,
            args.wallet,
            args.token,
            since=window.since,
            until=window.until,
            limit=window.limit,
        )
        # The gaps from the oldest row shown to the end of the window.
        missed = (
            await fetch_gaps(
                engine,
                args.wallet,
                args.token,
                since=min(row.received_at for row in rows),
                until=window.until or datetime.now(UTC),
            )
            if rows
            else []
        )
        _print(rows, missed, args)
        if args.plot and rows:
            write_png(rows, missed, args.plot, f"{args.wallet} / {args.token}")
            print(f"chart written to {args.plot}", file=sys.stderr)
        elif args.plot:
            print(f"no rows, so no chart written to {args.plot}", file=sys.stderr)
        return EXIT_OK

    return with_engine(show)


def _print(rows: Sequence[Row], missed: Sequence[Gap], args: argparse.Namespace) -> None:
    """A whole wallet's rows (no token given) name their token, and have no chart: a chart
    is of one token."""
    tokens = args.token is None
    if args.format == "csv":
        sys.stdout.write(render_csv(rows, missed, tokens=tokens))
    elif args.format == "json":
        sys.stdout.write(render_json(rows, missed, tokens=tokens))
    elif not rows:
        of = f"any token of {args.wallet}" if tokens else f"{args.wallet} {args.token}"
        print(f"no balances for {of} in that window", file=sys.stderr)
    else:
        sys.stdout.write(render_table(rows, missed, tokens=tokens))
        chart = "" if tokens else render_chart(rows, missed)
        if chart:
            sys.stdout.write("\n" + chart)
