"""`balancewatch watch import/export`: the watchlist as a CSV file.

The format is a header naming the columns, `wallet,token,enabled,label` (`enabled` and `label`
may be left out, in any order after a header that names them), then one pair per line, or one
whole wallet (an empty token: every token of the wallet). Parsing is pure and checks the whole
file before anything is written: a file with any bad line changes nothing, and every bad line is
reported with its number and why.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.domain import Watch, address_problems
from balancewatch.errors import EXIT_OK, EXIT_USAGE
from balancewatch.ops.commands import with_engine
from balancewatch.progress import Progress, shown
from balancewatch.store import watchlist
from balancewatch.store.watchlist import ImportRow, WatchEntry

COLUMNS: Final = ("wallet", "token", "enabled", "label")
REQUIRED: Final = ("wallet", "token")
_TRUE: Final = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE: Final = frozenset({"false", "f", "no", "n", "0", "off"})


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    reason: str


@dataclass
class ParseResult:
    rows: list[ImportRow] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


def parse(text: str) -> ParseResult:
    """Every row of the file, or every error in it (then `rows` must not be applied)."""
    result = ParseResult()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        result.errors.append(LineError(1, f"not CSV: {exc}"))
        return result
    columns = _columns(header, result.errors)
    if columns is None:
        return result
    seen: dict[Watch, int] = {}
    line = reader.line_num + 1
    try:
        for record in reader:
            if record and any(cell.strip() for cell in record):
                _row(record, line, columns, seen, result)
            line = reader.line_num + 1
    except csv.Error as exc:
        result.errors.append(LineError(line, f"not CSV: {exc}"))
    return result


def _columns(header: list[str] | None, errors: list[LineError]) -> list[str] | None:
    expected = "expected a header like wallet,token,enabled,label"
    if header is None:
        errors.append(LineError(1, f"empty file: {expected}"))
        return None
    names = [name.strip().lower() for name in header]
    problems = [f"unknown column {name!r}" for name in names if name not in COLUMNS]
    problems += [f"column {name!r} twice" for name in COLUMNS if names.count(name) > 1]
    problems += [f"no {name!r} column" for name in REQUIRED if name not in names]
    if problems:
        errors.append(LineError(1, f"bad header ({'; '.join(problems)}): {expected}"))
        return None
    return names


def _row(
    record: list[str],
    line: int,
    columns: list[str],
    seen: dict[Watch, int],
    result: ParseResult,
) -> None:
    if len(record) != len(columns):
        result.errors.append(
            LineError(line, f"{len(record)} columns, expected {len(columns)} ({','.join(columns)})")
        )
        return
    cells = {name: value.strip() for name, value in zip(columns, record, strict=True)}
    watch = (cells["wallet"], cells["token"] or None)  # an empty token: the whole wallet
    reasons = address_problems(wallet=watch[0], token=watch[1])
    enabled = _enabled(cells.get("enabled", ""))
    if enabled is None:
        reasons.append(f"enabled {cells['enabled']!r} is not true/false (or yes/no, 1/0)")
    if not reasons and watch in seen:
        reasons.append(f"duplicate of line {seen[watch]}")
    if reasons:
        result.errors.append(LineError(line, "; ".join(reasons)))
        return
    seen[watch] = line
    has_label = "label" in cells
    result.rows.append(
        ImportRow(
            wallet=watch[0],
            token=watch[1],
            enabled=enabled if "enabled" in cells else None,
            label=cells["label"] or None if has_label else None,
            has_label=has_label,
        )
    )


def _enabled(value: str) -> bool | None:
    """An empty cell is the default, enabled; None for an unreadable value."""
    lowered = value.lower()
    if not lowered or lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def render(entries: Sequence[WatchEntry]) -> str:
    """The export: what `parse` reads back to the same rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for entry in entries:
        writer.writerow(
            [
                entry.wallet,
                entry.token or "",
                "true" if entry.enabled else "false",
                entry.label or "",
            ]
        )
    return out.getvalue()


# --- the commands ---------------------------------------------------------------------------


def import_command(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"balancewatch: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parsed = parse(text)
    if parsed.errors:
        for error in parsed.errors:
            print(f"{path}:{error.line}: {error.reason}", file=sys.stderr)
        count = len(parsed.errors)
        print(
            f"balancewatch: {path}: {count} bad line{'s' if count > 1 else ''}, nothing imported",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def apply(engine: AsyncEngine) -> int:
        lines = Progress("watch.import_progress")
        with shown(lines, f"importing {path.name}", len(parsed.rows)) as step:
            result = await watchlist.import_rows(
                engine, parsed.rows, lambda done: step(done, rows=done, of=len(parsed.rows))
            )
        lines.finish("watch.import_done", rows=len(parsed.rows))
        print(f"imported {path}: {result.added} added, {result.updated} updated")
        return EXIT_OK

    return with_engine(apply)


def export_command(args: argparse.Namespace) -> int:
    path: Path | None = args.file
    entries: list[WatchEntry] = []

    async def read(engine: AsyncEngine) -> int:
        entries.extend(await watchlist.entries(engine))
        return EXIT_OK

    code = with_engine(read)
    if code != EXIT_OK:
        return code
    text = render(entries)
    if path is None or str(path) == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"balancewatch: cannot write {path}: {exc}", file=sys.stderr)
        return 1
    print(f"exported {len(entries)} rows to {path}", file=sys.stderr)
    return EXIT_OK
