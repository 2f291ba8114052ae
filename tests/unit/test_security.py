"""Security, as files: no setting turns TLS verification off; the container runs as a non-root
user on a read-only root filesystem, the spool volume excepted; no secret goes into the image or
the repository. No Docker engine runs here, so the Dockerfile and the compose file are checked as
files (and linted by hadolint in tests/system/test_security.py)."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

import pytest
from pydantic import ValidationError

from balancewatch.settings import Settings
from tests.files import REPO, compose, dockerfile, final_stage, image_env, image_user


def test_no_setting_turns_certificate_verification_off() -> None:
    tls_like = re.compile(r"ssl|tls|verif|insecure|cert|trust|(^|_)ca_")
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


# -- the container -----------------------------------------------------------------------------


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
    observe = {"prometheus", "grafana"}  # `--profile observe` (tests/unit/test_deploy.py)
    assert set(services) - observe == {
        "postgres",
        "migrate",
        "balancewatch",
        "balancewatch-b",
        "simulate",
    }
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    assert services["balancewatch"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert services["balancewatch"]["restart"] == "on-failure"
    assert services["simulate"]["profiles"] == ["simulate"]
    assert services["balancewatch-b"]["profiles"] == ["replicas"]
    assert set(compose()["volumes"]) == {"pgdata", "spool", "spool-b"} | {
        f"{name}-data" for name in observe
    }


@pytest.mark.parametrize("name", ["migrate", "balancewatch", "balancewatch-b", "simulate"])
def test_compose_runs_balancewatch_unprivileged_on_a_read_only_root(name: str) -> None:
    service = compose()["services"][name]
    assert service["build"] == "."
    assert service["read_only"] is True
    assert service["user"] == image_user()
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "privileged" not in service


@pytest.mark.parametrize("name", ["balancewatch", "balancewatch-b"])
def test_compose_gives_the_daemon_its_spool_volume_its_secrets_as_files_and_time_to_drain(
    name: str,
) -> None:
    service = compose()["services"][name]
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
    assert "BALANCEWATCH_RPC_URL" not in environment
    assert environment["BALANCEWATCH_RPC_URL_FILE"] == "/run/secrets/rpc_url"
    assert service["secrets"] == ["datastream_key", "rpc_url"]
    assert compose()["secrets"]["rpc_url"] == {"environment": "BALANCEWATCH_RPC_URL"}
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
