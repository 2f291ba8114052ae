"""The shipped alert rules in a real Prometheus server scraping a real daemon: the Datastream
goes away, the websocket alert goes pending then firing; it comes back, the alert resolves."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from sqlalchemy.engine import URL

from balancewatch.devtools.simulator import Simulator
from tests.files import REPO
from tests.helpers import API_KEY, scratch_dir, wait_until
from tests.processes import StartDaemon, environment
from tests.tools import tool

ALERT = "BalancewatchWebsocketDown"
FOR = "3s"  # long enough to be seen pending between two polls, short enough to wait for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def prometheus_config(directory: Path, daemon_port: int) -> Path:
    """Scrape the daemon and evaluate the rules every second. The rules are the shipped
    alerts.yml with only their `for:` shortened: the expressions are the shipped ones."""
    rules = yaml.safe_load((REPO / "config" / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    (directory / "alerts.yml").write_text(yaml.safe_dump(rules))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(directory / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "balancewatch",
                "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"]}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    """A started `prometheus` server and its HTTP API."""

    def __init__(self, url: str, session: aiohttp.ClientSession, log: Path) -> None:
        self.url = url
        self._session = session
        self.log = log

    async def api(self, path: str, **params: str) -> Any:
        async with self._session.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[float]:
        data = await self.api("query", query=expr)
        return [float(sample["value"][1]) for sample in data["result"]]

    async def alert_state(self, name: str) -> str:
        """The alerting rule's state: inactive, pending or firing."""
        data = await self.api("rules", type="alert")
        (state,) = [
            rule["state"]
            for group in data["groups"]
            for rule in group["rules"]
            if rule["name"] == name
        ]
        assert isinstance(state, str)
        return state

    async def ready(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with self._session.get(f"{self.url}/-/ready") as response:
                return response.status == 200
        return False


@contextlib.asynccontextmanager
async def prometheus_server(config: Path) -> AsyncIterator[Prometheus]:
    binary = tool("prometheus", "prometheus")
    port = free_port()
    log = config.parent / "prometheus.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={config.parent / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=sink,
            stderr=sink,
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            server = Prometheus(f"http://127.0.0.1:{port}", session, log)
            await wait_until(server.ready, timeout=15, what=f"prometheus ready:\n{log}")
            yield server
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_prometheus_fires_the_websocket_alert_while_the_datastream_is_gone_and_resolves_it(
    database_url: URL, start_daemon: StartDaemon
) -> None:
    stream = Simulator(api_key=API_KEY, ping_interval=None)
    await stream.start()
    port = stream.port
    try:
        # A short backoff, so that the daemon is back within a second of the stream.
        env = environment(
            database_url,
            api_key=API_KEY,
            datastream_url=stream.url,
            backoff_initial="0.1",
            backoff_max="0.5",
        )
        daemon = await start_daemon(env)
        await daemon.wait_for(lambda: daemon.events("http.listening"), "the HTTP server")
        (listening,) = daemon.events("http.listening")
        config = prometheus_config(scratch_dir("prometheus"), listening["port"])
        async with prometheus_server(config) as prometheus:

            async def connected_is(value: float) -> bool:
                return await prometheus.query("balancewatch_websocket_connected") == [value]

            await wait_until(lambda: connected_is(1), timeout=10, what="a scrape, connected")
            assert await prometheus.alert_state(ALERT) == "inactive"

            await stream.stop()
            seen: list[str] = []

            async def state_is(wanted: str) -> bool:
                state = await prometheus.alert_state(ALERT)
                if not seen or seen[-1] != state:
                    seen.append(state)
                return state == wanted

            await wait_until(lambda: state_is("firing"), timeout=15, what="the alert firing")
            # Through `for:`: pending first, as Prometheus itself reported it.
            assert seen[-2:] == ["pending", "firing"], seen
            (alert,) = [
                a
                for a in (await prometheus.api("alerts"))["alerts"]
                if a["labels"]["alertname"] == ALERT
            ]
            assert alert["labels"]["severity"] == "critical"
            assert alert["labels"]["instance"] == f"127.0.0.1:{listening['port']}"

            stream = Simulator(api_key=API_KEY, ping_interval=None, port=port)
            await stream.start()
            await wait_until(lambda: state_is("inactive"), timeout=10, what="the alert resolved")
            assert seen[-3:] == ["pending", "firing", "inactive"], seen
            assert await prometheus.query("balancewatch_websocket_connected") == [1]
    finally:
        await stream.stop()
