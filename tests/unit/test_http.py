"""The daemon's HTTP endpoints, their defaults and the join progress they report, without a
daemon; and the container's healthcheck as the Dockerfile and the compose file set it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from balancewatch.daemon.http import Readiness
from balancewatch.daemon.metrics import DaemonCollector, PairStates, Snapshot
from balancewatch.progress import Progress
from balancewatch.settings import Settings
from tests.files import compose, final_stage, image_env
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, scrape, value


def test_the_endpoints_listen_on_loopback_unless_told_otherwise() -> None:
    assert Settings.model_fields["http_host"].default == "127.0.0.1"
    assert Settings.model_fields["http_port"].default == 8080


class _Sink:
    def __init__(self) -> None:
        self.changes: list[tuple[list[tuple[str, str]], str]] = []

    def set_status(self, pairs: Any, state: str, error: str | None = None) -> None:
        self.changes.append((list(pairs), state))


def test_a_long_join_logs_its_progress_at_most_once_a_second() -> None:
    now = [0.0]
    sink = _Sink()
    states = PairStates(sink)
    states._joins = Progress("subscriptions.join_progress", clock=lambda: now[0])
    pairs = [(f"wallet{n}", TOKEN) for n in range(10)]
    with capture_logs() as logs:
        states.set_status(pairs, "joining")
        for n, pair in enumerate(pairs):
            now[0] = n * 0.4
            states.set_status([pair], "joined" if n != 3 else "error")
    assert len(sink.changes) == 11  # every change reaches the writer
    assert states.counts == {("pair", "joined"): 9, ("pair", "error"): 1, ("pair", "joining"): 0}
    progress = [line for line in logs if line["event"] == "subscriptions.join_progress"]
    # At 1.2 s (4 settled of 10) and 2.4 s (7); the last ack, at 3.6 s, ends the join.
    assert [(line["joined"], line["of"]) for line in progress] == [(4, 10), (7, 10)]
    done = [line for line in logs if line["event"] == "subscriptions.join_done"]
    assert len(done) == 1
    assert done[0]["joined"] == 10


def test_a_quick_join_logs_nothing() -> None:
    states = PairStates(_Sink())
    with capture_logs() as logs:
        states.set_status([(WALLET, TOKEN)], "joining")
        states.set_status([(WALLET, TOKEN)], "joined")
    assert [line["event"] for line in logs] == []


def test_metrics_count_whole_wallets_apart_from_pairs() -> None:
    states = PairStates(_Sink())
    states.set_status([(WALLET, TOKEN), (WALLET, SOL), (WALLET2, TOKEN)], "joining")
    states.set_status([(WALLET, None)], "joining")
    states.set_status([(WALLET, None), (WALLET2, TOKEN)], "joined")
    states.set_status([(WALLET, TOKEN), (WALLET, SOL)], "covered")  # by the wallet's room
    registry = CollectorRegistry()
    registry.register(DaemonCollector(lambda: idle_snapshot(dict(states.counts))))

    samples = scrape(generate_latest(registry).decode())

    assert value(samples, "balancewatch_pairs", state="covered") == 2
    assert value(samples, "balancewatch_pairs", state="joined") == 1
    assert value(samples, "balancewatch_pairs", state="joining") == 0
    assert value(samples, "balancewatch_wallets", state="joined") == 1
    assert value(samples, "balancewatch_wallets", state="joining") == 0
    assert value(samples, "balancewatch_wallets", state="error") == 0  # every state, 0 too


def test_the_default_partitions_rows_are_told_once_counted() -> None:
    def told(rows: int | None) -> float | None:
        registry = CollectorRegistry()
        snapshot = replace(idle_snapshot({}), default_partition_rows=rows)
        registry.register(DaemonCollector(lambda: snapshot))
        return scrape(generate_latest(registry).decode()).get(
            ("balancewatch_default_partition_rows", ())
        )

    assert [told(rows) for rows in (None, 0, 3)] == [None, 0, 3]


def idle_snapshot(watch_counts: Any) -> Snapshot:
    """A daemon that did nothing yet but record these states."""
    return Snapshot(
        messages=0,
        rows_written=0,
        rejected={},
        rejected_dropped=0,
        bookkeeping_failures={},
        bookkeeping_pending={},
        pairs_listening=0,
        watch_counts=watch_counts,
        connected=False,
        connections=0,
        pending_in_memory=0,
        pending_in_spool=0,
        spool_bytes=0,
        reading_paused=False,
        newest_stored=None,
        database_up=None,
    )


# -- the container's healthcheck ----------------------------------------------------------------


def test_the_image_and_compose_check_readiness_with_the_daemons_own_command() -> None:
    instructions = final_stage()
    (healthcheck,) = [args for word, args in instructions if word == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["balancewatch", "healthcheck"]')
    assert "--start-period=" in healthcheck
    # Reachable by a scraper on the container network; the port the settings default to.
    assert image_env()["BALANCEWATCH_HTTP_HOST"] == "0.0.0.0"
    port = str(Settings.model_fields["http_port"].default)
    assert ("EXPOSE", port) in instructions
    services = compose()["services"]
    daemon = services["balancewatch"]
    assert daemon["healthcheck"]["test"] == ["CMD", "balancewatch", "healthcheck"]
    assert daemon["environment"]["BALANCEWATCH_HTTP_PORT"] == port
    assert daemon["ports"] == [f"127.0.0.1:{port}:{port}"]  # the host's loopback only
    # The one-shot and the simulator have no /readyz: the image's check is off for them.
    assert services["migrate"]["healthcheck"] == {"disable": True}
    assert services["simulate"]["healthcheck"] == {"disable": True}


def test_a_replica_whose_leases_are_not_trusted_is_not_ready_even_with_nothing_pending() -> None:
    # Before its first lease round a replica wants no pair: "every pair joined" is vacuous.
    before_leases = Readiness(
        websocket_connected=True,
        watchlist_read=True,
        pairs_wanted=0,
        pairs_pending=0,
        leases_trusted=False,
    )
    assert set(before_leases.failing(None)) == {"leases"}
    assert replace(before_leases, leases_trusted=True).failing(None) == {}
