"""The small operator commands (`migrate`, `watch add/remove/list`) and how every operator
command gets its database: settings read, logs configured, one engine for the command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import logs
from balancewatch.aio import run_to_exit_code
from balancewatch.domain import address_problems
from balancewatch.errors import EXIT_FAILURE, EXIT_OK, ConfigError
from balancewatch.settings import load_settings
from balancewatch.store import migrate as schema
from balancewatch.store import watchlist
from balancewatch.store.db import create_engine

log = logs.get_logger(__name__)


def with_engine(work: Callable[[AsyncEngine], Awaitable[int]]) -> int:
    """Run `work` with an engine on the configured database; its result is the exit code."""
    settings = load_settings(need_key=False)
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secrets())
    result = EXIT_FAILURE

    async def body() -> None:
        nonlocal result
        engine = create_engine(settings.sqlalchemy_url, pool_size=1)
        try:
            result = await work(engine)
        finally:
            await engine.dispose()

    if run_to_exit_code(body) != EXIT_OK:
        return EXIT_FAILURE
    return result


def migrate(_: argparse.Namespace) -> int:
    async def upgrade(engine: AsyncEngine) -> int:
        await schema.upgrade(engine)
        log.info("migrate.done", revision=await schema.current_revision(engine))
        return EXIT_OK

    return with_engine(upgrade)


def watch_add(args: argparse.Namespace) -> int:
    problems = address_problems(WALLET=args.wallet, TOKEN=args.token)
    if problems:
        raise ConfigError("; ".join(problems))

    async def add(engine: AsyncEngine) -> int:
        created = await watchlist.add(engine, args.wallet, args.token, args.label)
        print(f"{'added' if created else 'enabled'} {args.wallet} {args.token}")
        return EXIT_OK

    return with_engine(add)


def watch_remove(args: argparse.Namespace) -> int:
    async def remove(engine: AsyncEngine) -> int:
        removed = await watchlist.remove(engine, args.wallet, args.token)
        if not removed:
            print(f"not watched: {args.wallet} {args.token}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"removed {args.wallet} {args.token} (its history is kept)")
        return EXIT_OK

    return with_engine(remove)


def watch_list(_: argparse.Namespace) -> int:
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

    return with_engine(show)
