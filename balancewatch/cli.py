"""The `balancewatch` command line.

Every command is defined here, and its code is imported only when it runs: `watch list` never
loads the daemon, the daemon never loads the simulator or the benchmark, and `--help` loads
next to nothing.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from balancewatch import __version__
from balancewatch.errors import EXIT_FAILURE, EXIT_USAGE, ConfigError

Command = Callable[[argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

HISTORY_LIMIT = 50
HISTORY_FORMATS = ("table", "csv", "json")
BENCH_HISTORY_ROWS = 10_000_000
_ROW_COUNT = re.compile(r"([1-9](?:_?[0-9])*)([km]?)", re.IGNORECASE)
_ROW_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    module, _, name = args.command.partition(":")
    try:
        command: Command = getattr(importlib.import_module(module), name)
        return command(args)
    except ConfigError as exc:
        print(f"balancewatch: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balancewatch",
        description="Keeps a Postgres history of Solana wallet token balances from the Datastream.",
    )
    parser.add_argument("--version", action="version", version=f"balancewatch {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _command(
        commands,
        "run",
        "balancewatch.daemon.service:run_command",
        help="run the daemon in the foreground until SIGTERM/SIGINT",
    )
    _command(
        commands,
        "migrate",
        "balancewatch.ops.commands:migrate",
        help="upgrade the schema to the newest revision",
    )
    _add_watch_commands(commands)
    _add_history_command(commands)
    _add_status_commands(commands)
    _add_devtools_commands(commands)
    return parser


def row_count(text: str) -> int:
    """A positive number of rows: 20000, 20_000, 500k or 10m."""
    match = _ROW_COUNT.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows (20000, 500k, 10m)")
    return int(match.group(1)) * _ROW_UNITS[match.group(2).lower()]


def _command(
    commands: Commands, name: str, target: str, *, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose code, `module:function`, is imported only when it runs."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.set_defaults(command=target)
    return parser


def _add_watch_commands(commands: Commands) -> None:
    watch = commands.add_parser("watch", help="edit or show the watchlist")
    actions = watch.add_subparsers(required=True, metavar="ACTION")
    ops = "balancewatch.ops.commands"
    add = _command(
        actions,
        "add",
        f"{ops}:watch_add",
        help="watch a (wallet, token) pair, or every token of a wallet; or re-enable it",
    )
    add.add_argument("wallet", metavar="WALLET")
    add.add_argument("token", metavar="TOKEN", nargs="?", help="without it: every token")
    add.add_argument("--label")
    remove = _command(
        actions,
        "remove",
        f"{ops}:watch_remove",
        help="stop watching a pair, or a wallet's every token (its history stays)",
    )
    remove.add_argument("wallet", metavar="WALLET")
    remove.add_argument(
        "token",
        metavar="TOKEN",
        nargs="?",
        help="without it: the wallet's all-tokens row only (rows of single tokens stay)",
    )
    _command(
        actions,
        "list",
        f"{ops}:watch_list",
        help="every pair and whole wallet with the daemon's status for it",
    )
    load = _command(
        actions,
        "import",
        "balancewatch.ops.watchfile:import_command",
        help="add or update pairs from a CSV file (wallet,token,enabled,label; an empty token: "
        "every token of the wallet); all or nothing",
    )
    load.add_argument("file", type=Path, metavar="FILE.csv")
    dump = _command(
        actions,
        "export",
        "balancewatch.ops.watchfile:export_command",
        help="write the watchlist as CSV (to stdout without FILE)",
    )
    dump.add_argument("file", type=Path, nargs="?", metavar="FILE")


def _add_history_command(commands: Commands) -> None:
    history = _command(
        commands,
        "history",
        "balancewatch.ops.history:command",
        help="print one pair's balance history, or every token's of a wallet, newest first",
        description="Print one pair's balance history, newest first, with a chart, and the "
        "gaps: when neither its room nor its wallet's all-tokens room was listened to. Without "
        "TOKEN: every token of the wallet, with a TOKEN column and no chart; its gaps are when "
        "no room of the wallet was listened to, neither the all-tokens room nor any token's "
        "(give the TOKEN for one token's gaps). Times: ISO 8601 (naive means UTC) or a span "
        "back from now: 90s, 15m, 1h, 2d, 1w.",
    )
    history.add_argument("wallet", metavar="WALLET", help="the wallet's address (base58)")
    history.add_argument(
        "token",
        metavar="TOKEN",
        nargs="?",
        help="the token's mint address (base58); without it, every token of the wallet",
    )
    history.add_argument("--since", help="from this time on (inclusive)")
    history.add_argument("--until", help="up to this time (inclusive)")
    history.add_argument(
        "--limit",
        type=int,
        default=HISTORY_LIMIT,
        help=f"at most this many of the newest rows (default {HISTORY_LIMIT}; 0: all)",
    )
    history.add_argument("--format", choices=HISTORY_FORMATS, default="table")
    history.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="also write the chart (needs a TOKEN)"
    )


def _add_status_commands(commands: Commands) -> None:
    status = _command(
        commands,
        "status",
        "balancewatch.ops.status:command",
        help="is it working? pairs, rows, rejected frames, and the daemon's own view",
    )
    status.add_argument(
        "--http",
        metavar="URL",
        default=None,
        help="the daemon's HTTP endpoint (default http://127.0.0.1:$BALANCEWATCH_HTTP_PORT, "
        "port 8080; 'none' to skip it)",
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="the same screen again every second, in place on a terminal, until Ctrl-C",
    )
    health = _command(
        commands,
        "healthcheck",
        "balancewatch.ops.status:healthcheck",
        help="exit 0 if the daemon's /readyz says it is ready (for containers)",
    )
    health.add_argument("--url", metavar="URL", default=None, help="default: as for status")


def _add_devtools_commands(commands: Commands) -> None:
    demo = _command(
        commands,
        "demo",
        "balancewatch.devtools.demo:command",
        help="everything on a throwaway local Postgres and a simulated Datastream",
    )
    demo.add_argument("--rate", type=float, default=5.0, help="messages per second (default 5)")
    demo.add_argument("--seconds", type=float, default=None, help="stop after this long")

    simulate = _command(
        commands,
        "simulate",
        "balancewatch.devtools.simulator:command",
        help="serve a simulated Datastream",
    )
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.add_argument("--key", default=None, help="refuse connections without this key")
    simulate.add_argument("--rate", type=float, default=10.0, help="messages per second")

    bench = _command(
        commands,
        "bench",
        "balancewatch.devtools.bench:command",
        help="measure ingest, latency, sync and scale (see BENCHMARKS.md)",
    )
    bench.add_argument(
        "--messages", type=int, default=None, help="messages for the ingest run (200000)"
    )
    bench.add_argument(
        "--database-url", default=None, help="an existing server (default: a throwaway one)"
    )
    bench.add_argument("--quick", action="store_true", help="a small, fast run (a smoke test)")
    bench.add_argument(
        "--cpu-only",
        action="store_true",
        help="only the raw COPY ceiling and the cpu section: the daemon's CPU per message",
    )
    bench.add_argument(
        "--flush-interval", type=float, default=None, help="the daemon's flush_interval (0.02)"
    )
    bench.add_argument(
        "--uvloop", action="store_true", help="run the in-process daemon on uvloop (installed)"
    )
    bench.add_argument(
        "--history",
        type=row_count,
        nargs="?",
        const=BENCH_HISTORY_ROWS,
        default=None,
        metavar="N",
        help="only the history section: load N rows (20000, 500k, 10m; default 10m) over "
        "10,000 pairs, time the README's queries, status and history, print bytes per row",
    )
    bench.add_argument(
        "--pairs-joined",
        type=row_count,
        default=None,
        metavar="N",
        help="only the scale section: N watched pairs (100k, 1m) from the daemon's start until "
        "every one is joined, and its peak RSS",
    )
    bench.add_argument(
        "--pairs",
        type=row_count,
        default=None,
        metavar="M",
        help="with --history: spread the rows over M pairs (default 10,000)",
    )
    bench.add_argument(
        "--partition",
        default=None,
        metavar="WIDTH",
        help="with --history: the partitions' width, 1d or 7d (default: the daemon's)",
    )
