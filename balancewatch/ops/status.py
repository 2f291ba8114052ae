"""`balancewatch status`: one screen that answers "is it working?", and `balancewatch healthcheck`.

`status` reads the database (pairs by state, pairs with problems, rows in the last minute and
hour, the newest row's age, rejected frames by reason) and, when it answers, the daemon's HTTP
endpoint (`/readyz` and `/metrics`: connected, pending rows, reconnects).

Every query is cheap on a large history: the history's only time index leads with the pair, so
"rows in the last hour" is found by a binary search over ids (ids follow arrival order), a few
dozen primary-key probes, then a count over that id range.

`healthcheck` asks the daemon's `/readyz` and exits 0 when ready (the container's HEALTHCHECK:
the slim image has no curl).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from balancewatch.errors import EXIT_FAILURE, EXIT_OK
from balancewatch.ops.commands import with_engine

EXIT_NOT_READY: Final = EXIT_FAILURE
HTTP_TIMEOUT: Final = 3.0
PROBLEMS_SHOWN: Final = 20


def command(args: argparse.Namespace) -> int:
    return with_engine(lambda engine: show(engine, args.http))


def default_http_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('BALANCEWATCH_HTTP_PORT', '8080')}"


# -- healthcheck -----------------------------------------------------------------------------


def healthcheck(args: argparse.Namespace) -> int:
    url = f"{(args.url or default_http_url()).rstrip('/')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:  # noqa: S310  (http only)
            print(response.read().decode())
            return EXIT_OK
    except urllib.error.HTTPError as exc:
        print(exc.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        print(f"balancewatch: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return EXIT_NOT_READY


# -- status: gathering -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    wallet: str
    token: str
    state: str
    since: datetime | None
    error: str | None


@dataclass(slots=True)
class Report:
    now: datetime
    pairs: dict[str, int] = field(default_factory=dict)  # enabled pairs by state
    disabled: int = 0
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0
    rows_last_minute: int = 0
    rows_last_hour: int = 0
    newest_age: timedelta | None = None
    rejected: list[tuple[str, int, datetime]] = field(default_factory=list)  # last 24 h


@dataclass(frozen=True, slots=True)
class DaemonView:
    url: str
    error: str | None = None  # why it could not be asked
    ready: dict[str, Any] = field(default_factory=dict)
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.get((name, tuple(sorted(labels.items()))))


_PAIRS = """
SELECT coalesce(s.state, 'not seen') AS state, count(*) AS n
FROM watchlist w LEFT JOIN subscription_status s USING (wallet, token)
WHERE w.enabled GROUP BY 1
"""
_PROBLEMS = """
SELECT w.wallet, w.token, s.state, s.since, s.last_error, count(*) OVER () AS total
FROM watchlist w JOIN subscription_status s USING (wallet, token)
WHERE w.enabled
  AND (s.state IN ('error', 'invalid') OR (s.state = 'joining' AND s.last_error IS NOT NULL))
ORDER BY s.since LIMIT :limit
"""
_REJECTED = """
SELECT reason, count(*) AS n, max(received_at) AS last FROM rejected_messages
WHERE received_at > now() - interval '24 hours' GROUP BY reason ORDER BY n DESC, reason
"""


async def gather(engine: AsyncEngine) -> Report:
    async with engine.connect() as connection:
        now: datetime = (await connection.execute(text("SELECT now()"))).scalar_one()
        report = Report(now=now)
        for row in await connection.execute(text(_PAIRS)):
            report.pairs[row.state] = row.n
        report.disabled = (
            await connection.execute(text("SELECT count(*) FROM watchlist WHERE NOT enabled"))
        ).scalar_one()
        rows = (await connection.execute(text(_PROBLEMS), {"limit": PROBLEMS_SHOWN})).all()
        report.problems = [Problem(r.wallet, r.token, r.state, r.since, r.last_error) for r in rows]
        report.more_problems = max(0, (rows[0].total if rows else 0) - len(rows))
        newest = (
            await connection.execute(
                text("SELECT received_at FROM balance_history ORDER BY id DESC LIMIT 1")
            )
        ).scalar_one_or_none()
        report.newest_age = None if newest is None else now - newest
        report.rows_last_minute = await rows_since(connection, now - timedelta(minutes=1))
        report.rows_last_hour = await rows_since(connection, now - timedelta(hours=1))
        report.rejected = [
            (row.reason, row.n, row.last) for row in await connection.execute(text(_REJECTED))
        ]
        return report


async def rows_since(connection: AsyncConnection, cutoff: datetime) -> int:
    """Rows of balance_history received after `cutoff`, without scanning the table."""
    bounds = (await connection.execute(text("SELECT min(id), max(id) FROM balance_history"))).one()
    if bounds[0] is None:
        return 0
    first = await _first_id_after(connection, cutoff, bounds[0], bounds[1])
    count: int = (
        await connection.execute(
            text("SELECT count(*) FROM balance_history WHERE id >= :first AND received_at > :cut"),
            {"first": first, "cut": cutoff},
        )
    ).scalar_one()
    return count


async def _first_id_after(
    connection: AsyncConnection, cutoff: datetime, low: int, high: int
) -> int:
    """The smallest id received after `cutoff` (high + 1 if none), by binary search: rows are
    stored in arrival order, so received_at grows with id."""
    probe = text("SELECT id, received_at FROM balance_history WHERE id >= :at ORDER BY id LIMIT 1")
    while low <= high:
        middle = (low + high) // 2
        row = (await connection.execute(probe, {"at": middle})).first()
        if row is None or row.received_at > cutoff:
            high = middle - 1
        else:
            low = row.id + 1
    return low


async def ask_daemon(url: str) -> DaemonView:
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{url}/readyz") as response:
                ready: dict[str, Any] = json.loads(await response.text())
            async with session.get(f"{url}/metrics") as response:
                page = await response.text()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return DaemonView(url, error=str(exc) or type(exc).__name__)
    metrics = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }
    return DaemonView(url, ready=ready, metrics=metrics)


async def show(engine: AsyncEngine, http: str | None) -> int:
    url = (http or default_http_url()).rstrip("/")
    daemon = None if url == "none" else asyncio.create_task(ask_daemon(url))
    report = await gather(engine)
    print(render(report, None if daemon is None else await daemon))
    return EXIT_OK


# -- status: rendering -----------------------------------------------------------------------


def render(report: Report, daemon: DaemonView | None) -> str:
    lines = [f"balancewatch status at {report.now:%Y-%m-%d %H:%M:%S %Z}", ""]
    if daemon is not None:
        lines += _daemon_lines(daemon)
    enabled = sum(report.pairs.values())
    by_state = ", ".join(f"{n} {state}" for state, n in sorted(report.pairs.items()))
    by_state = f": {by_state}" if by_state else ""
    lines.append(f"pairs    {enabled} enabled{by_state}; {report.disabled} disabled")
    newest = "no rows yet" if report.newest_age is None else f"newest {_age(report.newest_age)} ago"
    lines.append(
        f"rows     {report.rows_last_minute:,} in the last minute, "
        f"{report.rows_last_hour:,} in the last hour; {newest}"
    )
    if report.problems:
        lines += ["", "pairs with problems"]
        for problem in report.problems:
            since = "" if problem.since is None else f"since {problem.since:%Y-%m-%d %H:%M:%S}  "
            pair = f"{problem.wallet} {problem.token}"
            lines.append(f"  {problem.state:8} {pair}  {since}{problem.error or ''}")
        if report.more_problems:
            lines.append(f"  ... and {report.more_problems} more")
    lines += ["", "rejected frames, last 24 h" + ("" if report.rejected else ": none")]
    for reason, count, last in report.rejected:
        lines.append(f"  {reason:22} {count:>8,}  last {last:%Y-%m-%d %H:%M:%S}")
    return "\n".join(lines)


def _daemon_lines(daemon: DaemonView) -> list[str]:
    if daemon.error is not None:
        return [f"daemon   {daemon.url}: not reachable ({daemon.error})"]
    failing: Mapping[str, str] = daemon.ready.get("failing", {})
    verdict = (
        "ready"
        if daemon.ready.get("ready")
        else "NOT READY: " + "; ".join(f"{name}: {why}" for name, why in failing.items())
    )
    lines = [f"daemon   {daemon.url}: {verdict}"]

    def number(name: str, **labels: str) -> str:
        found = daemon.metric(name, **labels)
        return "?" if found is None else f"{int(found):,}"

    connected = daemon.metric("balancewatch_websocket_connected") == 1
    lines.append(
        f"         websocket {'connected' if connected else 'NOT connected'}, "
        f"{number('balancewatch_websocket_reconnects_total')} reconnects; "
        f"{number('balancewatch_messages_received_total')} messages received, "
        f"{number('balancewatch_rows_written_total')} rows written since start"
    )
    lines.append(
        f"         waiting to be written: {number('balancewatch_pending_rows', where='memory')} "
        f"rows in memory, {number('balancewatch_pending_rows', where='spool')} in the spool "
        f"({number('balancewatch_spool_bytes')} bytes)"
    )
    return lines


def _age(age: timedelta) -> str:
    seconds = age.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
