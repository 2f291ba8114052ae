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


ALL_TOKENS = "all tokens"


def shown_token(token: str | None) -> str:
    """A watch's token as people read it: the mint, or "all tokens" for a whole wallet."""
    return ALL_TOKENS if token is None else token


def shown_state(state: str | None) -> str:
    """`covered`: listened to through the wallet's all-tokens row, not through its own room."""
    if state == "covered":
        return f"covered ({ALL_TOKENS})"
    return state or "-"


def watch_add(args: argparse.Namespace) -> int:
    problems = address_problems(WALLET=args.wallet, TOKEN=args.token)
    if problems:
        raise ConfigError("; ".join(problems))

    async def add(engine: AsyncEngine) -> int:
        created = await watchlist.add(engine, args.wallet, args.token, args.label)
        print(f"{'added' if created else 'enabled'} {args.wallet} {shown_token(args.token)}")
        return EXIT_OK

    return with_engine(add)


def watch_remove(args: argparse.Namespace) -> int:
    watched = f"{args.wallet} {shown_token(args.token)}"

    async def remove(engine: AsyncEngine) -> int:
        if not await watchlist.remove(engine, args.wallet, args.token):
            print(f"not watched: {watched}", file=sys.stderr)
            return EXIT_FAILURE
        # Say what stays: a user may expect the whole wallet to go.
        kept = (
            "its history is kept"
            if args.token is not None
            else "its history and single-token rows stay"
        )
        print(f"removed {watched} ({kept})")
        return EXIT_OK

    return with_engine(remove)


def watch_list(_: argparse.Namespace) -> int:
    async def show(engine: AsyncEngine) -> int:
        rows = await watchlist.entries(engine)
        print(f"{'WALLET':44}  {'TOKEN':44}  {'ENABLED':7}  {'STATE':20}  LABEL")
        for row in rows:
            print(
                f"{row.wallet:44}  {shown_token(row.token):44}  "
                f"{'yes' if row.enabled else 'no':7}  {shown_state(row.state):20}  "
                f"{row.label or ''}"
            )
        return EXIT_OK

    return with_engine(show)
