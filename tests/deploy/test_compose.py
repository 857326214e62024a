"""deploy/docker-compose.yml (issue 8, done-when 2): validated by `docker-compose config` and by
the compose-spec JSON schema, and checked for the topology the issue asks for."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import COMPOSE_FILE, DEPLOY
from tests.deploy.tools import pip_module

pytestmark = pytest.mark.timeout(900)  # the first run may install docker-compose

LENDSTREAM_IMAGE = "lendstream:0.1.0"


def services(resolved: dict[str, Any], image: str) -> dict[str, dict[str, Any]]:
    return {
        name: s for name, s in resolved["services"].items() if s.get("image", "").startswith(image)
    }


def test_docker_compose_accepts_the_file(resolved_compose: dict[str, Any]) -> None:
    assert resolved_compose["services"]


def test_the_compose_spec_schema_accepts_the_file() -> None:
    pip_module("check_jsonschema", "check-jsonschema")
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_validator_rejects_a_broken_file(
    compose_config: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """The check is live: a wrong start-order condition is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace(
            "condition: service_completed_successfully", "condition: when_ready", 1
        )
    )
    done = compose_config(broken)
    assert done.returncode != 0
    assert "condition" in done.stderr


def test_secrets_have_no_defaults(
    compose_config: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = compose_config(env_file=empty)
    assert done.returncode != 0
    assert "set POSTGRES_PASSWORD in deploy/.env" in done.stderr


def test_three_kraft_brokers_replicate_every_topic_three_times(
    resolved_compose: dict[str, Any],
) -> None:
    brokers = services(resolved_compose, "apache/kafka:")
    assert sorted(brokers) == ["kafka-1", "kafka-2", "kafka-3"]
    node_ids = set()
    for broker in brokers.values():
        env = broker["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
        assert (
            str(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]),
            str(env["KAFKA_MIN_INSYNC_REPLICAS"]),
        ) == ("3", "2")
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert "healthcheck" in broker
        node_ids.add(str(env["KAFKA_NODE_ID"]))
    assert node_ids == {"1", "2", "3"}
    for service in services(resolved_compose, LENDSTREAM_IMAGE).values():
        env = service["environment"]
        assert (env["LENDSTREAM_REPLICATION_FACTOR"], env["LENDSTREAM_MIN_INSYNC_REPLICAS"]) == (
            "3",
            "2",
        )


def test_topics_are_created_once_before_the_workers_start(resolved_compose: dict[str, Any]) -> None:
    ours = services(resolved_compose, LENDSTREAM_IMAGE)
    assert ours["topics"]["command"] == ["topics", "apply"]
    assert ours["topics"]["restart"] == "no"
    assert {name: dep["condition"] for name, dep in ours["topics"]["depends_on"].items()} == {
        f"kafka-{i}": "service_healthy" for i in (1, 2, 3)
    }
    workers = {name: s for name, s in ours.items() if s["command"] == ["worker"]}
    assert len(workers) >= 2
    for worker in workers.values():
        assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert worker["depends_on"]["postgres-primary"]["condition"] == "service_healthy"
        assert worker["depends_on"]["gateway-sim"]["condition"] == "service_healthy"
        assert worker["environment"]["LENDSTREAM_CREATE_TOPICS"] == "false"
        assert "/health" in " ".join(worker["healthcheck"]["test"])
    data_volumes = [
        v for w in workers.values() for v in w["volumes"] if "/var/lib/lendstream" in str(v)
    ]
    assert len(set(map(str, data_volumes))) == len(workers), "each worker needs its own RocksDB"
    assert ours["gateway-sim"]["command"][:1] == ["gateway-sim"]


def test_postgres_has_a_streaming_standby(resolved_compose: dict[str, Any]) -> None:
    primary = resolved_compose["services"]["postgres-primary"]
    standby = resolved_compose["services"]["postgres-standby"]
    assert "wal_level=replica" in primary["command"]
    assert standby["depends_on"]["postgres-primary"]["condition"] == "service_healthy"
    entrypoint = (DEPLOY / "postgres" / "standby-entrypoint.sh").read_text()
    assert "pg_basebackup" in entrypoint and "--write-recovery-conf" in entrypoint
    dsn = services(resolved_compose, LENDSTREAM_IMAGE)["worker-1"]["environment"][
        "LENDSTREAM_PG_DSN"
    ]
    assert "postgres-primary:5432,postgres-standby:5432" in dsn
    assert "target_session_attrs=read-write" in dsn


def test_prometheus_and_grafana_use_the_provisioned_files(resolved_compose: dict[str, Any]) -> None:
    mounts = {
        name: " ".join(str(v) for v in resolved_compose["services"][name]["volumes"])
        for name in ("prometheus", "grafana")
    }
    assert "deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in mounts["prometheus"]
    assert "deploy/prometheus/rules:/etc/prometheus/rules" in mounts["prometheus"]
    assert "deploy/grafana/provisioning:/etc/grafana/provisioning" in mounts["grafana"]
    assert "deploy/grafana/dashboards:/var/lib/grafana/dashboards" in mounts["grafana"]


def test_no_secret_is_committed() -> None:
    example = (DEPLOY / ".env.example").read_text()
    values = [
        line.split("=", 1)[1]
        for line in example.splitlines()
        if "=" in line and not line.startswith("#")
    ]
    assert values and all(value.startswith("change-me") for value in values)
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()
