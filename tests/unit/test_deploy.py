"""Running several replicas, as files: the Kubernetes example (config/kubernetes/balancewatch.yaml)
and the compose file's second replica; and the compose file's `observe` profile (Prometheus and
Grafana, provisioned from config/). No cluster and no Docker engine run here, so all are
checked as parsed YAML."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from balancewatch.devtools import dashboards
from balancewatch.settings import CONFIG_ENV, ENV_PREFIX, Settings
from tests.files import REPO, compose, image_env, image_user, kubernetes

# Settings issue 11 adds (the replica's name in the leases, and the leases' time to live); the
# example sets them already.
ISSUE_11_SETTINGS = {"replica_id", "lease_ttl"}


def pod(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = kubernetes()[kind]["spec"]["template"]["spec"]
    return spec


def container(kind: str) -> dict[str, Any]:
    (only,) = pod(kind)["containers"]
    assert isinstance(only, dict)
    return only


def env(kind: str) -> dict[str, Any]:
    """name -> value, or -> the valueFrom mapping."""
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container(kind)["env"]}


def mounts(kind: str) -> dict[PurePosixPath, dict[str, Any]]:
    """mount path -> the pod volume mounted there, with the mount's readOnly."""
    volumes = {volume["name"]: volume for volume in pod(kind)["volumes"]}
    return {
        PurePosixPath(mount["mountPath"]): {
            **volumes[mount["name"]],
            "readOnly": mount.get("readOnly", False),
        }
        for mount in container(kind)["volumeMounts"]
    }


def daemon_labels() -> dict[str, str]:
    labels: dict[str, str] = kubernetes()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_the_example_is_a_deployment_its_budget_its_metrics_service_and_a_migrate_job() -> None:
    assert set(kubernetes()) == {"Deployment", "PodDisruptionBudget", "Service", "Job"}
    assert container("Deployment")["args"] == ["run"]
    assert container("Job")["args"] == ["migrate"]
    assert pod("Job")["restartPolicy"] == "Never"
    assert container("Job")["image"] == container("Deployment")["image"]


def test_the_deployment_runs_two_replicas_that_never_share_a_name() -> None:
    deployment = kubernetes()["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert selects(deployment["spec"]["selector"]["matchLabels"], daemon_labels())
    # The replica's name in the leases: the pod's, unique among the live pods.
    assert env("Deployment")[f"{ENV_PREFIX}REPLICA_ID"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    assert env("Deployment")[f"{ENV_PREFIX}LEASE_TTL"] == "15"
    # Spread over nodes, so one node going takes at most one replica.
    (term,) = pod("Deployment")["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], daemon_labels())


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_every_variable_names_a_setting(kind: str) -> None:
    names = {name.removeprefix(ENV_PREFIX).lower() for name in env(kind) if name != CONFIG_ENV}
    assert names - set(Settings.model_fields) - ISSUE_11_SETTINGS == set()


def test_probes_ask_healthz_for_liveness_and_readyz_for_readiness_on_the_http_port() -> None:
    daemon = container("Deployment")
    (port,) = daemon["ports"]
    assert port["name"] == "http"
    assert str(port["containerPort"]) == env("Deployment")[f"{ENV_PREFIX}HTTP_PORT"]
    assert env("Deployment")[f"{ENV_PREFIX}HTTP_HOST"] == "0.0.0.0"
    probes = {name: daemon[name]["httpGet"] for name in ("livenessProbe", "readinessProbe")}
    assert probes == {
        "livenessProbe": {"path": "/healthz", "port": "http"},
        "readinessProbe": {"path": "/readyz", "port": "http"},
    }
    assert daemon["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_the_grace_period_outlasts_the_drain() -> None:
    grace = pod("Deployment")["terminationGracePeriodSeconds"]
    assert grace > Settings.model_fields["shutdown_timeout"].default
    assert f"{ENV_PREFIX}SHUTDOWN_TIMEOUT" not in env("Deployment")  # so the default is the one


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_secrets_reach_the_pods_as_files_never_as_variables(kind: str) -> None:
    variables = env(kind)
    assert not [name for name, value in variables.items() if "secretKeyRef" in str(value)]
    assert not {"DATABASE_URL", "API_KEY", "RPC_URL"} & {
        name.removeprefix(ENV_PREFIX) for name in variables
    }
    (secret_dir,) = [path for path, volume in mounts(kind).items() if "secret" in volume]
    assert mounts(kind)[secret_dir]["readOnly"] is True
    # The database URL comes in the config file (it has no _FILE variant), the keys as files.
    files = {CONFIG_ENV: "balancewatch.toml"}
    if kind == "Deployment":
        files |= {
            f"{ENV_PREFIX}API_KEY_FILE": "datastream_key",
            f"{ENV_PREFIX}RPC_URL_FILE": "rpc_url",
        }
    assert {name: variables[name] for name in files} == {
        name: str(secret_dir / file) for name, file in files.items()
    }
    # Readable by the unprivileged user through its group, by nobody else.
    assert pod(kind)["securityContext"]["fsGroup"] == int(image_user().partition(":")[2])
    assert mounts(kind)[secret_dir]["secret"]["defaultMode"] == 0o440


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_unprivileged_on_a_read_only_root_as_compose_does(kind: str) -> None:
    uid, _, gid = image_user().partition(":")
    security = pod(kind)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod(kind)["automountServiceAccountToken"] is False
    hardened = container(kind)["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True
    assert hardened["allowPrivilegeEscalation"] is False
    assert hardened["privileged"] is False
    assert hardened["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(container(kind)["resources"]["requests"])
    assert "memory" in container(kind)["resources"]["limits"]


def test_the_daemon_writes_only_to_its_own_spool() -> None:
    spool_dir = PurePosixPath(env("Deployment")[f"{ENV_PREFIX}SPOOL_DIR"])
    assert str(spool_dir) == image_env()[f"{ENV_PREFIX}SPOOL_DIR"]
    writable = {
        path: volume for path, volume in mounts("Deployment").items() if not volume["readOnly"]
    }
    # One per pod: a spool is locked by the one process that uses it.
    assert list(writable) == [spool_dir]
    assert "emptyDir" in writable[spool_dir]
    assert all(volume["readOnly"] for volume in mounts("Job").values())


def test_the_budget_lets_one_replica_go_at_a_time_and_never_the_last() -> None:
    budget = kubernetes()["PodDisruptionBudget"]["spec"]
    assert budget["maxUnavailable"] == 1
    assert selects(budget["selector"]["matchLabels"], daemon_labels())
    job_labels = kubernetes()["Job"]["spec"]["template"]["metadata"]["labels"]
    assert not selects(budget["selector"]["matchLabels"], job_labels)
    rollout = kubernetes()["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rollout == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_metrics_service_scrapes_every_daemon_pod_even_when_not_ready() -> None:
    service = kubernetes()["Service"]
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert selects(service["spec"]["selector"], daemon_labels())
    assert service["spec"]["publishNotReadyAddresses"] is True
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"


# -- compose: a second replica with `--profile replicas` ---------------------------------------


def spool_volume(service: dict[str, Any]) -> str:
    spool_dir = PurePosixPath(service["environment"][f"{ENV_PREFIX}SPOOL_DIR"])
    (source,) = [
        source
        for source, target, *_ in (volume.split(":") for volume in service["volumes"])
        if PurePosixPath(target) in (spool_dir, *spool_dir.parents)
    ]
    return str(source)


def test_compose_runs_a_second_replica_only_with_the_replicas_profile() -> None:
    services = compose()["services"]
    assert "profiles" not in services["balancewatch"]  # `docker compose up`: one replica
    assert services["balancewatch-b"]["profiles"] == ["replicas"]


def test_the_second_replica_shares_the_database_and_secrets_not_the_spool_name_or_port() -> None:
    first, second = (compose()["services"][name] for name in ("balancewatch", "balancewatch-b"))
    replica_id = f"{ENV_PREFIX}REPLICA_ID"
    assert first["environment"][replica_id] == "balancewatch-a"
    assert second["environment"][replica_id] == "balancewatch-b"
    # Everything else alike: the same database, Datastream, secrets, drain and start order.
    assert {k: v for k, v in first["environment"].items() if k != replica_id} == {
        k: v for k, v in second["environment"].items() if k != replica_id
    }
    differ = {"environment", "volumes", "ports", "profiles"}
    assert {k: v for k, v in first.items() if k not in differ} == {
        k: v for k, v in second.items() if k not in differ
    }
    # Each its own spool (one process locks a spool) and its own port on the host's loopback.
    assert spool_volume(first) != spool_volume(second)
    assert {spool_volume(first), spool_volume(second)} <= set(compose()["volumes"])
    host_ports = [
        port.rsplit(":", 1)[0] for service in (first, second) for port in service["ports"]
    ]
    assert len(set(host_ports)) == len(host_ports)
    assert all(port.startswith("127.0.0.1:") for port in host_ports)


# -- compose: Prometheus and Grafana with `--profile observe` ----------------------------------

OBSERVE = ("prometheus", "grafana")
# A released version: `prom/prometheus:v2.53.3`, `grafana/grafana:11.6.1` (never `latest`).
PINNED = re.compile(r"[a-z0-9./-]+:v?\d+\.\d+\.\d+(-[a-z0-9.]+)?")
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)\}")


def binds(service: dict[str, Any]) -> dict[PurePosixPath, str]:
    """container path -> the repository path mounted there (bind mounts only)."""
    mounted = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounted[PurePosixPath(target)] = source.removeprefix("./")
    return mounted


def provisioning(kind: str) -> dict[str, Any]:
    path = REPO / "config" / "grafana" / "provisioning" / kind / f"{kind}.yml"
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_prometheus_and_grafana_run_only_with_the_observe_profile_on_pinned_images() -> None:
    services = compose()["services"]
    for name in OBSERVE:
        assert services[name]["profiles"] == ["observe"]
        assert PINNED.fullmatch(services[name]["image"]), services[name]["image"]
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    # `docker compose up` starts neither, and the profile starts nothing else.
    observed = [
        name for name, service in services.items() if "observe" in service.get("profiles", [])
    ]
    assert observed == list(OBSERVE)


def test_the_observe_profile_mounts_the_shipped_rules_provisioning_and_dashboards() -> None:
    services = compose()["services"]
    prometheus, grafana = binds(services["prometheus"]), binds(services["grafana"])
    assert prometheus == {
        PurePosixPath("/etc/prometheus/prometheus.yml"): "config/prometheus/prometheus.yml",
        PurePosixPath("/etc/prometheus/alerts.yml"): "config/prometheus/alerts.yml",
    }
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert grafana[PurePosixPath("/etc/grafana/provisioning")] == "config/grafana/provisioning"
    sources = set(prometheus.values()) | set(grafana.values())
    assert all((REPO / source).exists() for source in sources), sources
    # Read-only: neither writes to the repository.
    for name in OBSERVE:
        for volume in services[name]["volumes"]:
            if volume.startswith("./"):
                assert volume.endswith(":ro"), volume


def test_grafana_is_provisioned_with_the_dashboards_data_sources_and_folder() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    sources = {source["type"]: source for source in provisioning("datasources")["datasources"]}
    assert set(sources) == {dashboards.PROMETHEUS_TYPE, dashboards.POSTGRES_TYPE}
    # Prometheus by its service name and port; Postgres as the daemon reaches it.
    assert sources[dashboards.PROMETHEUS_TYPE]["url"] == "http://prometheus:9090"
    postgres = sources[dashboards.POSTGRES_TYPE]
    assert postgres["url"] == "postgres:5432"
    assert "@postgres:5432/" in compose()["x-database-url"]["BALANCEWATCH_DATABASE_URL"]
    # Every variable the provisioning reads is set in Grafana's environment, none is written out.
    text = (REPO / "config/grafana/provisioning/datasources/datasources.yml").read_text()
    assert set(GRAFANA_VARIABLE.findall(text)) <= set(grafana["environment"])
    assert GRAFANA_VARIABLE.fullmatch(postgres["secureJsonData"]["password"])
    assert GRAFANA_VARIABLE.fullmatch(postgres["user"])
    # The file provider reads the folder the dashboards are mounted at, and the home dashboard
    # is one of them.
    (provider,) = provisioning("dashboards")["providers"]
    mounted = {str(target): source for target, source in binds(grafana).items()}
    assert mounted[provider["options"]["path"]] == str(dashboards.DASHBOARDS_DIR)
    home = PurePosixPath(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounted[str(home.parent)] == str(dashboards.DASHBOARDS_DIR)
    assert (REPO / dashboards.DASHBOARDS_DIR / home.name).exists()
