"""`balancewatch status`: one screen that answers "is it working?", and `balancewatch healthcheck`.

`status` reads the database (pairs and whole wallets by state, those with problems, rows in the
last minute and hour, the newest row's age, listening coverage, snapshots and checks of the
chain, rejected frames and RPC answers by reason) and, when it answers, the daemon's HTTP
endpoint (`/readyz` and `/metrics`: connected, pending rows, reconnects).

The queries are in store/reports.py, each cheap on a large history.

`healthcheck` asks the daemon's `/readyz` and exits 0 when ready (the container's HEALTHCHECK:
the slim image has no curl).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.aio import wait_first
from balancewatch.errors import EXIT_FAILURE, EXIT_OK
from balancewatch.logs import describe_error
from balancewatch.ops.commands import shown_state, shown_token, with_engine
from balancewatch.store.reports import Report, Watches, gather

EXIT_NOT_READY: Final = EXIT_FAILURE
HTTP_TIMEOUT: Final = 3.0
REFRESH: Final = 1.0  # seconds between the screens of --watch
DATABASE_TIMEOUT: Final = 10.0  # for one screen's queries, in --watch
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def command(args: argparse.Namespace) -> int:
    if args.watch:
        return with_engine(lambda engine: watch(engine, args.http))
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
class DaemonView:
    url: str
    error: str | None = None  # why it could not be asked
    ready: dict[str, Any] = field(default_factory=dict)
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.get((name, tuple(sorted(labels.items()))))


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
    url = daemon_url(http)
    daemon = None if url is None else asyncio.create_task(ask_daemon(url))
    report = await gather(engine)
    print(render(report, None if daemon is None else await daemon))
    return EXIT_OK


def daemon_url(http: str | None) -> str | None:
    """The daemon's endpoint to ask, or None for `--http none`."""
    url = (http or default_http_url()).rstrip("/")
    return None if url == "none" else url


# -- status --watch --------------------------------------------------------------------------


async def screen(engine: AsyncEngine, url: str | None) -> str:
    """One screen of `status`; a database that does not answer is on it rather than the end
    of the command, so that `--watch` shows the outage and goes on asking."""
    daemon = None if url is None else asyncio.create_task(ask_daemon(url))
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT):
            report = await gather(engine)
    except (OSError, SQLAlchemyError, TimeoutError) as exc:
        error = "no answer" if isinstance(exc, TimeoutError) else describe_error(exc)
        view = None if daemon is None else await daemon
        return render_unreachable(datetime.now(UTC), error, view)
    return render(report, None if daemon is None else await daemon)


async def watch(engine: AsyncEngine, http: str | None) -> int:
    """`status --watch`: a screen a second until Ctrl-C (or SIGTERM), which is the normal end.
    On a terminal, the screen is redrawn in place (rich's Live); otherwise each is printed
    after the one before, as `vmstat 1` does, for a file or a pager."""
    url = daemon_url(http)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        if sys.stdout.isatty():
            await _watch_in_place(engine, url, stop)
        else:
            await _every_second(engine, url, stop, _print_screen)
    except BrokenPipeError:
        # The reader went away (`| head`): the end of the command, not an error; stdout is
        # pointed at /dev/null so that the interpreter's last flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    return EXIT_OK


def _print_screen(text: str) -> None:
    print(text + "\n", flush=True)


async def _watch_in_place(engine: AsyncEngine, url: str | None, stop: asyncio.Event) -> None:
    from rich.live import Live  # noqa: PLC0415  (only --watch on a terminal loads rich)
    from rich.text import Text  # noqa: PLC0415

    # Text, not markup: an error message's brackets are shown as they are. Live redraws the
    # whole screen over the last one, so nothing flickers; a screen taller than the terminal
    # is cut at the bottom rather than scrolled.
    with Live(
        Text(f"balancewatch status: asking {url or 'the database'}..."), auto_refresh=False
    ) as live:
        await _every_second(engine, url, stop, lambda text: live.update(Text(text), refresh=True))


async def _every_second(
    engine: AsyncEngine, url: str | None, stop: asyncio.Event, show: Callable[[str], None]
) -> None:
    """Gather and `show` a screen each REFRESH seconds until `stop`; a screen still being
    gathered when it is set is given up, so Ctrl-C ends it at once."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        gathering = asyncio.ensure_future(screen(engine, url))
        await _wait_first_of(gathering, stop)
        if not gathering.done():
            gathering.cancel()
            await asyncio.wait([gathering])
            return
        show(gathering.result())
        await wait_first(stop, timeout=max(0.0, started + REFRESH - loop.time()))


async def _wait_first_of(task: asyncio.Future[str], stop: asyncio.Event) -> None:
    stopped = asyncio.ensure_future(stop.wait())
    waited: list[asyncio.Future[Any]] = [task, stopped]
    try:
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()


# -- status: rendering -----------------------------------------------------------------------


def render(report: Report, daemon: DaemonView | None) -> str:
    lines = [f"balancewatch status at {report.now:%Y-%m-%d %H:%M:%S %Z}", ""]
    if daemon is not None:
        lines += _daemon_lines(daemon)
    lines += _watches_lines(report)
    newest = "no rows yet" if report.newest_age is None else f"newest {_age(report.newest_age)} ago"
    lines.append(
        f"rows     {report.rows_last_minute:,} in the last minute, "
        f"{report.rows_last_hour:,} in the last hour; {newest}"
    )
    gaps = (
        f"{report.gapped} with a gap in the last 24 h ({_age(report.uncovered)} not listened "
        "to in all)"
        if report.gapped
        else "no gap in the last 24 h"
    )
    listening = f"{report.pairs.listening} pairs"
    if _any(report.wallets):
        listening += f", {_wallets(report.wallets.listening)}"
    lines.append(f"coverage {listening} being listened to; {gaps}")
    lines += _replica_lines(report)
    lines += _chain_lines(report)
    if report.problems:
        lines += ["", "pairs with problems"]
        for problem in report.problems:
            since = "" if problem.since is None else f"since {problem.since:%Y-%m-%d %H:%M:%S}  "
            pair = f"{problem.wallet} {shown_token(problem.token)}"
            lines.append(f"  {problem.state:8} {pair}  {since}{problem.error or ''}")
        if report.more_problems:
            lines.append(f"  ... and {report.more_problems} more")
    lines += _by_reason("rejected frames, last 24 h", report.rejected)
    if report.rpc_failures:
        lines += _by_reason("RPC answers refused, last 24 h", report.rpc_failures)
    return "\n".join(lines)


def render_unreachable(now: datetime, error: str, daemon: DaemonView | None) -> str:
    """The screen while the database does not answer: when, why, and what the daemon says."""
    lines = [f"balancewatch status at {now:%Y-%m-%d %H:%M:%S %Z}", ""]
    if daemon is not None:
        lines += _daemon_lines(daemon)
    lines.append(f"database NOT reachable: {error}; asking again every {REFRESH:g} s")
    return "\n".join(lines)


def _watches_lines(report: Report) -> list[str]:
    """Pairs by state; whole wallets apart, when the watchlist has any."""
    lines = [f"pairs    {_by_state(report.pairs)}"]
    if _any(report.wallets):
        lines.append(f"wallets  {_by_state(report.wallets)} (each for all its tokens)")
    return lines


def _by_state(watches: Watches) -> str:
    enabled = sum(watches.states.values())
    states = sorted(watches.states.items())
    by_state = ", ".join(f"{n} {shown_state(state)}" for state, n in states)
    by_state = f": {by_state}" if by_state else ""
    return f"{enabled} enabled{by_state}; {watches.disabled} disabled"


def _any(watches: Watches) -> bool:
    return bool(watches.states or watches.disabled)


def _wallets(count: int) -> str:
    return f"{count} whole wallet{'' if count == 1 else 's'}"


def _replica_lines(report: Report) -> list[str]:
    unowned = report.unowned_shards
    if not unowned:
        owners = f"every one of the {report.shards} shards held"
    else:
        listed = ", ".join(map(str, unowned[:16])) + (", ..." if len(unowned) > 16 else "")
        owners = f"{len(unowned)} of {report.shards} shards WITHOUT a live owner ({listed})"
    lines = [f"replicas {len(report.replicas)} live; {owners}"]
    for replica in report.replicas:
        lines.append(
            f"         {replica.replica_id:16} {replica.shards:>4} shards {replica.pairs:>8,} "
            f"pairs  heard {_age(replica.heard)} ago  ({replica.instance})"
        )
    return lines


def _chain_lines(report: Report) -> list[str]:
    reads = report.chain_reads

    def count(kind: str, *results: str) -> int:
        return sum(reads.get((kind, result), 0) for result in results)

    return [
        f"chain    snapshots: {report.snapshot_queue:,} waiting; last 24 h: "
        f"{count('snapshot', 'stored'):,} stored, {count('snapshot', 'failed'):,} failed",
        f"         checks, last 24 h: {count('check', 'match', 'in_flight'):,} matched, "
        f"{count('check', 'drift'):,} found drift, {count('check', 'failed'):,} failed",
    ]


def _by_reason(title: str, counts: list[tuple[str, int, datetime]]) -> list[str]:
    lines = ["", title + ("" if counts else ": none")]
    for reason, count, last in counts:
        lines.append(f"  {reason:22} {count:>8,}  last {last:%Y-%m-%d %H:%M:%S}")
    return lines


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
