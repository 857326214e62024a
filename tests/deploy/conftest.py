"""Fixtures for the deploy/ checks: the validators (installed when missing) and the files."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.tools import apt_tool, pip_module

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
K8S_DIR = DEPLOY / "k8s"


@pytest.fixture(scope="session")
def yaml_module() -> Any:
    """PyYAML (it comes with kubernetes-validate, which the Kubernetes checks need anyway)."""
    pip_module("kubernetes_validate", "kubernetes-validate")
    import yaml

    return yaml


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """Debian's docker-compose (1.29): `config` validates and resolves without a Docker daemon."""
    return apt_tool("docker-compose", "docker-compose")


@pytest.fixture(scope="session")
def compose_config(
    docker_compose: str, yaml_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `docker-compose config` on a compose file with an env file, in a clean environment."""

    def run(
        compose_file: Path = COMPOSE_FILE, env_file: Path = DEPLOY / ".env.example"
    ) -> subprocess.CompletedProcess[str]:
        cwd = tmp_path_factory.mktemp("compose")
        return subprocess.run(
            [docker_compose, "--env-file", str(env_file), "-f", str(compose_file), "config"],
            cwd=cwd, env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    return run


@pytest.fixture(scope="session")
def resolved_compose(compose_config: Callable[..., Any], yaml_module: Any) -> dict[str, Any]:
    """deploy/docker-compose.yml as docker-compose resolves it (anchors, env_file, .env)."""
    done = compose_config()
    assert done.returncode == 0, done.stderr
    return dict(yaml_module.safe_load(done.stdout))


@pytest.fixture(scope="session")
def k8s_documents(yaml_module: Any) -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) for every Kubernetes resource in deploy/k8s (not kustomization)."""
    documents = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_module.safe_load_all(path.read_text()):
            if doc:
                documents.append((path.name, doc))
    return documents
