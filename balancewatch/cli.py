"""The `balancewatch` command line: run, migrate, watch, demo, simulate."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import __version__, logs
from balancewatch.daemon.http import HttpServerError
from balancewatch.daemon.service import SchemaNotReady
from balancewatch.daemon.service import run as run_daemon
from balancewatch.daemon.signals import stop_on_signals
from balancewatch.devtools.bench import add_bench_command
from balancewatch.domain import is_address
from balancewatch.ops import history, status, watchfile
from balancewatch.pipeline.spool import SpoolError
from balancewatch.settings import ConfigError, Settings, load_settings
from balancewatch.store import migrate, watchlist
from balancewatch.store.db import create_engine

log = logs.get_logger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
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

    run = commands.add_parser("run", help="run the daemon in the foreground until SIGTERM/SIGINT")
    run.set_defaults(command=_run)

    upgrade = commands.add_parser("migrate", help="upgrade the schema to the newest revision")
    upgrade.set_defaults(command=_migrate)

    _add_watch_commands(commands)
    history.add_command(commands, _with_engine)
    status.add_commands(commands, _with_engine)
    _add_demo_commands(commands)
    add_bench_command(commands)
    return parser


def _add_watch_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = commands.add_parser("watch", help="edit or show the watchlist")
    actions = watch.add_subparsers(required=True, metavar="ACTION")
    add = actions.add_parser("add", help="watch a (wallet, token) pair, or re-enable it")
    add.add_argument("wallet")
    add.add_argument("token")
    add.add_argument("--label")
    add.set_defaults(command=_watch_add)
    remove = actions.add_parser("remove", help="stop watching a pair (its history stays)")
    remove.add_argument("wallet")
    remove.add_argument("token")
    remove.set_defaults(command=_watch_remove)
    show = actions.add_parser("list", help="every pair with the daemon's status for it")
    show.set_defaults(command=_watch_list)
    watchfile.add_commands(actions, _with_engine)


def _add_demo_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo", help="everything on a throwaway local Postgres and a simulated Datastream"
    )
    demo.add_argument("--rate", type=float, default=5.0, help="messages per second (default 5)")
    demo.add_argument("--seconds", type=float, default=None, help="stop after this long")
    demo.set_defaults(command=_demo)

    simulate = commands.add_parser("simulate", help="serve a simulated Datastream")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.add_argument("--key", default=None, help="refuse connections without this key")
    simulate.add_argument("--rate", type=float, default=10.0, help="messages per second")
    simulate.set_defaults(command=_simulate)


def _configure_logs(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secrets())


def _run(_: argparse.Namespace) -> int:
    settings = load_settings(need_key=True)
    _configure_logs(settings)

    async def daemon() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await run_daemon(settings, stop)

    return _guarded(daemon)


def _guarded(work: Callable[[], Awaitable[None]]) -> int:
    """Run a coroutine; turn the expected failures into one log line and exit code 1."""

    async def body() -> None:
        await work()

    try:
        asyncio.run(body())
    except SchemaNotReady as exc:
        log.error("daemon.schema_not_ready", error=str(exc))
        return EXIT_FAILURE
    except SpoolError as exc:
        log.error("daemon.spool_unusable", error=str(exc))
        return EXIT_FAILURE
    except HttpServerError as exc:
        log.error("http.cannot_listen", error=str(exc))
        return EXIT_FAILURE
    except (OSError, SQLAlchemyError) as exc:
        log.error("database.unreachable", error=logs.describe_error(exc))
        return EXIT_FAILURE
    except Exception:
        log.exception("daemon.crashed")
        return EXIT_FAILURE
    return EXIT_OK


def _migrate(_: argparse.Namespace) -> int:
    settings = load_settings(need_key=False)
    _configure_logs(settings)

    async def upgrade() -> None:
        engine = create_engine(settings.sqlalchemy_url, pool_size=1)
        try:
            await migrate.upgrade(engine)
            log.info("migrate.done", revision=await migrate.current_revision(engine))
        finally:
            await engine.dispose()

    return _guarded(upgrade)


def _check_pair(wallet: str, token: str) -> None:
    for name, value in (("WALLET", wallet), ("TOKEN", token)):
        if not is_address(value):
            raise ConfigError(f"{name} {value!r} is not a base58 address of 32 to 44 characters")


def _with_engine(work: Callable[[AsyncEngine], Awaitable[int]]) -> int:
    """Run `work` with an engine on the configured database; its result is the exit code."""
    settings = load_settings(need_key=False)
    _configure_logs(settings)
    result = EXIT_FAILURE

    async def body() -> None:
        nonlocal result
        engine = create_engine(settings.sqlalchemy_url, pool_size=1)
        try:
            result = await work(engine)
        finally:
            await engine.dispose()

    if _guarded(body) != EXIT_OK:
        return EXIT_FAILURE
    return result


def _watch_add(args: argparse.Namespace) -> int:
    _check_pair(args.wallet, args.token)

    async def add(engine: AsyncEngine) -> int:
        created = await watchlist.add(engine, args.wallet, args.token, args.label)
        print(f"{'added' if created else 'enabled'} {args.wallet} {args.token}")
        return EXIT_OK

    return _with_engine(add)


def _watch_remove(args: argparse.Namespace) -> int:
    async def remove(engine: AsyncEngine) -> int:
        removed = await watchlist.remove(engine, args.wallet, args.token)
        if not removed:
            print(f"not watched: {args.wallet} {args.token}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"removed {args.wallet} {args.token} (its history is kept)")
        return EXIT_OK

    return _with_engine(remove)


def _watch_list(_: argparse.Namespace) -> int:
    async def show(engine: AsyncEngine) -> int:
        rows = await watchlist.entries(engine)
        print(f"{'WALLET':44}  {'TOKEN':44}  {'ENABLED':7}  {'STATE':8}  LABEL")
        for row in rows:
            state = row.state or "-"
            print(
                f"{row.wallet:44}  {row.token:44}  {'yes' if row.enabled else 'no':7}  "
                f"{state:8}  {row.label or ''}"
            )
        return EXIT_OK

    return _with_engine(show)


def _demo(args: argparse.Namespace) -> int:
    from balancewatch.devtools.demo import run_demo  # noqa: PLC0415  (pulls in the simulator and localpg)

    return run_demo(rate=args.rate, seconds=args.seconds)


def _simulate(args: argparse.Namespace) -> int:
    from balancewatch.devtools.simulator import serve  # noqa: PLC0415

    logs.configure()

    async def simulate() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve(args.host, args.port, args.key, args.rate, stop)

    return _guarded(simulate)
